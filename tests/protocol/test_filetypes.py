"""--allowed-types: parsing the setting, reading the claim and the name, and the verdicts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from protocol import errors
from protocol.filetypes import (
    MAX_ENTRIES,
    MAX_SNIFFED,
    AllowedTypes,
    canonical_type,
    check_creation,
    check_length,
    claimed_type,
    format_size,
    name_type,
    same_format,
    verdict,
)

MiB = 1024**2
GiB = 1024**3
EXAMPLE = "video/*=5GiB,image/*=50MiB,application/pdf"
ELF = "application/x-executable"


def md(**values: str | bytes) -> dict[str, bytes]:
    return {k: v if isinstance(v, bytes) else v.encode() for k, v in values.items()}


# --- parsing the setting --------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_setting_allows_everything(text: str) -> None:
    allowed = AllowedTypes.parse(text)
    assert allowed.allows_all
    assert allowed.allows("application/x-executable")
    assert allowed.limit_for("video/mp4") is None


def test_the_documented_example() -> None:
    allowed = AllowedTypes.parse(EXAMPLE)
    assert not allowed.allows_all
    assert allowed.accepted() == ["video/*=5GiB", "image/*=50MiB", "application/pdf"]
    assert allowed.limit_for("video/mp4") == 5 * GiB
    assert allowed.limit_for("video/quicktime") == 5 * GiB
    assert allowed.limit_for("image/png") == 50 * MiB
    assert allowed.allows("application/pdf") and allowed.limit_for("application/pdf") is None
    assert not allowed.allows("application/zip")
    assert not allowed.allows("audio/mpeg")
    assert not allowed.allows(ELF)


def test_case_and_spaces_are_forgiven() -> None:
    allowed = AllowedTypes.parse(" Video/MP4 = 5 gib ,\tIMAGE/* ")
    assert allowed.accepted() == ["video/mp4=5GiB", "image/*"]
    assert allowed.limit_for("video/mp4") == 5 * GiB
    assert allowed.allows("image/gif")


@pytest.mark.parametrize("size,limit", [
    ("1024", 1024), ("1", 1), ("1b", 1), ("1k", 1024), ("2KB", 2048), ("1.5KiB", 1536),
    ("50MiB", 50 * MiB), ("50m", 50 * MiB), ("5GiB", 5 * GiB), ("0.5g", GiB // 2),
    ("2TiB", 2 * 1024 * GiB), ("1.0000000000000000001TiB", 1024 * GiB),
])
def test_size_limits(size: str, limit: int) -> None:
    allowed = AllowedTypes.parse(f"video/*={size}")
    assert allowed.limit_for("video/mp4") == limit


def test_the_exact_entry_wins_over_its_family_in_either_order() -> None:
    for text in ("image/png=1MiB,image/*=50MiB", "image/*=50MiB,image/png=1MiB"):
        allowed = AllowedTypes.parse(text)
        assert allowed.limit_for("image/png") == MiB
        assert allowed.limit_for("image/jpeg") == 50 * MiB


def test_spellings_of_one_format_are_one_type() -> None:
    allowed = AllowedTypes.parse("image/jpg,application/x-zip-compressed,audio/wav")
    assert allowed.allows("image/jpeg") and allowed.allows("image/pjpeg")
    assert allowed.allows("application/zip")
    assert allowed.allows("audio/x-wav")
    assert not allowed.allows("image/png")
    assert canonical_type("image/jpg") == "image/jpeg"


def test_a_family_allows_types_whose_registered_name_is_in_another() -> None:
    # text/xml's registered name is application/xml: text/* must still take it.
    assert AllowedTypes.parse("text/*").allows("text/xml")
    assert not AllowedTypes.parse("image/*").allows("text/xml")


def test_at_most_the_entry_bound() -> None:
    many = ",".join(f"application/x-t{i}" for i in range(MAX_ENTRIES))
    assert len(AllowedTypes.parse(many).rules) == MAX_ENTRIES
    with pytest.raises(ValueError, match=f"at most {MAX_ENTRIES}"):
        AllowedTypes.parse(many + ",application/x-one-more")


@pytest.mark.parametrize("text,words", [
    (",".join(f"image/x-t{i}" for i in range(10_000)), "characters long; at most"),
    (",".join(f"a/b{i}" for i in range(1_000)), "has 1000 entries; at most 100"),
    ("video/*" + " " * 40_000, "characters long"),
    ("video/*,,image/*", "entry 2 is empty"),
    ("video/*,", "entry 2 is empty"),
    (",", "entry 1 is empty"),
    ("video", "not a media type"),
    ("video/", "not a media type"),
    ("/mp4", "not a media type"),
    ("video/mp4/x", "not a media type"),
    ("video/*mp4", "not a media type"),
    ("video/**", "not a media type"),
    ("*/mp4", "not a media type"),
    ("vi deo/mp4", "not a media type"),
    ("-video/mp4", "not a media type"),
    ("video/mp4;codecs=avc1", "not a media type"),
    ("video/mp4\x00", "not a media type"),
    ("video/mp4\nimage/png", "not a media type"),
    ("x/" + "a" * 128, "not a media type"),
    ("*/*", "every type"),
    ("*", "every type"),
    ("vidéo/mp4", "not ASCII"),
    ("\u212aelvin/x", "not ASCII"),  # KELVIN SIGN lower-cases to an ASCII k
    ("video/*=", "not a size"),
    ("=5GiB", "not a media type"),
    ("video/*=5XB", "not a size"),
    ("video/*=-1", "not a size"),
    ("video/*=+1", "not a size"),
    ("video/*=1e9", "not a size"),
    ("video/*=nan", "not a size"),
    ("video/*=inf", "not a size"),
    ("video/*=0x10", "not a size"),
    ("video/*=1_000", "not a size"),
    ("video/*=.5GiB", "not a size"),
    ("video/*=5GiB=3", "not a size"),
    ("video/*=5 G iB", "not a size"),
    ("video/*=" + "9" * 21, "not a size"),
    ("video/*=٣", "not ASCII"),
    ("video/*=0", "at least 1 byte"),
    ("video/*=0.1b", "at least 1 byte"),
    ("video/*=99999999999TiB", "larger than any upload"),
    ("video/mp4,video/mp4", "listed twice"),
    ("video/*,VIDEO/*", "listed twice"),
    ("image/jpeg,image/jpg", "same type as image/jpeg"),
    ("audio/x-wav=1k,audio/wav=2k", "same type as audio/x-wav"),
])
def test_bad_settings_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        AllowedTypes.parse(text)
    message = str(caught.value)
    assert "\n" not in message and "\x00" not in message
    assert len(message) < 300


# --- what the upload says -------------------------------------------------------------------
@pytest.mark.parametrize("metadata,claim", [
    (md(filetype="video/mp4"), "video/mp4"),
    (md(filetype='Video/MP4; codecs="avc1.42E01E"'), "video/mp4"),
    (md(filetype="text/plain;charset=utf-8"), "text/plain"),
    (md(type="image/png"), "image/png"),
    (md(contentType="application/pdf"), "application/pdf"),
    (md(content_type="application/pdf"), "application/pdf"),
    (md(filetype="video/mp4", type="application/x-msdownload"), "video/mp4"),
    (md(filetype=" ", type="image/png"), "image/png"),
    (md(filetype="image/svg+xml"), "image/svg+xml"),
    (md(filetype="application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ({}, None),
    (md(filename="clip.mp4"), None),
    (md(filetype=""), None),
    (md(filetype="video"), None),
    (md(filetype="video/*"), None),
    (md(filetype="*/*"), None),
    (md(filetype="video/mp4 x"), None),
    (md(filetype="text/plain\r\nX-Evil: 1"), None),
    (md(filetype=b"\xff\xfe"), None),
    (md(filetype="vidéo/mp4"), None),
    (md(filetype="video/" + "a" * 2000), None),
    (md(filetype="x/" + "a" * 200), None),
])
def test_claimed_type(metadata: dict[str, bytes], claim: str | None) -> None:
    assert claimed_type(metadata) == claim


@pytest.mark.parametrize("name,kind", [
    ("clip.mp4", "video/mp4"),
    ("CLIP.MP4", "video/mp4"),
    ("photo.webp", "image/webp"),
    ("photo.heic", "image/heic"),
    ("film.mkv", "video/x-matroska"),
    ("film.mov", "video/quicktime"),
    ("photo.jpg", "image/jpeg"),
    ("report.pdf", "application/pdf"),
    ("clip.exe", "application/vnd.microsoft.portable-executable"),
    # Windows drops trailing dots and spaces, and the delivered name drops invisible
    # characters: each of these is opened as an .exe.
    ("clip.exe.", "application/vnd.microsoft.portable-executable"),
    ("clip.exe. . ", "application/vnd.microsoft.portable-executable"),
    ("clip.exe\u200b", "application/vnd.microsoft.portable-executable"),
    ("clip.mp4.exe", "application/vnd.microsoft.portable-executable"),
    ("../../x/clip.exe", "application/vnd.microsoft.portable-executable"),
    ("C:\\x\\clip.exe", "application/vnd.microsoft.portable-executable"),
    ("run.bat", "application/x-bat"),
    ("clip.exe.mp4", "video/mp4"),
    ("README", None),
    (".bashrc", None),
    ("data.bin", None),  # the table says only "some bytes"
    ("x.unknownextension", None),
    ("", None),
])
def test_name_type(name: str, kind: str | None) -> None:
    assert name_type(md(filename=name)) == kind


def test_name_type_reads_name_when_filename_is_absent() -> None:
    assert name_type(md(name="clip.mov")) == "video/quicktime"
    assert name_type(md(filename="a.png", name="b.exe")) == "image/png"
    assert name_type({}) is None


def test_name_type_ignores_the_hosts_mime_types(tmp_path: Path) -> None:
    # The module-level mimetypes table takes in files such as /etc/mime.types; the answers
    # here must not change with them.
    table = tmp_path / "mime.types"
    table.write_text("application/x-evil mp4 pdf\n")
    code = textwrap.dedent(f"""
        import mimetypes
        mimetypes.init([{str(table)!r}])
        assert mimetypes.guess_type("a.mp4")[0] == "application/x-evil"
        from protocol.filetypes import AllowedTypes, name_type
        AllowedTypes.parse("video/*")
        print(name_type({{"filename": b"a.mp4"}}), name_type({{"filename": b"a.pdf"}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["video/mp4", "application/pdf"]


# --- creation -----------------------------------------------------------------------------
def refused(allowed: str, metadata: dict[str, bytes],
            length: int | None = 10) -> errors.TusError:
    with pytest.raises(errors.TusError) as caught:
        check_creation(AllowedTypes.parse(allowed), metadata, length)
    return caught.value


def test_a_missing_claim_falls_back_to_the_name() -> None:
    # Browsers send an empty filetype for extensions they do not know; the name decides.
    allowed = AllowedTypes.parse(EXAMPLE)
    check_creation(allowed, md(filename="clip.mp4"), 10)
    check_creation(allowed, md(filetype="", filename="clip.mp4"), 10)


def test_everything_passes_when_every_type_is_allowed() -> None:
    allowed = AllowedTypes.parse("")
    check_creation(allowed, {}, None)
    check_creation(allowed, md(filetype="application/x-msdownload", filename="x.exe"), 10**15)
    check_length(allowed, {}, 10**15)


@pytest.mark.parametrize("metadata,reason,kind", [
    ({}, "type-missing", None),
    (md(filename="notes"), "type-missing", None),
    (md(filetype="", filename="readme.unknownext"), "type-missing", None),
    (md(filetype=""), "type-missing", None),
    # Without a claim the name's type is held to the list: an executable is still refused.
    (md(filetype="", filename="tool.exe"), "type-not-allowed",
     "application/vnd.microsoft.portable-executable"),
    (md(filetype="not a type"), "type-invalid", None),
    (md(filetype="application/zip"), "type-not-allowed", "application/zip"),
    (md(filetype="video/mp4", filename="clip.exe"), "name-not-allowed",
     "application/vnd.microsoft.portable-executable"),
    (md(filetype="video/mp4", filename="clip.exe."), "name-not-allowed",
     "application/vnd.microsoft.portable-executable"),
    (md(filetype="image/png", filename="scan.pdf"), "name-mismatch", "image/png"),
    (md(filetype="application/pdf", filename="clip.mp4"), "name-mismatch",
     "application/pdf"),
])
def test_creation_refusals(metadata: dict[str, bytes], reason: str, kind: str | None) -> None:
    error = refused(EXAMPLE, metadata)
    assert isinstance(error, errors.TypeNotAllowed)
    assert error.status == 415 and error.code == "ERR_TYPE_NOT_ALLOWED"
    assert error.data == {"reason": reason, "type": kind,
                          "allowed": ["video/*=5GiB", "image/*=50MiB", "application/pdf"]}
    # The message says what was refused and what is accepted.
    assert "accepted here: video/*=5GiB, image/*=50MiB, application/pdf" in error.detail
    if kind is not None:
        assert kind in error.detail
    assert "\n" not in error.detail


def test_the_refused_type_is_named() -> None:
    error = refused(EXAMPLE, md(filetype="video/mp4", filename="clip.exe"))
    assert error.detail.startswith("the file name ends in .exe "
                                   "(application/vnd.microsoft.portable-executable)")
    error = refused(EXAMPLE, md(filetype="Application/ZIP"))
    assert error.detail.startswith("application/zip files are not accepted")


def test_an_invalid_claim_is_shown_escaped_and_cut() -> None:
    error = refused(EXAMPLE, md(filetype="evil\x1b[31m" + "x" * 5000))
    assert "\x1b" not in error.detail and "\\x1b" in error.detail
    assert len(error.detail) < 300


@pytest.mark.parametrize("allowed,metadata", [
    (EXAMPLE, md(filetype="video/mp4", filename="clip.mp4")),
    (EXAMPLE, md(filetype="video/mp4")),
    (EXAMPLE, md(filetype="video/mp4", filename="clip")),
    (EXAMPLE, md(filetype="video/mp4", filename="clip.unknownextension")),
    (EXAMPLE, md(filetype="application/pdf", filename="data.bin")),
    (EXAMPLE, md(filetype="video/mp4", filename="clip.mov")),  # one container
    (EXAMPLE, md(filetype="image/jpeg", filename="photo.png")),  # both allowed images
    (EXAMPLE, md(filetype="image/jpg", filename="photo.jpeg")),
    (EXAMPLE, md(type="video/quicktime", name="clip.mov")),
    ("text/*", md(filetype="text/plain", filename="notes.md")),
    ("text/*,application/json", md(filetype="text/plain", filename="data.json")),
    ("application/zip", md(filetype="application/x-zip-compressed", filename="a.zip")),
    ("application/octet-stream,application/pdf",
     md(filetype="application/octet-stream", filename="report.pdf")),
])
def test_creation_accepts(allowed: str, metadata: dict[str, bytes]) -> None:
    check_creation(AllowedTypes.parse(allowed), metadata, 10)


def test_a_name_of_one_container_is_still_a_type_of_its_own() -> None:
    # MP4 and MOV share a container, but an operator who lists only video/mp4 has not
    # allowed video/quicktime.
    error = refused("video/mp4", md(filetype="video/mp4", filename="clip.mov"))
    assert error.data["reason"] == "name-not-allowed"


def test_a_generic_claim_does_not_let_a_refused_name_through() -> None:
    error = refused("application/octet-stream",
                    md(filetype="application/octet-stream", filename="report.pdf"))
    assert error.data["reason"] == "name-not-allowed"


def test_size_limits_at_creation() -> None:
    allowed = AllowedTypes.parse(EXAMPLE)
    check_creation(allowed, md(filetype="video/mp4"), 5 * GiB)
    check_creation(allowed, md(filetype="video/mp4"), None)
    check_creation(allowed, md(filetype="application/pdf"), 10**15)
    with pytest.raises(errors.TooLarge) as caught:
        check_creation(allowed, md(filetype="video/mp4"), 5 * GiB + 1)
    error = caught.value
    assert error.status == 413
    assert error.detail == ("video/mp4 files may be at most 5GiB here; this upload is "
                            f"{5 * GiB + 1} bytes")
    assert error.data == {"reason": "too-large", "type": "video/mp4", "max_bytes": 5 * GiB,
                          "allowed": allowed.accepted()}


def test_the_smaller_limit_of_claim_and_name_applies() -> None:
    allowed = AllowedTypes.parse("image/png=1MiB,image/*=50MiB")
    check_creation(allowed, md(filetype="image/jpeg", filename="a.jpg"), 2 * MiB)
    with pytest.raises(errors.TooLarge) as caught:
        check_creation(allowed, md(filetype="image/jpeg", filename="a.png"), 2 * MiB)
    assert caught.value.data["type"] == "image/png"
    assert "1MiB" in caught.value.detail


def test_a_deferred_length_gets_the_same_size_check() -> None:
    allowed = AllowedTypes.parse(EXAMPLE)
    check_length(allowed, md(filetype="image/png"), 50 * MiB)
    with pytest.raises(errors.TooLarge):
        check_length(allowed, md(filetype="image/png"), 50 * MiB + 1)
    with pytest.raises(errors.TooLarge):
        check_length(allowed, md(filetype="application/pdf", filename="a.png"), 50 * MiB + 1)
    check_length(allowed, md(filetype="application/pdf"), 10**15)
    # An upload created before the setting, without a claim: nothing to measure against.
    check_length(allowed, {}, 10**15)


def test_the_accepted_list_in_a_message_is_bounded() -> None:
    long_list = ",".join(f"application/x-{'a' * 100}{i}" for i in range(MAX_ENTRIES))
    error = refused(long_list, md(filetype="video/mp4"))
    assert len(error.detail) < 700
    assert error.detail.endswith("more")
    assert len(error.data["allowed"]) == MAX_ENTRIES  # type: ignore[arg-type]


# --- after the upload -----------------------------------------------------------------------
def test_same_format() -> None:
    assert same_format("video/mp4", "video/quicktime")
    assert same_format("audio/x-m4a", "video/mp4")
    assert same_format("image/jpg", "image/jpeg")
    assert same_format("application/zip", "application/epub+zip")
    assert same_format("application/vnd.oasis.opendocument.text", "application/x-zip")
    assert not same_format("video/mp4", "video/x-matroska")
    assert not same_format("application/zip", "application/pdf")
    assert not same_format("image/png", "image/jpeg")


@pytest.mark.parametrize("allowed,claim,sniffed,expected", [
    # What the bytes are matches the claim.
    (EXAMPLE, "video/mp4", ["video/mp4"], None),
    (EXAMPLE, "video/mp4", ["video/quicktime"], None),
    ("video/mp4", "video/mp4", ["video/quicktime"], None),
    ("video/mp4", "video/mp4", ["audio/mp4", "video/mp4"], None),
    ("video/*", "video/webm", ["video/x-matroska"], None),
    ("image/jpg", "image/jpg", ["image/jpeg"], None),
    ("image/*", "image/heic", ["image/heif"], None),
    ("audio/wav", "audio/wav", ["audio/x-wav"], None),
    ("audio/*", "audio/flac", ["audio/x-flac"], None),
    ("application/zip", "application/x-zip-compressed", ["application/zip"], None),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
     ["application/zip"], None),
    ("application/zip", "application/zip",
     ["application/vnd.openxmlformats-officedocument.wordprocessingml.document",
      "application/zip"], None),
    ("application/*", "application/x-msdownload", ["application/x-msdownload"], None),
    # Another type of the claim's media family, allowed with a limit no smaller.
    ("image/*", "image/jpeg", ["image/png"], None),
    ("image/*=50MiB", "image/jpeg", ["image/png"], None),
    ("image/jpeg=1MiB,image/png", "image/jpeg", ["image/png"], None),
    ("image/jpeg=1MiB,image/png=2MiB", "image/jpeg", ["image/png"], None),
    ("image/jpeg", "image/jpeg", ["image/png"],
     "the bytes are a PNG image (image/png), not image/jpeg"),
    ("image/jpeg,image/png=1MiB", "image/jpeg", ["image/png"],
     "the bytes are a PNG image (image/png), not image/jpeg"),
    ("image/jpeg=2MiB,image/png=1MiB", "image/jpeg", ["image/png"], "not image/jpeg"),
    ("video/*,image/*", "video/mp4", ["image/png"], "not video/mp4"),
    # Something else entirely.
    (EXAMPLE, "video/mp4", [ELF],
     "the bytes are an ELF executable (application/x-executable), not video/mp4"),
    (EXAMPLE, "image/png", ["application/x-msdownload"],
     "the bytes are a Windows executable (application/x-msdownload), not image/png"),
    (EXAMPLE, "application/pdf", ["application/zip"], "a ZIP archive"),
    ("text/*", "text/plain", [ELF], "an ELF executable"),
    ("text/*", "text/csv", ["image/png"], "not text/csv"),
    ("application/x-foo", "application/x-foo", ["application/x-lzip"],
     "the bytes are of type application/x-lzip, not application/x-foo"),
    # Nothing recognised: fine for formats without a signature, not for those with one.
    (EXAMPLE, "video/mp4", [], "does not start with the signature every video/mp4 file has"),
    (EXAMPLE, "image/png", [], "image/png"),
    (EXAMPLE, "application/pdf", [], "application/pdf"),
    ("application/zip", "application/zip", [], "application/zip"),
    ("text/*", "text/csv", [], None),
    ("application/json", "application/json", [], None),
    ("image/*", "image/x-tga", [], None),
    ("audio/*", "audio/mpeg", [], None),
    ("application/octet-stream", "application/octet-stream", [], None),
    # Text.
    ("text/*", "text/csv", ["text/plain"], None),
    ("text/*", "text/plain", ["application/pdf", "text/plain"], None),
    ("image/*", "image/svg+xml", ["text/plain"], None),
    ("application/x-yaml", "application/x-yaml", ["text/plain"], None),
    ("application/x-foo", "application/x-foo", ["text/plain"], None),
    (EXAMPLE, "application/pdf", ["application/pdf", "text/plain"], None),
    (EXAMPLE, "image/png", ["text/plain"], "the bytes are text, not image/png"),
    ("image/*", "image/x-tga", ["text/plain"], "the bytes are text, not image/x-tga"),
    (EXAMPLE, "application/pdf", ["text/plain"], "the bytes are text, not application/pdf"),
    # The client did not know the type: what the bytes are must itself be allowed.
    ("application/octet-stream,image/*", "application/octet-stream", ["image/png"], None),
    ("application/octet-stream", "application/octet-stream", ["text/plain"], None),
    ("application/octet-stream", "application/octet-stream", ["application/x-msdownload"],
     "the bytes are a Windows executable (application/x-msdownload), which is not "
     "accepted here"),
    # No claim at all.
    (EXAMPLE, None, ["video/mp4"], "did not say its type"),
    (EXAMPLE, "not a type", ["video/mp4"], "did not say its type"),
    # Every type allowed: nothing to judge.
    ("", "video/mp4", [ELF], None),
    ("", None, [], None),
])
def test_verdict(allowed: str, claim: str | None, sniffed: list[str],
                 expected: str | None) -> None:
    reason = verdict(AllowedTypes.parse(allowed), claim, sniffed)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason
        assert "\n" not in reason and len(reason) < 300


def test_verdict_takes_the_claim_as_sent() -> None:
    allowed = AllowedTypes.parse(EXAMPLE)
    assert verdict(allowed, 'Video/MP4; codecs="avc1"', ["video/mp4"]) is None
    reason = verdict(allowed, "Video/MP4", [ELF])
    assert reason is not None and reason.endswith("not video/mp4")


def test_verdict_ignores_malformed_and_excess_sniffed_types() -> None:
    allowed = AllowedTypes.parse(EXAMPLE)
    junk = ["not a type", "x" * 10_000, "", "video/*", "vidéo/mp4"]
    assert verdict(allowed, "video/mp4", [*junk, "video/mp4"]) is None
    # Only the first MAX_SNIFFED are read: a match past them is not seen.
    padding = [f"application/x-t{i}" for i in range(MAX_SNIFFED)]
    reason = verdict(allowed, "video/mp4", [*padding, "video/mp4"])
    assert reason is not None and "application/x-t0" in reason


def test_format_size() -> None:
    assert format_size(5 * GiB) == "5GiB"
    assert format_size(1536) == "1536 bytes"
    assert format_size(3 * 1024) == "3KiB"
    assert format_size(1) == "1 byte"
