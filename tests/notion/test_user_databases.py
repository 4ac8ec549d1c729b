"""Each user's own Notion database: where a file's page goes, and what happens when that
database cannot be used.

The user database of an upload is the one its creator's credentials named
(``UploadInfo.database``), else the creator's subject's entry in
``--notion-user-databases``, else ``--notion-user-database``; the choice is kept in the
sink state, so a restart or a retry goes where the first try went. The gateway runs in
process against the fake Notion, which holds several user databases; the creator's
subject and database are written into the upload's record the way the gateway's auth
fills them in at creation (``upload_as``).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fake_notion.faults import CREATE, DB_QUERY, DS_QUERY, PAGE_CREATE, SEND, USERS_ME, Fault
from fake_notion.state import READ_CONTENT
from gateway.auth import mint_token
from gateway.config import GatewayConfig
from gateway.keys import RUNTIME
from notion_sink.records import UserDatabases
from notion_sink.retry import Permanent
from notion_sink.settings import MAX_USER_DATABASES, NotionSettings, notion_id
from tests.conftest import ClientFactory
from tests.helpers import TUS, bearer, metadata, patch_headers, path_of
from tests.notion.conftest import FakeNotionServer
from tests.notion.test_fake import call
from tests.notion.test_gateway_sink import drained, failed
from tests.notion.test_records import INDEX_SCHEMA, USER_SCHEMA

MiB = 1024 * 1024


# --- configuration and the choice ---------------------------------------------------------------
def test_notion_ids_are_32_hex_digits_with_or_without_dashes() -> None:
    dashed = "0123abcd-4567-89ef-0123-456789abcdef"
    assert notion_id(dashed) == dashed
    assert notion_id(dashed.replace("-", "").upper()) == dashed
    for bad in ("", "0123abcd", dashed + "0", "{" + dashed + "}", "urn:uuid:" + dashed,
                "0123abcd-4567-89ef-0123-456789abcdeg", "0123abcd4567-89ef-0123-456789abcdef",
                "../../v1/file_uploads", dashed + "\n", "\uff10" * 32):
        assert notion_id(bad) is None, bad


def test_the_user_database_map_is_checked_at_start() -> None:
    a, b = "a" * 32, "b" * 32
    ok = NotionSettings(user_databases=(f"alice={a}", f"bob={b[:8]}-{b[8:12]}-{b[12:16]}-"
                                                    f"{b[16:20]}-{b[20:]}"))
    assert ok.problems(in_use=False) == []
    config = GatewayConfig.from_env(
        {"TUS_NOTION_USER_DATABASES": f"alice={a}, bob={b}"}).validate()
    assert config.notion.user_databases == (f"alice={a}", f"bob={b}")
    bad = NotionSettings(user_databases=("alice", f"={a}", "carol=123", f"alice={a}",
                                         f"alice={b}", f"da ve={a}"))
    problems = bad.problems(in_use=False)
    assert len(problems) == 5, problems
    assert all(p.startswith("notion_user_databases: ") for p in problems)
    assert sum("more than once" in p for p in problems) == 1
    assert any("'carol=123'" in p for p in problems)
    many = tuple(f"u{i}={uuid.UUID(int=i).hex}" for i in range(MAX_USER_DATABASES + 1))
    assert NotionSettings(user_databases=many[:-1]).problems(in_use=False) == []
    assert NotionSettings(user_databases=many).problems(in_use=False) == [
        f"notion_user_databases: at most {MAX_USER_DATABASES} entries, not "
        f"{MAX_USER_DATABASES + 1}"]
    with pytest.raises(ValueError, match="notion_user_databases"):
        GatewayConfig.from_settings(notion_user_databases=("alice=nope",)).validate()


def test_credentials_then_the_map_then_the_default() -> None:
    alice, named = "a" * 32, "C" * 32
    databases = UserDatabases("default-db", (f"alice={alice}",))
    choice = databases.choose("alice", named)
    assert (choice.database, choice.source) == (notion_id(named), "credentials")
    choice = databases.choose("alice", None)
    assert (choice.database, choice.source) == (notion_id(alice), "subject")
    assert "'alice'" in choice.describe("alice")
    for subject in ("carol", None):
        choice = databases.choose(subject, None)
        assert (choice.database, choice.source) == ("default-db", "default")
    with pytest.raises(Permanent) as caught:
        databases.choose("alice", "x\nFORGED line" + "y" * 100)
    message = str(caught.value)
    assert "\n" not in message and "not a Notion database id" in message
    assert "y" * 40 not in message  # a hostile value is shown short


# --- through the gateway ------------------------------------------------------------------------
class Setup:
    """A fake Notion with a default user database, the index and two users' databases, and
    a gateway pointed at it."""

    def __init__(self, fake_notion: FakeNotionServer) -> None:
        self.server = fake_notion
        self.fake = fake_notion.fake
        self.default = self.fake.add_database("Uploads", USER_SCHEMA)
        self.index = self.fake.add_database("Index", INDEX_SCHEMA)
        self.alice = self.fake.add_database("Alice", USER_SCHEMA)
        self.bob = self.fake.add_database("Bob", USER_SCHEMA)

    async def gateway(self, make_client: ClientFactory, *mapping: str,
                      **overrides: Any) -> TestClient[Any, Any]:
        settings: dict[str, Any] = {
            "sink": "notion", "notion_token": self.server.token,
            "notion_base_url": self.server.url, "notion_user_database": self.default,
            "notion_index_database": self.index, "notion_rate": 20.0,
            "notion_breaker_open_s": 0.5, "notion_user_databases": mapping,
            **overrides}
        client: TestClient[Any, Any] = await make_client(**settings)
        return client

    def pages(self, database: str) -> list[str]:
        return [p.id for p in self.fake.pages_in(database)]


def _store(client: TestClient[Any, Any]) -> Any:
    server = client.server
    assert isinstance(server, TestServer)
    return server.app[RUNTIME].require().store


async def upload_as(client: TestClient[Any, Any], data: bytes, filename: str, *,
                    subject: str | None = None, database: str | None = None,
                    chunk: int = 8 * MiB) -> str:
    """A tus upload whose record names its creator and their database, as the gateway's
    auth writes them at creation."""
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data)),
                                              "Upload-Metadata": metadata(filename=filename)})
    assert r.status == 201, await r.text()
    path = path_of(r.headers["Location"])
    upload_id = path.rsplit("/", 1)[1]
    store = _store(client)
    state = await store.get(upload_id)
    await store.save_info(state.info.replace(subject=subject, database=database))
    for start in range(0, len(data), chunk):
        r = await client.patch(path, data=io.BytesIO(data[start:start + chunk]),
                               headers=patch_headers(start))
        assert r.status == 204, await r.text()
    return upload_id


def _assert_recorded(setup: Setup, status: dict[str, Any], database: str, name: str,
                     data: bytes) -> None:
    """The file's page is in ``database``, and its one index page points at it there."""
    sink = status["sink"]
    page, index_page = sink["ref"], sink["detail"]["index_page"]
    assert page in setup.pages(database), (name, database)
    assert setup.fake.page_text(page, "Name") == name
    assert setup.fake.page_text(page, "Hash") == hashlib.sha512(
        sink["detail"]["salt"].encode() + data).hexdigest()
    assert setup.fake.page_text(index_page, "Database") == database
    assert setup.fake.page_text(index_page, "Page") == page
    assert sink["detail"]["database"] == database
    keyed = [p for p in setup.pages(setup.index)
             if setup.fake.page_text(p, "Hash") == sink["detail"]["sha512"]]
    assert keyed == [index_page], "one index page per file"


