"""Safe names and types for finished uploads (TUS-CRE-08).

Metadata is whatever the client says. Before a filename lands in a path or a header it goes
through ``safe_filename``; a content type reaches a response only when it is on an allow-list
of types a browser will not execute, so a download link can never serve a page or a script
from our origin.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from urllib.parse import quote

# Types that are safe to show inline: media and plain text, never HTML, SVG or XML, which a
# browser would run in our origin. Anything else is served as application/octet-stream.
INLINE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mpeg", "audio/ogg", "audio/wav", "audio/webm", "audio/flac", "audio/mp4", "audio/aac",
    "application/pdf", "text/plain",
})
FALLBACK_TYPE = "application/octet-stream"
# Bytes, not characters: file systems limit names to 255 bytes; room is left for a suffix
# that makes the name unique.
MAX_NAME_BYTES = 200
_FORBIDDEN = set('<>:"/\\|?*')
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)})


def metadata_filename(metadata: Mapping[str, bytes]) -> bytes | None:
    """Uppy and tus-js-client send ``filename``; some clients send ``name``."""
    return metadata.get("filename") or metadata.get("name")


def metadata_type(metadata: Mapping[str, bytes]) -> bytes | None:
    return metadata.get("filetype") or metadata.get("type")


def safe_filename(raw: bytes | None, fallback: str) -> str:
    """A single path component that is safe on POSIX and Windows, or ``fallback``."""
    if not raw:
        return fallback
    text = unicodedata.normalize("NFC", raw.decode("utf-8", "replace"))
    # Only the last component counts: "../../etc/passwd" and "C:\\x\\y.txt" name a file.
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(
        "_" if ch in _FORBIDDEN else ch
        for ch in text
        if unicodedata.category(ch)[0] != "C"  # control, format, surrogate, unassigned
    )
    cleaned = cleaned.strip(" .")
    if not cleaned:
        return fallback
    stem, dot, ext = cleaned.rpartition(".")
    if not dot:
        stem, ext = cleaned, ""
    if stem.lower() in _WINDOWS_RESERVED:
        stem = "_" + stem
    ext = _truncate(ext, 20)
    suffix = "." + ext if ext else ""
    stem = _truncate(stem, MAX_NAME_BYTES - len(suffix.encode()))
    return (stem + suffix) if stem else fallback


def _truncate(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


def download_type(metadata: Mapping[str, bytes]) -> str:
    raw = metadata_type(metadata)
    if raw:
        candidate = raw.decode("ascii", "replace").split(";", 1)[0].strip().lower()
        if candidate in INLINE_TYPES:
            return candidate
    return FALLBACK_TYPE


def content_disposition(filename: str, content_type: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name in ``filename*``."""
    kind = "inline" if content_type in INLINE_TYPES else "attachment"
    ascii_name = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "_"
                         for ch in filename)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
