"""Strict parsers and formatters for the tus request and response headers.

Theory of operation: every header value that reaches a decision has gone through one of these
functions. They accept exactly the grammar of tus 1.0.0 and reject everything else with a
``TusError`` (TUS-GEN-04), because lenient parsing is how offsets get corrupted: Python's
``int()`` happily takes ``" 5"``, ``"+5"`` and ``"1_0"``, none of which is a tus integer.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

from protocol import errors

# Upload-Offset and Upload-Length are byte counts; nothing above a signed 64-bit integer is a
# sensible size and larger numbers are a classic overflow probe.
MAX_INTEGER = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")
# tus: "The key MUST NOT contain spaces and commas and MUST NOT be empty." We also refuse
# control characters, which have no place in a header-borne key.
_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII without space (0x20) and comma (0x2c)
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


class Headers:
    """A case-insensitive view of request headers that keeps repeated values.

    Repeated tus headers are ambiguous (which offset did the client mean?), so ``one`` refuses
    them instead of picking the first or the last.
    """

    __slots__ = ("_values",)

    def __init__(self, items: Sequence[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        values: dict[str, list[str]] = {}
        for name, value in pairs:
            values.setdefault(name.lower(), []).append(value)
        self._values = values

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def one(self, name: str, error: type[errors.TusError] = errors.InvalidHeader) -> str | None:
        found = self._values.get(name.lower())
        if not found:
            return None
        if len(found) > 1:
            raise error(f"{name} must be sent once")
        return found[0]

    def first(self, name: str) -> str | None:
        """The first field line of a list-valued header (such as Forwarded), which may be
        sent several times."""
        found = self._values.get(name.lower())
        return found[0] if found else None


def parse_uint(value: str, error: type[errors.TusError]) -> int:
    """A tus integer: ASCII digits only, no sign, no spaces, at most 2**63-1."""
    if not _DIGITS.fullmatch(value):
        raise error(f"{value[:40]!r} is not a non-negative integer")
    number = int(value)
    if number > MAX_INTEGER:
        raise error(f"{value[:40]!r} is too large")
    return number


def parse_metadata(value: str, max_bytes: int) -> dict[str, bytes]:
    """Upload-Metadata: comma-separated ``key base64value`` pairs (the value may be absent).

    tus: "The key and value MUST be separated by a space. The key MUST NOT contain spaces and
    commas and MUST NOT be empty. The key SHOULD be ASCII encoded and the value MUST be Base64
    encoded. All keys MUST be unique. The value MAY be empty. In these cases, the space, which
    would normally separate the key and the value, MAY be left out."
    Optional whitespace after a comma is tolerated (clients join with ", "), nothing else is.
    """
    if len(value.encode("utf-8", "surrogateescape")) > max_bytes:
        raise errors.MetadataTooLarge(f"Upload-Metadata is larger than {max_bytes} bytes")
    result: dict[str, bytes] = {}
    if value.strip(" \t") == "":
        return result
    for raw_pair in value.split(","):
        pair = raw_pair.lstrip(" \t")
        key, _, encoded = pair.partition(" ")
        if not _KEY.fullmatch(key):
            raise errors.InvalidMetadata(f"bad metadata key {key[:40]!r}")
        if key in result:
            raise errors.InvalidMetadata(f"metadata key {key[:40]!r} is repeated")
        result[key] = _b64decode(encoded, errors.InvalidMetadata, key)
    return result


def _b64decode(encoded: str, error: type[errors.TusError], what: str) -> bytes:
    if len(encoded) % 4 or not _B64.fullmatch(encoded):
        raise error(f"value of {what[:40]!r} is not valid Base64")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error(f"value of {what[:40]!r} is not valid Base64") from exc


def format_metadata(metadata: Mapping[str, bytes]) -> str:
    """Echo metadata as the client gave it: pairs joined by a bare comma, empty values bare."""
    parts = []
    for key, raw in metadata.items():
        parts.append(f"{key} {base64.b64encode(raw).decode('ascii')}" if raw else key)
    return ",".join(parts)


@dataclass(frozen=True, slots=True)
class ConcatPartial:
    """``Upload-Concat: partial``."""


@dataclass(frozen=True, slots=True)
class ConcatFinal:
    """``Upload-Concat: final;<url> <url> ...`` resolved to upload ids, in order."""

    upload_ids: tuple[str, ...]


Concat = ConcatPartial | ConcatFinal


def parse_concat(value: str, base_path: str, max_parts: int) -> Concat:
    """Resolve Upload-Concat strictly to uploads of this server (TUS-CAT-09).

    A partial URL may be absolute or relative, but its path must be ``<base_path><id>`` with a
    well-formed id: nothing else (``..``, other prefixes, encoded slashes) ever reaches storage.
    """
    if value == "partial":
        return ConcatPartial()
    kind, sep, urls = value.partition(";")
    if kind != "final" or not sep:
        raise errors.InvalidConcat("Upload-Concat must be 'partial' or 'final;<urls>'")
    ids: list[str] = []
    for url in urls.split(" "):
        if not url:
            continue
        if len(ids) >= max_parts:
            raise errors.InvalidConcat(f"at most {max_parts} partial uploads may be joined")
        ids.append(_upload_id_from_url(url, base_path))
    if not ids:
        raise errors.InvalidConcat("Upload-Concat: final names no partial upload")
    return ConcatFinal(tuple(ids))


def _upload_id_from_url(url: str, base_path: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise errors.InvalidConcat(f"{url[:80]!r} is not a URL") from exc
    path = parts.path
    if parts.query or parts.fragment or not path.startswith(base_path):
        raise errors.InvalidConcat(f"{url[:80]!r} is not an upload of this server")
    upload_id = unquote(path[len(base_path):])
    if not UPLOAD_ID.fullmatch(upload_id):
        raise errors.InvalidConcat(f"{url[:80]!r} is not an upload of this server")
    return upload_id


def format_concat(concat: Concat, base_path: str) -> str:
    if isinstance(concat, ConcatPartial):
        return "partial"
    return "final;" + " ".join(base_path + upload_id for upload_id in concat.upload_ids)


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str
    digest: bytes


# hashlib names; tus: "Tus-Checksum-Algorithm ... MUST include sha1".
CHECKSUM_DIGEST_SIZES: Mapping[str, int] = {"sha1": 20, "md5": 16, "sha256": 32, "sha512": 64}


def parse_checksum(value: str) -> Checksum:
    """``Upload-Checksum: <algorithm> <base64 of the raw digest>``."""
    algorithm, sep, encoded = value.partition(" ")
    if not sep or not algorithm or " " in encoded:
        raise errors.InvalidChecksum()
    if algorithm not in CHECKSUM_DIGEST_SIZES:
        raise errors.UnsupportedChecksum(f"{algorithm[:20]!r} is not supported")
    digest = _b64decode(encoded, errors.InvalidChecksum, "Upload-Checksum")
    if len(digest) != CHECKSUM_DIGEST_SIZES[algorithm]:
        raise errors.InvalidChecksum(f"a {algorithm} digest has {CHECKSUM_DIGEST_SIZES[algorithm]}"
                                     " bytes")
    return Checksum(algorithm, digest)


def format_checksum(checksum: Checksum) -> str:
    """The client's side of ``parse_checksum``: ``<algorithm> <base64 of the raw digest>``."""
    return f"{checksum.algorithm} {base64.b64encode(checksum.digest).decode('ascii')}"


def parse_list(value: str) -> tuple[str, ...]:
    """A comma-separated header list (Tus-Extension, Tus-Checksum-Algorithm), blanks dropped."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def format_http_date(when: float) -> str:
    """RFC 9110 IMF-fixdate, as Upload-Expires requires (TUS-EXP-03)."""
    return email.utils.format_datetime(datetime.fromtimestamp(int(when), tz=UTC), usegmt=True)


def parse_http_date(value: str) -> float:
    parsed = email.utils.parsedate_to_datetime(value)
    return parsed.timestamp()