@pytest.mark.both_stores
async def test_each_users_files_land_in_their_own_database(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    setup = Setup(fake_notion)
    # The map may give an id without dashes and in capitals: it is Notion's id all the same.
    client = await setup.gateway(make_client, f"alice={setup.alice.replace('-', '').upper()}",
                                 f"dave={setup.alice}")
    files = {
        # name: (bytes, subject, database named by the credentials, where it must land)
        "alice.pdf": (os.urandom(5000), "alice", None, setup.alice),
        "bob.txt": (os.urandom(3000), "bob", setup.bob.replace("-", ""), setup.bob),
        # A database named by the credentials wins over the subject's entry in the map.
        "alice-to-bob.txt": (os.urandom(2000), "alice", setup.bob, setup.bob),
        "carol.txt": (os.urandom(1000), "carol", None, setup.default),
        "anonymous.txt": (os.urandom(1500), None, None, setup.default),
        # Larger than one part: windows leave while it arrives, then its records follow.
        "alice.mp4": (os.urandom(21 * MiB + 17), "alice", None, setup.alice),
    }
    ids = {name: await upload_as(client, data, name, subject=subject, database=named)
           for name, (data, subject, named, _) in files.items()}
    for name, (data, _, _, database) in files.items():
        status = await drained(client, ids[name])
        assert await setup.fake.uploaded_sha256(status["sink"]["detail"]["file_upload"]) == \
            hashlib.sha256(data).hexdigest()
        _assert_recorded(setup, status, database, name, data)
    assert len(setup.pages(setup.alice)) == 2 and len(setup.pages(setup.bob)) == 2
    assert len(setup.pages(setup.default)) == 2
    assert len(setup.pages(setup.index)) == len(files)
    sources = {name: (await (await client.get(f"/api/upload/status/{ids[name]}")).json())[
        "sink"]["detail"]["database_source"] for name in files}
    assert sources == {"alice.pdf": "subject", "bob.txt": "credentials",
                       "alice-to-bob.txt": "credentials", "carol.txt": "default",
                       "anonymous.txt": "default", "alice.mp4": "subject"}
    # Each user database was probed once for all its files, not once per file.
    probes = [r for r in setup.fake.log if r.endpoint in (DB_QUERY, DS_QUERY)]
    assert len(probes) == 3, [r.path for r in probes]


@pytest.mark.parametrize("named", ["../../v1/file_uploads", "x\nFORGED", "1" * 31,
                                   "{" + "a" * 32 + "}"])
async def test_a_malformed_database_fails_before_any_request(
        make_client: ClientFactory, fake_notion: FakeNotionServer, named: str,
        caplog: pytest.LogCaptureFixture) -> None:
    setup = Setup(fake_notion)
    client = await setup.gateway(make_client)
    # Large enough that windows would leave before the end: none may, for this upload.
    upload_id = await upload_as(client, os.urandom(21 * MiB), "a.mp4", subject="mallory",
                                database=named)
    status = await failed(client, upload_id)
    sink = status["sink"]
    assert sink["will_retry"] is False
    assert "not a Notion database id" in sink["error"] and "\n" not in sink["error"]
    assert "database" not in sink["detail"]  # nothing chosen, nothing kept
    # (The workspace's upload limit is read at start, for no upload.)
    assert [r for r in setup.fake.log if r.endpoint != USERS_ME] == [], \
        "not one request for an upload with a malformed database"
    assert not any("\nFORGED" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)
    # The gateway goes on: the next upload is delivered.
    other = await upload_as(client, b"fine", "b.txt", subject="mallory")
    _assert_recorded(setup, await drained(client, other), setup.default, "b.txt", b"fine")


@pytest.mark.parametrize("case", ["unknown", "unshared", "schema", "no-insert"])
async def test_a_database_notion_refuses_fails_the_delivery_with_a_reason(
        make_client: ClientFactory, fake_notion: FakeNotionServer, case: str,
        caplog: pytest.LogCaptureFixture) -> None:
    setup = Setup(fake_notion)
    fake = setup.fake
    target = {"unknown": str(uuid.uuid4()),
              "unshared": fake.add_database("Private", USER_SCHEMA, shared_with=[]),
              "schema": fake.add_database("Other", {"Title": "title", "Notes": "rich_text"}),
              "no-insert": setup.bob}[case]
    if case == "no-insert":
        # The integration may read but not create pages (§7.4): 403 restricted_resource.
        fake.set_capabilities(fake_notion.token, [READ_CONTENT])
    client = await setup.gateway(make_client, f"alice={target}")
    upload_id = await upload_as(client, os.urandom(4000), "a.txt", subject="alice")
    status = await failed(client, upload_id)
    sink = status["sink"]
    assert sink["will_retry"] is False, "retrying would meet the same answer"
    error = sink["error"]
    assert "mapped to subject 'alice'" in error and target in error, error
    assert sink["detail"]["database"] == target
    expected = {"unknown": "does not exist or is not shared with the integration",
                "unshared": "does not exist or is not shared with the integration",
                "schema": "cannot hold the records",
                "no-insert": "refuses the integration"}[case]
    assert expected in error, error
    if case == "no-insert":
        # The probe (a query) is allowed; the page is refused once the file is in Notion.
        assert fake.count(PAGE_CREATE, 403) == 1 and fake.count(CREATE, 200) == 1
    else:
        # Found out before the file was sent.
        assert fake.count(CREATE) == 0 and fake.count(SEND) == 0
    assert fake.count(PAGE_CREATE, 200) == 0
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)


