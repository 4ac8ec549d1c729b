"""Hostile tus 1.0.0 and IETF resumable-upload requests, drawn from one seeded generator.

Theory of operation: ``Fuzzer(seed, ...)`` hands out one ``WireRequest`` at a time and is
told every answer (``observe``), so it can aim later requests at uploads that exist and at
the offsets they really have. Everything random comes from one ``random.Random(seed)``, so a
seed names a run: the same seed gives the same requests (the ids the gateway makes up are
the only part it does not choose).

Two kinds of requests are interleaved:

- *Valid sequences* (a tus upload in one or several PATCHes, creation-with-upload, a deferred
  length, checksums, a concatenation, an IETF draft upload): unmutated requests whose answers
  are checked (status, offsets, the bytes a GET returns). Their uploads are kept out of reach
  of the mutated requests until the sequence ends, so a stray DELETE cannot fail them.
- *Mutated requests*: a template (any tus or draft request on a real upload at its real
  offset, a creation, an endpoint of the operations API) with one to four mutations on top:
  the method, X-HTTP-Method-Override, the path, the value of any tus/draft/proxy/auth header
  (valid, boundary, malformed, repeated, non-ASCII and Latin-1 bytes, control characters,
  very long), header names, the HTTP version, the body and its framing. The body framing is
  always honest (``Content-Length`` equals the body, or a well-formed chunked body), so every
  request is complete and deserves a complete answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from tests.fuzz.wire import Answer

TUS = (b"Tus-Resumable", b"1.0.0")
OCTETS = b"application/offset+octet-stream"
PARTIAL = b"application/partial-upload"
INTEROP = b"Upload-Draft-Interop-Version"
DRAFT_VERSIONS = tuple(range(3, 9))
TUS_METHODS = ("OPTIONS", "POST", "HEAD", "PATCH", "DELETE", "GET")
# Methods the HTTP parser knows but tus does not use, then words it does not know at all.
OTHER_METHODS = ("PUT", "TRACE", "CONNECT", "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE",
                 "LOCK", "UNLOCK", "SEARCH", "REPORT", "PURGE", "LINK", "UNLINK", "QUERY",
                 "M-SEARCH", "NOTIFY", "SUBSCRIBE", "MKCALENDAR", "ACL", "BIND", "SOURCE")
JUNK_METHODS = ("FOO", "BREW", "X-PATCH", "GETT", "PRI", "DESCRIBE", "P@TCH", "POST/",
                "\u00dcBER", "123")
# Every header the gateway reads (Content-Length is only ever honest, see the module text).
FUZZED_HEADERS = ("Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Metadata",
                  "Upload-Defer-Length", "Upload-Concat", "Upload-Checksum", "Content-Type",
                  "Upload-Complete", "Upload-Incomplete", "Upload-Draft-Interop-Version",
                  "Host", "Forwarded", "X-Forwarded-Host", "X-Forwarded-Proto",
                  "Authorization", "Expect", "X-HTTP-Method-Override", "Content-Disposition",
                  "Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers",
                  "Accept")
MAX_BODY = 4096
# Uploads the fuzzer remembers as targets.
MAX_POOL = 200
# Characters a header value may not carry on the wire, and a few it may (tab), in the middle
# of an otherwise good value. CR and LF are left out: they would end the line and make a
# different request, not a hostile value.
CONTROL = ("\x00", "\x01", "\x07", "\x08", "\t", "\x0b", "\x0c", "\x1b", "\x7f")
NON_ASCII = ("\u00e9", "\u00fc", "\u65e5\u672c", "\U0001f4a9", "\u202e", "\u2028", "\ufeff",
             "\u0661\u0662", "\uff11")


@dataclass
class WireRequest:
    """One request exactly as it goes on the wire; ``label`` says how it was made."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    version: bytes = b"HTTP/1.1"
    chunked: bool = False
    # Empty body and no Content-Length at all (a request without framing headers).
    no_length: bool = False
    label: str = ""
    # For steps of a valid sequence: the statuses the answer must have.
    expect: tuple[int, ...] | None = None
    # The upload the request is aimed at, if any (for bookkeeping of offsets).
    upload: str | None = None

    @property
    def is_head(self) -> bool:
        return self.method == b"HEAD"

    def encode(self) -> bytes:
        lines = [self.method + b" " + self.target + b" " + self.version]
        lines += [name + b": " + value for name, value in self.headers]
        payload = self.body
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked")
            payload = _chunk(self.body)
        elif not (self.no_length and not self.body):
            lines.append(b"Content-Length: " + str(len(self.body)).encode())
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + payload

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def set(self, name: bytes, value: bytes) -> None:
        self.remove(name)
        self.headers.append((name, value))

    def remove(self, name: bytes) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]


