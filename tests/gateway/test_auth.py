"""Authentication of upload creation: bearer tokens and HMAC-signed upload tokens.

In-process gateways (a real HTTP server on loopback) for the status codes and headers, real
gateway processes and tus-js-client for the client's ``headers`` option. Upload URLs must
stay reachable without a token, so every test that creates also continues without one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.auth import mint_token, verify_token
from gateway.config import GatewayConfig
from protocol import errors
from tests.clients.support import assert_delivered, random_file
from tests.clients.test_tus_js import JS_DIR, NODE_TIMEOUT_S, SCRIPT, node_binary, run_js
from tests.conftest import ROOT, ClientFactory, GatewayProcess
from tests.helpers import TUS, patch_headers, path_of

Client = TestClient[Any, Any]
Gateways = Callable[..., GatewayProcess]

TOKENS = ("tok-alpha-0f3c9e1d", "tok-beta-77a0b2c4")
SECRET = "3f9a1c7e5b2d4f608e1a9c3b7d5f2e4a"  # 32 characters, the minimum
CHALLENGE = 'Bearer realm="tus-gateway"'


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(client: Client, length: int = 11, /, **headers: str) -> Any:
    return await client.post("/files/", headers={**TUS, "Upload-Length": str(length),
                                                 **headers})


async def assert_reachable_with_the_token_only(client: Client, location: str,
                                              token: str) -> None:
    """With auth on, the upload URL alone is not enough: without credentials every method
    answers 401 and changes nothing; with the creator's token PATCH, HEAD and GET work, and
    DELETE ends it."""
    url = path_of(location)
    r = await client.patch(url, data=b"hello world", headers=patch_headers(0))
    assert r.status == 401, await r.text()
    for method in ("HEAD", "GET", "DELETE"):
        r = await client.request(method, url, headers=TUS)
        assert r.status == 401, method
    auth = bearer(token)
    r = await client.head(url, headers={**TUS, **auth})
    assert r.status == 200 and r.headers["Upload-Offset"] == "0"
    r = await client.patch(url, data=b"hello world", headers={**patch_headers(0), **auth})
    assert r.status == 204, await r.text()
    r = await client.head(url, headers={**TUS, **auth})
    assert r.status == 200 and r.headers["Upload-Offset"] == "11"
    r = await client.get(url, headers={**TUS, **auth})
    assert r.status == 200 and await r.read() == b"hello world"
    r = await client.delete(url, headers={**TUS, **auth})
    assert r.status == 204


# --- bearer ------------------------------------------------------------------------------------
async def test_bearer_missing_token_is_401_with_challenge(make_client: ClientFactory) -> None:
    client = await make_client(auth="bearer", auth_tokens=TOKENS)
    r = await create(client)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == CHALLENGE
    assert (await r.text()).startswith("ERR_AUTH_REQUIRED:")
    # Credentials of another scheme are no bearer token either.
    r = await create(client, Authorization="Basic dXNlcjpwYXNz")
    assert r.status == 401 and r.headers["WWW-Authenticate"] == CHALLENGE


async def test_bearer_wrong_token_is_403(make_client: ClientFactory) -> None:
    client = await make_client(auth="bearer", auth_tokens=TOKENS)
    for wrong in ("tok-alpha-0f3c9e1", "tok-alpha-0f3c9e1dX", "TOK-ALPHA-0F3C9E1D", "x"):
        r = await create(client, **bearer(wrong))
        assert r.status == 403, wrong
        assert (await r.text()).startswith("ERR_AUTH_INVALID:")
        assert "WWW-Authenticate" not in r.headers


async def test_bearer_valid_token_creates_and_the_url_needs_it_too(
        make_client: ClientFactory) -> None:
    client = await make_client(auth="bearer", auth_tokens=TOKENS)
    for token in TOKENS:
        r = await create(client, **bearer(token))
        assert r.status == 201, await r.text()
        await assert_reachable_with_the_token_only(client, r.headers["Location"], token)
    # The scheme is case-insensitive (RFC 7235).
    r = await create(client, Authorization=f"bearer {TOKENS[0]}")
    assert r.status == 201


async def test_method_override_cannot_reach_creation_without_token(
        make_client: ClientFactory) -> None:
    client = await make_client(auth="bearer", auth_tokens=TOKENS)
    r = await client.patch("/files/", headers={**TUS, "Upload-Length": "5",
                                               "X-HTTP-Method-Override": "POST"})
    assert r.status == 401


async def test_without_auth_anyone_creates(make_client: ClientFactory) -> None:
    client = await make_client()
    r = await create(client)
    assert r.status == 201


async def test_preflight_and_discovery_need_no_token(make_client: ClientFactory) -> None:
    client = await make_client(auth="bearer", auth_tokens=TOKENS,
                               cors_origins=("https://app.example",))
    r = await client.options("/files/", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, tus-resumable, upload-length"})
    assert r.status == 200, await r.text()
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed
    r = await client.options("/files/")
    assert r.status == 204 and "Tus-Version" in r.headers
    # A browser can read the challenge of a refused creation.
    r = await create(client, Origin="https://app.example")
    assert r.status == 401
    assert "www-authenticate" in r.headers["Access-Control-Expose-Headers"].lower()


# --- HMAC upload tokens ------------------------------------------------------------------------
async def test_hmac_valid_token_creates_and_the_url_needs_it_too(
        make_client: ClientFactory) -> None:
    client = await make_client(auth="hmac", auth_secret=SECRET)
    token = mint_token(SECRET, 600, now=time.time(), sub="user-42")
    r = await create(client, **bearer(token))
    assert r.status == 201, await r.text()
    await assert_reachable_with_the_token_only(client, r.headers["Location"], token)


async def test_hmac_missing_token_is_401(make_client: ClientFactory) -> None:
    client = await make_client(auth="hmac", auth_secret=SECRET)
    r = await create(client)
    assert r.status == 401 and r.headers["WWW-Authenticate"] == CHALLENGE


async def test_hmac_expired_token_is_401_so_the_client_can_refresh(
        make_client: ClientFactory) -> None:
    client = await make_client(auth="hmac", auth_secret=SECRET)
    expired = mint_token(SECRET, -60, now=time.time())
    r = await create(client, **bearer(expired))
    assert r.status == 401
    assert (await r.text()).startswith("ERR_AUTH_EXPIRED:")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def _tamper(token: str) -> list[str]:
    body, _, signature = token.partition(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    later = mint_token(SECRET, 10 * 365 * 86400, now=time.time()).partition(".")[0]
    return [
        f"{body}.{flipped}",                                    # signature altered
        f"{later}.{signature}",                                 # payload swapped, old signature
        mint_token("another-secret-of-32-characters!", 600, now=time.time()),  # other key
        body, f"{body}.", f".{signature}", "not-a-token", f"{body}.{signature}.x",
    ]


async def test_hmac_tampered_or_foreign_token_is_403(make_client: ClientFactory) -> None:
    client = await make_client(auth="hmac", auth_secret=SECRET)
    good = mint_token(SECRET, 600, now=time.time())
    for token in _tamper(good):
        r = await create(client, **bearer(token))
        assert r.status == 403, (token, await r.text())
        assert (await r.text()).startswith("ERR_AUTH_INVALID:")
    r = await create(client, **bearer(good))
    assert r.status == 201


async def test_hmac_max_size_is_honoured(make_client: ClientFactory) -> None:
    client = await make_client(auth="hmac", auth_secret=SECRET)
    token = bearer(mint_token(SECRET, 600, now=time.time(), sub="carol", max_size=10))
    r = await create(client, 11, **token)
    assert r.status == 413
    assert (await r.text()).startswith(f"{errors.TooLarge.code}:")
    r = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1", **token})
    assert r.status == 413, "a deferred length could later exceed the token's limit"
    r = await create(client, 10, **token)
    assert r.status == 201
    # A final concatenation is held to the sum of its partials.
    parts = []
    for _ in range(2):
        r = await create(client, 6, **token, **{"Upload-Concat": "partial"})
        assert r.status == 201
        parts.append(path_of(r.headers["Location"]))
    r = await client.post("/files/", headers={**TUS, **token,
                                              "Upload-Concat": "final;" + " ".join(parts)})
    assert r.status == 413
    # Another token of the same user, without the limit, may join them.
    unlimited = bearer(mint_token(SECRET, 600, now=time.time(), sub="carol"))
    r = await client.post("/files/", headers={**TUS, **unlimited,
                                              "Upload-Concat": "final;" + " ".join(parts)})
    assert r.status == 201, await r.text()


def test_token_round_trip_and_claims() -> None:
    now = 1_700_000_000.0
    token = mint_token(SECRET, 3600, now=now, sub="alice", max_size=5 << 30)
    claims = verify_token(SECRET, token, now=now + 3599)
    assert (claims.exp, claims.sub, claims.max_size) == (int(now) + 3600, "alice", 5 << 30)
    with pytest.raises(errors.AuthExpired):
        verify_token(SECRET, token, now=now + 3600)
    with pytest.raises(errors.AuthInvalid):
        verify_token(SECRET + "x", token, now=now)


@pytest.mark.parametrize("overrides", [
    {"auth": "bearer"}, {"auth": "hmac", "auth_secret": "too-short"},
    {"auth": "basic", "auth_tokens": TOKENS}, {"auth_tokens": TOKENS},
    {"auth_secret": SECRET}, {"auth": "bearer", "auth_tokens": ("has space",)},
])
def test_auth_settings_are_validated(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GatewayConfig.from_settings(**overrides).validate()


# --- tus-js-client -----------------------------------------------------------------------------
SIZE = 300_000


def mint_with_cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "token", *args],
                          capture_output=True, text=True, check=True, timeout=60,
                          cwd=ROOT).stdout.strip()


@pytest.mark.parametrize("mode", ["bearer", "hmac"])
def test_tus_js_client_sends_the_token_through_its_headers_option(
        gateway_process: Gateways, tmp_path: Path, mode: str) -> None:
    if mode == "bearer":
        gw = gateway_process("--auth", "bearer", "--auth-tokens", ",".join(TOKENS))
        token = TOKENS[1]
    else:
        gw = gateway_process("--auth", "hmac", "--auth-secret", SECRET)
        token = mint_with_cli("--secret", SECRET, "--ttl", "10m", "--max-size", "1MiB")
    source = random_file(tmp_path / "authed.bin", SIZE)
    result = run_js({"endpoint": gw.url, "file": str(source), "chunkSize": 100_000,
                     "headers": {"Authorization": f"Bearer {token}"},
                     "metadata": {"filename": "authed.bin"}}, tmp_path, gw)
    posts = [r for r in result["requests"] if r["method"] == "POST"]
    assert len(posts) == 1 and posts[0]["status"] == 201
    assert posts[0]["headers"]["Authorization"] == f"Bearer {token}"
    assert_delivered(gw, result["url"], source, "authed.bin",
                     {"Authorization": f"Bearer {token}"})


def test_tus_js_client_without_token_is_refused(gateway_process: Gateways,
                                                tmp_path: Path) -> None:
    gw = gateway_process("--auth", "bearer", "--auth-tokens", ",".join(TOKENS))
    source = random_file(tmp_path / "refused.bin", SIZE)
    config_path = tmp_path / f"js-config-{uuid.uuid4().hex}.json"
    config_path.write_text(json.dumps({"endpoint": gw.url, "file": str(source),
                                       "timeoutMs": (NODE_TIMEOUT_S - 20) * 1000}))
    proc = subprocess.run([node_binary(), str(SCRIPT), str(config_path)], cwd=JS_DIR,
                          capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "error", result
    assert [(r["method"], r["status"]) for r in result["requests"]] == [("POST", 401)]
    assert "401" in result["error"]
    assert not list((gw.data_dir / "complete").glob("*"))