async def test_a_database_unshared_after_use_fails_cleanly(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    setup = Setup(fake_notion)
    client = await setup.gateway(make_client, f"alice={setup.alice}")
    first = await upload_as(client, b"one", "one.txt", subject="alice")
    await drained(client, first)
    # Alice removes the integration's connection from her database.
    setup.fake.share_database(setup.alice, [])
    second = await upload_as(client, b"two", "two.txt", subject="alice")
    status = await failed(client, second)
    assert status["sink"]["will_retry"] is False
    assert "does not exist or is not shared" in status["sink"]["error"]
    assert "object_not_found" in status["sink"]["error"]
    assert len(setup.pages(setup.alice)) == 1 and setup.pages(setup.default) == []


@pytest.mark.both_stores
async def test_a_retry_after_a_restart_keeps_the_chosen_database(
        make_client: ClientFactory, fake_notion: FakeNotionServer, tmp_path: Any) -> None:
    """Alice's database was not shared when her file finished: the delivery failed. The
    gateway restarts with Alice mapped to another database; a retry still goes to the one
    chosen first, and succeeds once that one is shared."""
    setup = Setup(fake_notion)
    setup.fake.share_database(setup.alice, [])
    data_dir = tmp_path / "gw"
    first = await setup.gateway(make_client, f"alice={setup.alice}", data_dir=data_dir)
    upload_id = await upload_as(first, b"alice's file", "a.txt", subject="alice")
    status = await failed(first, upload_id)
    assert status["sink"]["detail"]["database"] == setup.alice
    await first.close()

    second = await setup.gateway(make_client, f"alice={setup.bob}", data_dir=data_dir)
    r = await second.post(f"/api/sink/retry/{upload_id}")
    assert r.status == 202, await r.text()
    status = await failed(second, upload_id)
    assert setup.alice in status["sink"]["error"], "the retry went where the first try went"
    setup.fake.share_database(setup.alice, None)
    r = await second.post(f"/api/sink/retry/{upload_id}")
    assert r.status == 202, await r.text()
    status = await drained(second, upload_id, failed_ok=True)
    _assert_recorded(setup, status, setup.alice, "a.txt", b"alice's file")
    assert setup.pages(setup.bob) == []


@pytest.mark.both_stores
async def test_a_restart_mid_delivery_keeps_the_chosen_database(
        make_client: ClientFactory, fake_notion: FakeNotionServer, tmp_path: Any) -> None:
    setup = Setup(fake_notion)
    fake = setup.fake
    fake.faults.chance(Fault(kind="slow", delay_s=0.3), 1.0, endpoints=[SEND])
    data_dir = tmp_path / "gw"
    first = await setup.gateway(make_client, f"alice={setup.alice}", data_dir=data_dir,
                                lock_ttl_s=1.0, notion_concurrency=1)
    data = os.urandom(31 * MiB)  # seven parts, one at a time, each slow
    upload_id = await upload_as(first, data, "movie.mp4", subject="alice")
    deadline = time.monotonic() + 30
    while True:
        status = await (await first.get(f"/api/upload/status/{upload_id}")).json()
        sink = status["sink"]
        if sink is not None and "database" in sink["detail"] and fake.parts_stored:
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)
    assert sink["status"] == "draining" and sink["detail"]["database"] == setup.alice
    await first.close()  # a stop mid-drain: the parts already in Notion stay there
    assert len(fake.parts_stored) < 7, "the drain finished before the stop"
    fake.faults.clear()

    # Alice's entry now names Bob's database: her file still goes where it was going.
    second = await setup.gateway(make_client, f"alice={setup.bob}", data_dir=data_dir,
                                 lock_ttl_s=1.0, notion_scan_s=0.2)
    status = await drained(second, upload_id)
    assert await fake.uploaded_sha256(status["sink"]["detail"]["file_upload"]) == \
        hashlib.sha256(data).hexdigest()
    _assert_recorded(setup, status, setup.alice, "movie.mp4", data)
    assert setup.pages(setup.bob) == []
    assert fake.count(CREATE, 200) == 1, "the Notion upload was resumed, not made again"


