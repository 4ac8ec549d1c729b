"""Structured logs: one JSON object per line, one line per request and per upload event.

Theory of operation:

- ``setup_logging`` puts one handler on the root logger, so every record (ours, aiohttp's,
  asyncio's, redis-py's, Python warnings) comes out in the same format at the level
  ``--log-level`` sets. Nothing else in the gateway configures logging.
- Every line is a JSON object with ``ts`` (ISO 8601, UTC), ``level``, ``logger`` and ``msg``,
  then whatever the caller passed as ``extra`` (``upload_id``, ``event``, ``method``, ...), so
  a log pipeline can filter on fields instead of parsing sentences. ``--log-format text`` gives
  the same records as ``time LEVEL logger: msg key=value ...`` for a terminal.
- ``AccessLogger`` writes one line per request (``--access-log``, on by default);
  ``log_event`` one line per upload event (created, finished, terminated, expired).
- No secrets: ``SecretFilter`` runs on the handler, so it sees every record whoever logged
  it, before formatting. It masks the configured secrets by value and anything shaped like a
  credential (bearer tokens, ``Authorization`` values, Notion tokens, URL passwords,
  ``token=``/``secret=``/``password=`` pairs). Masking by shape is the safety net; the rule
  is that no code logs request headers wholesale or the value of a secret setting.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from protocol.headers import UPLOAD_ID

MASK = "***"

ACCESS_LOGGER = "gateway.access"
EVENT_LOGGER = "gateway.events"

_events = logging.getLogger(EVENT_LOGGER)

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime"}


# --- secrets ----------------------------------------------------------------------------------
def _keep_scheme(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    return match.group("head") + (f"{scheme} " if scheme else "") + MASK


# Each pattern keeps what names the credential and masks only the credential itself.
_SHAPES: tuple[tuple[re.Pattern[str], Any], ...] = (
    # Authorization: Bearer abc / "authorization": "Basic abc" / Proxy-Authorization=abc
    (re.compile(r"(?i)(?P<head>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
                r"(?:(?P<scheme>bearer|basic|token|digest)\s+)?[^\s\"',;]+"), _keep_scheme),
    # A bearer token anywhere else (RFC 6750 b64token characters).
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 " + MASK),
    # scheme://user:password@host (Redis URLs and the like).
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/:@]*:)[^\s/@]+@"), r"\1" + MASK + "@"),
    # Notion integration tokens: secret_... (older) and ntn_... (current).
    (re.compile(r"\b(secret_|ntn_)[A-Za-z0-9_]{8,}"), r"\1" + MASK),
    # token=..., "auth_secret": "...", password: ...
    (re.compile(r"(?i)\b([a-z_]*(?:token|secret|password|passwd|api_?key)s?[\"']?\s*[=:]\s*"
                r"[\"']?)[^\s\"',;&\[\]{}]+"), r"\1" + MASK),
)
# A text that contains none of these cannot match any of the shapes above.
_HINTS = re.compile(r"authorization|bearer|://|secret|ntn_|token|password|passwd|api", re.I)
# Shorter configured "secrets" would mask ordinary words all over the log.
_MIN_SECRET_CHARS = 4


class SecretFilter(logging.Filter):
    """Masks secrets in a record's message, its string extras and its traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET_CHARS},
                              key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        # Every shape needs one of these words: most lines (every request's) have none,
        # and are spared five regular expressions on the event loop.
        if _HINTS.search(text):
            for pattern, replacement in _SHAPES:
                text = pattern.sub(replacement, text)
        return text

    def _mask_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {k: self._mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._mask_value(v) for v in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # Arguments that do not fit the format: the formatter reports the bad call.
            message = str(record.msg)
        record.msg = self.mask(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_FIELDS:
                setattr(record, key, self._mask_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


class RefusedRequestFilter(logging.Filter):
    """aiohttp logs every request its HTTP parser refuses (a bad request line, a header line
    over 8190 bytes, a missing or repeated Host, a byte a URL cannot hold) at the error
    level with a traceback, although the client got its 400 and nothing failed here. Such a
    record becomes one line at the info level at most, without the traceback, saying what
    was refused; it is dropped below ``level``. Every other record passes untouched."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.name != "aiohttp.server" or not isinstance(exc, HttpProcessingError) \
                or not 400 <= exc.code < 500:
            return True
        record.levelno = min(record.levelno, logging.INFO)
        record.levelname = logging.getLevelName(record.levelno)
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        # The first line names the fault; the lines after it quote the raw request bytes.
        reason = str(exc.message).strip().split("\n", 1)[0][:200]
        record.msg = "refused a malformed request from %s: %d %s"
        record.args = (remote, exc.code, reason)
        record.status = exc.code
        record.exc_info = None
        record.exc_text = None
        return record.levelno >= self.level


# --- formatters -------------------------------------------------------------------------------
# What must not reach a log line as it is: C0 controls (line feed, carriage return, escape),
# DEL, C1 controls (NEL among them), the Unicode line and paragraph separators, and lone
# surrogates (request bytes that were not UTF-8, which no stream can encode).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")
TRACE_INDENT = "    "


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def escape_controls(text: str) -> str:
    """``text`` with every character ``_UNSAFE`` names written as ``\\xNN`` or ``\\uNNNN``."""
    return _UNSAFE.sub(_escape, text)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items()
            if k not in _RECORD_FIELDS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a record's ``extra`` fields become keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        payload: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            payload.setdefault(key, value)  # an extra never hides the four fields above
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        # default=str: a Path or an enum in an extra must not cost the whole line.
        line = json.dumps(payload, default=str, ensure_ascii=False)
        # The encoder escapes C0 controls, but not DEL, C1 controls or the Unicode line
        # separators, which some readers take for line ends, nor lone surrogates (request
        # bytes that were not UTF-8), which cannot even be written. In JSON text they can
        # only stand inside strings, where an escape means the same character.
        return _JSON_UNSAFE.sub(_json_escape, line)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: msg key=value ...``, for reading in a terminal.

    One record is one line, whatever it carries: control characters in the message, the
    logger name and the fields are written as ``\\xNN`` (``\\uNNNN`` beyond Latin-1), so a
    request path with ``%0a`` in it cannot start a line that looks like a record of its own,
    and an escape sequence cannot rewrite the terminal. A traceback keeps its lines, each
    indented below its record: only records start at the margin.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = (f"{record.asctime} {escape_controls(record.levelname)} "
                f"{escape_controls(record.name)}: {escape_controls(record.message)}")
        extras = _extras(record)
        if extras:
            line += " " + " ".join(
                f"{escape_controls(k)}={escape_controls(json.dumps(v, default=str))}"
                for k, v in extras.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        below = []
        if record.exc_text:
            below.append(record.exc_text)
        if record.stack_info:
            below.append(self.formatStack(record.stack_info))
        for text in below:
            line += "".join(f"\n{TRACE_INDENT}{escape_controls(part)}"
                            for part in text.split("\n"))
        return line


class LoopBatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the lines of one event-loop turn together.

    Each line written on its own costs a system call, and on the loop thread a call that
    lets the I/O threads take the interpreter lock, so the loop waits to get it back: with
    five lines per small upload, a visible share of its cost (bench/RESULTS.md, "Small
    uploads: where the time goes"). Lines logged on the loop are
    kept until the end of the current turn (one callback scheduled per batch), or until
    ``MAX_PENDING`` characters wait. A line from any other thread, or with no loop running,
    is written at once, after what waits, so the order of lines is kept. A process killed
    outright loses at most the lines of the turn it was in; a normal stop flushes them."""

    MAX_PENDING = 64 * 1024

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._size = 0
        # The loop a flush is scheduled on: a loop that stopped before running it (tests
        # run one loop after another) must not keep the next loop's lines waiting.
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # a line that cannot be formatted must not stop the caller
            self.handleError(record)
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._pending.append(line)
        self._size += len(line)
        if loop is None or self._size >= self.MAX_PENDING:
            self._write_pending()
        elif self._scheduled_on is not loop:
            self._scheduled_on = loop
            loop.call_soon(self._flush_turn)

    def _flush_turn(self) -> None:
        self.acquire()
        try:
            self._scheduled_on = None
            self._write_pending()
        finally:
            self.release()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # as StreamHandler: a broken stream is reported, never raised
            self.handleError(logging.makeLogRecord({"msg": "log write failed"}))

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
            super().flush()
        finally:
            self.release()


def setup_logging(level: str = "info", log_format: str = "json",
                  secrets: Iterable[str] = (), stream: TextIO | None = None) -> logging.Handler:
    """Route every logger through one handler with our format, level and secret filter."""
    handler = LoopBatchingHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RefusedRequestFilter(logging.getLevelName(level.upper())))
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Our formats show none of the caller's file, line, thread or process, and gathering
    # them (a walk up the stack, a system call) costs every record; the logging module
    # offers these switches to skip it.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Warnings would otherwise go to stderr as bare text lines in the middle of the JSON.
    logging.captureWarnings(True)
    return handler


# --- requests and upload events ---------------------------------------------------------------
def _upload_id(request: BaseRequest, response: StreamResponse) -> str | None:
    try:
        match_info = getattr(request, "match_info", None)
    except AssertionError:
        # aiohttp answers a request its parser refused without routing it, and the
        # ``match_info`` of such a request asserts instead of answering None.
        match_info = None
    candidate = match_info.get("upload_id") if match_info is not None else None
    if candidate is None:
        location = response.headers.get("Location")  # a creation names its new upload here
        if location:
            candidate = location.rstrip("/").rsplit("/", 1)[-1]
    if candidate is not None and UPLOAD_ID.fullmatch(candidate):
        return candidate
    return None


class AccessLogger(AbstractAccessLogger):
    """One line per request, as structured fields; request headers are never logged.

    The message is ``METHOD path status`` so a human (or a grep) can read the line without
    the fields; the path carries no query string, where a token could hide.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        fields: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round(time * 1000.0, 2),
            "bytes_in": getattr(request.content, "total_bytes", 0),  # body bytes read
            "bytes_out": response.body_length,  # sent, headers included (aiohttp's %b)
            "remote": request.remote,
        }
        upload_id = _upload_id(request, response)
        if upload_id is not None:
            fields["upload_id"] = upload_id
        self.logger.info("%s %s %d", request.method, request.path, response.status,
                         extra=fields)

    @property
    def enabled(self) -> bool:
        # aiohttp skips building the line at all when nobody would see it.
        return self.logger.isEnabledFor(logging.INFO)


def log_event(event: str, upload_id: str, **fields: Any) -> None:
    """One line for an upload's life event: created, finished, rejected, terminated,
    expired."""
    extra = {(k if k not in _RECORD_FIELDS else f"{k}_"): v for k, v in fields.items()}
    extra["event"] = event
    extra["upload_id"] = upload_id
    _events.info("upload %s", event, extra=extra)
