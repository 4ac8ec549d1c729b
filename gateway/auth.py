"""Who is asking: a subject on every request, and who may act on an upload.

Theory of operation:

- Without ``--auth`` nobody is identified: anyone who can reach the gateway may create
  uploads, and an upload URL is the capability to continue, download or delete it (its id is
  128 random bits that only the creator learns from ``Location``).
- With ``--auth bearer``, ``hmac`` or ``forward`` every request except a CORS preflight (it
  never carries credentials) must name a *subject*, and an upload answers only its creator:
  HEAD, PATCH, DELETE, GET, the status, events and retry endpoints, the IETF draft and a
  final concatenation's partials all answer 404 to anyone else (``check_owner``), exactly as
  for an id that never existed, so an id reveals nothing. An admin token acts on every
  upload. A removed upload's tombstone names no owner, so with auth on it answers 404 to
  everybody instead of 410. A browser download needs no header: the status endpoint hands
  its owner an expiring signed link (``gateway.links``).
- The subject is what an upload is owned and counted under (``Principal.identity``):
  ``sub:<name>`` for a named user, ``token:<token>`` for a bearer token that names nobody (one
  token, one anonymous subject), ``admin:<token>`` for an admin token. Only a hash of it
  is stored (``gateway.clients``), and the user's name in clear (``UploadInfo.subject``) so
  that a sink can route by it.
- ``--auth bearer``: ``Authorization: Bearer <token>`` must equal one of ``--auth-tokens``,
  each ``subject=TOKEN`` or a bare ``TOKEN`` (written ``=TOKEN`` when the token itself holds
  an ``=``). Each candidate is compared in constant time, all of them every time, so timing
  reveals neither a token nor which one matched.
- ``--auth hmac``: an upload token is ``base64url(payload) "." base64url(HMAC-SHA256(secret,
  first part))`` (no padding), the payload a JSON object ``{"exp": <unix seconds>, "sub":
  <optional subject>, "max_size": <optional bytes>, "db": <optional user database>,
  "quota_bytes", "quota_uploads": <optional limits>, "admin": <optional bool>}``. The
  application that knows the secret mints one per user (``tus-gateway token``, or
  ``mint_token`` here); the gateway needs no database of tokens. The signature is checked
  before anything in the payload is believed; ``exp`` is compared with the gateway's clock,
  without leeway. ``max_size`` limits each upload the token creates (a deferred length
  cannot be held to it, so it is refused; a final concatenation is held to the sum of its
  partials).
- ``--auth forward``: the operator's endpoint decides (``gateway.forward_auth``), from the
  request's Authorization and Cookie headers, and its JSON answer names the subject and
  the same optional settings as the token claims.
- Errors (see protocol/errors.py): no credentials at all is ``401 ERR_AUTH_REQUIRED``
  with ``WWW-Authenticate: Bearer realm="tus-gateway"`` (RFC 6750 section 3); credentials
  that are not accepted (unknown, malformed, signature wrong) are ``403 ERR_AUTH_INVALID``;
  a correctly signed token past its ``exp`` is ``401 ERR_AUTH_EXPIRED`` with
  ``error="invalid_token"``, because 401 tells a client that fresh credentials will work.
- Token values are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.keys import CONFIG, FORWARD_AUTH, PRINCIPAL
from protocol import errors
from protocol.headers import Concat, ConcatFinal, Headers
from protocol.model import UploadInfo

if TYPE_CHECKING:
    from gateway.uploads import Uploads

log = logging.getLogger(__name__)

# A subject is a user's name as the operator's systems know it: printable, no separators
# that could be confused in logs or keys, and short.
SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+:-]{0,127}")
# A user database id (a Notion id: 32 hex digits, dashes allowed). Checked again by the sink.
DATABASE = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


@dataclass(frozen=True, slots=True)
class UserSettings:
    """What a user's credentials may say about the user: limits and where files go. None:
    the gateway's defaults."""

    max_size: int | None = None
    quota_bytes: int | None = None
    quota_uploads: int | None = None
    database: str | None = None


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified upload token says."""

    exp: int
    sub: str | None = None
    max_size: int | None = None
    user: UserSettings = field(default_factory=UserSettings)
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from.

    ``identity`` is what uploads are owned and counted under (``gateway.clients`` hashes it):
    ``sub:<name>``, ``token:<token>`` for a token naming nobody, ``admin:<n>``; None without
    auth (the client is then its address). ``subject`` is the user's name, None when
    anonymous."""

    identity: str | None = None
    subject: str | None = None
    admin: bool = False
    user: UserSettings = field(default_factory=UserSettings)

    @property
    def max_size(self) -> int | None:
        return self.user.max_size


