"""GET downloads of finished uploads, cut off when the reader stops taking bytes.

aiohttp's ``FileResponse`` decides everything about a file's answer (conditional requests,
Range, ETag, Last-Modified) and then hands the file to the kernel with ``sendfile``. That
send has no timeout and shows no progress: a client that asks for a large file and never
reads holds its connection, its task and the open file for ever. ``Download`` keeps every
decision ``FileResponse`` makes and replaces only the sending: the file goes out in pieces
read off the event loop, and a piece that cannot be handed to the connection within
``send_timeout_s`` ends the download. The connection is then reset (not closed gracefully,
which would leave the unsent bytes queued for a reader that does not read), and the access
log has its line; nothing else is logged, since a reader going away is no error.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest

log = logging.getLogger(__name__)

# Large enough that a fast reader costs few thread hops per MiB; small enough that the
# slowest reader still served (one piece per send timeout) is slow indeed: 256 KiB a minute.
PIECE_BYTES = 256 * 1024
# SO_LINGER on, with a zero linger time: close() resets the connection and drops what the
# kernel still holds for it.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class Download(web.FileResponse):
    def __init__(self, path: Path, *, send_timeout_s: float,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(path, chunk_size=PIECE_BYTES, headers=headers)
        self._send_timeout_s = send_timeout_s

    async def _sendfile(self, request: BaseRequest, fobj: IO[Any], offset: int,
                        count: int) -> AbstractStreamWriter:
        # Called by FileResponse.prepare once it has chosen the status and the byte range.
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        loop = asyncio.get_running_loop()
        piece = await loop.run_in_executor(None, self._seek_and_read, fobj, offset,
                                           min(PIECE_BYTES, count))
        try:
            while piece:
                async with asyncio.timeout(self._send_timeout_s):
                    await writer.write(piece)
                count -= len(piece)
                if count <= 0:
                    break
                piece = await loop.run_in_executor(None, fobj.read, min(PIECE_BYTES, count))
            # What is still buffered must go too, or the end of the answer would wait on
            # the reader with no limit.
            async with asyncio.timeout(self._send_timeout_s):
                await writer.drain()
        except TimeoutError:
            _reset(request)
            log.info("download cut off: the client took no bytes for %.0f s",
                     self._send_timeout_s,
                     extra={"path": request.path, "send_timeout_s": self._send_timeout_s})
        return writer


def _reset(request: BaseRequest) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        except OSError:
            pass  # already gone: closing is all that is left to do
    transport.abort()
