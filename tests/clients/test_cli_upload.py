"""``tus-gateway upload`` as a real process, against a real gateway and against @tus/server.

The CLI talks to the gateway through ``Proxy``, a small TCP relay in this test process: it
sees every byte the client sends, so a test can count PATCH requests and their
``Upload-Checksum`` headers, slow the upload down so a SIGKILL lands inside a PATCH, or cut
a connection once. The gateway's JSON access log (one line per request with ``bytes_in``)
shows what the server received. @tus/server comes from ``tests/js`` (``make install-test``);
without Node or its packages that test fails rather than skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import pty
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.support import MiB, assert_delivered, download, head_offset, random_file
from tests.conftest import ROOT, GatewayProcess, free_port
from tus_client.board import board_lines
from tus_client.retry import RetryPolicy
from tus_client.store import FingerprintStore
from tus_client.transfer import Transfer

JS_DIR = ROOT / "tests" / "js"
CLI_TIMEOUT_S = 90
Gateways = Callable[..., GatewayProcess]


# --- a relay in front of the server ------------------------------------------------------------
class Proxy:
    """A loopback TCP relay to ``127.0.0.1:<target_port>``.

    ``rate_bytes_per_s`` paces what the client sends (None: as fast as it comes);
    ``cut_after_bytes`` drops the connection once after that many client bytes in total.
    ``sent`` holds everything the client sent, so tests can look at the requests.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.rate_bytes_per_s: float | None = None
        self.cut_after_bytes: int | None = None
        self.upstream_bytes = 0
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/files/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests(self, method: str, since: int = 0) -> int:
        """How many ``method`` requests the client sent (after byte ``since``)."""
        with self._lock:
            # Bodies are not framed by CRLF, so match the whole request line instead.
            return len(re.findall(method.encode() + rb" /files/[^ \r\n]* HTTP/1\.1\r\n",
                                  bytes(self.sent[since:])))

    def header_values(self, name: str, since: int = 0) -> list[str]:
        with self._lock:
            found = re.findall(rb"\r\n" + name.encode() + rb": ([^\r\n]*)\r\n",
                               bytes(self.sent[since:]))
        return [v.decode() for v in found]

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = source.recv(64 * 1024)
                if not data:
                    break
                if from_client:
                    with self._lock:
                        self.sent += data
                        self.upstream_bytes += len(data)
                        cut = (self.cut_after_bytes is not None
                               and self.upstream_bytes >= self.cut_after_bytes)
                        if cut:
                            self.cut_after_bytes = None
                    sink.sendall(data)
                    if cut:
                        break
                    rate = self.rate_bytes_per_s
                    if rate:
                        time.sleep(len(data) / rate)
                else:
                    sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def proxy_to() -> Iterator[Callable[[int], Proxy]]:
    proxies: list[Proxy] = []

    def factory(port: int) -> Proxy:
        proxies.append(Proxy(port))
        return proxies[-1]

    yield factory
    for p in proxies:
        p.close()


# --- helpers -----------------------------------------------------------------------------------
def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "upload", *args]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), cwd=ROOT, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL)


def access_lines(gw: GatewayProcess, method: str) -> list[dict[str, Any]]:
    assert gw.log_path is not None
    lines = []
    for raw in gw.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(raw)
            if record.get("logger") == "gateway.access" and record.get("method") == method:
                lines.append(record)
    return lines


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def stored_urls(store: Path) -> list[str]:
    if not store.exists():
        return []
    return [entry["url"] for entry in json.loads(store.read_text())["uploads"].values()]


