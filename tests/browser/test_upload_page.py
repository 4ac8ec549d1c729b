"""The upload page: served from package data, and used for real in headless Chromium.

The browser test starts two gateways: A serves the page, B (another port, so another origin)
takes the uploads and allows only A's origin. ``drive.mjs`` (playwright-core, launching
Debian's chromium) adds two files through the Dashboard's file input, starts them, reloads
the page midway, adds the same files again, pauses and resumes, and waits for the page's
list, "Your uploads", to show them finished. The checks use what the browser sent (its
request log), what B logged (its JSON access log) and what B stored (SHA-256 over GET and of
``complete/``). The other browser tests cover the page exactly as shipped (a gateway's
defaults, ``/`` with nothing in the address: the gateway's list of uploads, rows kept live by
event streams with no status polling, download links), the list of one user with --auth
bearer, where the #token= bearer goes (read off loopback relays, as the server behind them
got the requests) and the Dashboard's retry button.
``chromium``, Node and ``tests/browser/node_modules`` come from ``make install-test``;
without them the browser test fails rather than skips.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.config import GatewayConfig
from gateway.page import INDEX, PageFiles, page_slots
from tests.clients.support import MiB, assert_delivered, random_file
from tests.clients.test_cli_upload import Proxy
from tests.conftest import ROOT, ClientFactory, GatewayProcess

BROWSER_DIR = ROOT / "tests" / "browser"
DRIVER = BROWSER_DIR / "drive.mjs"
WEB_DIR = ROOT / "web"
STATIC_DIR = ROOT / "gateway" / "static"
ARTIFACTS = ROOT / "test-artifacts"
DRIVER_TIMEOUT_S = 150
# Not multiples of the chunk size, so each file ends with a short PATCH.
FILES = {"first.bin": 3_000_000, "second.bin": 2_200_000}
CHUNK_BYTES = 256 * 1024

Gateways = Callable[..., GatewayProcess]
Report = dict[str, Any]
TUS_METHODS = ("POST", "HEAD", "PATCH", "DELETE")
# A request's head as it crossed a relay: request line, then header lines up to a blank line.
REQUEST_HEAD = re.compile(
    rb"(GET|HEAD|POST|PATCH|DELETE|OPTIONS) (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n", re.DOTALL)

# The page does not care where state lives; one backend is enough.
disk_only = pytest.mark.parametrize("backend", ["disk"], indirect=True)


def tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: {hint}")
    return path


def run_driver(config: dict[str, Any], tmp_path: Path, *gateways: GatewayProcess) -> Report:
    node = tool("node", "the browser test needs Node 18 or later (CI uses Node 20)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        pytest.fail("tests/browser/node_modules is missing: run `make install-test` "
                    "(or `cd tests/browser && npm ci`)")
    config_path = tmp_path / "driver.json"
    config_path.write_text(json.dumps(config))
    logs = "\n".join(gw.log() for gw in gateways)
    try:
        proc = subprocess.run([node, str(DRIVER), str(config_path)], cwd=BROWSER_DIR,
                              capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"drive.mjs did not finish in {DRIVER_TIMEOUT_S}s: {exc}\n{logs}")
    lines = proc.stdout.strip().splitlines()
    try:
        report: Report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"drive.mjs printed no report (exit {proc.returncode})\n"
                    f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}")
    assert report["status"] == "ok", (
        f"{report['error']}\nrequests: {json.dumps(report['requests'], indent=1)[-3000:]}\n"
        f"console: {report['consoleErrors']}\nscreenshot: {config['screenshot']}\n"
        + "\n".join(gw.log() for gw in gateways))
    return report


def access_log(gw: GatewayProcess) -> list[dict[str, Any]]:
    """Every request line the gateway logged (JSON, one object per line)."""
    assert gw.log_path is not None
    lines = []
    for line in gw.log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("logger") == "gateway.access":
            lines.append(record)
    return lines


def relayed(relay: Proxy) -> list[tuple[str, str, dict[str, str]]]:
    """The tus requests a relay passed on: method, path and headers (names in lower case),
    read from the bytes themselves, as the server behind it got them."""
    found = []
    for match in REQUEST_HEAD.finditer(bytes(relay.sent)):
        method, path = match[1].decode(), match[2].decode()
        if method not in TUS_METHODS or not path.startswith("/files/"):
            continue
        headers = {}
        for line in match[3].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        found.append((method, path, headers))
    return found


@pytest.fixture
def relays() -> Iterator[Callable[[], Proxy]]:
    """Loopback TCP relays, each its own origin in front of a gateway, that keep every byte
    the browser sent through them. The gateway's port is set once it runs (the gateway's
    flags may name a relay's origin, so the relay comes first)."""
    made: list[Proxy] = []

    def factory() -> Proxy:
        made.append(Proxy(target_port=0))
        return made[-1]

    yield factory
    for relay in made:
        relay.close()


