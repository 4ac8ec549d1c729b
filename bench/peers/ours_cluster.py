"""Our gateway on the Redis state store, as bench/run.py's servers ours-redis*.

Starts, as its own children:

* one ``redis-server`` on a free loopback port, its files under ``<data-dir>/redis``,
  persisted the way production runs it (append-only file, fsync on every write, no RDB
  snapshots);
* ``--instances`` gateways (``.venv/bin/tus-gateway serve --redis-url ...``) that share
  ``<data-dir>/spool`` as their data dir. Without ``--proxy`` a single instance listens on
  ``--port`` itself;
* with ``--proxy``, HAProxy running ``deploy/haproxy.cfg`` (the production config) in the
  foreground, listening on ``--port``, its GATEWAY_1..3 pointing at the instances (all three
  at the one instance when ``--instances 1``).

Once every part answers (Redis PING, OPTIONS /files/ on each instance and through the proxy,
then two health-check intervals so that HAProxy counts every instance up) it prints
``READY_LINE`` ("ours_cluster: ready") on a line of its own and waits. SIGTERM or SIGINT
stops the children in order (proxy, gateways, Redis: SIGTERM, then SIGKILL after
``--stop-timeout``) and exits 0. If a child dies on its own, the rest are stopped and the
launcher exits 1.

The children stay in the launcher's process group, so signalling the group reaches them all,
and each asks the kernel (PR_SET_PDEATHSIG) for SIGKILL should the launcher die without
cleaning up; the launcher itself asks for SIGTERM when its own parent dies. A benchmark
that is killed outright therefore leaves nothing running.

Standard library only; output of every child goes to the launcher's stdout/stderr.

    .venv/bin/python bench/peers/ours_cluster.py --port 8080 --data-dir /tmp/x --instances 3 --proxy
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GATEWAY_BIN = REPO / ".venv" / "bin" / "tus-gateway"
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
READY_LINE = "ours_cluster: ready"
PR_SET_PDEATHSIG = 1
# deploy/haproxy.cfg checks every 500 ms and needs two passing checks ("rise 2").
HEALTH_SETTLE_S = 1.2

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(sig: int) -> None:
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Stop(Exception):
    """SIGTERM or SIGINT arrived."""


_stopping = False


def _on_signal(signum: int, _frame: object) -> None:
    global _stopping
    if not _stopping:
        _stopping = True
        raise Stop(signal.Signals(signum).name)


def log(msg: str) -> None:
    print(f"ours_cluster[{os.getpid()}]: {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find(name: str, fallback: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return fallback if Path(fallback).exists() else None


class Child:
    # a plain class: dataclasses imports inspect, some 2 MiB more RSS
    def __init__(self, role: str, proc: subprocess.Popen[bytes], port: int) -> None:
        self.role = role  # "redis", "gateway1".., "haproxy"
        self.proc = proc
        self.port = port


def spawn(role: str, argv: list[str], port: int, env: dict[str, str] | None = None) -> Child:
    me = os.getpid()

    def pre() -> None:  # runs in the child between fork and exec
        _die_with_parent(signal.SIGKILL)
        if os.getppid() != me:  # the launcher died before prctl took effect
            os._exit(1)

    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=sys.stdout,
        stderr=sys.stderr,
        env=env,
        preexec_fn=pre,  # the launcher is single-threaded
    )
    log(f"started {role} pid {proc.pid} port {port}: {' '.join(argv)}")
    return Child(role, proc, port)


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def options_ok(port: int) -> bool:
    """OPTIONS /files/ answers 204 (what deploy/haproxy.cfg checks too)."""
    # A raw request rather than http.client, whose imports (email.*) would add some 6 MiB
    # to the launcher, and so to the peak RSS the benchmark reports for the whole tree.
    request = (
        f"OPTIONS /files/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Tus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                got = sock.recv(4096)
                if not got:
                    break
                head += got
    except OSError:
        return False
    return head.split(b" ", 2)[1:2] == [b"204"]


def wait_until(
    what: str, check: Callable[[], bool], children: list[Child], deadline: float
) -> None:
    while True:
        for child in children:
            if child.proc.poll() is not None:
                raise RuntimeError(
                    f"{child.role} exited with code {child.proc.returncode} while waiting "
                    f"for {what}"
                )
        if check():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop(children: list[Child], timeout: float) -> None:
    """Stop in reverse start order (proxy, gateways, Redis): SIGTERM, then SIGKILL."""
    groups: list[list[Child]] = []
    for role in ("haproxy", "gateway", "redis"):
        group = [c for c in children if c.role.startswith(role)]
        if group:
            groups.append(group)
    for group in groups:
        for child in group:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in group:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{child.role} pid {child.proc.pid} ignored SIGTERM; SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.proc.wait(timeout=5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--port", type=int, required=True, help="where clients connect")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--proxy", action="store_true", help="put HAProxy in front")
    parser.add_argument("--redis-prefix", default="tusbench")
    parser.add_argument("--gateway-bin", type=Path, default=GATEWAY_BIN)
    parser.add_argument("--haproxy-cfg", type=Path, default=HAPROXY_CFG)
    parser.add_argument("--ready-timeout", type=float, default=40.0)
    parser.add_argument("--stop-timeout", type=float, default=8.0, help="per stage, then SIGKILL")
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    if args.proxy and args.instances not in (1, 3):
        parser.error("--proxy takes --instances 1 or 3 (deploy/haproxy.cfg names 3 servers)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    redis_bin = find("redis-server", "/usr/bin/redis-server")
    haproxy_bin = find("haproxy", "/usr/sbin/haproxy")
    if redis_bin is None:
        log("redis-server not found")
        return 2
    if args.proxy and haproxy_bin is None:
        log("haproxy not found")
        return 2

    # Stop when bench/run.py (or whoever started us) goes away without stopping us.
    _die_with_parent(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    data = args.data_dir.resolve()
    spool, redis_dir = data / "spool", data / "redis"
    spool.mkdir(parents=True, exist_ok=True)
    redis_dir.mkdir(parents=True, exist_ok=True)

    children: list[Child] = []
    code = 0
    try:
        deadline = time.monotonic() + args.ready_timeout
        redis_port = free_port()
        children.append(
            spawn(
                "redis",
                [
                    str(redis_bin),
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(redis_dir),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "yes",
                ],
                redis_port,
            )
        )
        wait_until("redis PING", lambda: redis_ping(redis_port), children, deadline)

        direct = not args.proxy and args.instances == 1
        env = dict(os.environ)
        env.pop("REDIS_URL", None)  # the flag below names it; nothing else may
        gateways: list[Child] = []
        for i in range(1, args.instances + 1):
            port = args.port if direct else free_port()
            argv = [
                str(args.gateway_bin),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(spool),
                "--base-path",
                "/files/",
                "--redis-url",
                f"redis://127.0.0.1:{redis_port}/0",
                "--redis-prefix",
                args.redis_prefix,
            ]
            if args.proxy:
                argv.append("--behind-proxy")  # as deploy/compose.yaml runs them
            gateways.append(spawn(f"gateway{i}", argv, port, env))
        children.extend(gateways)
        for gw in gateways:
            wait_until(
                f"{gw.role} OPTIONS /files/ -> 204",
                functools.partial(options_ok, gw.port),
                children,
                deadline,
            )

        if args.proxy:
            assert haproxy_bin is not None
            targets = gateways * 3 if len(gateways) == 1 else gateways
            hp_env = {
                **os.environ,
                "HAPROXY_BIND": f"127.0.0.1:{args.port}",
                **{f"GATEWAY_{i}": f"127.0.0.1:{gw.port}" for i, gw in enumerate(targets, 1)},
            }
            children.append(
                spawn(
                    "haproxy",
                    [haproxy_bin, "-f", str(args.haproxy_cfg), "-db"],
                    args.port,
                    hp_env,
                )
            )
            wait_until(
                "OPTIONS /files/ through haproxy -> 204",
                lambda: options_ok(args.port),
                children,
                deadline,
            )
            time.sleep(HEALTH_SETTLE_S)
            if not all(options_ok(args.port) for _ in range(6)):
                raise RuntimeError("OPTIONS through haproxy failed after the instances were up")

        pids = " ".join(f"{c.role}={c.proc.pid}:{c.port}" for c in children)
        log(f"ready on 127.0.0.1:{args.port} ({pids})")
        print(READY_LINE, flush=True)

        while True:
            time.sleep(0.2)
            dead = [c for c in children if c.proc.poll() is not None]
            if dead:
                time.sleep(0.3)  # a group-wide SIGTERM may be on its way to us too
                raise RuntimeError(
                    "; ".join(f"{c.role} exited with code {c.proc.returncode}" for c in dead)
                )
    except Stop as sig:
        log(f"{sig}: stopping")
    except RuntimeError as exc:
        log(f"FAILED: {exc}; stopping the rest")
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop(children, args.stop_timeout)
    log(f"stopped, exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
