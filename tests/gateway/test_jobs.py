"""``gateway.jobs.LeasedJobs``: one task per upload under a lease, forgotten when done, taken
over by a scan when its instance died, stopped by ``close``; on the disk store and on a real
redis-server, where two store objects on one key prefix are two gateway instances."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.jobs import JobNames, LeasedJobs, OwedIndex, Scanned, Verdict, run_what_is_owed
from gateway.state.base import UploadStore
from gateway.state.disk import DiskStore
from gateway.state.parts import StoreParts
from gateway.state.redis import RedisBackend, RedisStore
from protocol import errors
from tests.redis_server import RedisServer

Instance = Callable[[], Awaitable[UploadStore]]
NAMES = JobNames(lease="job", task="test-job", scanner="test-scan", scan="test")


@pytest.fixture(params=["disk", "redis"])
async def instance(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Instance]:
    """The store of one more gateway instance on shared state. The disk store belongs to one
    process, so there every instance shares the one store (its leases still keep two
    owners apart); on Redis each instance has its own connection."""
    pool = IoPool(4)
    opened: list[UploadStore] = []
    backends: list[RedisBackend] = []
    prefix = f"j{uuid.uuid4().hex[:12]}"

    async def factory() -> UploadStore:
        if request.param == "disk" and opened:
            return opened[0]
        store: UploadStore
        if request.param == "disk":
            store = StoreParts.of(DiskStore(tmp_path / "data", pool, fsync=FsyncPolicy.ACK,
                                            write_buffer_bytes=64 * 1024,
                                            commit_interval_bytes=256 * 1024)).store
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            backend = RedisBackend(server.url, prefix=prefix)
            await backend.open()
            backends.append(backend)
            store = RedisStore(backend, tmp_path / "data", pool, fsync=FsyncPolicy.ACK,
                               write_buffer_bytes=64 * 1024, commit_interval_bytes=256 * 1024,
                               sync_interval_bytes=256 * 1024, tombstone_ttl_s=3600)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    for backend in backends:
        await backend.close()
    await asyncio.get_running_loop().run_in_executor(None, pool.close)


class Work:
    """Work that notes each run and, when told to, holds on until released."""

    def __init__(self, *, hold: bool = False) -> None:
        self.runs: list[str] = []
        self.wakes = 0
        self.hold = hold
        self.release = asyncio.Event()

    async def __call__(self, upload_id: str, wake: asyncio.Event) -> None:
        self.runs.append(upload_id)
        while self.hold and not self.release.is_set():
            woken = asyncio.ensure_future(wake.wait())
            released = asyncio.ensure_future(self.release.wait())
            await asyncio.wait([woken, released], return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            released.cancel()
            if wake.is_set():
                wake.clear()
                self.wakes += 1


def runner(store: UploadStore, work: Work, *, lease_s: float = 0.4,
           decide: Callable[[str, Scanned], Awaitable[Verdict]] = run_what_is_owed,
           ) -> LeasedJobs:
    return LeasedJobs(NAMES, index=OwedIndex(store.owe_sink, store.sink_owed), leases=store,
                      work=work, lease_s=lease_s, scan_s=3600, decide=decide,
                      log=logging.getLogger("tests.jobs"))


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_lease_held_by_another_owner_is_not_run(instance: Instance) -> None:
    first_work, second_work = Work(hold=True), Work()
    first = runner(await instance(), first_work)
    second_store = await instance()
    second = runner(second_store, second_work)
    await second_store.owe_sink("x", True)
    first.start("x")
    await until(lambda: first_work.runs == ["x"], "the first instance to run it")
    second.start("x")
    await until(lambda: not second.running("x"), "the second instance's task to end")
    # The holder extends its lease (every third of it), so it stays out past its length.
    await asyncio.sleep(0.6)
    await second.scan()
    await until(lambda: not second.running("x"), "the scan's task to end")
    assert second_work.runs == []
    assert first.running("x") and first.active() == ["x"]
    first_work.release.set()
    await until(lambda: not first.running("x"), "the first instance to finish")
    second.start("x")  # its lease was dropped: the work is free for anyone
    await until(lambda: second_work.runs == ["x"], "the second instance to run it")
    await first.close()
    await second.close()


async def test_done_work_is_forgotten_and_a_start_while_it_runs_wakes_it(
        instance: Instance) -> None:
    work = Work(hold=True)
    jobs = runner(await instance(), work)
    jobs.start("x")
    await until(lambda: work.runs == ["x"], "the work to start")
    jobs.start("x")
    await until(lambda: work.wakes == 1, "the running task to be woken")
    assert work.runs == ["x"], "one task per upload"
    work.release.set()
    await until(lambda: not jobs.running("x"), "the work to end")
    await asyncio.sleep(0)  # the done callback runs on the next turn of the loop
    assert jobs.active() == [] and not jobs._jobs
    jobs.start("x")  # done and forgotten: a start runs it afresh
    await until(lambda: work.runs == ["x", "x"], "a second run")
    await jobs.close()


async def test_a_dead_owners_lease_expires_and_the_scan_takes_over(instance: Instance) -> None:
    dead = await instance()
    # An instance took the lease and died: nobody extends it any more.
    assert await dead.hold_lease("job:x", "dead-instance", 0.5)
    await dead.owe_sink("x", True)
    work = Work()
    jobs = runner(await instance(), work)
    await jobs.scan()
    await until(lambda: not jobs.running("x"), "the refused task to end")
    assert work.runs == []
    await asyncio.sleep(0.6)
    await jobs.scan()
    await until(lambda: work.runs == ["x"], "the scan to take the work over")
    await jobs.close()


async def test_the_scan_decides_what_stays_owed(instance: Instance) -> None:
    store = await instance()
    verdicts = {"run": Verdict.RUN, "wait": Verdict.WAIT, "done": Verdict.DONE,
                "leave": Verdict.LEAVE}
    seen: dict[str, Scanned] = {}

    async def decide(upload_id: str, scanned: Scanned) -> Verdict:
        seen[upload_id] = scanned
        if upload_id == "removed":
            raise errors.NotFound()
        return verdicts[upload_id]

    for upload_id in ("done", "leave", "removed"):
        await store.owe_sink(upload_id, True)
    work = Work()
    jobs = runner(store, work, decide=decide)
    await jobs.scan(["run", "wait", "done", "leave", "removed"], now=1234.0)
    await until(lambda: not jobs.active(), "the started work to end")
    assert work.runs == ["run"]
    assert await store.sink_owed() == ["leave", "run", "wait"]
    assert seen["leave"] == Scanned(owed=True, at_start=True, now=1234.0)
    assert seen["run"] == Scanned(owed=False, at_start=True, now=1234.0)
    await jobs.scan()
    assert seen["wait"].owed and not seen["wait"].at_start
    await jobs.close()


async def test_close_stops_tasks_and_lets_their_leases_go(instance: Instance) -> None:
    store = await instance()
    work = Work(hold=True)
    jobs = runner(store, work, lease_s=30.0)
    for upload_id in ("x", "y"):
        jobs.start(upload_id)
    await jobs.resume([])  # the periodic scan runs too
    await until(lambda: sorted(work.runs) == ["x", "y"], "both tasks to run")
    started = time.monotonic()
    await jobs.close()
    assert time.monotonic() - started < 2.0
    assert jobs.active() == [] and not jobs.running("x")
    # Dropped on the way out, not left to run out its 30 s: another instance goes on now.
    assert await store.hold_lease("job:x", "another-instance", 1.0)
    jobs.start("y")
    await jobs.scan(["y"])
    await asyncio.sleep(0.05)
    assert jobs.active() == [] and sorted(work.runs) == ["x", "y"], "nothing starts after close"
