"""Real ``redis-server`` processes on free loopback ports, started and stopped by tests.

Persistence is on the way production should run it (append-only file, fsync on every
write), so killing and restarting it keeps every committed offset. Besides one server:
``SentinelSet`` (a primary, replicas and three Sentinels, quick to fail over) and
``ClusterSet`` (a Redis Cluster of three primaries).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if found is None:
        raise RuntimeError("redis-server is not installed; `make test` installs it "
                           "(Debian package redis-server)")
    return found


@dataclass
class RedisServer:
    workdir: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--daemonize", "no", "--protected-mode", "yes",
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start: {self.log()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, like a crashed Redis; the append-only file keeps what it acknowledged."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _sync_client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0,
                       socket_connect_timeout=2.0)


def _wait(what: str, check: Callable[[], bool], timeout_s: float, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} within {timeout_s} s: {log()}")


@dataclass
class SentinelProcess:
    """One Sentinel: ``redis-sentinel`` where Debian has it apart, else ``redis-server
    --sentinel`` (the same program in Sentinel mode)."""

    workdir: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, service: str, primary_port: int, *, down_after_ms: int,
              failover_timeout_ms: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"  # Sentinel rewrites it: its own copy
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {service} 2\n")
        program = shutil.which("redis-sentinel")
        command = [program, str(conf)] if program else [redis_binary(), str(conf), "--sentinel"]
        log = (self.workdir / "sentinel.log").open("ab")
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        path = self.workdir / "sentinel.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@dataclass
class SentinelSet:
    """A primary, its replica(s) and three Sentinels (quorum 2) that fail over within a
    couple of seconds of the primary's death."""

    workdir: Path
    replicas: int = 1
    service: str = "tusprimary"
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[SentinelProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> None:
        primary = RedisServer(self.workdir / "redis-0")
        self.servers.append(primary)
        primary.start()
        for i in range(1, self.replicas + 1):
            replica = RedisServer(self.workdir / f"redis-{i}",
                                  extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
            self.servers.append(replica)
            replica.start()
        client = _sync_client(primary.port)
        _wait("the replicas did not catch up", lambda: _online_replicas(client) == self.replicas,
              15, self.logs)
        for i in range(3):
            sentinel = SentinelProcess(self.workdir / f"sentinel-{i}")
            self.sentinels.append(sentinel)
            # Quick, but not so quick that a loaded machine's pause looks like a death.
            sentinel.start(self.service, primary.port, down_after_ms=1000,
                           failover_timeout_ms=3000)

        def know_all() -> bool:
            for sentinel in self.sentinels:
                state: Any = _sync_client(sentinel.port).sentinel_master(self.service)
                if (int(state["num-other-sentinels"]) < 2
                        or int(state["num-slaves"]) < self.replicas):
                    return False
            return True

        # Sentinels find each other through the primary (a hello every 2 s); a failover
        # before they do would find no quorum.
        _wait("the Sentinels did not find each other", know_all, 20, self.logs)

    def primary(self) -> RedisServer:
        """The server the Sentinels name as primary now."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError, OSError):
                address: Any = _sync_client(sentinel.port).sentinel_get_master_addr_by_name(
                    self.service)
                return next(s for s in self.servers if s.port == int(address[1]))
        raise RuntimeError(f"no Sentinel answers: {self.logs()}")

    def wait_for_primary(self, other_than: RedisServer, timeout_s: float = 30) -> RedisServer:
        """The server the Sentinels promote in place of ``other_than``, once every Sentinel
        names it: one that still names the old primary would send clients back to it,
        were it restarted meanwhile."""

        def named() -> set[int]:
            ports = set()
            for sentinel in self.sentinels:
                address: Any = _sync_client(sentinel.port).sentinel_get_master_addr_by_name(
                    self.service)
                ports.add(int(address[1]))
            return ports

        _wait("the Sentinels did not agree on a new primary",
              lambda: len(ports := named()) == 1 and other_than.port not in ports,
              timeout_s, self.logs)
        return self.primary()

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.kill()

    def logs(self) -> str:
        return "\n".join([s.log() for s in self.servers] + [s.log() for s in self.sentinels])


def _online_replicas(client: redis.Redis) -> int:
    info = client.info("replication")
    return sum(1 for key, value in info.items()
               if key.startswith("slave") and isinstance(value, dict)
               and value.get("state") == "online")


@dataclass
class ClusterSet:
    """A Redis Cluster of three primaries (and ``replicas`` replicas each), its slots
    split evenly."""

    workdir: Path
    masters: int = 3
    replicas: int = 0
    servers: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def start(self) -> None:
        for i in range(self.masters * (1 + self.replicas)):
            server = RedisServer(self.workdir / f"node-{i}")
            # The cluster bus on a free port of its own: by default it is the port plus
            # 10000, which may be taken, or past 65535.
            server.extra_args = ["--cluster-enabled", "yes", "--cluster-config-file",
                                 str(server.workdir / "nodes.conf"),
                                 "--cluster-port", str(_free_port()),
                                 "--cluster-node-timeout", "2000"]
            self.servers.append(server)
            server.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run([cli, "--cluster", "create",
                        *(f"127.0.0.1:{s.port}" for s in self.servers),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        clients = [_sync_client(s.port) for s in self.servers]
        _wait("the cluster did not come up",
              lambda: all(c.cluster("INFO").get("cluster_state") == "ok" for c in clients),
              20, self.logs)
        if self.replicas:
            primaries = [c for c in clients if c.info("replication")["role"] == "master"]
            _wait("the replicas did not catch up",
                  lambda: all(_online_replicas(c) == self.replicas for c in primaries),
                  20, self.logs)

    def stop(self) -> None:
        for server in self.servers:
            server.kill()

    def logs(self) -> str:
        return "\n".join(s.log() for s in self.servers)
