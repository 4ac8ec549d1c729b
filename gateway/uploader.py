"""``tus-gateway upload FILE... URL``: a tus 1.0.0 client for the command line.

Theory of operation
-------------------
Each file goes through three steps, against any tus server (ours, tusd, @tus/server):

1. *Find or create.* The file's fingerprint (server URL, absolute path, size, mtime and a
   SHA-256 of its first MiB) is looked up in the fingerprint store. A stored upload URL is
   asked for its offset with HEAD; if the server no longer knows it (404, 410, 403) or it
   has another length, it is forgotten and a new upload is created with POST. The URL is
   stored as soon as the server has answered the POST, so a process killed at any later
   point resumes instead of starting again.
2. *Send.* PATCH requests of at most ``--chunk-size`` bytes, each starting at the offset
   the server last reported: never at an offset this process merely believes it reached.
   With the checksum extension each PATCH carries ``Upload-Checksum`` over its own bytes.
3. *Forget.* Once the server reports the full length, the store entry is removed and the
   URL is printed.

Invariant: a byte is sent again only if the server did not store it. After any failure
(connection lost, timeout, 5xx, 409, 423, 429, 460) the next PATCH waits for a HEAD that
re-reads the server's offset; tus: "the Client SHOULD send a HEAD request to the Server to
receive the current offset ... before resuming the upload".

Retries use capped exponential backoff with full jitter (``RetryPolicy``, a pure value);
a ``Retry-After`` answer is a floor. The budget of ``--retries`` counts failures in a row:
any progress of the server's offset renews it, so a long upload over a flaky link is not
abandoned for failures spread over hours.

Output: upload URLs go to stdout, one per line, in argument order (a file that failed has
no line). Progress goes to stderr, and only when stderr is a terminal; otherwise the
command is silent except for errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import fcntl
import hashlib
import json
import mimetypes
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import urljoin, urlsplit

import aiofiles
import aiohttp

from gateway.config import parse_size
from gateway.progress import SpeedMeter
from protocol import errors
from protocol.headers import (
    Checksum,
    Headers,
    format_checksum,
    format_metadata,
    parse_list,
    parse_uint,
)

T = TypeVar("T")

TUS_VERSION = "1.0.0"
MiB = 1024 * 1024
# Large enough that a fast link is not slowed by per-request overhead, small enough that a
# lost connection costs seconds of resending, not minutes: with Upload-Checksum a server
# must drop a cut-off PATCH whole, since the rest cannot be verified.
DEFAULT_CHUNK_BYTES = 8 * MiB
DEFAULT_PARALLEL = 2
# Failures in a row; progress renews the budget (see the module docstring).
DEFAULT_RETRIES = 5
# The fingerprint reads this much of the file: enough to tell two files apart whose path,
# size and mtime collide (a file rewritten within the mtime's resolution), cheap for any size.
FINGERPRINT_HEAD_BYTES = MiB
# Blocks handed to aiohttp: progress is counted per block.
READ_BLOCK_BYTES = 256 * 1024
# Five frames a second reads as smooth; more only costs terminal output (over ssh, too).
REDRAW_EVERY_S = 0.2
# A slow server may take a while to fsync before it answers a PATCH; a dead one is noticed
# by this read timeout, then retried.
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 120.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# --- errors -----------------------------------------------------------------------------------
class UploadError(Exception):
    """One file could not be uploaded; the message says why, for a human."""


class RetryableError(Exception):
    """A failure the same request may get past later: the connection, 5xx, 409, 423, 429."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnknownUpload(Exception):
    """The server does not know a stored upload URL any more (or it is another file's)."""


# Statuses worth another try. tus servers answer 423 while another request holds the upload
# (our gateway, tusd's locker) and 409 when the offset moved; 460 is tus's checksum mismatch,
# i.e. bytes damaged on the way, which a resend fixes.
RETRY_STATUSES = frozenset({408, 423, 429})
PATCH_RETRY_STATUSES = RETRY_STATUSES | {409, 460}


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date (RFC 9110)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - now)


def _answer_error(what: str, response: aiohttp.ClientResponse, text: str,
                  retry_statuses: frozenset[int]) -> Exception:
    detail = " ".join(text.split())[:200]
    message = f"{what} answered {response.status}" + (f": {detail}" if detail else "")
    if response.status >= 500 or response.status in retry_statuses:
        return RetryableError(message, _retry_after(response.headers, time.time()))
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


