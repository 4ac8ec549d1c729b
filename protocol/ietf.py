"""The IETF "Resumable Uploads for HTTP" draft, interop versions 3 to 9, without I/O.

Theory of operation: a request that carries ``Upload-Draft-Interop-Version`` speaks the draft
instead of tus 1.0.0, on the same URLs and the same uploads. The gateway parses the request
into ``Headers`` and ``BodyFacts``, asks one of the ``plan_*`` functions here, performs the
plan through the shared upload service and formats the answer with ``*_headers``. Errors are
ordinary ``TusError``s; ``problem`` turns one into an RFC 9457 problem-details answer.

Each interop version pins one draft text, and clients pin one interop version (iOS 17 sends
3, iOS 18 sends 5, iOS 18.1 sends 6), so every rule that changed between drafts is a field
of ``Draft`` and nothing else branches on the number:

====  ==========  ======================================================================
 3    -01         ``Upload-Incomplete`` (the inverse flag); 201 for every append; 204 HEAD
 4    -02         ``Upload-Complete`` replaces ``Upload-Incomplete``
 5    -03         104 progress allowed, HEAD may be 200 (we keep 204)
 6    -04, -05    appends must be ``application/partial-upload``; ``Upload-Limit`` (with
                  ``expires``); ``Upload-Length``; problem types
 7    -06 … -08   ``expires`` renamed ``max-age``; ``Upload-Complete`` required on appends
                  and their answers; intermediate appends answer any 2xx (we send 204)
 8    -09 … -11   ``Upload-Limit`` mandatory on HEAD; ``Accept-Patch`` on OPTIONS
 9    -12         ``GET`` retrieves the offset as ``HEAD`` does; ``Accept-Patch`` dropped
                  again; every answer to a creation or append says ``Upload-Complete``
                  (``?0`` on an error: the upload protocol's own answer)
====  ==========  ======================================================================

-12 also lets ``max-age`` count down (the lifetime's end must not move earlier, which a
sliding expiry never does), makes ``min-size`` the size under which resumability need not be
offered (ours is 0: always offered), exempts an empty creation from ``min-append-size``
(which we never announce) and recommends incremental delivery (the body is stored as it
arrives); none of these needs a field. See docs/ietf-draft.md.

Invariants shared with tus: the offset is what the store holds; a request that fails a check
changes nothing; an upload whose length is known and whose offset reaches it is complete and
delivered, whichever protocol sent the last byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from protocol import errors
from protocol.decisions import BodyFacts, ProtocolSettings
from protocol.effects import Append as StoreBody
from protocol.effects import Effect, request_effects
from protocol.headers import MAX_INTEGER, Headers, parse_metadata
from protocol.model import UploadState

INTEROP_HEADER = "Upload-Draft-Interop-Version"
# Set by a proxy that cannot pass interim responses on (see ``interim_allowed``).
INTERIM_HEADER = "X-Interim-Responses"
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
REASON_104 = "Upload Resumption Supported"
# Media types that describe the transfer, not the file: never recorded as its type.
TRANSFER_TYPES = frozenset({PARTIAL_UPLOAD, "application/offset+octet-stream"})


@dataclass(frozen=True, slots=True)
class Draft:
    """The wire rules of one interop version."""

    version: int
    # -01 says "Upload-Incomplete: ?1" where later drafts say "Upload-Complete: ?0".
    complete_field: str
    inverted: bool
    # -04: "The request MUST use the PATCH method with the application/partial-upload
    # media type".
    partial_upload_type: bool
    # -04/-05 introduce Upload-Limit and Upload-Length; before that they are unknown headers.
    limits: bool
    # -06: "Rename expires limit to max-age".
    lifetime_key: str
    # -06: "Require Upload-Complete ... for append responses" (and requests).
    complete_required: bool
    # -01 to -05: an incomplete append "MUST" be acknowledged with 201 (Created); -06 on
    # allow any 2xx, and 204 says there is no content to read.
    append_status: int
    # -09: "A server that supports the creation ... MUST include the Accept-Patch header";
    # -12 reverts it ("Remove Accept-Patch from OPTIONS responses").
    accept_patch: bool
    # -12: "It can fetch the offset by sending a HEAD or GET request to the upload resource".
    offset_get: bool
    # -12: Upload-Complete in a creation or append response "signals whether the response
    # comes from the initial targeted resource"; "the value of false means that the
    # semantics of the resumable upload protocol apply", as on all our error answers.
    complete_on_errors: bool


DRAFTS: dict[int, Draft] = {
    v: Draft(
        version=v,
        complete_field="Upload-Incomplete" if v == 3 else "Upload-Complete",
        inverted=v == 3,
        partial_upload_type=v >= 6,
        limits=v >= 6,
        lifetime_key="expires" if v == 6 else "max-age",
        complete_required=v >= 7,
        append_status=201 if v <= 6 else 204,
        accept_patch=v == 8,
        offset_get=v >= 9,
        complete_on_errors=v >= 9,
    )
    for v in range(3, 10)
}
INTEROP_VERSIONS = tuple(DRAFTS)

# --- structured fields (RFC 9651), strictly ----------------------------------------------
_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")
_PARAM_VALUE = (r'(?:\?[01]|-?[0-9]{1,15}(?:\.[0-9]{1,3})?|"(?:[^"\\]|\\[\\"])*"'
                r"|[A-Za-z*][!#$%&'*+\-.^_`|~:/0-9A-Za-z]*|:[A-Za-z0-9+/=]*:)")
# Parameters may follow any item; we accept and ignore them, as RFC 9651 asks of recipients
# that do not know them.
_PARAMS = re.compile(rf"(?:;\s*[a-z*][a-z0-9_\-.*]*(?:={_PARAM_VALUE})?)*")
_SF_BOOLEAN = re.compile(r"\?([01])")


def _item(value: str, bare: re.Pattern[str], name: str) -> re.Match[str]:
    # RFC 9651 4.2: "Discard any leading SP characters" and trailing ones.
    text = value.strip(" ")
    match = bare.match(text)
    if match is None or not _PARAMS.fullmatch(text, match.end()):
        raise errors.InvalidHeader(f"{name}: {value[:40]!r} is not a structured-field "
                                   f"{'Boolean' if bare is _SF_BOOLEAN else 'Integer'}")
    return match


def parse_sf_boolean(value: str, name: str) -> bool:
    """An sf-boolean: ``?1`` or ``?0`` (RFC 9651 3.3.6); nothing else, not ``true`` or ``1``."""
    return _item(value, _SF_BOOLEAN, name).group(1) == "1"


def parse_sf_integer(value: str, name: str) -> int:
    """An sf-integer (at most 15 digits, RFC 9651 3.3.1) that is a byte count: not negative."""
    number = int(_item(value, _SF_INTEGER, name).group(0))
    if number < 0 or number > MAX_INTEGER:
        raise errors.InvalidHeader(f"{name} must not be negative")
    return number


def format_sf_boolean(value: bool) -> str:
    return "?1" if value else "?0"


# --- which draft ---------------------------------------------------------------------------
def draft_of(headers: Headers) -> Draft:
    """The draft a request speaks. An interop version we do not implement gets a 400, never a
    104: "Server implementations of draft versions of the protocol MUST NOT send a 104 ...
    when the interop version ... is missing or mismatching"."""
    raw = headers.one(INTEROP_HEADER)
    if raw is None:
        raise errors.UnsupportedInteropVersion()
    try:
        version = parse_sf_integer(raw, INTEROP_HEADER)
    except errors.TusError:
        raise errors.UnsupportedInteropVersion() from None
    draft = DRAFTS.get(version)
    if draft is None:
        raise errors.UnsupportedInteropVersion(
            f"interop version {version} is not one of {', '.join(map(str, INTEROP_VERSIONS))}")
    return draft


