"""Decision functions, table-driven: request facts + state → plan or error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import errors
from protocol.decisions import (
    BodyFacts,
    ProtocolSettings,
    check_method,
    check_version,
    effective_method,
    expires_at,
    options_headers,
    plan_create,
    plan_download,
    plan_final_length,
    plan_patch,
    upload_headers,
)
from protocol.headers import ConcatFinal, ConcatPartial, Headers
from protocol.model import SinkState, UploadInfo, UploadState
from protocol.names import content_disposition, safe_filename
from protocol.state import UploadStatus

ID = "0123456789abcdef0123456789abcdef"
SET = ProtocolSettings(max_size=1000)
NOBODY = BodyFacts(False, None, None)
OCT = "application/offset+octet-stream"


def body(n: int | None, ctype: str | None = OCT) -> BodyFacts:
    return BodyFacts(n is None or n > 0, n, ctype)


def state(offset: int = 0, length: int | None = 10, **info: object) -> UploadState:
    return UploadState(UploadInfo(ID, length, **info), offset, 100.0)  # type: ignore[arg-type]


def test_version_check() -> None:
    check_version("POST", Headers({"Tus-Resumable": "1.0.0"}))
    check_version("OPTIONS", Headers({"Tus-Resumable": "0.2.2"}))  # TUS-OPT-05
    check_version("GET", Headers({}))  # a download link from a browser
    with pytest.raises(errors.UnsupportedVersion):
        check_version("GET", Headers({"Tus-Resumable": "0.2.2"}))
    for h in [{}, {"Tus-Resumable": "0.2.2"}, {"Tus-Resumable": "1.0.0 "}]:
        with pytest.raises(errors.UnsupportedVersion) as info:
            check_version("PATCH", Headers(h))
        assert info.value.extra_headers["Tus-Version"] == "1.0.0"


def test_method_override() -> None:
    assert effective_method("POST", Headers({"X-HTTP-Method-Override": "patch"})) == "PATCH"
    assert effective_method("POST", Headers({})) == "POST"
    # What the override names is checked like a method on the wire: 405 if the server knows
    # it, 501 if it does not.
    assert effective_method("POST", Headers({"X-HTTP-Method-Override": "TRACE"})) == "TRACE"
    with pytest.raises(errors.MethodNotAllowed) as info:
        check_method("TRACE", {"OPTIONS", "POST"})
    assert info.value.extra_headers["Allow"] == "OPTIONS, POST"
    with pytest.raises(errors.MethodNotImplemented):
        check_method("PROPFIND", {"OPTIONS", "POST"})
    check_method("POST", {"OPTIONS", "POST"})


def test_options_announce_configuration() -> None:
    h = options_headers(ProtocolSettings(max_size=5, expire_after_s=None))
    assert "expiration" not in h["Tus-Extension"]
    assert h["Tus-Max-Size"] == "5"
    assert "sha1" in h["Tus-Checksum-Algorithm"].split(",")
    assert "Tus-Max-Size" not in options_headers(ProtocolSettings())
    h = options_headers(ProtocolSettings(extensions=("creation",)))
    assert h["Tus-Extension"] == "creation" and "Tus-Checksum-Algorithm" not in h


@pytest.mark.parametrize("headers,facts,error", [
    ({}, NOBODY, errors.MissingLength),
    ({"Upload-Length": "x"}, NOBODY, errors.InvalidLength),
    ({"Upload-Length": "5", "Upload-Defer-Length": "1"}, NOBODY, errors.AmbiguousLength),
    ({"Upload-Defer-Length": "0"}, NOBODY, errors.InvalidDeferLength),
    ({"Upload-Length": "1001"}, NOBODY, errors.TooLarge),
    ({"Upload-Length": "5", "Upload-Metadata": "a !"}, NOBODY, errors.InvalidMetadata),
    ({"Upload-Length": "5"}, body(3, "text/plain"), errors.InvalidContentType),
    ({"Upload-Length": "5"}, body(6), errors.SizeExceeded),
    ({"Upload-Concat": "final;/files/" + ID, "Upload-Defer-Length": "1"}, NOBODY,
     errors.InvalidDeferLength),
    ({"Upload-Concat": "final;/files/" + ID}, body(3), errors.ModifyFinal),
    ({"Upload-Concat": "nope", "Upload-Length": "5"}, NOBODY, errors.InvalidConcat),
    ({"Upload-Length": "5", "Upload-Checksum": "sha1 xx"}, body(3), errors.InvalidChecksum),
])
def test_create_errors(headers: dict[str, str], facts: BodyFacts,
                       error: type[errors.TusError]) -> None:
    with pytest.raises(error):
        plan_create(Headers(headers), facts, SET)


def test_create_plans() -> None:
    plan = plan_create(Headers({"Upload-Length": "5"}), NOBODY, SET)
    assert plan.length == 5 and plan.body is None
    plan = plan_create(Headers({"Upload-Defer-Length": "1"}), body(None), SET)
    assert plan.length is None and plan.body is not None and plan.body.max_bytes == 1000
    plan = plan_create(Headers({"Upload-Length": "5", "Upload-Concat": "partial"}), body(2), SET)
    assert plan.concat == ConcatPartial() and plan.body is not None and plan.body.max_bytes == 5
    # TUS-CRE-10: a Content-Type on an empty POST is ignored.
    plan = plan_create(Headers({"Upload-Length": "5"}), BodyFacts(False, 0, "text/plain"), SET)
    assert plan.body is None


@pytest.mark.parametrize("headers,facts,st_,error", [
    ({"Upload-Offset": "0"}, body(3, None), state(), errors.InvalidContentType),
    ({"Upload-Offset": "0"}, body(3, "text/plain"), state(), errors.InvalidContentType),
    ({}, body(3), state(), errors.InvalidOffset),
    ({"Upload-Offset": "-1"}, body(3), state(), errors.InvalidOffset),
    ({"Upload-Offset": "1"}, body(3), state(), errors.MismatchedOffset),
    ({"Upload-Offset": "0"}, body(11), state(), errors.SizeExceeded),
    ({"Upload-Offset": "0", "Upload-Length": "9"}, body(3), state(), errors.LengthAlreadySet),
    ({"Upload-Offset": "4", "Upload-Length": "3"}, body(0), state(4, None),
     errors.LengthBelowOffset),
    ({"Upload-Offset": "0", "Upload-Length": "2000"}, body(0), state(0, None), errors.TooLarge),
    ({"Upload-Offset": "0"}, body(1001), state(0, None), errors.SizeExceeded),
    ({"Upload-Offset": "0"}, body(1), state(0, 5, concat=ConcatFinal((ID,))), errors.ModifyFinal),
    ({"Upload-Offset": "0", "Upload-Checksum": "md4 AAAA"}, body(1), state(),
     errors.UnsupportedChecksum),
])
def test_patch_errors(headers: dict[str, str], facts: BodyFacts, st_: UploadState,
                      error: type[errors.TusError]) -> None:
    with pytest.raises(error):
        plan_patch(Headers(headers), facts, st_, SET)


def test_mismatch_carries_current_offset() -> None:
    with pytest.raises(errors.MismatchedOffset) as info:
        plan_patch(Headers({"Upload-Offset": "0"}), body(1), state(7), SET)
    assert info.value.extra_headers["Upload-Offset"] == "7"


def test_patch_plans() -> None:
    plan = plan_patch(Headers({"Upload-Offset": "3"}), body(None), state(3), SET)
    assert plan.offset == 3 and plan.max_bytes == 7
    plan = plan_patch(Headers({"Upload-Offset": "3", "Upload-Length": "8"}), body(0),
                      state(3, None), SET)
    assert plan.new_length == 8 and plan.max_bytes == 5
    # Repeating the known length is fine (a retried last PATCH).
    plan = plan_patch(Headers({"Upload-Offset": "3", "Upload-Length": "10"}), body(1), state(3),
                      SET)
    assert plan.new_length is None


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 60), st.integers(0, 60))
def test_patch_never_plans_past_the_length(offset: int, length_gap: int, client_offset: int,
                                           n: int) -> None:
    length = offset + length_gap
    s = state(offset, length)
    try:
        plan = plan_patch(Headers({"Upload-Offset": str(client_offset)}), body(n), s, SET)
    except errors.TusError:
        return
    assert plan.offset == offset == client_offset  # only the stored offset plans (TUS-PATCH-03)
    assert plan.max_bytes is not None and offset + plan.max_bytes == length
    assert n <= plan.max_bytes


def test_final_length() -> None:
    concat = ConcatFinal((ID, ID))
    part = state(3, 3, concat=ConcatPartial())
    assert plan_final_length(concat, [part, part], None, SET) == 6
    with pytest.raises(errors.ConcatLengthMismatch):
        plan_final_length(concat, [part, part], 7, SET)
    with pytest.raises(errors.ConcatNotPartial):
        plan_final_length(concat, [part, state(3, 3)], None, SET)
    unfinished = state(1, 3, concat=ConcatPartial())
    assert plan_final_length(concat, [part, unfinished], None, SET) == 6
    strict = ProtocolSettings(extensions=("creation", "concatenation"))
    with pytest.raises(errors.UploadNotFinished):
        plan_final_length(concat, [part, unfinished], None, strict)
    deferred = state(1, None, concat=ConcatPartial())
    assert plan_final_length(concat, [part, deferred], None, SET) is None
    with pytest.raises(errors.TooLarge):
        plan_final_length(ConcatFinal((ID,) * 400), [part] * 400, None, SET)


def test_final_length_holds_deferred_partials_to_the_bytes_they_have() -> None:
    """A deferred partial's length can only be at least its offset: counted once per
    mention, that already decides some finals are too large."""
    deferred = state(300, None, concat=ConcatPartial())
    assert plan_final_length(ConcatFinal((ID,) * 3), [deferred] * 3, None, SET) is None
    with pytest.raises(errors.TooLarge):
        plan_final_length(ConcatFinal((ID,) * 4), [deferred] * 4, None, SET)


def test_upload_headers() -> None:
    h = upload_headers(state(0, None, metadata={"a": b"x", "e": b""}), SET)
    assert h["Upload-Offset"] == "0" and h["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in h and h["Cache-Control"] == "no-store"
    assert h["Upload-Metadata"] == "a eA==,e"
    assert h["Upload-Expires"] == "Fri, 02 Jan 1970 00:01:40 GMT"
    done = upload_headers(state(10, 10), SET)
    assert done["Upload-Length"] == "10" and "Upload-Expires" not in done
    pending_final = upload_headers(state(0, None, concat=ConcatFinal((ID,))), SET)
    assert "Upload-Offset" not in pending_final and "Upload-Defer-Length" not in pending_final
    assert pending_final["Upload-Concat"] == f"final;/files/{ID}"


def test_expiry_is_sliding_and_stops_at_completion() -> None:
    assert expires_at(state(1, 10), SET) == 100.0 + 86400.0
    assert expires_at(state(10, 10), SET) is None
    assert expires_at(state(1, 10), ProtocolSettings(expire_after_s=None)) is None


def test_download_plan() -> None:
    with pytest.raises(errors.UploadNotFinished):
        plan_download(state(3, 10))
    s = state(10, 10, metadata={"filename": b"../../x.html", "filetype": b"text/html"})
    plan = plan_download(s)
    assert plan.path_name == "x.html" and plan.content_type == "application/octet-stream"
    assert plan.disposition.startswith("attachment;")
    s = state(10, 10, metadata={"filename": b"a.png", "filetype": b"image/png"},
              sink=SinkState(UploadStatus.DRAINED, "a.png"))
    assert plan_download(s).disposition.startswith("inline;")
    with pytest.raises(errors.DataDelivered):
        plan_download(state(10, 10, sink=SinkState(UploadStatus.DRAINED, "page"),
                            data_removed=True))


@pytest.mark.parametrize("raw,expected", [
    (b"report.pdf", "report.pdf"),
    (b"../../etc/passwd", "passwd"),
    (b"..\\..\\windows\\win.ini", "win.ini"),
    (b"/abs/path/a.txt", "a.txt"),
    (b"..", "ID"),
    (b"...", "ID"),
    (b"", "ID"),
    (b"a\r\nb.txt", "ab.txt"),
    (b"a\x00b", "ab"),
    (b"con.txt", "_con.txt"),
    (b'we<i>rd:"na|me?*.txt', "we_i_rd__na_me__.txt"),
    ("Résumé 日本.txt".encode(), "Résumé 日本.txt"),
    (b".hidden", "hidden"),
    (b"\xff\xfe.bin", "\ufffd\ufffd.bin"),
])
def test_safe_filename(raw: bytes, expected: str) -> None:
    assert safe_filename(raw, "ID") == expected


@given(st.binary(max_size=400))
def test_safe_filename_is_one_safe_component(raw: bytes) -> None:
    name = safe_filename(raw, "fallback")
    assert name and "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert len(name.encode()) <= 220


def test_content_disposition_is_header_safe() -> None:
    value = content_disposition('a"b\r\n日.txt', "application/octet-stream")
    assert "\r" not in value and "\n" not in value
    assert value.startswith('attachment; filename="a_b___.txt"')
