"""Upload state, locks and checkpoints in Redis, so several gateway instances share the work.

Theory of operation
-------------------
Records, committed offsets, tombstones, sink checkpoints and locks live in Redis (key names
and scripts: ``redis_keys``); the bytes live in a spool directory that every instance mounts
(a shared volume in production), one file per upload as with the disk store.

- The committed offset in Redis is the truth. Bytes reach the spool file first and are
  fdatasync'ed; only then does a compare-and-set advance the offset (TUS-ROB-02). Bytes in
  the file past the offset belong to a writer that died before committing: the next append
  cuts them off before it writes.
- A long PATCH commits every ``sync_interval`` bytes (an fdatasync in a background thread,
  then the compare-and-set, neither holding up the stream), so an instance killed
  mid-request loses at most that much unacknowledged data, which the client sends again.
- Locks are ``SET NX PX`` with a random token; a live holder extends its lock every third of
  the TTL, and a dead holder's lock expires by itself. A request that finds the lock held
  sets a release flag (seen by the holder when it extends) and publishes the id on a channel
  that every instance listens to; the holder stops reading its body, commits and releases.
  Writes made while holding a lock carry its token, so a holder that lost its lock (paused
  longer than the TTL) cannot overwrite its successor's state.
- The token fences Redis, not the spool file: a process stopped (SIGSTOP, a long GC, a disk
  stall) while it held bytes in its write buffer wakes up with a successor's bytes at the
  same offsets, and nothing on the file refuses its write, yet a writer that lost its lock
  must not write a byte after that moment. So the holder also keeps a deadline on its
  monotonic clock, before which the lock is surely
  still its own, and the spool writer's worker threads check it right before every write,
  truncation and sync of the file: past it they touch nothing, the bytes not yet written
  are dropped (never acknowledged, the client sends them again) and the request ends with
  ``ERR_UPLOAD_INTERRUPTED``. A process stopped in between sees the check after it resumes.
  How the deadline is kept is explained at ``lock_margin_s``.
- Every Redis failure is mapped at this boundary to ``errors.StateUnavailable`` (503 with
  Retry-After); redis-py reconnects by itself on the next command once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.aio import IoPool, run_to_completion, stop_tasks
from gateway.config import FsyncPolicy
from gateway.files import fsync_dir
from gateway.state.base import MAX_OWNER_CHARS
from gateway.state.redis_keys import ALL_SCRIPTS, RELEASE_FLAG_TTL_MS, Keys
from gateway.state.redis_url import parse_redis_url
from gateway.state.spool import OVERLAP_UP_TO, SpoolWriter, concatenate, pump
from protocol import errors
from protocol.headers import UPLOAD_ID, Checksum
from protocol.model import Checkpoint, HookState, UploadInfo, UploadState, newest_hook

log = logging.getLogger(__name__)

# Out of memory (maxmemory with noeviction) is a full disk for Redis: writes fail until an
# operator makes room, and reads go on. Uploads created until the memory ran out must get a
# 503 with Retry-After, not a 500.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError,
    redis_errors.TryAgainError, redis_errors.OutOfMemoryError, OSError,
    # A Redis Cluster failing over, resharding, or out of reach altogether (looked up by
    # name: the oldest redis-py this runs on may lack one).
    *(getattr(redis_errors, name) for name in (
        "ClusterError", "SlotNotCoveredError", "RedisClusterUnreachableError")
      if hasattr(redis_errors, name)))
_MAPPED: tuple[type[BaseException], ...] = (*_UNAVAILABLE, redis_errors.ResponseError)
# Likewise a Redis that refuses writes because it cannot save to its own disk.
_REFUSING_WRITES = ("MISCONF",)


_last_logged = [0.0]
# Every way a record from elsewhere (a newer version, damage) fails to parse.
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)
# Unreadable records remembered (to log each once and count them); more are still refused.
MAX_UNREADABLE_NOTED = 10_000


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Redis out of reach (down, restarting, loading, a replica) is a 503, never a 500."""
    try:
        yield
    except _MAPPED as exc:
        if isinstance(exc, redis_errors.ResponseError) and not isinstance(
                exc, _UNAVAILABLE) and not str(exc).startswith(_REFUSING_WRITES):
            raise
        now = time.monotonic()
        if now - _last_logged[0] > 5.0:  # one line per outage burst, not one per request
            _last_logged[0] = now
            log.warning("Redis is unavailable: %r", exc)
        raise errors.StateUnavailable() from exc


