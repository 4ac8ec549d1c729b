"""Notion sink benchmark: drain throughput against the rate-limit ceiling, and memory.

The fake Notion server runs in this process (so its request log can be read); the gateway
is a child process started with ``--sink notion`` and pointed at it. Two measurements:

* **throughput**: one file of ``--mib`` MiB is uploaded, and the time from the upload's
  creation to ``drained`` is measured (parts leave while the file still arrives). The
  ceiling is what the rate limit allows: ``rate`` requests per second, each part one
  request of ``part size`` bytes, so ``rate * part size`` (the few requests around the
  parts are counted against us). Target ≥ 90% with no 429.
* **memory**: ``--files`` uploads of ``--file-mib`` MiB arrive at once and drain at once;
  the gateway's peak RSS (VmHWM) over the whole run. Target ≤ 128 MiB.

    .venv/bin/python bench/notion_drain.py              # full sizes (needs ~55 GB disk)
    .venv/bin/python bench/notion_drain.py --quick      # small sizes, to check the setup

Every median is over ``--reps`` repetitions; results are printed as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The fake is a distribution of its own; from a checkout it runs without being installed.
sys.path.insert(0, str(REPO / "fake-notion"))

from fake_notion import FakeConfig, FakeNotion, create_fake_app  # noqa: E402

MIB = 1024 * 1024
PART = 5 * MIB
USER_SCHEMA = {"Name": "title", "Size": "number", "Hash": "rich_text", "Salt": "rich_text",
               "Created": "date", "File": "files"}
INDEX_SCHEMA = {"Hash": "title", "Database": "rich_text", "Page": "rich_text"}
TUS = {"Tus-Resumable": "1.0.0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def start_fake(root: Path, rate: float, burst: int) -> tuple[FakeNotion, web.AppRunner,
                                                                   str, str, str]:
    fake = FakeNotion(root / "notion", config=FakeConfig(rate_per_s=rate, burst=burst))
    users = fake.add_database("Uploads", USER_SCHEMA)
    index = fake.add_database("Index", INDEX_SCHEMA)
    runner = web.AppRunner(create_fake_app(fake), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return fake, runner, f"http://127.0.0.1:{port}", users, index


def start_gateway(root: Path, fake_url: str, token: str, users: str, index: str,
                  rate: float, concurrency: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = (root / "gateway.log").open("ab")
    proc = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "tus-gateway"), "serve", "--port", str(port),
         "--data-dir", str(root / "data"), "--sink", "notion", "--notion-base-url", fake_url,
         "--notion-token", token, "--notion-user-database", users,
         "--notion-index-database", index, "--notion-rate", str(rate),
         "--notion-concurrency", str(concurrency)],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc, port


async def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("the gateway exited at start")
            try:
                async with http.options(f"http://127.0.0.1:{port}/files/"):
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError("the gateway did not start")


async def upload(http: aiohttp.ClientSession, port: int, size: int, name: str) -> str:
    base = f"http://127.0.0.1:{port}"
    async with http.post(f"{base}/files/", headers={
            **TUS, "Upload-Length": str(size),
            "Upload-Metadata": "filename " + base64.b64encode(name.encode()).decode()}) as r:
        location = r.headers["Location"]

    async def body() -> Any:
        block = os.urandom(MIB)
        sent = 0
        while sent < size:
            piece = block[:min(MIB, size - sent)]
            sent += len(piece)
            yield piece

    async with http.patch(location, data=body(), headers={
            **TUS, "Upload-Offset": "0", "Content-Length": str(size),
            "Content-Type": "application/offset+octet-stream"}) as r:
        if r.status != 204:
            raise RuntimeError(f"PATCH answered {r.status}: {await r.text()}")
    return location.rsplit("/", 1)[1]


async def wait_drained(http: aiohttp.ClientSession, port: int, upload_id: str,
                       timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with http.get(f"http://127.0.0.1:{port}/api/upload/status/{upload_id}") as r:
            sink = (await r.json())["sink"]
        if sink and sink["status"] == "drained":
            return
        if sink and sink["status"] == "failed":
            raise RuntimeError(f"drain failed: {sink}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{upload_id} not drained in {timeout_s}s")


async def run_once(args: argparse.Namespace, scenario: str) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="notion-bench-", dir=args.tmp_root))
    rate = args.rate if scenario == "throughput" else args.memory_rate
    fake, runner, url, users, index = await start_fake(root, rate, args.burst)
    proc, port = start_gateway(root, url, fake.default_token, users, index, rate,
                               args.concurrency)
    try:
        await wait_up(port, proc)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            if scenario == "throughput":
                size = args.mib * MIB
                # The clock starts before the upload: windows are sent while the file
                # still arrives, so the upload's own second is counted against us.
                started = time.monotonic()
                upload_id = await upload(http, port, size, "big.mp4")
                await wait_drained(http, port, upload_id, 3600)
                elapsed = time.monotonic() - started
                ceiling = rate * PART / MIB
                achieved = size / MIB / elapsed
                return {"mib_s": achieved, "ceiling": ceiling, "ratio": achieved / ceiling,
                        "r429": float(fake.count(status=429)),
                        "peak_burst": fake.peak_burst()}
            size = args.file_mib * MIB
            ids = await asyncio.gather(*(upload(http, port, size, f"f{i}.mp4")
                                         for i in range(args.files)))
            after_upload = vm_hwm_mib(proc.pid)  # the drains are under way, far from done
            await asyncio.gather(*(wait_drained(http, port, i, 7200) for i in ids))
            return {"rss_mib": vm_hwm_mib(proc.pid), "rss_upload_mib": after_upload,
                    "r429": float(fake.count(status=429))}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        await runner.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def main_async(args: argparse.Namespace) -> int:
    results: dict[str, list[dict[str, float]]] = {"throughput": [], "memory": []}
    for rep in range(args.reps):
        for scenario in args.scenarios:
            outcome = await run_once(args, scenario)
            results[scenario].append(outcome)
            print(f"rep {rep + 1} {scenario}: {outcome}", file=sys.stderr)
    thr = results["throughput"]
    mem = results["memory"]
    med = statistics.median
    print(f"Command: `python bench/notion_drain.py {' '.join(sys.argv[1:])}`\n")
    print("| measure | median (lowest-highest) | target | verdict |")
    print("|---|---|---|---|")
    if thr:
        report_throughput(args, thr)
    if mem:
        rss = [r["rss_mib"] for r in mem]
        print(f"| gateway peak RSS, {args.files} uploads of {args.file_mib} MiB uploaded and "
              f"drained at once (MiB) | {med(rss):.1f} ({min(rss):.1f}-{max(rss):.1f}) | "
              f"≤ 128 | {'PASS' if max(rss) <= 128 else 'FAIL'} |")
    return 0


def report_throughput(args: argparse.Namespace, thr: list[dict[str, float]]) -> None:
    med = statistics.median
    ratios = [r["ratio"] for r in thr]
    print(f"| drain of {args.mib} MiB at {args.rate:g} requests/s, 5 MiB parts: MiB/s "
          f"(ceiling {thr[0]['ceiling']:.0f}) | {med(r['mib_s'] for r in thr):.1f} "
          f"({min(r['mib_s'] for r in thr):.1f}-{max(r['mib_s'] for r in thr):.1f}) | | |")
    print(f"| share of the ceiling | {med(ratios):.1%} ({min(ratios):.1%}-{max(ratios):.1%})"
          f" | ≥ 90% | {'PASS' if med(ratios) >= 0.9 else 'FAIL'} |")
    r429 = sum(r["r429"] for r in thr)
    print(f"| 429 answers during the throughput runs | {r429:.0f} | 0 | "
          f"{'PASS' if r429 == 0 else 'FAIL'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=400, help="size of the throughput file")
    parser.add_argument("--rate", type=float, default=3.0,
                        help="requests/s the fake allows and the gateway uses (Notion: 3)")
    parser.add_argument("--burst", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--files", type=int, default=25)
    parser.add_argument("--file-mib", type=int, default=1024)
    parser.add_argument("--memory-rate", type=float, default=100.0,
                        help="requests/s for the memory run (a quicker drain, same code)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tmp-root", default=str(REPO / "bench" / ".scratch"))
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--only", choices=["throughput", "memory"],
                        help="run one of the two measurements")
    args = parser.parse_args()
    if args.quick:
        args.mib, args.files, args.file_mib, args.reps = 40, 3, 32, 1
    args.scenarios = [args.only] if args.only else ["throughput", "memory"]
    Path(args.tmp_root).mkdir(parents=True, exist_ok=True)
    # A stopped run still cleans up (each memory run leaves tens of GiB of spool behind).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
