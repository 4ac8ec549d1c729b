"""Which file types an upload may be (``--allowed-types``), and the checks that apply it.

Theory of operation
-------------------
The setting is a list of entries, each a media type (``application/pdf``) or a family
(``video/*``) with an optional size limit (``video/*=5GiB``). A type is allowed when an entry
names it exactly or names its family; the exact entry wins, so
``image/png=1MiB,image/*=50MiB`` holds PNGs to 1 MiB and other images to 50 MiB. Spellings of
one format (``image/jpg`` and ``image/jpeg``, ``audio/x-wav`` and ``audio/wav``) are one type
everywhere (``canonical_type``). An empty setting allows everything and nothing here runs.

An upload is judged three times, each time on what is known by then:

1. At creation (``check_creation``), on what the client says. The claim is the ``filetype``
   metadata (Uppy and tus-js-client send it; ``type``, ``contentType`` and ``content_type``
   are read when it is absent, the first present one counts, as in ``protocol.names``). A
   missing, malformed or unlisted claim is refused with 415. The file name is a second
   witness: its extension, looked up in the stdlib's own table (never the host's
   ``/etc/mime.types``, so answers do not change from machine to machine), must name an
   allowed type that agrees with the claim, so ``clip.exe`` claiming ``video/mp4`` is refused
   before a byte is sent. The name is taken as ``protocol.names.safe_filename`` will deliver
   it (trailing dots and invisible characters gone), since that is the name that gets
   opened. A name without a known extension says nothing. A declared length above the
   limit of the claim's entry (or of the name's, whichever is smaller) is refused with 413.
2. When a deferred length is declared (``check_length``): the same size check.
3. After the last byte (``verdict``), on what the bytes are: the types a content sniffer
   recognised in the file's first bytes. The rule, in order:

   - accept when a recognised type is the claimed format: the same type, another name of
     it, a sibling in the same container (ISO-BMFF ``ftyp`` files: MP4, QuickTime, M4V,
     3GPP, M4A; Matroska and WebM; Ogg; HEIF; PNG and APNG; the OLE compound file of the old
     Office formats), or a ZIP for a ZIP-based claim (docx, odt, epub, jar) and back, since
     the first bytes of a ZIP do not tell which it is;
   - accept when the claim is an image, video or audio type and a recognised type of the
     same family is allowed too, with a size limit no smaller than the claim's (a JPEG
     labelled PNG where both are welcome harms nobody);
   - accept text for a textual claim (``text/*``, JSON, XML, YAML, CSV, SVG, playlists);
   - for ``application/octet-stream`` (the client does not know), accept when a recognised
     type is itself allowed, or nothing binary is recognised;
   - otherwise reject when the sniffer recognised some other binary format: the file is not
     what it claimed ("the bytes are an ELF executable (application/x-executable), not
     video/mp4");
   - reject text where a binary media type was claimed (image, video, audio and font types
     are binary, except the textual ones above), and reject when nothing is recognised but
     the claim is one of ``SIGNED_TYPES``, formats whose files always begin with a signature
     the sniffer knows (PNG, JPEG, MP4, PDF, ZIP...);
   - accept anything else: a claim without a reliable signature (CSV, JSON, TGA, MP3
     without an ID3 tag) cannot be checked from its first bytes.

This is a check of labels, not of validity or safety: a file whose first bytes are a valid
MP4 header passes as MP4 whatever follows. It stops mislabelled files and disguised
executables, not crafted ones.

Everything here is pure: the caller reads the bytes and passes in the sniffer's answer.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

from protocol import errors
from protocol.names import metadata_filename, safe_filename

# Bounds on the setting: it is configuration, but a typo (a pasted list of every type) should
# get a clear message, not a slow start or a 100 KB error body.
MAX_ENTRIES = 100
MAX_TEXT_CHARS = 32 * 1024
# RFC 6838 section 4.2: type and subtype names are at most 127 characters each, so a media
# type is at most 255; anything longer in the metadata is not one.
MAX_TYPE_CHARS = 255
# A claim with parameters ("text/plain; charset=utf-8") may run longer than the bare type.
MAX_CLAIM_BYTES = 1024
# Most sniffed types considered, and most characters of the accepted list in a message.
MAX_SNIFFED = 16
MAX_LISTED_CHARS = 400
# The largest size limit: Upload-Length is a signed 64-bit number in every store.
MAX_LIMIT_BYTES = 2**63 - 1

KiB = 1024
# The units of gateway.config.parse_size (binary, since disks and tus count bytes); repeated
# here because protocol/ does not import gateway/.
_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": KiB**2, "mb": KiB**2,
               "mib": KiB**2, "g": KiB**3, "gb": KiB**3, "gib": KiB**3, "t": KiB**4,
               "tb": KiB**4, "tib": KiB**4}
_SHOWN_UNITS = (("TiB", KiB**4), ("GiB", KiB**3), ("MiB", KiB**2), ("KiB", KiB))

# RFC 6838 section 4.2, restricted-name: a letter or digit, then up to 126 of these. The
# class is ASCII only and the text is checked to be ASCII before it is lower-cased, since
# str.lower() turns some non-ASCII letters (the Kelvin sign) into ASCII ones.
_NAME = r"[a-z0-9][a-z0-9!#$&\-^_.+]{0,126}"
_MEDIA_TYPE = re.compile(rf"{_NAME}/{_NAME}")
_PATTERN = re.compile(rf"{_NAME}/(?:{_NAME}|\*)")
_SIZE = re.compile(r"([0-9]{1,20})(?:\.([0-9]{1,20}))?[ \t]*([a-z]*)")

# Metadata keys that carry the claimed type, first present one wins (protocol.names reads
# the first two in this order for downloads, so the type checked is the type served).
CLAIM_KEYS = ("filetype", "type", "contentType", "content_type")
GENERIC_TYPE = "application/octet-stream"
# What the sniffer reports for bytes that are text (gateway.screening).
TEXT_TYPE = "text/plain"
MEDIA_FAMILIES = frozenset({"image", "video", "audio"})
_BINARY_FAMILIES = MEDIA_FAMILIES | {"font"}


# --- names of one format ------------------------------------------------------------------
# Each key is another spelling of its value: browsers, operating systems and sniffers do not
# agree on names (Chrome on Windows says application/x-zip-compressed, libmagic says
# audio/x-wav). The value is the IANA-registered name where there is one.
_CANONICAL: Mapping[str, str] = MappingProxyType({
    "image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-citrix-jpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/x-ms-bmp": "image/bmp", "image/x-bmp": "image/bmp",
    "image/x-icon": "image/vnd.microsoft.icon", "image/ico": "image/vnd.microsoft.icon",
    "image/x-photoshop": "image/vnd.adobe.photoshop", "image/psd": "image/vnd.adobe.photoshop",
    "application/x-photoshop": "image/vnd.adobe.photoshop",
    "audio/x-wav": "audio/wav", "audio/wave": "audio/wav", "audio/vnd.wave": "audio/wav",
    "audio/x-pn-wav": "audio/wav",
    "audio/x-flac": "audio/flac",
    "audio/mp3": "audio/mpeg", "audio/x-mp3": "audio/mpeg", "audio/mpeg3": "audio/mpeg",
    "audio/x-mpeg": "audio/mpeg", "audio/x-mpeg-3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4", "audio/m4a": "audio/mp4",
    "audio/x-aac": "audio/aac",
    "audio/x-midi": "audio/midi", "audio/mid": "audio/midi",
    "audio/x-aiff": "audio/aiff",
    "video/avi": "video/x-msvideo", "video/msvideo": "video/x-msvideo",
    "application/x-zip-compressed": "application/zip", "application/x-zip": "application/zip",
    "application/x-gzip": "application/gzip", "application/x-gzip-compressed": "application/gzip",
    "application/x-rar-compressed": "application/vnd.rar",
    "application/x-rar": "application/vnd.rar",
    "application/x-bzip": "application/x-bzip2",
    "application/x-msdownload": "application/vnd.microsoft.portable-executable",
    "application/x-msdos-program": "application/vnd.microsoft.portable-executable",
    "application/x-dosexec": "application/vnd.microsoft.portable-executable",
    "application/x-ms-dos-executable": "application/vnd.microsoft.portable-executable",
    "application/x-winexe": "application/vnd.microsoft.portable-executable",
    "application/x-elf": "application/x-executable",
    "application/x-sharedlib": "application/x-executable",
    "application/x-pie-executable": "application/x-executable",
    "application/javascript": "text/javascript", "application/x-javascript": "text/javascript",
    "application/ecmascript": "text/javascript",
    "text/rtf": "application/rtf",
    "application/font-woff": "font/woff", "application/x-font-woff": "font/woff",
    "application/x-font-ttf": "font/ttf", "application/x-font-truetype": "font/ttf",
    "application/x-font-otf": "font/otf", "application/x-font-opentype": "font/otf",
    "application/font-sfnt": "font/sfnt",
    "application/x-sqlite3": "application/vnd.sqlite3",
    "application/x-yaml": "application/yaml", "text/yaml": "application/yaml",
    "text/x-yaml": "application/yaml",
    "text/x-csv": "text/csv", "application/csv": "text/csv",
    "text/comma-separated-values": "text/csv",
    "text/x-markdown": "text/markdown",
    "text/xml": "application/xml",
})

# Formats that share one container, so a sniffer reading the first bytes tells them apart
# poorly or not at all (an MP4 and a MOV differ only in a brand name that encoders choose).
_SIBLINGS: tuple[frozenset[str], ...] = (
    frozenset({"application/mp4", "video/mp4", "video/quicktime", "video/x-m4v", "video/3gpp",
               "video/3gpp2", "audio/mp4", "audio/3gpp", "audio/3gpp2"}),
    frozenset({"image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"}),
    frozenset({"video/x-matroska", "video/webm", "audio/webm", "audio/x-matroska"}),
    frozenset({"application/ogg", "audio/ogg", "video/ogg", "audio/opus", "audio/vorbis"}),
    frozenset({"image/png", "image/apng"}),
    frozenset({"image/tiff", "image/x-canon-cr2"}),
    frozenset({"video/x-ms-wmv", "video/x-ms-asf", "audio/x-ms-wma"}),
    frozenset({"application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
               "application/vnd.ms-outlook", "application/x-ole-storage"}),
    frozenset({"font/ttf", "font/otf", "font/sfnt"}),
    frozenset({"font/woff", "font/woff2"}),
)
_SIBLING_OF: Mapping[str, frozenset[str]] = MappingProxyType(
    {member: group for group in _SIBLINGS for member in group})

# Formats that are ZIP archives inside; besides these, any "+zip" type (RFC 6839).
_ZIP_BASED = frozenset({
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text", "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "application/vnd.oasis.opendocument.graphics",
    "application/java-archive", "application/vnd.android.package-archive",
})

# Formats whose files always start with a signature the sniffer (gateway.screening) knows:
# a file claiming one of these in which nothing is recognised is not one.
# tests/gateway/test_screening.py checks that the sniffer recognises each. Left out on
# purpose: MPEG audio and AAC (frames have sync patterns the sniffer does not all know, and
# MP3s need no ID3 tag), TAR (old archives lack the "ustar" mark), fonts and the old Office
# formats (signature checks that real files miss).
SIGNED_TYPES = frozenset({
    "image/jpeg", "image/png", "image/apng", "image/gif", "image/webp", "image/tiff",
    "image/bmp", "image/vnd.microsoft.icon", "image/heic", "image/heif", "image/avif",
    "image/vnd.adobe.photoshop",
    "video/mp4", "video/quicktime", "video/x-m4v", "video/3gpp", "video/x-matroska",
    "video/webm", "video/x-msvideo", "video/x-ms-wmv", "video/x-flv", "video/mpeg",
    "audio/mp4", "audio/ogg", "audio/flac", "audio/wav", "audio/midi", "audio/amr",
    "audio/aiff", "audio/webm",
    "application/pdf", "application/zip", "application/gzip", "application/x-7z-compressed",
    "application/vnd.rar", "application/x-bzip2", "application/x-xz", "application/zstd",
    "application/wasm", "application/vnd.sqlite3",
    "application/vnd.microsoft.portable-executable", "application/x-executable",
    "application/epub+zip",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text", "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
})

# Types whose files are text, besides text/*, "+json" and "+xml".
_TEXTUAL = frozenset({
    "application/json", "application/xml", "application/yaml", "application/toml",
    "application/x-sh", "application/x-csh", "application/sql", "application/x-tex",
    "application/x-latex", "application/x-ndjson", "application/ndjson", "application/x-subrip",
    "application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/x-mpegurl",
    "audio/mpegurl", "application/rtf", "application/postscript", "application/x-httpd-php",
    "application/x-perl", "application/x-python", "application/x-ruby", "application/mbox",
    "application/x-www-form-urlencoded", "application/x-pem-file", "application/pgp-signature",
    "application/pgp-keys", "application/x-bat", "application/x-ipynb+json",
})

# Words for a message; other types are shown by name only.
_DESCRIPTIONS: Mapping[str, str] = MappingProxyType({
    "application/x-executable": "an ELF executable",
    "application/vnd.microsoft.portable-executable": "a Windows executable",
    "application/zip": "a ZIP archive", "application/gzip": "a gzip archive",
    "application/x-7z-compressed": "a 7-Zip archive", "application/vnd.rar": "a RAR archive",
    "application/x-bzip2": "a bzip2 archive", "application/x-xz": "an xz archive",
    "application/zstd": "a Zstandard archive", "application/x-tar": "a tar archive",
    "application/pdf": "a PDF document", "application/wasm": "a WebAssembly module",
    "application/vnd.sqlite3": "an SQLite database", "application/x-deb": "a Debian package",
    "application/x-rpm": "an RPM package", "application/rtf": "an RTF document",
    "application/postscript": "a PostScript document",
    "application/msword": "a Word document", "application/vnd.ms-excel": "an Excel workbook",
    "application/vnd.ms-powerpoint": "a PowerPoint presentation",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document":
        "a Word document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "an Excel workbook",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation":
        "a PowerPoint presentation",
    "application/mp4": "an MPEG-4 file",
    "image/jpeg": "a JPEG image", "image/png": "a PNG image", "image/apng": "an APNG image",
    "image/gif": "a GIF image", "image/webp": "a WebP image", "image/tiff": "a TIFF image",
    "image/bmp": "a BMP image", "image/heic": "a HEIC image", "image/heif": "a HEIF image",
    "image/avif": "an AVIF image", "image/vnd.microsoft.icon": "an icon",
    "video/mp4": "an MPEG-4 video", "video/quicktime": "a QuickTime video",
    "video/x-matroska": "a Matroska video", "video/webm": "a WebM video",
    "video/x-msvideo": "an AVI video", "video/mpeg": "an MPEG video",
    "video/x-flv": "a Flash video", "video/x-ms-wmv": "a Windows Media video",
    "audio/mpeg": "an MP3 audio file", "audio/mp4": "an MPEG-4 audio file",
    "audio/ogg": "an Ogg file", "audio/flac": "a FLAC audio file", "audio/wav": "a WAV audio file",
    "audio/aac": "an AAC audio file", "audio/midi": "a MIDI file",
    "text/plain": "text",
})

# Extensions the stdlib table (Python 3.11) lacks or names vaguely (.exe there is
# application/octet-stream, .bat text/plain; both run when opened on Windows).
_EXTRA_EXTENSIONS: Mapping[str, str] = MappingProxyType({
    ".webp": "image/webp", ".heic": "image/heic", ".heif": "image/heif", ".avif": "image/avif",
    ".jfif": "image/jpeg", ".apng": "image/apng", ".psd": "image/vnd.adobe.photoshop",
    ".mkv": "video/x-matroska", ".mka": "audio/x-matroska", ".webm": "video/webm",
    ".m4v": "video/x-m4v", ".3gp": "video/3gpp", ".flv": "video/x-flv",
    ".wmv": "video/x-ms-wmv", ".wma": "audio/x-ms-wma", ".ogv": "video/ogg",
    ".m4a": "audio/mp4", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
    ".opus": "audio/opus", ".wav": "audio/wav", ".mid": "audio/midi", ".midi": "audio/midi",
    ".amr": "audio/amr",
    ".7z": "application/x-7z-compressed", ".rar": "application/vnd.rar",
    ".gz": "application/gzip", ".tgz": "application/gzip", ".bz2": "application/x-bzip2",
    ".xz": "application/x-xz", ".zst": "application/zstd",
    ".epub": "application/epub+zip", ".jar": "application/java-archive",
    ".apk": "application/vnd.android.package-archive",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".rtf": "application/rtf", ".md": "text/markdown", ".yaml": "application/yaml",
    ".yml": "application/yaml", ".toml": "application/toml",
    ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf",
    ".sqlite": "application/vnd.sqlite3", ".deb": "application/x-deb",
    ".rpm": "application/x-rpm", ".dmg": "application/x-apple-diskimage",
    ".exe": "application/vnd.microsoft.portable-executable",
    ".dll": "application/vnd.microsoft.portable-executable",
    ".scr": "application/vnd.microsoft.portable-executable",
    ".cpl": "application/vnd.microsoft.portable-executable",
    ".com": "application/x-msdos-program", ".pif": "application/x-msdos-program",
    ".msi": "application/x-msi", ".bat": "application/x-bat", ".cmd": "application/x-bat",
    ".vbs": "application/x-vbscript", ".hta": "application/hta",
    ".lnk": "application/x-ms-shortcut", ".so": "application/x-sharedlib",
})


def canonical_type(media_type: str) -> str:
    """One name per format: ``image/jpg`` is ``image/jpeg``. Takes a lower-case bare type."""
    return _CANONICAL.get(media_type, media_type)


def family(media_type: str) -> str:
    return media_type.partition("/")[0]


def is_textual(media_type: str) -> bool:
    """Files of this type are text (so bytes that are text may be one)."""
    kind = canonical_type(media_type)
    return (family(kind) == "text" or kind in _TEXTUAL
            or kind.endswith(("+json", "+xml")))


def same_format(a: str, b: str) -> bool:
    """``a`` and ``b`` may name the same bytes: one type under two names, siblings in one
    container, or a ZIP and a ZIP-based format."""
    a, b = canonical_type(a), canonical_type(b)
    if a == b:
        return True
    group = _SIBLING_OF.get(a)
    if group is not None and b in group:
        return True
    return _zip_based(a, b) or _zip_based(b, a)


def _zip_based(container: str, kind: str) -> bool:
    return container == "application/zip" and (kind in _ZIP_BASED or kind.endswith("+zip"))


def format_size(n: int) -> str:
    """``5368709120`` as ``5GiB``: the largest binary unit that divides it, else bytes."""
    for name, unit in _SHOWN_UNITS:
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return f"{n} byte" if n == 1 else f"{n} bytes"


def _show(text: str, limit: int = 60) -> str:
    """Hostile text in a message: quoted with escapes (no control characters reach a log),
    and cut short."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


