"""Side-by-side tus upload benchmark: our gateway against peer servers on loopback.

Each (scenario, repetition, server) triple gets a fresh server process on a free
127.0.0.1 port with a fresh temporary data directory; bench/loadgen.py drives it
from a separate process. After each run the server's peak RSS (VmHWM, summed
over the server process and any live descendants) and CPU time are read from
/proc, the uploads are verified, the server is stopped and its data directory
deleted. Results go to bench/RESULTS.md and are printed.

    bash bench/setup.sh && .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --quick                   # small sizes, ~1 minute
    .venv/bin/python bench/run.py --servers ours,tus-node --scenarios a,c --reps 5

Our gateway on its Redis state store (started by bench/peers/ours_cluster.py with its
own redis-server, and HAProxy for the -x1/-x3 variants) is not in the default list:

    .venv/bin/python bench/run.py --servers ours,ours-redis --scenarios a,c,d
    .venv/bin/python bench/run.py --servers ours-redis-x1,ours-redis-x3 --scenarios c
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import loadgen

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS_DIR = BENCH / "peers"
INSTALL_DIR = BENCH / ".peers"
SCRATCH = BENCH / ".scratch"
OURS_BIN = REPO / ".venv" / "bin" / "tus-gateway"
OURS_PY = REPO / ".venv" / "bin" / "python"
CLUSTER_LAUNCHER = PEERS_DIR / "ours_cluster.py"
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
MIB = 1024 * 1024
GIB = 1024 * MIB
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerSpec:
    name: str
    label: str
    argv: Callable[[int, Path], list[str]]
    env: Callable[[Path], dict[str, str]] = lambda _d: {}
    installed: Callable[[], str | None] = lambda: None  # None = ok, else the reason
    # False when the server forgets an upload once it is complete (HEAD -> 404);
    # then completed uploads are verified by their size on disk instead.
    head_after_finish: bool = True
    # Largest body this server can take in one PATCH without buffering it all in
    # memory beyond what the machine can afford; bigger single PATCHes are skipped.
    max_single_patch: int | None = None
    note: str = ""
    # Run by plain `bench/run.py` (no --servers); False for the Redis variants.
    in_default: bool = True
    # Runs our gateway's code (gets the snapshot of gateway/ and protocol/).
    ours: bool = False
    # Also wait for this line in the server's output before the run starts (the server
    # listens on its port before all of it is ready).
    ready_line: str | None = None


def _need(*paths: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        for path in paths:
            if not path.exists():
                return f"not installed: {path} missing (run bash bench/setup.sh)"
        return None

    return check


def _need_node() -> str | None:
    if shutil.which("node") is None:
        return "node not found on PATH"
    return _need(INSTALL_DIR / "node" / "node_modules" / "@tus" / "server")()


def _ours_check() -> str | None:
    if not OURS_BIN.exists():
        return f"not installed: {OURS_BIN} missing"
    return None


def _tool(name: str, fallback: str) -> str | None:
    found = shutil.which(name)
    if found is None and Path(fallback).exists():
        found = fallback
    return found


def _cluster_check(proxy: bool) -> Callable[[], str | None]:
    def check() -> str | None:
        missing = _ours_check()
        if missing:
            return missing
        if _tool("redis-server", "/usr/bin/redis-server") is None:
            return "redis-server not found (Debian package redis-server)"
        if proxy and _tool("haproxy", "/usr/sbin/haproxy") is None:
            return "haproxy not found (Debian package haproxy)"
        if proxy and not HAPROXY_CFG.exists():
            return f"{HAPROXY_CFG} missing"
        return None

    return check


def _cluster(instances: int, proxy: bool) -> Callable[[int, Path], list[str]]:
    def argv(port: int, data: Path) -> list[str]:
        return [
            str(OURS_PY),
            str(CLUSTER_LAUNCHER),
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--instances",
            str(instances),
            *(["--proxy"] if proxy else []),
        ]

    return argv


# Printed by bench/peers/ours_cluster.py once Redis, every instance and the proxy answer.
CLUSTER_READY = "ours_cluster: ready"
_CLUSTER_RSS = (
    "peak RSS and CPU are summed over the launcher (a small Python process), redis-server"
)


# Our gateway is installed editable, so edits made to the work tree while a long
# run is going would change "ours" half-way. By default the run copies the
# packages once at its start and puts the copy first on ours' PYTHONPATH.
OURS_PACKAGES = ("gateway", "protocol")
OURS_SNAPSHOT: list[Path] = []


def _ours_env(_data: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(OURS_SNAPSHOT[0])} if OURS_SNAPSHOT else {}


def ours_fingerprint() -> str:
    """Short hash over ours' source files in the work tree."""
    digest = hashlib.sha256()
    for pkg in OURS_PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def snapshot_ours(dest_root: Path) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="tusbench-ours-src-", dir=dest_root))
    for pkg in OURS_PACKAGES:
        shutil.copytree(
            REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    OURS_SNAPSHOT[:] = [dest]
    return dest


# ``--before REV``: the same gateway at an earlier commit, run side by side with the work
# tree's in one invocation, so a change is measured against what it replaced on the same
# machine at the same time. Its packages come from ``git archive``; the entry script and
# the dependencies are the work tree's.
BEFORE_SNAPSHOT: list[Path] = []
BEFORE_PACKAGES = ("gateway", "protocol", "notion_sink")


def _before_env(_data: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(BEFORE_SNAPSHOT[0])} if BEFORE_SNAPSHOT else {}


def _before_check() -> str | None:
    if not BEFORE_SNAPSHOT:
        return "needs --before REV"
    return _ours_check()


def snapshot_before(rev: str, dest_root: Path) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="tusbench-before-src-", dir=dest_root))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, *BEFORE_PACKAGES],
                             capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    BEFORE_SNAPSHOT[:] = [dest]
    return dest


