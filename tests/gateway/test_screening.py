"""Screening finished uploads: real bytes in real files, through the real sniffing library."""

from __future__ import annotations

import asyncio
import io
import random
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import filetype  # type: ignore[import-untyped]
import pytest

from gateway.aio import IoPool
from gateway.config import parse_size
from gateway.screening import SNIFF_BYTES, screen, sniff, sniff_bytes
from protocol.filetypes import (
    MAX_SNIFFED,
    SIGNED_TYPES,
    AllowedTypes,
    parse_media_type,
    same_format,
)

EXAMPLE = "video/*=5GiB,image/*=50MiB,application/pdf"
ELF = "application/x-executable"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


# --- samples: the bytes real files start with --------------------------------------------
def box(kind: bytes, body: bytes) -> bytes:
    """An ISO-BMFF box (ISO/IEC 14496-12 section 4.2): size, type, body."""
    return struct.pack(">I", 8 + len(body)) + kind + body


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    return box(b"ftyp", major + b"\x00\x00\x02\x00" + b"".join(compatible))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


# A 1x1 RGB PNG: signature, IHDR, IDAT, IEND.
PNG = (b"\x89PNG\r\n\x1a\n"
       + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
       + png_chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
       + png_chunk(b"IEND", b""))
# JPEG: SOI, a JFIF APP0 segment, a quantisation table, a 1x1 frame header, EOI.
JPEG = (bytes.fromhex("ffd8ffe000104a46494600010100000100010000") + bytes.fromhex("ffdb004300")
        + bytes(64) + bytes.fromhex("ffc0000b080001000101011100") + bytes.fromhex("ffd9"))
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
       b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
_VP8L = b"\x2f\x00\x00\x00\x00\x88\x88\x08"
WEBP = (b"RIFF" + struct.pack("<I", 12 + len(_VP8L)) + b"WEBP" + b"VP8L"
        + struct.pack("<I", len(_VP8L)) + _VP8L)
MP4 = (ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41") + box(b"free", b"")
       + box(b"mdat", bytes(32)) + box(b"moov", box(b"mvhd", bytes(100))))
MOV = ftyp(b"qt  ", b"qt  ") + box(b"moov", box(b"mvhd", bytes(100)))
# A DASH segment's brands, which the library's MP4 matcher does not list.
DASH = ftyp(b"dash", b"iso6", b"avc1") + box(b"moov", box(b"mvhd", bytes(100)))
# A QuickTime movie from before ftyp: it begins with its moov atom.
OLD_MOV = box(b"moov", box(b"mvhd", bytes(100)))
HEIC = ftyp(b"heic", b"mif1", b"heic") + box(b"meta", bytes(20))
HEIX = ftyp(b"heix", b"mif1", b"heix") + box(b"meta", bytes(20))
PDF = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
       b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n"
       b"%%EOF\n")
# An ELF64 header (the System V ABI, 64 bytes): an x86-64 executable, entry 0x401000.
ELF_HEADER = (b"\x7fELF\x02\x01\x01\x00" + bytes(8)
              + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, 0x401000, 64, 0, 0, 64, 56, 0, 64,
                            0, 0))
# A PE file's MS-DOS stub pointing at its "PE\0\0" header (Microsoft PE format).
PE = (b"MZ" + bytes(58) + struct.pack("<I", 0x40) + b"PE\x00\x00"
      + struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, 0xF0, 0x22) + bytes(256))
TEXT = b"hello world\nthis is text, nothing more\n"
# A CSV whose first two bytes are the BMP signature.
CSV = b"BMW,3 series,2019\nAudi,A4,2020\n"
UTF16 = "\ufeffname,city\nZo\u00eb,K\u00f6ln\n".encode("utf-16-le")


