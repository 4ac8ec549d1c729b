"""Everything the gateway knows about Redis: key names, Lua scripts, typed wrappers.

Key layout (``<p>`` is the configured prefix, ``{<id>}`` a hash tag so a Redis Cluster keeps
all of an upload's keys in one slot, which multi-key scripts require)::

    <p>:{<id>}:upload    hash: info (JSON record), offset (committed bytes), mtime, and hook
                         (the post-finish hook's progress, JSON: apart from the record so
                         that a record saved from an older read cannot undo it)
    <p>:{<id>}:tomb      a removed upload: 410 instead of 404; expires by itself (PX)
    <p>:{<id>}:lock      the upload's lock: a random token; expires unless its holder extends it
    <p>:{<id>}:release   set by a request that wants the lock; the holder sees it when extending
    <p>:{<id>}:ckpt      hash: a remote sink's upload (remote_id, started_at)
    <p>:{<id>}:parts     set: part numbers the remote sink confirmed for that upload
    <p>:{<id>}:finals    set: the final concatenations that wait for this partial (at most
                         --max-finals-per-partial of them are let in)
    <p>:uploads          sorted set: every live upload id (score: creation time), for sweeps
    <p>:tombs            sorted set: tombstoned ids (score: removal time), for purging them
    <p>:finals           hash: final concatenations waiting for partials -> their ids (JSON)
    <p>:{open}:uploads   hash: every open (unfinished) upload -> its client's key
    <p>:{open}:since     sorted set: the same ids (score: when the slot was claimed), so that
                         a claim whose record was never written can be found and dropped
    <p>:{open}:client:<c>  set: one client's open uploads (<c>: a hash, so 32 hex digits)
    <p>:{owner:<o>}:uploads  sorted set: one owner's uploads (score: creation time), for
                         listing them newest first (<o>: the record's client key, at most
                         64 characters)
    <p>:{owner:<o>}:held     hash: the owner's uploads -> the bytes each holds against the
                         owner's quota (an upload holding none has no field)
    <p>:release          pub/sub channel: "please let go of <id>", heard by every instance
    <p>:{<id>}:events    pub/sub channel: the upload's live events (JSON, gateway.events),
                         subscribed by the instances that stream them to a browser
    <p>:sink_owed        set: uploads a background sink still owes work on, for its scans
    <p>:hooks_owed       set: uploads whose post-finish hook has not succeeded yet
    <p>:expiry           sorted set: uploads by the time they are next due for the sweeper
                         (it reads those, not every upload); moved when one is looked at
    <p>:finish_owed      set: uploads whose finish may be owed (from creation until the
                         finish is on record), the ones a start looks at
    <p>:indexed          present once every upload made before the two indexes above is in
                         them (noted due at once, and as owing its finish)
    <p>:lease:<name>     a short lease so one instance runs a job at a time (a periodic
                         sweep, or one upload's drain: its holder's id, extended while it runs)
    <p>:rate:<name>      hash: a rate limiter every instance shares (due, blocked, at: server
                         microseconds); expires once its bucket is full again, so an idle
                         limiter leaves nothing behind

The global keys live in other slots than the uploads, so no script touches them together
with an upload's keys; they are indexes that the sweeper repairs, never the truth. The open
upload keys share the hash tag ``{open}``, so one script checks and changes them together.
An owner's keys share a hash tag of their own, ``{owner:<o>}``: a script or transaction
on one owner's keys needs them in one slot, and owners spread over the cluster. Whatever
``<o>`` holds (even a brace), both keys of one owner have the same text up to their first
``}``, so they keep one slot.

Every script starts with its KEYS/ARGV contract, receives every key through KEYS, and is
registered once per client. Mutating scripts are fenced: given a lock token (ARGV[1]; ''
means no fence), they change nothing unless that token still holds the upload's lock (a
holder whose lock expired while it was paused cannot overwrite its successor's work).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.state.base import check_owner

# How long a "please let go" flag lives: longer than any holder takes to notice it.
RELEASE_FLAG_TTL_MS = 10_000
# A client key names a set: only a fixed-size hash may (gateway.clients.client_key).
CLIENT_KEY = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "tus"

    def upload(self, upload_id: str) -> str:
        return f"{self.prefix}:{{{upload_id}}}:upload"

    def tomb(self, upload_id: str) -> str:
        return f"{self.prefix}:{{{upload_id}}}:tomb"

    def lock(self, upload_id: str) -> str:
        return f"{self.prefix}:{{{upload_id}}}:lock"

    def release(self, upload_id: str) -> str:
        return f"{self.prefix}:{{{upload_id}}}:release"

    def ckpt(self, upload_id: str) -> str:
        return f"{self.prefix}:{{{upload_id}}}:ckpt"

    def parts(self, upload_id: str) -> str:
        return f"{self.prefix}:{{{upload_id}}}:parts"

    def waiting(self, partial_id: str) -> str:
        return f"{self.prefix}:{{{partial_id}}}:finals"

    @property
    def open_uploads(self) -> str:
        return f"{self.prefix}:{{open}}:uploads"

    @property
    def open_since(self) -> str:
        return f"{self.prefix}:{{open}}:since"

    def open_of(self, client: str) -> str:
        if not CLIENT_KEY.fullmatch(client):
            raise ValueError("a client key is 32 hex digits")
        return f"{self.prefix}:{{open}}:client:{client}"

    def owned(self, owner: str) -> str:
        return f"{self.prefix}:{{owner:{check_owner(owner)}}}:uploads"

    def held(self, owner: str) -> str:
        return f"{self.prefix}:{{owner:{check_owner(owner)}}}:held"

    @property
    def index(self) -> str:
        return f"{self.prefix}:uploads"

    @property
    def tombs(self) -> str:
        return f"{self.prefix}:tombs"

    @property
    def finals(self) -> str:
        return f"{self.prefix}:finals"

    @property
    def release_channel(self) -> str:
        return f"{self.prefix}:release"

    def events(self, upload_id: str) -> str:
        return f"{self.prefix}:{{{upload_id}}}:events"

    def sink_owed(self) -> str:
        return f"{self.prefix}:sink_owed"

    def hooks_owed(self) -> str:
        return f"{self.prefix}:hooks_owed"

    @property
    def expiry(self) -> str:
        return f"{self.prefix}:expiry"

    @property
    def finish_owed(self) -> str:
        return f"{self.prefix}:finish_owed"

    @property
    def indexed(self) -> str:
        return f"{self.prefix}:indexed"

    def lease(self, name: str) -> str:
        return f"{self.prefix}:lease:{name}"

    def rate(self, name: str) -> str:
        return f"{self.prefix}:rate:{name}"


CREATE = """
-- KEYS[1] = upload, KEYS[2] = tomb
-- ARGV[1] = record (JSON), ARGV[2] = now
-- Returns 1, or 0 when the id is taken (live or tombstoned).
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'info', ARGV[1], 'offset', 0, 'mtime', ARGV[2])
return 1
"""

GET = """
-- KEYS[1] = upload, KEYS[2] = tomb
-- Returns {record, offset, mtime, hook state or nil}, or {'gone'} / {'missing'}.
local v = redis.call('HMGET', KEYS[1], 'info', 'offset', 'mtime', 'hook')
if v[1] then return v end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'gone'} end
return {'missing'}
"""

COMMIT = """
-- KEYS[1] = upload, KEYS[2] = lock
-- ARGV[1] = lock token or '', ARGV[2] = expected offset, ARGV[3] = new offset, ARGV[4] = now
-- Compare-and-set of the committed offset; it only grows.
-- Returns {'ok', offset} | {'lost'} | {'missing'} | {'conflict', current offset}.
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'lost'} end
local current = redis.call('HGET', KEYS[1], 'offset')
if not current then return {'missing'} end
if current == ARGV[3] then return {'ok', current} end
if current ~= ARGV[2] or tonumber(ARGV[3]) < tonumber(current) then
  return {'conflict', current}
