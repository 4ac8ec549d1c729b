"""One HTTP/1.1 exchange on a fresh socket, written and read byte for byte.

The client never half-closes: it sends the whole request (which says ``Connection: close``),
then reads until the server closes the connection or the answer is complete by its own
framing. An answer is *complete* when its status line and header block arrived and its body
matches its framing (``Content-Length``, chunked, or up to the close); interim 1xx answers
(100 Continue, 104 Upload Resumption Supported) are kept apart from the final one.

An event stream (``text/event-stream``) may go on for as long as its upload does. Read with
``stream=True``, it is complete once its first whole event arrived (or it ended): the client
then closes the connection with the rest unread, as a browser leaving the page does, and the
answer says ``streaming``.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field

# A header block larger than this is not an answer the gateway would send.
MAX_HEAD_BYTES = 64 * 1024
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
# How long to wait for the server's close after a complete answer.
CLOSE_GRACE_S = 1.0


@dataclass
class Answer:
    """What came back: interim statuses, the final answer, and whether it was whole."""

    raw: bytes = b""
    interim: list[int] = field(default_factory=list)
    # The header fields of each interim answer, names lower-cased.
    interim_headers: list[list[tuple[str, str]]] = field(default_factory=list)
    status: int | None = None
    status_line: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)  # names lower-cased
    body: bytes = b""
    complete: bool = False
    problem: str = ""  # why the answer is not complete (empty when it is)
    closed: bool = False  # the server closed the connection after it
    # An event stream the client stopped reading after its first event (it had not ended).
    streaming: bool = False
    elapsed_s: float = 0.0
    # The bytes after the final answer's header block, as received (still chunked).
    rest: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def locations(self) -> list[str]:
        """Every Location the answer carries, interim answers included."""
        return [value for fields in (*self.interim_headers, self.headers)
                for name, value in fields if name == "location"]

    def describe(self, limit: int = 600) -> str:
        if self.status is None:
            return f"no answer ({self.problem}); received {self.raw[:limit]!r}"
        text = self.raw[:limit]
        more = f" ... ({len(self.raw)} bytes)" if len(self.raw) > limit else ""
        return f"{text!r}{more}" + (f" [incomplete: {self.problem}]" if self.problem else "")


def exchange(host: str, port: int, request: bytes, *, head: bool,
             timeout_s: float = 15.0, stream: bool = False) -> Answer:
    """Send ``request`` on a new connection and read the answer (``head``: to a HEAD;
    ``stream``: an event stream is read up to its first event, see the module text)."""
    started = time.monotonic()
    received = bytearray()
    error = ""
    closed = False
    first: Answer | None = None
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        try:
            sock.sendall(request)
        except OSError as exc:
            # The server may answer and close before it read everything (a request line it
            # refused): what it sent is still read below.
            error = f"send failed: {exc!r}"
        deadline = started + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = error or f"no end of answer within {timeout_s} s"
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                error = error or f"no end of answer within {timeout_s} s"
                break
            except OSError as exc:
                error = error or f"receive failed: {exc!r}"
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if _complete(bytes(received), head):
                # The answer is whole; the close that ``Connection: close`` asked for should
                # follow at once. Waiting briefly for it keeps each request's log lines
                # ahead of the next request's.
                deadline = min(deadline, time.monotonic() + CLOSE_GRACE_S)
            elif stream and not head and (first := first_event(bytes(received))) is not None:
                break
    answer = first if first is not None else parse(bytes(received), head=head)
    if not answer.complete and error:
        answer.problem = f"{answer.problem}; {error}" if answer.problem else error
    answer.elapsed_s = time.monotonic() - started
    answer.closed = closed
    return answer


def first_event(data: bytes) -> Answer | None:
    """An event stream's answer as soon as its first whole event is in ``data``, else None
    (also for any answer that is not a 200 event stream)."""
    answer = parse(data, head=False, at_close=False)
    if answer.status != 200 or not (answer.header("content-type") or "").startswith(
            "text/event-stream"):
        return None
    encoding = answer.header("transfer-encoding")
    body = _dechunk(answer.rest, partial=True) if encoding is not None and \
        encoding.lower() == "chunked" else answer.rest
    # An event ends with a blank line; the separator is CRLF, LF or CR (HTML, "server-sent
    # events", "Interpreting an event stream").
    if body is None or not any(end in body for end in (b"\r\n\r\n", b"\n\n", b"\r\r")):
        return None
    answer.body, answer.complete, answer.streaming, answer.problem = body, True, True, ""
    return answer


def _complete(data: bytes, head: bool) -> bool:
    """Whether ``data`` already holds a whole final answer with a self-delimited body."""
    answer = parse(data, head=head, at_close=False)
    return answer.complete


def parse(data: bytes, *, head: bool, at_close: bool = True) -> Answer:
    """Split ``data`` into interim answers and the final one. ``at_close``: the connection
    has ended, so a body without a length ends here."""
    answer = Answer(raw=data)
    rest = data
    while True:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            answer.problem = "the header block never ended" if rest else "nothing received"
            return answer
        if end > MAX_HEAD_BYTES:
            answer.problem = "header block too large"
            return answer
        block, rest = rest[:end], rest[end + 4:]
        lines = block.split(b"\r\n")
        status_line = lines[0]
        parts = status_line.split(b" ", 2)
        # aiohttp answers in the version the request named (HTTP/1.0, and also HTTP/0.9 or
        # HTTP/2.0 when a request line says so): any HTTP/<digit>.<digit> is a status line.
        if len(parts) < 2 or not _VERSION.fullmatch(parts[0]) or not parts[1].isdigit() \
                or len(parts[1]) != 3:
            answer.problem = f"not a status line: {status_line[:100]!r}"
            return answer
        status = int(parts[1])
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                answer.problem = f"not a header line: {line[:100]!r}"
                return answer
            headers.append((name.decode("latin-1").strip().lower(),
                            value.decode("latin-1").strip()))
        if 100 <= status < 200:
            answer.interim.append(status)
            answer.interim_headers.append(headers)
            continue
        answer.status, answer.status_line, answer.headers = status, status_line, headers
        answer.rest = rest
        break
    if head or status in (204, 304):
        answer.complete = True
        answer.body = b""
        return answer
    encoding = answer.header("transfer-encoding")
    if encoding is not None and encoding.lower() == "chunked":
        body = _dechunk(rest)
        if body is None:
            answer.problem = "the chunked body never ended"
            return answer
        answer.body, answer.complete = body, True
        return answer
    length = answer.header("content-length")
    if length is not None:
        if not length.isdigit():
            answer.problem = f"bad Content-Length {length!r}"
            return answer
        if len(rest) < int(length):
            answer.problem = f"body has {len(rest)} of {length} bytes"
            return answer
        answer.body, answer.complete = rest[:int(length)], True
        return answer
    answer.body, answer.complete = rest, at_close
    if not at_close:
        answer.problem = "body without a length; waiting for the close"
    return answer


def _dechunk(data: bytes, *, partial: bool = False) -> bytes | None:
    """The body of a chunked ``data``; None unless it ended (``partial``: the whole chunks
    so far, None only for a malformed one)."""
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n")
        if line_end < 0:
            return bytes(body) if partial else None
        size_text = data[:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return None
        data = data[line_end + 2:]
        if size == 0:
            # Trailers (none expected), then the empty line.
            return bytes(body) if data.startswith(b"\r\n") or b"\r\n\r\n" in data else None
        if len(data) < size + 2:
            return bytes(body) if partial else None
        body += data[:size]
        data = data[size + 2:]