# --- tests -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_files_with_chunks_and_checksum(gateway_process: Gateways, proxy_to: Callable[
        [int], Proxy], tmp_path: Path) -> None:
    gw = gateway_process("--log-level", "info")
    proxy = proxy_to(gw.port)
    big = random_file(tmp_path / "big.bin", 5 * MiB + 12345)
    small = tmp_path / "notes.txt"
    small.write_text("a small text file\n")
    store = tmp_path / "store.json"

    result = run_cli(str(big), str(small), proxy.url(), "--chunk-size", "1MiB",
                     "--store", str(store))

    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "not a terminal: nothing but errors on stderr"
    urls = result.stdout.splitlines()
    assert len(urls) == 2, result.stdout
    for url, source in zip(urls, (big, small), strict=True):
        body, _ = download(url)  # the printed URL itself, through the relay
        assert sha256(body) == sha256(source.read_bytes()), source.name
    direct = [gw.url + u.rsplit("/", 1)[-1] for u in urls]
    assert_delivered(gw, direct[0], big, "big.bin")
    assert_delivered(gw, direct[1], small, "notes.txt")
    # Six 1 MiB PATCHes for the big file (the last one short), one for the small.
    assert proxy.requests("PATCH") == 7
    assert proxy.requests("POST") == 1 + 1
    # Content-Length on every PATCH: some proxies and servers refuse chunked bodies.
    assert proxy.header_values("Transfer-Encoding") == []
    assert len(proxy.header_values("Content-Length")) >= 7
    checksums = proxy.header_values("Upload-Checksum")
    assert len(checksums) == 7 and all(c.startswith("sha1 ") for c in checksums), checksums
    metadata = proxy.header_values("Upload-Metadata")
    assert any("filetype dGV4dC9wbGFpbg==" in m for m in metadata), metadata  # text/plain
    assert stored_urls(store) == [], "finished uploads stay in the fingerprint store"


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
@pytest.mark.slow
def test_sha256_by_request_and_a_dropped_connection(gateway_process: Gateways, proxy_to:
                                                    Callable[[int], Proxy],
                                                    tmp_path: Path) -> None:
    """The connection is cut once inside a PATCH: the CLI asks for the offset with HEAD and
    sends only what the gateway did not get; quietly, since stderr is not a terminal."""
    gw = gateway_process("--log-level", "info")
    proxy = proxy_to(gw.port)
    source = random_file(tmp_path / "cut.bin", 4 * MiB)
    proxy.cut_after_bytes = 2 * MiB

    result = run_cli(str(source), proxy.url(), "--checksum", "sha256", "--chunk-size", "0",
                     "--store", str(tmp_path / "store.json"))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    url = gw.url + result.stdout.strip().rsplit("/", 1)[-1]
    assert_delivered(gw, url, source, "cut.bin")
    assert proxy.requests("HEAD") == 1
    assert proxy.requests("PATCH") == 2
    assert all(c.startswith("sha256 ") for c in proxy.header_values("Upload-Checksum"))
    patches = access_lines(gw, "PATCH")
    # The cut-off PATCH is logged too (its bytes could not be verified, so none were kept);
    # the ones the gateway acknowledged add up to the file exactly.
    acknowledged = [p for p in patches if 200 <= p["status"] < 300]
    assert len(patches) == 2 and len(acknowledged) == 1, patches
    assert sum(p["bytes_in"] for p in acknowledged) == source.stat().st_size, patches