def _ours_argv(port: int, data: Path) -> list[str]:
    return [str(OURS_BIN), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data), "--base-path", "/files/"]


# What each part of the request path costs (the table "What each part costs a small
# upload" in RESULTS.md): ours with one part switched off, or on where it is off as shipped.
# Parts without a setting are switched by bench/peers/ours_variant.py.
VARIANTS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("no-access-log", ("--no-access-log",), "ours, no access log",
     "--no-access-log: no line per request"),
    ("no-logs", ("--no-access-log", "--log-level", "warning"), "ours, no logs",
     "--no-access-log --log-level warning: no request or upload event lines"),
    ("no-metrics", (), "ours, no metrics",
     "no counting middleware, no timing of store calls (bench/peers/ours_variant.py)"),
    ("no-admission", (), "ours, no admission control",
     "memory and disk checks answer go without looking (bench/peers/ours_variant.py)"),
    ("hooks", (), "ours, with a post-finish hook",
     "a post-finish hook to a receiver in a child process (bench/peers/ours_variant.py)"),
    ("notion", (), "ours, Notion sink",
     "the Notion sink against the fake Notion at 3 requests/s in a child process "
     "(bench/peers/ours_variant.py); RSS includes the fake"),
)


def _variant_argv(variant: str, flags: tuple[str, ...]) -> Callable[[int, Path], list[str]]:
    launcher = PEERS_DIR / "ours_variant.py"
    switched = not flags  # a part with no setting of its own: the launcher switches it

    def argv(port: int, data: Path) -> list[str]:
        head = [str(OURS_PY), str(launcher), variant] if switched else [str(OURS_BIN)]
        return [*head, *_ours_argv(port, data)[1:], *flags]

    return argv


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            name="ours-before",
            label="ours at the --before commit",
            argv=_ours_argv,
            env=_before_env,
            installed=_before_check,
            note="default (durable) fsync policy; the packages of an earlier commit",
            in_default=False,
        ),
        ServerSpec(
            name="ours",
            label="ours (tus-gateway)",
            argv=_ours_argv,
            env=_ours_env,
            installed=_ours_check,
            note="default (durable) fsync policy",
            ours=True,
        ),
        ServerSpec(
            name="ours-nofsync",
            label="ours, --fsync off (for reference; not what the targets measure)",
            argv=lambda port, data: [
                str(OURS_BIN), "serve", "--host", "127.0.0.1", "--port", str(port),
                "--data-dir", str(data), "--base-path", "/files/", "--fsync", "off",
            ],
            env=_ours_env,
            installed=_ours_check,
            note="durability traded away like the peers: survives a process crash, not a "
            "power cut",
            ours=True,
        ),
        *(
            ServerSpec(
                name=f"ours-{variant}",
                label=label,
                argv=_variant_argv(variant, flags),
                env=_ours_env,
                installed=_ours_check,
                note=note,
                in_default=False,
                ours=True,
            )
            for variant, flags, label, note in VARIANTS
        ),
        ServerSpec(
            name="ours-redis",
            label="ours, Redis store (1 instance)",
            argv=_cluster(1, proxy=False),
            env=_ours_env,
            installed=_cluster_check(proxy=False),
            note="state in a redis-server of its own (appendonly yes, appendfsync always, no "
            "RDB), bytes in <data>/spool; one gateway listening itself, default fsync "
            f"policy; {_CLUSTER_RSS} and the gateway",
            in_default=False,
            ours=True,
            ready_line=CLUSTER_READY,
        ),
        ServerSpec(
            name="ours-redis-x1",
            label="ours, Redis store, 1 instance behind HAProxy",
            argv=_cluster(1, proxy=True),
            env=_ours_env,
            installed=_cluster_check(proxy=True),
            note="as ours-redis, plus HAProxy running deploy/haproxy.cfg (round-robin per "
            "request, health checks) with its three servers all pointing at the one "
            f"instance (--behind-proxy); {_CLUSTER_RSS}, haproxy and the gateway",
            in_default=False,
            ours=True,
            ready_line=CLUSTER_READY,
        ),
        ServerSpec(
            name="ours-redis-x3",
            label="ours, Redis store, 3 instances behind HAProxy",
            argv=_cluster(3, proxy=True),
            env=_ours_env,
            installed=_cluster_check(proxy=True),
            note="three gateways sharing one Redis and one spool directory behind HAProxy "
            "running deploy/haproxy.cfg (round-robin per request, so the POST and PATCH of "
            f"one upload may land on different instances); {_CLUSTER_RSS}, haproxy and "
            "the three gateways",
            in_default=False,
            ours=True,
            ready_line=CLUSTER_READY,
        ),
        ServerSpec(
            name="tus-node",
            label="@tus/server",
            argv=lambda port, data: [
                shutil.which("node") or "node",
                str(PEERS_DIR / "tus_node_server.mjs"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data),
                "--modules",
                str(INSTALL_DIR / "node" / "node_modules"),
            ],
            installed=_need_node,
            note="@tus/server + @tus/file-store, one Node process, no fsync",
        ),
        ServerSpec(
            name="tuspyserver",
            label="tuspyserver",
            argv=lambda port, data: [
                str(INSTALL_DIR / "tuspyserver" / "bin" / "uvicorn"),
                "tuspyserver_app:app",
                "--app-dir",
                str(PEERS_DIR),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=lambda data: {"BENCH_DATA_DIR": str(data)},
            installed=_need(INSTALL_DIR / "tuspyserver" / "bin" / "uvicorn"),
            note="FastAPI router under uvicorn[standard] (uvloop, httptools), 1 worker, no fork",
        ),
        ServerSpec(
            name="aiohttp-tus",
            label="aiohttp-tus",
            argv=lambda port, data: [
                str(INSTALL_DIR / "aiohttp-tus" / "bin" / "python"),
                str(PEERS_DIR / "aiohttp_tus_app.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data),
                "--max-body",
                str(2 * GIB),
            ],
            installed=_need(INSTALL_DIR / "aiohttp-tus" / "bin" / "python"),
            head_after_finish=False,
            max_single_patch=2 * GIB,
            note=(
                "client_max_size raised to 2 GiB; reads each PATCH body whole into memory; "
                "forgets finished uploads (HEAD 404), so those are checked on disk"
            ),
        ),
        ServerSpec(
            name="bare",
            label="bare aiohttp",
            argv=lambda port, data: [
                sys.executable,
                str(PEERS_DIR / "bare_aiohttp.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data),
            ],
            note="receive-and-write ceiling: iter_chunked + writes in a thread, no fsync",
        ),
    )
}


# Our gateway on the Redis state store, started by bench/peers/ours_cluster.py.
REDIS_SERVERS = ("ours-redis", "ours-redis-x1", "ours-redis-x3")


# ------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class ScenarioSpec:
    key: str
    title: str
    mode: str  # loadgen scenario
    size: int
    count: int
    concurrency: int
    metric: str  # Result field reported
    unit: str

    def describe(self) -> str:
        if self.mode == "single":
            return f"{_size(self.size)} in one PATCH"
        if self.mode == "concurrent":
            return f"{self.count} concurrent uploads of {_size(self.size)}"
        return f"{self.count} uploads of {_size(self.size)}, {self.concurrency} in flight"


def scenarios(quick: bool) -> dict[str, ScenarioSpec]:
    if quick:
        a, c_n, c_s, d_n, e = 64 * MIB, 8, 4 * MIB, 200, 256 * MIB
    else:
        a, c_n, c_s, d_n, e = GIB, 32, 32 * MIB, 2000, 8 * GIB
    return {
        "a": ScenarioSpec("a", "single PATCH", "single", a, 1, 1, "mib_per_s", "MiB/s"),
        "c": ScenarioSpec("c", "concurrent", "concurrent", c_s, c_n, c_n, "mib_per_s", "MiB/s"),
        "d": ScenarioSpec(
            "d", "small uploads", "small", 4096, d_n, 16, "uploads_per_s", "uploads/s"
        ),
        "e": ScenarioSpec("e", "big single PATCH", "single", e, 1, 1, "mib_per_s", "MiB/s"),
    }


def _size(n: int) -> str:
    for unit, div in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


# ----------------------------------------------------------------------------- /proc


def process_role(pid: int) -> str:
    """What a process of a server's tree is, for the RSS breakdown of the Redis servers."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    words = [a.decode(errors="replace") for a in args if a]
    if any(Path(w).name == "tus-gateway" for w in words[:2]):
        return "gateway"
    if any(Path(w).name == CLUSTER_LAUNCHER.name for w in words[:2]):
        return "launcher"
    # redis-server rewrites its title to "/usr/bin/redis-server 127.0.0.1:PORT"
    first = Path(words[0].split(" ")[0]).name if words else ""
    if first in ("redis-server", "haproxy"):
        return first
    return "other"


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[11], fields[12] are utime, stime (fields 14 and 15 of stat(5))
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --------------------------------------------------------------------- process control

LIVE: dict[int, subprocess.Popen[bytes]] = {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    spec: ServerSpec, port: int, data_dir: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    # Servers run with their defaults: drop PYTHONPATH and any TUS_* setting
    # (our gateway reads every flag from TUS_<FLAG> too, e.g. TUS_FSYNC) and
    # REDIS_URL (it would turn ours onto the Redis store).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUS_")}
    env.pop("PYTHONPATH", None)
    env.pop("REDIS_URL", None)
    env.update(spec.env(data_dir))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            spec.argv(port, data_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(data_dir.parent),
            start_new_session=True,
        )
    LIVE[proc.pid] = proc
    return proc


def wait_ready(
    proc: subprocess.Popen[bytes],
    port: int,
    timeout: float,
    ready_line: str | None = None,
    log_path: Path | None = None,
) -> str | None:
    deadline = time.monotonic() + timeout
    listening = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            what = "getting ready" if listening else "listening"
            return f"exited with code {proc.returncode} before {what}"
        if not listening:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                listening = True
        if listening:
            if ready_line is None or log_path is None:
                return None
            with contextlib.suppress(OSError):
                if any(
                    line.strip() == ready_line
                    for line in log_path.read_text(errors="replace").splitlines()
                ):
                    return None
        time.sleep(0.1)
    if listening:
        return f"listening on port {port} but no {ready_line!r} after {timeout:.0f} s"
    return f"not listening on port {port} after {timeout:.0f} s"


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL after 10 s."""
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        else:
            # the leader is gone; make sure nothing it forked lingers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        LIVE.pop(proc.pid, None)


def stop_all() -> None:
    for proc in list(LIVE.values()):
        with contextlib.suppress(Exception):
            stop_server(proc)


def _on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-600:]


