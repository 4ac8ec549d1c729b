"""Who may create uploads: an optional bearer token or HMAC-signed upload token.

Theory of operation:

- Only creation is guarded (POST on the collection, also when reached through
  X-HTTP-Method-Override). HEAD, PATCH, DELETE and GET on an upload URL need no token: the
  URL itself is the capability, since its id is 128 random bits that only the creator learns
  (from ``Location``). This is what lets a browser resume after its token expired, and lets a
  server hand the URL to someone else on purpose. Whoever holds an upload URL can continue,
  download or delete that upload, so treat upload URLs like the tokens that made them.
- A CORS preflight (OPTIONS with Origin) never carries credentials, so it is never checked.
- ``--auth bearer``: the ``Authorization: Bearer <token>`` value must equal one of
  ``--auth-tokens``. Each candidate is compared in constant time, and all of them every time,
  so timing reveals neither a token nor which one matched.
- ``--auth hmac``: an upload token is ``base64url(payload) "." base64url(HMAC-SHA256(secret,
  first part))`` (no padding), the payload a JSON object ``{"exp": <unix seconds>, "sub":
  <optional subject>, "max_size": <optional bytes>}``. The application that knows the secret
  mints one per user or per upload (``tus-gateway token``, or ``mint_token`` here, or any
  language's HMAC); the gateway needs no database of tokens. The signature is checked before
  anything in the payload is believed; ``exp`` is compared with the gateway's clock, without
  leeway. ``max_size`` limits the upload that this creation makes (a deferred length cannot
  be held to it, so it is refused; a final concatenation is held to the sum of its partials).
- Errors (see protocol/errors.py): no bearer credentials at all is ``401 ERR_AUTH_REQUIRED``
  with ``WWW-Authenticate: Bearer realm="tus-gateway"`` (RFC 6750 section 3); a token that is
  not accepted (unknown, malformed, signature wrong) is ``403 ERR_AUTH_INVALID``; a correctly
  signed token past its ``exp`` is ``401 ERR_AUTH_EXPIRED`` with ``error="invalid_token"``,
  because 401 tells a client that fresh credentials will work: it can fetch a new token and
  retry, which 403 would tell it not to bother with.
- Token values are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

from gateway.config import GatewayConfig
from protocol import errors
from protocol.headers import Concat, ConcatFinal, Headers

if TYPE_CHECKING:
    from gateway.uploads import Uploads

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified upload token says."""

    exp: int
    sub: str | None = None
    max_size: int | None = None


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signed_part: str) -> str:
    digest = hmac.new(secret.encode(), signed_part.encode("ascii"), hashlib.sha256).digest()
    return _b64encode(digest)


def mint_token(secret: str, ttl_s: float, *, now: float, sub: str | None = None,
               max_size: int | None = None) -> str:
    """An upload token valid for ``ttl_s`` from ``now`` (a negative ttl makes an expired one)."""
    payload: dict[str, object] = {"exp": int(now + ttl_s)}
    if sub is not None:
        payload["sub"] = sub
    if max_size is not None:
        payload["max_size"] = max_size
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
    exp, sub, max_size = payload.get("exp"), payload.get("sub"), payload.get("max_size")
    if not _is_int(exp) or (sub is not None and not isinstance(sub, str)) or (
            max_size is not None and not (_is_int(max_size) and max_size >= 0)):
        raise errors.AuthInvalid("the token's payload is malformed")
    if exp <= now:
        raise errors.AuthExpired()
    return Claims(exp=exp, sub=sub, max_size=max_size)


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


def check_bearer(accepted: tuple[str, ...], token: str) -> None:
    # Header values arrive decoded with surrogateescape: this gives back the bytes sent
    # (a plain encode() fails on any byte that is not UTF-8).
    candidate = token.encode("utf-8", "surrogateescape")
    matched = False
    for good in accepted:
        matched |= hmac.compare_digest(candidate, good.encode())
    if not matched:
        raise errors.AuthInvalid()


@dataclass(frozen=True, slots=True)
class Grant:
    """What the credentials of a creation allow: who made it, and the most bytes the new
    upload may have (None: only ``--max-size``).

    ``identity`` is what the creation's open uploads are counted under
    (``gateway.clients``): an HMAC token's ``sub``, else the token itself (a bearer token
    names no user; one token is one client); None without auth."""

    identity: str | None = None
    max_size: int | None = None


def authorize(config: GatewayConfig, headers: Headers, *, now: float) -> Grant:
    """Check the credentials of a creation, when ``--auth`` asks for them, before the request
    is planned; the plan is then held to the grant (``check_plan``)."""
    if config.auth.mode == "none":
        return Grant()
    token = bearer_token(headers)
    if token is None:
        raise errors.AuthRequired()
    if config.auth.mode == "bearer":
        check_bearer(config.auth.tokens, token)
        return Grant("token:" + token)
    claims = verify_token(config.auth.secret, token, now=now)
    log.debug("creation authorized", extra={"sub": claims.sub})
    identity = "token:" + token if claims.sub is None else "sub:" + claims.sub
    return Grant(identity, claims.max_size)


async def check_plan(grant: Grant, length: int | None, concat: Concat | None,
                     uploads: Uploads) -> None:
    """Hold the planned upload to the grant's ``max_size``: its declared length, or a final
    concatenation's sum of partials (which must all be known)."""
    limit = grant.max_size
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
