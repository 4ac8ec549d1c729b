"""Parsers and formatters: tables of good and bad values, and Hypothesis round trips."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import errors
from protocol.headers import (
    MAX_INTEGER,
    Checksum,
    ConcatFinal,
    ConcatPartial,
    Headers,
    format_concat,
    format_http_date,
    format_metadata,
    parse_checksum,
    parse_concat,
    parse_http_date,
    parse_metadata,
    parse_uint,
)

ID = "0123456789abcdef0123456789abcdef"
ID2 = "fedcba9876543210fedcba9876543210"


@pytest.mark.parametrize("raw,value", [("0", 0), ("5", 5), ("007", 7),
                                       (str(MAX_INTEGER), MAX_INTEGER)])
def test_uint_accepts(raw: str, value: int) -> None:
    assert parse_uint(raw, errors.InvalidOffset) == value


# TUS-GEN-04: every one of these is something int() would accept or a classic probe.
@pytest.mark.parametrize("raw", ["", "-1", "+5", "1.0", " 5", "5 ", "0x10", "1_0", "1e3",
                                 str(MAX_INTEGER + 1), "9" * 30, "٣", "5\n", "abc"])
def test_uint_rejects(raw: str) -> None:
    with pytest.raises(errors.InvalidOffset):
        parse_uint(raw, errors.InvalidOffset)


@given(st.integers(min_value=0, max_value=MAX_INTEGER))
def test_uint_round_trip(n: int) -> None:
    assert parse_uint(str(n), errors.InvalidLength) == n


@given(st.text(max_size=25))
def test_uint_never_accepts_what_is_not_plain_digits(raw: str) -> None:
    plain = raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= MAX_INTEGER
    try:
        parse_uint(raw, errors.InvalidLength)
    except errors.InvalidLength:
        assert not plain
    else:
        assert plain


def test_headers_refuse_repeats() -> None:
    h = Headers([("Upload-Offset", "1"), ("upload-offset", "2")])
    with pytest.raises(errors.InvalidOffset):
        h.one("Upload-Offset", errors.InvalidOffset)
    assert Headers({"A": "1"}).one("a") == "1"
    assert Headers({}).one("a") is None


@pytest.mark.parametrize("raw,expected", [
    ("", {}),
    ("filename d29ybGQ=", {"filename": b"world"}),
    ("a YQ==,b Yg==", {"a": b"a", "b": b"b"}),
    ("a YQ==, b Yg==", {"a": b"a", "b": b"b"}),  # optional whitespace after a comma
    ("is_confidential", {"is_confidential": b""}),
    ("empty ", {"empty": b""}),  # tus-js-client sends empty values like this
    ("k ,j", {"k": b"", "j": b""}),
])
def test_metadata_accepts(raw: str, expected: dict[str, bytes]) -> None:
    assert parse_metadata(raw, 4096) == expected


@pytest.mark.parametrize("raw", [
    "a YQ==,a Yg==",  # duplicate key
    "a YQ==,,b Yg==",  # empty key between commas
    ",",  # empty pairs
    "a YQ=",  # bad padding
    "a Y Q==",  # inner space
    "a $$$$",  # not base64
    "a\x00 YQ==",  # control character in the key
    "ä YQ==",  # non-ASCII key
    "a YQ==,",  # trailing comma
    "a  YQ==",  # two spaces
])
def test_metadata_rejects(raw: str) -> None:
    with pytest.raises(errors.InvalidMetadata):
        parse_metadata(raw, 4096)


def test_metadata_size_limit() -> None:
    with pytest.raises(errors.MetadataTooLarge):
        parse_metadata("a " + base64.b64encode(b"x" * 5000).decode(), 4096)


_keys = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                       blacklist_characters=","), min_size=1, max_size=12)


@given(st.dictionaries(_keys, st.binary(max_size=40), max_size=8))
def test_metadata_round_trip(meta: dict[str, bytes]) -> None:
    assert parse_metadata(format_metadata(meta), 1 << 20) == meta


@given(st.text(max_size=60))
def test_metadata_parser_only_raises_protocol_errors(raw: str) -> None:
    try:
        parse_metadata(raw, 4096)
    except errors.TusError as exc:
        assert exc.status == 400


def test_concat() -> None:
    assert parse_concat("partial", "/files/", 10) == ConcatPartial()
    final = parse_concat(f"final;/files/{ID} http://h:1/files/{ID2}", "/files/", 10)
    assert final == ConcatFinal((ID, ID2))
    assert format_concat(final, "/files/") == f"final;/files/{ID} /files/{ID2}"


@pytest.mark.parametrize("raw", [
    "", "partial;x", "final", "final;", "final; ", "Final;/files/" + ID, "finally;/files/" + ID,
    "final;/files/../etc/passwd", "final;/files/" + ID + "/..", "final;/other/" + ID,
    "final;/files/%2e%2e%2fetc", "final;/files/" + ID.upper(), "final;/files/" + ID + "?x=1",
    "final;../../" + ID, "final;file:///etc/passwd", "final;/files/" + ID + "#frag",
])
def test_concat_rejects(raw: str) -> None:
    with pytest.raises(errors.InvalidConcat):
        parse_concat(raw, "/files/", 10)


def test_concat_part_limit() -> None:
    with pytest.raises(errors.InvalidConcat):
        parse_concat("final;" + " ".join([f"/files/{ID}"] * 3), "/files/", 2)


def test_checksum() -> None:
    digest = bytes(20)
    assert parse_checksum("sha1 " + base64.b64encode(digest).decode()) == Checksum("sha1", digest)
    with pytest.raises(errors.UnsupportedChecksum):
        parse_checksum("crc99 AAAA")
    for bad in ["sha1", "sha1 ", "sha1 !!!!", "sha1 " + base64.b64encode(bytes(19)).decode(),
                " sha1 AAAA", "sha1 AAAA AAAA"]:
        with pytest.raises(errors.InvalidChecksum):
            parse_checksum(bad)


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_http_date_round_trip(ts: int) -> None:
    text = format_http_date(ts)
    assert text.endswith(" GMT") and len(text) == 29
    assert parse_http_date(text) == ts