# ---------------------------------------------------------------------- verification


def files_of_size(root: Path, size: int) -> list[Path]:
    """Regular files of exactly ``size`` bytes under ``root``, skipping dot dirs."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()  # hard links count once
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            with contextlib.suppress(OSError):
                st = path.lstat()  # does not follow symlinks
                key = (st.st_dev, st.st_ino)
                if stat.S_ISREG(st.st_mode) and st.st_size == size and key not in seen:
                    seen.add(key)
                    found.append(path)
    return found


_SHA_CACHE: dict[int, str] = {}


def sha_check(data_dir: Path, size: int) -> tuple[bool, str]:
    """Compare every stored file of the upload's size with the expected SHA-256."""
    if size not in _SHA_CACHE:
        _SHA_CACHE[size] = loadgen.expected_sha256(size)
    want = _SHA_CACHE[size]
    candidates = files_of_size(data_dir, size)
    if not candidates:
        return True, "sha256 n/a (no stored file of that size found)"
    bad = []
    for path in candidates:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(4 * MIB):
                digest.update(chunk)
        if digest.hexdigest() != want:
            bad.append(path.name)
    if bad:
        return False, f"sha256 MISMATCH in {len(bad)}/{len(candidates)} stored file(s): {bad[:3]}"
    return True, f"sha256 ok ({len(candidates)} stored file{'s' if len(candidates) > 1 else ''})"


