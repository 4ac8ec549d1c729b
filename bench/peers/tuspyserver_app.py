"""tuspyserver peer for bench/run.py: a FastAPI app with the tus router on /files.

Run by bench/run.py with the tuspyserver venv made by bench/setup.sh:
    BENCH_DATA_DIR=DIR uvicorn tuspyserver_app:app --app-dir bench/peers \
        --host 127.0.0.1 --port P --workers 1
FastAPI and tuspyserver live only in that venv, so they are imported by name
at run time (the project's own type checker does not see them).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

_fastapi: Any = importlib.import_module("fastapi")
_tus: Any = importlib.import_module("tuspyserver")

DATA_DIR = os.environ["BENCH_DATA_DIR"]

app: Any = _fastapi.FastAPI()
app.include_router(
    _tus.create_tus_router(
        prefix="files",
        files_dir=DATA_DIR,
        max_size=64 * 1024**3,
    )
)