async def _status(client: TestClient[Any, Any], upload_id: str, token: str,
                  until: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await client.get(f"/api/upload/status/{upload_id}", headers=bearer(token))
        assert r.status == 200, await r.text()
        status: dict[str, Any] = await r.json()
        sink = status["sink"]
        if sink is not None and sink["status"] == until:
            return status
        assert sink is None or sink["status"] in ("draining", until), status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)


async def test_users_of_a_gateway_with_auth_get_their_own_databases(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    """End to end: the gateway's auth names the creator (an HMAC token's sub) and their
    database (its db claim) on the record; the sink routes by them."""
    setup = Setup(fake_notion)
    secret = "s" * 40
    client = await setup.gateway(make_client, f"alice={setup.alice}", auth="hmac",
                                 auth_secret=secret)
    now = time.time()
    users = {  # subject: (token, where its file must land)
        "alice": (mint_token(secret, 600, now=now, sub="alice"), setup.alice),
        "bob": (mint_token(secret, 600, now=now, sub="bob", db=setup.bob.replace("-", "")),
                setup.bob),
        "carol": (mint_token(secret, 600, now=now, sub="carol"), setup.default),
    }
    for user, (token, database) in users.items():
        data = os.urandom(3000)
        r = await client.post("/files/", headers={
            **TUS, **bearer(token), "Upload-Length": str(len(data)),
            "Upload-Metadata": metadata(filename=f"{user}.txt")})
        assert r.status == 201, await r.text()
        path = path_of(r.headers["Location"])
        r = await client.patch(path, data=data, headers={**patch_headers(0), **bearer(token)})
        assert r.status == 204, await r.text()
        status = await _status(client, path.rsplit("/", 1)[1], token, "drained")
        _assert_recorded(setup, status, database, f"{user}.txt", data)
    # A db claim the token's shape check lets through but that is no Notion id: refused at
    # creation, or the delivery fails cleanly; never a request naming it.
    token = mint_token(secret, 600, now=now, sub="mallory", db="-" * 32)
    r = await client.post("/files/", headers={**TUS, **bearer(token), "Upload-Length": "3"})
    if r.status == 201:
        path = path_of(r.headers["Location"])
        r = await client.patch(path, data=b"abc", headers={**patch_headers(0), **bearer(token)})
        assert r.status == 204, await r.text()
        status = await _status(client, path.rsplit("/", 1)[1], token, "failed")
        assert "not a Notion database id" in status["sink"]["error"]
    else:
        assert 400 <= r.status < 500, await r.text()
    assert not any("-" * 32 in record.path for record in setup.fake.log)


# --- the fake enforces what Notion does with databases (§7.4) --------------------------------
async def test_the_fake_refuses_what_notion_refuses_about_databases(
        fake_notion: FakeNotionServer) -> None:
    fx = fake_notion
    fake = fx.fake
    pinned = "0123abcd-4567-89ef-0123-456789abcdef"
    assert fake.add_database("Pinned", USER_SCHEMA,
                             database_id=pinned.replace("-", "").upper()) == pinned
    with pytest.raises(ValueError, match="exists already"):
        fake.add_database("Again", USER_SCHEMA, database_id=pinned)
    page = {"Name": {"title": [{"text": {"content": "x"}}]}}
    other = fake.add_token()
    fake.share_database(pinned, [other])
    async with aiohttp.ClientSession() as s:
        async def create(database: str, token: str | None = None,
                         props: Any = None) -> tuple[int, dict[str, Any]]:
            status, answer, _ = await call(
                s, fx, "POST", "/v1/pages", headers=fx.headers(token=token),
                body={"parent": {"database_id": database}, "properties": props or page})
            return status, answer

        async def query(database: str, token: str | None = None) -> int:
            status, _, _ = await call(s, fx, "POST", f"/v1/databases/{database}/query",
                                      body={}, headers=fx.headers(token=token))
            return status

        # Shared with the other token only: 404 for ours, as for a database that is not there.
        status, answer = await create(pinned)
        assert status == 404 and answer["code"] == "object_not_found"
        assert answer["object"] == "error" and "shared with your integration" in \
            answer["message"]
        assert await query(pinned) == 404 and await query(str(uuid.uuid4())) == 404
        assert (await create(pinned, other))[0] == 200 and await query(pinned, other) == 200
        # The properties must be that database's.
        status, answer = await create(pinned, other, {"Title": page["Name"]})
        assert status == 400 and "Title is not a property that exists." in answer["message"]
        # Braces or a urn are no Notion id (§1).
        status, answer = await create("{" + pinned + "}", other)
        assert status == 400 and answer["code"] == "validation_error"
        # Capabilities (§7.4): checked before the database is even looked up.
        fake.set_capabilities(other, [READ_CONTENT])
        status, answer = await create(pinned, other)
        assert status == 403 and answer["code"] == "restricted_resource"
        assert await query(pinned, other) == 200
        fake.set_capabilities(other, [])
        assert await query(pinned, other) == 403
        with pytest.raises(ValueError, match="unknown capabilities"):
            fake.set_capabilities(other, ["write"])
    assert len(fake.pages_in(pinned)) == 1


@pytest.mark.allow_blocking
def test_the_fake_command_line_makes_several_databases(tmp_path: Any) -> None:
    pinned = "0123abcd456789ef0123456789abcdef"
    schema = "Name=title,Hash=rich_text"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fake_notion", "--port", "0", "--token", "tok", "--rate", "0",
         "--database", f"Alice@{pinned}:{schema}", "--database", f"Bob:{schema}",
         "--unshared-database", f"Gone:{schema}", "--capabilities", "read_content",
         "--storage-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        ids = started["databases"]
        assert set(ids) == {"Alice", "Bob", "Gone"} and ids["Alice"] == str(uuid.UUID(pinned))

        def post(path: str, body: dict[str, Any]) -> int:
            request = urllib.request.Request(
                started["url"] + path, data=json.dumps(body).encode(), method="POST",
                headers={"Authorization": "Bearer tok", "Notion-Version": "2022-06-28",
                         "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        assert post(f"/v1/databases/{ids['Bob']}/query", {}) == 200
        assert post(f"/v1/databases/{ids['Gone']}/query", {}) == 404
        assert post("/v1/pages", {"parent": {"database_id": ids["Alice"]}, "properties": {
            "Name": {"title": [{"text": {"content": "x"}}]}}}) == 403  # no insert content
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    bad = subprocess.run([sys.executable, "-m", "fake_notion", "--port", "0", "--database",
                          f"A@nope:{schema}"], capture_output=True, timeout=30, check=False)
    assert bad.returncode == 2 and b"valid uuid" in bad.stderr