# --- retry policy -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again. Pure: the random draw is passed in."""

    retries: int = DEFAULT_RETRIES
    """Failures in a row before giving up; 0 never retries."""
    base_s: float = 0.5
    """First backoff ceiling; doubles with each failure in a row."""
    cap_s: float = 30.0
    """Largest backoff ceiling: beyond it a client only loses time it could be sending in."""
    max_retry_after_s: float = 600.0
    """A longer Retry-After is taken as this: an hour-long wait is better reported than slept."""

    def delay(self, failures: int, retry_after_s: float | None, draw: float) -> float | None:
        """Seconds to wait after the ``failures``-th failure in a row, or None to give up.

        Full jitter (uniform below the ceiling) so parallel uploads that failed together do
        not come back together; a Retry-After is a floor, since the server said sooner is
        pointless.
        """
        if failures > self.retries:
            return None
        ceiling = min(self.cap_s, self.base_s * 2.0 ** (failures - 1))
        wait = draw * ceiling
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_retry_after_s))
        return wait


# --- fingerprint store ------------------------------------------------------------------------
def default_store_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/tus-gateway/uploads.json``, else ``~/.local/state/...`` (XDG Base
    Directory: state that survives restarts but is not worth backing up)."""
    xdg = environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path(environ.get("HOME", "~")).expanduser() / ".local" / "state"
    return base / "tus-gateway" / "uploads.json"


def fingerprint(server_url: str, path: Path, size: int, mtime_ns: int, head_sha256: str) -> str:
    """The store key of one file on one server."""
    raw = json.dumps([server_url, str(path), size, mtime_ns, head_sha256])
    return hashlib.sha256(raw.encode()).hexdigest()


class FingerprintStore:
    """Upload URLs of unfinished uploads in one JSON file, safe for concurrent processes.

    Every change is read-modify-write under an exclusive ``flock`` on a sibling lock file and
    lands with ``os.replace``, so two uploaders sharing a store never lose each other's
    entries and a kill never leaves half a file. All file work runs in a worker thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    async def get(self, key: str) -> str | None:
        entry = (await asyncio.to_thread(self._read)).get(key)
        url = entry.get("url") if isinstance(entry, dict) else None
        return url if isinstance(url, str) else None

    async def put(self, key: str, url: str, path: Path, size: int) -> None:
        entry = {"url": url, "path": str(path), "size": size, "created_at": time.time()}
        await asyncio.to_thread(self._update, key, entry)

    async def remove(self, key: str) -> None:
        await asyncio.to_thread(self._update, key, None)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, OSError):
            # A store we cannot read costs resumability, not the upload itself.
            return {}
        uploads = data.get("uploads") if isinstance(data, dict) else None
        return uploads if isinstance(uploads, dict) else {}

    def _update(self, key: str, entry: dict[str, Any] | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            uploads = self._read()
            if entry is None:
                if uploads.pop(key, None) is None:
                    return
            else:
                uploads[key] = entry
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".uploads-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"version": 1, "uploads": uploads}, f, indent=1)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    Path(tmp).unlink()
                raise


# --- options ----------------------------------------------------------------------------------
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``tus-gateway upload``."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="files to upload")
    parser.add_argument("url", metavar="URL",
                        help="the tus endpoint that creates uploads, after the files "
                             "(e.g. http://127.0.0.1:1080/files/)")
    parser.add_argument("--chunk-size", default="8MiB", metavar="SIZE",
                        help="largest PATCH body (default 8MiB; 0 sends the rest of the file "
                             "in one request)")
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                        help=f"files uploaded at once (default {DEFAULT_PARALLEL})")
    parser.add_argument("--checksum", default="auto",
                        choices=["auto", "none", "sha1", "sha256", "md5", "sha512"],
                        help="Upload-Checksum on every PATCH: auto (default) uses sha1 when the "
                             "server announces the checksum extension; an algorithm the server "
                             "does not announce is an error")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                        help=f"failures in a row before a file is given up (default "
                             f"{DEFAULT_RETRIES}; any progress starts the count again)")
    parser.add_argument("--store", default=None, metavar="PATH",
                        help="fingerprint store of unfinished uploads (default "
                             "$XDG_STATE_HOME/tus-gateway/uploads.json or "
                             "~/.local/state/tus-gateway/uploads.json)")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Upload-Metadata pair; repeat the flag for more "
                             "(filename and filetype are sent unless given here)")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="extra request header, e.g. 'Authorization: Bearer <token>'; "
                             "repeat the flag for more")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start new uploads even when the store has unfinished ones "
                             "(they are still recorded, so an interrupted run can resume)")


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> UploadOptions:
    """Check the command line; ``ValueError`` is a usage error (exit 2)."""
    names: list[str] = args.files
    endpoint: str = args.url
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{endpoint!r} is not an http(s) URL (it must come last)")
    files: list[Path] = []
    for name in names:
        path = Path(name).expanduser().absolute()
        if not path.is_file():
            raise ValueError(f"{name}: not a regular file")
        files.append(path)
    chunk_bytes = parse_size(args.chunk_size)
    if chunk_bytes < 0:
        raise ValueError("--chunk-size must not be negative")
    if args.parallel < 1:
        raise ValueError("--parallel must be at least 1")
    if args.retries < 0:
        raise ValueError("--retries must not be negative")
    metadata: list[tuple[str, bytes]] = []
    for pair in args.metadata:
        key, sep, value = pair.partition("=")
        if not sep or not key or any(c in key for c in " ,") or not key.isprintable():
            raise ValueError(f"--metadata {pair!r}: expected KEY=VALUE, the key without "
                             "spaces or commas")
        metadata.append((key, value.encode()))
    headers: list[tuple[str, str]] = []
    for pair in args.header:
        name, sep, value = pair.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {pair!r}: expected NAME:VALUE")
        headers.append((name.strip(), value.strip()))
    store = Path(args.store).expanduser() if args.store else default_store_path(environ)
    return UploadOptions(
        files=tuple(files), endpoint=endpoint, chunk_bytes=chunk_bytes,
        parallel=args.parallel, checksum=args.checksum,
        retry=RetryPolicy(retries=args.retries), store_path=store,
        metadata=tuple(metadata), resume=args.resume, headers=tuple(headers))