end
redis.call('HSET', KEYS[1], 'offset', ARGV[3], 'mtime', ARGV[4])
return {'ok', ARGV[3]}
"""

SAVE_INFO = """
-- KEYS[1] = upload, KEYS[2] = lock
-- ARGV[1] = lock token or '', ARGV[2] = new record (JSON)
-- Replaces the record; a declared length is never changed and never below the offset.
-- Returns 'ok' | 'lost' | 'missing' | 'length_fixed' | 'below_offset'.
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'lost' end
local v = redis.call('HMGET', KEYS[1], 'info', 'offset')
if not v[1] then return 'missing' end
local old = cjson.decode(v[1])
local new = cjson.decode(ARGV[2])
local final = type(new['concat']) == 'table'
if not final and old['length'] ~= cjson.null and new['length'] ~= old['length'] then
  return 'length_fixed'
end
if not final and new['length'] ~= cjson.null and new['length'] < tonumber(v[2]) then
  return 'below_offset'
end
redis.call('HSET', KEYS[1], 'info', ARGV[2])
return 'ok'
"""

SAVE_HOOK = """
-- KEYS[1] = upload
-- ARGV[1] = hook state (JSON)
-- Replaces the post-finish hook's progress, which lives beside the record; a 'done' state
-- stays (a sender whose lease ran out while it was paused cannot make the hook owed again).
-- Returns 'ok' | 'missing' | 'done'.
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local current = redis.call('HGET', KEYS[1], 'hook')
if current and cjson.decode(current)['status'] == 'done' then return 'done' end
redis.call('HSET', KEYS[1], 'hook', ARGV[1])
return 'ok'
"""

TERMINATE = """
-- KEYS[1] = upload, KEYS[2] = lock, KEYS[3] = tomb, KEYS[4] = ckpt, KEYS[5] = parts
-- ARGV[1] = lock token or '', ARGV[2] = tombstone (JSON), ARGV[3] = tombstone TTL in ms,
-- ARGV[4] = offset the caller decided on, or '' (remove whatever the offset)
-- Returns {'ok', the record's client or ''} (its owner's keys are in another slot: the
-- caller forgets the upload there) | {'lost'} | {'missing'} | {'changed'} (bytes arrived
-- since the decision).
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'lost'} end
local v = redis.call('HMGET', KEYS[1], 'offset', 'info')
if not v[1] then return {'missing'} end
if ARGV[4] ~= '' and v[1] ~= ARGV[4] then return {'changed'} end
local client = ''
local readable, record = pcall(cjson.decode, v[2] or '')
if readable and type(record) == 'table' and type(record['client']) == 'string' then
  client = record['client']
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5])
return {'ok', client}
"""

START_REMOTE = """
-- KEYS[1] = upload, KEYS[2] = ckpt, KEYS[3] = parts
-- ARGV[1] = remote id, ARGV[2] = started at
-- A new remote upload starts with no confirmed parts. Returns 1, or 0 for a missing upload.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[2], 'remote_id', ARGV[1], 'started_at', ARGV[2])
return 1
"""

ADD_PARTS = """
-- KEYS[1] = ckpt, KEYS[2] = parts
-- ARGV[1] = remote id, ARGV[2..] = part numbers
-- Records parts only for the current remote upload. Returns 1, or 0 if it was replaced.
if redis.call('HGET', KEYS[1], 'remote_id') ~= ARGV[1] then return 0 end
for i = 2, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return 1
"""

ACQUIRE = """
-- KEYS[1] = lock, KEYS[2] = release flag
-- ARGV[1] = token, ARGV[2] = TTL in ms
-- Takes a free lock; the winner clears the release flag its own wait may have left behind.
-- Returns 1 when taken, else 0.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

