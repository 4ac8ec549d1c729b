"""tuspy (``tusclient``) against a real ``tus-gateway serve`` process.

tuspy is synchronous (requests), so these are plain sync tests talking to the gateway process
over loopback; the async uploader (aiohttp) gets one test of its own. Files are handed over as
open streams so tuspy opens no file of its own that it would leave unclosed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pytest
from tusclient import client as tus_client

from tests.clients.support import (
    MiB,
    assert_delivered,
    download,
    head_offset,
    random_file,
    url_of,
)
from tests.conftest import GatewayProcess

Gateways = Callable[..., GatewayProcess]
SIZE = 5_000_000


def test_whole_file(gateway_process: Gateways, tmp_path: Path) -> None:
    gw = gateway_process()
    source = random_file(tmp_path / "whole.bin", SIZE)
    with source.open("rb") as stream:
        uploader = tus_client.TusClient(gw.url).uploader(
            file_stream=stream, metadata={"filename": "whole.bin"})
        uploader.upload()
    assert uploader.offset == SIZE
    assert url_of(uploader).startswith(gw.url)
    assert_delivered(gw, url_of(uploader), source, "whole.bin")


def test_chunks_of_one_mib_with_checksums(gateway_process: Gateways, tmp_path: Path) -> None:
    """Every PATCH carries ``Upload-Checksum: sha1 ...``, which the gateway verifies."""
    gw = gateway_process()
    source = random_file(tmp_path / "chunked.bin", SIZE)
    seen: list[int] = []
    with source.open("rb") as stream:
        uploader: Any = tus_client.TusClient(gw.url).uploader(
            file_stream=stream, chunk_size=MiB, upload_checksum=True,
            metadata={"filename": "chunked.bin"})
        while uploader.offset < SIZE:
            uploader.upload_chunk()
            seen.append(uploader.offset)
            assert head_offset(url_of(uploader)) == uploader.offset
    assert seen == [min(SIZE, (i + 1) * MiB) for i in range(-(-SIZE // MiB))]
    assert_delivered(gw, url_of(uploader), source, "chunked.bin")


def test_resume_with_a_new_uploader(gateway_process: Gateways, tmp_path: Path) -> None:
    """The first run stops after some chunks; a new uploader given the same URL asks the
    gateway for the offset and sends only the rest."""
    gw = gateway_process()
    source = random_file(tmp_path / "resume.bin", SIZE)
    client = tus_client.TusClient(gw.url)
    with source.open("rb") as stream:
        first = client.uploader(file_stream=stream, chunk_size=512 * 1024,
                                metadata={"filename": "resume.bin"})
        first.upload(stop_at=2 * MiB)
    assert first.offset == 2 * MiB
    url = url_of(first)
    assert head_offset(url) == 2 * MiB
    assert not (gw.data_dir / "complete" / "resume.bin").exists()

    with source.open("rb") as stream:
        second = client.uploader(file_stream=stream, url=url, chunk_size=512 * 1024)
        assert second.offset == 2 * MiB  # read from the gateway with HEAD, not from 0
        second.upload()
    assert url_of(second) == url
    assert second.offset == SIZE
    assert_delivered(gw, url, source, "resume.bin")


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_non_ascii_filename(gateway_process: Gateways, tmp_path: Path,
                            form: Literal["NFC", "NFD"]) -> None:
    """A UTF-8 filename lands in complete/ under that name (normalized to NFC)."""
    gw = gateway_process()
    name = "Résumé 日本語 ✓ naïve.txt"
    sent_name = unicodedata.normalize(form, name)
    source = random_file(tmp_path / "upload.txt", 300_000)
    with source.open("rb") as stream:
        uploader = tus_client.TusClient(gw.url).uploader(
            file_stream=stream, chunk_size=128 * 1024,
            metadata={"filename": sent_name, "filetype": "text/plain"})
        uploader.upload()
    expected = unicodedata.normalize("NFC", name)
    assert_delivered(gw, url_of(uploader), source, expected)
    assert [p.name for p in (gw.data_dir / "complete").iterdir()] == [expected]
    _body, headers = download(url_of(uploader))
    assert headers["Content-Type"] == "text/plain"
    assert f"filename*=UTF-8''{quote(expected, safe='')}" in headers["Content-Disposition"]


async def test_async_uploader(gateway_process: Gateways, tmp_path: Path) -> None:
    gw = gateway_process()
    source = random_file(tmp_path / "async.bin", SIZE)
    with source.open("rb") as stream:
        uploader = tus_client.TusClient(gw.url).async_uploader(
            file_stream=stream, chunk_size=MiB, metadata={"filename": "async.bin"})
        await uploader.upload()
    assert uploader.offset == SIZE
    assert_delivered(gw, url_of(uploader), source, "async.bin")