# --- the setting ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TypeRule:
    """One entry: a type or family, and the most bytes a file of it may have."""

    pattern: str
    """As written, lower-cased: ``video/*`` or ``image/jpg``."""
    key: str
    """What it matches: the canonical type, or ``video/*``."""
    max_bytes: int | None = None

    @property
    def is_family(self) -> bool:
        return self.key.endswith("/*")

    def __str__(self) -> str:
        if self.max_bytes is None:
            return self.pattern
        return f"{self.pattern}={format_size(self.max_bytes)}"


@dataclass(frozen=True, slots=True)
class AllowedTypes:
    """The parsed setting. No rules: every type is allowed."""

    rules: tuple[TypeRule, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowedTypes:
        """``'video/*=5GiB,image/*=50MiB,application/pdf'``; ValueError says what is wrong."""
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"is {len(text)} characters long; at most {MAX_TEXT_CHARS} are "
                             f"read")
        if not text.strip():
            return cls()
        parts = text.split(",")
        if len(parts) > MAX_ENTRIES:
            raise ValueError(f"has {len(parts)} entries; at most {MAX_ENTRIES} are allowed "
                             f"(use a family such as image/* for many types)")
        seen: dict[str, str] = {}
        rules = []
        for number, part in enumerate(parts, 1):
            rule = _parse_entry(number, part)
            if rule.key in seen:
                same = ("is listed twice" if seen[rule.key] == rule.pattern
                        else f"names the same type as {seen[rule.key]}")
                raise ValueError(f"entry {number}: {rule.pattern} {same}")
            seen[rule.key] = rule.pattern
            rules.append(rule)
        return cls(tuple(rules))

    @property
    def allows_all(self) -> bool:
        return not self.rules

    def rule_for(self, media_type: str) -> TypeRule | None:
        """The entry that applies to a bare lower-case type: an exact one, else its family's;
        None when the type is not allowed (or when every type is)."""
        kind = canonical_type(media_type)
        # Both families: text/* allows text/xml, whose registered name is application/xml.
        wildcards = {f"{family(media_type)}/*", f"{family(kind)}/*"}
        found = None
        for rule in self.rules:
            if rule.key == kind:
                return rule
            if rule.key in wildcards and found is None:
                found = rule
        return found

    def allows(self, media_type: str) -> bool:
        return self.allows_all or self.rule_for(media_type) is not None

    def limit_for(self, media_type: str) -> int | None:
        """The most bytes a file of this type may have; None: no limit of its own."""
        rule = self.rule_for(media_type)
        return rule.max_bytes if rule is not None else None

    def accepted(self) -> list[str]:
        """The entries as a client may read them: ``["video/*=5GiB", "application/pdf"]``."""
        return [str(rule) for rule in self.rules]

    def describe(self) -> str:
        """The entries for a message, cut to a bounded length."""
        shown: list[str] = []
        used = 0
        for number, text in enumerate(self.accepted()):
            if shown and used + len(text) > MAX_LISTED_CHARS:
                shown.append(f"and {len(self.rules) - number} more")
                break
            shown.append(text)
            used += len(text) + 2
        return ", ".join(shown)


