"""The file types Notion's File Upload API accepts (docs/notion-contract.md §5).

The fake refuses a file whose type is not on the list, as Notion does. The table is the
fake's own, not the sink's: a sink that sent a type Notion refuses must fail its tests here,
which it would not if both read one list. It is configurable (``FakeConfig.file_types``)
because Notion's own has been reported to grow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# --- accepted file types (§5: the official table, every stored copy 2025-2026) -----------------
# Extension -> MIME types that may go with it. The first MIME type is what the fake infers
# from the extension, except .mp4, which OBS showed inferred as application/mp4 (rule 9).
_WORD = "application/vnd.openxmlformats-officedocument.wordprocessingml"
_SHEET = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_SLIDES = "application/vnd.openxmlformats-officedocument.presentationml"
DEFAULT_FILE_TYPES: Mapping[str, tuple[str, ...]] = {
    # audio
    "aac": ("audio/aac",), "adts": ("audio/aac",), "mid": ("audio/midi",),
    "midi": ("audio/midi",), "mp3": ("audio/mpeg",), "mpga": ("audio/mpeg",),
    "m4a": ("audio/mp4",), "m4b": ("audio/mp4",), "oga": ("audio/ogg",),
    "ogg": ("audio/ogg",), "wav": ("audio/wav",), "wma": ("audio/x-ms-wma",),
    # documents
    "pdf": ("application/pdf",), "txt": ("text/plain",), "json": ("application/json",),
    "doc": ("application/msword",), "dot": ("application/msword",),
    "docx": (f"{_WORD}.document",), "dotx": (f"{_WORD}.template",),
    "xls": ("application/vnd.ms-excel",), "xlt": ("application/vnd.ms-excel",),
    "xla": ("application/vnd.ms-excel",), "xlsx": (f"{_SHEET}.sheet",),
    "xltx": (f"{_SHEET}.template",), "ppt": ("application/vnd.ms-powerpoint",),
    "pot": ("application/vnd.ms-powerpoint",), "pps": ("application/vnd.ms-powerpoint",),
    "ppa": ("application/vnd.ms-powerpoint",), "pptx": (f"{_SLIDES}.presentation",),
    "potx": (f"{_SLIDES}.template",),
    # images
    "gif": ("image/gif",), "heic": ("image/heic",), "jpeg": ("image/jpeg",),
    "jpg": ("image/jpeg",), "png": ("image/png",), "svg": ("image/svg+xml",),
    "tif": ("image/tiff",), "tiff": ("image/tiff",), "webp": ("image/webp",),
    "ico": ("image/vnd.microsoft.icon",),
    # video (.mp4 is listed under audio and video: all three types go with it)
    "amv": ("video/x-amv",), "asf": ("video/x-ms-asf",), "wmv": ("video/x-ms-asf",),
    "avi": ("video/x-msvideo",), "f4v": ("video/x-f4v",), "flv": ("video/x-flv",),
    "gifv": ("video/mp4",), "m4v": ("video/mp4",),
    "mp4": ("application/mp4", "video/mp4", "audio/mp4"),
    "mkv": ("video/webm",), "webm": ("video/webm",), "mov": ("video/quicktime",),
    "qt": ("video/quicktime",), "mpeg": ("video/mpeg",),
}


@dataclass(frozen=True, slots=True)
class FileTypes:
    """The allow-list (configurable, §5): extension -> MIME types."""

    table: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_FILE_TYPES)

    def mime_types(self) -> frozenset[str]:
        return frozenset(m for mimes in self.table.values() for m in mimes)

    def extension_for(self, mime: str) -> str | None:
        for ext, mimes in self.table.items():
            if mime in mimes:
                return ext
        return None


def extension_of(filename: str) -> str | None:
    """The lower-cased text after the last dot, or None (``notes.md.txt`` -> ``txt``)."""
    _stem, dot, ext = filename.rpartition(".")
    return ext.lower() if dot and ext else None
