"""The tus conversation with one endpoint: OPTIONS, then per file HEAD or POST, then PATCHes.

``Client.upload`` follows the three steps of the package docstring (find or create, send,
forget) and never sends a PATCH from an offset the server did not report. aiohttp's
exceptions stop here: above this module a failure is ``UploadError`` or ``RetryableError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin

import aiofiles
import aiohttp

from protocol import errors
from protocol.headers import (
    Checksum,
    Headers,
    format_checksum,
    format_metadata,
    parse_list,
    parse_uint,
)
from tus_client.retry import (
    PATCH_RETRY_STATUSES,
    RETRY_STATUSES,
    RetryableError,
    RetryPolicy,
    UnknownUpload,
    UploadError,
    retry_after,
)
from tus_client.store import FingerprintStore, file_facts, fingerprint
from tus_client.transfer import Transfer

T = TypeVar("T")

TUS_VERSION = "1.0.0"
MiB = 1024 * 1024
# Large enough that a fast link is not slowed by per-request overhead, small enough that a
# lost connection costs seconds of resending, not minutes: with Upload-Checksum a server
# must drop a cut-off PATCH whole, since the rest cannot be verified.
DEFAULT_CHUNK_BYTES = 8 * MiB
DEFAULT_PARALLEL = 2
# Blocks handed to aiohttp: progress is counted per block.
READ_BLOCK_BYTES = 256 * 1024
# A slow server may take a while to fsync before it answers a PATCH; a dead one is noticed
# by this read timeout, then retried.
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 120.0


def _answer_error(what: str, response: aiohttp.ClientResponse, text: str,
                  retry_statuses: frozenset[int]) -> Exception:
    detail = " ".join(text.split())[:200]
    message = f"{what} answered {response.status}" + (f": {detail}" if detail else "")
    if response.status >= 500 or response.status in retry_statuses:
        return RetryableError(message, retry_after(response.headers, time.time()))
    return UploadError(message)


@contextlib.contextmanager
def _map_transport_errors(what: str) -> Iterator[None]:
    """Connection trouble of any kind becomes ``RetryableError``; nothing above sees aiohttp's
    exception types."""
    try:
        yield
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
            TimeoutError, ConnectionError) as exc:
        raise RetryableError(f"{what}: {type(exc).__name__} {exc}".rstrip()) from exc
    except aiohttp.ClientError as exc:
        # A malformed answer or URL: the same request would meet it again.
        raise UploadError(f"{what}: {type(exc).__name__} {exc}".rstrip()) from exc


@dataclass(frozen=True, slots=True)
class UploadOptions:
    files: tuple[Path, ...]
    endpoint: str
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    """0: the rest of the file in one PATCH."""
    parallel: int = DEFAULT_PARALLEL
    checksum: str = "auto"
    """``auto`` (sha1 when the server announces it), ``none``, or an algorithm to insist on."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    store_path: Path | None = None
    """None: the default under $XDG_STATE_HOME."""
    metadata: tuple[tuple[str, bytes], ...] = ()
    resume: bool = True
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What OPTIONS announced; an unanswered OPTIONS announces nothing (core tus only)."""

    extensions: tuple[str, ...] = ()
    checksum_algorithms: tuple[str, ...] = ()
    max_size: int | None = None


def choose_checksum(requested: str, info: ServerInfo) -> str | None:
    """The Upload-Checksum algorithm to use, or None; ``ValueError`` if impossible."""
    offered = info.checksum_algorithms if "checksum" in info.extensions else ()
    if requested == "none":
        return None
    if requested == "auto":
        # tus: "The Server MUST support at least the SHA1 checksum algorithm".
        return "sha1" if "sha1" in offered else None
    if requested not in offered:
        raise ValueError(f"the server does not announce the {requested} checksum "
                         f"(it offers: {', '.join(offered) or 'none'})")
    return requested


def _hash_range(path: Path, start: int, length: int, algorithm: str) -> bytes:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        f.seek(start)
        remaining = length
        while remaining:
            block = f.read(min(MiB, remaining))
            if not block:
                raise UploadError(f"{path} shrank while it was being uploaded")
            digest.update(block)
            remaining -= len(block)
    return digest.digest()





async def _file_body(path: Path, start: int, length: int,
                     on_bytes: Callable[[int], None]) -> AsyncIterator[bytes]:
    async with aiofiles.open(path, "rb") as f:
        await f.seek(start)
        remaining = length
        while remaining:
            block = await f.read(min(READ_BLOCK_BYTES, remaining))
            if not block:
                raise UploadError(f"{path} shrank while it was being uploaded")
            remaining -= len(block)
            on_bytes(len(block))
            yield block


def _offset(headers: Mapping[str, str], what: str) -> int:
    value = headers.get("Upload-Offset")
    if value is None:
        raise UploadError(f"{what} answered without Upload-Offset")
    try:
        return parse_uint(value, errors.InvalidHeader)
    except errors.TusError as exc:
        raise UploadError(f"{what} answered a bad Upload-Offset: {exc}") from exc


class Client:
    """The tus conversation for one endpoint; one instance per run."""

    def __init__(self, session: aiohttp.ClientSession, options: UploadOptions,
                 store: FingerprintStore) -> None:
        self.session = session
        self.options = options
        self.store = store
        self.info = ServerInfo()
        self.checksum: str | None = None

    def _headers(self, **extra: str) -> dict[str, str]:
        headers = dict(self.options.headers)
        headers["Tus-Resumable"] = TUS_VERSION
        headers.update(extra)
        return headers

    async def discover(self) -> None:
        """OPTIONS once per run; a server that refuses OPTIONS is spoken to as core tus."""
        try:
            with _map_transport_errors("OPTIONS"):
                async with self.session.options(self.options.endpoint,
                                                headers=self._headers()) as response:
                    await response.read()
                    if response.status >= 300:
                        return
                    headers = Headers(list(response.headers.items()))
                    max_size = headers.one("Tus-Max-Size")
                    self.info = ServerInfo(
                        extensions=parse_list(headers.one("Tus-Extension") or ""),
                        checksum_algorithms=parse_list(
                            headers.one("Tus-Checksum-Algorithm") or ""),
                        max_size=int(max_size) if max_size and max_size.isdigit() else None)
        except (RetryableError, errors.TusError):
            # Creation will meet the same trouble and retry it; here only the extras are lost.
            return

    async def upload(self, transfer: Transfer) -> str:
        """Upload one file; returns its upload URL. Raises ``UploadError``."""
        path = transfer.path
        if self.info.max_size is not None and transfer.size > self.info.max_size:
            raise UploadError(f"{transfer.size} bytes is more than the server accepts "
                              f"(Tus-Max-Size {self.info.max_size})")
        size, mtime_ns, head = await asyncio.to_thread(file_facts, path)
        transfer.size = size
        key = fingerprint(self.options.endpoint, path, size, mtime_ns, head)
        url: str | None = None
        offset = 0
        if self.options.resume:
            url = await self.store.get(key)
        if url is not None:
            transfer.state = "resuming"
            stored = url
            try:
                offset = await self._retrying(transfer, lambda: self._head(stored, size))
            except UnknownUpload:
                await self.store.remove(key)
                url = None
        if url is None:
            transfer.state = "creating"
            url = await self._retrying(transfer, lambda: self._create(path, size))
            await self.store.put(key, url, path, size)
            offset = 0
        transfer.url = url
        await self._send(transfer, url, offset)
        await self.store.remove(key)
        return url

    async def _retrying(self, transfer: Transfer, step: Callable[[], Awaitable[T]]) -> T:
        failures = 0
        while True:
            try:
                return await step()
            except RetryableError as exc:
                failures += 1
                await self._back_off(transfer, failures, exc)

    async def _back_off(self, transfer: Transfer, failures: int, exc: RetryableError) -> None:
        delay = self.options.retry.delay(failures, exc.retry_after_s, random.random())
        if delay is None:
            raise UploadError(f"{exc} (gave up after {failures - 1} retries)") from exc
        transfer.state = f"retry {failures}/{self.options.retry.retries} in {delay:.0f}s: {exc}"
        await asyncio.sleep(delay)

    async def _create(self, path: Path, size: int) -> str:
        metadata: dict[str, bytes] = {"filename": path.name.encode()}
        filetype = mimetypes.guess_type(path.name)[0]
        if filetype:
            metadata["filetype"] = filetype.encode()
        metadata.update(dict(self.options.metadata))
        headers = self._headers(**{"Upload-Length": str(size),
                                   "Upload-Metadata": format_metadata(metadata)})
        with _map_transport_errors("POST"):
            async with self.session.post(self.options.endpoint, headers=headers) as response:
                text = await response.text(errors="replace")
                if response.status != 201:
                    raise _answer_error("POST", response, text, RETRY_STATUSES)
                location = response.headers.get("Location")
        if not location:
            raise UploadError("POST answered 201 without Location")
        # tus allows a relative Location; it is relative to the creation URL.
        return urljoin(self.options.endpoint, location)

    async def _head(self, url: str, size: int) -> int:
        with _map_transport_errors("HEAD"):
            async with self.session.head(url, headers=self._headers()) as response:
                if response.status in (403, 404, 410):
                    raise UnknownUpload(url)
                if response.status != 200:
                    raise _answer_error("HEAD", response, "", RETRY_STATUSES)
                length = response.headers.get("Upload-Length")
                if length is not None and length != str(size):
                    # The URL belongs to an upload of other bytes: never append to it.
                    raise UnknownUpload(url)
                return _offset(response.headers, "HEAD")

    async def _patch(self, transfer: Transfer, url: str, offset: int, length: int) -> int:
        headers = self._headers(**{"Upload-Offset": str(offset),
                                   "Content-Type": "application/offset+octet-stream",
                                   "Content-Length": str(length)})
        if self.checksum is not None:
            digest = await asyncio.to_thread(_hash_range, transfer.path, offset, length,
                                             self.checksum)
            headers["Upload-Checksum"] = format_checksum(Checksum(self.checksum, digest))
        transfer.state = "sending"
        body = _file_body(transfer.path, offset, length, transfer.feed)
        with _map_transport_errors("PATCH"):
            async with self.session.patch(url, headers=headers, data=body) as response:
                text = await response.text(errors="replace")
                if response.status != 204:
                    if response.status in (404, 410):
                        raise UploadError(f"the server lost the upload: PATCH answered "
                                          f"{response.status}")
                    raise _answer_error("PATCH", response, text, PATCH_RETRY_STATUSES)
                return _offset(response.headers, "PATCH")

    async def _send(self, transfer: Transfer, url: str, offset: int) -> None:
        """PATCH from the server's offset to the end; every failure re-reads the offset."""
        size = transfer.size
        transfer.sent = offset
        failures = 0
        confirmed = offset
        resync = False
        while True:
            try:
                if resync:
                    try:
                        offset = await self._head(url, size)
                    except UnknownUpload as exc:
                        raise UploadError("the server lost the upload (HEAD answered "
                                          "403, 404 or 410, or another length)") from exc
                    transfer.sent = offset
                    resync = False
                if offset > confirmed:
                    failures = 0  # the server moved on: the link works, if not always
                    confirmed = offset
                if offset >= size:
                    transfer.sent = size
                    return
                chunk = size - offset if self.options.chunk_bytes == 0 else \
                    min(self.options.chunk_bytes, size - offset)
                new_offset = await self._patch(transfer, url, offset, chunk)
                if new_offset <= offset or new_offset > size:
                    raise RetryableError(f"PATCH at {offset} answered offset {new_offset}")
                offset = new_offset
                transfer.sent = offset
            except RetryableError as exc:
                resync = True
                failures += 1
                await self._back_off(transfer, failures, exc)


