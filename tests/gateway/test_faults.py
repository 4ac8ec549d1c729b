"""Fault tests against a real gateway on loopback: cut connections, racing and stalled PATCHes,
DELETE during a PATCH, and graceful shutdown of a real process.

PATCH requests are written by hand on raw sockets (``RawPatch``) so a test can stop in the
middle of a body, stall with the socket open, interleave two bodies or cut the connection.
Nothing of the gateway is mocked: every assertion is about bytes on disk and what the HTTP
API reports. In process, a test may look (never touch) at which request holds an upload, to
know when the gateway has finished with a cut connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.keys import RUNTIME
from gateway.state.memlock import MemoryLocker
from gateway.state.redis import RedisLocker
from tests.conftest import GatewayProcess
from tests.helpers import TUS, metadata, patch_headers, path_of

KiB = 1024
MiB = 1024 * KiB
HOST = "127.0.0.1"


# --- a hand-written HTTP/1.1 PATCH ------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def offset(self) -> int | None:
        raw = self.headers.get("upload-offset")
        return None if raw is None else int(raw)


class RawPatch(asyncio.Protocol):
    """One PATCH on its own connection, written by hand.

    A plain protocol rather than asyncio streams: whatever the server answers is kept even
    when a later write fails, so a test can read the answer of a request it was still
    sending. ``sent`` counts the body bytes handed to the transport.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._spare: socket.socket | None = None
        self.received = bytearray()
        self.sent = 0
        self.lost = False
        self._changed = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._gone = asyncio.Event()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's does not subclass asyncio.Transport, so no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        # A second handle on the socket: asyncio drops what is still unread in the kernel
        # when a write fails (the server closed a request it stopped reading, so its kernel
        # answers our writes with RST), but the answer before the RST is still there to read.
        spare = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        spare.setblocking(False)
        self._spare = spare

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._changed.set()

    def eof_received(self) -> bool | None:
        self._changed.set()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            with spare:
                for _ in range(64):
                    try:
                        data = spare.recv(64 * KiB)
                    except OSError:
                        break
                    if not data:
                        break
                    self.received += data
        self.lost = True
        self._changed.set()
        self._writable.set()
        self._gone.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # the test's side
    @classmethod
    async def open(cls, port: int, path: str, offset: int, length: int,
                   extra: dict[str, str] | None = None) -> RawPatch:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, HOST, port)
        lines = [f"PATCH {path} HTTP/1.1", f"Host: {HOST}:{port}", "Tus-Resumable: 1.0.0",
                 f"Upload-Offset: {offset}", "Content-Type: application/offset+octet-stream",
                 f"Content-Length: {length}"]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        conn._write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return conn

    def _write(self, data: bytes) -> None:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)

    async def send(self, data: bytes) -> None:
        self._write(data)
        self.sent += len(data)
        await self._writable.wait()
        if self.lost:
            raise ConnectionResetError("the connection was lost while sending")

    async def send_quietly(self, data: bytes) -> bool:
        """Send unless the server already closed the connection; False if it did."""
        try:
            await self.send(data)
        except ConnectionError:
            return False
        return True

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every byte written has been handed to the kernel."""
        assert self.transport is not None
        async with asyncio.timeout(timeout_s):
            while not self.lost and self.transport.get_write_buffer_size():
                await asyncio.sleep(0.005)

    def _parse(self) -> Reply | None:
        end = self.received.find(b"\r\n\r\n")
        if end < 0:
            return None
        status_line, *header_lines = self.received[:end].decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = bytes(self.received[end + 4:end + 4 + length])
        if len(body) < length:
            return None
        return Reply(int(status_line.split()[1]), headers, body)

    async def reply(self, timeout_s: float = 15.0) -> Reply:
        """The server's answer; ConnectionError if it closed the connection without one."""
        async with asyncio.timeout(timeout_s):
            while (answer := self._parse()) is None:
                if self.lost:
                    raise ConnectionResetError("closed without a complete answer")
                self._changed.clear()
                await self._changed.wait()
        return answer

    def abort(self, reset: bool = False) -> None:
        """Drop the connection at once; ``reset`` makes the kernel send RST instead of FIN."""
        assert self.transport is not None
        if reset:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    async def wait_lost(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self._gone.wait()

    async def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._gone.wait()
        if self._spare is not None:
            self._spare.close()
            self._spare = None


async def send_slices(conn: RawPatch, data: bytes, piece: int,
                      pause_s: float = 0.0) -> None:
    for start in range(0, len(data), piece):
        await conn.send(data[start:start + piece])
        if pause_s:
            await asyncio.sleep(pause_s)


# --- the gateway under test and small helpers ------------------------------------------------
Http = TestClient[Any, Any] | aiohttp.ClientSession
MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@dataclass
class Gateway:
    """A gateway reached over loopback: in this process (``make_client``) or a child process."""

    http: Http  # takes paths: a TestClient, or a session with a base_url
    port: int
    data_dir: Path
    locker: MemoryLocker | RedisLocker | None = None  # in-process: who holds an upload
    offset_is_file_size: bool = True  # the disk store's rule; Redis commits elsewhere


async def in_process(make_client: MakeClient, **overrides: Any) -> Gateway:
    client = await make_client(**overrides)
    port = client.server.port
    assert port is not None
    server = client.server
    assert isinstance(server, TestServer)
    uploads = server.app[RUNTIME].require()
    assert isinstance(uploads.locker, MemoryLocker | RedisLocker)
    return Gateway(client, port, uploads.config.data_dir, uploads.locker,
                   not uploads.config.redis.url)


def session_for(port: int) -> aiohttp.ClientSession:
    # No keep-alive: a killed or restarted gateway leaves no stale pooled connection behind.
    return aiohttp.ClientSession(base_url=f"http://{HOST}:{port}",
                                 connector=aiohttp.TCPConnector(force_close=True))


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def id_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def data_file(data_dir: Path, path: str, name: str | None = None) -> Path:
    """The upload's bytes: the spool's file while it has one, then the delivered file (named
    ``name``, or after the id), which is the only copy once an upload is delivered."""
    spool = data_dir / "uploads" / f"{id_of(path)}.bin"
    if spool.exists():
        return spool
    return data_dir / "complete" / (name or id_of(path))


async def create(g: Gateway, length: int, filename: str | None = None) -> str:
    headers = {**TUS, "Upload-Length": str(length)}
    if filename:
        headers["Upload-Metadata"] = metadata(filename=filename)
    async with g.http.post("/files/", headers=headers) as r:
        assert r.status == 201, await r.text()
        return path_of(r.headers["Location"])


async def head_offset(g: Gateway, path: str) -> int:
    async with g.http.head(path, headers=TUS) as r:
        assert r.status == 200, r.status
        return int(r.headers["Upload-Offset"])


async def read_by_server(g: Gateway, path: str, expected: int, timeout_s: float = 10.0) -> None:
    """Wait until the gateway has read ``expected`` bytes of the request streaming into
    ``path`` (the status API counts the bytes of a request still under way)."""
    upload_id = path.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout_s
    while True:
        async with g.http.get(f"/api/upload/status/{upload_id}") as r:
            assert r.status == 200, r.status
            received = int((await r.json())["bytes_received"])
        if received >= expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway read {received} of {expected} bytes in "
                                 f"{timeout_s}s")
        await asyncio.sleep(0.02)


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_settled(g: Gateway, path: str, expected: int, timeout_s: float = 5.0) -> None:
    """Wait until the gateway is done with the request that held ``path``.

    A HEAD sent earlier would pre-empt a request whose bytes are still being read. In process
    the lock shows it; for a child process the data file must reach ``expected`` bytes or
    stop growing for half a second.
    """
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = data_file(g.data_dir, path).stat().st_size
        if size != last:
            last, since = size, time.monotonic()
        if size >= expected or time.monotonic() - since > 0.5:
            break
        await asyncio.sleep(0.01)
    if g.locker is not None:
        locker = g.locker
        await wait_until(lambda: not locker.held(id_of(path)), timeout_s, "the lock's release")


