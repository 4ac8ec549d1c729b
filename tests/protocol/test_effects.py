"""The effects a plan carries, in the order the gateway performs them, for tus and the IETF
draft alike: a declared length, the body, the declared end, then the finish."""

from __future__ import annotations

from protocol import ietf
from protocol.decisions import BodyFacts, ProtocolSettings, plan_create, plan_patch
from protocol.effects import Append, DeclareLength, EndUpload, Finish
from protocol.headers import Headers
from protocol.model import UploadInfo, UploadState

SET = ProtocolSettings(max_size=1000)
OCT = "application/offset+octet-stream"
PARTIAL = "application/partial-upload"


def deferred(offset: int) -> UploadState:
    return UploadState(UploadInfo("a" * 32, None), offset, 0.0)


def test_a_patch_declares_then_appends_then_finishes() -> None:
    plan = plan_patch(Headers({"Upload-Offset": "3", "Upload-Length": "8"}),
                      BodyFacts(True, 5, OCT), deferred(3), SET)
    assert plan.effects == (DeclareLength(8), Append(3, 5, None), Finish())


def test_an_empty_patch_only_finishes() -> None:
    # A length equal to the offset completes the upload without a body (TUS-DEF-05).
    plan = plan_patch(Headers({"Upload-Offset": "3", "Upload-Length": "3"}),
                      BodyFacts(False, 0, OCT), deferred(3), SET)
    assert plan.effects == (DeclareLength(3), Finish())


def test_a_checksum_without_a_body_is_still_an_append() -> None:
    plan = plan_patch(Headers({"Upload-Offset": "3",
                               "Upload-Checksum": "sha1 2jmj7l5rSw0yVb/vlWAYkK/YBwk="}),
                      BodyFacts(False, 0, OCT), UploadState(UploadInfo("a" * 32, 8), 3, 0.0),
                      SET)
    assert [type(e) for e in plan.effects] == [Append, Finish]


def test_creation_with_and_without_a_body_and_a_final() -> None:
    with_body = plan_create(Headers({"Upload-Length": "5"}), BodyFacts(True, 5, OCT), SET)
    assert with_body.effects == (Append(0, 5, None), Finish())
    without = plan_create(Headers({"Upload-Length": "0"}), BodyFacts(False, 0, None), SET)
    assert without.effects == (Finish(),)
    final = plan_create(Headers({"Upload-Concat": "final;/files/" + "b" * 32}),
                        BodyFacts(False, 0, None), SET)
    assert final.effects == ()  # assembled when its partials are, not by its creation


def test_the_draft_ends_the_upload_after_its_content() -> None:
    draft = ietf.DRAFTS[6]
    creation = ietf.plan_creation(draft, Headers({"Upload-Complete": "?1"}),
                                  BodyFacts(True, 4, "application/octet-stream"), SET)
    assert creation.effects == (Append(0, 4, None), EndUpload(), Finish())
    append = ietf.plan_append(draft, Headers({"Upload-Offset": "3", "Upload-Complete": "?1"}),
                              BodyFacts(True, 2, PARTIAL), deferred(3), SET)
    assert append.effects == (DeclareLength(5), Append(3, 2, None), EndUpload(), Finish())
    partway = ietf.plan_append(draft, Headers({"Upload-Offset": "3", "Upload-Complete": "?0"}),
                               BodyFacts(True, 2, PARTIAL), deferred(3), SET)
    assert partway.effects == (Append(3, 997, None), Finish())