def keep_artifact(screenshot: Path, name: str = "upload-page-dashboard.png") -> Path:
    """Copy the screenshot where CI collects artifacts; tmp_path is gone after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / name
    shutil.copyfile(screenshot, kept)
    return kept


@disk_only
@pytest.mark.slow
def test_dashboard_uploads_two_files_cross_origin_and_resumes_after_reload(
        gateway_process: Gateways, tmp_path: Path) -> None:
    chromium = tool("chromium", "run `make install-test`, which installs Debian's chromium")
    page_gw = gateway_process(data_dir=tmp_path / "page")
    page_origin = f"http://127.0.0.1:{page_gw.port}"
    # Only the page's origin may upload: the test fails if CORS is not what lets it through.
    upload_gw = gateway_process("--cors-origins", page_origin, data_dir=tmp_path / "uploads")
    upload_origin = f"http://127.0.0.1:{upload_gw.port}"
    sources: dict[str, Path] = {}
    for name, size in FILES.items():
        sources[name] = random_file(tmp_path / name, size)
    screenshot = tmp_path / "dashboard.png"

    report = run_driver({
        "chromium": chromium,
        "pageUrl": f"{page_origin}/?endpoint={upload_gw.url}&chunkSize={CHUNK_BYTES}",
        "uploadOrigin": upload_origin,
        "files": [str(p) for p in sources.values()],
        # About 12 PATCHes per file, 150 ms each: the reload after 6 lands near a quarter.
        "patchDelayMs": 150,
        "reloadAfterPatches": 6,
        "pauseMs": 800,
        "screenshot": str(screenshot),
        "timeoutMs": (DRIVER_TIMEOUT_S - 30) * 1000,
    }, tmp_path, page_gw, upload_gw)
    kept = keep_artifact(screenshot)
    assert kept.read_bytes().startswith(b"\x89PNG"), kept
    requests = report["requests"]
    assert not report["consoleErrors"], report["consoleErrors"]

    # One creation per file, before the reload; after it, the same uploads go on.
    posts = [r for r in requests if r["method"] == "POST"]
    assert [p["phase"] for p in posts] == ["first", "first"], posts
    urls = sorted(p["location"] for p in posts)
    assert all(url.startswith(upload_gw.url) for url in urls), urls
    answered = {r["status"] for r in requests if r["status"] is not None}
    # 423: a request cut off by the reload or the pause may still hold the upload for a
    # moment; Uppy asks again.
    assert answered <= {200, 201, 204, 423}, requests
    for url in urls:
        mine = [r for r in requests if r["url"] == url]
        before = [r for r in mine if r["phase"] == "first" and r["status"] == 204]
        assert before, f"nothing of {url} was sent before the reload: {mine}"
        after = [r for r in mine if r["phase"] == "second"]
        assert after[0]["method"] == "HEAD", after
        resumed_at = int(after[0]["responseOffset"])
        assert resumed_at >= int(before[-1]["responseOffset"]) > 0, mine
        first_patch = next(r for r in after if r["method"] == "PATCH")
        assert int(first_patch["requestOffset"]) == resumed_at, after
        # Pausing stops the upload: no request for it starts until resumed.
        assert not [r for r in mine if r["phase"] == "paused"], mine
    assert len(report["fingerprints"]) == len(FILES), report["fingerprints"]
    assert all(upload_gw.url in key for key in report["fingerprints"])

    # B's own account: every byte arrived about once, never a restart from zero.
    by_id = {url.rsplit("/", 1)[1]: url for url in urls}
    patched: dict[str, int] = dict.fromkeys(by_id, 0)
    for line in access_log(upload_gw):
        if line["method"] == "PATCH" and line.get("upload_id") in patched:
            patched[line["upload_id"]] += line["bytes_in"]
    for name, size in FILES.items():
        upload_id = next(i for i, u in by_id.items()
                         if any(r["url"] == u and r["responseOffset"] == str(size)
                                for r in requests))
        assert size <= patched[upload_id] < 2 * size, (name, patched)
    page_requests = {(line["method"], line["path"], line["status"])
                     for line in access_log(page_gw)}
    assert {("GET", "/", 200), ("GET", "/static/upload-page.js", 200),
            ("GET", "/static/upload-page.css", 200)} <= page_requests, page_requests
    # The uploads went to B only (OPTIONS is the fixture asking whether A is up).
    assert not [(m, p) for m, p, _s in page_requests
                if p.startswith("/files/") and m != "OPTIONS"], page_requests

    # The page's list: each file finished, with the upload's status and the sink's state.
    results = {r["uploadUrl"]: r for r in report["results"]}
    assert sorted(results) == urls, report["results"]
    for result in results.values():
        assert result["done"] and result["status"] == "drained", result
        assert result["sinkStatus"] == "drained", result
    # Progress while uploading: Uppy's bytes and time left, the page's speed.
    assert any(re.search(r"\d+ s(ec)? left|\d+s left", t) for t in report["statusBarText"]), (
        report["statusBarText"])
    assert any(speed > 0 for speed in report["speeds"]), report["liveText"]
    assert any("/s · about" in t for t in report["liveText"]), report["liveText"]

    for name, source in sources.items():
        url = next(r["uploadUrl"] for r in report["results"] if r["text"].startswith(name))
        assert_delivered(upload_gw, url, source, name)


def tus_send(collection: str, data: bytes, name: str, *, upto: int | None = None,
             token: str | None = None) -> str:
    """Another client's upload, made with plain tus requests: create, then PATCH the first
    ``upto`` bytes (all by default). Returns the upload URL."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    metadata = ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in
                        {"filename": name, "filetype": "application/octet-stream"}.items())
    created = urllib.request.Request(collection, method="POST", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)),
        "Upload-Metadata": metadata, **auth})
    with urllib.request.urlopen(created, timeout=10) as answer:
        assert answer.status == 201, answer.status
        url = urllib.parse.urljoin(collection, str(answer.headers["Location"]))
    body = data[:len(data) if upto is None else upto]
    patch = urllib.request.Request(url, data=body, method="PATCH", headers={
        "Tus-Resumable": "1.0.0", "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream", **auth})
    with urllib.request.urlopen(patch, timeout=10) as answer:
        assert answer.status == 204, answer.status
    return url


