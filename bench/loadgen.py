"""tus load generator used by bench/run.py (runs as its own process).

Scenarios (sizes and counts are given on the command line):

* ``single``:     one POST, then the whole body in one PATCH; times the PATCH
                  from its start to the 204.
* ``concurrent``: ``--count`` uploads at once, each a POST then one PATCH;
                  aggregate throughput over the wall time of the whole batch.
* ``small``:      ``--count`` uploads (POST + PATCH each) with ``--concurrency``
                  in flight; uploads per second over the whole batch.

After the timed phase every upload is checked with HEAD (status 200/204 and
``Upload-Offset`` == length). The result is one JSON object on stdout.

Request bodies are streamed from one reusable in-memory pattern buffer, so the
client's memory stays bounded whatever the upload size. The byte at absolute
offset ``k`` of every upload is ``pattern()[k % PATTERN_LEN]``; the pattern
length is deliberately not a power of two, so a server that drops, repeats or
reorders a chunk produces a file whose SHA-256 differs from
``expected_sha256(length)``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import json
import random
import resource
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp

PATTERN_LEN = 1_048_573  # a prime just under 1 MiB
PATTERN_SEED = 20_240_601
MIB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


@functools.cache
def pattern() -> bytes:
    return random.Random(PATTERN_SEED).randbytes(PATTERN_LEN)


def expected_sha256(length: int) -> str:
    """SHA-256 of an upload body of ``length`` bytes as the generator sends it."""
    buf = pattern()
    digest = hashlib.sha256()
    full, tail = divmod(length, PATTERN_LEN)
    for _ in range(full):
        digest.update(buf)
    digest.update(buf[:tail])
    return digest.hexdigest()


async def body(length: int) -> AsyncIterator[bytes]:
    """Stream ``length`` bytes of the pattern; yields the same buffer object."""
    buf = pattern()
    full, tail = divmod(length, PATTERN_LEN)
    for _ in range(full):
        yield buf
    if tail:
        yield buf[:tail]


class UploadError(Exception):
    """A request got an unexpected answer; the message says which and why."""


@dataclass
class Result:
    scenario: str
    ok: bool = False
    error: str | None = None
    # timed phase
    elapsed_s: float = 0.0
    bytes_total: int = 0
    uploads: int = 0
    mib_per_s: float = 0.0
    uploads_per_s: float = 0.0
    client_cpu_s: float = 0.0
    # verification
    head_checked: int = 0
    head_ok: int = 0
    head_failures: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)


def _metadata(tag: str, index: int) -> str:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    name = f"bench-{tag}-{index:06d}.bin"
    return f"filename {b64(name)},filetype {b64('application/octet-stream')}"


async def _reason(resp: aiohttp.ClientResponse) -> str:
    try:
        text = (await resp.text(errors="replace"))[:200]
    except (TimeoutError, aiohttp.ClientError):
        text = ""
    return f"{resp.method} {resp.url.path} -> {resp.status} {text!r}"


async def create(
    session: aiohttp.ClientSession, base_url: str, length: int, tag: str, index: int
) -> str:
    headers = {
        **TUS,
        "Upload-Length": str(length),
        "Upload-Metadata": _metadata(tag, index),
    }
    async with session.post(base_url, headers=headers) as resp:
        if resp.status != 201:
            raise UploadError("POST: " + await _reason(resp))
        location = resp.headers.get("Location")
        if not location:
            raise UploadError("POST: 201 without Location")
        await resp.read()
    return urljoin(base_url, location)


async def patch(
    session: aiohttp.ClientSession, url: str, length: int, timeout: aiohttp.ClientTimeout
) -> None:
    headers = {
        **TUS,
        "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(length),
    }
    async with session.patch(url, headers=headers, data=body(length), timeout=timeout) as resp:
        if resp.status != 204:
            raise UploadError("PATCH: " + await _reason(resp))
        offset = resp.headers.get("Upload-Offset")
        if offset != str(length):
            raise UploadError(f"PATCH: 204 with Upload-Offset {offset!r}, expected {length}")
        await resp.read()


async def head_check(
    session: aiohttp.ClientSession, urls: list[str], length: int, parallel: int, res: Result
) -> None:
    sem = asyncio.Semaphore(parallel)

    async def one(url: str) -> None:
        async with sem:
            try:
                async with session.head(url, headers=TUS) as resp:
                    offset = resp.headers.get("Upload-Offset")
                    if resp.status in (200, 204) and offset == str(length):
                        res.head_ok += 1
                    elif len(res.head_failures) < 5:
                        res.head_failures.append(
                            f"HEAD -> {resp.status}, Upload-Offset {offset!r} (want {length})"
                        )
            except (TimeoutError, aiohttp.ClientError) as exc:
                if len(res.head_failures) < 5:
                    res.head_failures.append(f"HEAD -> {type(exc).__name__}: {exc}")
            res.head_checked += 1

    await asyncio.gather(*(one(u) for u in urls))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _patch_timeout(length: int, min_rate_mib: float) -> aiohttp.ClientTimeout:
    """Bound one PATCH: 30 s plus the body at ``min_rate_mib`` MiB/s."""
    return aiohttp.ClientTimeout(total=30 + length / (min_rate_mib * MIB), sock_connect=10)


async def run_single(args: argparse.Namespace, res: Result) -> None:
    length: int = args.size
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        url = await create(session, args.base_url, length, args.tag, 0)
        cpu0, t0 = _cpu(), time.perf_counter()
        await patch(session, url, length, _patch_timeout(length, args.min_rate))
        res.elapsed_s = time.perf_counter() - t0
        res.client_cpu_s = _cpu() - cpu0
        res.uploads, res.bytes_total = 1, length
        res.locations = [url]
        await head_check(session, [url], length, 1, res)


async def run_concurrent(args: argparse.Namespace, res: Result) -> None:
    length: int = args.size
    count: int = args.count
    connector = aiohttp.TCPConnector(limit=count)
    # All PATCHes share the link, so the per-request bound scales with the count.
    timeout = _patch_timeout(length * count, args.min_rate)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def one(i: int) -> str:
            url = await create(session, args.base_url, length, args.tag, i)
            await patch(session, url, length, timeout)
            return url

        cpu0, t0 = _cpu(), time.perf_counter()
        urls = await asyncio.gather(*(one(i) for i in range(count)))
        res.elapsed_s = time.perf_counter() - t0
        res.client_cpu_s = _cpu() - cpu0
        res.uploads, res.bytes_total = count, length * count
        res.locations = list(urls)
        await head_check(session, res.locations, length, 16, res)


async def run_small(args: argparse.Namespace, res: Result) -> None:
    length: int = args.size
    count: int = args.count
    parallel: int = args.concurrency
    connector = aiohttp.TCPConnector(limit=parallel)
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=10)
    urls: list[str] = [""] * count
    next_index = 0

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < count:
                i = next_index
                next_index += 1
                url = await create(session, args.base_url, length, args.tag, i)
                await patch(session, url, length, timeout)
                urls[i] = url

        cpu0, t0 = _cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(parallel)))
        res.elapsed_s = time.perf_counter() - t0
        res.client_cpu_s = _cpu() - cpu0
        res.uploads, res.bytes_total = count, length * count
        res.locations = urls
        await head_check(session, urls, length, parallel, res)


SCENARIOS = {"single": run_single, "concurrent": run_concurrent, "small": run_small}


async def amain(args: argparse.Namespace) -> Result:
    res = Result(scenario=args.scenario)
    try:
        await asyncio.wait_for(SCENARIOS[args.scenario](args, res), timeout=args.overall_timeout)
    except UploadError as exc:
        res.error = str(exc)
    except TimeoutError:
        res.error = f"timed out (overall bound {args.overall_timeout:.0f} s or a request bound)"
    except aiohttp.ClientError as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    if res.error is None:
        if res.elapsed_s > 0:
            res.mib_per_s = res.bytes_total / MIB / res.elapsed_s
            res.uploads_per_s = res.uploads / res.elapsed_s
        res.ok = True
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base-url", required=True, help="creation URL, e.g. http://127.0.0.1:8080/files/"
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--size", type=int, required=True, help="bytes per upload")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tag", default="run", help="goes into each upload's filename metadata")
    parser.add_argument(
        "--min-rate", type=float, default=5.0, help="MiB/s below which a PATCH times out"
    )
    parser.add_argument("--overall-timeout", type=float, default=1800.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = asyncio.run(amain(args))
    out: dict[str, Any] = asdict(res)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