def _driver_info() -> dict[str, Any]:
    """Name our client version up front, so that redis-py does not look it up on disk (in
    the event loop) for every new connection; the parameter's name depends on the version."""
    try:
        from redis.driver_info import DriverInfo  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return {"lib_name": "redis-py", "lib_version": redis.__version__}
    return {"driver_info": DriverInfo(name="redis-py", lib_version=redis.__version__)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def lock_margin_s(ttl_s: float) -> float:
    """How long before the lock's TTL runs out, on our clock, its holder stops writing.

    The deadline is ``sent + ttl - margin``, where ``sent`` is when the acquire or extend
    that set it was sent (read before the request leaves, not when the answer arrives):
    Redis ran the command later, so the key lives at least a TTL past ``sent``. An extend
    moves the deadline only if it was sent before the old one; one sent later cannot prove
    that the lock never lapsed in between, so the holder gives the lock up instead. The
    margin covers what makes Redis expire the key earlier than that, as seen on our clock:

    - Redis reads its clock in whole milliseconds when it sets the expiry (up to 1 ms early);
    - the two clocks may run at different rates (NTP slews them by at most 500 ppm each, so
      1 ms per second of TTL at worst): the 1 % share covers it ten times over;
    - the time between the check and the system call it guards: the worker thread may wait
      for the GIL there (5 ms switch interval, more when another thread runs a garbage
      collection): the fixed 50 ms.

    What no margin covers: a process stopped exactly between the check and its system call
    for longer than the margin (a few bytecodes wide), and a forward step of the Redis host's
    wall clock, which Redis expires keys by. Closing those would need fencing in the storage
    itself (writes that carry the token), which a plain shared folder does not offer.
    """
    return 0.05 + 0.01 * ttl_s


def connect(url: str, *, max_connections: int) -> tuple[aioredis.Redis, list[aioredis.Redis]]:
    """A client for what ``url`` names (``redis_url``): one Redis, a Redis Cluster, or the
    primary a set of Sentinels watches, and the clients it uses to find its servers (the
    Sentinels'), to close with it. Nothing is sent yet.

    Each fails fast: one immediate retry replaces a pooled connection that died with a
    Redis restart (or a failover); beyond that, a request fails with 503 instead of hanging
    in backoff. The cluster client is typed as the single-node one: it offers the same
    commands, pipelines and scripts that this module uses, and routes each by its key."""
    target = parse_redis_url(url)
    common: dict[str, Any] = {
        "socket_connect_timeout": 2.0, "socket_timeout": 10.0,
        "retry": Retry(NoBackoff(), 1), "health_check_interval": 30, **_driver_info()}
    if target.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username, password=target.password, ssl=target.tls,
            max_connections=max_connections, **common)
        return cast(aioredis.Redis, cluster), []
    if target.kind == "sentinel":
        from redis.asyncio.sentinel import Sentinel
        sentinels = Sentinel(
            list(target.nodes),
            sentinel_kwargs={"socket_connect_timeout": 2.0, "socket_timeout": 2.0,
                             **_driver_info()})
        # Each new connection asks the Sentinels where the primary is; one that finds it
        # demoted (READONLY) drops the pool's connections, so a failover costs the
        # requests in flight a 503 and no more.
        primary: aioredis.Redis = sentinels.master_for(
            target.service, username=target.username, password=target.password,
            db=target.db, ssl=target.tls, max_connections=max_connections, **common)
        return primary, list(sentinels.sentinels)
    # A bounded pool that makes a burst of requests wait briefly for a connection, instead
    # of failing them (redis-py's default pool refuses past 100).
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5.0, **common)
    return aioredis.Redis(connection_pool=pool), []


@dataclass(eq=False)
class _Held:
    """A lock this process holds, with the request's "please let go" callback."""

    token: str
    on_release_requested: Callable[[], None]
    # Until this time.monotonic() value the lock is surely ours (see ``lock_margin_s``). It
    # is read by the spool writer's threads: a float attribute is read and replaced whole.
    deadline: float
    asked: bool = False
    lost: bool = False
    # The committed offset as last seen under this lock: nobody else can move it meanwhile,
    # so an append need not ask Redis again.
    offset: int | None = None
    extender: asyncio.Task[None] | None = field(default=None, repr=False)

    def ask(self) -> None:
        if not self.asked:
            self.asked = True
            self.on_release_requested()

    def fence(self) -> None:
        """Refuse to go on once the lock may have changed hands; any thread may call it."""
        if self.lost or time.monotonic() >= self.deadline:
            raise errors.UploadInterrupted("the upload's lock expired")