def _parse_entry(number: int, part: str) -> TypeRule:
    entry = part.strip()
    if not entry:
        raise ValueError(f"entry {number} is empty (a doubled or trailing comma?)")
    if not entry.isascii():
        raise ValueError(f"entry {number} {_show(entry)} is not ASCII; media types are "
                         f"ASCII names such as video/mp4")
    token, eq, size_text = entry.partition("=")
    pattern = token.strip().lower()
    if pattern in ("*", "*/*"):
        raise ValueError(f"entry {number}: {pattern} would allow every type; leave "
                         f"allowed_types empty for that")
    if not _PATTERN.fullmatch(pattern):
        raise ValueError(f"entry {number} {_show(pattern)} is not a media type such as "
                         f"application/pdf or a family such as video/*")
    key = pattern if pattern.endswith("/*") else canonical_type(pattern)
    max_bytes = _parse_limit(number, pattern, size_text) if eq else None
    return TypeRule(pattern, key, max_bytes)


def _parse_limit(number: int, pattern: str, text: str) -> int:
    """A size as gateway.config.parse_size reads it (``1024``, ``50MiB``, ``1.5GiB``), in
    exact arithmetic so that no float rounds a limit or overflows."""
    match = _SIZE.fullmatch(text.strip().lower())
    if not match or match.group(3) not in _SIZE_UNITS:
        raise ValueError(f"entry {number} ({pattern}): {_show(text.strip())} is not a size "
                         f"(try 50MiB or 5GiB)")
    whole, fraction, unit = match.groups()
    value = Fraction(int(whole))
    if fraction:
        value += Fraction(int(fraction), 10 ** len(fraction))
    size = int(value * _SIZE_UNITS[unit])
    if size < 1:
        raise ValueError(f"entry {number} ({pattern}): the size limit must be at least 1 byte")
    if size > MAX_LIMIT_BYTES:
        raise ValueError(f"entry {number} ({pattern}): the size limit is larger than any "
                         f"upload can be")
    return size