# Without a checksum the gateway keeps every byte of a cut-off PATCH, so the second run starts
# in the middle of what the first one sent. With one it must drop the unverifiable rest of
# the PATCH (tus checksum extension), so the second run starts after the last whole chunk.
@pytest.mark.parametrize("checksum", ["none", "sha1"])
@pytest.mark.slow
def test_killed_midway_resumes_from_the_servers_offset(gateway_process: Gateways, proxy_to:
                                                       Callable[[int], Proxy],
                                                       tmp_path: Path, checksum: str) -> None:
    gw = gateway_process("--log-level", "info")
    proxy = proxy_to(gw.port)
    size = 6 * MiB
    source = random_file(tmp_path / "resume.bin", size)
    store = tmp_path / "store.json"
    args = (str(source), proxy.url(), "--store", str(store), "--checksum", checksum,
            "--chunk-size", "1MiB" if checksum != "none" else "8MiB")
    proxy.rate_bytes_per_s = 2 * MiB  # about 3 s for the whole file

    first = subprocess.Popen(cli_command(*args), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: proxy.upstream_bytes >= 2.5 * MiB, 30, "2.5 MiB through the proxy")
    finally:
        first.kill()
        out, _err = first.communicate(timeout=10)
    assert out == b"", "a killed upload printed a URL"
    [url] = stored_urls(store)
    direct = gw.url + url.rsplit("/", 1)[-1]
    # The gateway saves what it read once it notices the disconnect (or the next request
    # for the upload pre-empts the dangling PATCH); wait until the offset stops moving.
    seen: list[int] = []

    def settled() -> bool:
        seen.append(head_offset(direct))
        return len(seen) >= 3 and seen[-1] == seen[-3] > 0
    wait_for(settled, 15, "the gateway's offset to settle after the kill")
    offset_before = seen[-1]
    assert 0 < offset_before < size
    if checksum != "none":
        assert offset_before % MiB == 0, "a partial chunk with a checksum was kept"
    patches_before = len(access_lines(gw, "PATCH"))

    proxy.rate_bytes_per_s = None
    mark = len(proxy.sent)
    second = run_cli(*args)

    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == url, "the second run did not resume the stored upload"
    assert proxy.requests("POST", since=mark) == 0, "the second run created a new upload"
    assert proxy.requests("HEAD", since=mark) == 1
    assert proxy.header_values("Upload-Offset", since=mark)[0] == str(offset_before)
    resumed = access_lines(gw, "PATCH")[patches_before:]
    assert {p["status"] for p in resumed} == {204}, resumed
    # No byte reached the server twice: the resumed run sent exactly what was missing.
    assert sum(p["bytes_in"] for p in resumed) == size - offset_before, resumed
    body, _ = download(direct)
    assert sha256(body) == sha256(source.read_bytes())
    assert stored_urls(store) == []


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_progress_on_a_terminal(gateway_process: Gateways, proxy_to: Callable[[int], Proxy],
                                tmp_path: Path) -> None:
    gw = gateway_process()
    proxy = proxy_to(gw.port)
    # About three seconds, in 1 MiB PATCHes: the progress is confirmed as it goes, whatever
    # the socket buffers swallow at once.
    proxy.rate_bytes_per_s = 4 * MiB
    source = random_file(tmp_path / "shown.bin", 12 * MiB)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        proc = subprocess.Popen(
            cli_command(str(source), proxy.url(), "--chunk-size", "1MiB",
                        "--store", str(tmp_path / "store.json")),
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal,
            env=os.environ.copy())
        os.close(terminal)
        screen = bytearray()
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the last holder of the terminal's other end is gone
                break
            if not chunk:
                break
            screen += chunk
        stdout = proc.communicate(timeout=10)[0].decode()
        assert proc.returncode == 0, screen.decode(errors="replace")
    finally:
        os.close(controller)
    text = screen.decode(errors="replace")
    assert stdout.strip().startswith(proxy.url()), stdout
    frames = text.count("shown.bin")
    assert frames >= 3, text
    assert "\x1b[2K" in text  # redrawn in place
    assert re.search(r"\d+\.\d [KM]iB/s ETA \d+:\d\d", text), text
    assert re.search(r"\] +[1-9]\d?\.\d% ", text), "no frame between 0% and 100%"
    assert "100.0%" in text and "done" in text, text


def node_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; this test needs Node 20.19 or later")
    if not (JS_DIR / "node_modules" / "@tus" / "server" / "package.json").is_file():
        pytest.fail("tests/js/node_modules lacks @tus/server: run `make install-test` "
                    "(or `cd tests/js && npm ci`) before the tests")
    port = free_port()
    directory = tmp_path / "tus-node-store"
    directory.mkdir()
    log = (tmp_path / "tus-node.log").open("wb")
    proc = subprocess.Popen([node, "tus-server.mjs", "--port", str(port), "--dir",
                             str(directory)], cwd=JS_DIR, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}/files"

    def answers() -> bool:
        assert proc.poll() is None, (tmp_path / "tus-node.log").read_text()
        request = urllib.request.Request(url, method="OPTIONS")
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=1):
            return True
        return False

    try:
        wait_for(answers, 30, "@tus/server to answer")
        yield url, directory
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def tus_node_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    yield from node_server(tmp_path)