def status_of(gw: GatewayProcess, upload_id: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.port}/api/upload/status/{upload_id}", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        status: dict[str, Any] = json.loads(answer.read())
        return status


def wait_drained(gw: GatewayProcess, upload_id: str, token: str | None = None) -> None:
    """The test's own wait (not the browser's) for the sink to deliver an upload."""
    deadline = time.monotonic() + 10
    while status_of(gw, upload_id, token)["status"] != "drained":
        assert time.monotonic() < deadline, status_of(gw, upload_id, token)
        time.sleep(0.05)


def upload_id_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def api_requests(report: Report, kind: str) -> list[dict[str, Any]]:
    """The page's requests to one of the gateway's /api/ paths, from the browser's log."""
    return [r for r in report["network"]
            if urllib.parse.urlsplit(r["url"]).path.startswith(f"/api/{kind}")]


@disk_only
@pytest.mark.slow
def test_page_as_shipped_uploads_to_its_own_gateway(
        gateway_process: Gateways, relays: Callable[[], Proxy], tmp_path: Path) -> None:
    """What a new user gets: a gateway with its defaults, the page at / with nothing in the
    address, two files chosen through the Dashboard. Every other browser test sets options in
    the address, so this is the one that sees the page's own defaults at work.

    The page is reached through a loopback relay that paces what the browser sends (3 MiB/s),
    so an upload lasts long enough for the gateway's progress events to show in its row.
    Two uploads another client made before the page opened, one finished and one half sent,
    are in "Your uploads" from the start: the list is the gateway's, not this browser's."""
    chromium = tool("chromium", "run `make install-test`, which installs Debian's chromium")
    gw = gateway_process()
    relay = relays()
    relay.target_port = gw.port
    relay.rate_bytes_per_s = 3 * MiB
    origin = relay.url("")
    earlier = random_file(tmp_path / "earlier.bin", 300_000)
    earlier_id = upload_id_of(tus_send(gw.url, earlier.read_bytes(), "earlier.bin"))
    half_id = upload_id_of(tus_send(gw.url, os.urandom(200_000), "half.bin", upto=50_000))
    wait_drained(gw, earlier_id)
    # Not multiples of any chunk size, so a chunked send would end with a short PATCH.
    files = {"three.bin": 3 * MiB + 12_345, "small.bin": 760 * 1024 + 321}
    sources = [random_file(tmp_path / name, size) for name, size in files.items()]
    screenshot = tmp_path / "as-shipped.png"
    report = run_driver({
        "chromium": chromium,
        "pageUrl": f"{origin}/",
        "uploadOrigin": origin,
        "files": [str(p) for p in sources],
        "patchDelayMs": 0,
        "reloadAfterPatches": 0,
        "pauseMs": 0,
        # A page that loops on PATCH fails here within moments, not at the timeout.
        "maxPatches": 20,
        "waitForList": True,
        "downloadDir": str(tmp_path / "downloads"),
        "screenshot": str(screenshot),
        "timeoutMs": 25_000,
    }, tmp_path, gw)
    keep_artifact(screenshot, "upload-page-as-shipped.png")
    assert not report["consoleErrors"], report["consoleErrors"]
    assert len(report["results"]) == len(files), report["results"]
    sent_ids = []
    for name, source in zip(files, sources, strict=True):
        result = next(r for r in report["results"] if r["text"].startswith(name))
        assert result["uploadUrl"].startswith(relay.url()), result
        assert result["done"] and result["status"] == "drained", result
        assert result["sinkStatus"] == "drained" and result["download"], result
        assert_delivered(gw, result["uploadUrl"], source, name)
        sent_ids.append(result["uploadId"])

    # On open, before anything was added: the other client's uploads, as the gateway says.
    opened = {row["uploadId"]: row for row in report["openList"]}
    assert set(opened) == {earlier_id, half_id}, report["openList"]
    assert opened[earlier_id]["status"] == "drained" and opened[earlier_id]["download"]
    assert opened[half_id]["status"] == "receiving", opened[half_id]
    assert float(opened[half_id]["percent"]) == 25.0 and not opened[half_id]["download"]
    # Afterwards, newest first: this page's two above the earlier ones.
    assert [row["uploadId"] for row in report["listed"]][2:] == [half_id, earlier_id], (
        report["listed"])

    # Each Download link gives the file's bytes.
    downloaded = {d["uploadId"]: Path(d["path"]).read_bytes() for d in report["downloads"]}
    assert set(downloaded) == {*sent_ids, earlier_id}, report["downloads"]
    assert downloaded[earlier_id] == earlier.read_bytes()
    for upload_id, source in zip(sent_ids, sources, strict=True):
        assert downloaded[upload_id] == source.read_bytes(), upload_id

    # Live from the event streams, never by asking again: no status request at all, one
    # list request, and one stream per upload that was not final (the earlier, finished
    # one gets none).
    assert not api_requests(report, "upload/status/"), api_requests(report, "upload/status/")
    assert len(api_requests(report, "uploads")) == 1, api_requests(report, "uploads")
    streams = [upload_id_of(r["url"]) for r in api_requests(report, "upload/events/")]
    assert sorted(streams) == sorted([*sent_ids, half_id]), streams
    # The rows changed with the events: the first status, then more as the upload
    # finished and drained; progress while the bytes arrived, shown as a percent between.
    for result in report["results"]:
        assert result["statusEvents"] >= 2, result
    big = sent_ids[0]
    assert any(s["progressEvents"] > 0 for s in report["rowSamples"] if s["uploadId"] == big)
    # (An upload sent in one PATCH stays "created" until that PATCH commits its bytes.)
    assert any(s["status"] in ("created", "receiving") and 0 < float(s["percent"]) < 100
               for s in report["rowSamples"] if s["uploadId"] == big), report["rowSamples"]

    # The gateway's own account: each file in a PATCH or two, none sent empty over and over.
    patches = [line for line in access_log(gw)
               if line["method"] == "PATCH" and line.get("upload_id") in sent_ids]
    assert len(patches) <= 2 * len(files), [(p["status"], p["bytes_in"]) for p in patches]
    assert len([p for p in patches if p["bytes_in"] == 0]) <= 1, patches
    assert sum(p["bytes_in"] for p in patches) == sum(files.values()), patches