async def finish_and_verify(g: Gateway, path: str, data: bytes,
                            name: str | None = None) -> None:
    """Resume from HEAD's offset, then check the download and the stored file byte for byte
    (the delivered file, named ``name`` or after the id, once the upload is complete)."""
    offset = await head_offset(g, path)
    stored = data_file(g.data_dir, path, name).read_bytes()
    assert len(stored) == offset, "the offset is not the data file's size"
    assert stored == data[:offset], "the stored bytes are not a prefix of the file"
    if offset < len(data):
        async with g.http.patch(path, data=io.BytesIO(data[offset:]),
                                headers=patch_headers(offset)) as r:
            assert r.status == 204, await r.text()
            assert r.headers["Upload-Offset"] == str(len(data))
    async with g.http.get(path) as r:
        assert r.status == 200
        assert sha(await r.read()) == sha(data)
    assert sha(data_file(g.data_dir, path, name).read_bytes()) == sha(data)


def server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Errors the in-process server logged: a fault the gateway handles is not an error."""
    return [f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else r.getMessage()
            for r in caplog.records if r.levelno >= logging.ERROR]


# --- a PATCH cut off midway -------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fin", "fin-after-pause", "rst-after-pause"])
@pytest.mark.parametrize("where", ["in-process", "process"])
@pytest.mark.both_stores
async def test_cut_off_patch_keeps_its_bytes(
        make_client: MakeClient, gateway_process: Callable[..., GatewayProcess],
        where: str, mode: str) -> None:
    """The connection dies mid-body; every byte the server received stays, and resuming works.

    ``fin``: the client writes 3 MiB as fast as it can and closes at once, so much of the body
    is still in kernel and server buffers when the server sees the end of the stream.
    ``fin-after-pause`` and ``rst-after-pause`` close after the server has read everything.
    The in-process server cancels handlers on disconnect (aiohttp's test server does); the
    real process does not, so both ways of ending a request are covered.
    """
    async with contextlib.AsyncExitStack() as stack:
        if where == "in-process":
            g = await in_process(make_client)
        else:
            gw = gateway_process()
            session = await stack.enter_async_context(session_for(gw.port))
            g = Gateway(session, gw.port, gw.data_dir, None, gw.offset_is_file_size)
        data = payload(4 * MiB + 123, seed=1)
        path = await create(g, len(data))
        sent = 3 * MiB + 77
        conn = await RawPatch.open(g.port, path, 0, len(data))
        try:
            await send_slices(conn, data[:sent], 64 * KiB)
            await conn.flush()  # every byte is in the kernel: the server receives them all
            if mode != "fin":
                # "After the server has read everything": a reset discards what is still in
                # the server's socket buffer, which a busy machine may take a while to read.
                await read_by_server(g, path, sent)
            conn.abort(reset=mode.startswith("rst"))
        finally:
            await conn.close()
        await wait_settled(g, path, sent)
        offset = await head_offset(g, path)
        assert offset == sent, f"{sent - offset} received bytes were lost"
        await finish_and_verify(g, path, data)
        if where == "process":
            # A client that went away is not an error of the gateway's.
            errors_logged = [line for line in gw.log().splitlines()
                             if '"level": "error"' in line or "Traceback" in line]
            assert not errors_logged, gw.log()


# --- two PATCHes racing on one upload ---------------------------------------------------------
@pytest.mark.parametrize(("head_start", "piece", "seed"), [
    (0, 16 * KiB, 2),          # both headers arrive together, then interleaved bodies
    (64 * KiB, 32 * KiB, 3),   # the first has a small lead
    (768 * KiB, 64 * KiB, 4),  # the first is well under way when the second arrives
])
@pytest.mark.both_stores
async def test_racing_patches_leave_exact_bytes(
        make_client: MakeClient, caplog: pytest.LogCaptureFixture, head_start: int, piece: int,
        seed: int) -> None:
    g = await in_process(make_client)
    data = payload(2 * MiB + 11, seed=seed)
    path = await create(g, len(data))
    a = await RawPatch.open(g.port, path, 0, len(data))
    b: RawPatch | None = None
    try:
        if head_start:
            await a.send(data[:head_start])
            await asyncio.sleep(0.05)
        b = await RawPatch.open(g.port, path, 0, len(data))
        conns = {"a": a, "b": b}
        replies = {name: asyncio.create_task(conn.reply()) for name, conn in conns.items()}
        live = dict(conns)
        # Interleave the two bodies piece by piece until each is sent or answered.
        for _ in range(2 * len(data) // piece + 2):
            for name, conn in list(live.items()):
                done = replies[name].done() or conn.sent >= len(data)
                if done or not await conn.send_quietly(data[conn.sent:conn.sent + piece]):
                    del live[name]
            if not live:
                break
            await asyncio.sleep(0)
        results: dict[str, Reply | None] = {}
        for name, task in replies.items():
            try:
                results[name] = await task
            except ConnectionError:
                results[name] = None  # closed without an answer
    finally:
        await a.close()
        if b is not None:
            await b.close()
    statuses = {name: (r.status if r else None) for name, r in results.items()}
    assert set(statuses.values()) <= {204, 409, 423}, statuses
    assert {409, 423} & set(statuses.values()), f"neither request was refused: {statuses}"
    for name, reply in results.items():
        assert reply is not None
        if reply.status == 423:
            assert b"ERR_UPLOAD_INTERRUPTED" in reply.body, (name, reply)
        elif reply.status == 409:
            assert b"ERR_MISMATCHED_OFFSET" in reply.body, (name, reply)
            assert reply.offset is not None
        else:
            assert reply.offset == len(data), (name, reply)
    await wait_settled(g, path, len(data))
    await finish_and_verify(g, path, data)
    assert not server_errors(caplog), server_errors(caplog)


# --- a stalled PATCH is pre-empted by a newcomer ----------------------------------------------
@pytest.mark.parametrize("newcomer", ["HEAD", "PATCH"])
@pytest.mark.both_stores
async def test_stalled_patch_is_preempted(make_client: MakeClient,
                                          caplog: pytest.LogCaptureFixture,
                                          newcomer: str) -> None:
    # A long stall timeout and the default 10 s lock wait: only pre-emption answers quickly.
    g = await in_process(make_client, stall_timeout_s=60.0, lock_wait_s=10.0)
    data = payload(3 * MiB + 5, seed=5)
    path = await create(g, len(data))
    sent = 1 * MiB + 333
    conn = await RawPatch.open(g.port, path, 0, len(data))
    try:
        await send_slices(conn, data[:sent], 64 * KiB)
        await conn.flush()
        await asyncio.sleep(0.3)  # the server has read it all; the client now says nothing
        assert g.locker is not None and g.locker.held(id_of(path))
        started = time.monotonic()
        if newcomer == "HEAD":
            offset = await head_offset(g, path)
            elapsed = time.monotonic() - started
            assert offset == sent, f"{sent - offset} received bytes were lost"
        else:
            async with g.http.patch(path, data=io.BytesIO(data[sent:]),
                                    headers=patch_headers(sent)) as r:
                elapsed = time.monotonic() - started
                assert r.status == 204, await r.text()
                assert r.headers["Upload-Offset"] == str(len(data))
        reply = await conn.reply(timeout_s=5)
    finally:
        await conn.close()
    assert elapsed < 3.0, f"{newcomer} waited {elapsed:.2f}s for the stalled request"
    assert reply.status == 423 and b"ERR_UPLOAD_INTERRUPTED" in reply.body, reply
    await finish_and_verify(g, path, data)
    assert not server_errors(caplog), server_errors(caplog)


# --- the stall timeout ------------------------------------------------------------------------
@pytest.mark.both_stores
async def test_stall_timeout_ends_a_dead_patch(make_client: MakeClient) -> None:
    stall_s = 1.0
    g = await in_process(make_client, stall_timeout_s=stall_s)
    data = payload(2 * MiB + 9, seed=6)
    other = payload(1 * MiB, seed=7)
    path = await create(g, len(data))
    sent = 700 * KiB + 1
    conn = await RawPatch.open(g.port, path, 0, len(data))
    try:
        await send_slices(conn, data[:sent], 64 * KiB)
        await conn.flush()
        last_byte = time.monotonic()
        # Meanwhile another upload goes through without waiting for the stalled one.
        other_path = await create(g, len(other))
        async with g.http.patch(other_path, data=io.BytesIO(other),
                                headers=patch_headers(0)) as r:
            assert r.status == 204, await r.text()
        assert g.locker is not None and g.locker.held(id_of(path)), "the stall ended too early"
        reply = await conn.reply(timeout_s=stall_s + 5)
        ended_after = time.monotonic() - last_byte
        # The server gave up on the body: it must close the connection rather than keep
        # reading from a dead client (middleware.CLOSE_AFTER).
        try:
            await conn.wait_lost(timeout_s=3.0)
            closed_in_time = True
        except TimeoutError:
            closed_in_time = False
    finally:
        await conn.close()
    assert reply.status == 408 and b"ERR_READ_TIMEOUT" in reply.body, reply
    assert stall_s * 0.8 <= ended_after < stall_s + 2.0, ended_after
    started = time.monotonic()
    assert await head_offset(g, path) == sent
    assert time.monotonic() - started < 0.5, "HEAD waited although nobody holds the upload"
    await finish_and_verify(g, path, data)
    await finish_and_verify(g, other_path, other)
    assert closed_in_time, "the connection stayed open for more than 3 s after the 408"


# --- DELETE while a PATCH streams -------------------------------------------------------------
@pytest.mark.both_stores
async def test_delete_during_patch(make_client: MakeClient,
                                   caplog: pytest.LogCaptureFixture) -> None:
    g = await in_process(make_client)
    data = payload(16 * MiB, seed=8)
    path = await create(g, len(data))
    conn = await RawPatch.open(g.port, path, 0, len(data))
    stop = asyncio.Event()

    async def stream() -> None:
        while not stop.is_set() and conn.sent < len(data):
            if not await conn.send_quietly(data[conn.sent:conn.sent + 32 * KiB]):
                return
            await asyncio.sleep(0.002)

    sender = asyncio.create_task(stream())
    try:
        await wait_until(lambda: conn.sent >= 1 * MiB or sender.done(), 10, "the PATCH to run")
        assert not sender.done()
        started = time.monotonic()
        async with g.http.delete(path, headers=TUS) as r:
            assert r.status == 204, await r.text()
        assert time.monotonic() - started < 3.0
        reply = await conn.reply(timeout_s=5)
    finally:
        stop.set()
        await sender
        await conn.close()
    assert reply.status == 423, reply
    assert conn.sent < len(data)
    files = g.data_dir / "uploads"
    for _ in range(3):
        async with g.http.head(path, headers=TUS) as r:
            assert r.status in (404, 410)
        assert not list(files.glob(f"{id_of(path)}*")), "the upload's files reappeared"
        await asyncio.sleep(0.1)
    async with g.http.patch(path, data=b"x", headers=patch_headers(0)) as r:
        assert r.status in (404, 410)
    assert not list(files.glob(f"{id_of(path)}*"))
    assert not server_errors(caplog), server_errors(caplog)


# --- graceful shutdown of a real process ------------------------------------------------------
@pytest.mark.parametrize("sending", [False, True], ids=["paused", "streaming"])
@pytest.mark.both_stores
@pytest.mark.slow
async def test_sigterm_commits_in_flight_patch(
        gateway_process: Callable[..., GatewayProcess], sending: bool) -> None:
    """SIGTERM with a PATCH in flight: it commits, answers 503, and the restart resumes.

    ``paused``: the client sent its bytes and is quiet when SIGTERM comes; all must be kept.
    ``streaming``: the client keeps sending during the shutdown; the offset afterwards lies
    between what was sent before SIGTERM (less what was still in transit: ``slack``) and what
    was sent at all.
    """
    shutdown_s = 5.0
    gw = gateway_process("--shutdown-timeout", str(shutdown_s))
    data = payload(6 * MiB + 3, seed=9)
    piece = 16 * KiB
    slack = 4 * piece
    async with session_for(gw.port) as session:
        g = Gateway(session, gw.port, gw.data_dir, None, gw.offset_is_file_size)
        path = await create(g, len(data), filename="t.bin")
        conn = await RawPatch.open(gw.port, path, 0, len(data))
        stop = asyncio.Event()

        async def stream() -> None:
            while not stop.is_set() and conn.sent < len(data):
                if not await conn.send_quietly(data[conn.sent:conn.sent + piece]):
                    return
                await asyncio.sleep(0.01)

        sender = asyncio.create_task(stream())
        try:
            await wait_until(lambda: conn.sent >= 1 * MiB, 20, "1 MiB to be sent")
            if not sending:
                stop.set()
                await sender
                await conn.flush()
                await asyncio.sleep(0.3)
            before = conn.sent
            started = time.monotonic()
            rc = await asyncio.to_thread(gw.terminate, shutdown_s + 10)
            took = time.monotonic() - started
            stop.set()
            await sender
            try:
                reply: Reply | None = await conn.reply(timeout_s=2)
            except ConnectionError:
                reply = None
        finally:
            stop.set()
            await sender
            await conn.close()
        total = conn.sent
        assert rc == 0, gw.log()
        assert took < shutdown_s, f"the gateway took {took:.1f}s to stop"
        assert reply is not None and reply.status == 503, (reply, gw.log())
        assert b"ERR_SERVER_SHUTDOWN" in reply.body

        await asyncio.to_thread(gw.start)
        offset = await head_offset(g, path)
        if sending:
            assert before - slack <= offset <= total, (before, offset, total)
        else:
            assert offset == before == total, f"{before - offset} received bytes were lost"
        await finish_and_verify(g, path, data, "t.bin")
    assert sha((gw.data_dir / "complete" / "t.bin").read_bytes()) == sha(data)
    assert "Traceback" not in gw.log(), gw.log()
