"""aiohttp-tus peer for bench/run.py.

aiohttp-tus reads each PATCH body whole (``await request.read()``), so the chunk
size a client may send is capped by ``client_max_size``; its README asks users
to raise that limit. Here it is raised to ``--max-body`` bytes (default 2 GiB,
enough for the 1 GiB single-PATCH scenario).

Usage (aiohttp-tus venv from bench/setup.sh):
    python aiohttp_tus_app.py --host 127.0.0.1 --port P --data-dir DIR
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--max-body", type=int, default=2 * 1024**3)
    args = parser.parse_args()
    aiohttp_tus: Any = importlib.import_module("aiohttp_tus")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    app = aiohttp_tus.setup_tus(
        web.Application(client_max_size=args.max_body),
        upload_url="/files/",
        upload_path=args.data_dir,
    )
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