# ------------------------------------------------------------------------------- runs


@dataclass
class RunRecord:
    server: str
    scenario: str
    rep: int
    status: str = "failed"  # ok | failed | skipped
    reason: str = ""
    value: float | None = None
    elapsed_s: float = 0.0  # whole load generator process
    timed_s: float = 0.0  # timed phase only
    rss_mib: float | None = None
    # peak RSS by part of the server's process tree (gateway, redis-server, haproxy, ...)
    rss_parts: dict[str, float] = field(default_factory=dict)
    processes: int = 0
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    uploads: int = 0
    bytes_total: int = 0
    verify: list[str] = field(default_factory=list)


def run_once(
    spec: ServerSpec,
    scen: ScenarioSpec,
    rep: int,
    tmp_root: Path,
    min_rate: float,
    sha: bool,
) -> RunRecord:
    rec = RunRecord(server=spec.name, scenario=scen.key, rep=rep)
    missing = spec.installed()
    if missing:
        rec.reason = missing
        return rec
    if scen.mode == "single" and spec.max_single_patch and scen.size > spec.max_single_patch:
        rec.status = "skipped"
        rec.reason = (
            f"PATCH of {_size(scen.size)} > {_size(spec.max_single_patch)}: "
            "the server reads the whole body into memory"
        )
        return rec

    data_dir = Path(tempfile.mkdtemp(prefix=f"tusbench-{spec.name}-{scen.key}{rep}-", dir=tmp_root))
    log_path = SCRATCH / f"{spec.name}-{scen.key}-{rep}.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        (data_dir / "data").mkdir()
        proc = start_server(spec, port, data_dir / "data", log_path)
        problem = wait_ready(proc, port, 45, spec.ready_line, log_path)
        if problem:
            rec.reason = f"server did not start: {problem}; log: {log_tail(log_path)}"
            return rec

        per_request = 30 + scen.size * scen.count / (min_rate * MIB)
        overall = 60 + per_request * 1.5 + scen.count * 0.25
        cmd = [
            sys.executable,
            str(BENCH / "loadgen.py"),
            "--base-url",
            f"http://127.0.0.1:{port}/files/",
            "--scenario",
            scen.mode,
            "--size",
            str(scen.size),
            "--count",
            str(scen.count),
            "--concurrency",
            str(scen.concurrency),
            "--tag",
            f"{spec.name}-{scen.key}-{rep}",
            "--min-rate",
            str(min_rate),
            "--overall-timeout",
            str(overall),
        ]
        cpu_at_ready = sum(cpu_seconds(p) for p in process_tree(proc.pid))
        t0 = time.monotonic()
        try:
            out = subprocess.run(
                cmd, capture_output=True, timeout=overall + 30, check=False, cwd=str(BENCH)
            )
        except subprocess.TimeoutExpired:
            rec.reason = f"load generator killed after {overall + 30:.0f} s"
            return rec
        rec.elapsed_s = time.monotonic() - t0
        try:
            res: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            rec.reason = f"load generator crashed: {out.stderr.decode(errors='replace')[-600:]}"
            return rec

        alive = proc.poll() is None
        tree = process_tree(proc.pid) if alive else []
        rec.processes = len(tree)
        if alive:
            hwm = {p: vm_hwm_kib(p) for p in tree}
            rec.rss_mib = sum(hwm.values()) / 1024
            for p, kib in hwm.items():
                role = process_role(p)
                rec.rss_parts[role] = rec.rss_parts.get(role, 0.0) + kib / 1024
            rec.server_cpu_s = sum(cpu_seconds(p) for p in tree) - cpu_at_ready
        rec.client_cpu_s = float(res["client_cpu_s"])
        rec.timed_s = float(res["elapsed_s"])
        rec.uploads = int(res["uploads"])
        rec.bytes_total = int(res["bytes_total"])

        if not res["ok"]:
            died = "" if alive else f" (server exited with code {proc.returncode})"
            rec.reason = f"{res['error']}{died}; log: {log_tail(log_path, 4)}"
            return rec
        if not alive:
            rec.reason = f"server exited with code {proc.returncode} during the run"
            return rec

        rec.value = float(res[scen.metric])
        problems: list[str] = []
        uploads = int(res["uploads"])
        if res["head_ok"] == uploads:
            rec.verify.append(f"HEAD ok ({uploads})")
        elif not spec.head_after_finish:
            on_disk = len(files_of_size(data_dir / "data", scen.size))
            rec.verify.append(
                f"HEAD {res['head_ok']}/{uploads} (server drops finished uploads); "
                f"on disk {on_disk}/{uploads} files of {scen.size} B"
            )
            if on_disk != uploads:
                problems.append(f"only {on_disk}/{uploads} stored files have the right size")
        else:
            problems.append(
                f"HEAD ok for {res['head_ok']}/{uploads}: {'; '.join(res['head_failures'])}"
            )

        stop_server(proc)
        if sha and scen.mode == "single":
            good, note = sha_check(data_dir / "data", scen.size)
            rec.verify.append(note)
            if not good:
                problems.append(note)
        if problems:
            rec.reason = "verification failed: " + "; ".join(problems)
            return rec
        rec.status = "ok"
        return rec
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
        os.sync()


