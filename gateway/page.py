"""The upload page: ``GET /`` and ``GET /static/<name>``, from the files the package ships.

Theory of operation:

- ``gateway/static/`` holds the page, already built (``make web`` bundles ``web/`` with
  esbuild): Uppy's Dashboard and tus plugin, with nothing fetched from elsewhere at run time.
- The files are package data, read through ``importlib.resources`` so an installed wheel
  serves them as well as a source checkout. Each is read once, in a worker thread (a file
  read must not block the event loop), then kept in memory: the whole folder is a few
  hundred KiB and never changes while the gateway runs.
- ``index.html`` gets the gateway's ``--base-path`` written in, so the page uploads to this
  gateway whatever its prefix, and ``--page-token-origins``, the other origins the page may
  send its ``#token=`` to (it sends it to its own origin and those only); each value is
  HTML-escaped into a meta tag. Everything else is served byte for byte.
- Every answer carries an ETag (a hash of the bytes) and ``Cache-Control: no-cache``: the
  names carry no version, so a browser must ask again after an upgrade, and a 304 makes the
  asking cheap.
- The page is for browsers; a tus client that ends up at ``/`` (an upload URL whose dot
  segments resolved to it, ``/files/%2e%2e``) must keep getting what it got before the page
  existed: 404, the answer for an unknown upload, never a 200 without ``Upload-Offset``. So
  only a plain ``GET`` or ``HEAD`` without ``Tus-Resumable``, of a path written out as is,
  is answered with a file; any other request to these paths is 404.
- ``--no-upload-page`` leaves both routes out; ``/`` and ``/static/`` then answer 404 like
  any unknown path.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import importlib.resources
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.http import expect_continue

log = logging.getLogger(__name__)

STATIC_PACKAGE = "gateway"
STATIC_FOLDER = "static"
INDEX = "index.html"
PAGE_PATH = "/"
STATIC_PREFIX = "/static/"
# Only the files the build writes; anything else under /static/ is 404 without a look at
# the disk, which also rules out any path trickery.
STATIC_TYPES = {
    "upload-page.js": "text/javascript",
    "upload-page.css": "text/css",
    "THIRD-PARTY-LICENSES.txt": "text/plain",
}
BASE_PATH_SLOT = "{{base_path}}"
TOKEN_ORIGINS_SLOT = "{{token_origins}}"
# The page runs only our own bundle: no inline script, nothing from another origin except the
# uploads themselves (the endpoint may be another gateway, so connect-src stays open) and
# Uppy's thumbnails, which are blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src *; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _read_static(name: str) -> bytes:
    """Blocking: runs in a worker thread."""
    return (importlib.resources.files(STATIC_PACKAGE) / STATIC_FOLDER / name).read_bytes()


def page_slots(config: GatewayConfig) -> dict[str, str]:
    """What the gateway writes into ``index.html``: each slot's text, before escaping."""
    # Space-separated, as in a CSP source list: validate() refuses whitespace in an origin.
    return {BASE_PATH_SLOT: config.base_path,
            TOKEN_ORIGINS_SLOT: " ".join(config.page_token_origins)}


@dataclass
class PageFiles:
    """The static files, each read on first use and kept."""

    slots: dict[str, str]
    _assets: dict[str, Asset] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, name: str) -> Asset:
        asset = self._assets.get(name)
        if asset is not None:
            return asset
        async with self._lock:
            asset = self._assets.get(name)
            if asset is None:
                asset = self._assets[name] = self._load(name, await asyncio.to_thread(
                    _read_static, name))
            return asset

    def _load(self, name: str, body: bytes) -> Asset:
        content_type = "text/html" if name == INDEX else STATIC_TYPES[name]
        if name == INDEX:
            # One pass, so a value that happens to spell another slot stays as it is.
            pattern = re.compile(b"|".join(re.escape(slot.encode()) for slot in self.slots))
            body = pattern.sub(lambda m: html.escape(self.slots[m[0].decode()],
                                                     quote=True).encode(), body)
        etag = hashlib.sha256(body).hexdigest()[:32]
        return Asset(body, content_type, etag)


def _responder(files: PageFiles, name: str | None) -> Callable[[web.Request],
                                                                Awaitable[web.Response]]:
    async def respond(request: web.Request) -> web.Response:
        wanted = name if name is not None else request.match_info["name"]
        # The URL is resolved before routing, so /files/%2e%2e arrives here as /.
        spelled_out = request.raw_path.partition("?")[0] == request.path
        from_browser = (request.method in ("GET", "HEAD")
                        and "Tus-Resumable" not in request.headers)
        known = wanted == INDEX or wanted in STATIC_TYPES
        if not (known and spelled_out and from_browser):
            raise web.HTTPNotFound(text="no such file")
        try:
            asset = await files.get(wanted)
        except FileNotFoundError as exc:
            # A checkout where `make web` never ran and nothing was committed.
            log.error("the upload page's %s is missing from the package; run `make web`",
                      wanted)
            raise web.HTTPNotFound(text="the upload page is not built") from exc
        headers = {"ETag": f'"{asset.etag}"', "Cache-Control": "no-cache",
                   "X-Content-Type-Options": "nosniff"}
        if wanted == INDEX:
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            headers["Referrer-Policy"] = "no-referrer"
        if f'"{asset.etag}"' in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type,
                            charset="utf-8", headers=headers)

    return respond


def setup_page(app: web.Application, config: GatewayConfig) -> None:
    """Add the page's routes when ``config.upload_page`` is on and its paths are free."""
    if not config.upload_page:
        return
    if config.base_path == PAGE_PATH or config.base_path.startswith(STATIC_PREFIX):
        # The uploads own these paths; they matter more than the page.
        log.warning("the upload page is off: --base-path %s overlaps its paths / and "
                    "/static/", config.base_path)
        return
    files = PageFiles(page_slots(config))
    # Every method, so the ones the page does not answer stay 404 rather than become 405.
    app.router.add_route("*", PAGE_PATH, _responder(files, INDEX),
                         expect_handler=expect_continue)
    app.router.add_route("*", STATIC_PREFIX + "{name}", _responder(files, None),
                         expect_handler=expect_continue)
