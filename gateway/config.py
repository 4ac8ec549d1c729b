"""One frozen settings object, read from flags and environment, checked at start.

``GatewayConfig`` holds the gateway's own settings and, nested by part, those of the other
parts: ``auth`` (``AuthSettings``), ``redis`` (``RedisSettings``), ``notion``
(``notion_sink.settings.NotionSettings``) and ``hooks`` (``HookSettings``). Outside, every
setting keeps one flat name (``settings``: ``redis_url`` is ``--redis-url`` and
``REDIS_URL``), which the flags, the environment, ``tus-gateway config`` and
``GatewayConfig.from_settings`` use.

``GatewayConfig.from_env`` is the only place that reads the environment; the CLI layers its
flags on top; tests build configs directly. ``validate`` refuses impossible values so a typo
fails at start, not at the first upload.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from notion_sink.settings import NotionSettings
from protocol.decisions import ALL_EXTENSIONS, ProtocolSettings

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


AUTH_MODES = ("none", "bearer", "hmac", "forward")
# 32 random hex characters are 128 bits; a shorter secret lets anyone holding one token
# guess the key offline and mint their own.
MIN_AUTH_SECRET_CHARS = 32
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")
# Settings that are credentials: masked wherever the configuration is shown or logged.
SECRET_FIELDS = ("notion_token", "auth_tokens", "auth_secret", "auth_admin_tokens",
                 "link_secret")


class FsyncPolicy(enum.StrEnum):
    """When bytes are forced to stable storage.

    ``ack`` (default): data is fdatasync'ed before any response acknowledges it and before
    HEAD reports an offset that was not yet synced; inside a long PATCH, write-back of every
    ``commit_interval_bytes`` is started without waiting; records and tombstones are fsynced
    together with their directory. An acknowledged byte survives a process crash, a kernel
    crash and a power cut.
    ``off``: no fsync at all. Acknowledged bytes survive a crash of the gateway process (the
    page cache keeps them) but not a kernel crash or power cut. For scratch deployments only.
    """

    ACK = "ack"
    OFF = "off"



@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who is asking: ``--auth`` and the ``--auth-*`` settings (``gateway.auth``)."""

    mode: str = "none"
    """Who may use the gateway: 'none' (anyone who can reach it; upload URLs are the
    capability), 'bearer' (one of auth-tokens), 'hmac' (a signed token, see `tus-gateway
    token`) or 'forward' (the operator's endpoint at auth-url decides, from the request's
    Authorization and Cookie headers). With any of the last three every request names a
    subject, and an upload answers only its creator (or an admin)."""
    tokens: tuple[str, ...] = ()
    """With auth bearer: the accepted tokens, comma-separated, each either subject=TOKEN (a
    user) or a bare TOKEN (an anonymous subject of its own). Prefer the environment variable,
    since flags show in the process list."""
    admin_tokens: tuple[str, ...] = ()
    """Bearer tokens that may act on every user's uploads (operators, support scripts), in
    any auth mode; comma-separated. Prefer the environment variable."""
    secret: str = ""
    """With auth hmac: the shared secret that signs upload tokens (at least 32 characters).
    Prefer the environment variable, since flags show in the process list."""
    url: str = ""
    """With auth forward: the endpoint asked with the request's Authorization and Cookie
    headers (GET, as nginx auth_request and Traefik forwardAuth do). 2xx with a JSON object
    {"sub": ..., optional "admin", "db", "max_size", "quota_bytes", "quota_uploads"}: allowed;
    401 or 403: refused; anything else: 503 to the client."""
    cache_s: float = 10.0
    """With auth forward: how long an answer is reused for the same credentials."""
    cache_entries: int = 10_000
    """With auth forward: most answers kept at once (the oldest go first)."""
    timeout_s: float = 5.0
    """With auth forward: how long the endpoint may take before the request gets 503."""

    def problems(self) -> list[str]:
        problems = []
        if self.mode not in AUTH_MODES:
            problems.append(f"auth must be one of {', '.join(AUTH_MODES)}")
        if self.mode == "bearer" and not self.tokens:
            problems.append("auth bearer needs auth_tokens")
        if any(not t or any(c.isspace() for c in t)
               for t in (*self.tokens, *self.admin_tokens)):
            problems.append("auth_tokens must be non-empty and without whitespace")
        if self.mode == "hmac" and len(self.secret) < MIN_AUTH_SECRET_CHARS:
            problems.append(f"auth hmac needs an auth_secret of at least "
                            f"{MIN_AUTH_SECRET_CHARS} characters")
        if self.mode == "forward" and not _is_http_url(self.url):
            problems.append("auth forward needs an http(s) auth_url")
        if self.cache_s < 0 or self.cache_entries < 1 or self.timeout_s <= 0:
            problems.append("auth_cache_s must not be negative, auth_cache_entries and "
                            "auth_timeout_s must be positive")
        # A credential set without the mode that uses it would leave creation open while
        # the operator believes it is guarded.
        if self.mode == "none" and (self.tokens or self.secret or self.url
                                    or self.admin_tokens):
            problems.append("auth_tokens, auth_admin_tokens, auth_secret or auth_url is set "
                            "but auth is 'none'; choose auth bearer, hmac or forward")
        return problems


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Shared state: the ``--redis-*`` settings."""

    url: str = ""
    """Keep upload state, locks and checkpoints in this Redis (redis://host:6379/0) so that
    several instances share the work; the data dir must then be one directory that every
    instance mounts. A Redis Cluster: redis+cluster://host:port[,host:port...]; the primary
    that Sentinels watch: redis+sentinel://host:26379[,host:port...]/service. Empty: state
    on local disk, one process per data dir."""
    prefix: str = "tus"
    """Prefix of every Redis key, so several gateways can share one Redis database."""
    min_replicas: int = 0
    """Wait until this many replicas hold each acknowledged offset and record (Redis WAIT)
    before answering, so a failover to a replica cannot take it back; fewer within the
    replica timeout answers 503 with Retry-After. 0: no wait (replication is then
    asynchronous, and a failover may lose the last acknowledged bytes)."""
    replica_timeout_s: float = 1.0
    """How long a write waits for its replicas (redis_min_replicas) before it answers 503."""


@dataclass(frozen=True, slots=True)
class HookSettings:
    """The HTTP hooks: the ``--hook-*`` settings."""

    pre_create: str = ""
    """URL (http or https) POSTed before every creation: it may accept, reject with a 4xx
    and a message, or replace the metadata. Empty: no pre-create hook."""
    post_finish: str = ""
    """URL (http or https) POSTed once for every finished upload (partials excepted), in the
    background, retried until it answers 2xx. Empty: no post-finish hook."""
    timeout_s: float = 5.0
    """How long one hook request may take; a slower endpoint counts as failed. Short, since a
    client waits on the pre-create answer."""
    retries: int = 2
    """Pre-create attempts after the first (with a short backoff) before the fallback: a
    blip of the endpoint does not refuse an upload."""
    fallback: str = "reject"
    """What creation does when the pre-create hook cannot be reached or keeps failing:
    'reject' (503 ERR_HOOK_FAILED, the safe default for a policy check) or 'accept' (create
    as if there were no hook, for hooks that only enrich metadata)."""
    retry_s: float = 30.0
    """Longest wait between post-finish attempts (the backoff doubles up to it); each
    instance also looks for post-finish hooks nobody sends this often."""

    def problems(self) -> list[str]:
        problems = []
        for name, url in (("hook_pre_create", self.pre_create),
                          ("hook_post_finish", self.post_finish)):
            if url and not _is_http_url(url):
                problems.append(f"{name} must be an http:// or https:// URL")
        if self.timeout_s <= 0 or self.retry_s <= 0:
            problems.append("hook_timeout_s and hook_retry_s must be positive")
        if not 0 <= self.retries <= 10:
            problems.append("hook_retries must be between 0 and 10")
        if self.fallback not in ("reject", "accept"):
            problems.append("hook_fallback must be 'reject' or 'accept'")
        return problems


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    """Listen address; loopback by default so nothing is exposed by accident."""
    port: int = 1080
    """Listen port; 1080 is the port tus servers conventionally use."""
    base_path: str = "/files/"
    """URL prefix of the upload collection; upload URLs are <base_path><id>."""
    data_dir: Path = Path("./data")
    """Upload state, data and the directory sink's output all live below this folder."""
    max_size_bytes: int = 0
    """Largest upload accepted (413 above it, announced as Tus-Max-Size); 0 means no limit."""
    expire_after_s: float = 86400.0
    """Unfinished uploads are removed this long after their last byte arrived (sliding), so a
    laptop closed overnight can still resume; 0 disables expiration."""
    sweep_interval_s: float = 60.0
    """How often the background sweeper looks for expired uploads and old tombstones."""
    tombstone_ttl_s: float = 7 * 86400.0
    """How long a removed upload keeps answering 410 instead of 404."""
    finished_ttl_s: float = 7 * 86400.0
    """A finished upload's record (and any spool bytes left, such as a partial's) is forgotten
    this long after it finished, and answers 410 from then on; a delivery still in progress
    is waited for. The delivered file in complete/ is the operator's and stays. A week gives
    clients time to look at the status and download; 0 keeps finished uploads forever."""
    file_mode: int = 0o600
    """Permissions (octal) of the files the gateway creates under the data dir: uploaded
    bytes, delivered files, records, journal, checkpoints. 0600 keeps uploads private to the
    gateway's user; widen it (0640, 0660, 0644, 0666) for a consumer in another account.
    Read and write for the owner are required, execute and special bits refused."""
    cors_origins: tuple[str, ...] = ("*",)
    """Origins allowed to upload from a browser; '*' allows any (no credentials then)."""
    behind_proxy: bool = False
    """Trust Forwarded / X-Forwarded-Host / X-Forwarded-Proto when building Location. Only
    turn this on behind a proxy that sets them, or clients can steer the Location host."""
    fsync: FsyncPolicy = FsyncPolicy.ACK
    """Durability policy, see FsyncPolicy; the default never loses an acknowledged byte."""
    commit_interval_bytes: int = 8 * MiB
    """Inside one long PATCH, start writing back to disk this often, so that a pre-empted or
    interrupted request commits within about a second instead of flushing gigabytes."""
    stall_timeout_s: float = 30.0
    """A PATCH whose body sends nothing for this long is ended and its bytes kept
    (TUS-PATCH-07); the lock is free again for the client's retry."""
    send_timeout_s: float = 60.0
    """A GET download is cut off (connection closed) when one 256 KiB piece of it cannot be
    handed to the client within this long: a reader that stopped reading does not hold its
    connection and file for ever, while one slower than about 4 KiB/s (a minute) is gone."""
    lock_wait_s: float = 10.0
    """How long a request waits for the holder of an upload to let go before 423."""
    max_metadata_bytes: int = 4 * KiB
    """Upper bound for the Upload-Metadata header."""
    write_buffer_bytes: int = 256 * KiB
    """Body bytes gathered before one write; two buffers per upload bound its memory."""
    io_threads: int = 16
    """Worker threads for file I/O and hashing, which never run on the event loop."""
    shutdown_timeout_s: float = 10.0
    """On SIGTERM/SIGINT, in-flight requests get this long to commit and answer."""
    max_concat_parts: int = 1000
    """Most partial uploads one final concatenation may name."""
    max_finals_per_partial: int = 4
    """Most unassembled finals that may wait for one unfinished partial: the partial's last
    PATCH assembles them all before it answers, so this bounds that request's work. 4 leaves
    room for a client that retried its final's creation."""
    max_open_uploads: int = 10_000
    """Most unfinished uploads at once, over all clients (429 with Retry-After above it), so
    abandoned or hostile creations cannot use up inodes or Redis memory; 0: no limit."""
    max_open_uploads_per_client: int = 100
    """Most unfinished uploads of one client: its auth subject (or token) when requests need
    a token, else its address (behind a proxy, the one that proxy saw). Raise it where many
    users share one address without auth; 0: no limit."""
    empty_patch_interval_s: float = 1.0
    """A PATCH that carries and changes nothing, sent again for the same upload sooner than
    this, gets 429 with Retry-After (a client stuck in a loop of them); 0: never refused."""
    memory_budget_bytes: int = 0
    """Memory the gateway may use (resident); admission control and the health endpoint
    measure against it. 0: half of what the process may use (the container's limit, else
    the machine's RAM), at least 128 MiB."""
    memory_high_percent: float = 80.0
    """Above this share of the memory budget, new uploads get 503 with Retry-After (uploads
    in flight go on)."""
    memory_critical_percent: float = 95.0
    """Above this share of the memory budget, new PATCH requests get 503 too."""
    max_concurrent_uploads: int = 0
    """At most this many request bodies at once; more get 503 with Retry-After. 0: no limit."""
    min_free_disk: str = "1%"
    """Free space to keep on the data directory's filesystem: a size (256MiB) or a share of
    it (1%). Below it, new uploads and PATCH requests get 507 with Retry-After and health
    turns degraded, before a full disk cuts bodies off and leaves no room for records. A
    share scales from a small volume to a large disk; 0 turns the check off."""
    upload_page: bool = True
    """Serve the upload page (Uppy's Dashboard, shipped with the package) at / and its files
    under /static/; on by default so a browser pointed at the gateway can upload at once.
    Turn it off where the gateway is only an API."""
    page_token_origins: tuple[str, ...] = ()
    """Origins (scheme://host[:port], comma-separated) besides this gateway's own that the
    upload page may send its #token= bearer to when ?endpoint= names them. Empty by default,
    so a link with a crafted ?endpoint= cannot carry a user's token to another server."""
    extensions: tuple[str, ...] = ALL_EXTENSIONS
    """tus extensions offered; OPTIONS announces exactly these."""
    access_log: bool = True
    """Log one line per request (method, path, status, duration, bytes, upload id); at the
    info level, so --log-level warning or --no-access-log silences them on a busy gateway."""
    auth: AuthSettings = field(default_factory=AuthSettings)
    """Who is asking (the auth-* settings)."""
    quota_bytes: int = 0
    """Per user (auth subject): most bytes held at once, counting the declared length of
    every upload not yet delivered (unfinished, or finished and waiting for the sink). A
    token claim or forward-auth answer "quota_bytes" overrides it for its user. 0: no
    limit."""
    quota_uploads: int = 0
    """Per user: most unfinished uploads at once; a "quota_uploads" claim or answer
    overrides it. 0: only max-open-uploads-per-client."""
    allowed_types: str = ""
    """File types accepted, comma-separated, each a media type or type/* with an optional
    size limit: 'video/*=5GiB,image/*=50MiB,application/pdf'. Checked at creation against
    the filetype metadata and the file name, and at finish against the file's first bytes: a
    file that is not what it claimed is rejected (never delivered, its bytes removed).
    Empty: every type."""
    link_secret: str = ""
    """Key that signs download links handed out by the status endpoint (at least 32
    characters; instances behind one balancer must share it). Empty: the auth secret with
    auth hmac, else a random key per process. Prefer the environment variable."""
    link_ttl_s: float = 3600.0
    """How long a signed download link works."""
    max_event_streams: int = 1000
    """Most live event streams (GET /api/upload/events/{id}) open at once on this instance;
    more get 429 with Retry-After."""
    log_level: str = "info"
    """Least severe log level written: debug, info, warning, error or critical."""
    log_format: str = "json"
    """'json': one JSON object per line, for log pipelines; 'text': for reading in a
    terminal."""
    redis: RedisSettings = field(default_factory=RedisSettings)
    """Shared state in Redis, or none (the redis-* settings)."""
    sink: str = "directory"
    """Where finished uploads go: 'directory' (<data-dir>/complete/) or 'notion' (the Notion
    File Upload API, recorded in two Notion databases; needs the notion-* settings)."""
    notion: NotionSettings = field(default_factory=NotionSettings)
    """The Notion sink (the notion-* settings)."""
    hooks: HookSettings = field(default_factory=HookSettings)
    """The HTTP hooks (the hook-* settings)."""
    sync_interval_bytes: int = 32 * MiB
    """With Redis, or with the Notion sink: inside a long PATCH, make the bytes durable and
    commit the offset this often, so an instance killed mid-request loses at most this much
    unacknowledged data (its client sends it again) and Notion windows leave before the
    request ends. Each costs an fdatasync beside the stream."""
    lock_ttl_s: float = 5.0
    """With Redis: an upload's lock expires this long after its holder last extended it, so
    a crashed instance's uploads are free again within this time."""

    def free_disk_floor(self, total_bytes: int) -> int:
        """``min_free_disk`` in bytes, for a filesystem of ``total_bytes``."""
        size, percent = parse_free_space(self.min_free_disk)
        return max(size, int(total_bytes * percent / 100))

    def protocol_settings(self, offered: frozenset[str] | None = None) -> ProtocolSettings:
        """The protocol's settings. ``offered``: the extensions the store allows
        (``gateway.state.parts.StoreParts.offers``; None: all); those of ``extensions`` it
        does not allow are neither announced nor accepted."""
        return ProtocolSettings(
            base_path=self.base_path,
            max_size=self.max_size_bytes or None,
            max_metadata_bytes=self.max_metadata_bytes,
            expire_after_s=self.expire_after_s or None,
            max_concat_parts=self.max_concat_parts,
            extensions=tuple(e for e in self.extensions if offered is None or e in offered),
        )

    def validate(self) -> GatewayConfig:
        problems = []
        if not (self.base_path.startswith("/") and self.base_path.endswith("/")):
            problems.append("base_path must start and end with '/'")
        if not 0 <= self.port <= 65535:
            problems.append("port must be 0..65535")
        for name in ("max_size_bytes", "expire_after_s", "sweep_interval_s", "tombstone_ttl_s",
                     "finished_ttl_s"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if not 0 < self.memory_high_percent <= self.memory_critical_percent:
            problems.append("memory_high_percent must be positive and at most "
                            "memory_critical_percent")
        if self.memory_budget_bytes < 0 or self.max_concurrent_uploads < 0:
            problems.append("memory_budget_bytes and max_concurrent_uploads must not be "
                            "negative")
        try:
            parse_free_space(self.min_free_disk)
        except ValueError as exc:
            problems.append(f"min_free_disk: {exc}")
        problems += self._open_upload_problems()
        for name in ("stall_timeout_s", "send_timeout_s", "lock_wait_s", "shutdown_timeout_s",
                     "io_threads", "max_metadata_bytes", "max_concat_parts", "sweep_interval_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if not 4 * KiB <= self.write_buffer_bytes <= 16 * MiB:
            problems.append("write_buffer_bytes must be between 4 KiB and 16 MiB")
        if self.sink not in ("directory", "notion"):
            problems.append("sink must be 'directory' or 'notion'")
        problems += self.notion.problems(in_use=self.sink == "notion")
        if self.sync_interval_bytes < self.commit_interval_bytes:
            problems.append("sync_interval_bytes must be at least commit_interval_bytes")
        if self.commit_interval_bytes < self.write_buffer_bytes:
            problems.append("commit_interval_bytes must be at least write_buffer_bytes")
        unknown = set(self.extensions) - set(ALL_EXTENSIONS)
        if unknown:
            problems.append(f"unknown extensions: {', '.join(sorted(unknown))}")
        needs = {"creation-with-upload": "creation", "creation-defer-length": "creation",
                 "concatenation-unfinished": "concatenation"}
        for ext, required in needs.items():
            if ext in self.extensions and required not in self.extensions:
                problems.append(f"{ext} needs {required}")
        problems += self._redis_problems()
        if self.lock_ttl_s < 1:
            problems.append("lock_ttl_s must be at least 1 second")
        if not self.redis.prefix or any(c in self.redis.prefix for c in "{} "):
            problems.append("redis_prefix must be non-empty, without braces or spaces")
        if not self.cors_origins:
            problems.append("cors_origins must name at least one origin (or '*')")
        bad_origins = [o for o in self.page_token_origins if not _is_origin(o)]
        if bad_origins:
            problems.append(f"page_token_origins must be origins like https://host:port, "
                            f"without a path or '*': {', '.join(map(repr, bad_origins))}")
        if self.file_mode & ~0o666 or self.file_mode & 0o600 != 0o600:
            problems.append(f"file_mode {self.file_mode:04o} must give the owner read and "
                            "write, and nobody execute or special bits (at most 0666)")
        problems += self._auth_and_log_problems()
        problems += self.hooks.problems()
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))
        return self

    def _redis_problems(self) -> list[str]:
        from gateway.state.redis_url import parse_redis_url  # no redis-py needed

        problems = []
        redis = self.redis
        if redis.url:
            try:
                parse_redis_url(redis.url)
            except ValueError as exc:
                problems.append(f"redis_url {exc}")
        if not 0 <= redis.min_replicas <= 16:
            problems.append("redis_min_replicas must be 0 to 16")
        if not 0.01 <= redis.replica_timeout_s <= 60:
            problems.append("redis_replica_timeout_s must be 0.01 to 60 seconds")
        return problems

    def _auth_and_log_problems(self) -> list[str]:
        problems = self.auth.problems()
        if self.link_secret and len(self.link_secret) < MIN_AUTH_SECRET_CHARS:
            problems.append(f"link_secret must have at least {MIN_AUTH_SECRET_CHARS} "
                            "characters")
        for name in ("quota_bytes", "quota_uploads"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if self.link_ttl_s <= 0 or self.max_event_streams < 1:
            problems.append("link_ttl_s and max_event_streams must be positive")
        if self.allowed_types:
            from protocol.filetypes import AllowedTypes
            try:
                AllowedTypes.parse(self.allowed_types)
            except ValueError as exc:
                problems.append(f"allowed_types: {exc}")
        if self.log_level.lower() not in LOG_LEVELS:
            problems.append(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            problems.append(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        return problems

    def _open_upload_problems(self) -> list[str]:
        problems = []
        for name in ("max_open_uploads", "max_open_uploads_per_client",
                     "empty_patch_interval_s"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if 0 < self.max_open_uploads < self.max_open_uploads_per_client:
            problems.append("max_open_uploads_per_client must not exceed max_open_uploads")
        if self.max_finals_per_partial < 1:
            problems.append("max_finals_per_partial must be positive")
        return problems

    @classmethod
    def from_settings(cls, **values: Any) -> GatewayConfig:
        """A configuration (not yet validated) from settings named as their flags are
        (``port``, ``redis_url``, ``notion_token``, see ``settings``); a part may also be
        given whole (``notion=NotionSettings(...)``). Unnamed settings keep their defaults."""
        top: dict[str, Any] = {}
        grouped: dict[str, dict[str, Any]] = {}
        by_name = {s.name: s for s in settings()}
        for name, value in values.items():
            if name in PARTS and isinstance(value, PARTS[name][0]):
                top[name] = value  # (``auth`` is also the flag of the auth mode)
                continue
            setting = by_name.get(name)
            if setting is None:
                raise TypeError(f"unknown setting {name!r}")
            if setting.part is None:
                top[name] = value
            else:
                grouped.setdefault(setting.part, {})[setting.attr] = value
        for part, given in grouped.items():
            base = top.get(part)
            top[part] = (PARTS[part][0](**given) if base is None
                         else dataclasses.replace(base, **given))
        return cls(**top)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewayConfig:
        """Defaults, then ``TUS_*`` environment variables, then explicit overrides (named
        as in ``from_settings``)."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for setting in settings():
            raw = env.get(env_name(setting.name))
            if raw is not None:
                values[setting.name] = parse_field(setting.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_settings(**values).validate()


# The parts of the configuration: the field of ``GatewayConfig`` that holds each, its class,
# and the prefix its settings carry as flags and environment variables.
PARTS: dict[str, tuple[type[Any], str]] = {
    "auth": (AuthSettings, "auth_"),
    "redis": (RedisSettings, "redis_"),
    "notion": (NotionSettings, "notion_"),
    "hooks": (HookSettings, "hook_"),
}
# Settings of a part not named prefix + field: ``--auth`` chooses the mode.
_FLAT_NAMES = {("auth", "mode"): "auth"}


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting as the command line and the environment know it."""

    name: str
    """Its name there: ``notion_token`` is ``--notion-token`` and ``NOTION_TOKEN``."""
    part: str | None
    """The field of ``GatewayConfig`` holding its part, or None for a field of its own."""
    attr: str
    """Its field in the part (or in ``GatewayConfig``)."""
    default: Any
    owner: type[Any]
    """The dataclass that declares it (its documentation is there)."""

    def value(self, config: GatewayConfig) -> Any:
        holder = config if self.part is None else getattr(config, self.part)
        return getattr(holder, self.attr)


@cache
def settings() -> tuple[Setting, ...]:
    """Every setting, in the order of the help: a part's settings where the part sits."""
    out: list[Setting] = []
    for f in dataclasses.fields(GatewayConfig):
        if f.name not in PARTS:
            out.append(Setting(f.name, None, f.name, f.default, GatewayConfig))
            continue
        owner, prefix = PARTS[f.name]
        for g in dataclasses.fields(owner):
            name = _FLAT_NAMES.get((f.name, g.name), prefix + g.name)
            out.append(Setting(name, f.name, g.name, g.default, owner))
    return tuple(out)


def setting_values(config: GatewayConfig) -> dict[str, Any]:
    """Every setting's value, by the names of ``settings``."""
    return {s.name: s.value(config) for s in settings()}


def secret_values(config: GatewayConfig) -> list[str]:
    """Every secret the configuration holds, for the log filter to mask by value: the secret
    settings and the password of any URL setting (Redis, hook endpoints)."""
    values = [config.notion.token, *config.auth.tokens, config.auth.secret,
              *config.auth.admin_tokens, config.link_secret]
    for value in setting_values(config).values():
        if isinstance(value, str) and "://" in value:
            try:
                values.append(urlsplit(value).password or "")
            except ValueError:
                continue  # not a URL after all
    return [v for v in values if v]


def mask_url_password(url: str) -> str:
    """The URL with its password replaced by ``***``; host and port stay as written."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return url
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redacted(config: GatewayConfig) -> dict[str, Any]:
    """The configuration as JSON-ready values, secrets masked (``***``; empty stays empty,
    so one can still see that a secret is missing)."""
    out: dict[str, Any] = {}
    for name, value in setting_values(config).items():
        if name in SECRET_FIELDS:
            value = ["***" for _ in value] if isinstance(value, tuple) else (
                "***" if value else "")
        elif isinstance(value, str) and "://" in value:
            value = mask_url_password(value)  # redis_url, hook endpoints
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        elif name == "file_mode":
            value = f"{value:04o}"  # as it is written on the command line
        out[name] = value
    return out


def _http_url(url: str) -> SplitResult | None:
    """The parts of an ``http``/``https`` URL with a host and a valid port, else None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return None
    return parts if parts.scheme in ("http", "https") and parts.hostname else None


def _is_http_url(url: str) -> bool:
    return _http_url(url) is not None


def _is_origin(value: str) -> bool:
    """``http(s)://host[:port]`` and nothing else, as a browser writes an origin."""
    parts = _http_url(value)
    if parts is None:
        return False
    # A host name (or IPv4 address) or an IPv6 literal; non-ASCII names in their xn-- form,
    # which is how a browser writes them in an origin.
    host_ok = re.fullmatch(r"[a-z0-9.-]+|[0-9a-f:.]+", parts.hostname or "") is not None
    return (host_ok and "@" not in parts.netloc
            and not (parts.path or parts.query or parts.fragment)
            and not value.endswith(("?", "#")))


ENV_PREFIX = "TUS_"


def option_name(field_name: str) -> str:
    """``max_size_bytes`` → ``max-size``: units live in the field name, not in the flag,
    because the flag takes a unit of its own (``--max-size 5GiB``)."""
    if field_name in _OPTION_NAMES:
        return _OPTION_NAMES[field_name]
    for unit in ("_bytes", "_s"):
        if field_name.endswith(unit):
            field_name = field_name.removesuffix(unit)
            break
    return field_name.replace("_", "-")


# Settings whose flag is not their field's name without its unit: ``--quota`` alone would
# not say which of the two quotas it sets.
_OPTION_NAMES = {"quota_bytes": "quota-size"}
# Settings whose environment variable is a name other tools already use.
_ENV_NAMES = {"redis_url": "REDIS_URL", "notion_token": "NOTION_TOKEN"}


def env_name(field_name: str) -> str:
    """``max_size_bytes`` → ``TUS_MAX_SIZE``, matching the flag."""
    return _ENV_NAMES.get(field_name) or ENV_PREFIX + option_name(field_name).upper().replace(
        "-", "_")


def parse_field(name: str, raw: str) -> Any:
    """Turn one textual setting (env var or flag) into the field's type."""
    default = {s.name: s.default for s in settings()}[name]
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: {raw!r} is not a boolean")
    if isinstance(default, FsyncPolicy):
        return FsyncPolicy(raw.lower())
    if isinstance(default, Path):
        return Path(raw)
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name == "file_mode":
        return int(raw, 8)  # permissions are written in octal: 0640
    if isinstance(default, int):
        return parse_size(raw) if name.endswith("_bytes") else int(raw)
    if isinstance(default, float):
        return parse_duration(raw)
    return raw


_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
               "g": GiB, "gb": GiB, "gib": GiB, "t": 1024 * GiB, "tb": 1024 * GiB,
               "tib": 1024 * GiB}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _split_unit(raw: str) -> tuple[str, str]:
    text = raw.strip().lower()
    i = len(text)
    while i > 0 and text[i - 1].isalpha():
        i -= 1
    return text[:i].strip(), text[i:]


def parse_size(raw: str) -> int:
    """``5368709120``, ``5GiB``, ``512M``: binary units, since disks and tus count bytes."""
    number, unit = _split_unit(raw)
    if unit not in _SIZE_UNITS or not number:
        raise ValueError(f"{raw!r} is not a size (try 512MiB or 5GiB)")
    return int(float(number) * _SIZE_UNITS[unit])


def parse_free_space(raw: str) -> tuple[int, float]:
    """``256MiB`` or ``1%`` (of the filesystem's size): ``(bytes, percent)``, one of them 0."""
    text = raw.strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ValueError(f"{raw!r} is not a percent (try 1%)") from None
        if not 0 <= percent < 100:  # NaN fails too
            raise ValueError(f"{raw!r} must be at least 0% and below 100%")
        return 0, percent
    try:
        size = parse_size(text)
    except (ValueError, OverflowError):
        raise ValueError(f"{raw!r} is neither a size nor a percent (try 256MiB or 1%)") \
            from None
    if size < 0:
        raise ValueError(f"{raw!r} must not be negative")
    return size, 0.0


def parse_duration(raw: str) -> float:
    """``30``, ``30s``, ``15m``, ``24h``, ``7d``."""
    number, unit = _split_unit(raw)
    if unit not in _DURATION_UNITS or not number:
        raise ValueError(f"{raw!r} is not a duration (try 30s, 15m, 24h or 7d)")
    return float(number) * _DURATION_UNITS[unit]