# --- what the upload says -------------------------------------------------------------------
def _claim_value(metadata: Mapping[str, bytes]) -> bytes | None:
    for key in CLAIM_KEYS:
        value = metadata.get(key)
        if value and value.strip():
            return value
    return None


def parse_media_type(raw: bytes | str) -> str | None:
    """The bare lower-case type of ``raw`` (parameters dropped), or None if it is not one."""
    if len(raw) > MAX_CLAIM_BYTES:
        return None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not raw.isascii():
        return None
    bare = raw.split(";", 1)[0].strip().lower()
    return bare if _MEDIA_TYPE.fullmatch(bare) else None


def claimed_type(metadata: Mapping[str, bytes]) -> str | None:
    """The type the upload says it is, from the first of ``CLAIM_KEYS`` that is present and
    not blank; None when there is none or it is not a media type."""
    raw = _claim_value(metadata)
    return parse_media_type(raw) if raw is not None else None


def _extension_types() -> Mapping[str, str]:
    """Extension to type, from a private ``MimeTypes`` (the stdlib's built-in table only; the
    module-level one also reads the host's mime.types files) plus ``_EXTRA_EXTENSIONS``."""
    db = mimetypes.MimeTypes()
    table = dict(db.types_map[False])
    table.update(db.types_map[True])
    table.update(_EXTRA_EXTENSIONS)
    return MappingProxyType({ext.lower(): kind.lower() for ext, kind in table.items()})


# Built with the module, not on first use: the first MimeTypes() in a process makes the
# stdlib fill its global table from the host's files (this table ignores them), and that
# read must not happen on the event loop, where checks run.
_EXTENSIONS = _extension_types()


def name_extension(metadata: Mapping[str, bytes]) -> str | None:
    """The extension (``.mp4``, lower-case) of the name the file will be delivered under."""
    raw = metadata_filename(metadata)
    if not raw:
        return None
    name = safe_filename(raw, "")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem.strip(" ."):
        return None  # "README", ".bashrc": no extension
    return "." + ext.lower()


def name_type(metadata: Mapping[str, bytes]) -> str | None:
    """The type the file name's extension stands for; None when the name has no extension
    the table knows, or one that only says "some bytes" (.bin)."""
    ext = name_extension(metadata)
    if ext is None:
        return None
    kind = _EXTENSIONS.get(ext)
    return None if kind == GENERIC_TYPE else kind


# --- the checks ---------------------------------------------------------------------------
def _refuse(allowed: AllowedTypes, reason: str, kind: str | None,
            message: str) -> errors.TusError:
    return errors.TypeNotAllowed(
        f"{message}; accepted here: {allowed.describe()}",
        data={"reason": reason, "type": kind, "allowed": allowed.accepted()})


def _agree(named: str, claim: str) -> bool:
    """The name and the claim tell one story (both are already allowed)."""
    if same_format(named, claim) or canonical_type(claim) == GENERIC_TYPE:
        return True
    if family(named) == family(claim) and family(claim) in MEDIA_FAMILIES:
        return True
    return is_textual(named) and is_textual(claim)


def effective_type(metadata: Mapping[str, bytes]) -> str | None:
    """The type the upload is held to: its claim, or when it makes none (a browser sends an
    empty ``filetype`` for an extension it does not know), the type its name's extension
    stands for. An invalid claim is not replaced: it stays invalid."""
    claim = claimed_type(metadata)
    if claim is None and _claim_value(metadata) is None:
        return name_type(metadata)
    return claim


def check_creation(allowed: AllowedTypes, metadata: Mapping[str, bytes],
                   length: int | None) -> None:
    """Refuse an upload whose claimed type or file name is not allowed, or whose declared
    length is over its type's limit (theory of operation, step 1)."""
    if allowed.allows_all:
        return
    claim = effective_type(metadata)
    if claim is None:
        raw = _claim_value(metadata)
        if raw is None:
            raise _refuse(allowed, "type-missing", None,
                          "the upload does not say its type (the filetype metadata), nor "
                          "does its file name end in a known extension")
        shown = _show(raw[:MAX_TYPE_CHARS].decode("utf-8", "replace"))
        raise _refuse(allowed, "type-invalid", None,
                      f"the upload's type {shown} is not a media type")
    if not allowed.allows(claim):
        raise _refuse(allowed, "type-not-allowed", claim, f"{claim} files are not accepted")
    named = name_type(metadata)
    if named is not None:
        ext = name_extension(metadata)
        if not allowed.allows(named):
            raise _refuse(allowed, "name-not-allowed", named,
                          f"the file name ends in {ext} ({named}), a type not accepted")
        if not _agree(named, claim):
            raise _refuse(allowed, "name-mismatch", claim,
                          f"the file name ends in {ext} ({named}) but the upload says it is "
                          f"{claim}")
    if length is not None:
        _check_size(allowed, (claim, named), length)


