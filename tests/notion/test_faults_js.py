"""tus-js-client → a real gateway process (``--sink notion``) → a fake Notion that misbehaves.

The fake runs in the test's event loop; the gateway is a child process pointed at it;
tus-js-client runs under Node, one process per upload, each in its own thread (so the fake
keeps serving while the clients block). Two faults that only show end to end:

- twenty clients at once while the fake drops connections, answers 5xx and rate-limits with
  Retry-After: every file still arrives byte-exact, is recorded exactly once in each
  database, and the gateway never bursts past the fake's budget;
- the fake's clock jumps past the one-hour life of a Notion upload while its parts are being
  sent: the gateway notices the expiry, starts a second Notion upload, sends every part
  again and records the file once, pointing at the new upload.

The gateway itself must answer every tus request with a 2xx (``run_js`` checks that); the
clients' ``retryDelays`` are only there so that a gateway hiccup shows up as that assertion
with a log, not as a client that gave up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fake_notion import FakeConfig
from fake_notion.faults import CREATE, PAGE_CREATE, SEND, Fault
from fake_notion.rules import FileRef
from fake_notion.state import FakeNotion
from tests.clients.support import MiB, random_file, sha256_file
from tests.clients.test_tus_js import run_js
from tests.conftest import GatewayProcess
from tests.notion.conftest import FakeNotionFactory, FakeNotionServer
from tests.notion.test_end_to_end import notion_gateway, wait_drained

pytestmark = pytest.mark.allow_blocking  # the test drives child processes

Gateways = Callable[..., GatewayProcess]
# Enough for tus-js-client to ride out a refused connection or a 5xx, had the gateway one.
RETRY_DELAYS_MS = [0, 250, 1000, 2000, 4000]


async def run_js_all(configs: list[dict[str, Any]], tmp_path: Path,
                     gw: GatewayProcess) -> list[dict[str, Any]]:
    """Run every upload at once, each tus-js-client in its own Node process and thread.

    Not ``asyncio.to_thread``: the default executor has ``cpu + 4`` workers, so on a small
    machine the "concurrent" uploads would queue. Each run gets its own directory, so its
    files are easy to tell apart when one fails.
    """
    loop = asyncio.get_running_loop()
    dirs = []
    for i in range(len(configs)):
        d = tmp_path / f"js-{i:02d}"
        d.mkdir()
        dirs.append(d)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(configs)) as pool:
        return list(await asyncio.gather(*(
            loop.run_in_executor(pool, run_js, config, d, gw)
            for config, d in zip(configs, dirs, strict=True))))


def database_named(fake: FakeNotion, name: str) -> str:
    return next(db_id for db_id, db in fake.databases.items() if db.name == name)


def attached_uploads(fake: FakeNotion, page_id: str) -> list[str | None]:
    """The file upload ids the page's ``File`` property points at."""
    page = next(p for p in fake.pages.values() if p.id == page_id)
    files = page.values.get("File", [])
    assert all(isinstance(f, FileRef) for f in files), files
    return [f.upload_id for f in files]


def assert_recorded_once(fake: FakeNotion, drained: dict[str, dict[str, Any]]) -> None:
    """``drained``: file name → its status. One user page and one index page per file,
    each pointing where it should."""
    users, index = database_named(fake, "Uploads"), database_named(fake, "Index")
    user_pages = fake.pages_in(users)
    assert sorted(fake.page_text(p.id, "Name") for p in user_pages) == sorted(drained), \
        "each file has exactly one page in the user database"
    index_pages = fake.pages_in(index)
    assert sorted(fake.page_text(p.id, "Hash") for p in index_pages) == sorted(
        s["sink"]["detail"]["sha512"] for s in drained.values()), \
        "each file has exactly one page in the index database"
    for name, status in drained.items():
        detail = status["sink"]["detail"]
        page_id = status["sink"]["ref"]
        assert detail["page"] == page_id
        assert fake.page_text(page_id, "Name") == name
        assert fake.page_text(page_id, "Hash") == detail["sha512"]
        assert attached_uploads(fake, page_id) == [detail["file_upload"]], name
        assert fake.page_text(detail["index_page"], "Page") == page_id, name
        assert fake.page_text(detail["index_page"], "Database") == users, name


async def drain_all(gw: GatewayProcess, ids: dict[str, str],
                    timeout_s: float) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(*(wait_drained(http, gw, upload_id, timeout_s)
                                          for upload_id in ids.values()))
    return dict(zip(ids, statuses, strict=True))


def upload_id_of(result: dict[str, Any]) -> str:
    url: str = result["url"]
    return url.rsplit("/", 1)[1]


