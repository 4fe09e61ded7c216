"""Key layout and Lua scripts of the Redis backend.

Every key of one user carries the user id as a Redis Cluster hash tag, so a
user's keys live on one shard (scripts may touch them together) while users
spread across shards. Redis hashes only what lies between the first ``{``
and the next ``}``, so the id is escaped inside the tag (:func:`runwire_common.redis_keys.hash_tag`:
``%`` → ``%25``, ``{`` → ``%7B``, ``}`` → ``%7D``): the tag never holds a
brace whatever the id, distinct ids keep distinct tags, and ordinary ids stay
readable as they are. ``<user>`` below is that escaped id.

- ``<prefix>:{<user>}:events`` — Stream, the retained log. Entry id = the
  event id; field ``e`` = the serialized ``RunEvent`` with its stored ``seq``
  (``event_id`` is the entry id, filled in when read).
- ``<prefix>:{<user>}:meta`` — Hash: ``born`` (the id just below this log
  incarnation's first event), ``last`` (the newest id assigned) and ``bytes``
  (the stored size of the retained events, for the byte bound).
- ``<prefix>:{<user>}:runs`` — Hash: run id → ``"<last seq>:<0|1 terminal>"``.
- ``<prefix>:{<user>}:run_order`` — Sorted set of the same runs, scored by
  when they finished (live runs after every finished one, least recently
  active first): the order in which their fencing state may be forgotten.
- ``<prefix>:{<user>}:live`` — Pub/Sub channel (``PUBLISH``, or ``SPUBLISH`` in
  sharded mode): one message per publish, see :data:`PUBLISH_SCRIPT`.

Ids are ``"<ms>-<n>"`` stream ids assigned by :data:`PUBLISH_SCRIPT` itself:
``ms`` is the server time but never goes back, and ``n`` counts the
incarnation's events (1, 2, 3 …), so consecutive retained events have
consecutive ``n``. A reader that expects ``n + 1`` after its cursor and finds
something else knows events were trimmed in between — exact gap detection
whatever bound trimmed them.

All four keys expire ``retention_s`` after the user's last publish (every
event is older than the retention by then anyway). An expired or flushed
``meta`` starts a new incarnation: the old stream is dropped, ``born`` is the
current time, and every older cursor gets a gap.
"""

from __future__ import annotations

from typing import NamedTuple

from bridge_service.event_ids import EventId
from runwire_common.redis_keys import user_key_base


class UserKeys(NamedTuple):
    stream: str
    meta: str
    runs: str
    run_order: str
    live: str

    def script_keys(self) -> list[str]:
        """The ``KEYS`` of :data:`PUBLISH_SCRIPT` (and, first two, of :data:`OPEN_SCRIPT`)."""
        return [self.stream, self.meta, self.runs, self.run_order]


def user_keys(prefix: str, user_id: str) -> UserKeys:
    """The keys of ``user_id``'s log, all on the slot of its escaped id (see module doc)."""
    tagged = user_key_base(prefix, user_id)
    return UserKeys(
        stream=f"{tagged}:events",
        meta=f"{tagged}:meta",
        runs=f"{tagged}:runs",
        run_order=f"{tagged}:run_order",
        live=f"{tagged}:live",
    )


