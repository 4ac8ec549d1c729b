"""The draft's 104 (Upload Resumption Supported) through the shipped proxy configurations.

A client learns where its upload lives from the 104 before it sends the body; a proxy that
drops it, forwards only the first 1xx, or takes it for the final answer makes a cut-off
creation unresumable. A real gateway process behind a real HAProxy running
``deploy/haproxy.cfg`` itself, spoken to on a raw socket: the 104 must come through before
any byte of the body is sent, and a 100 the client asked for must come after it.

Behind Debian's nginx running ``deploy/nginx.conf`` (its server block, with local addresses)
the 104 cannot pass: nginx takes it for the final response. The config tells the gateway not
to send it, and the connection must stay usable; without that line it does not.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from yarl import URL

from tests.cluster.test_scale_out import Cluster, haproxy_binary, wait_for_proxy
from tests.conftest import ROOT, GatewayProcess, free_port
from tests.gateway.test_ietf import (
    HOST,
    Exchange,
    _read_head,
    _request_head,
    append_headers,
    check_interim,
    complete,
    interop,
    is_complete,
    read_reply,
    send,
)

pytestmark = pytest.mark.allow_blocking  # the fixture waits on processes on purpose


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway (disk store, --behind-proxy) for every proxy here."""
    gateway = GatewayProcess(tmp_path_factory.mktemp("gateway104") / "data", ["--behind-proxy"])
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.kill()


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory: pytest.TempPathFactory, gateway: GatewayProcess) -> Iterator[int]:
    """HAProxy with deploy/haproxy.cfg, its three servers all naming the one gateway.
    Yields the proxy's port."""
    tmp = tmp_path_factory.mktemp("haproxy104")
    port = free_port()
    env = {**os.environ, "HAPROXY_BIND": f"127.0.0.1:{port}",
           **{f"GATEWAY_{i}": f"127.0.0.1:{gateway.port}" for i in (1, 2, 3)}}
    log_path = tmp / "haproxy.log"
    with log_path.open("ab") as log:
        proxy = subprocess.Popen([haproxy_binary(), "-f", str(ROOT / "deploy" / "haproxy.cfg"),
                                  "-db"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_proxy(Cluster([gateway], port, tmp), proxy, log_path)
        yield port
    finally:
        proxy.send_signal(signal.SIGKILL)
        proxy.wait(10)


async def start_creation(port: int, headers: dict[str, str]) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, Exchange]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(_request_head("POST", "/files/", port, headers))
    await writer.drain()
    return reader, writer, Exchange()


@pytest.mark.parametrize("version", [3, 8, 9])
async def test_104_reaches_the_client_before_the_body(haproxy: int, version: int) -> None:
    """The 104 crosses HAProxy while the body is still unsent (HAProxy neither waits for the
    body nor holds the interim answer), with a Location on the proxy; then the 201."""
    body = os.urandom(50_000)
    headers = {**interop(version), **complete(version, True), "Content-Length": str(len(body))}
    reader, writer, exchange = await start_creation(haproxy, headers)
    try:
        exchange.interim.append(await _read_head(reader))
        first = exchange.interim[0]
        assert first.status == 104, first
        location = first.headers["location"]
        assert URL(location).port == haproxy  # the proxy's address, not the gateway's
        writer.write(body)
        await writer.drain()
        answer = await read_reply(reader, exchange, "POST")
    finally:
        writer.close()
    check_interim(version, exchange, location)
    assert (answer.status, answer.offset, answer.headers["location"]) == \
        (201, len(body), location)
    assert is_complete(version, answer)


async def test_104_and_100_both_cross(haproxy: int) -> None:
    """With Expect: 100-continue the gateway sends two interim answers, 104 then 100; a proxy
    that forwards only the first 1xx would leave the client waiting for its 100."""
    headers = {**interop(9), **complete(9, True), "Content-Length": "4",
               "Expect": "100-continue"}
    reader, writer, exchange = await start_creation(haproxy, headers)
    try:
        exchange.interim.append(await _read_head(reader))
        exchange.interim.append(await _read_head(reader))
        assert [r.status for r in exchange.interim] == [104, 100]
        writer.write(b"data")
        await writer.drain()
        answer = await read_reply(reader, exchange, "POST")
    finally:
        writer.close()
    assert (answer.status, answer.offset) == (201, 4)


async def test_cut_off_creation_resumes_through_the_proxy(haproxy: int) -> None:
    """What the 104 is for: the connection breaks midway, the client resumes at the URL it
    was given, through the proxy, and the upload completes."""
    body = os.urandom(300_000)
    headers = {**interop(9), **complete(9, True), "Content-Length": str(len(body))}
    reader, writer, _ = await start_creation(haproxy, headers)
    interim = await _read_head(reader)
    assert interim.status == 104, interim
    path = URL(interim.headers["location"]).path
    writer.write(body[:120_000])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.transport.abort()

    head = (await send(haproxy, "HEAD", path, interop(9))).answer
    assert head.status == 204
    assert 0 < head.offset <= 120_000
    offset = head.offset
    done = (await send(haproxy, "PATCH", path, append_headers(9, offset, True),
                       body[offset:])).answer
    assert (done.status, done.offset, done.headers["upload-complete"]) == (204, len(body), "?1")


# --- nginx ------------------------------------------------------------------------------------
def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        raise RuntimeError("nginx is not installed; `make test` installs it (Debian)")
    return found


SHIPPED_SITE = (ROOT / "deploy" / "nginx.conf").read_text()


def start_nginx(tmp: Path, gateway_port: int, site: str) -> tuple[subprocess.Popen[bytes], int]:
    """nginx in the foreground, unprivileged-friendly (every path under ``tmp``), serving the
    deploy file's server block with a local port and the gateway as its upstream."""
    port = free_port()
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    site, servers = re.subn(r"server gateway\d:1080;", f"server 127.0.0.1:{gateway_port};", site)
    assert servers == 3, "deploy/nginx.conf no longer names gateway1..3:1080"
    temp = " ".join(f"{kind}_temp_path {tmp / kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'error.log'} info;\nevents {{ worker_connections 64; }}\n"
        f"http {{\naccess_log {tmp / 'access.log'};\n{temp}\n{site}\n}}\n")
    proc = subprocess.Popen([nginx_binary(), "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
                             "-e", str(tmp / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(tmp / 'error.log').read_text()[-2000:]}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory, gateway: GatewayProcess) -> Iterator[int]:
    proc, port = start_nginx(tmp_path_factory.mktemp("nginx104"), gateway.port, SHIPPED_SITE)
    try:
        yield port
    finally:
        stop(proc)


class KeptAlive:
    """One keep-alive connection carrying requests one after the other, as a browser or
    URLSession sends them; an answer that does not come within ``timeout_s`` raises."""

    def __init__(self, port: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.port, self.reader, self.writer = port, reader, writer

    @classmethod
    async def open(cls, port: int) -> KeptAlive:
        return cls(port, *await asyncio.open_connection(HOST, port))

    async def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                   timeout_s: float = 10) -> Exchange:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()
        exchange = Exchange()
        await asyncio.wait_for(read_reply(self.reader, exchange, method), timeout_s)
        return exchange

    def close(self) -> None:
        self.writer.close()


async def test_nginx_creation_without_104_keeps_the_connection(nginx: int) -> None:
    """Through deploy/nginx.conf a draft creation gets no 104 but a 201 with the upload's URL
    on the proxy, and the same connection carries the append, HEAD and creation that follow."""
    conn = await KeptAlive.open(nginx)
    try:
        created = await conn.send("POST", "/files/", {**interop(9), **complete(9, False)})
        assert created.interim == []
        assert created.answer.status == 201
        location = created.answer.headers["location"]
        assert URL(location).port == nginx
        path = URL(location).path
        appended = (await conn.send("PATCH", path, append_headers(9, 0, True), b"abc")).answer
        assert (appended.status, appended.offset) == (204, 3)
        assert is_complete(9, appended)
        head = (await conn.send("HEAD", path, interop(9))).answer
        assert (head.status, head.offset) == (204, 3)
        whole = await conn.send("POST", "/files/", {**interop(9), **complete(9, True)}, b"xyz")
        assert whole.interim == []
        assert (whole.answer.status, whole.answer.offset) == (201, 3)
    finally:
        conn.close()


async def test_nginx_without_the_setting_hangs_the_connection(
        tmp_path: Path, gateway: GatewayProcess) -> None:
    """Why deploy/nginx.conf sets X-Interim-Responses: without it, nginx 1.22 relays the 104
    as if it were the final response and the real one as its body, then holds the connection
    for the rest of that body: the next request on it gets no answer."""
    site, found = re.subn(r"\n\s*proxy_set_header X-Interim-Responses none;", "", SHIPPED_SITE)
    assert found == 1
    proc, port = start_nginx(tmp_path, gateway.port, site)
    conn = await KeptAlive.open(port)
    try:
        created = await conn.send("POST", "/files/", {**interop(9), **complete(9, True)}, b"x")
        assert [r.status for r in created.interim] == [104]
        assert created.answer.status == 201
        with pytest.raises(asyncio.TimeoutError):
            await conn.send("HEAD", URL(created.answer.headers["location"]).path, interop(9),
                            timeout_s=2)
    finally:
        conn.close()
        stop(proc)