@pytest.mark.timeout(240)
@pytest.mark.slow
async def test_twenty_tus_js_uploads_through_faults_and_rate_limits(
        gateway_process: Gateways, make_fake_notion: FakeNotionFactory,
        tmp_path: Path) -> None:
    # The fake allows 15 requests/s (burst 5); the gateway asks for 20: it meets 429s with
    # Retry-After on top of the injected faults, as in test_gateway_sink's aiohttp version.
    server = await make_fake_notion(config=FakeConfig(rate_per_s=15.0, burst=5), seed=7)
    fake = server.fake
    for kind in (Fault(status=500), Fault(status=502), Fault(status=503), Fault(status=504),
                 Fault(status=529, retry_after_s=1), Fault(kind="reset"),
                 Fault(status=503, after=True), Fault(kind="reset", after=True)):
        fake.faults.chance(kind, 0.025)  # 20% of requests in all
    # Rate limiting alone may or may not reach a 429, depending on the machine's speed;
    # a few injected ones (with Retry-After) make sure the pause-everyone path runs.
    fake.faults.chance(Fault(status=429, retry_after_s=1), 0.02)
    # A breaker that stays open for its 30 s default would hold the drain longer than the
    # test runs; with half a second it still opens and probes under this fault rate.
    gw = notion_gateway(gateway_process, server, "--notion-concurrency", "6",
                        "--notion-breaker-open", "0.5")
    sizes = {f"f{i:02d}.pdf": 40_000 + i * 61_001 for i in range(16)}  # single part
    sizes["single.png"] = 7 * MiB + 11  # single part, several tus PATCHes
    sizes.update({"big1.mp4": 21 * MiB, "big2.mp4": 23 * MiB + 7,  # multi part
                  "big3.mp4": 26 * MiB + 3})
    assert len(sizes) == 20
    sources = {name: random_file(tmp_path / name, size) for name, size in sizes.items()}
    configs = [{"endpoint": gw.url, "file": str(source), "metadata": {"filename": name},
                "retryDelays": RETRY_DELAYS_MS,
                **({"chunkSize": 4 * MiB} if sizes[name] > 5 * MiB else {})}
               for name, source in sources.items()]

    started = time.monotonic()
    results = await run_js_all(configs, tmp_path, gw)
    ids = {name: upload_id_of(r) for name, r in zip(sources, results, strict=True)}
    assert len(set(ids.values())) == 20
    drained = await drain_all(gw, ids, timeout_s=150)
    elapsed = time.monotonic() - started

    for name, status in drained.items():
        remote = status["sink"]["detail"]["file_upload"]
        assert await fake.uploaded_sha256(remote) == sha256_file(sources[name]), name
    assert_recorded_once(fake, drained)
    multi = [u for u in fake.uploads.values() if u.mode == "multi_part" and u.completed]
    assert len({u.filename for u in multi}) == 3, "the big files went in parts"
    # The faults really happened (otherwise this test proves nothing). Which request draws
    # which fault depends on arrival order, so only the totals are certain enough to assert.
    injected = Counter(label for _, label in fake.faults.injected)
    assert sum(injected.values()) >= 15, injected
    assert fake.count(status=429) > 0 and fake.count(status=0) > 0, fake.counts_by_status()
    assert sum(n for status, n in fake.counts_by_status().items() if status >= 500) >= 10
    assert fake.peak_burst() <= fake.config.burst
    print(f"20 tus-js uploads drained in {elapsed:.1f}s; injected {dict(injected)}; "
          f"fake statuses {dict(fake.counts_by_status())}; 400s on "
          f"{Counter(r.endpoint for r in fake.log if r.status == 400)}")


@pytest.mark.timeout(180)
@pytest.mark.slow
async def test_notion_upload_expires_mid_drain_through_the_gateway(
        gateway_process: Gateways, fake_notion: FakeNotionServer, tmp_path: Path) -> None:
    fake = fake_notion.fake
    # Slow sends, two at a time: eight parts take at least two seconds, so the clock moves
    # while the first Notion upload is half sent.
    fake.faults.chance(Fault(kind="slow", delay_s=0.5), 1.0, endpoints=[SEND])
    gw = notion_gateway(gateway_process, fake_notion, "--notion-concurrency", "2",
                        "--notion-window", "5MiB")
    size = 40 * MiB
    parts = size // (5 * MiB)
    source = random_file(tmp_path / "movie.mp4", size)
    client = asyncio.create_task(asyncio.to_thread(
        run_js, {"endpoint": gw.url, "file": str(source), "metadata": {"filename": "movie.mp4"},
                 "chunkSize": 16 * MiB, "retryDelays": RETRY_DELAYS_MS}, tmp_path, gw))

    deadline = time.monotonic() + 90
    while not (fake.uploads and sum(fake.parts_stored.values()) >= 2):
        assert not client.done() or client.exception() is None, gw.log()
        assert time.monotonic() < deadline, f"the drain did not start\n{gw.log()}"
        await asyncio.sleep(0.02)
    [first] = fake.uploads
    sent_before = {n for (u, n) in fake.parts_stored if u == first}
    assert len(sent_before) < parts, "the drain finished before the clock moved"
    fake.clock.advance(3601)  # past Notion's one hour: the first upload is expired now
    assert fake.upload(first).status == "expired"

    upload_id = upload_id_of(await client)
    async with aiohttp.ClientSession() as http:
        status = await wait_drained(http, gw, upload_id, timeout_s=90)

    detail = status["sink"]["detail"]
    second = detail["file_upload"]
    assert fake.count(CREATE, 200) == 2, f"{fake.counts_by_endpoint()}\n{gw.log()}"
    assert second != first and set(fake.uploads) == {first, second}
    assert fake.upload(first).status == "expired"
    assert fake.upload(second).status == "uploaded"
    assert {n for (u, n) in fake.parts_stored if u == second} == set(range(1, parts + 1)), \
        "every part was sent again to the new upload"
    assert await fake.uploaded_sha256(second) == sha256_file(source)
    assert fake.count(PAGE_CREATE, 200) == 2  # the user page and the index page, once each
    assert_recorded_once(fake, {"movie.mp4": status})
    assert attached_uploads(fake, status["sink"]["ref"]) == [second]