class RedisBackend:
    """One process's Redis connection, scripts, held locks and release-request listener."""

    def __init__(self, url: str, *, prefix: str = "tus", lock_ttl_s: float = 5.0,
                 max_connections: int = 64, min_replicas: int = 0,
                 replica_timeout_s: float = 1.0) -> None:
        self.url = url
        self.max_connections = max_connections
        # Writes that acknowledge bytes wait until this many replicas have them (see
        # ``acked_script``); 0: Redis's own asynchronous replication only.
        self.min_replicas = min_replicas
        self.replica_timeout_ms = max(int(replica_timeout_s * 1000), 1)
        self.keys = Keys(prefix)
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        # How long after an acquire or extend was sent its holder may still write.
        self.lock_hold_s = self.lock_ttl_ms / 1000 - lock_margin_s(self.lock_ttl_ms / 1000)
        self.held: dict[str, _Held] = {}
        self._client: aioredis.Redis | None = None
        self._helpers: list[aioredis.Redis] = []
        self._scripts: dict[str, Any] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("the Redis backend is not open")
        return self._client

    async def open(self) -> None:
        self._client, self._helpers = connect(self.url, max_connections=self.max_connections)
        for name, source in ALL_SCRIPTS.items():
            self._scripts[name] = self._client.register_script(source)
        try:
            with mapped_errors():
                await self._client.ping()
        except errors.StateUnavailable:
            await self.close()
            raise
        self._listener = asyncio.create_task(self._listen(), name="tus-lock-release-listener")
        # Do not serve before release requests can be heard.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._listening.wait()

    async def close(self) -> None:
        await stop_tasks([self._listener])
        self._listener = None
        for held in list(self.held.values()):
            if held.extender is not None:
                held.extender.cancel()
        if self._client is not None:
            await self._client.aclose()
            pool = getattr(self._client, "connection_pool", None)  # a cluster has one per node
            if pool is not None:
                await pool.disconnect()
            self._client = None
        for helper in self._helpers:
            await helper.aclose()
        self._helpers = []

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with mapped_errors():
            return await self._scripts[name](keys=list(keys), args=list(args))

    async def acked_script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``script`` for a write that a client is told about (an offset, a record): with
        ``min_replicas``, it counts only once that many replicas have it, so a failover to
        one of them cannot take it back. WAIT covers the writes made on its own connection,
        so the script and the WAIT go in one pipeline (one connection; on a cluster, one
        connection of the keys' primary). Fewer replicas in time is a 503: the write may
        be lost, the client asks again and finds the truth."""
        if self.min_replicas <= 0:
            return await self.script(name, keys, args)
        if hasattr(self.client, "get_nodes"):
            reply, replicas = await self._on_node_then_wait(name, keys, args)
        else:
            reply, replicas = await self._then_wait(name, keys, args)
        if int(replicas) < self.min_replicas:
            now = time.monotonic()
            if now - _last_logged[0] > 5.0:
                _last_logged[0] = now
                log.warning("only %s of %d Redis replicas acknowledged a write within %d ms",
                            replicas, self.min_replicas, self.replica_timeout_ms)
            raise errors.StateUnavailable()
        return reply

    async def _then_wait(self, name: str, keys: Sequence[str],
                         args: Sequence[Any]) -> tuple[Any, Any]:
        with mapped_errors():
            async with self.client.pipeline(transaction=False) as pipe:
                await self._scripts[name](keys=list(keys), args=list(args), client=pipe)
                pipe.wait(self.min_replicas, self.replica_timeout_ms)
                try:
                    reply, replicas = await pipe.execute()
                except redis_errors.ResponseError as exc:
                    # A script that changed nothing runs on a primary demoted since the
                    # connection was made; WAIT there is refused as on any replica.
                    if "cannot be used with replica" in str(exc):
                        raise errors.StateUnavailable() from exc
                    raise
        return reply, replicas

    async def _on_node_then_wait(self, name: str, keys: Sequence[str],
                                 args: Sequence[Any]) -> tuple[Any, Any]:
        """``_then_wait`` on a Redis Cluster, whose pipelines send WAIT (a command without
        a key) to every primary on other connections: the script and its WAIT go on one
        connection of the primary that holds the keys' slot."""
        cluster: Any = self.client
        script = self._scripts[name]
        with mapped_errors():
            node = cluster.get_node_from_key(keys[0])
            connection = node.acquire_connection()
            try:
                for _ in range(2):
                    await connection.send_packed_command(connection.pack_commands([
                        ("EVALSHA", script.sha, len(keys), *keys, *args),
                        ("WAIT", self.min_replicas, self.replica_timeout_ms)]))
                    try:
                        reply = await connection.read_response()
                    except redis_errors.NoScriptError:
                        await connection.read_response()  # the WAIT's answer
                        await connection.send_packed_command(
                            connection.pack_command("SCRIPT", "LOAD", script.script))
                        await connection.read_response()
                        continue
                    return reply, await connection.read_response()
                raise RuntimeError(f"Redis forgets the script {name!r}")
            except redis_errors.AskError as exc:  # MOVED too: the slot moved meanwhile
                await connection.disconnect()
                cluster._initialize = True  # the client reads the slots again
                raise errors.StateUnavailable() from exc
            except BaseException:
                # An answer may still be on its way: the connection is not reused.
                await connection.disconnect()
                raise
            finally:
                node.release(connection)

    def token(self, upload_id: str) -> str:
        """The fencing token of a lock this process holds on the upload, or '' (no fence)."""
        held = self.held.get(upload_id)
        return "" if held is None else held.token

    # --- release requests ----------------------------------------------------------------
    async def request_release(self, upload_id: str) -> None:
        local = self.held.get(upload_id)
        if local is not None:
            local.ask()
            return
        keys = self.keys
        with mapped_errors():
            # Two commands, not a pipeline: a cluster client refuses PUBLISH in one.
            await self.client.set(keys.release(upload_id), b"1", px=RELEASE_FLAG_TTL_MS)
            await self.client.publish(keys.release_channel, upload_id.encode())

    async def _listen(self) -> None:
        """Hear "please let go" from every instance; reconnect for as long as we run."""
        delay = 0.1
        while True:
            try:
                async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.keys.release_channel)
                    self._listening.set()
                    delay = 0.1
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if message is None:
                            continue
                        held = self.held.get(_text(message["data"]))
                        if held is not None:
                            held.ask()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Meanwhile the release flag, seen when a holder extends its lock, still works.
                log.warning("lock release listener lost Redis (%s); reconnecting", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


class RedisLocker:
    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend

    def new_lock(self, upload_id: str) -> RedisLock:
        return RedisLock(self.backend, upload_id)

    def held(self, upload_id: str) -> bool:
        """Whether this process holds the upload (other instances may hold it too)."""
        return upload_id in self.backend.held


class RedisLock:
    def __init__(self, backend: RedisBackend, upload_id: str) -> None:
        self._backend = backend
        self._id = upload_id
        self._held: _Held | None = None

    async def acquire(self, timeout_s: float, on_release_requested: Callable[[], None]) -> None:
        backend = self._backend
        keys = backend.keys
        token = secrets.token_hex(16)
        sent = 0.0

        async def take() -> bool:
            nonlocal sent
            sent = time.monotonic()
            won = await backend.script("acquire", [keys.lock(self._id), keys.release(self._id)],
                                       [token, backend.lock_ttl_ms])
            return bool(won == 1)

        await self._poll(take, timeout_s)
        held = _Held(token, on_release_requested, deadline=sent + backend.lock_hold_s)
        backend.held[self._id] = held
        held.extender = asyncio.create_task(self._extend(held), name=f"tus-lock-{self._id}")
        self._held = held

    async def wait_free(self, timeout_s: float) -> None:
        backend = self._backend

        async def free() -> bool:
            with mapped_errors():
                return not await backend.client.exists(backend.keys.lock(self._id))

        await self._poll(free, timeout_s)

    async def _poll(self, attempt: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
        """Repeat ``attempt`` until it succeeds, asking the holder to let go meanwhile."""
        backend = self._backend
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        asked_at = float("-inf")
        pause = 0.005
        while not await attempt():
            now = loop.time()
            if now >= deadline:
                raise errors.UploadLocked()
            if now - asked_at >= 0.5:
                # Asked again now and then: a holder that missed the message sees the flag.
                await backend.request_release(self._id)
                asked_at = now
            await asyncio.sleep(min(pause, max(deadline - now, 0.0)))
            pause = min(pause * 2, 0.05)

    async def _extend(self, held: _Held) -> None:
        """Extend the lock every third of its TTL; past its deadline, give the upload up."""
        backend = self._backend
        keys = backend.keys
        while True:
            await asyncio.sleep(backend.lock_ttl_ms / 3000)
            sent = time.monotonic()
            # An event loop held up (or a process stopped) past the deadline may wake up to
            # a lock that lapsed and was taken meanwhile: a late extend proves nothing.
            answer = -1
            if sent < held.deadline:
                try:
                    # An answer that comes after the deadline is worth no more than none.
                    async with asyncio.timeout(held.deadline - sent):
                        answer = await backend.script(
                            "extend", [keys.lock(self._id), keys.release(self._id)],
                            [held.token, backend.lock_ttl_ms])
                except (errors.StateUnavailable, TimeoutError):
                    if time.monotonic() < held.deadline:
                        continue  # Redis may be back before the deadline
            if answer == -1:
                held.lost = True
                held.ask()
                return
            held.deadline = sent + backend.lock_hold_s
            if answer == 1:
                held.ask()

    async def release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        backend = self._backend
        if backend.held.get(self._id) is held:
            del backend.held[self._id]
        if held.extender is not None:
            held.extender.cancel()
        keys = backend.keys
        try:
            await backend.script("release", [keys.lock(self._id), keys.release(self._id)],
                                 [held.token])
        except errors.StateUnavailable:
            log.warning("could not release the lock of %s; it expires by itself", self._id)


class _RedisWriter(SpoolWriter):
    """Appends where Redis holds the offset: uncommitted bytes past it are cut off first.

    Fenced by the lock it writes under (``held``; None when the caller holds no lock): once
    that lock may have changed hands, the file belongs to another request, and touching it,
    even to truncate, would harm its bytes. What we wrote past the committed offset before
    that moment is cut off by the next owner."""

    def __init__(self, path: Path, offset: int, checksum: Checksum | None, *, durable: bool,
                 commit_interval: int, sync_interval: int, held: _Held | None) -> None:
        super().__init__(path, offset, checksum, durable=durable,
                         commit_interval=commit_interval, sync_interval=sync_interval)
        self.held = held

    def fence(self) -> None:
        if self.held is not None:
            self.held.fence()

    def prepare(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size > self.offset:
            self.fence()
            os.ftruncate(fd, self.offset)  # a writer died before committing these bytes
        elif size < self.offset:
            raise OSError(f"the spool file of {self.path.name} holds {size} bytes but "
                          f"{self.offset} were committed; is the spool volume shared?")


class RedisStore:
    """``UploadStore`` with state in Redis and bytes in a (shared) spool directory."""

    def __init__(self, backend: RedisBackend, root: Path, pool: IoPool, *, fsync: FsyncPolicy,
                 write_buffer_bytes: int, commit_interval_bytes: int,
                 sync_interval_bytes: int, tombstone_ttl_s: float,
                 file_mode: int = 0o600) -> None:
        self.backend = backend
        self.keys = backend.keys
        self.root = root
        self.spool = root / "uploads"
        self._pool = pool
        self._durable = fsync is FsyncPolicy.ACK
        self._buffer_bytes = write_buffer_bytes
        self._commit_interval = commit_interval_bytes
        self._sync_interval = sync_interval_bytes
        self._tomb_ttl_ms = max(int(tombstone_ttl_s * 1000), 1)
        self._appending = 0
        self._file_mode = file_mode
        self._unreadable: set[str] = set()  # records this process could not read

    async def open(self) -> None:
        await self._pool.run(lambda: self.spool.mkdir(parents=True, exist_ok=True))
        await self._backfill_indexes()
        await self._backfill_waiting()

    async def _backfill_indexes(self) -> None:
        """Uploads made before the expiry and finish indexes existed go into both once: due
        at once (the sweeper reads each and notes its real time) and owing their finish
        (the next start reads each and clears what is done)."""
        client, keys = self.backend.client, self.keys
        with mapped_errors():
            if await client.exists(keys.indexed):
                return
            ids = [_text(i) for i in await client.zrange(keys.index, 0, -1)]
            for start in range(0, len(ids), 10_000):
                batch = ids[start:start + 10_000]
                async with client.pipeline(transaction=False) as pipe:
                    pipe.zadd(keys.expiry, dict.fromkeys(batch, 0), nx=True)
                    pipe.sadd(keys.finish_owed, *batch)
                    await pipe.execute()
            await client.set(keys.indexed, b"1")

    async def close(self) -> None:
        return None

    def data_path(self, upload_id: str) -> Path:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise errors.NotFound()
        return self.spool / f"{upload_id}.bin"

    # --- records -----------------------------------------------------------------------------
    async def create(self, info: UploadInfo) -> UploadState:
        upload_id = info.upload_id
        # The index first: an entry without a record is pruned by the sweeper, while a record
        # missing from the index would never be swept.
        with mapped_errors():
            await self.backend.client.zadd(self.keys.index, {upload_id: info.created_at})
        await self._pool.run(self._create_file, self.data_path(upload_id))
        created = await self.backend.acked_script(
            "create", [self.keys.upload(upload_id), self.keys.tomb(upload_id)],
            [_encode(info), repr(info.created_at)])
        if created != 1:
            raise FileExistsError(f"upload id {upload_id} is taken")
        return UploadState(info, 0, info.created_at)

    def _create_file(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self._file_mode)
        try:
            os.fchmod(fd, self._file_mode)  # exactly the setting, whatever the umask
        finally:
            os.close(fd)
        if self._durable:
            fsync_dir(path.parent)

    async def get(self, upload_id: str) -> UploadState:
        reply = await self.backend.script(
            "get", [self.keys.upload(upload_id), self.keys.tomb(upload_id)], [])
        if len(reply) == 1:
            raise errors.Gone() if _text(reply[0]) == "gone" else errors.NotFound()
        try:
            info = UploadInfo.from_json(json.loads(reply[0]))
            if len(reply) > 3 and reply[3] is not None:
                info = info.replace(hook=newest_hook(
                    info.hook, HookState.from_json(json.loads(reply[3]))))
        except UNREADABLE as exc:
            self._cannot_read(upload_id, exc)
            raise errors.NotFound() from None
        offset = int(reply[1])
        held = self.backend.held.get(upload_id)
        if held is not None:
            held.offset = offset
        if info.is_final and info.assembled and info.length is not None:
            offset = info.length
        return UploadState(info, offset, max(info.created_at, float(reply[2])))

    async def save_info(self, info: UploadInfo, *, durable: bool = True) -> None:
        upload_id = info.upload_id
        answer = _text(await self.backend.acked_script(
            "save_info", [self.keys.upload(upload_id), self.keys.lock(upload_id)],
            [self.backend.token(upload_id), _encode(info)]))
        _raise_for(answer)

    async def save_hook(self, upload_id: str, hook: HookState) -> None:
        answer = _text(await self.backend.script(
            "save_hook", [self.keys.upload(upload_id)], [json.dumps(hook.to_json())]))
        if answer == "missing":
            await self.get(upload_id)  # raises NotFound or Gone
            raise errors.NotFound()

    async def discard_data(self, upload_id: str) -> None:
        await self._pool.run(self.data_path(upload_id).unlink, True)

    async def upload_ids(self) -> list[str]:
        with mapped_errors():
            raw = await self.backend.client.zrange(self.keys.index, 0, -1)
        return sorted(i for i in map(_text, raw) if UPLOAD_ID.fullmatch(i))

    # --- bytes -------------------------------------------------------------------------------
    async def append(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], *,
                     max_bytes: int | None, checksum: Checksum | None) -> int:
        backend = self.backend
        held = backend.held.get(upload_id)
        current = held.offset if held is not None and not held.lost else None
        if current is None:
            current = (await self.get(upload_id)).offset
        if current != offset:
            raise errors.MismatchedOffset(headers={"Upload-Offset": str(current)})
        writer = _RedisWriter(self.data_path(upload_id), offset, checksum,
                              durable=self._durable, commit_interval=self._commit_interval,
                              sync_interval=self._sync_interval, held=held)
        # This request's own token: should it lose the lock and a newer request of this same
        # process take it, the newer one's token must not let our commit through.
        token = "" if held is None else held.token
        committed = offset

        async def commit() -> None:
            nonlocal committed
            target = writer.synced  # a later window may become durable during the await
            if target > committed:
                if held is not None:
                    # The token-fenced compare-and-set alone would be enough (a lock that
                    # lapsed never comes back with our token); this spares a round trip.
                    held.fence()
                await self._commit(upload_id, committed, target, token)
                committed = target

        self._appending += 1
        try:
            await pump(writer, chunks, self._pool, buffer_bytes=self._buffer_bytes,
                       max_bytes=max_bytes, crowded=lambda: self._appending > OVERLAP_UP_TO,
                       on_window=commit)
        except BaseException:
            # The bytes that were kept are synced now; they count once the offset says so.
            await run_to_completion(commit())
            raise
        finally:
            self._appending -= 1
        await commit()
        return committed

    async def _commit(self, upload_id: str, expected: int, new: int, token: str) -> None:
        reply = await self.backend.acked_script(
            "commit", [self.keys.upload(upload_id), self.keys.lock(upload_id)],
            [token, expected, new, repr(time.time())])
        answer = _text(reply[0])
        if answer == "lost":
            raise errors.UploadInterrupted("the upload's lock expired before its bytes were "
                                           "committed")
        if answer == "missing":
            raise errors.Gone()
        held = self.backend.held.get(upload_id)
        if held is not None:
            held.offset = new if answer == "ok" else None
        if answer == "conflict":
            raise errors.MismatchedOffset(headers={"Upload-Offset": _text(reply[1])})

    async def assemble(self, final: UploadInfo, partial_ids: tuple[str, ...]) -> int:
        sources = []
        for partial_id in partial_ids:
            state = await self.get(partial_id)
            sources.append((self.data_path(partial_id), state.offset))
        return await self._pool.run(concatenate, self.data_path(final.upload_id), sources,
                                    self._durable)

    # --- removal -----------------------------------------------------------------------------
    async def terminate(self, upload_id: str, reason: str, *,
                        if_offset: int | None = None) -> bool:
        keys = self.keys
        tomb = json.dumps({"reason": reason, "at": time.time()})
        reply = await self.backend.acked_script(
            "terminate", [keys.upload(upload_id), keys.lock(upload_id), keys.tomb(upload_id),
                          keys.ckpt(upload_id), keys.parts(upload_id)],
            [self.backend.token(upload_id), tomb, self._tomb_ttl_ms,
             "" if if_offset is None else if_offset])
        answer = _text(reply[0])
        held = self.backend.held.get(upload_id)
        if held is not None:
            held.offset = None
        if answer == "changed":
            return False
        _raise_for(answer)
        await self._pool.run(self.data_path(upload_id).unlink, True)
        with mapped_errors():
            async with self.backend.client.pipeline(transaction=False) as pipe:
                pipe.zrem(keys.index, upload_id)
                pipe.zadd(keys.tombs, {upload_id: time.time()})
                pipe.zrem(keys.expiry, upload_id)
                pipe.srem(keys.finish_owed, upload_id)
                await pipe.execute()
        await self.release_open_slot(upload_id)
        # The record's client is its owner (a longer one was never noted: nothing to forget).
        owner = _text(reply[1])
        if len(owner) <= MAX_OWNER_CHARS:
            await self.forget_owned(owner, upload_id)
        return True

    async def purge_tombstones(self, older_than: float) -> int:
        """Forget old tombstones (their TTL in Redis is a safety net). Entries of the live
        index without a record (a create or a termination that lost Redis half-way) leave
        it when their expiry comes due (``schedule_expiry``), not by reading every entry."""
        client = self.backend.client
        with mapped_errors():
            old = [_text(i) for i in await client.zrangebyscore(self.keys.tombs, "-inf",
                                                                older_than)]
            async with client.pipeline(transaction=False) as pipe:
                for upload_id in old:
                    pipe.delete(self.keys.tomb(upload_id))
                    pipe.zrem(self.keys.tombs, upload_id)
                await pipe.execute()
        return len(old)

    async def _without_record(self, upload_ids: list[str]) -> list[str]:
        """The ids among ``upload_ids`` that have no record in Redis (one round trip)."""
        if not upload_ids:
            return []
        with mapped_errors():
            async with self.backend.client.pipeline(transaction=False) as pipe:
                for upload_id in upload_ids:
                    pipe.exists(self.keys.upload(upload_id))
                found = await pipe.execute()
        return [i for i, exists in zip(upload_ids, found, strict=True) if not exists]

    async def remove_orphans(self, older_than: float) -> int:
        def old_files() -> list[str]:
            names = []
            for data in self.spool.glob("*.bin"):
                with contextlib.suppress(FileNotFoundError):
                    if data.stat().st_mtime < older_than:
                        names.append(data.name.removesuffix(".bin"))
            return [n for n in names if UPLOAD_ID.fullmatch(n)]

        orphans = await self._without_record(await self._pool.run(old_files))

        def unlink() -> None:
            for upload_id in orphans:
                self.data_path(upload_id).unlink(missing_ok=True)

        await self._pool.run(unlink)
        await self._prune_open_slots(older_than)
        return len(orphans)

    # --- finals waiting for partials ---------------------------------------------------------
    async def register_final(self, final_id: str, partial_ids: tuple[str, ...], *,
                             max_per_partial: int = 0) -> None:
        client = self.backend.client
        with mapped_errors():
            # Registered before: recovery making sure of it, which no limit refuses.
            again = bool(await client.hexists(self.keys.finals, final_id))
            # The final is listed first, so a registration that dies half-way is found
            # (``waiting_finals``) and cleaned up like any other final without a record.
            await client.hset(self.keys.finals, final_id, json.dumps(partial_ids))
        for partial_id in dict.fromkeys(partial_ids):
            added = await self.backend.script(
                "wait_for_partial", [self.keys.waiting(partial_id)],
                [final_id, 0 if again else max_per_partial])
            if added == 0:
                await self.unregister_final(final_id)
                raise errors.TooManyFinals(f"partial upload {partial_id} has "
                                           f"{max_per_partial} finals waiting for it")

    async def unregister_final(self, final_id: str) -> None:
        client = self.backend.client
        with mapped_errors():
            raw = await client.hget(self.keys.finals, final_id)
            async with client.pipeline(transaction=False) as pipe:
                for partial_id in dict.fromkeys(json.loads(raw) if raw else ()):
                    pipe.srem(self.keys.waiting(str(partial_id)), final_id)
                pipe.hdel(self.keys.finals, final_id)
                await pipe.execute()

    async def _backfill_waiting(self) -> None:
        """Finals registered before each partial kept the set of the finals waiting for it
        go into those sets. Adding is idempotent and waiting finals are few (each is an open
        upload), so every start does it."""
        waiting = await self.waiting_finals()
        if not waiting:
            return
        with mapped_errors():
            async with self.backend.client.pipeline(transaction=False) as pipe:
                for final_id, partial_ids in waiting.items():
                    for partial_id in dict.fromkeys(partial_ids):
                        pipe.sadd(self.keys.waiting(partial_id), final_id)
                await pipe.execute()

    async def finals_waiting_on(self, partial_id: str) -> list[str]:
        with mapped_errors():
            members = await self.backend.client.smembers(self.keys.waiting(partial_id))
        return sorted(map(_text, members))

    # --- open uploads: one index every instance shares; claims are checked and counted in
    # one script, so instances racing for the last slot cannot both win -------------------
    async def claim_open_slot(self, upload_id: str, client: str, *, max_total: int,
                              max_per_client: int) -> None:
        keys = self.keys
        answer = _text(await self.backend.script(
            "claim_open", [keys.open_uploads, keys.open_since, keys.open_of(client)],
            [upload_id, client, repr(time.time()), max_total, max_per_client]))
        if answer == "total":
            raise errors.OpenUploadsLimit()
        if answer == "client":
            raise errors.ClientOpenUploadsLimit()

    async def release_open_slot(self, upload_id: str) -> None:
        keys = self.keys
        with mapped_errors():
            client = await self.backend.client.hget(keys.open_uploads, upload_id)
        if client is not None:
            await self.backend.script(
                "release_open", [keys.open_uploads, keys.open_since, keys.open_of(_text(client))],
                [upload_id, _text(client)])

    async def open_slots_taken(self, client: str | None = None) -> int:
        with mapped_errors():
            if client is None:
                return int(await self.backend.client.hlen(self.keys.open_uploads))
            return int(await self.backend.client.scard(self.keys.open_of(client)))

    async def _prune_open_slots(self, older_than: float) -> None:
        """Slots claimed before ``older_than`` for a record that is not there: a creation
        that died between its claim and its record, or a removal between its record and its
        release."""
        with mapped_errors():
            old = [_text(i) for i in await self.backend.client.zrangebyscore(
                self.keys.open_since, "-inf", older_than)]
        for upload_id in await self._without_record(old):
            await self.release_open_slot(upload_id)

    # --- owners: a listing and the held bytes per owner, in the owner's own slot; a hold is
    # checked and recorded in one script, so instances racing for an owner's last bytes
    # cannot both win --------------------------------------------------------------------
    async def note_owned(self, owner: str, upload_id: str, created_at: float) -> None:
        key = self.keys.owned(owner)
        if not math.isfinite(created_at):
            raise ValueError("an upload's creation time is a finite number")
        with mapped_errors():
            await self.backend.client.zadd(key, {upload_id: created_at})

    async def owned(self, owner: str, *, before: tuple[float, str] | None,
                    limit: int) -> list[tuple[str, float]]:
        key = self.keys.owned(owner)
        if before is not None and not math.isfinite(before[0]):
            raise ValueError("a cursor's creation time is a finite number")
        if limit < 1:
            return []
        cursor = ["", ""] if before is None else [repr(float(before[0])), before[1]]
        flat = await self.backend.script("owned", [key], [limit, *cursor])
        return [(_text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def hold_bytes(self, owner: str, upload_id: str, nbytes: int, *,
                         max_total: int) -> int | None:
        key = self.keys.held(owner)
        if nbytes < 0 or max_total < 0:
            raise ValueError("bytes held and their limit are not negative")
        answer = int(await self.backend.script("hold_bytes", [key],
                                               [upload_id, nbytes, max_total]))
        return None if answer < 0 else answer

    async def release_bytes(self, owner: str, upload_id: str) -> None:
        key = self.keys.held(owner)
        with mapped_errors():
            await self.backend.client.hdel(key, upload_id)

    async def bytes_held(self, owner: str) -> int:
        key = self.keys.held(owner)
        with mapped_errors():
            return sum(int(held) for held in await self.backend.client.hvals(key))

    async def forget_owned(self, owner: str, upload_id: str) -> None:
        keys = self.keys
        listing, held = keys.owned(owner), keys.held(owner)
        with mapped_errors():
            # One slot (the owner's hash tag): both go, or neither.
            async with self.backend.client.pipeline(transaction=True) as pipe:
                pipe.zrem(listing, upload_id)
                pipe.hdel(held, upload_id)
                await pipe.execute()

    async def waiting_finals(self) -> dict[str, tuple[str, ...]]:
        with mapped_errors():
            raw = await self.backend.client.hgetall(self.keys.finals)
        return {_text(k): tuple(json.loads(v)) for k, v in raw.items()}

    # --- sink checkpoints --------------------------------------------------------------------
    async def checkpoint(self, upload_id: str) -> Checkpoint:
        with mapped_errors():
            async with self.backend.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.keys.ckpt(upload_id))
                pipe.smembers(self.keys.parts(upload_id))
                head, parts = await pipe.execute()
        head = {_text(k): _text(v) for k, v in head.items()}
        return Checkpoint(head.get("remote_id"), float(head.get("started_at", 0.0)),
                          frozenset(int(p) for p in parts))

    async def start_remote(self, upload_id: str, remote_id: str, started_at: float) -> None:
        keys = self.keys
        done = await self.backend.script(
            "start_remote", [keys.upload(upload_id), keys.ckpt(upload_id),
                             keys.parts(upload_id)], [remote_id, repr(started_at)])
        if done != 1:
            raise errors.NotFound()

    async def add_parts(self, upload_id: str, remote_id: str, parts: Sequence[int]) -> bool:
        if not parts:
            return True
        done = await self.backend.script(
            "add_parts", [self.keys.ckpt(upload_id), self.keys.parts(upload_id)],
            [remote_id, *parts])
        return bool(done == 1)

    # --- expiry and finish indexes -----------------------------------------------------------
    async def schedule_expiry(self, upload_id: str, at: float | None) -> None:
        client = self.backend.client
        with mapped_errors():
            if at is not None:
                await client.zadd(self.keys.expiry, {upload_id: at})
                return
            await client.zrem(self.keys.expiry, upload_id)
        # Taken out because its record is gone (or it never expires): a live index entry
        # without a record goes too, so no sweep needs to read the whole live index.
        if await self._without_record([upload_id]):
            with mapped_errors():
                await client.zrem(self.keys.index, upload_id)

    async def due_for_expiry(self, now: float, limit: int) -> list[str]:
        with mapped_errors():
            raw = await self.backend.client.zrangebyscore(self.keys.expiry, "-inf", now,
                                                          start=0, num=limit)
        return [i for i in map(_text, raw) if UPLOAD_ID.fullmatch(i)]

    async def owe_finish(self, upload_id: str, owed: bool) -> None:
        with mapped_errors():
            if owed:
                await self.backend.client.sadd(self.keys.finish_owed, upload_id)
            else:
                await self.backend.client.srem(self.keys.finish_owed, upload_id)

    async def finish_owed(self) -> list[str]:
        with mapped_errors():
            members = await self.backend.client.smembers(self.keys.finish_owed)
        return sorted(i for i in map(_text, members) if UPLOAD_ID.fullmatch(i))

    @property
    def unreadable(self) -> int:
        return len(self._unreadable)

    def _cannot_read(self, upload_id: str, exc: BaseException) -> None:
        """A record this version cannot parse (a newer version's during a rolling upgrade,
        or damage): left in place for the instances that can, answered as not found here,
        said once per upload (and counted, up to a bound)."""
        if upload_id in self._unreadable:
            return
        if len(self._unreadable) < MAX_UNREADABLE_NOTED:
            self._unreadable.add(upload_id)
        log.error("upload %s: its record cannot be read (%s: %s); it answers 404",
                  upload_id, type(exc).__name__, exc)

    # --- coordination ------------------------------------------------------------------------
    async def owe_sink(self, upload_id: str, owed: bool) -> None:
        with mapped_errors():
            if owed:
                await self.backend.client.sadd(self.keys.sink_owed(), upload_id)
            else:
                await self.backend.client.srem(self.keys.sink_owed(), upload_id)

    async def sink_owed(self) -> list[str]:
        with mapped_errors():
            members = await self.backend.client.smembers(self.keys.sink_owed())
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def owe_hook(self, upload_id: str, owed: bool) -> None:
        with mapped_errors():
            if owed:
                await self.backend.client.sadd(self.keys.hooks_owed(), upload_id)
            else:
                await self.backend.client.srem(self.keys.hooks_owed(), upload_id)

    async def hooks_owed(self) -> list[str]:
        with mapped_errors():
            members = await self.backend.client.smembers(self.keys.hooks_owed())
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def claim_lease(self, name: str, ttl_s: float) -> bool:
        with mapped_errors():
            return bool(await self.backend.client.set(
                self.keys.lease(name), b"1", nx=True, px=max(int(ttl_s * 1000), 1)))

    async def hold_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return bool(await self.backend.script("hold_lease", [self.keys.lease(name)],
                                              [owner, max(int(ttl_s * 1000), 1)]))

    async def drop_lease(self, name: str, owner: str) -> None:
        await self.backend.script("drop_lease", [self.keys.lease(name)], [owner])


def _raise_for(answer: str) -> None:
    if answer == "ok":
        return
    if answer == "lost":
        raise errors.UploadInterrupted("the upload's lock expired")
    if answer == "missing":
        raise errors.NotFound()
    if answer == "length_fixed":
        raise errors.LengthAlreadySet()
    if answer == "below_offset":
        raise errors.LengthBelowOffset()
    raise RuntimeError(f"unexpected answer from Redis: {answer!r}")


def _encode(info: UploadInfo) -> str:
    return json.dumps(info.to_json(), separators=(",", ":"))