# ---------------------------------------------------------------------------- report


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def med(self) -> float | None:
        return median(self.values)

    def show(self, digits: int = 1, spread: bool = False) -> str:
        if self.values:
            text = fmt(self.med, digits)
            if spread and len(self.values) > 1:
                low, high = fmt(min(self.values), digits), fmt(max(self.values), digits)
                text += f" ({low}-{high})"
            if self.failures:
                text += f" ({len(self.failures)} failed)"
            return text
        if self.failures:
            return "FAILED"
        if self.skipped:
            return "skipped"
        return "—"


def collect(records: list[RunRecord], server: str, scenario: str, what: str) -> Cell:
    cell = Cell()
    for rec in records:
        if rec.server != server or rec.scenario != scenario:
            continue
        if rec.status == "skipped":
            cell.skipped.append(rec.reason)
        elif rec.status != "ok":
            cell.failures.append(rec.reason)
        elif what == "value" and rec.value is not None:
            cell.values.append(rec.value)
        elif what == "rss" and rec.rss_mib is not None:
            cell.values.append(rec.rss_mib)
        elif what.startswith("rss:") and what[4:] in rec.rss_parts:
            cell.values.append(rec.rss_parts[what[4:]])
        elif what == "cpu_gib" and rec.server_cpu_s is not None and rec.bytes_total:
            cell.values.append(rec.server_cpu_s / (rec.bytes_total / GIB))
        elif what == "cpu_upload" and rec.server_cpu_s is not None and rec.uploads:
            cell.values.append(rec.server_cpu_s * 1000 / rec.uploads)
    return cell


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def versions(servers: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}

    def cmd(key: str, argv: list[str]) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, timeout=30, check=False)
            text = out.stdout.decode().strip() or out.stderr.decode().strip()
            if text:
                found[key] = text.splitlines()[0]

    for pkg in ("server", "file-store"):
        pj = INSTALL_DIR / "node" / "node_modules" / "@tus" / pkg / "package.json"
        with contextlib.suppress(OSError, ValueError):
            found[f"@tus/{pkg}"] = json.loads(pj.read_text())["version"]
    py_version = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"
    for venv, pkgs in (
        ("tuspyserver", ("tuspyserver", "fastapi", "uvicorn")),
        ("aiohttp-tus", ("aiohttp-tus", "aiohttp")),
    ):
        for pkg in pkgs:
            cmd(
                f"{pkg} ({venv} venv)",
                [str(INSTALL_DIR / venv / "bin" / "python"), "-c", py_version, pkg],
            )
    import aiohttp

    found["aiohttp (ours, bare, load generator)"] = aiohttp.__version__
    cmd("node", ["node", "--version"])
    if any(name in REDIS_SERVERS for name in servers):
        if redis := _tool("redis-server", "/usr/bin/redis-server"):
            cmd("redis-server", [redis, "--version"])
        if haproxy := _tool("haproxy", "/usr/sbin/haproxy"):
            cmd("haproxy", [haproxy, "-v"])
    found["python"] = platform.python_version()
    cmd("ours git commit", ["git", "-C", str(REPO), "log", "-1", "--format=%h %cs"])
    return found


def write_probe(tmp_root: Path, size: int) -> float:
    """Plain buffered write of ``size`` bytes into the data filesystem, MiB/s."""
    buf = loadgen.pattern()
    path = tmp_root / f"tusbench-probe-{os.getpid()}"
    t0 = time.perf_counter()
    try:
        with open(path, "wb") as fh:
            left = size
            while left > 0:
                left -= fh.write(buf[: min(left, len(buf))])
        rate = size / MIB / (time.perf_counter() - t0)
    finally:
        path.unlink(missing_ok=True)
        os.sync()
    return rate


def _loads(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def describe_ours(args: argparse.Namespace) -> tuple[str, str]:
    fingerprint = ours_fingerprint()
    status = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", *OURS_PACKAGES],
        capture_output=True,
        timeout=30,
        check=False,
    ).stdout.strip()
    state = "with uncommitted changes" if status else "clean"
    where = "run from the work tree"
    if not args.ours_live:
        snap = snapshot_ours(args.tmp_root)
        probe = subprocess.run(
            [
                str(REPO / ".venv" / "bin" / "python"),
                "-c",
                "import gateway; print(gateway.__file__)",
            ],
            capture_output=True,
            timeout=30,
            check=False,
            env={**os.environ, "PYTHONPATH": str(snap)},
            cwd=str(snap.parent),
        )
        if not probe.stdout.decode().strip().startswith(str(snap)):
            shutil.rmtree(snap, ignore_errors=True)
            raise SystemExit(f"copy of ours is not picked up: {probe.stdout!r} {probe.stderr!r}")
        where = "run from a copy taken at the start"
    text = f"gateway/ and protocol/ {state}, source fingerprint {fingerprint}, {where}"
    return text, fingerprint


