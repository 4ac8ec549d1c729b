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

The gateway under test names a user on every request (``--auth hmac``, or ``--auth bearer``
with a ``subject=TOKEN`` mapping) and accepts only ``ALLOWED_TYPES``. So every request aimed
at an upload mostly carries its creator's credentials (now and then another user's, an
admin's or none), and valid uploads claim a type their bytes really are (text, PNG, PDF),
or the checks in front would answer every mutation alike. Besides tus and the draft, the
user API is fuzzed the same way: the paged list (``limit``, ``cursor``), the event stream
(read up to its first event, then left), the session API (its JSON body, the stream's
``Upload-Offset`` and ``Content-Range``, abort), signed download links (``exp``, ``sig``),
and the claims of signed tokens (``hostile_claims``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
import urllib.parse
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.fuzz.wire import Answer

TUS = (b"Tus-Resumable", b"1.0.0")
OCTETS = b"application/offset+octet-stream"
PARTIAL = b"application/partial-upload"
INTEROP = b"Upload-Draft-Interop-Version"
DRAFT_VERSIONS = tuple(range(3, 10))
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
                  "Accept", "Last-Event-ID", "Content-Range", "X-Interim-Responses")
# The gateway's --allowed-types in the fuzz runs: a family with a size limit (so a claim can
# be over it), a family without one, and two exact types.
ALLOWED_TYPES = "video/*,image/*=512KiB,application/pdf,text/plain"
# The first bytes of the binary files valid sequences upload (the sniffer knows both).
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PDF_SIGNATURE = b"%PDF-1.7\n"
# Printable ASCII: bytes the sniffer takes for text.
TEXT_BYTES = bytes(range(0x20, 0x7f)) + b"\n"
# Bound on what the fuzzer keeps of download links and list cursors it was given.
MAX_KEPT = 50
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
    # With ``chunked``: the size of every HTTP chunk (None: the body in three).
    chunk_size: int | None = None
    # Empty body and no Content-Length at all (a request without framing headers).
    no_length: bool = False
    label: str = ""
    # For steps of a valid sequence: the statuses the answer must have.
    expect: tuple[int, ...] | None = None
    # The upload the request is aimed at, if any (for bookkeeping of offsets).
    upload: str | None = None
    # An answer that is an event stream is read up to its first event only (see
    # ``tests.fuzz.wire``); False: read whole. And how long to wait for the answer at most.
    stream: bool = True
    timeout_s: float = 15.0

    @property
    def is_head(self) -> bool:
        return self.method == b"HEAD"

    def encode(self) -> bytes:
        lines = [self.method + b" " + self.target + b" " + self.version]
        lines += [name + b": " + value for name, value in self.headers]
        payload = self.body
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked")
            payload = _chunk(self.body, self.chunk_size)
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