def check_length(allowed: AllowedTypes, metadata: Mapping[str, bytes], length: int) -> None:
    """The size check of ``check_creation`` for a length declared after creation."""
    if allowed.allows_all:
        return
    _check_size(allowed, (effective_type(metadata), name_type(metadata)), length)


def size_limit(allowed: AllowedTypes, metadata: Mapping[str, bytes]) -> int | None:
    """The most bytes the upload's type may have here (its claim's and its name's limits,
    the smaller); None: no per-type limit. Bounds the bytes of an upload whose length is
    still deferred, which no length check has seen yet."""
    if allowed.allows_all:
        return None
    limits = [limit for kind in (effective_type(metadata), name_type(metadata))
              if kind is not None and (limit := allowed.limit_for(kind)) is not None]
    return min(limits, default=None)


def _check_size(allowed: AllowedTypes, kinds: Iterable[str | None], length: int) -> None:
    limits = [(limit, kind) for kind in kinds if kind is not None
              if (limit := allowed.limit_for(kind)) is not None]
    if not limits:
        return
    limit, kind = min(limits)
    if length > limit:
        raise errors.TooLarge(
            f"{kind} files may be at most {format_size(limit)} here; this upload is "
            f"{length} bytes",
            data={"reason": "too-large", "type": kind, "max_bytes": limit,
                  "allowed": allowed.accepted()})


