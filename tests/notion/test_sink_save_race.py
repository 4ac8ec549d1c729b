"""A DELETE racing the Notion sink's record update: the upload stays terminated.

The sink reads an upload's record and saves it back with its progress, without the upload's
lock (its work runs in the background, beside requests). A DELETE landing between the two
must win: the save is refused, never a terminated upload brought back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.keys import CONFIG, RUNTIME
from notion_sink.sink import NotionSink
from protocol import errors
from tests.conftest import ClientFactory
from tests.helpers import TUS, patch_headers, path_of
from tests.notion.conftest import FakeNotionServer
from tests.notion.test_gateway_sink import gateway


async def started_upload(client: TestClient[Any, Any]) -> str:
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert r.status == 201
    path = path_of(r.headers["Location"])
    assert (await client.patch(path, data=b"abc", headers=patch_headers(0))).status == 204
    return path


@pytest.mark.both_stores
async def test_a_delete_racing_the_sinks_save_leaves_the_upload_terminated(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    client = await gateway(make_client, fake_notion)
    uploads = client.app[RUNTIME].require()
    sink = uploads.sink
    assert isinstance(sink, NotionSink)
    uploads_dir = client.app[CONFIG].data_dir / "uploads"
    for n in range(20):
        path = await started_upload(client)
        upload_id = path.rsplit("/", 1)[1]
        info = (await uploads.store.get(upload_id)).info
        save = sink._save(upload_id, None, detail={"salt": "s"})
        # What a DELETE does once it holds the upload's lock (the sink does not take it).
        delete = uploads.terminate(info, "terminated")
        results = await asyncio.gather(*((delete, save) if n % 2 else (save, delete)),
                                       return_exceptions=True)
        for result in results:
            assert not isinstance(result, BaseException) or isinstance(
                result, (errors.NotFound, errors.Gone)), result
        assert (await client.head(path, headers=TUS)).status == 410, f"round {n}"
        assert not (uploads_dir / f"{upload_id}.info").exists()