ANONYMOUS = Principal()


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signed_part: str) -> str:
    digest = hmac.new(secret.encode(), signed_part.encode("ascii"), hashlib.sha256).digest()
    return _b64encode(digest)


def mint_token(secret: str, ttl_s: float, *, now: float, sub: str | None = None,
               max_size: int | None = None, db: str | None = None,
               quota_bytes: int | None = None, quota_uploads: int | None = None,
               admin: bool = False) -> str:
    """An upload token valid for ``ttl_s`` from ``now`` (a negative ttl makes an expired one)."""
    payload: dict[str, object] = {"exp": int(now + ttl_s)}
    for name, value in (("sub", sub), ("max_size", max_size), ("db", db),
                        ("quota_bytes", quota_bytes), ("quota_uploads", quota_uploads)):
        if value is not None:
            payload[name] = value
    if admin:
        payload["admin"] = True
    body = _b64encode(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_sign(secret, body)}"


def verify_token(secret: str, token: str, *, now: float) -> Claims:
    """The token's claims; ``AuthInvalid`` unless signed with ``secret``, ``AuthExpired``
    once ``exp`` has passed."""
    body, sep, signature = token.partition(".")
    # Both parts are base64url. Bytes beyond that (aiohttp hands them over as surrogates)
    # could not even be encoded for the comparison below.
    if not sep or not body or not signature or not token.isascii():
        raise errors.AuthInvalid("the token is malformed")
    # Both sides as bytes: compare_digest refuses non-ASCII text instead of answering False.
    if not hmac.compare_digest(signature.encode(), _sign(secret, body).encode()):
        raise errors.AuthInvalid("the token's signature is wrong")
    try:
        payload = json.loads(_b64decode(body))
    except (binascii.Error, ValueError, RecursionError) as exc:
        # RecursionError: arrays or objects nested deeper than the JSON parser recurses.
        raise errors.AuthInvalid("the token's payload is malformed") from exc
    if not isinstance(payload, dict):
        raise errors.AuthInvalid("the token's payload is malformed")
    exp = payload.get("exp")
    if not _is_int(exp):
        raise errors.AuthInvalid("the token's payload is malformed")
    try:
        sub, admin, user = user_claims(payload)
    except ValueError as exc:
        raise errors.AuthInvalid(f"the token's payload is malformed: {exc}") from None
    if exp <= now:
        raise errors.AuthExpired()
    return Claims(exp=exp, sub=sub, max_size=user.max_size, user=user, admin=admin)


def user_claims(payload: dict[str, Any]) -> tuple[str | None, bool, UserSettings]:
    """The subject, admin flag and user settings of a token payload or a forward-auth
    answer; ``ValueError`` naming the first field that is not what it must be."""
    sub = payload.get("sub")
    if sub is not None and not (isinstance(sub, str) and SUBJECT.fullmatch(sub)):
        raise ValueError("sub must be a name of up to 128 letters, digits and ._@+:-")
    admin = payload.get("admin", False)
    if not isinstance(admin, bool):
        raise ValueError("admin must be true or false")
    limits: dict[str, int | None] = {}
    for name in ("max_size", "quota_bytes", "quota_uploads"):
        value = payload.get(name)
        if value is not None and not (_is_int(value) and 0 <= value < 2**63):
            raise ValueError(f"{name} must be a non-negative integer")
        limits[name] = value
    db = payload.get("db")
    if db is not None and not (isinstance(db, str) and DATABASE.fullmatch(db)):
        raise ValueError("db must be a database id (32 hex digits)")
    return sub, admin, UserSettings(database=db, **limits)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no number