def zip_bytes(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buf.getvalue()


ZIP = zip_bytes({"hello.txt": "hello"})
DOCX_BYTES = zip_bytes({"[Content_Types].xml": "<Types/>", "word/document.xml": "<w/>"})


@pytest.fixture
async def pool() -> AsyncIterator[IoPool]:
    workers = IoPool(2)
    yield workers
    # Closing waits for the threads: not on the loop.
    await asyncio.get_running_loop().run_in_executor(None, workers.close)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def md(filetype: str, filename: str) -> dict[str, bytes]:
    return {"filetype": filetype.encode(), "filename": filename.encode()}


# --- what the sniffer sees ----------------------------------------------------------------
@pytest.mark.parametrize("data,first", [
    (ELF_HEADER, ELF),
    (ELF_HEADER + bytes(4096), ELF),
    (PE, "application/x-msdownload"),
    (MP4, "video/mp4"),
    (MOV, "video/quicktime"),
    (DASH, "application/mp4"),
    (OLD_MOV, "video/quicktime"),
    (HEIC, "image/heic"),
    (HEIX, "image/heif"),
    (PNG, "image/png"),
    (JPEG, "image/jpeg"),
    (GIF, "image/gif"),
    (WEBP, "image/webp"),
    (PDF, "application/pdf"),
    (ZIP, "application/zip"),
    (DOCX_BYTES, DOCX),
    (TEXT, "text/plain"),
    (CSV, "text/plain"),
    (UTF16, "text/plain"),
])
async def test_sniff_names_real_bytes(pool: IoPool, tmp_path: Path, data: bytes,
                                      first: str) -> None:
    found = await sniff(pool, write(tmp_path, "upload", data))
    assert found[0] == first, found
    assert len(found) == len(set(found)) <= MAX_SNIFFED


async def test_sniff_lists_the_general_type_after_the_specific(pool: IoPool,
                                                               tmp_path: Path) -> None:
    assert await sniff(pool, write(tmp_path, "a", DOCX_BYTES)) == [DOCX, "application/zip"]


async def test_text_is_no_bitmap(pool: IoPool, tmp_path: Path) -> None:
    # The library alone takes any "BM" for a bitmap.
    assert filetype.guess_mime(CSV) == "image/bmp"
    assert await sniff(pool, write(tmp_path, "cars.csv", CSV)) == ["text/plain"]


async def test_sniff_of_nothing_recognised(pool: IoPool, tmp_path: Path) -> None:
    assert await sniff(pool, write(tmp_path, "empty", b"")) == []
    noise = bytes(random.Random(7).randrange(256) for _ in range(4096))
    assert await sniff(pool, write(tmp_path, "noise", b"\x00\x01" + noise)) == []


def test_the_prefix_holds_every_signature_the_library_reads() -> None:
    # filetype reads this many bytes of a file itself; a version that reads more would
    # need SNIFF_BYTES raised with it.
    assert filetype.utils._NUM_SIGNATURE_BYTES <= SNIFF_BYTES


async def test_sniff_reads_only_the_prefix(pool: IoPool, tmp_path: Path) -> None:
    # Text for SNIFF_BYTES, then an ELF header: what lies past the prefix is not read.
    data = b"a" * SNIFF_BYTES + ELF_HEADER
    assert await sniff(pool, write(tmp_path, "long", data)) == ["text/plain"]
    data = b"a" * (SNIFF_BYTES - 1) + b"\x00"
    assert await sniff(pool, write(tmp_path, "nul", data)) == []


async def test_an_unreadable_file_is_an_error_not_a_verdict(pool: IoPool,
                                                            tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await sniff(pool, tmp_path / "missing")


@pytest.mark.parametrize("sample", [ELF_HEADER, PE, MP4, MOV, DASH, HEIC, PNG, JPEG, GIF, WEBP,
                                    PDF, ZIP, DOCX_BYTES, TEXT, UTF16])
def test_odd_content_never_raises(sample: bytes) -> None:
    # Every cut of every sample, and each cut with its last byte flipped.
    for end in range(len(sample) + 1):
        for data in (sample[:end], sample[:end - 1] + bytes([sample[end - 1] ^ 0xFF])
                     if end else b""):
            found = sniff_bytes(data)
            assert len(found) <= MAX_SNIFFED
            assert all(parse_media_type(kind) == kind for kind in found)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(12)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
        found = sniff_bytes(data)
        assert all(parse_media_type(kind) == kind for kind in found)
    for first in range(256):
        sniff_bytes(bytes([first]) * 70)


def test_every_signed_type_is_one_the_sniffer_recognises() -> None:
    # A claim in SIGNED_TYPES in which nothing is recognised is rejected: the sniffer must
    # know a signature of each, or real files of that type would all be rejected.
    known = {kind.mime for kind in filetype.types} | {"application/mp4", "video/quicktime",
                                                      "image/heif", "image/avif"}
    missing = sorted(kind for kind in SIGNED_TYPES
                     if not any(same_format(kind, seen) for seen in known))
    assert missing == []


@pytest.mark.parametrize("size", ["1024", "1", "1k", "2KB", "1.5KiB", "50MiB", "50m",
                                  "5GiB", "0.5g", "2TiB", "3 gib"])
def test_sizes_read_as_the_gateway_reads_them(size: str) -> None:
    allowed = AllowedTypes.parse(f"video/*={size}")
    assert allowed.limit_for("video/mp4") == parse_size(size)


# --- the verdicts on real files -------------------------------------------------------------
@pytest.mark.parametrize("allowed,data,metadata,expected", [
    (EXAMPLE, ELF_HEADER, md("video/mp4", "clip.mp4"),
     "the bytes are an ELF executable (application/x-executable), not video/mp4"),
    (EXAMPLE, PE, md("image/png", "cat.png"),
     "the bytes are a Windows executable (application/x-msdownload), not image/png"),
    (EXAMPLE, MP4, md("video/mp4", "clip.mp4"), None),
    (EXAMPLE, MOV, md("video/mp4", "clip.mp4"), None),
    (EXAMPLE, MOV, md("video/quicktime", "clip.mov"), None),
    (EXAMPLE, DASH, md("video/mp4", "clip.mp4"), None),
    (EXAMPLE, OLD_MOV, md("video/quicktime", "clip.mov"), None),
    (EXAMPLE, HEIX, md("image/heic", "photo.heic"), None),
    (EXAMPLE, PNG, md("image/png", "cat.png"), None),
    (EXAMPLE, PNG, md("image/jpeg", "cat.jpg"), None),  # both images are welcome
    ("image/jpeg", PNG, md("image/jpeg", "cat.jpg"),
     "the bytes are a PNG image (image/png), not image/jpeg"),
    (EXAMPLE, JPEG, md("image/jpeg", "cat.jpg"), None),
    (EXAMPLE, GIF, md("image/gif", "cat.gif"), None),
    (EXAMPLE, WEBP, md("image/webp", "cat.webp"), None),
    (EXAMPLE, PDF, md("application/pdf", "report.pdf"), None),
    (EXAMPLE, ZIP, md("application/pdf", "report.pdf"), "a ZIP archive (application/zip)"),
    (EXAMPLE, TEXT, md("application/pdf", "report.pdf"),
     "the bytes are text, not application/pdf"),
    (EXAMPLE, TEXT, md("video/mp4", "clip.mp4"), "the bytes are text, not video/mp4"),
    ("application/zip", ZIP, md("application/x-zip-compressed", "a.zip"), None),
    ("application/zip", DOCX_BYTES, md("application/zip", "a.zip"), None),
    (f"{DOCX}", ZIP, md(DOCX, "letter.docx"), None),
    ("text/*", TEXT, md("text/plain", "notes.txt"), None),
    ("text/*", CSV, md("text/csv", "cars.csv"), None),
    ("text/*", UTF16, md("text/csv", "names.csv"), None),
    ("text/*", ELF_HEADER, md("text/plain", "notes.txt"), "an ELF executable"),
    ("text/*", b"", md("text/plain", "empty.txt"), None),
    (EXAMPLE, b"", md("video/mp4", "clip.mp4"),
     "does not start with the signature every video/mp4 file has"),
    # A PNG cut short after its signature still says PNG: a check of the label, not of
    # the whole file.
    (EXAMPLE, PNG[:20], md("image/png", "cat.png"), None),
    # Cut inside its signature, it is no PNG (four bytes that are text, in fact).
    (EXAMPLE, PNG[:4], md("image/png", "cat.png"), "not image/png"),
    (EXAMPLE, PNG[:2], md("image/png", "cat.png"), "not image/png"),
    (EXAMPLE, ELF_HEADER[:20], md("video/mp4", "clip.mp4"), "video/mp4"),
])
async def test_screen(pool: IoPool, tmp_path: Path, allowed: str, data: bytes,
                      metadata: dict[str, bytes], expected: str | None) -> None:
    path = write(tmp_path, "upload", data)
    reason = await screen(pool, AllowedTypes.parse(allowed), metadata, path)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason


async def test_screen_reads_nothing_when_every_type_is_allowed(pool: IoPool,
                                                               tmp_path: Path) -> None:
    # A path that does not exist: any read would raise.
    assert await screen(pool, AllowedTypes.parse(""), md("video/mp4", "clip.mp4"),
                        tmp_path / "missing") is None
    with pytest.raises(FileNotFoundError):
        await screen(pool, AllowedTypes.parse(EXAMPLE), md("video/mp4", "clip.mp4"),
                     tmp_path / "missing")
