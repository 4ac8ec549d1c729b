from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import TUS, patch_headers, path_of


@pytest.mark.both_stores
async def test_create_patch_head(client: TestClient[Any, Any]) -> None:
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert r.status == 201
    loc = path_of(r.headers["Location"])
    r = await client.patch(loc, data=b"hello", headers=patch_headers(0))
    assert r.status == 204, await r.text()
    r = await client.head(loc, headers=TUS)
    assert r.headers["Upload-Offset"] == "5"