def _describe(kind: str) -> str:
    words = _DESCRIPTIONS.get(canonical_type(kind))
    return f"{words} ({kind})" if words else f"of type {kind}"


def _needs_binary(kind: str) -> bool:
    """Text cannot be a file of this type."""
    return kind in SIGNED_TYPES or (family(kind) in _BINARY_FAMILIES and not is_textual(kind))


def verdict(allowed: AllowedTypes, claimed: str | None, sniffed: Sequence[str]) -> str | None:
    """None to accept the finished upload, or why its bytes are not what it claimed
    (theory of operation, step 3). ``sniffed``: the types recognised in its first bytes,
    most likely first, ``TEXT_TYPE`` for text; empty when nothing was recognised."""
    if allowed.allows_all:
        return None
    claim = parse_media_type(claimed) if claimed is not None else None
    if claim is None:
        return "the upload did not say its type, and only some types are accepted here"
    kind = canonical_type(claim)
    found: list[str] = []
    for raw in sniffed[:MAX_SNIFFED]:
        bare = parse_media_type(raw)
        if bare is not None and bare not in found:
            found.append(bare)
    claim_limit = allowed.limit_for(kind)
    for seen in found:
        if seen == TEXT_TYPE:
            if is_textual(kind):
                return None
            continue
        if same_format(seen, kind):
            return None
        if kind == GENERIC_TYPE and allowed.allows(seen):
            return None
        if (family(seen) == family(kind) and family(kind) in MEDIA_FAMILIES
                and allowed.allows(seen)):
            seen_limit = allowed.limit_for(seen)
            if seen_limit is None or (claim_limit is not None and seen_limit >= claim_limit):
                return None
    binary = [seen for seen in found if seen != TEXT_TYPE]
    if binary:
        if kind == GENERIC_TYPE:
            return f"the bytes are {_describe(binary[0])}, which is not accepted here"
        return f"the bytes are {_describe(binary[0])}, not {claim}"
    if found and _needs_binary(kind):
        return f"the bytes are text, not {claim}"
    if not found and kind in SIGNED_TYPES:
        return f"the file does not start with the signature every {claim} file has"
    return None
