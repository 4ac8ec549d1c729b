"""Bare aiohttp receive-and-write server: the throughput ceiling for the benchmark.

It speaks just enough tus for the load generator (POST creates an upload, PATCH
appends, HEAD reports the offset). PATCH streams ``request.content`` with
``iter_chunked`` and hands each write to a thread. There is no fsync, no locking,
no metadata file and no validation beyond the offset check: it measures what
aiohttp plus plain file writes can do on this machine, nothing more.

Usage: python bare_aiohttp.py --host 127.0.0.1 --port 8080 --data-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
CHUNK = 1024 * 1024


@dataclass
class Upload:
    path: Path
    length: int
    offset: int = 0


UPLOADS = web.AppKey("uploads", dict[str, Upload])
DATA_DIR = web.AppKey("data_dir", Path)


async def create(request: web.Request) -> web.Response:
    length_header = request.headers.get("Upload-Length", "")
    if not length_header.isdigit():
        raise web.HTTPBadRequest(text="Upload-Length required", headers=TUS_HEADERS)
    upload_id = uuid.uuid4().hex
    path = request.app[DATA_DIR] / upload_id
    path.touch()
    request.app[UPLOADS][upload_id] = Upload(path=path, length=int(length_header))
    return web.Response(status=201, headers={**TUS_HEADERS, "Location": f"/files/{upload_id}"})


def _lookup(request: web.Request) -> Upload:
    upload = request.app[UPLOADS].get(request.match_info["upload_id"])
    if upload is None:
        raise web.HTTPNotFound(headers=TUS_HEADERS)
    return upload


async def head(request: web.Request) -> web.Response:
    upload = _lookup(request)
    return web.Response(
        status=200,
        headers={
            **TUS_HEADERS,
            "Upload-Offset": str(upload.offset),
            "Upload-Length": str(upload.length),
            "Cache-Control": "no-store",
        },
    )


async def patch(request: web.Request) -> web.Response:
    upload = _lookup(request)
    if request.headers.get("Upload-Offset") != str(upload.offset):
        raise web.HTTPConflict(headers={**TUS_HEADERS, "Upload-Offset": str(upload.offset)})
    loop = asyncio.get_running_loop()
    with open(upload.path, "r+b") as fh:
        fh.seek(upload.offset)
        async for chunk in request.content.iter_chunked(CHUNK):
            await loop.run_in_executor(None, fh.write, chunk)
            upload.offset += len(chunk)
    return web.Response(status=204, headers={**TUS_HEADERS, "Upload-Offset": str(upload.offset)})


def make_app(data_dir: Path) -> web.Application:
    app = web.Application()
    app[UPLOADS] = {}
    app[DATA_DIR] = data_dir
    app.router.add_post("/files/", create)
    app.router.add_route("HEAD", "/files/{upload_id}", head)
    app.router.add_patch("/files/{upload_id}", patch)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    web.run_app(
        make_app(args.data_dir),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
