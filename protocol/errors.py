"""Every error the gateway can answer with, in one table.

Each error carries its own HTTP mapping: a stable machine code (clients and logs match on it,
so it never changes once released), the status, a human message and any headers the status
requires. The gateway's error middleware is the only place that turns these into responses.

Status choices cite the tus 1.0.0 text ("tus" below) or the checklist item in the project's
conformance notes where the spec leaves room.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

TUS_VERSION = "1.0.0"


class TusError(Exception):
    """A protocol error with its HTTP mapping."""

    code: str = "ERR_INTERNAL"
    status: int = 500
    message: str = "internal server error"
    headers: Mapping[str, str] = MappingProxyType({})

    # Answered as a JSON object instead of the plain ``CODE: message`` line: for errors whose
    # details a client or an operator reads by machine (see ``as_json``).
    json_body: bool = False

    def __init__(self, detail: str | None = None, *, headers: Mapping[str, str] | None = None,
                 data: Mapping[str, object] | None = None):
        self.detail = detail or self.message
        self.extra_headers: dict[str, str] = dict(self.headers)
        if headers:
            self.extra_headers.update(headers)
        self.data: dict[str, object] = dict(data or {})
        super().__init__(f"{self.code}: {self.detail}")

    def body(self) -> str:
        return f"{self.code}: {self.detail}\n"

    def as_json(self) -> dict[str, object]:
        return {"error": self.code, "message": self.detail, **self.data}


def _error(code: str, status: int, message: str, **headers: str) -> type[TusError]:
    """Declare one row of the table as a subclass, so handlers can raise and tests can catch."""
    name = "".join(part.title() for part in code.removeprefix("ERR_").split("_"))
    fixed = MappingProxyType({k.replace("_", "-"): v for k, v in headers.items()})
    return type(name, (TusError,), {"code": code, "status": status, "message": message,
                                     "headers": fixed})


# --- the table ---------------------------------------------------------------------------------
# tus "Tus-Resumable": a request with an unsupported version MUST get 412 and the server MUST
# include Tus-Version; we treat a missing header the same way (TUS-GEN-02).
UnsupportedVersion = _error("ERR_UNSUPPORTED_VERSION", 412,
                            "Tus-Resumable is missing or names an unsupported version",
                            Tus_Version=TUS_VERSION)
# TUS-GEN-04: integers and other header values are parsed strictly; anything else is a 400.
InvalidOffset = _error("ERR_INVALID_OFFSET", 400, "Upload-Offset must be a non-negative integer")
InvalidLength = _error("ERR_INVALID_LENGTH", 400, "Upload-Length must be a non-negative integer")
InvalidDeferLength = _error("ERR_INVALID_DEFER_LENGTH", 400, "Upload-Defer-Length must be 1")
MissingLength = _error("ERR_MISSING_LENGTH", 400,
                       "Upload-Length or Upload-Defer-Length: 1 is required")
AmbiguousLength = _error("ERR_AMBIGUOUS_LENGTH", 400,
                         "Upload-Length and Upload-Defer-Length must not both be sent")
LengthAlreadySet = _error("ERR_LENGTH_ALREADY_SET", 400,
                          "Upload-Length is already known and cannot change")
LengthBelowOffset = _error("ERR_LENGTH_BELOW_OFFSET", 400,
                           "Upload-Length is smaller than the bytes already stored")
InvalidMetadata = _error("ERR_INVALID_METADATA", 400, "Upload-Metadata is malformed")
MetadataTooLarge = _error("ERR_METADATA_TOO_LARGE", 400, "Upload-Metadata is too large")
InvalidConcat = _error("ERR_INVALID_CONCAT", 400, "Upload-Concat is malformed")
ConcatNotPartial = _error("ERR_CONCAT_NOT_PARTIAL", 400,
                          "Upload-Concat: final may only name partial uploads")
ConcatLengthMismatch = _error("ERR_CONCAT_LENGTH_MISMATCH", 400,
                              "Upload-Length differs from the sum of the partial uploads")
InvalidChecksum = _error("ERR_INVALID_CHECKSUM", 400,
                         "Upload-Checksum must be '<algorithm> <base64 digest>'")
# tus checksum: "The Server MAY respond with ... 400 Bad Request if the checksum algorithm is
# not supported by the server".
UnsupportedChecksum = _error("ERR_UNSUPPORTED_CHECKSUM", 400,
                             "the checksum algorithm is not supported")
InvalidHeader = _error("ERR_INVALID_HEADER", 400, "a request header is malformed")
# RFC 9112 section 3.2: a request without Host, with several, or with an invalid one gets 400.
# The host (or, behind a proxy, the forwarded host) becomes part of Location (protocol/origin.py).
InvalidHost = _error("ERR_INVALID_HOST", 400, "the Host header is missing or not a host[:port]")
BodyNotAllowed = _error("ERR_BODY_NOT_ALLOWED", 400, "this request must not carry a body")
# The IETF resumable uploads draft (protocol/ietf.py). A request naming an interop version we
# do not implement must not get a 104, and is no tus request either.
UnsupportedInteropVersion = _error("ERR_UNSUPPORTED_INTEROP_VERSION", 400,
                                   "Upload-Draft-Interop-Version must be one of 3 to 8")
# draft -05: "If the upload is already complete, the server MUST NOT modify the upload
# resource and MUST respond with a 400 (Bad Request)".
UploadCompleted = _error("ERR_UPLOAD_COMPLETED", 400, "the upload is already complete")
# draft -05: "If the sizes are inconsistent, the server MUST reject the request by responding
# with a 400 (Bad Request)".
InconsistentLength = _error("ERR_INCONSISTENT_LENGTH", 400,
                            "the request's length indicators disagree with the upload's length")
# Creation with --auth (gateway/auth.py). RFC 6750 section 3: a request without credentials
# gets 401 and a WWW-Authenticate challenge. A token that is not accepted is 403: sending it
# again will not help. An expired one is 401 with error="invalid_token", which tells the
# client that a fresh token will work, so it can get one and retry.
AuthRequired = _error("ERR_AUTH_REQUIRED", 401, "this request needs credentials",
                      WWW_Authenticate='Bearer realm="tus-gateway"')
AuthInvalid = _error("ERR_AUTH_INVALID", 403, "the token is not accepted")
AuthExpired = _error("ERR_AUTH_EXPIRED", 401, "the token has expired; get a new one",
                     WWW_Authenticate='Bearer realm="tus-gateway", error="invalid_token", '
                                      'error_description="the token has expired"')
# --auth forward: the operator's endpoint could not be asked (down, slow, an answer that is
# not a decision). Nothing was changed; 503 with Retry-After because asking again soon works.
AuthUnavailable = _error("ERR_AUTH_UNAVAILABLE", 503,
                         "the authorization service did not answer; retry shortly",
                         Retry_After="2")
# A signed download link (gateway/links.py) whose signature is wrong or whose time is up.
# Checked before the upload is looked up, so it says nothing about whether the id exists.
LinkInvalid = _error("ERR_LINK_INVALID", 403, "the download link is not valid")
LinkExpired = _error("ERR_LINK_EXPIRED", 403, "the download link has expired; get a new one "
                                              "from the upload's status")
# A query parameter or JSON body of the gateway's own API (not tus) is malformed.
InvalidQuery = _error("ERR_INVALID_QUERY", 400, "a query parameter is malformed")
InvalidJson = _error("ERR_INVALID_JSON", 400, "the request body is not the JSON object expected")
# --allowed-types: the file's declared type or name is not among the accepted ones (checked
# at creation); RFC 9110 section 15.5.16, the content's media type is not supported.
TypeNotAllowed = _error("ERR_TYPE_NOT_ALLOWED", 415, "this file type is not accepted here")
# Per-user quotas (gateway/quotas.py): bytes held and open uploads. 429 like the other
# per-client limits: the condition passes as deliveries finish or uploads are removed.
QuotaExceeded = _error("ERR_QUOTA_EXCEEDED", 429,
                       "your quota is used up; finish, deliver or delete uploads first",
                       Retry_After="60")
QuotaExceeded.json_body = True  # which limit, what is used, when to retry: read by machine
# Live event streams (gateway/events.py) are bounded in total (--max-event-streams).
TooManyEventStreams = _error("ERR_TOO_MANY_EVENT_STREAMS", 429,
                             "too many event streams are open; retry later", Retry_After="5")
# The operator's pre-create hook refused the upload (gateway/hooks.py). The hook chooses the
# status (any 4xx; 403 by default: asking again will not help) and the message.
HookRejected = _error("ERR_HOOK_REJECTED", 403, "the upload was rejected by the server's policy")
# tus concatenation: "the Server MUST respond with the 403 Forbidden status to PATCH requests
# against a final upload URL".
ModifyFinal = _error("ERR_MODIFY_FINAL", 403, "a final upload cannot be modified")
# TUS-GEN-05: unknown ids are 404, ids we know were removed are 410.
NotFound = _error("ERR_UPLOAD_NOT_FOUND", 404, "no upload with this id")
MethodNotAllowed = _error("ERR_METHOD_NOT_ALLOWED", 405, "method not allowed on this URL",
                          Allow="OPTIONS, POST, HEAD, PATCH, DELETE, GET")
# RFC 9110 section 9.1: "An origin server that receives a request method that is unrecognized
# or not implemented SHOULD respond with the 501 (Not Implemented) status code." A standard
# method that a URL does not take is 405 (above) instead.
MethodNotImplemented = _error("ERR_METHOD_NOT_IMPLEMENTED", 501,
                              "the server does not implement this method")
# tus core: "If the offsets do not match, the Server MUST respond with the 409 Conflict status
# without modifying the upload resource." The current offset rides along so clients can
# recover without another HEAD.
MismatchedOffset = _error("ERR_MISMATCHED_OFFSET", 409, "Upload-Offset does not match the upload")
UploadNotFinished = _error("ERR_UPLOAD_NOT_FINISHED", 409, "the upload is not finished yet")
# Only a failed delivery can be retried, and only by a sink that delivers in the background.
SinkNotFailed = _error("ERR_SINK_NOT_FAILED", 409, "the upload's delivery has not failed")
SinkCannotRetry = _error("ERR_SINK_CANNOT_RETRY", 409,
                         "the configured sink does not retry deliveries")
# Each unassembled final waiting for a partial is assembled inside that partial's last PATCH
# (gateway/uploads.py), so their number per partial is bounded (--max-finals-per-partial).
# 409: the partial's state is the conflict; once it is finished a new final is assembled at
# once and waits for nothing.
TooManyFinals = _error("ERR_TOO_MANY_FINALS", 409,
                       "as many final uploads as allowed already wait for this partial "
                       "upload; create this final once the partial is finished")
Gone = _error("ERR_UPLOAD_GONE", 410, "the upload was terminated or has expired")
DataDelivered = _error("ERR_DATA_DELIVERED", 410,
                       "the file was delivered to the sink and is no longer kept here; "
                       "its status endpoint says where it went")
# --allowed-types: the finished file was not what it claimed, so it was never delivered and
# its bytes were removed (its status endpoint says why).
UploadRejected = _error("ERR_UPLOAD_REJECTED", 410,
                        "the upload was rejected: its bytes are not what it claimed to be, "
                        "and they were removed")
# A directory delivery keeps one copy of the bytes, the delivered file; GET serves it from
# the output folder until the operator moves, removes or replaces it.
DeliveredFileRemoved = _error("ERR_DELIVERED_FILE_REMOVED", 410,
                              "the delivered file was taken out of the output folder; no "
                              "other copy is kept here")
# TUS-CRE-04 / TUS-PATCH-08.
TooLarge = _error("ERR_UPLOAD_TOO_LARGE", 413, "the upload exceeds the maximum size")
SizeExceeded = _error("ERR_UPLOAD_SIZE_EXCEEDED", 413,
                      "the body would take the upload past its Upload-Length")
# tus core: "the Server SHOULD respond with the 415 Unsupported Media Type status" when the
# PATCH Content-Type is not application/offset+octet-stream.
InvalidContentType = _error("ERR_INVALID_CONTENT_TYPE", 415,
                            "Content-Type must be application/offset+octet-stream")
# A newer request took over the upload (lock release). 423 because tus clients retry it,
# HEAD, and resume from the saved offset; 400 (what tusd sends) would make them give up.
UploadInterrupted = _error("ERR_UPLOAD_INTERRUPTED", 423,
                           "another request took over this upload; resume from HEAD",
                           Retry_After="1")
UploadLocked = _error("ERR_UPLOAD_LOCKED", 423,
                      "the upload is busy and its holder did not let go in time",
                      Retry_After="1")
# RFC 6585 section 4: 429 Too Many Requests, with Retry-After. Unfinished uploads are kept
# until they finish, are deleted or expire, so their number is bounded in total
# (--max-open-uploads) and per client (--max-open-uploads-per-client); nothing is created.
OpenUploadsLimit = _error("ERR_OPEN_UPLOADS_LIMIT", 429,
                          "the server holds as many unfinished uploads as it may; retry later",
                          Retry_After="10")
ClientOpenUploadsLimit = _error("ERR_CLIENT_OPEN_UPLOADS_LIMIT", 429,
                                "you have as many unfinished uploads as allowed; finish or "
                                "delete some first", Retry_After="10")
# A PATCH that carries and changes nothing, repeated for the same upload within
# --empty-patch-interval (a client stuck in a loop). The answer's Retry-After says when the
# next one is taken; a PATCH with bytes is taken at once.
EmptyPatchTooSoon = _error("ERR_EMPTY_PATCH_TOO_SOON", 429,
                           "an empty PATCH that changes nothing was repeated too soon; send "
                           "bytes, or wait", Retry_After="1")
# tus checksum: "460 Checksum Mismatch" — the chunk is discarded, the offset does not move.
ChecksumMismatch = _error("ERR_CHECKSUM_MISMATCH", 460, "the checksum does not match the body")
# The stall timer ended a PATCH whose client stopped sending. The connection is closed, so
# the client rarely sees this; the bytes that arrived are kept.
RequestTimeout = _error("ERR_READ_TIMEOUT", 408, "the client stopped sending the body")
# The client went away or broke the body framing mid-request; the bytes that arrived are kept.
# Nobody is left to read this answer, it exists for logs and metrics.
ClientDisconnected = _error("ERR_CLIENT_DISCONNECTED", 400,
                            "the connection was lost before the body ended")
Internal = _error("ERR_INTERNAL", 500, "internal server error")
# TUS-ROB-06: in-flight requests save their bytes and get 503 so clients retry elsewhere.
ServerShutdown = _error("ERR_SERVER_SHUTDOWN", 503, "the server is shutting down; retry",
                        Retry_After="1")
# The shared state store (Redis) cannot be reached. Nothing was changed and nothing that was
# acknowledged is lost; the request can simply be repeated once the store is back.
StateUnavailable = _error("ERR_STATE_UNAVAILABLE", 503,
                          "the upload state store is unreachable; retry shortly",
                          Retry_After="2")
# The pre-create hook could not be reached or failed after its retries, and the operator's
# fallback is to refuse. Nothing was stored; a 5xx makes tus clients try again later.
HookFailed = _error("ERR_HOOK_FAILED", 503,
                    "the pre-create hook failed, so the upload was not created; retry later",
                    Retry_After="5")
# RFC 4918 section 11.5: 507 "the server is unable to store the representation needed to
# complete the request", a condition that may pass. The disk is full, or free space is below
# --min-free-disk: nothing past the bytes already stored was kept, and HEAD says where to
# resume. Space comes back through an operator, a delivery or the expiry sweep (once a
# minute by default), so asking much sooner than a minute mostly gets another 507.
InsufficientStorage = _error("ERR_INSUFFICIENT_STORAGE", 507,
                             "the server has no room to store this upload now; retry later",
                             Retry_After="60")


class Overloaded(TusError):
    """The gateway is protecting itself (memory, concurrent uploads): try again later. The
    JSON body says why; Retry-After says when."""

    code = "ERR_OVERLOADED"
    status = 503
    message = "the gateway is too busy to take this request now"
    json_body = True


ALL_ERRORS: tuple[type[TusError], ...] = tuple(
    cls for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, TusError) and cls is not TusError
)