RELEASE = """
-- KEYS[1] = lock, KEYS[2] = release flag
-- ARGV[1] = token
-- Deletes the lock (and any pending release request) only if the token still holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""

HOLD_LEASE = """
-- KEYS[1] = lease
-- ARGV[1] = owner, ARGV[2] = TTL in ms
-- Takes a free lease or extends one the owner holds. Returns 1, or 0 if another holds it.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

DROP_LEASE = """
-- KEYS[1] = lease
-- ARGV[1] = owner
-- Ends the lease only if the owner still holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

EXTEND = """
-- KEYS[1] = lock, KEYS[2] = release flag
-- ARGV[1] = token, ARGV[2] = TTL in ms
-- Returns -1 if the lock was lost, 1 if another request asked for it, else 0.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('EXISTS', KEYS[2])
"""

RATE = """
-- KEYS[1] = rate limiter (hash: due, blocked, at; microseconds on this server's clock)
-- ARGV[1] = interval in us (1 / rate), ARGV[2] = slack in us ((burst - 1) * interval),
-- ARGV[3] = pause in us (a 429's Retry-After), or 0 to take a token
-- notion_sink.ratelimit.TokenBucket on the server's clock (TIME), so that instances whose
-- clocks disagree still share one budget. Taking: returns 0 when a token was taken, else
-- the ms until one is due (taking none). Pausing: nothing is granted until now + pause,
-- then at most one token is waiting; returns the pause in ms. The key expires when the
-- bucket would be full again: a missing key and a full bucket behave the same.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local v = redis.call('HMGET', KEYS[1], 'due', 'blocked', 'at')
local due = tonumber(v[1]) or now
local blocked = tonumber(v[2]) or 0
-- A clock stepped back (or a failover to a primary whose clock is behind) would push every
-- stored time that much further away: shift them back by the step.
local back = (tonumber(v[3]) or now) - now
if back > 0 then
  due = due - back
  blocked = blocked - back
end
if due < now then due = now end  -- an idle bucket is full, not fuller
local interval, slack, pause = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if pause > 0 then
  blocked = math.max(blocked, now + pause)
  -- Due at blocked + slack: the first grant comes at blocked, the next an interval later.
  due = math.max(due, blocked + slack)
else
  if now < blocked then return math.ceil((blocked - now) / 1000) end
  local wait = due - slack - now
  if wait > 0 then return math.ceil(wait / 1000) end
  due = due + interval
end
-- '%.0f': tostring would print these 16-digit numbers with 14 significant digits.
redis.call('HSET', KEYS[1], 'due', string.format('%.0f', due),
           'blocked', string.format('%.0f', blocked), 'at', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil((due - now) / 1000)))
if pause > 0 then return math.ceil(pause / 1000) end
return 0
"""

WAIT_FOR_PARTIAL = """
-- KEYS[1] = the finals waiting for a partial (set)
-- ARGV[1] = final id, ARGV[2] = most finals that may wait for it (0: no limit)
-- Returns 1 when the final was added, 2 when it was there already, 0 when the partial has
-- as many finals waiting as allowed (nothing changes).
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 2 end
local most = tonumber(ARGV[2])
if most > 0 and redis.call('SCARD', KEYS[1]) >= most then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

CLAIM_OPEN = """
-- KEYS[1] = open uploads (hash: id -> client), KEYS[2] = claim times (sorted set),
-- KEYS[3] = the client's open uploads (set)
-- ARGV[1] = upload id, ARGV[2] = client, ARGV[3] = now, ARGV[4] = most open uploads,
-- ARGV[5] = most open uploads of one client (0: no limit)
-- Counts the upload as open, unless a limit is reached (then nothing changes); an upload
-- counted already stays counted once. Returns 'ok' | 'total' | 'client'.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'ok' end
local total, per = tonumber(ARGV[4]), tonumber(ARGV[5])
if total > 0 and redis.call('HLEN', KEYS[1]) >= total then return 'total' end
if per > 0 and redis.call('SCARD', KEYS[3]) >= per then return 'client' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 'ok'
"""

RELEASE_OPEN = """
-- KEYS[1] = open uploads (hash: id -> client), KEYS[2] = claim times (sorted set),
-- KEYS[3] = the client's open uploads (set)
-- ARGV[1] = upload id, ARGV[2] = its client, as read from KEYS[1] just before
-- Stops counting the upload. Returns 1, or 0 if it was not counted (for that client).
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

OWNED = """
-- KEYS[1] = an owner's uploads (sorted set: upload id, score: creation time)
-- ARGV[1] = most to return, ARGV[2] = the cursor's creation time, or '' for the first
-- page, ARGV[3] = the cursor's upload id
-- Returns {id, score, id, score, ...}: newest first (score, then id, descending), strictly
-- after the cursor. Members of equal score come in reverse byte order, as ZREVRANGE keeps
-- them; so the cursor's place is its rank while it is listed with that score, and else
-- the members tied with it that sort at or above it are skipped.
local n = tonumber(ARGV[1])
if ARGV[2] == '' then
  return redis.call('ZREVRANGE', KEYS[1], 0, n - 1, 'WITHSCORES')
end
local at, id = tonumber(ARGV[2]), ARGV[3]
local score = redis.call('ZSCORE', KEYS[1], id)
if score and tonumber(score) == at then
  local rank = redis.call('ZREVRANK', KEYS[1], id)
  return redis.call('ZREVRANGE', KEYS[1], rank + 1, rank + n, 'WITHSCORES')
end
-- Byte order, as Redis orders members (Lua's < follows the server's collation locale).
local function below(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local skip = 0
while true do
  local tied = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[2], 'LIMIT', skip, 100)
  local above = 0
  for _, member in ipairs(tied) do
    if below(member, id) then break end
    above = above + 1
  end
  skip = skip + above
  if above < #tied or #tied < 100 then break end
end
return redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], '-inf', 'WITHSCORES',
                  'LIMIT', skip, n)
