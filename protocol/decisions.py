"""Decision functions: request facts + upload state + ``now`` → a plan or a ``TusError``.

The gateway parses the request into ``Headers`` and a few facts (is there a body, its
declared length), asks one of these functions, performs the plan and formats the answer with
``upload_headers``. Nothing here performs I/O or reads a clock, so every rule is testable as a
table. Checks run in the order that keeps bad input from changing anything: every check that
can fail happens before a plan exists, and a plan is only ever carried out whole.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from protocol import errors
from protocol.effects import Append, Effect, request_effects
from protocol.errors import TUS_VERSION
from protocol.headers import (
    CHECKSUM_DIGEST_SIZES,
    Checksum,
    Concat,
    ConcatFinal,
    ConcatPartial,
    Headers,
    format_concat,
    format_http_date,
    format_metadata,
    parse_checksum,
    parse_concat,
    parse_metadata,
    parse_uint,
)
from protocol.model import UploadState
from protocol.names import content_disposition, download_type, metadata_filename, safe_filename
from protocol.state import UploadStatus

OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
TUS_METHODS = frozenset({"OPTIONS", "POST", "HEAD", "PATCH", "DELETE", "GET"})
# RFC 9110's methods and PATCH (RFC 5789): refused with 405 where a URL does not take them.
KNOWN_METHODS = TUS_METHODS | {"PUT", "CONNECT", "TRACE"}
# OPTIONS needs no Tus-Resumable (tus: the server ignores it there). A GET is a plain download
# that browsers follow from links, which cannot carry tus headers: it may omit the header,
# but a GET that names a version we do not speak is refused like any other request.
VERSIONLESS_METHODS = frozenset({"OPTIONS"})
VERSION_OPTIONAL_METHODS = frozenset({"GET"})
ALL_EXTENSIONS = ("creation", "creation-with-upload", "creation-defer-length", "termination",
                  "checksum", "expiration", "concatenation", "concatenation-unfinished")


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    base_path: str = "/files/"
    max_size: int | None = None  # None: no limit, and no Tus-Max-Size header
    # Who set ``max_size`` when it is not the gateway's own --max-size (a sink's remote, such
    # as a Notion workspace's file upload limit): named in the 413, so the client knows why.
    max_size_by: str | None = None
    max_metadata_bytes: int = 4096
    expire_after_s: float | None = 86400.0  # None: uploads never expire
    max_concat_parts: int = 1000
    extensions: tuple[str, ...] = ALL_EXTENSIONS

    def __post_init__(self) -> None:
        if "expiration" in self.extensions and self.expire_after_s is None:
            object.__setattr__(self, "extensions",
                               tuple(e for e in self.extensions if e != "expiration"))


def effective_method(method: str, headers: Headers) -> str:
    """tus: "the Server MUST interpret the request as if the value of the header was the method".

    The override is read case-insensitively, as tus clients send it. Whatever it names is
    checked against the URL's methods by ``check_method``, like a method on the wire.
    """
    override = headers.one("X-HTTP-Method-Override")
    if override is None or method == "OPTIONS":
        return method
    return override.strip().upper()


def check_method(method: str, allowed: Collection[str]) -> None:
    """Refuse a method a URL does not take: 405 with ``Allow`` if it is a method the server
    knows, 501 if not (``method_refused``)."""
    if method not in allowed:
        raise method_refused(method, allowed)


def method_refused(method: str, allowed: Collection[str]) -> errors.TusError:
    """The error for ``method`` on a URL that takes ``allowed``.

    Known means a tus method or a standard HTTP method: a client that sends one of these
    learns from ``Allow`` what to send instead. Anything else (WebDAV's methods, made-up
    tokens, lowercase spellings, since methods are case-sensitive) is a method this server
    does not implement anywhere. The detail names at most 20 characters of the method, so a
    long token does not come back whole.
    """
    shown = repr(method[:20]) + ("..." if len(method) > 20 else "")
    if method in KNOWN_METHODS:
        return errors.MethodNotAllowed(f"{shown} is not allowed on this URL",
                                       headers={"Allow": ", ".join(sorted(allowed))})
    return errors.MethodNotImplemented(f"the server does not implement the method {shown}")


def check_version(method: str, headers: Headers) -> None:
    if method in VERSIONLESS_METHODS:
        return
    version = headers.one("Tus-Resumable", errors.UnsupportedVersion)
    if version is None and method in VERSION_OPTIONAL_METHODS:
        return
    if version != TUS_VERSION:
        raise errors.UnsupportedVersion()


def options_headers(settings: ProtocolSettings) -> dict[str, str]:
    headers = {"Tus-Version": TUS_VERSION, "Tus-Resumable": TUS_VERSION}
    if settings.extensions:
        headers["Tus-Extension"] = ",".join(settings.extensions)
    if settings.max_size is not None:
        headers["Tus-Max-Size"] = str(settings.max_size)
    if "checksum" in settings.extensions:
        headers["Tus-Checksum-Algorithm"] = ",".join(CHECKSUM_DIGEST_SIZES)
    return headers


@dataclass(frozen=True, slots=True)
class BodyFacts:
    """What the gateway knows about a request body before reading it."""

    present: bool  # Content-Length > 0, or a chunked body
    content_length: int | None
    content_type: str | None


@dataclass(frozen=True, slots=True)
class AppendBody:
    """Stream at most ``max_bytes`` (None: no limit) at ``offset``, verifying ``checksum``."""

    offset: int
    max_bytes: int | None
    checksum: Checksum | None = None
    new_length: int | None = None  # a deferred length declared by this request


@dataclass(frozen=True, slots=True)
class CreatePlan:
    length: int | None
    metadata: dict[str, bytes]
    concat: Concat | None
    body: AppendBody | None  # creation-with-upload

    @property
    def effects(self) -> tuple[Effect, ...]:
        """What follows the creation: the first bytes, if any, then the finish of an upload
        that is complete already (Upload-Length: 0, TUS-CRE-06). A final concatenation has
        none: it is assembled when its partials are (``plan_final_length``)."""
        if isinstance(self.concat, ConcatFinal):
            return ()
        body = self.body
        return request_effects(
            append=None if body is None else Append(0, body.max_bytes, body.checksum))


@dataclass(frozen=True, slots=True)
class PatchPlan:
    """A PATCH: its checked facts and the effects that carry it out, in order."""

    offset: int
    max_bytes: int | None
    checksum: Checksum | None
    new_length: int | None  # a deferred length declared by this request
    stores_body: bool  # a body, or a checksum (checked against the empty body)

    @property
    def effects(self) -> tuple[Effect, ...]:
        # An upload complete by now finishes: through this body, through a length declared
        # equal to the offset (TUS-DEF-05), or a retried final PATCH after a delivery that
        # failed.
        append = Append(self.offset, self.max_bytes, self.checksum) if self.stores_body \
            else None
        return request_effects(declare=self.new_length, append=append)


def _has_extension(settings: ProtocolSettings, name: str) -> bool:
    return name in settings.extensions


def _check_size(length: int, settings: ProtocolSettings) -> None:
    if settings.max_size is not None and length > settings.max_size:
        by = f" ({settings.max_size_by})" if settings.max_size_by else ""
        raise errors.TooLarge(f"{length} bytes is above the maximum of {settings.max_size}{by}",
                              data={"max_size": settings.max_size,
                                    "limited_by": settings.max_size_by})


def _body_checksum(headers: Headers, settings: ProtocolSettings) -> Checksum | None:
    raw = headers.one("Upload-Checksum", errors.InvalidChecksum)
    if raw is None:
        return None
    if not _has_extension(settings, "checksum"):
        raise errors.UnsupportedChecksum("checksums are not enabled")
    return parse_checksum(raw)


def _check_body_type(body: BodyFacts) -> None:
    ctype = (body.content_type or "").split(";", 1)[0].strip().lower()
    if ctype != OFFSET_CONTENT_TYPE:
        raise errors.InvalidContentType()


def _body_limit(length: int | None, offset: int, body: BodyFacts,
                settings: ProtocolSettings) -> int | None:
    if length is not None:
        limit: int | None = length - offset
    elif settings.max_size is not None:
        limit = settings.max_size - offset  # TUS-DEF-04
    else:
        limit = None
    if limit is not None and body.content_length is not None and body.content_length > limit:
        raise errors.SizeExceeded(
            f"{body.content_length} bytes at offset {offset} would pass the length")
    return limit


def plan_create(headers: Headers, body: BodyFacts, settings: ProtocolSettings) -> CreatePlan:
    """POST (creation, creation-with-upload, creation-defer-length, concatenation)."""
    raw_concat = headers.one("Upload-Concat", errors.InvalidConcat)
    concat: Concat | None = None
    if raw_concat is not None:
        if not _has_extension(settings, "concatenation"):
            raise errors.InvalidConcat("concatenation is not enabled")
        concat = parse_concat(raw_concat, settings.base_path, settings.max_concat_parts)
    raw_length = headers.one("Upload-Length", errors.InvalidLength)
    raw_defer = headers.one("Upload-Defer-Length", errors.InvalidDeferLength)
    length = None if raw_length is None else parse_uint(raw_length, errors.InvalidLength)
    if raw_defer is not None:
        if raw_defer != "1" or not _has_extension(settings, "creation-defer-length"):
            raise errors.InvalidDeferLength()
        if length is not None:
            raise errors.AmbiguousLength()
    if isinstance(concat, ConcatFinal):
        if raw_defer is not None:
            raise errors.InvalidDeferLength("a final upload's length is the sum of its partials")
        if body.present:
            raise errors.ModifyFinal("a final upload cannot carry data")  # TUS-CWU-06
    elif length is None and raw_defer is None:
        raise errors.MissingLength()
    if length is not None:
        _check_size(length, settings)
    raw_metadata = headers.one("Upload-Metadata", errors.InvalidMetadata)
    metadata = {} if raw_metadata is None else parse_metadata(raw_metadata,
                                                              settings.max_metadata_bytes)
    plan_body = None
    if body.present:
        if not _has_extension(settings, "creation-with-upload"):
            raise errors.BodyNotAllowed("creation-with-upload is not enabled")
        _check_body_type(body)  # TUS-CWU-03: a body in another type is refused, not ignored
        plan_body = AppendBody(0, _body_limit(length, 0, body, settings),
                               _body_checksum(headers, settings))
    else:
        _body_checksum(headers, settings)  # a malformed header is an error even without data
    # For a final, ``length`` is what the client declared (optional, checked against the sum).
    return CreatePlan(length, metadata, concat, plan_body)


def plan_final_length(concat: ConcatFinal, partials: Sequence[UploadState],
                      declared: int | None, settings: ProtocolSettings) -> int | None:
    """The final's length once every partial length is known; checks each partial.

    With concatenation-unfinished, partials need not be finished; without it, they must be.
    A partial may be named more than once (as tusd allows): its bytes then appear, and count
    against the maximum size, once per mention. The size is held to the maximum as soon as
    the known part of it passes: a deferred partial counts with the bytes it already has,
    which its length can only exceed. Called again at assembly, when every length is known.
    """
    total = 0
    known = True
    for upload_id, state in zip(concat.upload_ids, partials, strict=True):
        if not isinstance(state.info.concat, ConcatPartial):
            raise errors.ConcatNotPartial(f"{upload_id} is not a partial upload")
        if not state.finished and not _has_extension(settings, "concatenation-unfinished"):
            raise errors.UploadNotFinished(f"partial upload {upload_id} is not finished")
        if state.info.length is None:
            known = False
            total += state.offset
        else:
            total += state.info.length
    if not known:
        if declared is not None:
            raise errors.ConcatLengthMismatch("the partial lengths are not known yet")
        _check_size(total, settings)
        return None
    if declared is not None and declared != total:
        raise errors.ConcatLengthMismatch(f"the partials add up to {total}, not {declared}")
    _check_size(total, settings)
    return total


def plan_patch(headers: Headers, body: BodyFacts, state: UploadState,
               settings: ProtocolSettings) -> PatchPlan:
    """PATCH: the checks of tus core, checksum and creation-defer-length, in a safe order."""
    if state.info.is_final:
        raise errors.ModifyFinal()  # TUS-CAT-05
    # tus: "All PATCH requests MUST use Content-Type: application/offset+octet-stream".
    _check_body_type(body)
    raw_offset = headers.one("Upload-Offset", errors.InvalidOffset)
    if raw_offset is None:
        raise errors.InvalidOffset("Upload-Offset is required")
    offset = parse_uint(raw_offset, errors.InvalidOffset)
    new_length = _declared_length(headers, state, settings)
    checksum = _body_checksum(headers, settings)
    if offset != state.offset:
        raise errors.MismatchedOffset(
            f"the upload is at {state.offset}, not {offset}",
            headers={"Upload-Offset": str(state.offset)})
    length = state.info.length if new_length is None else new_length
    if new_length is not None and new_length < offset:
        raise errors.LengthBelowOffset()
    limit = _body_limit(length, offset, body, settings)
    return PatchPlan(offset, limit, checksum, new_length,
                     stores_body=body.present or checksum is not None)


def _declared_length(headers: Headers, state: UploadState,
                     settings: ProtocolSettings) -> int | None:
    """TUS-DEF-03: the deferred length may be declared once, and never changed."""
    raw = headers.one("Upload-Length", errors.InvalidLength)
    if raw is None:
        return None
    length = parse_uint(raw, errors.InvalidLength)
    if state.info.length is not None:
        if length != state.info.length:
            raise errors.LengthAlreadySet()
        return None  # a retried request repeating the known length is fine
    _check_size(length, settings)
    return length


def expires_at(state: UploadState, settings: ProtocolSettings) -> float | None:
    """Sliding expiry: unfinished uploads live ``expire_after_s`` past their last activity.

    Finished uploads do not expire: they belong to the sink, not to the client.
    """
    if settings.expire_after_s is None or state.finished:
        return None
    return state.last_activity + settings.expire_after_s


def is_expired(state: UploadState, settings: ProtocolSettings, now: float) -> bool:
    deadline = expires_at(state, settings)
    return deadline is not None and now >= deadline


def upload_headers(state: UploadState, settings: ProtocolSettings) -> dict[str, str]:
    """The headers that describe an upload: HEAD, and the offset part of POST/PATCH answers."""
    info = state.info
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    # TUS-CATU-02: an unassembled final has no offset to report.
    if not (info.is_final and state.status == UploadStatus.CREATED):
        headers["Upload-Offset"] = str(state.offset)
    if info.length is not None:
        headers["Upload-Length"] = str(info.length)
    elif not info.is_final:
        headers["Upload-Defer-Length"] = "1"
    if info.metadata:
        headers["Upload-Metadata"] = format_metadata(info.metadata)
    if info.concat is not None:
        headers["Upload-Concat"] = format_concat(info.concat, settings.base_path)
    deadline = expires_at(state, settings)
    if deadline is not None:
        headers["Upload-Expires"] = format_http_date(deadline)
    return headers


@dataclass(frozen=True, slots=True)
class Download:
    path_name: str  # safe file name for Content-Disposition
    content_type: str
    disposition: str
    length: int


def plan_download(state: UploadState) -> Download:
    if not state.finished or state.info.length is None:
        raise errors.UploadNotFinished()
    if state.info.data_removed:
        raise errors.DataDelivered()
    name = safe_filename(metadata_filename(state.info.metadata), state.info.upload_id)
    ctype = download_type(state.info.metadata)
    return Download(name, ctype, content_disposition(name, ctype), state.info.length)


def body_facts(headers: Mapping[str, str] | Headers, has_body: bool,
               content_length: int | None) -> BodyFacts:
    """Normalise the transport's idea of the body into ``BodyFacts``."""
    hdrs = headers if isinstance(headers, Headers) else Headers(headers)
    present = has_body and (content_length is None or content_length > 0)
    return BodyFacts(present, content_length, hdrs.one("Content-Type"))