def _chunk(body: bytes) -> bytes:
    out = bytearray()
    at = 0
    step = max(1, len(body) // 3)
    while at < len(body):
        piece = body[at:at + step]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        at += step
    return bytes(out + b"0\r\n\r\n")


@dataclass
class Known:
    """An upload the fuzzer knows of: what its last answers said."""

    upload_id: str
    offset: int = 0
    length: int | None = None
    partial: bool = False


class SequenceFailed(AssertionError):
    """A valid sequence got an answer it must not get (other than its status)."""


# A valid sequence: yields requests, is sent each answer.
Sequence = Generator[WireRequest, Answer, None]


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def signed_token(secret: str, payload: bytes) -> str:
    """An upload token for ``--auth hmac`` carrying any payload, correctly signed (the format
    gateway/auth.py documents): what a holder of a leaked secret, or a buggy minting
    service, could send."""
    body = _b64url(payload)
    digest = hmac.new(secret.encode(), body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64url(digest)}"


@dataclass
class _Running:
    """A valid sequence under way and the request it wants sent next."""

    steps: Sequence
    queued: WireRequest


@dataclass
class Fuzzer:
    seed: int
    host: str  # host:port of the gateway, as a client would send it in Host
    secret: str  # the gateway's --auth-secret
    base: str = "/files/"
    rng: random.Random = field(init=False)
    pool: list[Known] = field(default_factory=list)
    running: list[_Running] = field(default_factory=list)
    # Override values sent that are not methods at all (the metrics must not keep them).
    junk_overrides: set[str] = field(default_factory=set)
    _current: _Running | None = None
    _users: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # --- the loop ---------------------------------------------------------------------------
    def next(self) -> WireRequest:
        """The next request; the caller sends it and passes its answer to ``observe``."""
        rng = self.rng
        if len(self.running) < 2 and rng.random() < 0.08:
            steps = self._new_sequence()
            self.running.append(_Running(steps, next(steps)))
        if self.running and rng.random() < 0.3:
            self._current = rng.choice(self.running)
            return self._current.queued
        self._current = None
        return self._mutated()

    def observe(self, request: WireRequest, answer: Answer) -> None:
        """Learn from an answer. For a step of a valid sequence this runs its checks, which
        raise ``SequenceFailed``."""
        running, self._current = self._current, None
        if running is None:
            self._learn(request, answer)
            return
        try:
            if request.expect is not None and answer.status not in request.expect:
                raise SequenceFailed(f"{request.label}: expected {request.expect}, "
                                     f"got {answer.status}")
            running.queued = running.steps.send(answer)
        except StopIteration:
            self.running.remove(running)
        except SequenceFailed:
            self.running.remove(running)
            raise

    # --- valid sequences --------------------------------------------------------------------
    def _new_sequence(self) -> Sequence:
        kind = self.rng.choice((self.tus_upload, self.tus_upload, self.tus_deferred,
                                self.tus_concat, self.ietf_upload, self.ietf_upload))
        return kind()

    def _auth(self) -> tuple[bytes, bytes]:
        return (b"Authorization", b"Bearer " + self.token().encode())

    def _user(self) -> tuple[bytes, bytes]:
        """The token of a valid sequence: a subject of its own, as each user of a real
        deployment has, so that per-client quotas filled by the mutated requests (which
        share a subject-less token) do not refuse it."""
        self._users += 1
        return (b"Authorization", b"Bearer " + self.token(sub=f"user-{self._users}").encode())

    def token(self, **claims: object) -> str:
        payload = {"exp": int(time.time()) + 3600, **claims}
        return signed_token(self.secret, json.dumps(payload).encode())

    def _collection(self) -> bytes:
        """The collection's URL, now and then without its trailing slash (tus clients
        configured with ``/files`` send that)."""
        return self.base.rstrip("/").encode() if self.rng.random() < 0.2 else \
            self.base.encode()

    def _host(self) -> tuple[bytes, bytes]:
        return (b"Host", self.host.encode())

    def tus_upload(self) -> Sequence:
        """Create (sometimes with the first bytes), PATCH the rest in pieces (sometimes with
        a checksum), HEAD, GET: the bytes must come back exact."""
        rng = self.rng
        data = rng.randbytes(rng.randint(0, 3 * MAX_BODY))
        meta = b"filename " + b64(f"fuzz-{rng.randrange(10**6)}.bin".encode())
        first = b""
        headers = [self._host(), TUS, self._user(), (b"Upload-Length", str(len(data)).encode()),
                   (b"Upload-Metadata", meta)]
        if data and rng.random() < 0.3:
            first = data[:rng.randint(1, min(len(data), MAX_BODY))]
            headers.append((b"Content-Type", OCTETS))
        answer = yield WireRequest(b"POST", self._collection(), headers, first,
                                   label="valid tus creation", expect=(201,))
        url = _path(answer)
        upload_id = url.rsplit("/", 1)[-1]
        offset = _offset(answer, "creation")
        if offset != len(first):
            raise SequenceFailed(f"creation with {len(first)} bytes answered offset {offset}")
        while offset < len(data):
            piece = data[offset:offset + rng.randint(1, MAX_BODY)]
            patch = [self._host(), TUS, (b"Upload-Offset", str(offset).encode()),
                     (b"Content-Type", OCTETS)]
            if rng.random() < 0.3:
                algorithm = rng.choice(("md5", "sha1", "sha256", "sha512"))
                digest = hashlib.new(algorithm, piece).digest()
                patch.append((b"Upload-Checksum", algorithm.encode() + b" " + b64(digest)))
            answer = yield WireRequest(b"PATCH", url.encode(), patch, piece,
                                       chunked=rng.random() < 0.1, upload=upload_id,
                                       label="valid tus PATCH", expect=(204,))
            new = _offset(answer, "PATCH")
            if new != offset + len(piece):
                raise SequenceFailed(f"PATCH of {len(piece)} at {offset} answered {new}")
            offset = new
        yield from self._check_download(url, upload_id, data)

    def tus_deferred(self) -> Sequence:
        """Upload-Defer-Length, the length declared on the last PATCH."""
        rng = self.rng
        data = rng.randbytes(rng.randint(1, 2 * MAX_BODY))
        answer = yield WireRequest(
            b"POST", self.base.encode(),
            [self._host(), TUS, self._user(), (b"Upload-Defer-Length", b"1")],
            label="valid tus deferred creation", expect=(201,))
        url = _path(answer)
        upload_id = url.rsplit("/", 1)[-1]
        cut = rng.randint(0, len(data) - 1)
        for start, end, last in ((0, cut, False), (cut, len(data), True)):
            headers = [self._host(), TUS, (b"Upload-Offset", str(start).encode()),
                       (b"Content-Type", OCTETS)]
            if last:
                headers.append((b"Upload-Length", str(len(data)).encode()))
            answer = yield WireRequest(b"PATCH", url.encode(), headers, data[start:end],
                                       upload=upload_id, label="valid tus deferred PATCH",
                                       expect=(204,))
            if _offset(answer, "PATCH") != end:
                raise SequenceFailed(f"deferred PATCH to {end} answered {answer.status_line!r}")
        yield from self._check_download(url, upload_id, data)

    def tus_concat(self) -> Sequence:
        """Two partial uploads and their final: the final's bytes are both, in order."""
        rng = self.rng
        parts = [rng.randbytes(rng.randint(1, MAX_BODY)) for _ in range(2)]
        user = self._user()  # the partials and their final are one user's
        urls = []
        for part in parts:
            answer = yield WireRequest(
                b"POST", self.base.encode(),
                [self._host(), TUS, user, (b"Upload-Concat", b"partial"),
                 (b"Upload-Length", str(len(part)).encode()), (b"Content-Type", OCTETS)],
                part, label="valid tus partial creation", expect=(201,))
            urls.append(_path(answer))
        answer = yield WireRequest(
            b"POST", self.base.encode(),
            [self._host(), TUS, user,
             (b"Upload-Concat", b"final;" + b" ".join(u.encode() for u in urls))],
            label="valid tus final creation", expect=(201,))
        url = _path(answer)
        for partial, part in zip(urls, parts, strict=True):
            self._remember(Known(partial.rsplit("/", 1)[-1], len(part), len(part), True))
        yield from self._check_download(url, url.rsplit("/", 1)[-1], b"".join(parts))

    def ietf_upload(self) -> Sequence:
        """The draft: creation (sometimes with content), appends, the last one completing."""
        rng = self.rng
        draft = rng.choice(DRAFT_VERSIONS)
        data = rng.randbytes(rng.randint(1, 3 * MAX_BODY))
        version = (INTEROP, str(draft).encode())
        first = data[:rng.randint(0, min(len(data), MAX_BODY))]
        done = len(first) == len(data)
        headers = [self._host(), version, self._user(), _complete(draft, done)]
        if draft >= 6 and rng.random() < 0.5:
            headers.append((b"Upload-Length", str(len(data)).encode()))
        answer = yield WireRequest(b"POST", self._collection(), headers, first,
                                   label=f"valid draft {draft} creation", expect=(201,))
        url = _path(answer)
        upload_id = url.rsplit("/", 1)[-1]
        if 104 not in answer.interim:
            raise SequenceFailed(f"draft {draft} creation without a 104 interim answer")
        offset = _offset(answer, "creation")
        while offset < len(data):
            piece = data[offset:offset + rng.randint(1, MAX_BODY)]
            done = offset + len(piece) == len(data)
            headers = [self._host(), version, (b"Upload-Offset", str(offset).encode()),
                       _complete(draft, done)]
            if draft >= 6:
                headers.append((b"Content-Type", PARTIAL))
            status = 201 if draft <= 6 else 204
            answer = yield WireRequest(b"PATCH", url.encode(), headers, piece,
                                       upload=upload_id, label=f"valid draft {draft} append",
                                       expect=(status,))
            new = _offset(answer, "append")
            if new != offset + len(piece):
                raise SequenceFailed(f"draft append of {len(piece)} at {offset} answered {new}")
            offset = new
        answer = yield WireRequest(b"HEAD", url.encode(), [self._host(), version],
                                   upload=upload_id, label=f"valid draft {draft} HEAD",
                                   expect=(204,))
        if _offset(answer, "HEAD") != len(data):
            raise SequenceFailed(f"draft HEAD says {answer.header('upload-offset')}")
        yield from self._check_download(url, upload_id, data)

    def _check_download(self, url: str, upload_id: str, data: bytes) -> Sequence:
        answer = yield WireRequest(b"HEAD", url.encode(), [self._host(), TUS],
                                   upload=upload_id, label="valid tus HEAD", expect=(200,))
        if _offset(answer, "HEAD") != len(data) or answer.header("upload-length") != \
                str(len(data)):
            raise SequenceFailed(f"HEAD after {len(data)} bytes: {answer.headers}")
        answer = yield WireRequest(b"GET", url.encode(), [self._host(), TUS],
                                   upload=upload_id, label="valid GET", expect=(200,))
        if answer.body != data:
            raise SequenceFailed(f"GET returned {len(answer.body)} bytes, not the "
                                 f"{len(data)} uploaded (or different ones)")
        self._remember(Known(upload_id, len(data), len(data)))

    # --- bookkeeping ------------------------------------------------------------------------
    def _remember(self, known: Known) -> None:
        self.pool.append(known)
        if len(self.pool) > MAX_POOL:
            # A random one goes, so old uploads (finished, expired, deleted) stay targets too.
            del self.pool[self.rng.randrange(len(self.pool))]

    def _learn(self, request: WireRequest, answer: Answer) -> None:
        if answer.status is None:
            return
        if request.method == b"POST" and answer.status == 201:
            location = answer.header("location")
            if location:
                upload_id = location.rsplit("/", 1)[-1]
                if len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id):
                    length = _int(request.header(b"Upload-Length"))
                    self._remember(Known(upload_id, _int(answer.header("upload-offset")) or 0,
                                         length))
            return
        if request.upload is not None and answer.status < 500:
            offset = _int(answer.header("upload-offset"))
            for known in self.pool:
                if known.upload_id == request.upload:
                    if offset is not None:
                        known.offset = offset
                    length = _int(answer.header("upload-length"))
                    if length is not None:
                        known.length = length
                    break

    # --- mutated requests -------------------------------------------------------------------
    def _mutated(self) -> WireRequest:
        rng = self.rng
        template = rng.choice(self._templates())
        request = template()
        count = rng.choice((0, 1, 1, 1, 2, 2, 2, 3, 3, 4))
        names = []
        for _ in range(count):
            mutate = rng.choice(self._mutators())
            names.append(mutate(request))
        request.label = request.label + (" + " + ", ".join(names) if names else " (unmutated)")
        return request

    def _templates(self) -> tuple[Callable[[], WireRequest], ...]:
        return (self.t_create, self.t_create, self.t_create_body, self.t_create_defer,
                self.t_concat, self.t_patch, self.t_patch, self.t_patch, self.t_head,
                self.t_delete, self.t_get, self.t_options, self.t_draft_create,
                self.t_draft_create, self.t_draft_append, self.t_draft_append,
                self.t_draft_head, self.t_draft_delete, self.t_api, self.t_preflight)

    def _target(self) -> Known | None:
        return self.rng.choice(self.pool) if self.pool else None

    def _upload_path(self, known: Known | None) -> bytes:
        upload_id = known.upload_id if known else self.rng.randbytes(16).hex()
        return (self.base + upload_id).encode()

    def _body_for(self, known: Known | None) -> bytes:
        room = MAX_BODY
        if known is not None and known.length is not None:
            room = max(0, min(MAX_BODY, known.length - known.offset))
        return self.rng.randbytes(self.rng.randint(0, room))

    def t_create(self) -> WireRequest:
        length = self.rng.choice((0, 1, 10, 1000, 5000, 10**6))
        return WireRequest(b"POST", self.base.encode(),
                           [self._host(), TUS, self._auth(),
                            (b"Upload-Length", str(length).encode()),
                            (b"Upload-Metadata", b"filename " + b64(b"a.txt") + b",x")],
                           label="tus creation", expect=None)

    def t_create_body(self) -> WireRequest:
        body = self.rng.randbytes(self.rng.randint(1, MAX_BODY))
        length = len(body) + self.rng.choice((0, 0, 1, 100))
        return WireRequest(b"POST", self.base.encode(),
                           [self._host(), TUS, self._auth(),
                            (b"Upload-Length", str(length).encode()), (b"Content-Type", OCTETS)],
                           body, label="tus creation-with-upload")

    def t_create_defer(self) -> WireRequest:
        return WireRequest(b"POST", self.base.encode(),
                           [self._host(), TUS, self._auth(), (b"Upload-Defer-Length", b"1")],
                           label="tus deferred creation")

    def t_concat(self) -> WireRequest:
        rng = self.rng
        if rng.random() < 0.4 or not self.pool:
            return WireRequest(b"POST", self.base.encode(),
                               [self._host(), TUS, self._auth(), (b"Upload-Concat", b"partial"),
                                (b"Upload-Length", b"5")], label="tus partial creation")
        named = [rng.choice(self.pool) for _ in range(rng.randint(1, 3))]
        value = b"final;" + b" ".join(self._upload_path(k) for k in named)
        return WireRequest(b"POST", self.base.encode(),
                           [self._host(), TUS, self._auth(), (b"Upload-Concat", value)],
                           label="tus final creation")

    def t_patch(self) -> WireRequest:
        known = self._target()
        body = self._body_for(known)
        headers = [self._host(), TUS,
                   (b"Upload-Offset", str(known.offset if known else 0).encode()),
                   (b"Content-Type", OCTETS)]
        if known is not None and known.length is None and self.rng.random() < 0.5:
            headers.append((b"Upload-Length", str(known.offset + len(body)).encode()))
        return WireRequest(b"PATCH", self._upload_path(known), headers, body,
                           upload=known.upload_id if known else None, label="tus PATCH")

    def t_head(self) -> WireRequest:
        known = self._target()
        return WireRequest(b"HEAD", self._upload_path(known), [self._host(), TUS],
                           upload=known.upload_id if known else None, label="tus HEAD")

    def t_delete(self) -> WireRequest:
        known = self._target()
        return WireRequest(b"DELETE", self._upload_path(known), [self._host(), TUS],
                           upload=known.upload_id if known else None, label="tus DELETE")

    def t_get(self) -> WireRequest:
        known = self._target()
        return WireRequest(b"GET", self._upload_path(known), [self._host(), TUS],
                           upload=known.upload_id if known else None, label="tus GET")

    def t_options(self) -> WireRequest:
        target = self.base.encode() if self.rng.random() < 0.5 else \
            self._upload_path(self._target())
        return WireRequest(b"OPTIONS", target, [self._host()], label="tus OPTIONS")

    def _draft(self) -> tuple[int, tuple[bytes, bytes]]:
        draft = self.rng.choice(DRAFT_VERSIONS)
        return draft, (INTEROP, str(draft).encode())

    def t_draft_create(self) -> WireRequest:
        rng = self.rng
        draft, version = self._draft()
        body = rng.randbytes(rng.randint(0, MAX_BODY))
        headers = [self._host(), version, self._auth(), _complete(draft, rng.random() < 0.5)]
        if rng.random() < 0.3:
            headers.append((b"Upload-Length", str(len(body) + rng.choice((0, 10))).encode()))
        if rng.random() < 0.3:
            headers.append((b"Content-Disposition", b'attachment; filename="f.txt"'))
        return WireRequest(b"POST", self.base.encode(), headers, body,
                           label=f"draft {draft} creation")

    def t_draft_append(self) -> WireRequest:
        draft, version = self._draft()
        known = self._target()
        body = self._body_for(known)
        headers = [self._host(), version,
                   (b"Upload-Offset", str(known.offset if known else 0).encode()),
                   _complete(draft, self.rng.random() < 0.5)]
        if draft >= 6:
            headers.append((b"Content-Type", PARTIAL))
        return WireRequest(b"PATCH", self._upload_path(known), headers, body,
                           upload=known.upload_id if known else None,
                           label=f"draft {draft} append")

    def t_draft_head(self) -> WireRequest:
        draft, version = self._draft()
        known = self._target()
        return WireRequest(b"HEAD", self._upload_path(known), [self._host(), version],
                           upload=known.upload_id if known else None,
                           label=f"draft {draft} HEAD")

    def t_draft_delete(self) -> WireRequest:
        draft, version = self._draft()
        known = self._target()
        return WireRequest(b"DELETE", self._upload_path(known), [self._host(), version],
                           upload=known.upload_id if known else None,
                           label=f"draft {draft} DELETE")

    def t_api(self) -> WireRequest:
        known = self._target()
        upload_id = (known.upload_id if known else self.rng.randbytes(16).hex()).encode()
        method, target = self.rng.choice((
            (b"GET", b"/api/upload/status/" + upload_id), (b"POST", b"/api/sink/retry/" +
                                                           upload_id),
            (b"GET", b"/metrics"), (b"GET", b"/api/system/health"), (b"GET", b"/"),
            (b"GET", b"/static/upload-page.css"), (b"GET", b"/static/../gateway/app.py")))
        return WireRequest(method, target, [self._host()], label=f"{method.decode()} API")

    def t_preflight(self) -> WireRequest:
        """A browser's CORS preflight (aiohttp-cors answers it, not the tus views)."""
        rng = self.rng
        target = self.base.encode() if rng.random() < 0.5 else self._upload_path(self._target())
        return WireRequest(b"OPTIONS", target, [
            self._host(), (b"Origin", b"https://app.example"),
            (b"Access-Control-Request-Method", rng.choice((b"POST", b"PATCH", b"HEAD"))),
            (b"Access-Control-Request-Headers",
             b"tus-resumable,upload-length,upload-metadata,upload-offset,content-type")],
            label="CORS preflight")

    # --- mutators: each changes the request in place and returns what it did ---------------
    def _mutators(self) -> tuple[Callable[[WireRequest], str], ...]:
        return (self.m_method, self.m_override, self.m_path, self.m_path, self.m_header,
                self.m_header, self.m_header, self.m_header, self.m_header, self.m_remove,
                self.m_repeat, self.m_name, self.m_version, self.m_body, self.m_framing,
                self.m_junk_headers)

    def m_method(self, request: WireRequest) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.35:
            method = rng.choice(TUS_METHODS)
        elif pick < 0.7:
            method = rng.choice(OTHER_METHODS)
        elif pick < 0.85:
            method = rng.choice(TUS_METHODS + OTHER_METHODS).lower()
        else:
            method = rng.choice(JUNK_METHODS)
        request.method = method.encode()
        return f"method {method}"

    def m_override(self, request: WireRequest) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.3:
            value = rng.choice(TUS_METHODS)
        elif pick < 0.45:
            value = rng.choice(TUS_METHODS).lower()
        elif pick < 0.6:
            value = rng.choice(OTHER_METHODS)
        else:
            value = rng.choice((
                "", " ", "PATCH, POST", " patch ", "P\u00c4TCH", "GET\x00", "X" * 300,
                f"m{rng.randrange(10**9)}", rng.randbytes(8).hex(), "\u65e5\u672c",
                "HEAD\t", "DELETE;x=1", "-1"))
            self.junk_overrides.add(value.strip().upper())
        if rng.random() < 0.1:
            request.headers.append((b"X-HTTP-Method-Override", value.encode()))
            return f"override {value!r} added again"
        request.set(b"X-HTTP-Method-Override", value.encode())
        return f"override {value[:40]!r}"

    def m_path(self, request: WireRequest) -> str:
        rng = self.rng
        known = self._target()
        real = known.upload_id if known else rng.randbytes(16).hex()
        made_up = rng.randbytes(16).hex()
        base = self.base.rstrip("/")
        choices = (
            f"{base}/", base, f"{base}/{real}", f"{base}/{made_up}", f"{base}/{real}/",
            f"{base}/{real.upper()}", f"{base}/{real}x", f"{base}/{real[:31]}",
            f"{base}//{real}", f"{base}/./{real}", f"{base}/../files/{real}",
            f"{base}/%2e%2e/{real}", f"{base}/%2E%2E%2F{real}", f"{base}/%00",
            f"{base}/{real}%00", f"{base}/%0a", f"{base}/%0d%0aSet-Cookie:%20x=1",
            f"{base}/%ff%fe", f"{base}/%", f"{base}/%zz", f"{base}/%u0041",
            f"{base}/{real}?Upload-Offset=0&x=%00", f"{base}/?{'q' * 3000}",
            f"{base}/" + "a" * rng.choice((100, 2000, 7000)),
            f"{base}/" + "%41" * rng.choice((100, 2500)), "/FILES/", "//files/",
            f"{base}/\u65e5\u672c", f"{base}/\u00e9", f"{base}/{real}#frag", "*",
            f"http://{self.host}{base}/", f"http://evil.example{base}/{real}",
            "/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd",
            f"/api/upload/status/{real}", "/api/upload/status/%2e%2e",
            f"/api/sink/retry/{real}", "/metrics", "/api/system/health", "/", "",
        )
        target = rng.choice(choices)
        encoded = target.encode("utf-8")
        if rng.random() < 0.05:
            encoded += bytes([rng.choice((0x7f, 0x80, 0xff, 0x01))])
        request.target = encoded
        if known is not None and known.upload_id in target:
            request.upload = known.upload_id
        elif request.upload is not None and request.upload not in target:
            request.upload = None
        return f"path {encoded[:60]!r}"

    def m_header(self, request: WireRequest) -> str:
        name = self.rng.choice(FUZZED_HEADERS)
        value = self.value_for(name, request)
        request.set(name.encode(), value)
        return f"{name}: {value[:60]!r}"

    def m_remove(self, request: WireRequest) -> str:
        if not request.headers:
            return "nothing to remove"
        name, _ = request.headers.pop(self.rng.randrange(len(request.headers)))
        return f"without {name.decode('latin-1')}"

    def m_repeat(self, request: WireRequest) -> str:
        rng = self.rng
        if request.headers and rng.random() < 0.7:
            name, value = rng.choice(request.headers)
        else:
            name = rng.choice(FUZZED_HEADERS).encode()
            value = self.value_for(name.decode(), request)
        second = value if rng.random() < 0.5 else self.value_for(name.decode(), request)
        request.headers.insert(rng.randrange(len(request.headers) + 1), (name, second))
        return f"{name.decode('latin-1')} twice"

    def m_name(self, request: WireRequest) -> str:
        if not request.headers:
            return "no name to change"
        rng = self.rng
        index = rng.randrange(len(request.headers))
        name, value = request.headers[index]
        text = name.decode("latin-1")
        new = rng.choice((text.lower(), text.upper(), text.replace("-", "_"), text + " ",
                          " " + text, text + "\x00", text.replace("-", ""), text + "\u00e9",
                          text + ":", "X-" + text))
        request.headers[index] = (new.encode("utf-8"), value)
        return f"name {new!r}"

    def m_version(self, request: WireRequest) -> str:
        version = self.rng.choice((b"HTTP/1.0", b"HTTP/1.1", b"HTTP/1.2", b"HTTP/2.0",
                                   b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/11"))
        request.version = version
        return f"version {version.decode()}"

    def m_body(self, request: WireRequest) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.3:
            request.body = b""
        elif pick < 0.5 and request.body:
            request.body = request.body[:rng.randrange(len(request.body))]
        elif pick < 0.7:
            request.body = request.body + rng.randbytes(rng.randint(1, 64))
        else:
            request.body = rng.randbytes(rng.randint(1, MAX_BODY))
        return f"body of {len(request.body)} bytes"

    def m_framing(self, request: WireRequest) -> str:
        if self.rng.random() < 0.6:
            request.chunked = True
            return "chunked"
        request.body = b""
        request.no_length = True
        return "no body, no Content-Length"

    def m_junk_headers(self, request: WireRequest) -> str:
        rng = self.rng
        count = rng.choice((1, 5, 60, 150))
        for i in range(count):
            # Short values: a hundred over-long lines would be a megabyte the server stops
            # reading after the first one (and a reset could eat its answer).
            value = self._hostile(rng.choice((b"x", b"1.0.0", b"bytes=0-")))[:300]
            request.headers.append((f"X-Fuzz-{i}".encode(), value))
        return f"{count} extra headers"

    # --- header values ----------------------------------------------------------------------
    def value_for(self, name: str, request: WireRequest) -> bytes:
        """A value for ``name``: one that fits the header (valid or at its boundaries), one
        that is malformed for it, or a generic hostile one."""
        rng = self.rng
        pick = rng.random()
        specific = self._specific(name, request)
        if pick < 0.65:
            return rng.choice(specific)
        return self._hostile(rng.choice(specific))

    def _hostile(self, good: bytes) -> bytes:
        """A good value made bad: control characters, non-ASCII, Latin-1 bytes, length,
        blanks."""
        rng = self.rng
        kind = rng.randrange(8)
        if kind == 0:
            at = rng.randint(0, len(good))
            return good[:at] + rng.choice(CONTROL).encode() + good[at:]
        if kind == 1:
            return good + rng.choice(NON_ASCII).encode("utf-8")
        if kind == 2:
            return rng.choice(NON_ASCII).encode("utf-8") + good
        if kind == 3:
            return good + bytes(rng.randint(0x80, 0xff) for _ in range(rng.randint(1, 4)))
        if kind == 4:
            # Long, and longer than the server's limit for one header line (8190).
            return (good or b"a") * (rng.choice((300, 9000)) // max(1, len(good)) + 1)
        if kind == 5:
            return b" " + good + b" "
        if kind == 6:
            return b""
        return good + b"," + good

    def _specific(self, name: str, request: WireRequest) -> tuple[bytes, ...]:
        rng = self.rng
        known = next((k for k in self.pool if k.upload_id == request.upload), None)
        offset = known.offset if known else 0
        big = (b"-1", b"0", str(2**63 - 1).encode(), str(2**63).encode(), str(2**64).encode(),
               b"9" * 40, b"1e3", b"+1", b"01", b"0x10", b"1.5", b" 1", b"1_000",
               "\u0661".encode(), b"?1", b"", str(rng.randrange(10**6)).encode())
        if name == "Tus-Resumable":
            return (b"1.0.0", b"0.2.2", b"1.0", b"1.0.0, 1.0.0", b"1.0.0 ", b"2.0.0", b"")
        if name == "Upload-Length":
            return (str(len(request.body)).encode(), str(offset).encode(), *big)
        if name == "Upload-Offset":
            return (str(offset).encode(), str(offset + 1).encode(), str(offset - 1).encode(),
                    *big)
        if name == "Upload-Defer-Length":
            return (b"1", b"0", b"2", b"true", b"1 ", b"", b"11")
        if name == "Upload-Metadata":
            return (
                b"filename " + b64(b"ok.txt"), b"filename", b"filename ",
                b"filename " + b64(b"../../etc/passwd") + b",filetype " + b64(b"text/html"),
                b"filename " + b64("\u65e5\u672c.txt".encode()), b"filename " + b64(b"\xff\xfe"),
                b"filename " + b64(b"con.txt"), b"filename " + b64(b"a\x00b\nc"),
                b"a YQ==,a YQ==", b"filename !!!", b"filename YQ", b",,,", b" ", b"k\tv YQ==",
                b"filename " + b64(b"x" * 5000), b",".join(b"k%d YQ==" % i for i in range(400)),
                "cl\u00e9 YQ==".encode(), b"filetype " + b64(b"image/png; charset=\"x\""),
            )
        if name == "Upload-Concat":
            real = [self._upload_path(rng.choice(self.pool)) if self.pool else
                    self._upload_path(None) for _ in range(2)]
            return (
                b"partial", b"final;" + b" ".join(real), b"final;" + real[0] + b"  " + real[1],
                b"final;" + b" ".join(real * 75), b"final;", b"final", b"partial;x",
                b"final;http://evil.example" + real[0], b"final;" + real[0] + b"/../x",
                b"final;/files/%00", b"final;" + real[0].upper(), b"FINAL;" + real[0],
                b"final; " + real[0], b"final;" + real[0] + b",",
                b"final;http://" + self.host.encode() + real[0],
            )
        if name == "Upload-Checksum":
            digest = b64(hashlib.sha1(request.body).digest())
            return (b"sha1 " + digest, b"md5 " + digest, b"sha256 " + digest,
                    b"sha1 " + b64(b"\0" * 20), b"crc32 AAAAAA==", b"SHA1 " + digest,
                    b"sha1", b"sha1 !!!!", b"sha1  " + digest, b"sha512 " + b64(b"x"),
                    b"sha1 " + digest + b" extra", b"")
        if name == "Content-Type":
            return (OCTETS, PARTIAL, b"text/plain", OCTETS + b"; charset=utf-8",
                    OCTETS.upper(), b"", b"multipart/form-data; boundary=x",
                    b"application/offset+octet-stream, text/plain", b";;;",
                    PARTIAL + b"; x=\"y\"")
        if name in ("Upload-Complete", "Upload-Incomplete"):
            return (b"?1", b"?0", b"?2", b"1", b"true", b"?1;a=1", b"?1, ?0", b"", b"?",
                    b"?1;", b"?0 ;b", b"??1")
        if name == "Upload-Draft-Interop-Version":
            return (*(str(v).encode() for v in DRAFT_VERSIONS), b"2", b"9", b"0", b"-1",
                    b"6;x=1", b"6.0", b"999999999999999", b"9999999999999999", b"", b"06",
                    b"?1", b"6, 7")
        if name == "Host":
            return (self.host.encode(), b"example.com", b"", b"a/b", b"a?b", b"a#b",
                    "\u00e9vil.example".encode(), "\u65e5\u672c.jp".encode(),
                    b"\xe9vil.example", b"h" * 300, b"[::1]:80", b"host:99999", b"@evil",
                    b"a b", b"evil.example/files/x?y=", b"127.0.0.1:1\\x")
        if name == "Forwarded":
            return (b"for=192.0.2.1;host=example.com;proto=https", b'host="a/b"',
                    b"proto=javascript", "host=\u65e5\u672c".encode(), b"for=unknown, host=x",
                    b";;;", b"=", b"host=" + b"h" * 300, b'host="ex\\"ample"',
                    b"proto=https;proto=http", b"HOST=Example.COM;PROTO=HTTPS")
        if name == "X-Forwarded-Host":
            return (b"example.com", b"a/b", "\u00e9vil".encode(), b"", b"x, y", b"h" * 300,
                    b"example.com:443", b"[::1]", b"a?b")
        if name == "X-Forwarded-Proto":
            return (b"https", b"http", b"ftp", b"HTTPS", b"", b"https, http",
                    "htt\u00fe".encode(), b"javascript")
        if name == "Authorization":
            return self._authorizations()
        if name == "Expect":
            return (b"100-continue", b"100-CONTINUE", b"200-ok", b"", b"100-continue, foo",
                    b"100-continue;x=1")
        if name == "X-HTTP-Method-Override":
            return (b"PATCH", b"POST", b"DELETE", b"HEAD", b"GET", b"OPTIONS", b"patch",
                    b"TRACE", b"PROPFIND")
        if name == "Content-Disposition":
            return (b'attachment; filename="a.txt"', b"attachment; filename*=UTF-8''%e2%82%ac.txt",
                    b"attachment; filename*=bogus''%ff", b"inline", b'attachment; filename="',
                    b"attachment; filename=../../x", b"; ; ;", b"attachment; filename*=UTF-8''",
                    "attachment; filename=\u65e5.txt".encode())
        if name == "Origin":
            return (b"https://app.example", b"null", b"", b"http://" + self.host.encode(),
                    "https://\u00e9.example".encode(), b"*")
        if name == "Access-Control-Request-Method":
            return (b"PATCH", b"POST", b"TRACE", b"patch", b"", b"X" * 200)
        if name == "Access-Control-Request-Headers":
            return (b"upload-offset", b"tus-resumable, upload-length", b"", b",,,",
                    b"x-" + b"a" * 500, "\u00e9".encode())
        return (b"*/*", b"text/html", b"application/json", b"")

    def _authorizations(self) -> tuple[bytes, ...]:
        secret = self.secret
        now = int(time.time())

        def bearer(token: str) -> bytes:
            return b"Bearer " + token.encode()

        return (
            bearer(self.token()), bearer(self.token(sub="fuzz")),
            bearer(self.token(max_size=10)), bearer(self.token(max_size=0)),
            bearer(signed_token(secret, json.dumps({"exp": now - 10}).encode())),
            bearer(signed_token(secret, b'{"exp": "soon"}')),
            bearer(signed_token(secret, b'{"exp": true}')),
            bearer(signed_token(secret, b'{"exp": 1e400}')),
            bearer(signed_token(secret, b'{"exp": 99999999999, "max_size": -1}')),
            bearer(signed_token(secret, b'{"exp": 99999999999, "max_size": 1e3}')),
            bearer(signed_token(secret, b'{"exp": 99999999999, "sub": 5}')),
            bearer(signed_token(secret, b'{"exp": 99999999999, "sub": "\\ud800"}')),
            bearer(signed_token(secret, b'{"exp": 99999999999, "max_size": '
                                        + str(2**70).encode() + b"}")),
            bearer(signed_token(secret, b"[1, 2]")), bearer(signed_token(secret, b"not json")),
            bearer(signed_token(secret, b"\xff\xfe")),
            bearer(signed_token(secret, b'{"exp": 99999999999, "x": [' + b"[" * 2000
                                + b"]" * 2000 + b"]}")),
            bearer(self.token()[:-2] + "xx"), b"Bearer", b"Bearer ", b"bearer " +
            self.token().encode(), b"Basic dXNlcjpwYXNz", b"Bearer a.b", b"Bearer .",
            b"Bearer a..b", "Bearer \u00e9.\u00e9".encode(), b"Bearer \xff.\xff",
            b"Bearer " + b"a" * 4000 + b"." + b"b" * 43, b"Token abc", b"",
        )


def _complete(draft: int, done: bool) -> tuple[bytes, bytes]:
    if draft == 3:
        return (b"Upload-Incomplete", b"?0" if done else b"?1")
    return (b"Upload-Complete", b"?1" if done else b"?0")


def _path(answer: Answer) -> str:
    location = answer.header("location")
    if not location:
        raise SequenceFailed(f"a 201 without Location: {answer.headers}")
    if "://" in location:
        location = "/" + location.split("://", 1)[1].split("/", 1)[1]
    return location


def _offset(answer: Answer, what: str) -> int:
    value = _int(answer.header("upload-offset"))
    if value is None:
        raise SequenceFailed(f"{what} answer without a valid Upload-Offset: {answer.headers}")
    return value


def _int(value: bytes | str | None) -> int | None:
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None