def speaks_draft(method: str, headers: Headers) -> bool:
    """Whether a request is a draft request rather than tus. A GET is a plain download unless
    it names an interop version whose offset retrieval includes GET (-12): an older or
    unknown version keeps the download it always had."""
    if INTEROP_HEADER not in headers:
        return False
    if method != "GET":
        return True
    try:
        return draft_of(headers).offset_get
    except errors.TusError:
        return False


def error_headers(draft: Draft) -> dict[str, str]:
    """What an error answer to a creation or append adds under ``draft``."""
    return complete_header(draft, False) if draft.complete_on_errors else {}


def request_complete(draft: Draft, headers: Headers) -> bool | None:
    """The request's completeness flag: True, False, or None when it is absent."""
    raw = headers.one(draft.complete_field)
    if raw is None:
        return None
    flag = parse_sf_boolean(raw, draft.complete_field)
    return not flag if draft.inverted else flag


def complete_header(draft: Draft, complete: bool) -> dict[str, str]:
    return {draft.complete_field: format_sf_boolean(not complete if draft.inverted else complete)}


def _reject_fields(draft: Draft, headers: Headers, what: str) -> None:
    """HEAD and DELETE: "The request MUST NOT include an Upload-Offset or Upload-Complete
    header field. The server MUST reject ... with a 400 (Bad Request)"; -05 adds Upload-Length."""
    names = ["Upload-Offset", draft.complete_field]
    if draft.limits:
        names.append("Upload-Length")
    for name in names:
        if name in headers:
            raise errors.InvalidHeader(f"{what} must not carry {name}")


