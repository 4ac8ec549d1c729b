"""Two users of one gateway with auth on, each through the real tus-js-client (Node).

Alice and Bob have bearer tokens of their own and a real ``tus-gateway serve`` process,
keeping its state on disk or in a real redis-server. The tokens name them in each auth mode:
``--auth-tokens alice=...,bob=...``, HMAC tokens whose ``sub`` is theirs, and opaque tokens
that the test's own endpoint maps to them for ``--auth forward``.
Each starts an upload, is cut off, and resumes it from tus-js-client's URL storage; Bob's
client handed Alice's upload URL meets the 404 of an unknown id, whether told the URL
directly or finding it in a URL storage, and Alice's upload is exactly as it was.
``tests/js/two_users.mjs`` drives one upload per run and reports its requests.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import mint_token
from tests.clients.support import HTTP_TIMEOUT_S, random_file, sha256_file
from tests.clients.test_tus_js import JS_DIR, NODE_TIMEOUT_S, node_binary
from tests.conftest import GatewayProcess
from tests.helpers import bearer

pytestmark = pytest.mark.both_stores

Gateways = Callable[..., GatewayProcess]
Result = dict[str, Any]

SCRIPT = JS_DIR / "two_users.mjs"
ALICE = "tok-alice-8e41c07b"
BOB = "tok-bob-2fd95a63"
SIZE = 3_000_000
CHUNK = 256 * 1024
CUT_AT = 1024 * 1024


def run(config: dict[str, Any], tmp_path: Path, gw: GatewayProcess, expect: str) -> Result:
    config_path = tmp_path / f"two-users-{uuid.uuid4().hex}.json"
    config_path.write_text(json.dumps({"timeoutMs": (NODE_TIMEOUT_S - 20) * 1000, **config}))
    try:
        proc = subprocess.run([node_binary(), str(SCRIPT), str(config_path)], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"two_users.mjs did not finish in {NODE_TIMEOUT_S}s: {exc}\n{gw.log()}")
    try:
        result: Result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"two_users.mjs printed no report (exit {proc.returncode})\n"
                    f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}\n{gw.log()}")
    assert result["status"] == expect, (
        f"expected {expect}, got {result['status']}: {result.get('error')}\n"
        f"requests: {json.dumps(result.get('requests'), indent=1)[-3000:]}\n{gw.log()}")
    return result


def calls(result: Result) -> list[tuple[str, int | None]]:
    return [(r["method"], r["status"]) for r in result["requests"]]


def request(method: str, url: str, token: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method,
                                 headers={"Tus-Resumable": "1.0.0", **bearer(token)})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def seen_by(url: str, token: str) -> tuple[int, str | None, str | None]:
    """What a HEAD with ``token`` tells of the upload: status, offset, length."""
    status, headers, _ = request("HEAD", url, token)
    return status, headers.get("Upload-Offset"), headers.get("Upload-Length")


def assert_delivered(gw: GatewayProcess, url: str, token: str, source: Path,
                     filename: str) -> None:
    delivered = gw.data_dir / "complete" / filename
    assert delivered.is_file(), f"{delivered} is missing\n{gw.log()}"
    assert sha256_file(delivered) == sha256_file(source)
    status, _, body = request("GET", url, token)
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == sha256_file(source)


SECRET = "two-users-secret-0123456789abcdef0123"


class _ForwardAuth(http.server.BaseHTTPRequestHandler):
    """The operator's endpoint for --auth forward: opaque bearer tokens to users."""

    users = {ALICE: "alice", BOB: "bob"}

    def do_GET(self) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        sub = self.users.get(token)
        body = json.dumps({"sub": sub}).encode() if sub else b""
        self.send_response(200 if sub else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def forward_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForwardAuth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/check"
    finally:
        server.shutdown()
        server.server_close()


def users_of(mode: str, endpoint: str) -> tuple[list[str], dict[str, str]]:
    """The gateway's auth flags and each user's token, in ``mode``."""
    if mode == "bearer":
        return ["--auth", "bearer", "--auth-tokens", f"alice={ALICE},bob={BOB}"], {
            "alice": ALICE, "bob": BOB}
    if mode == "hmac":
        now = time.time()
        return ["--auth", "hmac", "--auth-secret", SECRET], {
            name: mint_token(SECRET, 3600, now=now, sub=name) for name in ("alice", "bob")}
    return ["--auth", "forward", "--auth-url", endpoint], {"alice": ALICE, "bob": BOB}


@pytest.mark.parametrize("mode", ["bearer", "hmac", "forward"])
def test_two_users_upload_and_resume_their_own_and_not_each_others(
        gateway_process: Gateways, tmp_path: Path, mode: str, forward_endpoint: str) -> None:
    flags, users = users_of(mode, forward_endpoint)
    gw = gateway_process(*flags)
    ALICE, BOB = users["alice"], users["bob"]
    sources = {name: random_file(tmp_path / f"{name}.bin", SIZE) for name in users}
    storages = {name: tmp_path / f"{name}-urls.json" for name in users}

    def config(name: str, **extra: Any) -> dict[str, Any]:
        return {"endpoint": gw.url, "file": str(sources[name]), "chunkSize": CHUNK,
                "headers": bearer(users[name]), "urlStorage": str(storages[name]),
                "metadata": {"filename": f"{name}.bin"}, **extra}

    # Each starts an upload and is cut off part of the way.
    urls = {}
    for name in users:
        cut = run(config(name, abortAfterBytes=CUT_AT), tmp_path, gw, "aborted")
        assert calls(cut)[0] == ("POST", 201)
        urls[name] = cut["url"]
    assert urls["alice"] != urls["bob"]
    cut_off = {name: seen_by(urls[name], users[name]) for name in users}
    for name, (status, offset, length) in cut_off.items():
        assert status == 200 and length == str(SIZE), name
        assert offset is not None and 0 < int(offset) < SIZE, name

    # Bob's client told Alice's URL: the HEAD it resumes with is 404, which it reports
    # (there is no endpoint to start over at).
    for source in (sources["bob"], sources["alice"]):
        stolen = run({"uploadUrl": urls["alice"], "file": str(source), "chunkSize": CHUNK,
                      "headers": bearer(BOB)}, tmp_path, gw, "error")
        assert calls(stolen) == [("HEAD", 404)], stolen
        assert stolen["errorStatus"] == 404
        assert "unable to resume upload" in stolen["error"], stolen["error"]
        assert "404" in stolen["error"]
    assert seen_by(urls["alice"], ALICE) == cut_off["alice"]

    # Bob's client finding Alice's upload in a URL storage (her file, her storage): the 404
    # makes tus-js-client forget it and start an upload of Bob's own; hers stays as it was.
    borrowed = tmp_path / "bob-borrowed-urls.json"
    shutil.copy(storages["alice"], borrowed)
    copied = run({**config("alice", resume=True), "headers": bearer(BOB),
                  "urlStorage": str(borrowed), "metadata": {"filename": "bobs-copy.bin"}},
                 tmp_path, gw, "success")
    assert copied["previousUploads"] == 1 and copied["resumedFrom"] == urls["alice"]
    assert calls(copied)[:2] == [("HEAD", 404), ("POST", 201)], copied["requests"]
    assert copied["url"] not in urls.values()
    assert seen_by(urls["alice"], ALICE) == cut_off["alice"]
    assert seen_by(copied["url"], ALICE)[0] == 404
    assert_delivered(gw, copied["url"], BOB, sources["alice"], "bobs-copy.bin")
    assert not (gw.data_dir / "complete" / "alice.bin").exists()

    # Each resumes their own from where the gateway stopped.
    for name, token in users.items():
        resumed = run(config(name, resume=True), tmp_path, gw, "success")
        assert resumed["resumedFrom"] == urls[name] and resumed["url"] == urls[name]
        assert calls(resumed)[0] == ("HEAD", 200)
        assert resumed["requests"][0]["offset"] == cut_off[name][1]
        assert "POST" not in [method for method, _ in calls(resumed)]
        assert all(200 <= (status or 0) < 300 for _, status in calls(resumed)), resumed
        assert_delivered(gw, urls[name], token, sources[name], f"{name}.bin")

    # Finished, each upload still answers only its owner.
    for name, other in (("alice", BOB), ("bob", ALICE)):
        assert request("GET", urls[name], other)[0] == 404
        assert seen_by(urls[name], other)[0] == 404
        assert seen_by(urls[name], users[name])[:2] == (200, str(SIZE))
