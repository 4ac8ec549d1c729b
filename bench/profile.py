"""Where a scenario's CPU goes in our gateway: each thread's CPU, and a py-spy profile.

    .venv/bin/python bench/profile.py d                      # 3,000 small uploads
    .venv/bin/python bench/profile.py a --py-spy             # and a profile of 1 GiB
    .venv/bin/python bench/profile.py d -- --fsync off --no-access-log

A fresh ``tus-gateway serve`` (its defaults, plus any flags after ``--``) on a free port and
a fresh data directory; ``bench/loadgen.py`` drives it. Printed: the rate, then the CPU of
the event loop's thread and of all other threads (user and system), per upload for d and
per GiB for a and c, read from ``/proc/<pid>/task``. With ``--py-spy`` (``bench/setup.sh``
installs it), the threads are sampled at 250 Hz during the load and the frames where each
kind of thread spends most samples are listed; the raw profile stays in ``bench/.scratch/``
for a flame graph. The figures of "Small uploads: where the time goes" in RESULTS.md were
taken this way.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
GATEWAY = REPO / ".venv" / "bin" / "tus-gateway"
PYTHON = REPO / ".venv" / "bin" / "python"
PY_SPY = BENCH / ".peers" / "py-spy" / "bin" / "py-spy"
SCRATCH = BENCH / ".scratch"
MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")

# scenario -> (loadgen scenario, bytes per upload, uploads, in flight)
SHAPES = {
    "a": ("single", 1024 * MIB, 1, 1),
    "c": ("concurrent", 32 * MIB, 32, 32),
    "d": ("small", 4096, 3000, 16),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def thread_cpu(pid: int) -> dict[str, list[float]]:
    """User and system seconds of the loop's thread ("loop") and of all others."""
    cpu = {"loop": [0.0, 0.0], "others": [0.0, 0.0]}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue  # a thread that just ended
        fields = stat[stat.rindex(")") + 2:].split()
        kind = "loop" if task.name == str(pid) else "others"
        cpu[kind][0] += int(fields[11]) / TICKS
        cpu[kind][1] += int(fields[12]) / TICKS
    return cpu


def top_frames(raw: Path, loop_thread: bool, count: int = 12) -> list[tuple[float, str]]:
    """The frames where samples end (py-spy's raw format: one stack and its count a line)."""
    samples: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if ("MainThread" in frames[0]) != loop_thread:
            continue
        total += int(n)
        leaf = frames[-1] if len(frames) > 1 else "(no Python frame)"
        samples[re.sub(r":\d+\)", ")", leaf)] += int(n)
    return [(100.0 * n / total, frame) for frame, n in samples.most_common(count)] if total else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SHAPES))
    parser.add_argument("--count", type=int, help="uploads (default: the scenario's)")
    parser.add_argument("--py-spy", action="store_true", help="also sample with py-spy")
    parser.add_argument("serve_flags", nargs="*", help="after --: flags for serve")
    args = parser.parse_args()
    kind, size, count, in_flight = SHAPES[args.scenario]
    count = args.count or count
    if args.py_spy and not PY_SPY.exists():
        raise SystemExit(f"{PY_SPY} is missing: run bash bench/setup.sh")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tusprofile-") as data:
        server = subprocess.Popen(
            [str(GATEWAY), "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
             data, "--base-path", "/files/", *args.serve_flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the gateway did not start")
                time.sleep(0.1)
            SCRATCH.mkdir(exist_ok=True)
            raw = SCRATCH / f"profile-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}.raw"
            spy = subprocess.Popen(
                [str(PY_SPY), "record", "-p", str(server.pid), "-r", "250", "-t", "-f", "raw",
                 "-o", str(raw)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) if args.py_spy else None
            before = thread_cpu(server.pid)
            load = subprocess.run(
                [str(PYTHON), str(BENCH / "loadgen.py"), "--base-url",
                 f"http://127.0.0.1:{port}/files/", "--scenario", kind, "--size", str(size),
                 "--count", str(count), "--concurrency", str(min(in_flight, count))],
                capture_output=True, text=True, check=False)
            after = thread_cpu(server.pid)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
        finally:
            server.terminate()
            server.wait(timeout=30)
    result = json.loads(load.stdout)
    if not result["ok"]:
        raise SystemExit(f"the load failed: {result['error']}")
    per_upload = args.scenario == "d"
    unit = result["uploads"] / 1000 if per_upload else result["bytes_total"] / (1024 * MIB)
    rate = (f"{result['uploads_per_s']:.0f} uploads/s" if per_upload
            else f"{result['mib_per_s']:.0f} MiB/s")
    print(f"{args.scenario}: {rate}; server CPU per {'upload (ms)' if per_upload else 'GiB (s)'}:")
    for kind_name in ("loop", "others"):
        user, system = (after[kind_name][i] - before[kind_name][i] for i in (0, 1))
        label = "event loop thread" if kind_name == "loop" else "other threads"
        print(f"  {label:<18} user {user / unit:.2f}  system {system / unit:.2f}")
    if args.py_spy:
        for loop_thread in (True, False):
            print(f"py-spy, {'event loop thread' if loop_thread else 'other threads'}, "
                  "share of samples by the frame they ended in:")
            for share, frame in top_frames(raw, loop_thread):
                print(f"  {share:5.1f}%  {frame}")
        print(f"raw profile: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