# --- limits ----------------------------------------------------------------------------------
def upload_limit(draft: Draft, settings: ProtocolSettings, max_age_s: float | None) -> str:
    """The Upload-Limit dictionary. "If the server does not apply any limits, it MUST use
    min-size=0 instead of an empty header value"; we always send it."""
    parts = ["min-size=0"]
    if settings.max_size is not None:
        parts.append(f"max-size={settings.max_size}")
    if max_age_s is not None:
        parts.append(f"{draft.lifetime_key}={max(0, int(max_age_s))}")
    return ", ".join(parts)


def _remaining_s(state: UploadState, settings: ProtocolSettings, now: float) -> float | None:
    if settings.expire_after_s is None or state.finished:
        return None
    return state.last_activity + settings.expire_after_s - now


def _common(draft: Draft) -> dict[str, str]:
    return {INTEROP_HEADER: str(draft.version)}


def options_headers(draft: Draft, settings: ProtocolSettings) -> dict[str, str]:
    headers = _common(draft)
    if draft.limits:
        headers["Upload-Limit"] = upload_limit(draft, settings, settings.expire_after_s)
    if draft.accept_patch:
        headers["Accept-Patch"] = PARTIAL_UPLOAD
    return headers


def interim_headers(draft: Draft, location: str,
                    settings: ProtocolSettings) -> list[tuple[str, str]]:
    """The 104 sent once the upload exists: "it MUST include Location ... and MUST include the
    Upload-Limit header field" (-09), and the interop version, which clients check."""
    fields = [(INTEROP_HEADER, str(draft.version)), ("Location", location)]
    if draft.limits:
        fields.append(("Upload-Limit", upload_limit(draft, settings, settings.expire_after_s)))
    return fields


def interim_allowed(headers: Headers) -> bool:
    """Whether the 104 may be written. A proxy that cannot pass interim responses on sets
    ``X-Interim-Responses: none`` (deploy/nginx.conf: nginx takes a 104 for the final
    response; docs/ietf-draft.md, "Behind a proxy"). The upload's URL then comes with the
    201 only, as the draft allows: "SHOULD announce the upload resource by sending an interim
    response ... unless the server is not capable of sending interim responses". The field
    only withholds the 104 from the request that carries it, so a client gains nothing by
    sending it; any value but ``none`` is refused rather than guessed at."""
    raw = headers.one(INTERIM_HEADER)
    if raw is None:
        return True
    if raw.strip(" \t").lower() != "none":
        raise errors.InvalidHeader(f"{INTERIM_HEADER} can only be none")
    return False


