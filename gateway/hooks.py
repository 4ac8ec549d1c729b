"""Operator hooks: a pre-create check before every creation, a post-finish notice after.

Theory of operation
-------------------
Pre-create. ``handlers.post`` calls ``Hooks.pre_create`` once ``protocol`` has accepted the
request and before anything is stored, so a refused creation changes nothing: no record, no
data file, no id handed out. The hook gets a JSON description of the upload and of the
request (never its Authorization header or cookies) and answers 2xx with an optional JSON
object: ``{"reject": true, "status": 4xx, "message": ...}`` refuses the upload with
``ERR_HOOK_REJECTED``; ``{"metadata": {...}}`` replaces its metadata (checked as strictly
as an Upload-Metadata header). Any other status, a timeout or a connection error is tried
``hook_retries`` more times after a short backoff; then ``hook_fallback`` decides: refuse
with ``503 ERR_HOOK_FAILED`` or create as if there were no hook. A malformed 2xx answer is
a failure too, but it is not retried, since the endpoint would answer the same again.

Post-finish. Once per finished upload (partials are pieces, not files), as far as HTTP
allows:

1. ``Uploads.finish``, under the upload's lock, notes the upload in the store's index of
   owed hooks and then saves a ``pending`` hook state in the same record write that records
   the hand-over to the sink. From that write on, the hook is owed whatever happens to the
   process.
2. A task per upload, under the lease ``hook:<id>`` so that one instance at a time sends
   it, POSTs the notice with ``Hook-Event-Id: <id>:post-finish`` until an answer is 2xx,
   waiting a capped, jittered exponential backoff between attempts (``post_finish_delay``).
   Each failed attempt, and finally ``done``, is saved with ``UploadStore.save_hook``, which
   changes only the hook's part of the record: a sink that saves the record meanwhile
   neither undoes it nor is undone by it.
3. At start every record is read (the disk store keeps its index in memory); then every
   ``hook_retry_s`` each instance reads the index, so a hook whose instance died is taken
   over once that instance's lease runs out. (``gateway.jobs.LeasedJobs`` runs the tasks,
   their leases and the scans, as it does for the Notion drain.)

The first 2xx ends it: a ``done`` hook is never sent again. If the process dies after the
endpoint answered 2xx and before ``done`` is saved, the notice goes out again after the
restart, with the same ``Hook-Event-Id``, which receivers use to drop the repeat. No HTTP
sender can do better: an answer can be lost after the receiver has acted on the request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from gateway.aio import run_to_completion
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import GatewayConfig
from gateway.jobs import JobNames, LeasedJobs, OwedIndex, Scanned, Verdict
from gateway.state.base import UploadStore
from gateway.state.lease import lease_ttl
from protocol import errors
from protocol.decisions import CreatePlan, ProtocolSettings
from protocol.headers import ConcatFinal, ConcatPartial, format_metadata, parse_metadata
from protocol.model import HookState, HookStatus, UploadInfo, UploadState
from protocol.retry import backoff, backoff_ceiling
from protocol.state import UploadStatus

log = logging.getLogger(__name__)

# A larger answer is not a policy decision; reading it would only cost memory.
MAX_ANSWER_BYTES = 64 * 1024
# A rejection message ends up in the client's answer: one printable line, not too long.
MAX_MESSAGE_CHARS = 500
# Between pre-create attempts a client is waiting: long enough to ride out a blip only.
PRE_CREATE_BACKOFF_S = 0.2
PRE_CREATE_BACKOFF_MAX_S = 1.0
# The first wait after a failed post-finish send; it doubles from here up to hook_retry_s.
POST_FINISH_FIRST_RETRY_S = 1.0


class HookCallFailed(Exception):
    """The endpoint could not be reached, timed out or answered something other than 2xx."""


class BadHookAnswer(HookCallFailed):
    """A 2xx answer that is not a valid decision; asking again would get the same one."""


def post_finish_delay(attempts: int, cap_s: float, jitter: float) -> float:
    """The wait after the ``attempts``-th failed send: doubling from 1 s up to ``cap_s``,
    somewhere in its upper half (``jitter`` in [0, 1)), so that the hooks of many uploads
    that failed together do not all come back at the same moment."""
    # Doubling stops after 30 failures (2^30 s is past any sensible cap_s): the attempt
    # count is stored and keeps growing for as long as the endpoint fails.
    return backoff(attempts, POST_FINISH_FIRST_RETRY_S, cap_s, jitter, low=0.5,
                   max_doublings=30)


def metadata_json(metadata: Mapping[str, bytes]) -> dict[str, dict[str, str]]:
    """Values that are UTF-8 as text, the others in Base64 in a map of their own."""
    text: dict[str, str] = {}
    binary: dict[str, str] = {}
    for key, value in metadata.items():
        try:
            text[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = base64.b64encode(value).decode("ascii")
    return {"metadata": text, "metadata_base64": binary}


def answered_metadata(answer: Mapping[str, Any], max_bytes: int) -> dict[str, bytes]:
    """The metadata a pre-create answer asks for, held to the rules of Upload-Metadata."""
    text, encoded = answer.get("metadata", {}), answer.get("metadata_base64", {})
    if not isinstance(text, dict) or not isinstance(encoded, dict):
        raise BadHookAnswer("'metadata' and 'metadata_base64' must be objects")
    values: dict[str, bytes] = {}
    for key, value in text.items():
        if not isinstance(value, str):
            raise BadHookAnswer(f"metadata value of {key[:40]!r} is not a string")
        values[key] = value.encode("utf-8")
    for key, value in encoded.items():
        if not isinstance(value, str) or key in values:
            raise BadHookAnswer(f"metadata_base64 value of {key[:40]!r} is not a string "
                                "or repeats a key of 'metadata'")
        try:
            values[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadHookAnswer(f"metadata_base64 value of {key[:40]!r} is not Base64") \
                from exc
    # Through the header's own parser: key syntax and size limit as for a client's header.
    # A key with a comma or a space would parse into other pairs, hence the comparison.
    try:
        parsed = parse_metadata(format_metadata(values), max_bytes)
    except errors.TusError as exc:
        raise BadHookAnswer(f"metadata not allowed: {exc.detail}") from exc
    if parsed != values:
        raise BadHookAnswer("metadata keys must not be empty or contain spaces or commas")
    return parsed


def _one_line(message: str) -> str:
    printable = "".join(c if c.isprintable() else " " for c in message)
    return " ".join(printable.split())[:MAX_MESSAGE_CHARS]


def _where(url: str) -> str:
    """The endpoint for log lines: no credentials, no query."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class Hooks:
    """Both hooks of one gateway process; ``Uploads.hooks``."""

    def __init__(self, config: GatewayConfig, settings: ProtocolSettings,
                 store: UploadStore, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.settings = settings
        self.store = store
        self.clock = clock  # the times recorded on a hook's progress
        self.post_finish = LeasedJobs(
            JobNames(lease="hook", task="hook-post-finish", scanner="hook-scan", scan="hook"),
            index=OwedIndex(store.owe_hook, store.hooks_owed), leases=store, work=self._send,
            lease_s=lease_ttl(config.lock_ttl_s), scan_s=config.hooks.retry_s,
            decide=self._at_scan, log=log)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # --- HTTP --------------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise HookCallFailed("the gateway is shutting down")
        if self._session is None:
            # Made on first use, inside the running loop. No cookie jar: cookies an endpoint
            # sets must never ride along on later calls.
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def _post(self, url: str, payload: Mapping[str, Any], *,
                    headers: Mapping[str, str] | None = None, read: bool = False) -> bytes:
        """POST ``payload``; the answer's body (if ``read``) when the status is 2xx, else
        ``HookCallFailed``. Redirects are not followed: the payload goes where configured."""
        try:
            async with self._client().post(
                    url, data=json.dumps(payload).encode(),
                    headers={"Content-Type": "application/json", **(headers or {})},
                    timeout=aiohttp.ClientTimeout(total=self.config.hooks.timeout_s),
                    allow_redirects=False) as response:
                if not 200 <= response.status < 300:
                    raise HookCallFailed(f"answered {response.status}")
                if not read:
                    return b""
                body = bytearray()
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise BadHookAnswer(f"answer larger than {MAX_ANSWER_BYTES} bytes")
                return bytes(body)
        except TimeoutError as exc:
            raise HookCallFailed(f"no answer within {self.config.hooks.timeout_s:g} s") \
                from exc
        except aiohttp.ClientError as exc:
            raise HookCallFailed(f"{type(exc).__name__}: {exc}") from exc

    # --- pre-create --------------------------------------------------------------------------
    async def pre_create(self, plan: CreatePlan, request: web.Request) -> CreatePlan:
        """Ask the pre-create hook about a creation ``protocol`` accepted: returns the plan
        to carry out (its metadata possibly replaced), or raises ``HookRejected`` or
        ``HookFailed``."""
        url = self.config.hooks.pre_create
        if not url:
            return plan
        concat = ("partial" if isinstance(plan.concat, ConcatPartial)
                  else "final" if isinstance(plan.concat, ConcatFinal) else None)
        payload = {
            "type": "pre-create",
            "upload": {"length": plan.length,
                       "deferred_length": plan.length is None and concat != "final",
                       **metadata_json(plan.metadata), "concat": concat},
            "request": {"remote": request.remote, "host": request.host,
                        "user_agent": request.headers.get("User-Agent")},
        }
        failure = HookCallFailed("not called")
        for attempt in range(1 + self.config.hooks.retries):
            if attempt:
                # No jitter: the wait holds up one client's POST and is a second at most.
                await asyncio.sleep(backoff_ceiling(attempt, PRE_CREATE_BACKOFF_S,
                                                    PRE_CREATE_BACKOFF_MAX_S))
            try:
                return self._decide(plan, await self._ask(url, payload))
            except BadHookAnswer as exc:
                failure = exc
                break
            except HookCallFailed as exc:
                failure = exc
        accept = self.config.hooks.fallback == "accept"
        log.warning("the pre-create hook at %s failed (%s); %s", _where(url), failure,
                    "creating the upload without it" if accept else "refusing the upload")
        if accept:
            return plan
        raise errors.HookFailed()

    async def _ask(self, url: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        body = await self._post(url, payload, read=True)
        if not body.strip():
            return {}  # 204, or 200 with nothing to say: accepted as it is
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise BadHookAnswer("the answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise BadHookAnswer("the answer is not a JSON object")
        return answer

    def _decide(self, plan: CreatePlan, answer: Mapping[str, Any]) -> CreatePlan:
        reject = answer.get("reject", False)
        if not isinstance(reject, bool):
            raise BadHookAnswer("'reject' must be true or false")
        if reject:
            message = answer.get("message")
            rejected = errors.HookRejected(_one_line(message) if isinstance(message, str)
                                           and message.strip() else None)
            status = answer.get("status")
            # Only a 4xx: a hook's refusal is about this request, and tus clients retry 5xx.
            if isinstance(status, int) and not isinstance(status, bool) and \
                    400 <= status <= 499:
                rejected.status = status
            raise rejected
        if "metadata" in answer or "metadata_base64" in answer:
            return dataclasses.replace(plan, metadata=answered_metadata(
                answer, self.settings.max_metadata_bytes))
        return plan

    # --- post-finish -------------------------------------------------------------------------
    async def owe_post_finish(self, info: UploadInfo) -> UploadInfo:
        """The record to save at finish: with a pending hook when one is configured. The
        index entry comes first, so no pending hook is ever missing from it."""
        if not self.config.hooks.post_finish or info.is_partial or info.hook is not None:
            return info
        await self.store.owe_hook(info.upload_id, True)
        return info.replace(hook=HookState(finished_at=self.clock.now()))

    def start_post_finish(self, state: UploadState) -> None:
        """The finish is saved: send the notice in the background."""
        hook = state.info.hook
        if hook is not None and not hook.done and self.config.hooks.post_finish:
            self.post_finish.start(state.info.upload_id)

    def describe(self, state: UploadState) -> dict[str, object] | None:
        """The hooks' part of the status endpoint's answer."""
        hook = state.info.hook
        if hook is None:
            return None
        return {"post_finish": {"status": str(hook.status), "attempts": hook.attempts,
                                "last_error": hook.last_error, "done_at": hook.done_at}}

    async def start(self) -> None:
        """After recovery: send what a stop interrupted, then look again now and then. This
        first scan reads every record (and rebuilds the index); later ones read the index."""
        if not self.config.hooks.post_finish:
            return
        await self.post_finish.resume(await self.store.upload_ids())

    async def close(self) -> None:
        self._closed = True
        await self.post_finish.close()
        if self._session is not None:
            await self._session.close()

    async def _send(self, upload_id: str, wake: asyncio.Event) -> None:
        """The post-finish hook of one upload, under its lease (``self.post_finish``)."""
        try:
            await self._deliver(upload_id)
        except (errors.NotFound, errors.Gone):
            # Removed before its notice went out: there is nothing left to describe.
            log.info("upload %s was removed before its post-finish hook succeeded",
                     upload_id)
            with contextlib.suppress(errors.StateUnavailable):
                await self.store.owe_hook(upload_id, False)
        except errors.StateUnavailable:
            log.warning("the state store is unreachable; the post-finish hook of %s is "
                        "sent later", upload_id)
        except Exception:
            log.exception("the post-finish hook of %s failed; the next scan tries again",
                          upload_id)

    async def _deliver(self, upload_id: str) -> None:
        url = self.config.hooks.post_finish
        while True:
            # Read again before every attempt: the upload may have been removed, or another
            # instance may have sent the notice while this one waited.
            state = await self.store.get(upload_id)
            hook = state.info.hook
            if hook is None or hook.done:
                await self.store.owe_hook(upload_id, False)
                return
            attempt = hook.attempts + 1
            try:
                await self._post(url, self._post_finish_payload(state, hook),
                                 headers={"Hook-Event-Id": f"{upload_id}:post-finish"})
            except HookCallFailed as exc:
                delay = post_finish_delay(attempt, self.config.hooks.retry_s, random.random())
                log.warning("the post-finish hook of %s failed (attempt %d: %s); next try in "
                            "%.3g s", upload_id, attempt, exc, delay)
                await self.store.save_hook(upload_id, dataclasses.replace(
                    hook, attempts=attempt, last_error=str(exc)))
                await asyncio.sleep(delay)
                continue
            # The endpoint has it: record that even if a shutdown cancels us meanwhile, or
            # the notice would go out again after the restart.
            await run_to_completion(self._done(upload_id, dataclasses.replace(
                hook, status=HookStatus.DONE, attempts=attempt, done_at=self.clock.now())))
            log.info("post-finish hook of %s delivered (attempt %d)", upload_id, attempt)
            return

    async def _done(self, upload_id: str, hook: HookState) -> None:
        await self.store.save_hook(upload_id, hook)
        await self.store.owe_hook(upload_id, False)

    @staticmethod
    def _post_finish_payload(state: UploadState, hook: HookState) -> dict[str, Any]:
        info = state.info
        sink = info.sink
        rejected = sink.error if sink is not None and sink.status is UploadStatus.REJECTED \
            else None
        # ``status`` and ``rejected`` tell a finished file from one the content check
        # refused (``gateway.screening``); ``subject`` is its creator's user, if named.
        return {"type": "post-finish", "upload": {
            "id": info.upload_id, "length": state.offset, **metadata_json(info.metadata),
            "created_at": info.created_at, "finished_at": hook.finished_at,
            "status": "rejected" if rejected is not None else "finished",
            "rejected": rejected, "subject": info.subject}}

    # --- scanning ----------------------------------------------------------------------------
    async def _at_scan(self, upload_id: str, scanned: Scanned) -> Verdict:
        """What a scan does with an upload whose hook no task here sends: a pending hook is
        sent (its lease decides where), a done one is owed no more."""
        hook = (await self.store.get(upload_id)).info.hook
        return Verdict.DONE if hook is None or hook.done else Verdict.RUN

    async def scan(self, every: set[str] | None = None) -> None:
        """Start the post-finish hooks that are owed and not sent here: those in the index,
        and those of ``every`` upload at start-up."""
        await self.post_finish.scan(every)