@disk_only
@pytest.mark.slow
def test_page_lists_only_the_uploads_of_the_tokens_user(gateway_process: Gateways,
                                                       tmp_path: Path) -> None:
    """With --auth bearer the list is the token's user's: alice's page shows her uploads, a
    page at a time ("More"), and none of bob's; her own uploads from the page join them,
    followed live over streams that carry her token too, and connected again when cut.
    With --allowed-types, a file whose bytes are not what it claims is rejected after it
    arrived, and its row says why."""
    chromium = tool("chromium", "run `make install-test`, which installs Debian's chromium")
    gw = gateway_process("--auth", "bearer", "--auth-tokens", "alice=TOKEN_A,bob=TOKEN_B",
                         "--allowed-types", "image/png,application/octet-stream")
    origin = f"http://127.0.0.1:{gw.port}"

    # Text, which no sniffer takes for a binary format, so a .bin (octet-stream) is kept.
    def text(label: str, size: int) -> bytes:
        return (label.encode() * (size // len(label) + 1))[:size]

    # One more than a page of the list.
    alices = [upload_id_of(tus_send(gw.url, text(f"alice {i} ", 1000 + i), f"alice-{i:02}.bin",
                                    token="TOKEN_A")) for i in range(21)]
    bobs = [upload_id_of(tus_send(gw.url, text("bob ", 500), "bob.bin", token="TOKEN_B")),
            upload_id_of(tus_send(gw.url, text("bob ", 500), "bob-half.bin", upto=10,
                                  token="TOKEN_B"))]
    for upload_id in alices:
        wait_drained(gw, upload_id, "TOKEN_A")
    kept = tmp_path / "from-page.bin"
    kept.write_bytes(text("from the page ", 400_000))
    # The browser claims image/png for it (by its name); the bytes are no PNG.
    fake = random_file(tmp_path / "fake.png", 300_000)
    report = run_driver({
        "chromium": chromium,
        "pageUrl": f"{origin}/#token=TOKEN_A",
        "uploadOrigin": origin,
        "files": [str(kept), str(fake)],
        "patchDelayMs": 0,
        "reloadAfterPatches": 0,
        "pauseMs": 0,
        "maxPatches": 6,
        "waitForList": True,
        "clickMore": True,
        "dropFirstStream": True,
        "screenshot": str(tmp_path / "alice.png"),
        "timeoutMs": 25_000,
    }, tmp_path, gw)
    keep_artifact(tmp_path / "alice.png", "upload-page-user-list.png")
    assert not report["consoleErrors"], report["consoleErrors"]
    newest_first = alices[::-1]
    assert [row["uploadId"] for row in report["openList"]] == newest_first[:20]
    assert [row["uploadId"] for row in report["afterMore"]] == newest_first
    assert all(row["status"] == "drained" for row in report["afterMore"])
    assert len(report["results"]) == 2, report["results"]
    good = next(r for r in report["results"] if r["text"].startswith("from-page.bin"))
    bad = next(r for r in report["results"] if r["text"].startswith("fake.png"))
    assert good["status"] == "drained" and good["download"], good
    assert_delivered_with(gw, good["uploadUrl"], kept, "TOKEN_A")
    assert bad["status"] == "rejected" and bad["done"] and not bad["download"], bad
    # The gateway's reason, not the page's fallback for a rejection without one.
    assert bad["rejected"].startswith("Rejected: the ") and "no reason" not in bad["rejected"]
    shown = [row["uploadId"] for row in report["listed"]]
    assert sorted(shown[:2]) == sorted([good["uploadId"], bad["uploadId"]]), shown
    assert shown[2:] == newest_first, report["listed"]
    assert not set(shown) & set(bobs)
    # Each stream was cut at once the first time (the driver's doing); the page connected
    # again after a pause, once, and not again after the final status.
    streams = api_requests(report, "upload/events/")
    for row in (good, bad):
        tries = [r["at"] for r in streams if upload_id_of(r["url"]) == row["uploadId"]]
        assert len(tries) == 2 and tries[1] - tries[0] >= 150, (row, streams)
    # Every request of the list and of the streams carried alice's token.
    api = api_requests(report, "uploads") + api_requests(report, "upload/events/")
    assert len(api_requests(report, "uploads")) == 2 and api, report["network"]
    assert all(r["authorization"] == "Bearer TOKEN_A" for r in api), api
    assert not api_requests(report, "upload/status/")


def assert_delivered_with(gw: GatewayProcess, url: str, source: Path, token: str) -> None:
    """An upload of a user: its bytes over GET with the user's token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.read() == source.read_bytes()


@disk_only
@pytest.mark.slow
def test_token_goes_only_to_the_pages_own_origin_and_listed_ones(
        gateway_process: Gateways, relays: Callable[[], Proxy], tmp_path: Path) -> None:
    """One gateway behind three relays, each another origin. The page, served through
    ``own``, sends its #token= to its own origin and to the one --page-token-origins lists,
    and keeps it from an endpoint that a link names but the operator did not list."""
    chromium = tool("chromium", "run `make install-test`, which installs Debian's chromium")
    own, listed, unlisted = relays(), relays(), relays()
    gw = gateway_process("--page-token-origins", listed.url(""))
    for relay in (own, listed, unlisted):
        relay.target_port = gw.port
    token = "page-token-3f9a"
    sources = {relay: random_file(tmp_path / f"{name}.bin", 200_000 + i * 1000)
               for i, (name, relay) in enumerate(
                   {"own": own, "listed": listed, "unlisted": unlisted}.items())}
    page = own.url("/")
    report = run_driver({
        "chromium": chromium,
        "pageUrl": f"{page}#token={token}",
        "uploadOrigin": own.url(""),
        "files": [str(sources[own])],
        "patchDelayMs": 0,
        "reloadAfterPatches": 0,
        "pauseMs": 0,
        "thenVisit": [
            {"pageUrl": f"{page}?endpoint={relay.url()}#token={token}",
             "files": [str(sources[relay])]} for relay in (listed, unlisted)],
        "maxPatches": 10,
        "screenshot": str(tmp_path / "token.png"),
        "timeoutMs": 25_000,
    }, tmp_path, gw)
    assert not report["consoleErrors"], report["consoleErrors"]

    bearer = f"Bearer {token}"
    for relay in (own, listed, unlisted):
        sent = relayed(relay)
        assert {"POST", "PATCH"} <= {method for method, _path, _headers in sent}, sent
        if relay is unlisted:
            assert not [h for _m, _p, h in sent if "authorization" in h], sent
            assert token.encode() not in relay.sent
        else:
            assert all(h.get("authorization") == bearer for _m, _p, h in sent), sent
    results = [report["results"], *(v["results"] for v in report["visits"])]
    for relay, shown in zip((own, listed, unlisted), results, strict=True):
        name = sources[relay].name
        assert len(shown) == 1 and shown[0]["text"].startswith(name), shown
        assert shown[0]["done"] and shown[0]["uploadUrl"].startswith(relay.url()), shown
        assert_delivered(gw, shown[0]["uploadUrl"], sources[relay], name)


@disk_only
@pytest.mark.slow
def test_dropped_file_is_sent_again_by_the_retry_button(gateway_process: Gateways,
                                                        tmp_path: Path) -> None:
    """The file arrives by drag and drop; every PATCH fails until Uppy gives up (no automatic
    retries here); the Dashboard's retry button then carries on with the same upload."""
    chromium = tool("chromium", "run `make install-test`, which installs Debian's chromium")
    gw = gateway_process()
    source = random_file(tmp_path / "retried.bin", 700_000)
    screenshot = tmp_path / "retried.png"
    report = run_driver({
        "chromium": chromium,
        "pageUrl": f"http://127.0.0.1:{gw.port}/?retryDelays=&chunkSize={CHUNK_BYTES}",
        "uploadOrigin": f"http://127.0.0.1:{gw.port}",
        "files": [str(source)],
        "dropFiles": True,
        "patchDelayMs": 0,
        "reloadAfterPatches": 0,
        "pauseMs": 0,
        "failUntilRetry": True,
        "screenshot": str(screenshot),
        "timeoutMs": 60_000,
    }, tmp_path, gw)
    requests = report["requests"]
    posts = [r for r in requests if r["method"] == "POST"]
    assert len(posts) == 1 and posts[0]["phase"] == "first", requests
    url = posts[0]["location"]
    failed = [r for r in requests if r["phase"] == "first" and r["method"] == "PATCH"]
    assert failed and all(r["failure"] for r in failed), requests
    retried = [r for r in requests if r["phase"] == "retried" and r["url"] == url]
    assert retried and all(r["status"] in (200, 204) for r in retried), retried
    assert [r["uploadUrl"] for r in report["results"]] == [url]
    assert_delivered(gw, url, source, "retried.bin")
    assert (tmp_path / "retried-error.png").is_file()


@disk_only
async def test_page_and_its_files_come_from_the_package(make_client: ClientFactory) -> None:
    client: TestClient[Any, Any] = await make_client()
    page = await client.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert '<meta name="tus-base-path" content="/files/">' in html
    # Nothing from elsewhere: every script, style and icon is the gateway's own.
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith(("static/", "data:")), ref
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]

    script = await client.get("/static/upload-page.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert await script.read() == (STATIC_DIR / "upload-page.js").read_bytes()
    style = await client.get("/static/upload-page.css")
    assert style.status == 200 and style.content_type == "text/css"
    assert b"uppy-Dashboard" in await style.read()
    licences = await client.get("/static/THIRD-PARTY-LICENSES.txt")
    assert licences.status == 200 and "@uppy/core" in await licences.text()

    again = await client.get("/static/upload-page.js",
                             headers={"If-None-Match": script.headers["ETag"]})
    assert again.status == 304 and not await again.read()
    for missing in ("/static/index.js", "/static/..%2Fpage.py", "/static/"):
        assert (await client.get(missing)).status == 404, missing
    # A tus client sent to / (an upload URL resolved there) still learns there is no upload.
    for method in ("HEAD", "GET", "PATCH", "DELETE", "POST"):
        lost = await client.request(method, "/", headers={"Tus-Resumable": "1.0.0"})
        assert lost.status == 404, method


@disk_only
async def test_page_uploads_to_the_configured_base_path(make_client: ClientFactory) -> None:
    client: TestClient[Any, Any] = await make_client(base_path="/up/")
    html = await (await client.get("/")).text()
    assert '<meta name="tus-base-path" content="/up/">' in html


@disk_only
async def test_page_names_the_origins_its_token_may_go_to(make_client: ClientFactory) -> None:
    default: TestClient[Any, Any] = await make_client()
    assert '<meta name="tus-token-origins" content="">' in await (await default.get("/")).text()
    client: TestClient[Any, Any] = await make_client(
        page_token_origins=("https://a.example", "http://127.0.0.1:8080"))
    html = await (await client.get("/")).text()
    assert ('<meta name="tus-token-origins" content="https://a.example '
            'http://127.0.0.1:8080">') in html


async def test_page_values_are_escaped_and_written_once() -> None:
    # validate() keeps quotes out of origins; the base path is only checked for its slashes.
    config = GatewayConfig(base_path='/a"><script>{{token_origins}}/',
                           page_token_origins=("https://a.example",))
    html = (await PageFiles(page_slots(config)).get(INDEX)).body.decode()
    assert ('<meta name="tus-base-path" content="/a&quot;&gt;&lt;script&gt;{{token_origins}}/">'
            in html)
    assert '<meta name="tus-token-origins" content="https://a.example">' in html


@pytest.mark.parametrize("origin", [
    "*", "https://a.example/", "https://a.example/path", "https://a.example?x", "ftp://a.example",
    "https://user@a.example", "https://a.example:port", 'https://a"b.example', "a.example", ""])
def test_token_origins_must_be_origins(origin: str) -> None:
    with pytest.raises(ValueError, match="page_token_origins"):
        GatewayConfig(page_token_origins=(origin,)).validate()


def test_token_origins_come_from_a_comma_separated_setting() -> None:
    config = GatewayConfig.from_env(
        {"TUS_PAGE_TOKEN_ORIGINS": "https://a.example, http://[::1]:8080"})
    assert config.page_token_origins == ("https://a.example", "http://[::1]:8080")


@disk_only
async def test_page_can_be_switched_off(make_client: ClientFactory) -> None:
    client: TestClient[Any, Any] = await make_client(upload_page=False)
    for path in ("/", "/static/upload-page.js"):
        assert (await client.get(path)).status == 404, path
    # The uploads themselves are unaffected.
    created = await client.post("/files/", headers={"Tus-Resumable": "1.0.0",
                                                    "Upload-Length": "1"})
    assert created.status == 201


@disk_only
async def test_page_steps_aside_when_the_uploads_live_at_the_root(
        make_client: ClientFactory) -> None:
    client: TestClient[Any, Any] = await make_client(base_path="/")
    answer = await client.get("/")
    assert answer.content_type != "text/html"
    created = await client.post("/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1"})
    assert created.status == 201


# Feeds web/src/sse.js what a server might send, cut anywhere: every split of one text into
# two chunks, then one character per chunk, and a body of one byte per chunk (UTF-8 split,
# after a byte order mark).
SSE_CHECK = r"""
import { pathToFileURL } from 'node:url'
const { SseParser, readEvents } = await import(pathToFileURL(process.argv[1]).href)
const parse = (chunks) => {
  const events = []
  const retries = []
  const parser = new SseParser((e) => events.push(e), (ms) => retries.push(ms))
  for (const chunk of chunks) parser.push(chunk)
  parser.end()
  return { events, retries }
}
const text = process.argv[2]
const whole = parse([text])
const splits = []
for (let i = 0; i <= text.length; i++) splits.push(parse([text.slice(0, i), text.slice(i)]))
splits.push(parse([...text]))
// The body starts with a byte order mark, which the decoder drops (as it must).
const bytes = new TextEncoder().encode(`\ufeff${text}`)
const body = new ReadableStream({ start(c) {
  for (const b of bytes) c.enqueue(Uint8Array.of(b))
  c.close()
} })
const read = { events: [], retries: [] }
await readEvents(body, (e) => read.events.push(e), { onRetry: (ms) => read.retries.push(ms) })
console.log(JSON.stringify({ whole, splits, read }))
"""


def test_event_stream_parser_reads_events_cut_anywhere() -> None:
    node = tool("node", "the parser check needs Node 18 or later (CI uses Node 20)")
    stream = ("retry: 3000\r\n: ping\r\n\r\nevent: status\r\ndata: {\"a\":\"é€\"}\r\n\r\n"
              "event: progress\rdata:x\r\rdata: two\ndata:  lines\nid: 7\n\n"
              "event: nothing\n\nretry: 2s\nunknown: field\ndata\n\n"
              "event: gone\ndata: {}\n")  # the last event never ends: dropped
    proc = subprocess.run([node, "--input-type=module", "-e", SSE_CHECK,
                           str(WEB_DIR / "src" / "sse.js"), stream],
                          capture_output=True, text=True, timeout=30, check=True)
    found = json.loads(proc.stdout)
    assert found["whole"] == {"retries": [3000], "events": [
        {"event": "status", "data": '{"a":"é€"}', "id": ""},
        {"event": "progress", "data": "x", "id": ""},
        {"event": "message", "data": "two\n lines", "id": "7"},
        {"event": "message", "data": "", "id": "7"}]}
    assert all(split == found["whole"] for split in found["splits"])
    assert found["read"] == found["whole"]


def test_shipped_bundle_is_built_from_the_sources(tmp_path: Path) -> None:
    """gateway/static/ is committed; it must be what `make web` makes from web/ today."""
    node = tool("node", "the bundle check needs Node 18 or later (CI uses Node 20)")
    if not (WEB_DIR / "node_modules" / "esbuild" / "package.json").is_file():
        pytest.fail("web/node_modules is missing: run `make install-test` "
                    "(or `cd web && npm ci`)")
    subprocess.run([node, "build.mjs", str(tmp_path)], cwd=WEB_DIR, check=True,
                   capture_output=True, timeout=120)
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in STATIC_DIR.iterdir())
    stale = [name for name in built
             if (tmp_path / name).read_bytes() != (STATIC_DIR / name).read_bytes()]
    assert not stale, f"gateway/static/ is out of date ({stale}): run `make web`"
    # A page, not an application: a size that loads quickly on a slow link.
    assert (STATIC_DIR / "upload-page.js").stat().st_size < MiB
