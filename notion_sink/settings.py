"""The Notion sink's settings: one frozen value, part of ``gateway.config.GatewayConfig``.

Each field is the flag ``--notion-<name>`` and the environment variable
``TUS_NOTION_<NAME>`` (the token: ``NOTION_TOKEN``, the name the Notion SDKs use); the
docstring under a field is its help text. Plain data, no I/O: the gateway's configuration
imports it without loading the sink.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB

# What each record property holds (see notion_sink.records.RecordSettings).
NOTION_PROPERTY_ROLES = ("title", "size", "hash", "salt", "created", "file", "index_title",
                         "index_database", "index_page")


@dataclass(frozen=True, slots=True)
class NotionSettings:
    token: str = ""
    """The Notion integration's secret (Bearer token)."""
    base_url: str = "https://api.notion.com"
    """The Notion API; point it at `tus-gateway fake-notion` to try the sink locally."""
    version: str = "2022-06-28"
    """The Notion-Version every request sends (the database query endpoint needs this one)."""
    user_database: str = ""
    """Id of the database that gets one page per file (title, size, salted hash, the file)."""
    index_database: str = ""
    """Id of the global index database (salted hash -> user database and page)."""
    window_bytes: int = 5 * MiB
    """Part size for files over 20 MiB (5 to 20 MiB; larger files use bigger parts so that
    no file needs more than 1,000)."""
    concurrency: int = 4
    """Parts sent at once, over all uploads."""
    rate: float = 3.0
    """Requests per second to Notion, shared by every sender (Notion allows about 3)."""
    retry_deadline_s: float = 300.0
    """How long one Notion request is retried (backoff with full jitter, Retry-After
    honoured) before its delivery is marked failed; waiting on an open breaker does not
    count."""
    breaker_open_s: float = 30.0
    """After repeated failures, Notion is left alone this long before one probe request."""
    retry_failed_s: float = 300.0
    """A delivery that failed for a reason that may pass starts again after this long;
    0: only `tus-gateway sink retry` starts it."""
    scan_s: float = 10.0
    """How often each instance looks for drains that nobody runs (their instance died) and
    for failed deliveries due for a retry."""
    properties: tuple[str, ...] = ()
    """Property names of the records, as role=Name pairs overriding the defaults (roles:
    title=Name, size=Size, hash=Hash, salt=Salt, created=Created, file=File in the user
    database; index_title=Hash, index_database=Database, index_page=Page in the index)."""

    def problems(self, *, in_use: bool) -> list[str]:
        """What is wrong with these settings, named as the flags name them (``notion_*``);
        ``in_use``: the gateway delivers to Notion, so the credentials must be there."""
        problems = []
        if in_use:
            for name, value in (("notion_token", self.token),
                                ("notion_user_database", self.user_database),
                                ("notion_index_database", self.index_database)):
                if not value:
                    problems.append(f"the notion sink needs {name}")
        if not 5 * MiB <= self.window_bytes <= 20 * MiB:
            problems.append("notion_window_bytes must be between 5 and 20 MiB")
        if self.retry_deadline_s <= 0 or self.retry_failed_s < 0 or self.breaker_open_s <= 0:
            problems.append("notion_retry_deadline_s must be positive, "
                            "notion_retry_failed_s not negative")
        if self.concurrency < 1 or self.rate <= 0 or self.scan_s <= 0:
            problems.append("notion_concurrency, notion_rate and notion_scan_s must be "
                            "positive")
        for pair in self.properties:
            role, sep, name = pair.partition("=")
            if not sep or role.strip() not in NOTION_PROPERTY_ROLES or not name.strip():
                problems.append(f"notion_properties: {pair!r} is not role=Name with a role "
                                f"among {', '.join(NOTION_PROPERTY_ROLES)}")
        return problems