_HELPERS = """
local function fmt(x) return string.format('%.0f', x) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_BOUNDS = """
local function stored_size(entry) return #entry[2][2] end
-- Drop the oldest events beyond the count, the bytes (keeping the newest) or the age.
local function trim(stream, meta, added, cutoff_ms, capacity, max_bytes)
  local size = tonumber(redis.call('HGET', meta, 'bytes') or '-1')
  if size < 0 then  -- a log written before sizes were kept: count it once
    size = 0
    for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+')) do size = size + stored_size(entry) end
  else
    size = size + added
  end
  local count = redis.call('XLEN', stream)
  local start, dropped = '-', nil
  while count > 0 do
    local page = redis.call('XRANGE', stream, start, '+', 'COUNT', math.min(512, math.max(16, count - capacity)))
    local done = #page == 0
    for _, entry in ipairs(page) do
      local ms = tonumber(string.match(entry[1], '^(%d+)-'))
      if count > capacity or (size > max_bytes and count > 1) or ms < cutoff_ms then
        size = size - stored_size(entry)
        count = count - 1
        dropped = entry[1]
      else
        done = true
        break
      end
    end
    if done then break end
    start = '(' .. page[#page][1]
  end
  if dropped then
    local a, b = string.match(dropped, '^(%d+)-(%d+)$')
    redis.call('XTRIM', stream, 'MINID', a .. '-' .. fmt(tonumber(b) + 1))
  end
  if count == 0 then size = 0 end
  redis.call('HSET', meta, 'bytes', fmt(size))
end
-- Forget fencing state: beyond capacity only runs finished by hold_cutoff_ms, beyond max any.
local function forget_runs(runs, order, hold_cutoff_ms, capacity, max_runs)
  local excess = redis.call('HLEN', runs) - capacity
  if excess > 0 then
    local victims = redis.call('ZRANGEBYSCORE', order, '-inf', fmt(hold_cutoff_ms), 'LIMIT', 0, excess)
    for _, run in ipairs(victims) do
      redis.call('ZREM', order, run)
      redis.call('HDEL', runs, run)
    end
  end
  local beyond = redis.call('HLEN', runs) - max_runs
  if beyond > 0 then
    local victims = redis.call('ZPOPMIN', order, beyond)
    for j = 1, #victims, 2 do
      redis.call('HDEL', runs, victims[j])
    end
  end
end
"""

# KEYS: stream, meta.  ARGV: retention ms.
# Returns {born, last, created (0|1)}; starts a new incarnation when meta is gone.
OPEN_SCRIPT = (
    _HELPERS
    + """
local born = redis.call('HGET', KEYS[2], 'born')
local last = redis.call('HGET', KEYS[2], 'last')
if born and last then
  return {born, last, 0}
end
redis.call('DEL', KEYS[1])
local id = fmt(now_ms()) .. '-0'
redis.call('HSET', KEYS[2], 'born', id, 'last', id, 'bytes', '0')
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {id, id, 1}
"""
)

# KEYS: stream, meta, runs, run_order.
# ARGV: live channel, log capacity, retention ms, run state capacity,
#       live body cap (bytes; 0 = ids only), publish command (PUBLISH | SPUBLISH),
#       log max bytes, run state hold ms, run state max, then
#       4 per event: run id, seq (0 = next), terminal (0 = no; 1 = yes; for a terminal event
#       with seq 0, its timestamp in ms, see before_log), serialized RunEvent.
# Returns 3 per event: event id ('' if ignored), stored seq (0 if ignored),
# verdict (store | gap | duplicate | after_terminal | before_log; see bridge_service.bus.fence).
#
# before_log: a terminal event with seq 0 (an end or death notice, an announcement:
# its publisher does not know the run's seq) carries its timestamp as its terminal flag. If
# the log has no fencing state for its run and the run ended before this log incarnation
# was born (by an earlier call: Redis lost the previous one, e.g. restarted without
# persistence), it is ignored: the run's own terminal event may have gone with the lost
# log, and storing this one could give the owner a second; every cursor into the lost
# log is answered with a gap instead. A log born by this very call (no earlier trace of
# the user at all) stores it.
#
# The live message carries the stored events themselves when they fit the cap,
# so a subscriber that is caught up appends them without reading the stream:
#   "<id>:<len> <id>:<len> …\n" followed by the events as delivered (the
#   stored bytes with event_id appended), each <len> bytes, oldest first;
# otherwise it is just "<newest id>" and subscribers read the stream (XRANGE).
#
# Bounds, all inside this one script (no extra round trip): the stream keeps
# at most ``log capacity`` events and ``log max bytes`` of stored event bytes
# (meta field ``bytes``, their running sum; the newest event is always kept),
# none older than the retention — the oldest go first, trimmed exactly
# (``XTRIM MINID``) after reading their sizes. Fencing state is forgotten
# beyond ``run state capacity`` runs only for runs that finished more than
# ``run state hold ms`` ago (a publisher may still retry a younger one); only
# beyond ``run state max`` runs, the hard per-user bound, does the oldest go
# whatever its age.
PUBLISH_SCRIPT = (
    _HELPERS
    + _BOUNDS
    + """
local stream, meta, runs, order = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local retention = tonumber(ARGV[3])
local live_bias = 1e13  -- live runs sort after every finished one
local body_cap = tonumber(ARGV[5])
local header, bodies, live_size = {}, {}, 0
local function varint(x)
  local out = {}
  repeat
    local b = x % 128
    x = (x - b) / 128
    if x > 0 then b = b + 128 end
    out[#out + 1] = string.char(b)
  until x == 0
  return table.concat(out)
end
local now = now_ms()
local ms, n
local born_ms, fresh = 0, false
local last = redis.call('HGET', meta, 'last')
local born = redis.call('HGET', meta, 'born')
if last and born then
  local a, b = string.match(last, '^(%d+)-(%d+)$')
  ms, n = tonumber(a), tonumber(b)
  born_ms = tonumber(string.match(born, '^(%d+)-'))
else
  -- A new incarnation: whatever stream is left cannot be resumed exactly.
  redis.call('DEL', stream)
  ms, n = now, 0
  born_ms, fresh = now, true
  redis.call('HSET', meta, 'born', fmt(ms) .. '-0', 'last', fmt(ms) .. '-0', 'bytes', '0')
end
local reply = {}
local stored, added = 0, 0
for i = 10, #ARGV, 4 do
  local run, seq, flag = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local terminal, stamp = flag ~= 0, flag > 1 and flag or 0
  local last_seq, finished = 0, false
  local state = redis.call('HGET', runs, run)
  if state then
    local s, f = string.match(state, '^(%d+):([01])$')
    last_seq, finished = tonumber(s), f == '1'
  end
  local verdict = 'store'
  if finished then
    verdict = 'after_terminal'
  elseif seq == 0 and not state and not fresh and stamp > 0 and stamp < born_ms then
    verdict = 'before_log'
  elseif seq == 0 then
    seq = last_seq + 1
  elseif seq <= last_seq then
    verdict = 'duplicate'
  elseif seq > last_seq + 1 then
    verdict = 'gap'
  end
  if verdict == 'store' or verdict == 'gap' then
    if now > ms then ms = now end
    n = n + 1
    local id = fmt(ms) .. '-' .. fmt(n)
    -- Appending field 2 (seq, varint) to the message sets the stored seq.
    local body = ARGV[i + 3] .. '\\16' .. varint(seq)
    redis.call('XADD', stream, id, 'e', body)
    added = added + #body
    if body_cap > 0 and live_size <= body_cap then
      -- Appending field 1 (event_id, length-delimited) as a reader of the stream does.
      local delivered = body .. '\\10' .. string.char(#id) .. id
      live_size = live_size + #delivered
      header[#header + 1] = id .. ':' .. #delivered
      bodies[#bodies + 1] = delivered
    end
    redis.call('HSET', runs, run, fmt(seq) .. (terminal and ':1' or ':0'))
    redis.call('ZADD', order, terminal and now or (now + live_bias), run)
    reply[#reply + 1] = id
    reply[#reply + 1] = seq
    stored = stored + 1
  else
    reply[#reply + 1] = ''
    reply[#reply + 1] = 0
  end
  reply[#reply + 1] = verdict
end
if stored > 0 then
  local newest = fmt(ms) .. '-' .. fmt(n)
  redis.call('HSET', meta, 'last', newest)
  trim(stream, meta, added, now - retention, tonumber(ARGV[2]), tonumber(ARGV[7]))
  forget_runs(runs, order, now - tonumber(ARGV[8]), tonumber(ARGV[4]), tonumber(ARGV[9]))
  local message = newest
  if body_cap > 0 and live_size <= body_cap then
    message = table.concat(header, ' ') .. '\\n' .. table.concat(bodies)
  end
  redis.call(ARGV[6], ARGV[1], message)
end
for _, key in ipairs(KEYS) do
  redis.call('PEXPIRE', key, ARGV[3])
end
return reply
"""
)


def parse_live_message(data: bytes) -> tuple[EventId, list[tuple[EventId, bytes]] | None]:
    """The newest id of a live message and, when it carries them, its events (see :data:`PUBLISH_SCRIPT`)."""
    head, newline, blob = data.partition(b"\n")
    if not newline:
        return _event_id(head), None
    entries: list[tuple[EventId, bytes]] = []
    start = 0
    for token in head.split(b" "):
        raw_id, _, size = token.partition(b":")
        end = start + int(size)
        entries.append((_event_id(raw_id), blob[start:end]))
        start = end
    return entries[-1][0], entries


def _event_id(raw: bytes) -> EventId:
    # Written by the script itself ("<ms>-<n>"), so no validation beyond int().
    ms, _, n = raw.partition(b"-")
    return EventId(int(ms), int(n))