# --- one file ---------------------------------------------------------------------------------
@dataclass
class Transfer:
    """What the progress board shows of one file, and its outcome."""

    path: Path
    size: int
    sent: int = 0
    """Bytes the server confirmed plus those handed to the connection since."""
    state: str = "waiting"
    url: str | None = None
    error: str | None = None
    finished: bool = False
    meter: SpeedMeter = field(default_factory=lambda: SpeedMeter(window_s=5.0))

    def feed(self, n: int) -> None:
        self.sent += n
        self.meter.feed(n, time.monotonic())


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


def _file_facts(path: Path) -> tuple[int, int, str]:
    stat = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(FINGERPRINT_HEAD_BYTES)).hexdigest()
    return stat.st_size, stat.st_mtime_ns, head


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
        size, mtime_ns, head = await asyncio.to_thread(_file_facts, path)
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


# --- progress board ---------------------------------------------------------------------------
def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable, keeps the return type


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA --:--"
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"ETA {hours}:{minutes:02d}:{secs:02d}" if hours else f"ETA {minutes}:{secs:02d}"


def progress_line(t: Transfer, now: float, width: int) -> str:
    """One file's line: name, bar, percent, bytes, speed, ETA (or what it is doing)."""
    fraction = t.sent / t.size if t.size else (1.0 if t.finished else 0.0)
    fraction = min(max(fraction, 0.0), 1.0)
    name = t.path.name if len(t.path.name) <= 24 else t.path.name[:23] + "…"
    bar_width = 20
    filled = int(fraction * bar_width)
    bar = "#" * filled + "-" * (bar_width - filled)
    head = f"{name:<24} [{bar}] {fraction * 100:5.1f}% " \
           f"{format_bytes(t.sent)} / {format_bytes(t.size)}"
    if t.error is not None:
        tail = f"failed: {t.error}"
    elif t.finished:
        tail = "done"
    elif t.state == "sending":
        speed = t.meter.speed(now)
        speed_text = "--" if speed is None else format_bytes(speed)
        tail = f"{speed_text}/s {format_eta(t.meter.eta(t.size - t.sent, now))}"
    else:
        tail = t.state
    line = f"{head}  {tail}"
    return line if len(line) <= width else line[:max(width - 1, 0)] + "…"


def board_lines(transfers: Sequence[Transfer], now: float, columns: int,
                rows: int) -> list[str]:
    """The frame: one line per file while they fit on the screen; otherwise the files under
    way and a summary line, since a cursor cannot move back above the top of the screen."""
    width = max(columns - 1, 20)
    if len(transfers) < rows:
        return [progress_line(t, now, width) for t in transfers]
    active = [t for t in transfers if not t.finished and t.state != "waiting"][:max(rows - 2, 1)]
    done = sum(1 for t in transfers if t.finished and t.error is None)
    failed = sum(1 for t in transfers if t.error is not None)
    summary = f"{done} of {len(transfers)} files uploaded" + (f", {failed} failed"
                                                              if failed else "")
    return [*(progress_line(t, now, width) for t in active), summary[:width]]


class ProgressBoard:
    """Redraws the frame in place on a terminal, at most every ``REDRAW_EVERY_S``."""

    def __init__(self, transfers: Sequence[Transfer], stream: TextIO) -> None:
        self.transfers = transfers
        self.stream = stream
        self._drawn = 0

    def draw(self) -> None:
        try:
            size = os.get_terminal_size(self.stream.fileno())
            columns, rows = size.columns, size.lines
        except (OSError, ValueError):
            columns = rows = 0
        if not columns or not rows:  # a terminal that does not know its size says 0x0
            columns, rows = 100, 24
        lines = board_lines(self.transfers, time.monotonic(), columns, rows)
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")  # back to the first line of the last frame
        out.extend("\x1b[2K" + line + "\n" for line in lines)
        out.append("\x1b[J")  # a shorter frame than the last leaves no stale lines below
        self._drawn = len(lines)
        self.stream.write("".join(out))
        self.stream.flush()

    async def run(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(REDRAW_EVERY_S)


# --- the run ----------------------------------------------------------------------------------
async def run(options: UploadOptions, stdout: TextIO, stderr: TextIO) -> int:
    transfers = [Transfer(path, path.stat().st_size) for path in options.files]
    board = ProgressBoard(transfers, stderr) if stderr.isatty() else None
    # URLs on the terminal the board redraws would be overwritten: they wait for the end.
    stream_urls = board is None or not stdout.isatty()
    store = FingerprintStore(options.store_path or default_store_path(os.environ))
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S,
                                    sock_read=READ_TIMEOUT_S)
    printed = 0

    def report(message: str) -> None:
        if board is None:
            stderr.write(f"tus-gateway: {message}\n")
            stderr.flush()

    def print_ready_urls() -> None:
        # Argument order: a URL waits for the files before it, so lines map to arguments.
        nonlocal printed
        while printed < len(transfers) and transfers[printed].finished:
            url = transfers[printed].url
            if transfers[printed].error is None and url is not None:
                stdout.write(url + "\n")
                stdout.flush()
            printed += 1

    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = Client(session, options, store)
        await client.discover()
        try:
            client.checksum = choose_checksum(options.checksum, client.info)
        except ValueError as exc:
            stderr.write(f"tus-gateway: {exc}\n")
            return EXIT_FAILED
        limit = asyncio.Semaphore(options.parallel)

        async def one(t: Transfer) -> None:
            try:
                t.url = await client.upload(t)
                t.state = "done"
            except UploadError as exc:
                t.error = str(exc)
                report(f"{t.path}: {exc}")
            except OSError as exc:
                # Local trouble (the file became unreadable, the store unwritable): this file
                # fails, the others go on.
                t.error = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
                report(f"{t.path}: {t.error}")
            finally:
                t.finished = True
                limit.release()
                if stream_urls:
                    print_ready_urls()

        drawing = asyncio.create_task(board.run()) if board is not None else None
        try:
            async with asyncio.TaskGroup() as group:
                for t in transfers:
                    # Acquire before spawning: at most --parallel files hold a file open.
                    await limit.acquire()
                    group.create_task(one(t))
        finally:
            if drawing is not None:
                drawing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drawing
                if board is not None:
                    board.draw()
    if board is not None:
        for t in transfers:
            if t.error is not None:
                stderr.write(f"tus-gateway: {t.path}: {t.error}\n")
        print_ready_urls()
    return EXIT_FAILED if any(t.error is not None for t in transfers) else EXIT_OK


DESCRIPTION = ("Upload FILEs to the tus endpoint URL (ours, tusd, @tus/server, ...) and print "
               "each upload URL on stdout, in argument order. An interrupted run resumes "
               "where the server stopped when run again. Progress is shown on stderr when it "
               "is a terminal. Exit status: 0 all uploaded, 1 some failed, 2 usage error.")


def command(argv: Sequence[str]) -> int:
    """``tus-gateway upload ARGS...``: parse the arguments and run."""
    parser = argparse.ArgumentParser(prog="tus-gateway upload", description=DESCRIPTION)
    add_arguments(parser)
    return main(parser.parse_args(argv))


def main(args: argparse.Namespace) -> int:
    """``tus-gateway upload``; returns the exit status."""
    try:
        options = options_from_args(args, os.environ)
    except ValueError as exc:
        print(f"tus-gateway upload: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(run(options, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        print("tus-gateway: interrupted; run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
