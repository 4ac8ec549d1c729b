"""tus-js-client (Node) against a real ``tus-gateway serve`` process.

Each test starts its own gateway, writes a random file, runs ``tests/js/upload.mjs`` with a JSON
config and checks the request log the script reports and the delivered bytes (SHA-256 of
``complete/<filename>`` and of ``GET <upload url>``). Node and ``tests/js/node_modules`` come
from ``make install-test``; without them these tests fail rather than skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.clients.support import MiB, assert_delivered, head, head_offset, random_file
from tests.conftest import ROOT, GatewayProcess

JS_DIR = ROOT / "tests" / "js"
SCRIPT = JS_DIR / "upload.mjs"
NODE_TIMEOUT_S = 120
# Not a multiple of 1 MiB on purpose: tus-js-client 4.3.1 hangs on a deferred-length stream
# whose size is an exact multiple of chunkSize (tus/tus-js-client#779), a client bug.
SIZE = 5_000_000

Gateways = Callable[..., GatewayProcess]
Result = dict[str, Any]


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; the tus-js-client tests need Node 18 or later "
                    "(Node 20 is what CI uses)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,
                             check=True).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < 18:
        pytest.fail(f"node {version} is too old; tus-js-client needs Node 18 or later")
    if not (JS_DIR / "node_modules" / "tus-js-client" / "package.json").is_file():
        pytest.fail("tests/js/node_modules is missing: run `make install-test` "
                    "(or `cd tests/js && npm ci`) before the tests")
    return node


def run_js(config: dict[str, Any], tmp_path: Path, gw: GatewayProcess,
           expect: str = "success") -> Result:
    """Run one upload with upload.mjs; returns its JSON report."""
    node = node_binary()
    # A unique name: several uploads may run at once from threads sharing tmp_path.
    config_path = tmp_path / f"js-config-{uuid.uuid4().hex}.json"
    config_path.write_text(json.dumps({"timeoutMs": (NODE_TIMEOUT_S - 20) * 1000, **config}))
    try:
        proc = subprocess.run([node, str(SCRIPT), str(config_path)], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"upload.mjs did not finish in {NODE_TIMEOUT_S}s: {exc}\n{gw.log()}")
    lines = proc.stdout.strip().splitlines()
    try:
        result: Result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"upload.mjs printed no report (exit {proc.returncode})\n"
                    f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}\n{gw.log()}")
    assert result["status"] == expect, (
        f"expected {expect}, got {result['status']}: {result.get('error')}\n"
        f"requests: {json.dumps(result.get('requests'), indent=1)[-3000:]}\n"
        f"stderr: {proc.stderr[-2000:]}\n{gw.log()}")
    answered = [r for r in result["requests"] if r["status"] is not None]
    bad = [r for r in answered if not 200 <= r["status"] < 300]
    assert not bad, f"the gateway answered with errors: {bad}\n{gw.log()}"
    return result


def requests_of(result: Result, method: str) -> list[dict[str, Any]]:
    return [r for r in result["requests"] if r["method"] == method]


def offsets(requests: list[dict[str, Any]]) -> list[int]:
    return [int(r["responseHeaders"]["Upload-Offset"]) for r in requests]


def test_whole_file_in_one_request(gateway_process: Gateways, tmp_path: Path) -> None:
    gw = gateway_process()
    source = random_file(tmp_path / "whole.bin", SIZE)
    result = run_js({"endpoint": gw.url, "file": str(source),
                     "metadata": {"filename": "whole.bin", "filetype": "application/octet-stream"}},
                    tmp_path, gw)
    posts, patches = requests_of(result, "POST"), requests_of(result, "PATCH")
    assert len(posts) == 1 and len(patches) == 1, result["requests"]
    assert posts[0]["headers"]["Upload-Length"] == str(SIZE)
    assert posts[0]["responseHeaders"]["Location"] == result["url"]
    assert patches[0]["headers"]["Upload-Offset"] == "0"
    assert offsets(patches) == [SIZE]
    assert_delivered(gw, result["url"], source, "whole.bin")


def test_chunks_of_one_mib(gateway_process: Gateways, tmp_path: Path) -> None:
    gw = gateway_process()
    source = random_file(tmp_path / "chunked.bin", SIZE)
    result = run_js({"endpoint": gw.url, "file": str(source), "chunkSize": MiB,
                     "metadata": {"filename": "chunked.bin"}}, tmp_path, gw)
    patches = requests_of(result, "PATCH")
    expected = [min(SIZE, (i + 1) * MiB) for i in range(-(-SIZE // MiB))]
    assert offsets(patches) == expected
    assert [int(p["headers"]["Upload-Offset"]) for p in patches] == [0, *expected[:-1]]
    assert_delivered(gw, result["url"], source, "chunked.bin")


@pytest.mark.parametrize("transfer", ["one-slow-request", "chunks"])
def test_abort_and_resume_from_fingerprint(gateway_process: Gateways, tmp_path: Path,
                                           transfer: str) -> None:
    """Run 1 aborts midway and exits; run 2 finds the upload by the file's fingerprint in the
    same URL storage file and continues from the gateway's offset, not from 0."""
    gw = gateway_process()
    source = random_file(tmp_path / "resume.bin", SIZE)
    storage = tmp_path / "tus-url-storage.json"
    config: dict[str, Any] = {"endpoint": gw.url, "file": str(source),
                              "urlStorage": str(storage),
                              "metadata": {"filename": "resume.bin"}}
    if transfer == "chunks":
        config["chunkSize"] = 512 * 1024
    else:
        # One PATCH for the whole file, paced so the abort lands inside that request.
        config["throttleBytesPerSecond"] = 4 * MiB

    first = run_js({**config, "abortAfterBytes": 2 * MiB}, tmp_path, gw, expect="aborted")
    url = first["url"]
    assert url and requests_of(first, "POST")[0]["responseHeaders"]["Location"] == url
    assert first["bytesUploaded"] < SIZE
    stored = json.loads(storage.read_text())
    assert [entry["uploadUrl"] for entry in stored.values()] == [url], stored
    assert not (gw.data_dir / "complete" / "resume.bin").exists()

    offset_before = head_offset(url)
    assert 0 < offset_before < SIZE, f"offset after the aborted run: {offset_before}"

    second = run_js({**config, "resume": True}, tmp_path, gw)
    assert second["previousUploads"] == 1
    assert second["resumedFrom"] == url
    assert second["url"] == url
    assert not requests_of(second, "POST"), "the resumed run created a new upload"
    first_request = second["requests"][0]
    assert first_request["method"] == "HEAD"
    assert int(first_request["responseHeaders"]["Upload-Offset"]) == offset_before
    patches = requests_of(second, "PATCH")
    assert int(patches[0]["headers"]["Upload-Offset"]) == offset_before
    assert second["firstProgress"] == offset_before
    assert offsets(patches)[-1] == SIZE
    assert_delivered(gw, url, source, "resume.bin")