def _chunk(body: bytes, size: int | None = None) -> bytes:
    out = bytearray()
    at = 0
    step = size or max(1, len(body) // 3)
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
    # The Authorization header of its creator, which requests aimed at it mostly carry.
    auth: tuple[bytes, bytes] | None = None


class SequenceFailed(AssertionError):
    """A valid sequence got an answer it must not get (other than its status)."""


# A valid sequence: yields requests, is sent each answer.
Sequence = Generator[WireRequest, Answer, None]


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def signed_token(secret: str, payload: bytes | Mapping[str, object]) -> str:
    """An upload token for ``--auth hmac`` carrying any payload (bytes as they are, a mapping
    as JSON), correctly signed (the format gateway/auth.py documents): what a holder of a
    leaked secret, or a buggy minting service, could send."""
    if not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    body = _b64url(payload)
    digest = hmac.new(secret.encode(), body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64url(digest)}"


def hostile_claims() -> list[bytes]:
    """Token payloads (JSON text, not all of it valid JSON) whose signature is right and
    whose claims are not: each claim the gateway reads (sub, db, max_size, quota_bytes,
    quota_uploads, admin, exp) with a value of the wrong type, out of range, huge, nested,
    or text it must not take as a name."""
    far = b'"exp": 99999999999'
    values: dict[str, list[bytes]] = {
        "sub": [b"5", b"-1", b"1.5", b"true", b"null", b'""', b'" "', b'"a b"', b'"-x"',
                b'"' + b"a" * 129 + b'"', b'"' + b"a" * 128 + b'"', b'"' + b"a" * 5000 + b'"',
                '"\u00e9l\u00e8ve"'.encode(), '"\u65e5\u672c"'.encode(), b'"\\ud800"',
                b'"a\\u0000b"', b'"a\\nb"', b'"../../etc"', b'"sub:x"', b'"admin:0"',
                b'{"sub": "x"}', b'["x"]', b'"a\\u2028b"', b'"\xff"'],
        "db": [b'"not hex"', b'"' + b"g" * 32 + b'"', b'"' + b"0" * 31 + b'"',
               b'"' + b"0" * 37 + b'"', b'"' + b"-" * 36 + b'"', b"1" * 32,
               b'"0123456789abcdef0123456789abcdef\\n"', b'"../0123456789abcdef0123456789abcd"',
               b"[]", b"{}", b"true", '"\uff10'.encode() + b"0" * 31 + b'"'],
        "admin": [b'"true"', b"1", b"0", b"null", b"[]", b'{"admin": true}', b"1.0", b'"yes"'],
        "exp": [b'"99999999999"', b"99999999999.5", b"1e400", b"-1", b"0", b"true", b"null",
                str(2**63).encode(), str(10**30).encode(), b"1" * 5000, b"[99999999999]"],
    }
    for name in ("max_size", "quota_bytes", "quota_uploads"):
        values[name] = [b"-1", b"-0", b"0", b"1", b"1.5", b"1e3", b"1e400", b"-1e400",
                        str(2**63 - 1).encode(), str(2**63).encode(), str(2**64).encode(),
                        str(10**100).encode(), b"9" * 5000, b"true", b"false", b"null",
                        b'"10"', b"[10]", b'{"n": 10}', b"NaN", b"Infinity"]
    payloads = []
    for name, options in values.items():
        for value in options:
            if name == "exp":
                payloads.append(b'{"exp": ' + value + b', "sub": "fuzz-claims"}')
            else:
                payloads.append(b"{" + far + b', "' + name.encode() + b'": ' + value + b"}")
    # Several claims at once, each valid alone (the combination must still be judged whole).
    payloads += [
        b"{" + far + b', "sub": "x", "admin": false, "db": "' + b"a" * 32
        + b'", "max_size": 10, "quota_bytes": 0, "quota_uploads": 0}',
        b"{" + far + b', "sub": "x", "sub": 5}', b"{" + far + b', "admin": true, "admin": 1}',
        b"{" + far + b', "claims": ' + b'{"a": ' * 500 + b"1" + b"}" * 500 + b"}",
    ]
    return payloads


def link_query(secret: str, upload_id: str, exp: int) -> str:
    """The query of a download link for ``upload_id`` expiring at ``exp``, signed as
    gateway/links.py documents for a gateway whose link key is the HMAC auth ``secret``:
    valid, or (with a past ``exp``) expired."""
    key = hashlib.sha256(b"tus-gateway download link\0" + secret.encode()).digest()
    mac = hmac.new(key, f"{upload_id}\0{exp}".encode(), hashlib.sha256).digest()
    return f"exp={exp}&sig={_b64url(mac)}"


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
    # The gateway's --auth: "hmac" (tokens signed with ``secret``) or "bearer" (its
    # --auth-tokens: ``users`` maps each subject to its token, ``anonymous`` are tokens
    # naming nobody).
    auth_mode: str = "hmac"
    users: Mapping[str, str] = field(default_factory=dict)
    anonymous: tuple[str, ...] = ()
    admin_token: str | None = None  # one of the gateway's --auth-admin-tokens
    rng: random.Random = field(init=False)
    pool: list[Known] = field(default_factory=list)
    running: list[_Running] = field(default_factory=list)
    # Override values sent that are not methods at all (the metrics must not keep them).
    junk_overrides: set[str] = field(default_factory=set)
    # Download links (path and query) and list cursors (with the Authorization they were
    # given to) from the gateway's answers: replayed, by others too.
    links: list[bytes] = field(default_factory=list)
    cursors: list[tuple[str, tuple[bytes, bytes] | None]] = field(default_factory=list)
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

    # --- credentials ------------------------------------------------------------------------
    def token(self, **claims: object) -> str:
        """A token the gateway accepts: signed with these claims, or with ``--auth bearer``
        the token of the subject ``sub`` names (else one naming nobody)."""
        if self.auth_mode == "bearer":
            sub = claims.get("sub")
            if isinstance(sub, str) and sub in self.users:
                return self.users[sub]
            return self.anonymous[0]
        payload = {"exp": int(time.time()) + 3600, **claims}
        return signed_token(self.secret, payload)

    def _auth(self) -> tuple[bytes, bytes]:
        return (b"Authorization", b"Bearer " + self.token().encode())

    def _user(self) -> tuple[bytes, bytes]:
        """The token of a valid sequence: a subject of its own (with ``--auth bearer``, one
        of the configured ones in turn), as each user of a real deployment has, so that
        per-client quotas filled by the mutated requests (which share a subject-less
        token) do not refuse it."""
        self._users += 1
        if self.auth_mode == "bearer":
            names = sorted(self.users)
            token = self.users[names[self._users % len(names)]]
        else:
            token = self.token(sub=f"user-{self._users}")
        return (b"Authorization", b"Bearer " + token.encode())

    @property
    def fresh_users(self) -> bool:
        """Whether each valid sequence's user is new (so its list holds only its uploads)."""
        return self.auth_mode != "bearer"

    def _auth_for(self, known: Known | None) -> list[tuple[bytes, bytes]]:
        """The Authorization header of a request aimed at ``known``: mostly its creator's,
        so that mutations reach past the ownership check; now and then another user's
        (404), an admin's (allowed), none (401) or a token of its own."""
        rng = self.rng
        pick = rng.random()
        auth: tuple[bytes, bytes] | None = None
        if pick < 0.8:
            auth = known.auth if known is not None else None
        elif pick < 0.88 and self.pool:
            auth = rng.choice(self.pool).auth
        elif pick < 0.94 and self.admin_token:
            auth = (b"Authorization", b"Bearer " + self.admin_token.encode())
        elif pick < 0.97:
            return []
        return [auth or self._auth()]

    def _any_auth(self) -> tuple[bytes, bytes]:
        """For a request that names no upload: the shared token, a fresh user, or a
        hostile value."""
        pick = self.rng.random()
        if pick < 0.8:
            return self._auth()
        if pick < 0.9:
            return self._user()
        return (b"Authorization", self.rng.choice(self._authorizations()))

    # --- valid sequences --------------------------------------------------------------------
    def _new_sequence(self) -> Sequence:
        kind = self.rng.choice((self.tus_upload, self.tus_upload, self.tus_deferred,
                                self.tus_concat, self.ietf_upload, self.ietf_upload,
                                self.session_upload, self.session_upload))
        return kind()

    def _collection(self) -> bytes:
        """The collection's URL, now and then without its trailing slash (tus clients
        configured with ``/files`` send that)."""
        return self.base.rstrip("/").encode() if self.rng.random() < 0.2 else \
            self.base.encode()

    def _host(self) -> tuple[bytes, bytes]:
        return (b"Host", self.host.encode())

    def _content(self, size: int, kinds: tuple[str, ...] = ("text", "text", "png", "pdf")
                 ) -> tuple[bytes, str, str]:
        """A file of about ``size`` bytes that is what it claims (``ALLOWED_TYPES`` takes it
        at creation and the sniffer at the finish), its name and its type."""
        rng = self.rng
        kind = rng.choice(kinds) if size >= len(PDF_SIGNATURE) else "text"
        number = rng.randrange(10**6)
        if kind == "png":
            data = PNG_SIGNATURE + rng.randbytes(size - len(PNG_SIGNATURE))
            return data, f"fuzz-{number}.png", "image/png"
        if kind == "pdf":
            data = PDF_SIGNATURE + rng.randbytes(size - len(PDF_SIGNATURE))
            return data, f"fuzz-{number}.pdf", "application/pdf"
        return bytes(rng.choices(TEXT_BYTES, k=size)), f"fuzz-{number}.txt", "text/plain"

    def tus_upload(self) -> Sequence:
        """Create (sometimes with the first bytes), PATCH the rest in pieces (sometimes with
        a checksum), HEAD, GET: the bytes must come back exact."""
        rng = self.rng
        data, name, kind = self._content(rng.randint(0, 3 * MAX_BODY))
        user = self._user()
        first = b""
        headers = [self._host(), TUS, user, (b"Upload-Length", str(len(data)).encode()),
                   (b"Upload-Metadata", _metadata(name, kind))]
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
            patch = [self._host(), TUS, user, (b"Upload-Offset", str(offset).encode()),
                     (b"Content-Type", OCTETS)]
            if rng.random() < 0.3:
                algorithm = rng.choice(("md5", "sha1", "sha256", "sha512"))
                digest = hashlib.new(algorithm, piece).digest()
                patch.append((b"Upload-Checksum", algorithm.encode() + b" " + b64(digest)))
            answer = yield WireRequest(b"PATCH", url.encode(), patch, piece,
                                       chunked=rng.random() < 0.1,
                                       # Many small chunks: a piece each, thousands a body.
                                       chunk_size=rng.choice((None, None, 1, 7)),
                                       upload=upload_id,
                                       label="valid tus PATCH", expect=(204,))
            new = _offset(answer, "PATCH")
            if new != offset + len(piece):
                raise SequenceFailed(f"PATCH of {len(piece)} at {offset} answered {new}")
            offset = new
        yield from self._check_download(url, upload_id, data, user)

    def tus_deferred(self) -> Sequence:
        """Upload-Defer-Length, the length declared on the last PATCH."""
        rng = self.rng
        data, name, kind = self._content(rng.randint(1, 2 * MAX_BODY))
        user = self._user()
        answer = yield WireRequest(
            b"POST", self.base.encode(),
            [self._host(), TUS, user, (b"Upload-Defer-Length", b"1"),
             (b"Upload-Metadata", _metadata(name, kind))],
            label="valid tus deferred creation", expect=(201,))
        url = _path(answer)
        upload_id = url.rsplit("/", 1)[-1]
        cut = rng.randint(0, len(data) - 1)
        for start, end, last in ((0, cut, False), (cut, len(data), True)):
            headers = [self._host(), TUS, user, (b"Upload-Offset", str(start).encode()),
                       (b"Content-Type", OCTETS)]
            if last:
                headers.append((b"Upload-Length", str(len(data)).encode()))
            answer = yield WireRequest(b"PATCH", url.encode(), headers, data[start:end],
                                       upload=upload_id, label="valid tus deferred PATCH",
                                       expect=(204,))
            if _offset(answer, "PATCH") != end:
                raise SequenceFailed(f"deferred PATCH to {end} answered {answer.status_line!r}")
        yield from self._check_download(url, upload_id, data, user)

    def tus_concat(self) -> Sequence:
        """Two partial uploads and their final: the final's bytes are both, in order. All
        text, so that the final is text too."""
        rng = self.rng
        parts = [self._content(rng.randint(1, MAX_BODY), ("text",)) for _ in range(2)]
        user = self._user()  # the partials and their final are one user's
        urls = []
        for data, name, kind in parts:
            answer = yield WireRequest(
                b"POST", self.base.encode(),
                [self._host(), TUS, user, (b"Upload-Concat", b"partial"),
                 (b"Upload-Length", str(len(data)).encode()), (b"Content-Type", OCTETS),
                 (b"Upload-Metadata", _metadata(name, kind))],
                data, label="valid tus partial creation", expect=(201,))
            urls.append(_path(answer))
        answer = yield WireRequest(
            b"POST", self.base.encode(),
            [self._host(), TUS, user,
             (b"Upload-Concat", b"final;" + b" ".join(u.encode() for u in urls)),
             (b"Upload-Metadata", _metadata("joined.txt", "text/plain"))],
            label="valid tus final creation", expect=(201,))
        url = _path(answer)
        for partial, (data, _, _) in zip(urls, parts, strict=True):
            self._remember(Known(partial.rsplit("/", 1)[-1], len(data), len(data), True,
                                 auth=user))
        joined = b"".join(data for data, _, _ in parts)
        yield from self._check_download(url, url.rsplit("/", 1)[-1], joined, user,
                                        listed=False)

    def ietf_upload(self) -> Sequence:
        """The draft: creation (sometimes with content), appends, the last one completing."""
        rng = self.rng
        draft = rng.choice(DRAFT_VERSIONS)
        data, name, kind = self._content(rng.randint(1, 3 * MAX_BODY))
        user = self._user()
        version = (INTEROP, str(draft).encode())
        first = data[:rng.randint(0, min(len(data), MAX_BODY))]
        done = len(first) == len(data)
        # tus-js-client sends its Upload-Metadata in draft mode too.
        headers = [self._host(), version, user, _complete(draft, done),
                   (b"Upload-Metadata", _metadata(name, kind))]
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
            headers = [self._host(), version, user, (b"Upload-Offset", str(offset).encode()),
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
        answer = yield WireRequest(b"HEAD", url.encode(), [self._host(), version, user],
                                   upload=upload_id, label=f"valid draft {draft} HEAD",
                                   expect=(204,))
        if _offset(answer, "HEAD") != len(data):
            raise SequenceFailed(f"draft HEAD says {answer.header('upload-offset')}")
        yield from self._check_download(url, upload_id, data, user)

    def session_upload(self) -> Sequence:
        """The session API: create a session, stream the file (whole; in pieces from a
        stated Upload-Offset or Content-Range; or a first piece, then all of it again from
        byte 0), then everything a tus upload is checked for; or abort it halfway, after
        which it is gone."""
        rng = self.rng
        data, name, kind = self._content(rng.choice((0, rng.randint(1, 3 * MAX_BODY))))
        user = self._user()
        spec: dict[str, object] = {"filename": name, "fileSize": len(data)}
        if rng.random() < 0.7:
            spec["contentType"] = kind  # else the name's extension stands for the type
        answer = yield WireRequest(
            b"POST", b"/api/upload/create-session",
            [self._host(), user, (b"Content-Type", b"application/json")],
            json.dumps(spec).encode(), label="valid session creation", expect=(201,))
        created = _json(answer, "session creation")
        upload_id = created.get("upload_id")
        if not isinstance(upload_id, str) or not _is_id(upload_id) or \
                created.get("id") != upload_id or created.get("file_size") != len(data) or \
                created.get("stream_url") != f"/api/upload/stream/{upload_id}":
            raise SequenceFailed(f"session creation answered {created}")
        stream = f"/api/upload/stream/{upload_id}".encode()
        mode = rng.choice(("whole", "offset", "range", "again")) if len(data) > 1 else "whole"
        aborting = mode != "whole" and rng.random() < 0.15
        offset = 0
        while True:
            headers = [self._host(), user, (b"Content-Type", b"application/octet-stream")]
            if mode == "whole" or (mode == "again" and offset > 0):
                start, end = 0, len(data)
            else:
                start, end = offset, min(len(data), offset + rng.randint(1, MAX_BODY))
                if mode == "again":
                    end = min(end, len(data) - 1)  # the whole file follows
                if mode == "offset":
                    headers.append((b"Upload-Offset", str(start).encode()))
                elif mode == "range":
                    size = str(len(data)) if rng.random() < 0.7 else "*"
                    headers.append((b"Content-Range",
                                    f"bytes {start}-{end - 1}/{size}".encode()))
            answer = yield WireRequest(b"POST", stream, headers, data[start:end],
                                       upload=upload_id, chunked=rng.random() < 0.1,
                                       label=f"valid session stream ({mode})", expect=(200,))
            state = _json(answer, "session stream")
            done = end == len(data)
            if state.get("offset") != end or (state.get("status") == "completed") != done:
                raise SequenceFailed(f"a stream of bytes {start}-{end} of {len(data)} "
                                     f"answered {state}")
            offset = end
            if done:
                break
            if aborting:
                answer = yield WireRequest(
                    b"POST", f"/api/upload/abort/{upload_id}".encode(), [self._host(), user],
                    upload=upload_id, label="valid session abort", expect=(200,))
                answer = yield WireRequest(
                    b"GET", f"/api/upload/status/{upload_id}".encode(), [self._host(), user],
                    upload=upload_id, label="valid status after an abort", expect=(404,))
                self._remember(Known(upload_id, offset, len(data), auth=user))
                return
        if rng.random() < 0.5:
            yield from self._check_events(upload_id, user)
        yield from self._check_download(f"{self.base}{upload_id}", upload_id, data, user)

    def _check_download(self, url: str, upload_id: str, data: bytes,
                        user: tuple[bytes, bytes], *, listed: bool = True) -> Sequence:
        """HEAD and GET by the owner; now and then the signed download link the status
        hands out (without credentials) and the owner's list, page by page."""
        answer = yield WireRequest(b"HEAD", url.encode(), [self._host(), TUS, user],
                                   upload=upload_id, label="valid tus HEAD", expect=(200,))
        if _offset(answer, "HEAD") != len(data) or answer.header("upload-length") != \
                str(len(data)):
            raise SequenceFailed(f"HEAD after {len(data)} bytes: {answer.headers}")
        answer = yield WireRequest(b"GET", url.encode(), [self._host(), TUS, user],
                                   upload=upload_id, label="valid GET", expect=(200,))
        if answer.body != data:
            raise SequenceFailed(f"GET returned {len(answer.body)} bytes, not the "
                                 f"{len(data)} uploaded (or different ones)")
        if self.rng.random() < 0.3:
            yield from self._check_link(upload_id, data, user)
        if self.rng.random() < 0.25:
            yield from self._check_listing(upload_id, user, exact=listed and self.fresh_users)
        self._remember(Known(upload_id, len(data), len(data), auth=user))

    def _check_link(self, upload_id: str, data: bytes, user: tuple[bytes, bytes]) -> Sequence:
        answer = yield WireRequest(b"GET", f"/api/upload/status/{upload_id}".encode(),
                                   [self._host(), user], upload=upload_id,
                                   label="valid status", expect=(200,))
        links = _json(answer, "status").get("links")
        link = links.get("download") if isinstance(links, dict) else None
        if not isinstance(link, str):
            raise SequenceFailed(f"the status of a finished upload has no download link: "
                                 f"{links}")
        target = _target_of(link)
        self._keep(self.links, target.encode())
        answer = yield WireRequest(b"GET", target.encode(), [self._host()], upload=upload_id,
                                   label="valid signed download link", expect=(200,))
        if answer.body != data:
            raise SequenceFailed(f"the signed link returned {len(answer.body)} bytes, not the "
                                 f"{len(data)} uploaded (or different ones)")

    def _check_listing(self, upload_id: str, user: tuple[bytes, bytes], *,
                       exact: bool) -> Sequence:
        """The owner's list, a few uploads a page, to its end: the upload is on it once
        (with ``exact``, alone: the user has no other upload)."""
        limit = self.rng.randint(1, 3)
        seen: list[object] = []
        target = f"/api/uploads?limit={limit}"
        for _ in range(100):
            answer = yield WireRequest(b"GET", target.encode(), [self._host(), user],
                                       label="valid list page", expect=(200,))
            page = _json(answer, "list")
            items, following = page.get("uploads"), page.get("next")
            if not isinstance(items, list) or len(items) > limit:
                raise SequenceFailed(f"a page of at most {limit} answered {page}")
            seen += [item.get("id") if isinstance(item, dict) else item for item in items]
            if following is None:
                break
            if not isinstance(following, str):
                raise SequenceFailed(f"a list page's next is {following!r}")
            self._keep(self.cursors, (urllib.parse.quote(following), user))
            target = f"/api/uploads?limit={limit}&cursor={urllib.parse.quote(following)}"
        if seen.count(upload_id) != 1 or len(set(map(str, seen))) != len(seen) or \
                (exact and seen != [upload_id]):
            raise SequenceFailed(f"the owner's list of {upload_id} was {seen}")

    def _check_events(self, upload_id: str, user: tuple[bytes, bytes]) -> Sequence:
        """A finished upload's event stream, read whole: it ends (once the sink is done
        with the upload) with a final status whose id is ``end``; coming back with
        ``Last-Event-ID: end`` is answered 204."""
        path = f"/api/upload/events/{upload_id}".encode()
        answer = yield WireRequest(b"GET", path, [self._host(), user,
                                                  (b"Accept", b"text/event-stream")],
                                   upload=upload_id, stream=False, timeout_s=10.0,
                                   label="valid events of a finished upload", expect=(200,))
        events = _events(answer.body)
        if not events or events[0].get("event") != "status" or events[-1].get("id") != "end":
            raise SequenceFailed(f"the event stream of a finished upload was {answer.body!r}")
        yield WireRequest(b"GET", path, [self._host(), user, (b"Last-Event-ID", b"end")],
                          upload=upload_id, label="valid events after the end", expect=(204,))

    # --- bookkeeping ------------------------------------------------------------------------
    def _remember(self, known: Known) -> None:
        self.pool.append(known)
        if len(self.pool) > MAX_POOL:
            # A random one goes, so old uploads (finished, expired, deleted) stay targets too.
            del self.pool[self.rng.randrange(len(self.pool))]

    def _keep(self, kept: list[Any], item: Any) -> None:
        kept.append(item)
        if len(kept) > MAX_KEPT:
            del kept[self.rng.randrange(len(kept))]

    def _learn(self, request: WireRequest, answer: Answer) -> None:
        if answer.status is None:
            return
        auth = request.header(b"Authorization")
        owner = None if auth is None else (b"Authorization", auth)
        data = _json_or_none(answer)
        if data is not None:
            self._learn_json(data, owner)
        if request.method == b"POST" and answer.status == 201:
            location = answer.header("location")
            if location:
                upload_id = location.rsplit("/", 1)[-1]
                if _is_id(upload_id):
                    length = _int(request.header(b"Upload-Length"))
                    if data is not None and isinstance(data.get("file_size"), int):
                        length = data["file_size"]
                    self._remember(Known(upload_id, _int(answer.header("upload-offset")) or 0,
                                         length, auth=owner))
            return
        if request.upload is not None and answer.status < 500:
            offset = _int(answer.header("upload-offset"))
            if offset is None and data is not None and isinstance(data.get("offset"), int):
                offset = data["offset"]
            for known in self.pool:
                if known.upload_id == request.upload:
                    if offset is not None:
                        known.offset = offset
                    length = _int(answer.header("upload-length"))
                    if length is not None:
                        known.length = length
                    break

    def _learn_json(self, data: dict[str, Any], owner: tuple[bytes, bytes] | None) -> None:
        """Download links and list cursors an answer hands out."""
        links = data.get("links")
        if isinstance(links, dict) and isinstance(links.get("download"), str):
            self._keep(self.links, _target_of(links["download"]).encode())
        for item in data.get("uploads") or ():
            if isinstance(item, dict) and isinstance(item.get("links"), dict):
                self._learn_json(item, owner)
        if isinstance(data.get("next"), str):
            self._keep(self.cursors, (urllib.parse.quote(data["next"]), owner))

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
                self.t_draft_head, self.t_draft_delete, self.t_api, self.t_preflight,
                self.t_status, self.t_list, self.t_list, self.t_events, self.t_events,
                self.t_session, self.t_session, self.t_session, self.t_stream, self.t_stream,
                self.t_abort, self.t_link, self.t_link)

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

    def _type_metadata(self) -> bytes:
        """Upload-Metadata of a mutated creation: mostly a type ``ALLOWED_TYPES`` takes,
        else one refused at creation (415; 413 past the image limit) or one its bytes will
        not be (rejected at the finish)."""
        return self.rng.choice((
            b"filename " + b64(b"a.txt") + b",x", _metadata("a.txt", "text/plain"),
            _metadata("a.txt", "text/plain"), _metadata("a.png", "image/png"),
            _metadata("a.pdf", "application/pdf"), _metadata("clip.mp4", "video/mp4"),
            _metadata("a.txt", "text/plain; charset=utf-8"), _metadata("A.TXT", "TEXT/PLAIN"),
            _metadata("a.jpg", "image/jpg"), _metadata("a", "image/png"),
            _metadata("clip.exe", "video/mp4"), _metadata("a.zip", "application/zip"),
            _metadata("a.txt", "application/x-msdownload"), _metadata("a.txt", ""),
            _metadata("a.jpg", ""), _metadata("a.txt", "video/*"), _metadata("a.txt", "text"),
            _metadata("a.txt", "text/plain\x00"), _metadata("a.txt", "a/" + "b" * 2000),
            _metadata("a.txt.", "text/plain"), _metadata("a.t\u200bxt", "text/plain"),
            _metadata("a.svg", "image/svg+xml"), _metadata(".txt", "text/plain"),
            _metadata("a.exe\u202etxt.", "text/plain"), _metadata("a.TxT ", "text/plain"),
            b"filename " + b64(b"a.png") + b",type " + b64(b"image/png"),
            b"filename " + b64(b"a.png") + b",contentType " + b64(b"image/png")
            + b",filetype " + b64(b"video/mp4"),
            b"filetype " + b64(b"image/png"), b"filetype " + b64("image/p\u00f1g".encode()),
            b"filetype " + b64(b"\xff\xfe/\xff"), b"filetype", b"filetype ",
            b"filename " + b64(b"\xff.png") + b",filetype " + b64(b"image/png"),
            b"content_type " + b64(b"text/plain") + b",filename " + b64(b"a.pdf"),
        ))

    def t_create(self) -> WireRequest:
        length = self.rng.choice((0, 1, 10, 1000, 5000, 10**6, 600_000))
        return WireRequest(b"POST", self.base.encode(),
                           [self._host(), TUS, self._any_auth(),
                            (b"Upload-Length", str(length).encode()),
                            (b"Upload-Metadata", self._type_metadata())],
                           label="tus creation", expect=None)

    def t_create_body(self) -> WireRequest:
        rng = self.rng
        if rng.random() < 0.5:
            body, name, kind = self._content(rng.randint(1, MAX_BODY))
            meta = _metadata(name, kind)
        else:
            body, meta = rng.randbytes(rng.randint(1, MAX_BODY)), self._type_metadata()
        length = len(body) + rng.choice((0, 0, 1, 100))
        return WireRequest(b"POST", self.base.encode(),
                           [self._host(), TUS, self._any_auth(),
                            (b"Upload-Length", str(length).encode()), (b"Content-Type", OCTETS),
                            (b"Upload-Metadata", meta)],
                           body, label="tus creation-with-upload")

    def t_create_defer(self) -> WireRequest:
        return WireRequest(b"POST", self.base.encode(),
                           [self._host(), TUS, self._any_auth(), (b"Upload-Defer-Length", b"1"),
                            (b"Upload-Metadata", self._type_metadata())],
                           label="tus deferred creation")

    def t_concat(self) -> WireRequest:
        rng = self.rng
        if rng.random() < 0.4 or not self.pool:
            return WireRequest(b"POST", self.base.encode(),
                               [self._host(), TUS, self._any_auth(),
                                (b"Upload-Concat", b"partial"), (b"Upload-Length", b"5"),
                                (b"Upload-Metadata", self._type_metadata())],
                               label="tus partial creation")
        named = [rng.choice(self.pool) for _ in range(rng.randint(1, 3))]
        value = b"final;" + b" ".join(self._upload_path(k) for k in named)
        return WireRequest(b"POST", self.base.encode(),
                           [self._host(), TUS, *self._auth_for(named[0]),
                            (b"Upload-Concat", value),
                            (b"Upload-Metadata", self._type_metadata())],
                           label="tus final creation")

    def t_patch(self) -> WireRequest:
        known = self._target()
        body = self._body_for(known)
        headers = [self._host(), TUS, *self._auth_for(known),
                   (b"Upload-Offset", str(known.offset if known else 0).encode()),
                   (b"Content-Type", OCTETS)]
        if known is not None and known.length is None and self.rng.random() < 0.5:
            headers.append((b"Upload-Length", str(known.offset + len(body)).encode()))
        return WireRequest(b"PATCH", self._upload_path(known), headers, body,
                           upload=known.upload_id if known else None, label="tus PATCH")

    def t_head(self) -> WireRequest:
        known = self._target()
        return WireRequest(b"HEAD", self._upload_path(known),
                           [self._host(), TUS, *self._auth_for(known)],
                           upload=known.upload_id if known else None, label="tus HEAD")

    def t_delete(self) -> WireRequest:
        known = self._target()
        return WireRequest(b"DELETE", self._upload_path(known),
                           [self._host(), TUS, *self._auth_for(known)],
                           upload=known.upload_id if known else None, label="tus DELETE")

    def t_get(self) -> WireRequest:
        known = self._target()
        return WireRequest(b"GET", self._upload_path(known),
                           [self._host(), TUS, *self._auth_for(known)],
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
        headers = [self._host(), version, self._any_auth(), _complete(draft, rng.random() < 0.5)]
        if rng.random() < 0.3:
            headers.append((b"Upload-Length", str(len(body) + rng.choice((0, 10))).encode()))
        pick = rng.random()
        if pick < 0.3:
            headers.append((b"Content-Disposition", b'attachment; filename="f.txt"'))
        elif pick < 0.5:
            headers.append((b"Content-Type", rng.choice((b"text/plain", b"image/png",
                                                         b"application/x-msdownload"))))
        elif pick < 0.8:
            headers.append((b"Upload-Metadata", self._type_metadata()))
        return WireRequest(b"POST", self.base.encode(), headers, body,
                           label=f"draft {draft} creation")

    def t_draft_append(self) -> WireRequest:
        draft, version = self._draft()
        known = self._target()
        body = self._body_for(known)
        headers = [self._host(), version, *self._auth_for(known),
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
        return WireRequest(b"HEAD", self._upload_path(known),
                           [self._host(), version, *self._auth_for(known)],
                           upload=known.upload_id if known else None,
                           label=f"draft {draft} HEAD")

    def t_draft_delete(self) -> WireRequest:
        draft, version = self._draft()
        known = self._target()
        return WireRequest(b"DELETE", self._upload_path(known),
                           [self._host(), version, *self._auth_for(known)],
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
        return WireRequest(method, target, [self._host(), *self._auth_for(known)],
                           label=f"{method.decode()} API")

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

    # --- the user API -----------------------------------------------------------------------
    def _aimed(self, method: bytes, route: str, label: str) -> WireRequest:
        """A request to ``route`` + an upload id (mostly a known one), with credentials."""
        known = self._target()
        upload_id = known.upload_id if known else self.rng.randbytes(16).hex()
        return WireRequest(method, f"{route}{upload_id}".encode(),
                           [self._host(), *self._auth_for(known)],
                           upload=known.upload_id if known else None, label=label)

    def t_status(self) -> WireRequest:
        return self._aimed(b"GET", "/api/upload/status/", "status")

    def t_abort(self) -> WireRequest:
        return self._aimed(b"POST", "/api/upload/abort/", "session abort")

    def t_events(self) -> WireRequest:
        rng = self.rng
        request = self._aimed(b"GET", "/api/upload/events/", "events")
        if rng.random() < 0.5:
            request.headers.append((b"Accept", b"text/event-stream"))
        if rng.random() < 0.4:
            request.headers.append((b"Last-Event-ID", rng.choice(self._specific(
                "Last-Event-ID", request))))
        request.timeout_s = 5.0
        return request

    def t_stream(self) -> WireRequest:
        rng = self.rng
        request = self._aimed(b"POST", "/api/upload/stream/", "session stream")
        known = next((k for k in self.pool if k.upload_id == request.upload), None)
        request.body = self._body_for(known)
        pick = rng.random()
        if pick < 0.35:
            request.headers.append((b"Upload-Offset", rng.choice(self._specific(
                "Upload-Offset", request))))
        elif pick < 0.7:
            request.headers.append((b"Content-Range", rng.choice(self._specific(
                "Content-Range", request))))
        return request

    def t_session(self) -> WireRequest:
        body, what = self._session_body()
        content_type = self.rng.choice((b"application/json", b"application/json",
                                        b"application/json; charset=utf-8", b"text/plain"))
        return WireRequest(b"POST", b"/api/upload/create-session",
                           [self._host(), self._any_auth(), (b"Content-Type", content_type)],
                           body, label=f"session creation ({what})")

    def _session_body(self) -> tuple[bytes, str]:
        """A create-session body: valid, a field made hostile, or a body that is no JSON
        object of the kind (nested deep, too large, not UTF-8, not an object)."""
        rng = self.rng
        name, kind = rng.choice((("a.txt", "text/plain"), ("a.png", "image/png"),
                                 ("b.pdf", "application/pdf"), ("c.mp4", "video/mp4")))
        size = rng.choice((0, 1, 10, 1000, 600_000, 30 * 2**20, 2**40))
        spec: dict[str, object] = {"filename": name, "fileSize": size, "contentType": kind}
        pick = rng.random()
        if pick < 0.35:
            if rng.random() < 0.3:
                del spec["contentType"]
            return json.dumps(spec).encode(), "valid"
        if pick < 0.8:
            field_name = rng.choice(("filename", "fileSize", "contentType"))
            value = rng.choice(SESSION_FIELDS[field_name])
            if value is _ABSENT:
                del spec[field_name]
            else:
                spec[field_name] = value
            extra = rng.random() < 0.1
            if extra:
                spec[rng.choice(("x", "upload_id", "__proto__", ""))] = rng.choice((1, None, "x"))
            return json.dumps(spec).encode(), f"{field_name} {str(value)[:40]!r}"
        raw = rng.choice(SESSION_BODIES)
        return raw, f"body {raw[:40]!r} ({len(raw)} bytes)"

    def t_list(self) -> WireRequest:
        rng = self.rng
        auth: tuple[bytes, bytes] | None = None
        cursor = None
        if self.cursors and rng.random() < 0.4:
            cursor, auth = rng.choice(self.cursors)
        if auth is None or rng.random() < 0.2:
            auth = rng.choice([k.auth for k in self.pool if k.auth] or [self._auth()])
        params = []
        if rng.random() < 0.6:
            params.append("limit=" + rng.choice(LIMITS))
        if cursor is not None or rng.random() < 0.5:
            params.append("cursor=" + (cursor if cursor is not None and rng.random() < 0.6
                                       else rng.choice(self._cursors())))
        if rng.random() < 0.1:
            params.append(rng.choice(("limit=1", "cursor=", "x=1", "limit", "&", "cursor")))
        rng.shuffle(params)
        target = "/api/uploads" + ("?" + "&".join(params) if params else rng.choice(("", "?")))
        return WireRequest(b"GET", target.encode(), [self._host(), auth], label="list")

    def _cursors(self) -> tuple[str, ...]:
        """Cursors of the list the gateway never gave out: well-formed ones pointing at odd
        places, and ones that are no cursor at all (all percent-encoded for the query)."""
        known = self._target()
        real = known.upload_id if known else self.rng.randbytes(16).hex()
        quoted = f'"{real}"'
        shapes = (
            f"[1.5, {quoted}]", f"[1e308, {quoted}]", f"[-1e308, {quoted}]",
            f"[5e-324, {quoted}]", f"[0, {quoted}]", f"[-0.0, {quoted}]", f"[NaN, {quoted}]",
            f"[Infinity, {quoted}]", f"[-Infinity, {quoted}]", f"[1e400, {quoted}]",
            f"[true, {quoted}]", f"[null, {quoted}]", f'["1", {quoted}]', "[1, 5]",
            '[1, "zz"]', "[1]", "[]", f"[1, {quoted}, 3]", '{"a": 1, "b": 2}', '"ab"',
            f"[[1], {quoted}]", "[" * 60 + "]" * 60, "1", "null", f"[{10**100}, {quoted}]",
            f"[{2**53 + 1}, {quoted}]", f'[1, "{real.upper()}"]', f'[1, "../{real[3:]}"]',
            f'[1, "{real}\\u0000"]', f"[{time.time()}, {quoted}]", f"[{2**63}, {quoted}]",
        )
        encoded = [_b64url(shape.encode()) for shape in shapes]
        encoded += [base64.urlsafe_b64encode(shape.encode()).decode() for shape in shapes[:4]]
        garbage = ["", "!!!", "a", "a" * 201, "%ff", "%C3%A9", "AAAA", "++//", "=",
                   _b64url(b"\xff\xfe[1, 2]"), _b64url(b'[1, "\xe9"]'),
                   base64.b64encode(b"[1.5, " + quoted.encode() + b"]").decode() + "/+",
                   "%00", "\u00e9"]
        return tuple(urllib.parse.quote(text, safe="") for text in (*encoded, *garbage))

    def t_link(self) -> WireRequest:
        """A download link: one the gateway handed out, or one made here with the link key
        (valid, expired, another upload's, far off), tampered, oversized or half there."""
        rng = self.rng
        known = self._target()
        upload = known.upload_id if known else None
        if self.links and rng.random() < 0.3:
            target = rng.choice(self.links)
            upload = None
        else:
            upload_id = known.upload_id if known else rng.randbytes(16).hex()
            now = int(time.time())
            valid = link_query(self.secret, upload_id, now + 600)
            exp, sig = (part.split("=", 1)[1] for part in valid.split("&"))
            flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
            query = rng.choice((
                valid, valid, link_query(self.secret, upload_id, now - 10),
                link_query(self.secret, rng.randbytes(16).hex(), now + 600),
                link_query(self.secret, upload_id, 999_999_999_999),
                link_query(self.secret, upload_id, 0), f"exp={exp}&sig={flipped}",
                f"exp={int(exp) + 1}&sig={sig}", f"exp={exp}&sig={sig}=",
                f"exp={exp}&sig={sig}{'A' * 30}", f"exp={exp}&sig={'A' * 5000}",
                f"exp={'9' * 13}&sig={sig}", f"exp=+{exp}&sig={sig}", f"exp=-1&sig={sig}",
                f"exp=%20{exp}&sig={sig}", f"exp=%D9%A1&sig={sig}", f"exp={exp}.0&sig={sig}",
                f"exp={exp}", f"sig={sig}", "exp=&sig=", "exp&sig", f"exp=0{exp}&sig={sig}",
                f"exp={exp}&exp={exp}&sig={sig}", f"exp={exp}&sig={sig}&sig=x",
                f"exp={exp}&sig=%ff%fe", f"exp={exp}&sig=%C3%A9{sig[2:]}",
                f"exp={exp}&sig={sig.upper()}", f"exp={exp}&sig={sig}%00",
                f"exp={'1' * 5000}&sig={sig}",
            ))
            target = f"{self.base}{upload_id}?{query}".encode()
        headers = [self._host()]
        pick = rng.random()
        if pick < 0.15:
            headers += self._auth_for(known)
        elif pick < 0.25:
            headers.append(TUS)
        method = rng.choice((b"GET",) * 8 + (b"HEAD", b"PATCH", b"DELETE", b"POST"))
        return WireRequest(method, target, headers, upload=upload, label="download link")

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
            "/api/uploads", "/api/uploads/", "/api/uploads?limit=1", "/api/uploads?limit=0",
            f"/api/upload/events/{real}", f"/api/upload/events/{made_up}",
            "/api/upload/events/", "/api/upload/events/%2e%2e", f"/api/upload/events/{real}/x",
            "/api/upload/create-session", "/api/upload/create-session/",
            f"/api/upload/create-session?id={real}", f"/api/upload/stream/{real}",
            f"/api/upload/stream/{real.upper()}", f"/api/upload/stream/{real}%00",
            f"/api/upload/abort/{real}", f"/api/upload/abort/{made_up}",
            f"{base}/{real}?exp=1&sig=x", f"{base}/{real}?exp=&sig=",
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
                    PARTIAL + b"; x=\"y\"", b"application/json", b"image/png",
                    b"application/json; charset=utf-16")
        if name == "Last-Event-ID":
            return (b"end", b"end", b"END", b"", b"0", b"1", b"-1", b"end ", b"end\x00",
                    b"x" * 300, "\u00e9nd".encode(), b"\xff", b"end, end", b"null")
        if name == "Content-Range":
            return self._content_ranges(request, known)
        if name in ("Upload-Complete", "Upload-Incomplete"):
            return (b"?1", b"?0", b"?2", b"1", b"true", b"?1;a=1", b"?1, ?0", b"", b"?",
                    b"?1;", b"?0 ;b", b"??1")
        if name == "X-Interim-Responses":
            return (b"none", b"None", b"all", b"", b"none, none", b"\xff", b"none;x")
        if name == "Upload-Draft-Interop-Version":
            return (*(str(v).encode() for v in DRAFT_VERSIONS), b"2", b"10", b"0", b"-1",
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

    def _content_ranges(self, request: WireRequest, known: Known | None) -> tuple[bytes, ...]:
        """Content-Range values for a stream of ``request.body`` to ``known``: right, off
        by one, inconsistent with the upload's size, malformed, huge."""
        start = known.offset if known else 0
        last = start + len(request.body) - 1
        size = str(known.length) if known and known.length is not None else "*"
        ranges = (
            f"bytes {start}-{last}/{size}", f"bytes {start}-{last}/{size}",
            f"bytes {start}-*/{size}", f"bytes {start}-{last}/*", f"bytes 0-{last}/{size}",
            f"bytes {start + 1}-{last + 1}/{size}", f"bytes {max(0, start - 1)}-{last}/{size}",
            f"bytes {start}-{last}/{int(size) + 1 if size != '*' else 0}",
            f"bytes */{size}", "bytes 5-3/10", "bytes 0-9/5", "bytes -1-5/10", "bytes 0-5",
            "bytes=0-5/10", "bytes 0-5/10, bytes 6-9/10", "items 0-1/2", "", "bytes",
            f"bytes {'9' * 19}-{'9' * 19}/{'9' * 19}", f"bytes {'9' * 20}-1/2",
            f"bytes {start}-{'9' * 19}/*", "bytes \u0661-\u0662/\u0663", "BYTES 0-1/2",
            f"bytes  {start}-{last}/{size}", f" bytes {start}-{last}/{size} ", "bytes 0x0-1/2",
            "bytes +0-1/2", "bytes 0-1/2/3", "bytes 1_0-2/3",
        )
        return tuple(text.encode() for text in ranges)

    def _authorizations(self) -> tuple[bytes, ...]:
        rng = self.rng
        secret = self.secret
        now = int(time.time())

        def bearer(token: str) -> bytes:
            return b"Bearer " + token.encode()

        claims = tuple(bearer(signed_token(secret, rng.choice(HOSTILE_CLAIMS)))
                       for _ in range(6))
        others = tuple(k.auth[1] for k in rng.sample(self.pool, min(2, len(self.pool)))
                       if k.auth is not None)
        admin = self.admin_token or "no-admin"
        privileged = (bearer(admin), bearer(admin + "x"), bearer(admin[:-1]),
                      bearer(admin.upper()), bearer(f"{admin} {admin}"),
                      b"Bearer " + admin.encode() + b"\xff",
                      bearer(self.token(admin=True)), bearer(self.token(sub="fuzz", admin=True)),
                      bearer(self.token(sub="fuzz", db="0123456789abcdef0123456789abcdef")),
                      bearer(self.token(sub="fuzz", quota_bytes=0, quota_uploads=0)),
                      bearer(self.token(sub="fuzz-q", quota_bytes=10, quota_uploads=1)))
        if self.auth_mode == "bearer":
            name = rng.choice(sorted(self.users))
            good = rng.choice((*self.users.values(), *self.anonymous))
            return (
                bearer(good), bearer(good), bearer(self.users[name]), bearer(good + "x"),
                bearer(good[:-1]), bearer(good.upper()), bearer(f"{name}={self.users[name]}"),
                bearer(name), bearer(f"={good}"), bearer(f"{good} {good}"), bearer(" " + good),
                b"bearer " + good.encode(), b"BEARER " + good.encode(), bearer(good + "\u00e9"),
                b"Bearer " + good.encode() + b"\xff", bearer("="), bearer("=="),
                bearer(good.split("=", 1)[-1]), bearer(good.rstrip("=")), b"Bearer",
                b"Basic " + b64(f"{name}:{good}".encode()), b"", b"Bearer " + b"a" * 4000,
                bearer(signed_token(secret, b'{"exp": 99999999999, "sub": "' + name.encode()
                                    + b'"}')),
                *privileged, *others,
            )
        return (
            *claims, *privileged, *others,
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


def _is_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _metadata(name: str, kind: str) -> bytes:
    """Upload-Metadata naming the file and its type (an empty type: the key alone)."""
    meta = b"filename " + b64(name.encode("utf-8", "surrogatepass"))
    return meta + (b",filetype " + b64(kind.encode("utf-8", "surrogatepass")) if kind
                   else b",filetype")


def _target_of(url: str) -> str:
    """The path and query of an absolute URL (or of a path)."""
    if "://" in url:
        return "/" + url.split("://", 1)[1].split("/", 1)[1]
    return url


def _json_or_none(answer: Answer) -> dict[str, Any] | None:
    if not (answer.header("content-type") or "").startswith("application/json"):
        return None
    try:
        data = json.loads(answer.body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _json(answer: Answer, what: str) -> dict[str, Any]:
    data = _json_or_none(answer)
    if data is None:
        raise SequenceFailed(f"{what} answered no JSON object: {answer.describe(300)}")
    return data


def _events(body: bytes) -> list[dict[str, str]]:
    """The server-sent events in ``body``: each as its fields (``data`` lines joined)."""
    events = []
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    for block in text.split("\n\n"):
        event: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[name] = event[name] + "\n" + value if name == "data" and name in event \
                else value
        if event:
            events.append(event)
    return events


# Values of one create-session field; ``_ABSENT``: the field left out.
_ABSENT = object()
SESSION_FIELDS: dict[str, tuple[object, ...]] = {
    "filename": (_ABSENT, None, 5, True, "", " ", "a" * 201, "a" * 196 + ".txt",
                 "\u65e5\u672c" * 40 + ".txt", "../../etc/passwd.txt", "a\x00b.txt",
                 "a\nb.txt", "\ud800.txt", "con.txt", ".txt", "a.exe", "a.txt.",
                 "\u202eexe.txt", ["a.txt"], {"name": "a.txt"}, "a.png", "a.TXT",
                 "\\\\server\\share\\a.txt", "a" * 5000),
    "fileSize": (_ABSENT, -1, 1.5, 1000.0, True, False, None, "10", 2**63, 2**63 - 1,
                 10**30, [1], {"n": 1}, float("inf"), float("nan"), -0, 10**4000),
    "contentType": (None, 5, "", "text", "text/plain; charset=utf-8", "TEXT/PLAIN",
                    "image/*", "application/x-msdownload", "video/mp4", "a/" + "b" * 2000,
                    "text/plain\r\n", "\u00e9/x", ["text/plain"], True, "image/jpg",
                    "application/octet-stream", "text/plain; charset=\"\u00e9\""),
}
_GOOD_SESSION = b'{"filename": "a.txt", "fileSize": 10, "contentType": "text/plain"}'
# Bodies that are no create-session object (or only just are).
SESSION_BODIES: tuple[bytes, ...] = (
    b"", b"null", b"[]", b'"x"', b"1", b"{", b"}", b"{}", _GOOD_SESSION[:-1], b"\xff\xfe{}",
    b'{"filename": "\xff\xfe.txt", "fileSize": 10}', _GOOD_SESSION.decode().encode("utf-16"),
    b"\xef\xbb\xbf" + _GOOD_SESSION, _GOOD_SESSION + b"garbage", _GOOD_SESSION * 2,
    b'{"filename": "a.txt", "fileSize": 10, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"[" * 8000 + b"]" * 8000, b"{" * 16000,
    b'{"filename": "a.txt", "fileSize": 10, "pad": "' + b"a" * 20_000 + b'"}',
    _GOOD_SESSION[:-1] + b', "pad": "' + b"a" * (16 * 1024 - len(_GOOD_SESSION) - 11) + b'"}',
    _GOOD_SESSION[:-1] + b', "pad": "' + b"a" * (16 * 1024 - len(_GOOD_SESSION) - 10) + b'"}',
    b'{"filename": "a.txt", "fileSize": 10, "fileSize": -1}',
    b'{"filename": "a.txt", "fileSize": ' + b"9" * 5000 + b"}",
    b'{"filename": "a.txt", "fileSize": 1e400}', b'{"filename": "a.txt", "fileSize": NaN}',
    b'{"filename": "a\\ud800.txt", "fileSize": 10}', b'{"filename": "a.txt", "fileSize": 0x10}',
    b"{'filename': 'a.txt', 'fileSize': 10}", b'{"filename": "a.txt", "fileSize": 10,}',
    b'{"filename": "a.txt",\x00 "fileSize": 10}',
)
# Values of /api/uploads?limit= (percent-encoded where they need it).
LIMITS = ("", "1", "20", "100", "0", "101", "-1", "1.5", "abc", "%D9%A1", "1e2", "01",
          "999999", "9999999", "%2B5", "%205", "%00", "5%00", "1" * 25, "100%20", "0x10")
HOSTILE_CLAIMS = hostile_claims()
