"""The upload collection answers at its path without the trailing slash (``/files``) as at
``/files/``, for every method it takes, and uploads keep their one URL, ``/files/<id>``.

tusd and @tus/server treat ``/files`` as the collection, and some clients strip the slash
from the URL they are given (tests/clients/test_resumable_upload.py runs one of them).
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from yarl import URL

from tests.gateway.test_ietf import send
from tests.helpers import TUS, patch_headers

Client = TestClient[Any, Any]


async def test_collection_answers_without_its_trailing_slash(client: Client) -> None:
    r = await client.options("/files")
    assert r.status == 204 and r.headers["Tus-Version"] == "1.0.0"

    r = await client.options("/files", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"]

    r = await client.post("/files", headers={**TUS, "Upload-Length": "5"})
    assert r.status == 201, await r.text()
    path = URL(r.headers["Location"]).path
    assert path.startswith("/files/") and len(path) == len("/files/") + 32
    r = await client.patch(path, data=b"hello", headers=patch_headers(0))
    assert r.status == 204
    assert await (await client.get(path)).read() == b"hello"

    # The IETF draft's creation, with its 104, at the same path.
    port = client.server.port
    assert port is not None
    exchange = await send(port, "POST", "/files", {
        "Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1"}, b"world")
    answer = exchange.answer
    assert answer.status == 201, answer
    location = URL(answer.headers["location"]).path
    assert location.startswith("/files/") and len(location) == len("/files/") + 32
    assert [r.headers["location"] for r in exchange.interim] == [answer.headers["location"]]
    assert await (await client.get(location)).read() == b"world"

    # What the collection does not take is refused there as at /files/.
    r = await client.patch("/files", headers=patch_headers(0))
    assert r.status == 405 and r.headers["Allow"] == "OPTIONS, POST"