def report(
    records: list[RunRecord],
    servers: list[str],
    scens: dict[str, ScenarioSpec],
    chosen: list[str],
    args: argparse.Namespace,
    meta: dict[str, Any],
) -> str:
    L: list[str] = []
    add = L.append
    has = set(chosen)
    add("# Benchmark results: tus gateway vs peers")
    add("")
    add(f"- Date: {meta['date']} (run took {meta['duration_min']:.1f} min)")
    add(f"- Command: `{meta['command']}`")
    add(
        f"- Machine: {os.cpu_count()} cores, {meta['mem_gib']:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}; shared and noisy, all servers and the load generator on "
        "127.0.0.1 of the same machine. Load average (1/5/15 min) at the start "
        f"{_loads(meta['loadavg_start'])}, at the end {_loads(meta['loadavg_end'])}."
    )
    add(
        f"- Plain buffered write into the data filesystem before the run: "
        f"{meta['write_probe']:.0f} MiB/s ({_size(meta['write_probe_size'])} file)."
    )
    add(
        f"- Repetitions: {args.reps} per scenario per server; each figure is the median. "
        "Every run uses a fresh server process and a fresh data directory (deleted after the run)."
    )
    if args.quick:
        add(
            "- **Quick mode**: small sizes, only a smoke test; "
            "figures are not comparable to a full run."
        )
    add("- Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    if "ours" in meta:
        add(f"- Ours: {meta['ours']}.")
    add("")
    add("## Scenarios")
    add("")
    for key in chosen:
        s = scens[key]
        add(f"- **{key}** ({s.title}): {s.describe()} → {s.unit}.")
    if "a" in has or "c" in has or "e" in has:
        add(
            "- Peak RSS: VmHWM from /proc/<pid>/status, summed over the server process and its "
            "live descendants, read at the end of the run (fresh process per run)."
        )
        if any(name in REDIS_SERVERS for name in servers):
            add(
                "  For the Redis servers (ours-redis*) that tree is the launcher, redis-server, "
                "HAProxy if any and every gateway instance, and their CPU time likewise; the "
                "Redis section breaks the RSS down."
            )
    busy = [
        (run.client_cpu_s / run.timed_s, run)
        for run in records
        if run.status == "ok" and run.client_cpu_s is not None and run.timed_s > 0
    ]
    if busy:
        load, worst = max(busy, key=lambda item: item[0])
        add(
            f"- Load generator CPU during the timed phases: at most {load:.0%} of one core "
            f"({worst.server}, {worst.scenario}); it is one asyncio process streaming one "
            "reusable buffer."
        )
    add(
        "- Verification: after every upload HEAD must answer Upload-Offset == length; the "
        "SHA-256 of the stored file is compared for scenario a (every server) and for e "
        "(ours), found by its size under the data directory."
    )
    add("")
    add("## Figures (medians)")
    add("")
    add("Throughput cells show the median and, in brackets, the lowest and highest repetition.")
    add("")
    cols: list[tuple[str, str, str]] = []  # (header, scenario, what)
    for key in ("a", "c", "d", "e"):
        if key in has:
            s = scens[key]
            cols.append((f"{key}: {s.describe()} ({s.unit})", key, "value"))
    for key in ("a", "c", "e"):
        if key in has:
            cols.append((f"peak RSS {key} (MiB)", key, "rss"))
    add("| server | " + " | ".join(c[0] for c in cols) + " |")
    add("|---|" + "---|" * len(cols))
    for name in servers:
        cells = []
        for _h, key, what in cols:
            digits = 0 if scens[key].metric == "uploads_per_s" and what == "value" else 1
            cells.append(collect(records, name, key, what).show(digits, spread=what == "value"))
        add(f"| {SERVERS[name].label} | " + " | ".join(cells) + " |")
    add("")
    add("## Server CPU time (medians)")
    add("")
    add(
        "CPU seconds used by the server process (user + system, all threads) from the moment "
        "it listens until the load generator is done, per GiB uploaded, or in ms per upload "
        "for d (there it includes the HEAD checks). On a 2-core machine shared with the "
        "load generator this is often a steadier comparison than throughput."
    )
    add("")
    ccols = [
        (key, "ms/upload", "cpu_upload")
        if scens[key].mode == "small"
        else (key, "s/GiB", "cpu_gib")
        for key in chosen
    ]
    add("| server | " + " | ".join(f"{k} ({u})" for k, u, _w in ccols) + " |")
    add("|---|" + "---|" * len(ccols))
    for name in servers:
        cells = [collect(records, name, k, w).show(2) for k, _u, w in ccols]
        add(f"| {SERVERS[name].label} | " + " | ".join(cells) + " |")
    add("")

    if "ours" in servers:
        # the Redis variants are compared with ours in their own section below
        peers = [s for s in servers if s != "ours" and s not in REDIS_SERVERS]
        if peers:
            add("## Ratios: ours / peer (throughput; > 1 means ours is faster)")
            add("")
            tcols = [c for c in cols if c[2] == "value"]
            add("| peer | " + " | ".join(c[0].split(" (")[0] for c in tcols) + " |")
            add("|---|" + "---|" * len(tcols))
            for peer in peers:
                cells = []
                for _h, key, _w in tcols:
                    r = ratio(
                        collect(records, "ours", key, "value").med,
                        collect(records, peer, key, "value").med,
                    )
                    cells.append("—" if r is None else f"{r:.2f}x")
                add(f"| {SERVERS[peer].label} | " + " | ".join(cells) + " |")
            add("")

        add("## Targets")
        add("")
        add("| target | measured | verdict |")
        add("|---|---|---|")

        def target(
            label: str, measured: float | None, ok: Callable[[float], bool], unit: str
        ) -> None:
            if measured is None:
                add(f"| {label} | n/a | not measured |")
            else:
                add(f"| {label} | {measured:.2f}{unit} | {'PASS' if ok(measured) else 'FAIL'} |")

        def r_of(key: str, peer: str) -> float | None:
            return ratio(
                collect(records, "ours", key, "value").med, collect(records, peer, key, "value").med
            )

        def rss_max(key: str) -> float | None:
            vals = collect(records, "ours", key, "rss").values
            return max(vals) if vals else None

        if "a" in has:
            target("a: ours ≥ 2.0x @tus/server", r_of("a", "tus-node"), lambda v: v >= 2.0, "x")
            target("a: ours ≥ 0.8x bare aiohttp", r_of("a", "bare"), lambda v: v >= 0.8, "x")
        if "c" in has:
            target("c: ours ≥ 2.0x @tus/server", r_of("c", "tus-node"), lambda v: v >= 2.0, "x")
        if "d" in has:
            target("d: ours ≥ 1.5x @tus/server", r_of("d", "tus-node"), lambda v: v >= 1.5, "x")
            redis_d = collect(records, "ours-redis", "d", "value").med
            node_d = collect(records, "tus-node", "d", "value").med
            if redis_d is not None:
                target("d: ours on Redis ≥ 1.5x @tus/server", ratio(redis_d, node_d),
                       lambda v: v >= 1.5, "x")
        if "a" in has:
            target(
                f"RSS a ({_size(scens['a'].size)}): ours ≤ 64 MiB (worst rep)",
                rss_max("a"),
                lambda v: v <= 64,
                " MiB",
            )
        if "c" in has:
            target("RSS c: ours ≤ 96 MiB (worst rep)", rss_max("c"), lambda v: v <= 96, " MiB")
        if "e" in has:
            target(
                f"RSS e ({_size(scens['e'].size)}): ours ≤ 64 MiB (worst rep)",
                rss_max("e"),
                lambda v: v <= 64,
                " MiB",
            )
        add("")

    if any(name in REDIS_SERVERS for name in servers):
        L.extend(redis_report(records, servers, scens, chosen))

    failed = [r for r in records if r.status != "ok"]
    add("## Failures and skips")
    add("")
    if not failed:
        add("None.")
    for run in failed:
        add(
            f"- {SERVERS[run.server].label}, {run.scenario} rep {run.rep}: "
            f"**{run.status}**: {run.reason}"
        )
    add("")
    add("## Server notes")
    add("")
    for name in servers:
        procs = sorted({r.processes for r in records if r.server == name and r.status == "ok"})
        add(
            f"- {SERVERS[name].label}: {SERVERS[name].note}; "
            f"processes at the end of a run: {procs or '?'}"
        )
    add("")
    add("## All runs")
    add("")
    add(
        "| server | scen | rep | status | figure | timed s | peak RSS MiB "
        "| server CPU s | client CPU s | checks |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for run in records:
        add(
            f"| {run.server} | {run.scenario} | {run.rep} | {run.status} | {fmt(run.value)} "
            f"| {run.timed_s:.2f} | {fmt(run.rss_mib)} | {fmt(run.server_cpu_s, 2)} "
            f"| {fmt(run.client_cpu_s, 2)} | {'; '.join(run.verify) or run.reason[:80]} |"
        )
    add("")
    return "\n".join(L)


# (label, numerator server, denominator server, scenarios, minimum ratio per scenario)
REDIS_COMPARISONS: tuple[tuple[str, str, str, tuple[str, ...], dict[str, float]], ...] = (
    ("Redis store / disk store", "ours-redis", "ours", ("a", "c", "d"), {"a": 0.9, "c": 0.9}),
    ("3 instances / 1, both behind HAProxy", "ours-redis-x3", "ours-redis-x1", ("c",), {"c": 1.5}),
    ("1 instance behind HAProxy / direct", "ours-redis-x1", "ours-redis", ("a", "c", "d"), {}),
    ("3 instances behind HAProxy / disk store", "ours-redis-x3", "ours", ("c",), {}),
)


def redis_report(
    records: list[RunRecord],
    servers: list[str],
    scens: dict[str, ScenarioSpec],
    chosen: list[str],
) -> list[str]:
    """The Redis state store against the disk store, and 3 instances against 1."""
    L: list[str] = []
    add = L.append
    has = set(chosen)
    add("## Redis state store and scale-out")
    add("")
    add(
        "The ours-redis servers are started by `bench/peers/ours_cluster.py`: a redis-server "
        "of their own (appendonly yes, appendfsync always, no RDB snapshots), the gateway "
        "instance(s) with `--redis-url` sharing one spool directory, and for -x1/-x3 HAProxy "
        "running `deploy/haproxy.cfg` (round-robin per request). Ratios are of the medians "
        "of this run (throughput; > 1 means the first server is faster). The load generator, "
        f"HAProxy, Redis and every instance share this machine's {os.cpu_count()} cores."
    )
    add("")
    add("| comparison | scen | first | second | ratio | target | verdict |")
    add("|---|---|---|---|---|---|---|")
    rows = 0
    for label, num, den, keys, targets in REDIS_COMPARISONS:
        if num not in servers or den not in servers:
            continue
        for key in keys:
            if key not in has:
                continue
            rows += 1
            digits = 0 if scens[key].metric == "uploads_per_s" else 1
            a = collect(records, num, key, "value")
            b = collect(records, den, key, "value")
            r = ratio(a.med, b.med)
            want = targets.get(key)
            if want is None:
                goal, verdict = "—", ""
            elif r is None:
                goal, verdict = f"≥ {want:.2f}x", "not measured"
            else:
                goal, verdict = f"≥ {want:.2f}x", "PASS" if r >= want else "FAIL"
            add(
                f"| {label} | {key} | {num}: {a.show(digits)} {scens[key].unit} "
                f"| {den}: {b.show(digits)} {scens[key].unit} "
                f"| {'—' if r is None else f'{r:.2f}x'} | {goal} | {verdict} |"
            )
    if not rows:
        add("| (no pair of servers to compare in this run) | | | | | | |")
    add("")
    missing = []
    if not {"ours", "ours-redis"} <= set(servers):
        missing.append(
            "Redis vs disk store: `--servers ours,ours-redis --scenarios a,c,d` "
            "(targets: ≥ 0.90x on a and c)"
        )
    if not {"ours-redis-x1", "ours-redis-x3"} <= set(servers):
        missing.append(
            "scale-out: `--servers ours-redis-x1,ours-redis-x3 --scenarios c` (target: ≥ 1.5x)"
        )
    if missing:
        add("Not in this run: " + "; ".join(missing) + ".")
        add("")

    rss_keys = [k for k in ("a", "c", "e") if k in has]
    parts = ("gateway", "redis-server", "haproxy", "launcher")
    shown = [s for s in servers if s in REDIS_SERVERS or s == "ours"]
    if rss_keys and shown:
        add("### Peak RSS by process (medians, MiB)")
        add("")
        add(
            "VmHWM of each kind of process in the server's tree, summed over processes of "
            "that kind (all instances for `gateway`); `total` is the figure of the main table. "
            "The launcher is benchmark scaffolding that a deployment does not have."
        )
        add("")
        add("| server | scen | total | " + " | ".join(parts) + " |")
        add("|---|---|---|" + "---|" * len(parts))
        for name in shown:
            for key in rss_keys:
                cells = [collect(records, name, key, "rss").show(1)]
                cells += [collect(records, name, key, f"rss:{part}").show(1) for part in parts]
                add(f"| {name} | {key} | " + " | ".join(cells) + " |")
        add("")
    return L


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="tus upload benchmark: ours vs peers on loopback",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--servers",
        default=",".join(name for name, spec in SERVERS.items() if spec.in_default),
        help="comma list of: "
        + ", ".join(SERVERS)
        + " (default: all but "
        + ", ".join(name for name, spec in SERVERS.items() if not spec.in_default)
        + ")",
    )
    parser.add_argument("--scenarios", default="a,c,d,e", help="comma list of: a, c, d, e")
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the setup")
    parser.add_argument(
        "--tmp-root", type=Path, default=Path(tempfile.gettempdir()), help="where data dirs go"
    )
    parser.add_argument("--max-minutes", type=float, default=120.0, help="overall time bound")
    parser.add_argument(
        "--min-rate", type=float, default=20.0, help="MiB/s below which an upload counts as hung"
    )
    parser.add_argument(
        "--no-sha", action="store_true", help="skip the SHA-256 check of stored files"
    )
    parser.add_argument("--output", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also run our gateway as of this git commit (server ours-before), side by side",
    )
    parser.add_argument(
        "--ours-live",
        action="store_true",
        help="run ours from the work tree instead of a copy taken at the start",
    )
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    return args


def plan(servers: list[str], chosen: list[str], reps: int) -> Iterator[tuple[str, str, int]]:
    # Interleave servers inside each repetition so machine noise spreads evenly.
    for key in chosen:
        for rep in range(1, reps + 1):
            for name in servers:
                yield name, key, rep


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in servers if s not in SERVERS] + [c for c in chosen if c not in "acde"]
    if bad:
        print(f"unknown server/scenario: {bad}", file=sys.stderr)
        return 2
    scens = scenarios(args.quick)
    SCRATCH.mkdir(exist_ok=True)
    args.tmp_root.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_signal)

    started = time.monotonic()
    deadline = started + args.max_minutes * 60
    command = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]]
    )
    probe_size = 256 * MIB if args.quick else GIB
    meta: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": command,
        "versions": versions(servers),
        "write_probe": write_probe(args.tmp_root, probe_size),
        "write_probe_size": probe_size,
        "mem_gib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB,
        "loadavg_start": os.getloadavg(),
    }
    print(f"write probe: {meta['write_probe']:.0f} MiB/s", file=sys.stderr)
    if args.before:
        snapshot_before(args.before, args.tmp_root)
        if "ours-before" not in servers:
            servers.insert(servers.index("ours") + 1 if "ours" in servers else 0, "ours-before")
        meta["before"] = args.before
    if any(SERVERS[name].ours for name in servers) and OURS_BIN.exists():
        meta["ours"], meta["ours_fingerprint"] = describe_ours(args)
        print(f"ours: {meta['ours']}", file=sys.stderr)
    records: list[RunRecord] = []
    steps = list(plan(servers, chosen, args.reps))
    try:
        for i, (name, key, rep) in enumerate(steps, 1):
            scen = scens[key]
            if time.monotonic() > deadline:
                rec = RunRecord(
                    name,
                    key,
                    rep,
                    status="skipped",
                    reason=f"overall bound of {args.max_minutes:.0f} min reached",
                )
            else:
                sha = not args.no_sha and (key == "a" or name == "ours" or name in REDIS_SERVERS)
                rec = run_once(SERVERS[name], scen, rep, args.tmp_root, args.min_rate, sha)
            records.append(rec)
            shown = (
                f"{fmt(rec.value)} {scen.unit}"
                if rec.status == "ok"
                else f"{rec.status.upper()}: {rec.reason[:300]}"
            )
            print(
                f"[{i}/{len(steps)}] {name:<12} {key} rep {rep}: {shown}"
                f"  rss={fmt(rec.rss_mib)} MiB  ({rec.elapsed_s:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    except KeyboardInterrupt:
        print("interrupted; writing partial results", file=sys.stderr)
    finally:
        stop_all()
        if OURS_SNAPSHOT:
            shutil.rmtree(OURS_SNAPSHOT[0], ignore_errors=True)
        if BEFORE_SNAPSHOT:
            shutil.rmtree(BEFORE_SNAPSHOT[0], ignore_errors=True)
        if "ours" in meta and ours_fingerprint() != meta["ours_fingerprint"]:
            meta["ours"] += "; its work-tree source changed during the run" + (
                "" if not args.ours_live else ", so runs may mix versions"
            )

    meta["duration_min"] = (time.monotonic() - started) / 60
    meta["loadavg_end"] = os.getloadavg()
    text = report(records, servers, scens, chosen, args, meta)
    args.output.write_text(text + "\n")
    raw = SCRATCH / f"results-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    raw.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in records]}, indent=1))
    print(text)
    print(f"\nwrote {args.output} and {raw}", file=sys.stderr)
    return 0 if all(r.status != "failed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