def test_upload_to_tus_node_server(tus_node_server: tuple[str, Path], tmp_path: Path) -> None:
    url, directory = tus_node_server
    big = random_file(tmp_path / "big.bin", 3 * MiB + 7)
    small = random_file(tmp_path / "small.bin", 1000)
    store = tmp_path / "store.json"

    result = run_cli(str(big), str(small), url, "--chunk-size", "1MiB", "--parallel", "2",
                     "--store", str(store))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    urls = result.stdout.splitlines()
    assert len(urls) == 2 and all(u.startswith(url + "/") for u in urls), urls
    for upload_url, source in zip(urls, (big, small), strict=True):
        stored = directory / upload_url.rsplit("/", 1)[-1]
        assert sha256(stored.read_bytes()) == sha256(source.read_bytes()), source.name
        info = json.loads(stored.with_name(stored.name + ".json").read_text())
        assert info["metadata"]["filename"] == source.name
    assert stored_urls(store) == []

    # @tus/server has no checksum extension: insisting on one fails before any upload.
    refused = run_cli(str(small), url, "--checksum", "sha256", "--store", str(store))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert "does not announce the sha256 checksum" in refused.stderr
    assert len(list(directory.iterdir())) == 4


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    missing = run_cli(str(tmp_path / "nope.bin"), "http://127.0.0.1:9/files/")
    assert missing.returncode == 2 and "not a regular file" in missing.stderr
    existing = random_file(tmp_path / "x.bin", 10)
    no_url = run_cli(str(existing), str(existing))
    assert no_url.returncode == 2 and "not an http(s) URL" in no_url.stderr
    bad_size = run_cli(str(existing), "http://127.0.0.1:9/files/", "--chunk-size", "lots")
    assert bad_size.returncode == 2 and bad_size.stdout == ""


# --- the pure parts ----------------------------------------------------------------------------
def test_retry_policy_backs_off_with_a_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(retries=3, base_s=0.5, cap_s=1.5)
    assert [policy.delay(n, None, 1.0) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]
    assert policy.delay(3, None, 0.0) == 0.0  # full jitter reaches down to no wait
    assert policy.delay(4, None, 1.0) is None  # the budget is spent
    assert policy.delay(1, 7.0, 0.3) == 7.0  # Retry-After is a floor ...
    assert RetryPolicy(max_retry_after_s=60).delay(1, 3600.0, 0.5) == 60  # ... within reason


def test_a_crowded_board_shows_the_active_files_and_a_summary() -> None:
    transfers = [Transfer(Path(f"f{i}.bin"), 100) for i in range(30)]
    transfers[0].finished = True
    transfers[1].finished, transfers[1].error = True, "POST answered 413"
    transfers[2].state = "sending"
    assert len(board_lines(transfers[:5], 0.0, 100, 24)) == 5
    lines = board_lines(transfers, 0.0, 100, 24)
    assert [line.split()[0] for line in lines[:-1]] == ["f2.bin"]
    assert lines[-1] == "1 of 30 files uploaded, 1 failed"


def test_fingerprint_store_keeps_entries_of_concurrent_writers(tmp_path: Path) -> None:
    store_path = tmp_path / "state" / "uploads.json"

    async def writer(n: int) -> None:
        store = FingerprintStore(store_path)
        await store.put(f"key{n}", f"http://h/files/{n}", tmp_path / f"{n}.bin", n)

    async def all_writers() -> None:
        await asyncio.gather(*(writer(n) for n in range(20)))
        await FingerprintStore(store_path).remove("key3")

    asyncio.run(all_writers())
    assert sorted(stored_urls(store_path)) == sorted(f"http://h/files/{n}" for n in range(20)
                                                     if n != 3)