def test_parallel_uploads_concatenate(gateway_process: Gateways, tmp_path: Path) -> None:
    gw = gateway_process()
    source = random_file(tmp_path / "parallel.bin", SIZE)
    result = run_js({"endpoint": gw.url, "file": str(source), "parallelUploads": 4,
                     "metadata": {"filename": "parallel.bin"}}, tmp_path, gw)
    posts = requests_of(result, "POST")
    partials = [p for p in posts if p["headers"].get("Upload-Concat") == "partial"]
    finals = [p for p in posts if p["headers"].get("Upload-Concat", "").startswith("final;")]
    assert len(partials) == 4 and len(finals) == 1, posts
    assert sum(int(p["headers"]["Upload-Length"]) for p in partials) == SIZE
    partial_urls = [p["responseHeaders"]["Location"] for p in partials]
    # The parts start concurrently, so the log's order is not the file's order; the final's
    # bytes below show the gateway joined them in the order the final names them.
    named = finals[0]["headers"]["Upload-Concat"].removeprefix("final;").split(" ")
    assert sorted(named) == sorted(partial_urls)
    final_url = finals[0]["responseHeaders"]["Location"]
    assert result["url"] == final_url
    assert all(offsets(requests_of(result, "PATCH")))
    info = head(final_url)
    assert info["Upload-Concat"] is not None and info["Upload-Concat"].startswith("final;")
    for partial_url in partial_urls:
        assert head(partial_url)["Upload-Concat"] == "partial"
    assert_delivered(gw, final_url, source, "parallel.bin")
    # Partial uploads are pieces, not files: only the final reaches the sink.
    assert [p.name for p in (gw.data_dir / "complete").iterdir()] == ["parallel.bin"]


@pytest.mark.parametrize("chunk_size", [None, MiB], ids=["whole-file", "first-mib"])
def test_upload_data_during_creation(gateway_process: Gateways, tmp_path: Path,
                                     chunk_size: int | None) -> None:
    gw = gateway_process()
    source = random_file(tmp_path / "creation.bin", SIZE)
    result = run_js({"endpoint": gw.url, "file": str(source), "chunkSize": chunk_size,
                     "uploadDataDuringCreation": True,
                     "metadata": {"filename": "creation.bin"}}, tmp_path, gw)
    posts, patches = requests_of(result, "POST"), requests_of(result, "PATCH")
    assert len(posts) == 1
    assert posts[0]["headers"]["Content-Type"] == "application/offset+octet-stream"
    if chunk_size is None:
        assert offsets(posts) == [SIZE] and not patches
    else:
        assert offsets(posts) == [chunk_size]
        assert int(patches[0]["headers"]["Upload-Offset"]) == chunk_size
        assert offsets(patches)[-1] == SIZE
    assert_delivered(gw, result["url"], source, "creation.bin")


def test_upload_length_deferred_from_a_stream(gateway_process: Gateways,
                                              tmp_path: Path) -> None:
    """The source is a plain Readable, so the client learns the length only at its end."""
    gw = gateway_process()
    source = random_file(tmp_path / "deferred.bin", SIZE)
    result = run_js({"endpoint": gw.url, "file": str(source), "source": "stream",
                     "chunkSize": MiB, "uploadLengthDeferred": True,
                     "metadata": {"filename": "deferred.bin"}}, tmp_path, gw)
    posts, patches = requests_of(result, "POST"), requests_of(result, "PATCH")
    assert len(posts) == 1
    assert posts[0]["headers"].get("Upload-Defer-Length") == "1"
    assert "Upload-Length" not in posts[0]["headers"]
    declared = [p for p in patches if "Upload-Length" in p["headers"]]
    assert len(declared) == 1 and declared[0] is patches[-1], patches
    assert declared[0]["headers"]["Upload-Length"] == str(SIZE)
    assert offsets(patches)[-1] == SIZE
    assert head(result["url"])["Upload-Length"] == str(SIZE)
    assert_delivered(gw, result["url"], source, "deferred.bin")
