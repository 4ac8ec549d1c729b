"""Reading a PATCH body so that it can be stopped from outside without losing a byte.

Theory of operation: a body read ends in one of five ways: the body ends; the client stalls
past the stall timeout; the connection drops; a later request asks for the upload (lock
release); the gateway shuts down. In every case the bytes the transport already delivered
are handed to the store before the reason is raised (TUS-PATCH-06).

aiohttp raises a reader's exception before it hands out buffered data, so the gateway never
uses ``set_exception`` for its own signals: ``stop`` records the reason and fires the current
read's stall timer at once; the generator then takes what is buffered with ``read_nowait``
and raises the reason. For a dropped connection aiohttp itself sets the exception; the bytes
it still holds are taken from its buffer directly (a private attribute, read defensively and
covered by the fault tests).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import StreamReader
from aiohttp.http_exceptions import HttpProcessingError

from protocol import errors

# Pieces of a body below this size are joined with what the transport has buffered behind
# them (``BodyReader.chunks``).
SMALL_PIECE = 64 * 1024


class BodyReader:
    def __init__(self, content: StreamReader, stall_timeout_s: float) -> None:
        self._content = content
        self._stall_timeout_s = stall_timeout_s
        self._timer: asyncio.Timeout | None = None
        self._stop: BaseException | None = None
        self.received = 0  # body bytes handed out so far
        # Told the size of every chunk handed out (live progress and metrics).
        self.on_chunk: Callable[[int], None] | None = None
        # Body bytes to drop before any is handed out: a resent stream of the session API
        # (``gateway.session_api``) starts before what the upload already has.
        self.skip = 0

    def _count(self, n: int) -> None:
        self.received += n
        if self.on_chunk is not None:
            self.on_chunk(n)

    def stop(self, reason: BaseException) -> None:
        """Make the reader hand out what it has, then raise ``reason``. Idempotent."""
        if self._stop is None:
            self._stop = reason
        if self._timer is not None and not self._timer.expired():
            self._timer.reschedule(asyncio.get_running_loop().time())

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._content
        count = self._count
        while True:
            if self._stop is not None:
                rest = _buffered(content)
                if rest:
                    count(len(rest))
                    yield rest
                raise self._stop
            try:
                async with asyncio.timeout(self._stall_timeout_s) as timer:
                    self._timer = timer
                    # One buffered piece at a time, as the transport delivered it:
                    # ``readany`` joins every piece buffered into one new bytes object, a
                    # copy of the body on the loop's thread whenever several wait (with
                    # many uploads at once, most of the time).
                    chunk, chunk_end = await content.readchunk()
            except TimeoutError:
                if self._stop is not None:
                    continue  # the top of the loop hands out the rest and raises the reason
                raise errors.RequestTimeout() from None
            except (OSError, HttpProcessingError) as exc:
                rest = _leftover(content)
                if rest:
                    count(len(rest))
                    yield rest
                raise errors.ClientDisconnected(str(exc) or type(exc).__name__) from exc
            finally:
                self._timer = None
            if not chunk:
                if chunk_end:
                    continue  # the end of an HTTP chunk (chunked encoding), not of the body
                return
            if len(chunk) < SMALL_PIECE:
                # Small pieces (a body sent in small HTTP chunks) are taken with what waits
                # behind them, up to a bound: one piece at a time would cost a turn of this
                # loop per chunk, and the copy of a few small pieces is cheap.
                with contextlib.suppress(OSError, HttpProcessingError):
                    # (a dropped connection: the next read says so, and takes what is left)
                    chunk += content.read_nowait(SMALL_PIECE - len(chunk))
            if self.skip:
                dropped = min(self.skip, len(chunk))
                self.skip -= dropped
                chunk = chunk[dropped:]
                if not chunk:
                    continue
            count(len(chunk))
            yield chunk


def _buffered(content: StreamReader) -> bytes:
    """What the reader holds right now, without waiting."""
    try:
        return content.read_nowait()
    except Exception:  # the connection dropped too: aiohttp raises before handing data out
        return _leftover(content)


def _leftover(content: StreamReader) -> bytes:
    """Bytes aiohttp received before the connection dropped but will no longer hand out."""
    buffer = getattr(content, "_buffer", None)
    if not buffer:
        return b""
    data = b"".join(bytes(part) for part in buffer)
    buffer.clear()
    return data