def format_interim(fields: list[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 104 interim response, byte for byte. Values come from our own URL builder
    and integers; a CR or LF would split the response, so it is refused, not escaped."""
    lines = [f"HTTP/1.1 104 {REASON_104}"]
    for name, value in fields:
        if any(ch in value for ch in "\r\n\0"):
            raise ValueError(f"{name} would break the interim response")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def state_headers(draft: Draft, state: UploadState, settings: ProtocolSettings,
                  now: float) -> dict[str, str]:
    """What HEAD reports, and the offset part of creation and append answers.

    Upload-Length goes to every version although -05 introduced it: tus-js-client's
    ``ietf-draft-03`` mode reads it to see that a resumed upload is already whole.
    """
    headers = _common(draft)
    headers["Upload-Offset"] = str(state.offset)
    headers.update(complete_header(draft, state.finished or _complete_now(state)))
    if state.info.length is not None:
        headers["Upload-Length"] = str(state.info.length)
    if draft.limits:
        headers["Upload-Limit"] = upload_limit(draft, settings,
                                               _remaining_s(state, settings, now))
    headers["Cache-Control"] = "no-store"
    return headers


def _complete_now(state: UploadState) -> bool:
    return state.info.length is not None and state.offset >= state.info.length \
        and not (state.info.is_final and not state.info.assembled)


# --- creation --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Creation:
    length: int | None  # None: known only once a request says Upload-Complete: ?1
    metadata: dict[str, bytes]
    complete: bool  # this request's content ends the upload
    max_bytes: int | None  # most body bytes to take
    has_body: bool

    @property
    def effects(self) -> tuple[Effect, ...]:
        """After the creation: the content, if any, then the end the request may declare,
        then the finish of an upload complete by then."""
        return request_effects(append=StoreBody(0, self.max_bytes) if self.has_body else None,
                               end=self.complete)


def plan_creation(draft: Draft, headers: Headers, body: BodyFacts,
                  settings: ProtocolSettings) -> Creation:
    """POST to the collection with the completeness flag.

    -01: "The request MUST include the Upload-Incomplete header field"; "The request MUST NOT
    include the Upload-Offset header". Length: Upload-Length, or Content-Length with
    Upload-Complete: ?1; "If the sizes are inconsistent, the server MUST reject the request
    by responding with a 400".
    """
    complete = request_complete(draft, headers)
    if complete is None:
        raise errors.InvalidHeader(f"creating an upload needs {draft.complete_field}")
    if "Upload-Offset" in headers:
        raise errors.InvalidHeader("creating an upload must not carry Upload-Offset")
    length = _declared_length(headers)
    if complete and body.content_length is not None:
        if length is not None and length != body.content_length:
            raise errors.InconsistentLength(
                f"Upload-Length is {length} but the content has {body.content_length} bytes")
        length = body.content_length
    elif length is not None and body.content_length is not None \
            and body.content_length > length:
        raise errors.InconsistentLength(
            f"{body.content_length} bytes of content exceed Upload-Length {length}")
    if length is not None and settings.max_size is not None and length > settings.max_size:
        raise errors.TooLarge(f"{length} bytes is above the maximum of {settings.max_size}")
    metadata = _metadata(headers, settings)
    limit = length if length is not None else settings.max_size
    return Creation(length, metadata, complete, limit, body.present)


def _declared_length(headers: Headers) -> int | None:
    raw = headers.one("Upload-Length", errors.InconsistentLength)
    # tus-js-client sends Upload-Length in its interop 5 mode too, so every version reads it.
    return None if raw is None else parse_sf_integer(raw, "Upload-Length")


def _metadata(headers: Headers, settings: ProtocolSettings) -> dict[str, bytes]:
    """The draft carries file metadata as representation metadata: Content-Type and
    Content-Disposition's filename. tus-js-client also sends its Upload-Metadata, which wins
    because it is what the user gave the client."""
    metadata: dict[str, bytes] = {}
    ctype = (headers.one("Content-Type") or "").split(";", 1)[0].strip().lower()
    if ctype and ctype not in TRANSFER_TYPES:
        metadata["filetype"] = ctype.encode("utf-8", "replace")
    disposition = headers.one("Content-Disposition")
    if disposition:
        name = _disposition_filename(disposition)
        if name:
            metadata["filename"] = name.encode("utf-8", "surrogateescape")
    raw = headers.one("Upload-Metadata", errors.InvalidMetadata)
    if raw is not None:
        metadata.update(parse_metadata(raw, settings.max_metadata_bytes))
    size = sum(len(k) + len(v) for k, v in metadata.items())
    if size > settings.max_metadata_bytes:
        raise errors.MetadataTooLarge(f"file metadata is larger than {settings.max_metadata_bytes}"
                                      " bytes")
    return metadata


def _disposition_filename(value: str) -> str | None:
    """``filename*`` (RFC 8187) or ``filename`` from a Content-Disposition value; the name is
    made safe later, where it meets a path."""
    message = Message()
    message["Content-Disposition"] = value
    try:
        name = message.get_filename()
    except UnicodeError:
        # Text beside bytes that are not UTF-8 (a surrogate the parser cannot re-encode):
        # no name is better than a made-up one.
        return None
    return name if isinstance(name, str) and name else None


def creation_headers(draft: Draft, state: UploadState, location: str,
                     settings: ProtocolSettings, now: float) -> dict[str, str]:
    headers = state_headers(draft, state, settings, now)
    headers["Location"] = location
    return headers


# --- append ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Append:
    offset: int
    complete: bool
    new_length: int | None  # a length this request records
    max_bytes: int | None
    has_body: bool

    @property
    def effects(self) -> tuple[Effect, ...]:
        return request_effects(
            declare=self.new_length,
            append=StoreBody(self.offset, self.max_bytes) if self.has_body else None,
            end=self.complete)


def plan_append(draft: Draft, headers: Headers, body: BodyFacts, state: UploadState,
                settings: ProtocolSettings) -> Append:
    """PATCH to an upload, checked in an order that keeps bad input from changing anything."""
    if state.info.is_final:
        raise errors.ModifyFinal()
    if draft.partial_upload_type:
        ctype = (body.content_type or "").split(";", 1)[0].strip().lower()
        if ctype != PARTIAL_UPLOAD:
            raise errors.InvalidContentType(f"Content-Type must be {PARTIAL_UPLOAD}")
    raw_offset = headers.one("Upload-Offset")
    if raw_offset is None:
        raise errors.InvalidOffset("Upload-Offset is required")
    offset = parse_sf_integer(raw_offset, "Upload-Offset")
    complete = request_complete(draft, headers)
    if complete is None:
        if draft.complete_required:
            raise errors.InvalidHeader(f"an append needs {draft.complete_field}")
        # -01 to -05: "If the end of the request content is not the end of the upload, the
        # Upload-Complete field value MUST be set to false": without it, the upload ends here.
        complete = True
    declared = _declared_length(headers) if draft.limits else None
    # "If the upload is already complete, the server MUST NOT modify the upload resource and
    # MUST respond with a 400 (Bad Request)".
    if state.finished or _complete_now(state):
        raise errors.UploadCompleted()
    if offset != state.offset:
        raise errors.MismatchedOffset(
            f"the upload is at {state.offset}, not {offset}",
            headers={"Upload-Offset": str(state.offset), **complete_header(draft, False)},
            data={"expected-offset": state.offset, "provided-offset": offset})
    known = state.info.length
    length = known if known is not None else declared
    if declared is not None and known is not None and declared != known:
        raise errors.InconsistentLength(f"the upload's length is {known}, not {declared}")
    if complete and body.content_length is not None:
        # "the upload's final size is the sum of the upload's offset and the Content-Length"
        final = offset + body.content_length
        if length is not None and length != final:
            raise errors.InconsistentLength(
                f"{final} bytes in all, but the upload's length is {length}")
        length = final
    if length is not None:
        if length < offset:
            raise errors.InconsistentLength("the length is below the bytes already stored")
        if body.content_length is not None and offset + body.content_length > length:
            raise errors.InconsistentLength(
                f"{body.content_length} bytes at offset {offset} would pass the length {length}")
        if settings.max_size is not None and length > settings.max_size:
            raise errors.TooLarge(f"{length} bytes is above the maximum of {settings.max_size}")
        limit: int | None = length - offset
    else:
        limit = None if settings.max_size is None else settings.max_size - offset
    new_length = length if known is None else None
    return Append(offset, complete, new_length, limit, body.present)


def append_headers(draft: Draft, state: UploadState, settings: ProtocolSettings,
                   now: float) -> dict[str, str]:
    return state_headers(draft, state, settings, now)


def check_head(draft: Draft, headers: Headers) -> None:
    _reject_fields(draft, headers, "HEAD")


def check_delete(draft: Draft, headers: Headers) -> None:
    _reject_fields(draft, headers, "DELETE")


# --- problem details (RFC 9457) ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Problem:
    status: int
    headers: dict[str, str]
    body: dict[str, object]


# Error codes with a problem type of their own, and the status the draft gives them where
# it differs from tus's: an upload that is not active is 404 to the draft ("If the server
# does not consider the upload resource to be active, it MUST respond with a 404"), and a
# body past the length is an inconsistent length, 400, where tus says 413.
_PROBLEM_TYPES: dict[str, tuple[str, int | None]] = {
    errors.MismatchedOffset.code: ("mismatching-upload-offset", None),
    errors.UploadCompleted.code: ("completed-upload", None),
    errors.InconsistentLength.code: ("inconsistent-upload-length", None),
    errors.SizeExceeded.code: ("inconsistent-upload-length", 400),
    errors.Gone.code: ("", 404),
}


def problem(draft: Draft | None, exc: errors.TusError) -> Problem:
    """The problem-details answer for a ``TusError`` on a draft request."""
    kind, status = _PROBLEM_TYPES.get(exc.code, ("", None))
    body: dict[str, object] = {
        "type": PROBLEM_BASE + kind if kind else "about:blank",
        "title": exc.detail,
        "code": exc.code,
    }
    body.update({k: v for k, v in exc.data.items() if isinstance(v, (int, str, bool))})
    headers = {k: v for k, v in exc.extra_headers.items() if k != "Tus-Version"}
    if draft is not None:
        headers[INTEROP_HEADER] = str(draft.version)
    return Problem(status or exc.status, headers, body)
