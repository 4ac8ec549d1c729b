"""The upload model: what is stored about an upload, and a snapshot of it with its offset.

``UploadInfo`` is the durable record (written atomically by the store). The offset is not in
it: the store reports the offset from what it has durably stored (TUS-ROB-02), and
``UploadState`` pairs the two for a decision.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.headers import Concat, ConcatFinal, ConcatPartial
from protocol.state import FINISHED, Input, UploadStatus, advance, stored


@dataclass(frozen=True, slots=True)
class SinkState:
    """What the sink did with a finished upload; ``status`` is one of the sink statuses."""

    status: UploadStatus
    ref: str | None = None  # where the sink put it (a path, a remote id)
    error: str | None = None
    # Facts a sink must keep across restarts (a remote sink's file key, its record ids).
    detail: Mapping[str, str] = field(default_factory=dict)
    will_retry: bool = False  # for FAILED: whether the sink tries again by itself


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A remote sink's progress on one upload, so a restarted drain resends nothing.

    ``remote_id`` is the sink's own upload (for Notion, a file upload id) and ``started_at``
    when it was made; ``parts`` are the part numbers that sink confirmed for that remote
    upload. A new remote upload starts with no parts.
    """

    remote_id: str | None = None
    started_at: float = 0.0
    parts: frozenset[int] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {"remote_id": self.remote_id, "started_at": self.started_at,
                "parts": sorted(self.parts)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        remote = data.get("remote_id")
        return cls(None if remote is None else str(remote), float(data.get("started_at", 0.0)),
                   frozenset(int(p) for p in data.get("parts", ())))


class HookStatus(enum.StrEnum):
    PENDING = "pending"  # owed: the endpoint has not answered 2xx yet
    DONE = "done"  # the endpoint answered 2xx once; never sent again


@dataclass(frozen=True, slots=True)
class HookState:
    """The post-finish hook of a finished upload: owed from the moment the finish is
    recorded until its endpoint answers 2xx once."""

    status: HookStatus = HookStatus.PENDING
    attempts: int = 0  # sends so far, the successful one included
    last_error: str | None = None
    finished_at: float = 0.0  # when the upload finished, sent in every attempt's payload
    done_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status is HookStatus.DONE

    def to_json(self) -> dict[str, Any]:
        return {"status": str(self.status), "attempts": self.attempts,
                "last_error": self.last_error, "finished_at": self.finished_at,
                "done_at": self.done_at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HookState:
        error, done_at = data.get("last_error"), data.get("done_at")
        return cls(HookStatus(data.get("status", "pending")), int(data.get("attempts", 0)),
                   None if error is None else str(error), float(data.get("finished_at", 0.0)),
                   None if done_at is None else float(done_at))


def newest_hook(older: HookState | None, newer: HookState | None) -> HookState | None:
    """The one further along of two copies of a hook state: ``done`` wins, then the one with
    more attempts, then ``newer``. The hook's progress is saved apart from the record (see
    ``UploadStore.save_hook``), so a record written from an older read must not undo it."""
    if older is None or newer is None:
        return newer or older
    if (older.done, older.attempts) > (newer.done, newer.attempts):
        return older
    return newer


@dataclass(frozen=True, slots=True)
class UploadInfo:
    upload_id: str
    length: int | None  # None while the length is deferred (or a final is not assembled)
    metadata: dict[str, bytes] = field(default_factory=dict)
    concat: Concat | None = None
    created_at: float = 0.0
    sink: SinkState | None = None
    # A final concatenation is complete once assembled; its bytes were never PATCHed.
    assembled: bool = False
    # The sink holds the bytes now and the spool's copy was deleted: the upload is still
    # known (HEAD, status), but its bytes can no longer be downloaded here.
    data_removed: bool = False
    # Set when a post-finish hook is configured and the upload finishes (not for partials).
    hook: HookState | None = None
    # When the upload's finish was recorded (its event logged, its delivery handed over): a
    # restart does not finish it again, and it is forgotten ``finished_ttl_s`` after this.
    finished_at: float | None = None
    # Who created it, as a hashed key (gateway/clients.py): unfinished uploads count against
    # their creator's limit, also after a restart. Never shown to clients.
    client: str = ""
    # The creator's subject in clear (``gateway.auth``): None without auth and for a token
    # that names no user. What a sink routes by (a user's own Notion database).
    subject: str | None = None
    # The user database the creator's credentials named (an HMAC ``db`` claim, a forward
    # auth answer); None: the sink's mapping by subject, else its default.
    database: str | None = None

    @property
    def is_final(self) -> bool:
        return isinstance(self.concat, ConcatFinal)

    @property
    def is_partial(self) -> bool:
        return isinstance(self.concat, ConcatPartial)

    def replace(self, **changes: Any) -> UploadInfo:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        concat: Any = None
        if isinstance(self.concat, ConcatPartial):
            concat = "partial"
        elif isinstance(self.concat, ConcatFinal):
            concat = list(self.concat.upload_ids)
        return {
            "id": self.upload_id,
            "length": self.length,
            "metadata": [[k, base64.b64encode(v).decode("ascii")]
                         for k, v in self.metadata.items()],
            "concat": concat,
            "created_at": self.created_at,
            "sink": None if self.sink is None else {
                "status": str(self.sink.status), "ref": self.sink.ref, "error": self.sink.error,
                "detail": dict(self.sink.detail), "will_retry": self.sink.will_retry},
            "assembled": self.assembled,
            "data_removed": self.data_removed,
            "hook": None if self.hook is None else self.hook.to_json(),
            "finished_at": self.finished_at,
            "client": self.client,
            "subject": self.subject,
            "database": self.database,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UploadInfo:
        raw_concat = data.get("concat")
        concat: Concat | None = None
        if raw_concat == "partial":
            concat = ConcatPartial()
        elif isinstance(raw_concat, list):
            concat = ConcatFinal(tuple(str(x) for x in raw_concat))
        raw_sink = data.get("sink")
        sink = None
        if raw_sink is not None:
            sink = SinkState(UploadStatus(raw_sink["status"]), raw_sink.get("ref"),
                             raw_sink.get("error"),
                             {str(k): str(v) for k, v in (raw_sink.get("detail") or {}).items()},
                             bool(raw_sink.get("will_retry", False)))
        raw_hook = data.get("hook")
        return cls(
            upload_id=str(data["id"]),
            length=None if data.get("length") is None else int(data["length"]),
            metadata={str(k): base64.b64decode(v) for k, v in data.get("metadata", [])},
            concat=concat,
            created_at=float(data.get("created_at", 0.0)),
            sink=sink,
            assembled=bool(data.get("assembled", False)),
            data_removed=bool(data.get("data_removed", False)),
            hook=None if raw_hook is None else HookState.from_json(raw_hook),
            finished_at=None if data.get("finished_at") is None else float(data["finished_at"]),
            client=str(data.get("client") or ""),
            subject=None if data.get("subject") is None else str(data["subject"]),
            database=None if data.get("database") is None else str(data["database"]),
        )


@dataclass(frozen=True, slots=True)
class UploadState:
    """A snapshot: the record, the durable offset and when bytes last arrived."""

    info: UploadInfo
    offset: int
    last_activity: float

    @property
    def status(self) -> UploadStatus:
        """Replayed through the lifecycle table from what is stored: the sink's status once
        it has one (sinks move it through the table too), else the bytes stored so far (a
        final: its assembly, which stores them all at once)."""
        if self.info.sink is not None:
            return self.info.sink.status
        if self.info.is_final:
            if not self.info.assembled:
                return UploadStatus.CREATED
            return advance(UploadStatus.CREATED, Input.REACH_END)
        return stored(UploadStatus.CREATED, self.offset > 0, self.info.length, self.offset)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED
