"""What a finished upload's bytes are, for ``--allowed-types``.

``sniff`` reads the first bytes of an upload's data file in an I/O thread and names the
formats they match; ``screen`` hands that to ``protocol.filetypes.verdict``, which decides
whether the file is what it claimed (the rule is in that module's theory of operation).

The signatures come from the ``filetype`` library: pure Python with no dependencies, so it
needs no C library on the host (libmagic bindings do); one small matcher per format, each a
fixed comparison of the first bytes; it recognises ELF and Windows (PE) executables,
ISO-BMFF files by brand (MP4, QuickTime, M4V, 3GPP, HEIC, AVIF, M4A), Matroska and WebM,
PNG, APNG, JPEG, GIF, WebP, TIFF, BMP, PDF, ZIP and the ZIP-based office formats, the common
compressed archives and audio formats. Its current release (1.2.0) is from 2022: matchers
of this kind change only when a format is added, and the ones relied on here are pinned
with real bytes by tests/gateway/test_screening.py.

Two small additions cover what its matchers leave out: an ISO-BMFF file whose ``ftyp``
brands it does not list (DASH and fragmented MP4s, HEIF brands other than ``heic``) and a
QuickTime movie from before ``ftyp`` existed. And bytes that are text (no NUL or other
control byte) are reported as ``text/plain``; the library's two-byte signatures ("MZ",
"BM") that such bytes happen to start with are then dropped, since a CSV beginning "BMW"
is not a bitmap.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import filetype  # type: ignore[import-untyped]

from gateway.aio import IoPool
from protocol.filetypes import MAX_SNIFFED, TEXT_TYPE, AllowedTypes, effective_type, verdict

log = logging.getLogger(__name__)

# filetype's matchers read no more than the first 8192 bytes (the window its own file
# reader uses), so every signature it knows lies inside them; a binary format shows a NUL
# or control byte well within them too. More would only cost reading time.
SNIFF_BYTES = 8192

# Formats that may be all text and still be themselves: kept when the bytes are text.
_TEXT_FORMATS = frozenset({"application/pdf", "application/postscript", "application/rtf"})
# Bytes that text does not contain: C0 controls other than tab, line feed, vertical tab,
# form feed, carriage return and escape (ANSI colours in logs), and DEL.
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1",
                          b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
# The atoms a QuickTime movie without ftyp begins with.
_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})


async def sniff(pool: IoPool, path: Path) -> list[str]:
    """The media types the first ``SNIFF_BYTES`` of ``path`` match, most likely first,
    deduplicated, at most ``MAX_SNIFFED``; ``text/plain`` for text; ``[]`` when nothing
    matches (an empty file, an unknown format). The read and the matching run in an I/O
    thread. Content never makes it raise; an unreadable file raises OSError."""
    return await pool.run(_sniff_file, path)


async def screen(pool: IoPool, allowed: AllowedTypes, metadata: Mapping[str, bytes],
                 path: Path) -> str | None:
    """None when the finished upload at ``path`` may be kept, or the reason it is rejected.
    Reads nothing when every type is allowed."""
    if allowed.allows_all:
        return None
    return verdict(allowed, effective_type(metadata), await sniff(pool, path))


def _sniff_file(path: Path) -> list[str]:
    with open(path, "rb") as f:
        prefix = f.read(SNIFF_BYTES)
    return sniff_bytes(prefix)


def sniff_bytes(prefix: bytes) -> list[str]:
    """``sniff`` on bytes already read: the types they match, most likely first."""
    found: list[str] = []
    prefix = prefix[:SNIFF_BYTES]
    buf = bytearray(prefix)
    if buf:
        # filetype.types is ordered specific before general (docx before zip).
        for kind in filetype.types:
            try:
                matched = bool(kind.match(buf))
            except Exception:  # a matcher tripping on odd bytes is no verdict
                log.debug("the %s matcher failed on a %d-byte prefix", kind.mime, len(buf),
                          exc_info=True)
                continue
            if matched and isinstance(kind.mime, str):
                found.append(kind.mime.lower())
        if not found and (extra := _iso_bmff(prefix)) is not None:
            found.append(extra)
        if looks_like_text(prefix):
            found = [kind for kind in found if kind in _TEXT_FORMATS]
            found.append(TEXT_TYPE)
    return list(dict.fromkeys(found))[:MAX_SNIFFED]


def looks_like_text(prefix: bytes) -> bool:
    """No byte that text lacks (any ASCII-compatible encoding), or UTF-16 with its BOM."""
    if not prefix:
        return False
    if prefix.startswith(_UTF16_BOMS):
        # An odd length or a surrogate pair cut at the end of the prefix is no evidence.
        body = prefix[: len(prefix) - len(prefix) % 2]
        try:
            text = body.decode("utf-16")
        except UnicodeDecodeError:
            try:
                text = body[:-2].decode("utf-16")
            except UnicodeDecodeError:
                return False
        return _CONTROL.search(text.encode("utf-8")) is None
    return _CONTROL.search(prefix) is None


def _iso_bmff(prefix: bytes) -> str | None:
    """An ISO-BMFF or QuickTime file the library did not name: its first box tells."""
    if len(prefix) < 12:
        return None
    size = int.from_bytes(prefix[:4], "big")
    box = prefix[4:8]
    if box == b"ftyp" and size >= 16:
        end = min(size, len(prefix))
        brands = {prefix[8:12]} | {prefix[i:i + 4] for i in range(16, end - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "image/avif"
        if brands & _HEIF_BRANDS:
            return "image/heif"
        return "application/mp4"
    # Size 1: a 64-bit size follows (a large mdat).
    if box in _QUICKTIME_ATOMS and (size == 1 or size >= 8):
        return "video/quicktime"
    return None
