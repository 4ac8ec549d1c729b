"""Our gateway with one part of the request path switched off or on, for the table of what
each part costs a small upload (``bench/run.py --servers ours,ours-no-metrics,...``).

    python bench/peers/ours_variant.py VARIANT serve --host ... --port ... --data-dir ...

Variants whose switch is a setting (the access log, the event log) are plain ``serve``
flags in ``bench/run.py``. The others need a hand this launcher gives before ``serve``
starts, in this process:

- ``no-metrics``: no counting middleware and no timing of store calls (the counters the
  upload service bumps itself stay: they are attribute increments);
- ``no-admission``: the memory and disk checks before each creation and PATCH answer
  "go" without looking, and memory is not sampled;
- ``hooks``: a post-finish hook is configured, received by a small aiohttp server this
  launcher starts as a child process (its CPU is not the gateway's);
- ``notion``: the Notion sink instead of the directory, against the fake Notion started as
  a child process with Notion's average rate limit (3 requests/s), so most files are still
  owed when the run ends: what is measured is the sink's bookkeeping on the request path.

Nothing here ships: the gateway itself has no switch for metrics or admission control.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

PY = sys.executable
NOTION_TOKEN = "secret_benchVariantToken0001"
USERS_DB = "11111111111111111111111111111111"
INDEX_DB = "22222222222222222222222222222222"
CHILDREN: list[subprocess.Popen[bytes]] = []

RECEIVER = """
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.Response(status=204)
app = web.Application()
app.router.add_post("/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"a helper process ended at start ({child.args!r})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"a helper process did not listen on {port}")


def _die_with_parent() -> None:
    # The benchmark may kill the gateway outright; its helpers must not outlive it.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_child(argv: list[str], port: int) -> None:
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=_die_with_parent)
    CHILDREN.append(child)
    wait_port(port, child)


def no_metrics() -> None:
    from aiohttp import web

    from gateway import app, metrics

    @web.middleware
    async def passthrough(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                          ) -> web.StreamResponse:
        return await handler(request)

    metrics.Metrics.middleware = lambda self: passthrough  # type: ignore[method-assign]
    app.measured = lambda store, metrics: store  # type: ignore[attr-defined]


def no_admission() -> None:
    from gateway import resources

    async def no_sampling(self: Any) -> None:
        self.set_budget(self.configured_budget or 512 * 1024 * 1024)

    resources.ResourceMonitor.start = no_sampling  # type: ignore[method-assign]
    resources.ResourceMonitor.check = lambda self, kind: None  # type: ignore[method-assign]


def hooks() -> list[str]:
    port = free_port()
    start_child([PY, "-c", RECEIVER, str(port)], port)
    return ["--hook-post-finish", f"http://127.0.0.1:{port}/finished"]


def notion() -> list[str]:
    port = free_port()
    users = "Name=title,Size=number,Hash=rich_text,Salt=rich_text,Created=date,File=files"
    start_child([os.path.join(os.path.dirname(PY), "fake-notion"), "--host", "127.0.0.1",
                 "--port", str(port), "--token", NOTION_TOKEN, "--rate", "3",
                 "--database", f"uploads@{USERS_DB}:{users}",
                 "--database", f"index@{INDEX_DB}:Hash=title,Database=rich_text,"
                 "Page=rich_text"], port)
    return ["--sink", "notion", "--notion-base-url", f"http://127.0.0.1:{port}",
            "--notion-token", NOTION_TOKEN, "--notion-user-database", USERS_DB,
            "--notion-index-database", INDEX_DB]


def main() -> int:
    variant, args = sys.argv[1], sys.argv[2:]
    extra: list[str] = []
    if variant == "no-metrics":
        no_metrics()
    elif variant == "no-admission":
        no_admission()
    elif variant == "hooks":
        extra = hooks()
    elif variant == "notion":
        extra = notion()
    elif variant != "shipped":
        raise SystemExit(f"unknown variant {variant!r}")
    from gateway.cli import main as gateway_main
    sys.argv = ["tus-gateway", *args, *extra]
    try:
        return gateway_main()
    finally:
        for child in CHILDREN:
            child.kill()


if __name__ == "__main__":
    sys.exit(main())