def bearer_token(headers: Headers) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None without bearer credentials."""
    value = headers.one("Authorization", errors.AuthInvalid)
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def parse_tokens(entries: tuple[str, ...]) -> tuple[tuple[str | None, str], ...]:
    """``--auth-tokens`` entries as (subject, token): ``alice=TOKEN`` names a user, a bare
    ``TOKEN`` (``=TOKEN`` when it holds an ``=``) names nobody."""
    parsed: list[tuple[str | None, str]] = []
    for entry in entries:
        name, sep, token = entry.partition("=")
        if not sep:
            parsed.append((None, entry))
        elif not name:
            parsed.append((None, token))
        elif SUBJECT.fullmatch(name) and token.strip("="):
            parsed.append((name, token))
        else:
            # Base64 padding ("c29tZQ=="), not a subject: read as one, the user's token
            # would be the padding's rest, "=", which anyone can guess.
            parsed.append((None, entry))
    return tuple(parsed)


def match_token(accepted: tuple[tuple[str | None, str], ...], token: str) -> int | None:
    """The index of the entry whose token equals ``token``, comparing with every entry in
    constant time; None if none does."""
    # Header values arrive decoded with surrogateescape: this gives back the bytes sent
    # (a plain encode() fails on any byte that is not UTF-8).
    candidate = token.encode("utf-8", "surrogateescape")
    found: int | None = None
    for i, (_, good) in enumerate(accepted):
        if hmac.compare_digest(candidate, good.encode()) and found is None:
            found = i
    return found


def check_bearer(accepted: tuple[str, ...], token: str) -> None:
    if match_token(tuple((None, t) for t in accepted), token) is None:
        raise errors.AuthInvalid()


def authorize(config: GatewayConfig, headers: Headers, *, now: float) -> Principal:
    """The principal of a request in the modes that need no I/O (none, bearer, hmac);
    ``--auth forward`` is asked in ``principal_of``. Raises the auth errors above."""
    mode = config.auth.mode
    if mode == "none":
        return ANONYMOUS
    token = bearer_token(headers)
    if token is not None and config.auth.admin_tokens:
        admin = match_token(tuple((None, t) for t in config.auth.admin_tokens), token)
        if admin is not None:
            return Principal("admin:" + token, None, admin=True)
    if token is None:
        raise errors.AuthRequired()
    if mode == "bearer":
        accepted = parse_tokens(config.auth.tokens)
        index = match_token(accepted, token)
        if index is None:
            raise errors.AuthInvalid()
        subject = accepted[index][0]
        if subject is None:
            return Principal("token:" + token)
        return Principal("sub:" + subject, subject)
    claims = verify_token(config.auth.secret, token, now=now)
    log.debug("request authorized", extra={"sub": claims.sub})
    if claims.sub is None:
        return Principal("token:" + token, None, claims.admin, claims.user)
    return Principal("sub:" + claims.sub, claims.sub, claims.admin, claims.user)


async def principal_of(request: web.Request, headers: Headers, *, now: float) -> Principal:
    """Who the request comes from (checked once per request, then remembered on it)."""
    known: Principal | None = request.get(PRINCIPAL)
    if known is not None:
        return known
    config: GatewayConfig = request.app[CONFIG]
    if config.auth.mode == "forward":
        token = bearer_token(headers)
        admin = None if token is None or not config.auth.admin_tokens else match_token(
            tuple((None, t) for t in config.auth.admin_tokens), token)
        if token is not None and admin is not None:
            principal = Principal("admin:" + token, None, admin=True)
        else:
            principal = await request.app[FORWARD_AUTH].ask(request)
    else:
        principal = authorize(config, headers, now=now)
    request[PRINCIPAL] = principal
    return principal


def check_owner(config: GatewayConfig, principal: Principal, info: UploadInfo,
                owner_key: str) -> None:
    """404, as for an unknown id, unless auth is off, the principal is an admin, or it
    created the upload (``owner_key``: its key, ``gateway.clients.client_key``)."""
    if config.auth.mode == "none" or principal.admin:
        return
    if not hmac.compare_digest(info.client.encode(), owner_key.encode()):
        raise errors.NotFound()


async def check_plan(principal: Principal, length: int | None, concat: Concat | None,
                     uploads: Uploads) -> None:
    """Hold the planned upload to the principal's ``max_size``: its declared length, or a
    final concatenation's sum of partials (which must all be known)."""
    limit = principal.max_size
    if limit is None:
        return
    if isinstance(concat, ConcatFinal):
        partials = [await uploads.live(upload_id) for upload_id in concat.upload_ids]
        lengths = [p.info.length for p in partials]
        length = None if None in lengths else sum(n for n in lengths if n is not None)
    if length is None:
        raise errors.TooLarge(f"this token allows at most {limit} bytes, so the upload "
                              "length must be known at creation")
    if length > limit:
        raise errors.TooLarge(f"this token allows at most {limit} bytes")