"""

HOLD_BYTES = """
-- KEYS[1] = an owner's held bytes (hash: upload id -> bytes)
-- ARGV[1] = upload id, ARGV[2] = its bytes, ARGV[3] = most bytes the owner may hold
-- (0: no limit)
-- Records the upload's bytes in place of its figure, unless the owner's other uploads and
-- these would pass the limit. Returns -1 when recorded, else the bytes the owner holds
-- now (nothing changes).
local most = tonumber(ARGV[3])
if most > 0 then
  local total = 0
  for _, held in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(held) end
  local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
  if total - mine + tonumber(ARGV[2]) > most then return total end
end
if tonumber(ARGV[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""

ALL_SCRIPTS = {"create": CREATE, "get": GET, "commit": COMMIT, "save_info": SAVE_INFO,
               "save_hook": SAVE_HOOK,
               "terminate": TERMINATE, "start_remote": START_REMOTE, "add_parts": ADD_PARTS,
               "acquire": ACQUIRE, "release": RELEASE, "extend": EXTEND,
               "hold_lease": HOLD_LEASE, "drop_lease": DROP_LEASE, "rate": RATE,
               "wait_for_partial": WAIT_FOR_PARTIAL, "claim_open": CLAIM_OPEN,
               "release_open": RELEASE_OPEN, "owned": OWNED, "hold_bytes": HOLD_BYTES}
