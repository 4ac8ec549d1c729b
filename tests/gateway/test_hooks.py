"""The pre-create and post-finish hooks, against a real hook endpoint.

The endpoint is a small aiohttp server on a loopback port that records every call and
answers what the test scripted. Nothing of the gateway's own HTTP layer is mocked: the
gateway runs in process (``make_client``) or as a real process (``gateway_process``). The
post-finish tests run over both state backends: the store keeps what the hook owes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import GatewayConfig
from gateway.hooks import post_finish_delay
from gateway.keys import RUNTIME
from gateway.uploads import Uploads
from protocol.headers import parse_metadata
from protocol.model import HookStatus
from tests.conftest import ClientFactory, GatewayProcess, free_port
from tests.helpers import OCTETS, TUS, b64, metadata, patch_headers, path_of

Client = TestClient[Any, Any]


@dataclass
class Call:
    body: dict[str, Any]
    headers: dict[str, str]
    status: int


@dataclass
class HookEndpoint:
    """Answers from ``script`` first (status, JSON body or None), then ``default``."""

    script: list[tuple[int, Any]] = field(default_factory=list)
    default: tuple[int, Any] = (204, None)
    delay_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        status, answer = self.script.pop(0) if self.script else self.default
        self.calls.append(Call(body, dict(request.headers), status))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if answer is None:
            return web.Response(status=status)
        return web.json_response(answer, status=status)

    def delivered(self) -> list[Call]:
        return [c for c in self.calls if 200 <= c.status < 300]


@pytest.fixture
async def endpoint() -> AsyncIterator[HookEndpoint]:
    hook = HookEndpoint()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    hook.url = str(server.make_url("/hook"))
    yield hook
    await server.close()


def uploads_of(client: Client) -> Uploads:
    uploads: Uploads = client.app[RUNTIME].require()
    return uploads


async def error_code(r: aiohttp.ClientResponse) -> str:
    return (await r.text()).split(":", 1)[0]


async def wait_for(predicate: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def upload(client: Client, data: bytes, **headers: str) -> str:
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data)),
                                               **headers})
    assert r.status == 201, await r.text()
    url = path_of(r.headers["Location"])
    r = await client.patch(url, data=data, headers=patch_headers(0))
    assert r.status == 204, await r.text()
    return url


async def status_of(client: Client, url: str) -> dict[str, Any]:
    r = await client.get(f"/api/upload/status/{url.rsplit('/', 1)[1]}")
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


# --- pre-create ----------------------------------------------------------------------------
@pytest.mark.parametrize(("answer", "status"), [
    ({"reject": True, "status": 403, "message": "quota exceeded"}, 403),
    ({"reject": True, "status": 429, "message": "quota exceeded"}, 429),
    # Not a 4xx: tus clients would retry a 5xx forever, so it becomes the default.
    ({"reject": True, "status": 500, "message": "quota exceeded"}, 403),
    ({"reject": True, "message": "quota\r\nexceeded"}, 403),
])
async def test_pre_create_rejection_reaches_the_client_and_stores_nothing(
        make_client: ClientFactory, endpoint: HookEndpoint, answer: dict[str, Any],
        status: int) -> None:
    endpoint.default = (200, answer)
    client = await make_client(hook_pre_create=endpoint.url)
    store = uploads_of(client).store
    before = await store.upload_ids()
    r = await client.post("/files/", headers={
        **TUS, "Upload-Length": "5", "User-Agent": "hook-test/1",
        "Upload-Metadata": metadata(filename="a.txt"),
        "Authorization": "Bearer secret-token", "Cookie": "session=secret"})
    assert r.status == status
    assert await r.text() == "ERR_HOOK_REJECTED: quota exceeded\n"
    assert "Location" not in r.headers
    assert await store.upload_ids() == before
    [call] = endpoint.calls
    assert call.body == {
        "type": "pre-create",
        "upload": {"length": 5, "deferred_length": False, "concat": None,
                   "metadata": {"filename": "a.txt"}, "metadata_base64": {}},
        "request": {"remote": "127.0.0.1", "host": call.body["request"]["host"],
                    "user_agent": "hook-test/1"},
    }
    assert call.body["request"]["host"].startswith("127.0.0.1:")
    assert "Authorization" not in call.headers and "Cookie" not in call.headers


async def test_pre_create_describes_deferred_partial_and_binary_metadata(
        make_client: ClientFactory, endpoint: HookEndpoint) -> None:
    client = await make_client(hook_pre_create=endpoint.url)
    blob = b64(b"\xff\x00")
    r = await client.post("/files/", headers={
        **TUS, "Upload-Defer-Length": "1", "Upload-Concat": "partial",
        "Upload-Metadata": f"name {b64('ok')},blob {blob},empty"})
    assert r.status == 201, await r.text()
    upload = endpoint.calls[0].body["upload"]
    assert upload == {"length": None, "deferred_length": True, "concat": "partial",
                      "metadata": {"name": "ok", "empty": ""},
                      "metadata_base64": {"blob": base64.b64encode(b"\xff\x00").decode()}}


async def test_pre_create_replaces_the_metadata(make_client: ClientFactory,
                                                endpoint: HookEndpoint) -> None:
    endpoint.default = (200, {"metadata": {"filename": "renamed.txt", "owner": "alice"},
                              "metadata_base64": {"raw": base64.b64encode(b"\xfe").decode()}})
    client = await make_client(hook_pre_create=endpoint.url)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3",
                                               "Upload-Metadata": metadata(filename="a.txt")})
    assert r.status == 201, await r.text()
    r = await client.head(path_of(r.headers["Location"]), headers=TUS)
    assert parse_metadata(r.headers["Upload-Metadata"], 4096) == {
        "filename": b"renamed.txt", "owner": b"alice", "raw": b"\xfe"}


@pytest.mark.parametrize("answer", [
    {"metadata": {"bad key": "x"}},
    {"metadata": {"a,b": "x"}},
    {"metadata": {"n": 1}},
    {"metadata": ["filename", "x"]},
    {"metadata": {"big": "x" * 8000}},
    {"metadata_base64": {"raw": "not base64!"}},
    {"reject": "yes"},
    [1, 2],
])
async def test_a_malformed_answer_is_a_hook_failure_and_not_retried(
        make_client: ClientFactory, endpoint: HookEndpoint, answer: Any) -> None:
    endpoint.default = (200, answer)
    client = await make_client(hook_pre_create=endpoint.url, hook_retries=2)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 503 and await error_code(r) == "ERR_HOOK_FAILED"
    assert len(endpoint.calls) == 1
    assert await uploads_of(client).store.upload_ids() == []


@pytest.mark.parametrize(("fallback", "status"), [("reject", 503), ("accept", 201)])
async def test_endpoint_down_follows_the_fallback(make_client: ClientFactory, fallback: str,
                                                  status: int) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    client = await make_client(hook_pre_create=closed, hook_fallback=fallback,
                               hook_retries=1)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == status, await r.text()
    ids = await uploads_of(client).store.upload_ids()
    if fallback == "reject":
        assert await r.text() == ("ERR_HOOK_FAILED: the pre-create hook failed, so the upload "
                                  "was not created; retry later\n")
        assert r.headers["Retry-After"] == "5"
        assert ids == []
    else:
        assert ids == [path_of(r.headers["Location"]).rsplit("/", 1)[1]]


async def test_a_slow_endpoint_counts_as_down(make_client: ClientFactory,
                                              endpoint: HookEndpoint) -> None:
    endpoint.delay_s = 3.0
    client = await make_client(hook_pre_create=endpoint.url, hook_timeout_s=0.3,
                               hook_retries=1)
    started = time.monotonic()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 503 and await error_code(r) == "ERR_HOOK_FAILED"
    assert time.monotonic() - started < 2.0
    assert len(endpoint.calls) == 2  # the first attempt and one retry


async def test_failures_are_retried_before_the_fallback(make_client: ClientFactory,
                                                        endpoint: HookEndpoint) -> None:
    endpoint.script = [(500, None), (502, None)]
    client = await make_client(hook_pre_create=endpoint.url, hook_retries=2)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 201, await r.text()
    assert [c.status for c in endpoint.calls] == [500, 502, 204]


# --- post-finish ---------------------------------------------------------------------------
@pytest.mark.both_stores
async def test_post_finish_is_called_once_with_the_upload(make_client: ClientFactory,
                                                          endpoint: HookEndpoint) -> None:
    client = await make_client(hook_post_finish=endpoint.url, hook_retry_s=0.05)
    before = time.time()
    url = await upload(client, b"hello", **{"Upload-Metadata": metadata(filename="a.txt")})
    upload_id = url.rsplit("/", 1)[1]
    await wait_for(lambda: endpoint.calls, "the post-finish call")
    await asyncio.sleep(0.5)  # several scans: nothing more is sent
    [call] = endpoint.calls
    assert call.headers["Hook-Event-Id"] == f"{upload_id}:post-finish"
    sent = call.body["upload"]
    assert call.body["type"] == "post-finish"
    assert {k: sent[k] for k in ("id", "length", "metadata", "metadata_base64")} == {
        "id": upload_id, "length": 5, "metadata": {"filename": "a.txt"}, "metadata_base64": {}}
    assert before <= sent["created_at"] <= sent["finished_at"] <= time.time()
    hooks = (await status_of(client, url))["hooks"]
    assert hooks["post_finish"]["status"] == "done"
    assert hooks["post_finish"]["attempts"] == 1
    assert hooks["post_finish"]["last_error"] is None
    assert sent["finished_at"] <= hooks["post_finish"]["done_at"] <= time.time()


@pytest.mark.both_stores
async def test_no_post_finish_for_partials_only_for_their_final(
        make_client: ClientFactory, endpoint: HookEndpoint) -> None:
    client = await make_client(hook_post_finish=endpoint.url, hook_retry_s=0.05)
    parts = [await upload(client, data, **{"Upload-Concat": "partial"})
             for data in (b"abc", b"def")]
    await asyncio.sleep(0.3)
    assert endpoint.calls == []
    for part in parts:
        assert (await status_of(client, part))["hooks"] is None
    r = await client.post("/files/", headers={**TUS,
                                               "Upload-Concat": "final;" + " ".join(parts)})
    assert r.status == 201, await r.text()
    final_id = path_of(r.headers["Location"]).rsplit("/", 1)[1]
    await wait_for(lambda: endpoint.calls, "the final's post-finish call")
    await asyncio.sleep(0.3)
    assert [(c.body["upload"]["id"], c.body["upload"]["length"]) for c in endpoint.calls] == [
        (final_id, 6)]


@pytest.mark.both_stores
async def test_post_finish_is_retried_until_it_succeeds(make_client: ClientFactory,
                                                        endpoint: HookEndpoint) -> None:
    endpoint.script = [(500, None), (503, None), (404, None)]
    client = await make_client(hook_post_finish=endpoint.url, hook_retry_s=0.05)
    url = await upload(client, b"x" * 10)
    await wait_for(lambda: endpoint.delivered(), "a successful post-finish call")
    await asyncio.sleep(0.5)
    assert [c.status for c in endpoint.calls] == [500, 503, 404, 204]
    assert len({c.headers["Hook-Event-Id"] for c in endpoint.calls}) == 1
    post_finish = (await status_of(client, url))["hooks"]["post_finish"]
    assert post_finish["status"] == "done" and post_finish["attempts"] == 4
    assert post_finish["last_error"] == "answered 404"


@pytest.mark.both_stores
async def test_pending_post_finish_shows_in_the_status(make_client: ClientFactory,
                                                       endpoint: HookEndpoint) -> None:
    endpoint.default = (500, None)
    client = await make_client(hook_post_finish=endpoint.url, hook_retry_s=0.05)
    url = await upload(client, b"abc")
    await wait_for(lambda: len(endpoint.calls) >= 2, "two failed calls")
    post_finish = (await status_of(client, url))["hooks"]["post_finish"]
    assert post_finish["status"] == "pending" and post_finish["attempts"] >= 1
    assert post_finish["last_error"] == "answered 500" and post_finish["done_at"] is None


@pytest.mark.both_stores
async def test_a_record_saved_from_an_older_read_keeps_the_hook_done(
        make_client: ClientFactory, endpoint: HookEndpoint) -> None:
    """A sink saves the whole record from its own read; that must not make the hook owed
    again (it would be sent twice), and the hook's progress must not undo the sink's."""
    endpoint.default = (500, None)
    client = await make_client(hook_post_finish=endpoint.url, hook_retry_s=0.05)
    store = uploads_of(client).store
    upload_id = (await upload(client, b"abc")).rsplit("/", 1)[1]
    await wait_for(lambda: endpoint.calls, "a failed call")
    stale = (await store.get(upload_id)).info
    assert stale.hook is not None and stale.hook.status is HookStatus.PENDING
    endpoint.default = (204, None)
    await wait_for(lambda: endpoint.delivered(), "a successful post-finish call")
    await wait_for(lambda: not uploads_of(client).hooks.post_finish.active(),
                   "the hook task to end")
    await store.save_info(stale.replace(data_removed=True))
    info = (await store.get(upload_id)).info
    assert info.data_removed  # the other writer's change stays
    assert info.hook is not None and info.hook.status is HookStatus.DONE
    await uploads_of(client).hooks.scan(set(await store.upload_ids()))
    await asyncio.sleep(0.3)
    assert len(endpoint.delivered()) == 1


async def _http(session: aiohttp.ClientSession, method: str, url: str,
                **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with session.request(method, url, **kwargs) as r:
        return r.status, dict(r.headers), await r.read()


@pytest.mark.both_stores
@pytest.mark.slow
async def test_post_finish_exactly_once_across_a_restart(gateway_process: Any,
                                                         endpoint: HookEndpoint) -> None:
    endpoint.default = (500, None)
    # Blocking process control runs in a thread: this loop serves the hook endpoint.
    gw: GatewayProcess = await asyncio.to_thread(
        gateway_process, "--hook-post-finish", endpoint.url, "--hook-retry", "0.2",
        "--hook-timeout", "2", "--lock-ttl", "1")
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await _http(session, "POST", gw.url,
                                         headers={**TUS, "Upload-Length": "4"})
        assert status == 201
        location = headers["Location"]
        upload_id = location.rsplit("/", 1)[1]
        status, _, body = await _http(session, "PATCH", location, data=b"data",
                                      headers={**TUS, "Upload-Offset": "0",
                                               "Content-Type": OCTETS})
        assert status == 204, body
        await wait_for(lambda: len(endpoint.calls) >= 2, "failed post-finish calls")
    gw.kill()
    failed = len(endpoint.calls)
    assert not endpoint.delivered()
    endpoint.default = (204, None)
    await asyncio.to_thread(gw.start)
    # With Redis the dead process's lease on the hook must run out first (3 s here).
    await wait_for(lambda: endpoint.delivered(), "the post-finish call after the restart",
                   timeout_s=20)
    await asyncio.sleep(1.0)
    [delivered] = endpoint.delivered()
    assert delivered.headers["Hook-Event-Id"] == f"{upload_id}:post-finish"
    assert delivered.body["upload"]["id"] == upload_id
    status_url = f"http://127.0.0.1:{gw.port}/api/upload/status/{upload_id}"
    async with aiohttp.ClientSession() as session:
        status, _, body = await _http(session, "GET", status_url)
        post_finish = json.loads(body)["hooks"]["post_finish"]
        assert post_finish["status"] == "done"
        # Every failure is counted, except one whose answer the kill may have cut off.
        assert post_finish["attempts"] >= failed
        calls = len(endpoint.calls)
        await asyncio.to_thread(gw.terminate)
        await asyncio.to_thread(gw.start)
        await asyncio.sleep(1.5)
        assert len(endpoint.calls) == calls  # done stays done: nothing more is sent
        status, _, body = await _http(session, "GET", status_url)
        assert json.loads(body)["hooks"]["post_finish"]["status"] == "done"


# --- configuration and the backoff -----------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    {"hook_pre_create": "ftp://example.com/hook"},
    {"hook_post_finish": "example.com/hook"},
    {"hook_pre_create": "http://:80/"},
    {"hook_pre_create": "http://host:port/"},
    {"hook_timeout_s": 0.0},
    {"hook_retry_s": -1.0},
    {"hook_retries": -1},
    {"hook_fallback": "ignore"},
])
def test_bad_hook_settings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="hook"):
        GatewayConfig.from_settings(**overrides).validate()


def test_hook_settings_come_from_the_environment() -> None:
    config = GatewayConfig.from_env({"TUS_HOOK_PRE_CREATE": "https://policy.internal/tus",
                                     "TUS_HOOK_FALLBACK": "accept", "TUS_HOOK_RETRIES": "0",
                                     "TUS_HOOK_TIMEOUT": "2s", "TUS_HOOK_RETRY": "1m"})
    assert (config.hooks.pre_create, config.hooks.fallback, config.hooks.retries,
            config.hooks.timeout_s, config.hooks.retry_s) == (
        "https://policy.internal/tus", "accept", 0, 2.0, 60.0)


def test_post_finish_backoff_doubles_up_to_the_cap() -> None:
    assert [post_finish_delay(n, 30.0, 0.999999) for n in (1, 2, 3, 6, 7, 50)] == \
        pytest.approx([1.0, 2.0, 4.0, 30.0, 30.0, 30.0], rel=1e-5)
    assert post_finish_delay(3, 30.0, 0.0) == 2.0  # jitter stays in the upper half
