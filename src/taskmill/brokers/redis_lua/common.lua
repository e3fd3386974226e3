-- Shared by every script (prepended when the scripts are registered).
-- Per queue, KEYS come in groups of 10, in this order:
--   ready (zset, score = (9 - priority) * 2^40 + seq), delayed (zset, score = run-at ms),
--   leased (zset, score = lease expiry ms), body (hash id -> body), meta (hash id -> "prio|seq|deliveries|token"),
--   dead (zset, score = dead-at in microseconds), deadinfo (hash id -> JSON), deadbody (hash id -> body),
--   waiters (zset of parked workers' ids, score = when their park ends, ms), seq (counter)
local GROUP = 10
local SEQ_SPAN = 1099511627776  -- 2^40: seq stays below it, so priority always dominates the score

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function now_ms()
  return math.floor(now_us() / 1000)
end

-- Dead letters are scored in microseconds, one apart within a script, so "newest first" is exact.
local dead_clock = 0
local function dead_score()
  local t = now_us()
  if t <= dead_clock then t = dead_clock + 1 end
  dead_clock = t
  return t
end

local function queue_keys(index)
  local base = (index - 1) * GROUP
  return {ready = KEYS[base + 1], delayed = KEYS[base + 2], leased = KEYS[base + 3], body = KEYS[base + 4],
          meta = KEYS[base + 5], dead = KEYS[base + 6], deadinfo = KEYS[base + 7], deadbody = KEYS[base + 8],
          waiters = KEYS[base + 9], seq = KEYS[base + 10]}
end

-- One command over many arguments (ids, or pairs), chunked to stay within Lua's unpack limit.
local function many(command, key, items)
  local step = 1000  -- even, so pairs never straddle two chunks
  if #items <= step then return redis.call(command, key, unpack(items)) end
  local out = {}
  for first = 1, #items, step do
    local reply = redis.call(command, key, unpack(items, first, math.min(first + step - 1, #items)))
    if type(reply) == 'table' then
      for i = 1, #reply do table.insert(out, reply[i]) end
    end
  end
  return out
end

local function read_meta(k, id)
  local raw = redis.call('HGET', k.meta, id)
  if not raw then return nil end
  local prio, seq, deliveries, token = string.match(raw, '^(%d+)|(%d+)|(%d+)|(.*)$')
  return {prio = tonumber(prio), seq = tonumber(seq), deliveries = tonumber(deliveries), token = token}
end

local function write_meta(k, id, m)
  redis.call('HSET', k.meta, id, m.prio .. '|' .. m.seq .. '|' .. m.deliveries .. '|' .. m.token)
end

local function ready_score(m)
  return (9 - m.prio) * SEQ_SPAN + m.seq
end

local function is_queued(k, id)
  return redis.call('HEXISTS', k.meta, id) == 1
end

-- Remove a message from every live structure (its body and meta too).
local function forget(k, id)
  redis.call('ZREM', k.ready, id)
  redis.call('ZREM', k.delayed, id)
  redis.call('ZREM', k.leased, id)
  redis.call('HDEL', k.body, id)
  redis.call('HDEL', k.meta, id)
end

local function bury(k, id, m, reason, error_type, error_message, traceback)
  local body = redis.call('HGET', k.body, id)
  forget(k, id)
  redis.call('HSET', k.deadbody, id, body or '')
  redis.call('HSET', k.deadinfo, id, cjson.encode({reason = reason, error_type = error_type,
    error_message = error_message, traceback = traceback, deliveries = m.deliveries, priority = m.prio}))
  redis.call('ZADD', k.dead, dead_score(), id)
end

-- The caller holds the message if its token matches (leased, or lease expired and not re-fetched).
local function held(k, id, token)
  local m = read_meta(k, id)
  if m and m.token ~= '' and m.token == token then return m end
  return nil
end

-- The sooner of ``soonest`` (-1: none yet) and the ms from ``now`` until queue k's next delayed
-- message or lease expiry falls due.
local function soonest_due(k, now, soonest)
  for _, key in ipairs({k.delayed, k.leased}) do
    local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if head[2] then
      local wait = math.max(tonumber(head[2]) - now, 0)
      if soonest < 0 or wait < soonest then soonest = wait end
    end
  end
  return soonest
end

-- Parked workers. An idle worker parks (park.lua): its park key '<prefix>:park:<worker id>' holds
-- 'nonce|lease_ms' until its wait ends, its id sits in each served queue's `waiters`, and it blocks
-- in BLPOP on its inboxes, one list per queue ('<prefix>:{queue}:inbox:<worker id>'), until its
-- park key expires (or a little after). A script
-- that makes a message ready hands it straight to a parked worker: leased as a fetch leases it
-- (token '<nonce>.0'), pushed onto the inbox as 'id\0token\0priority\0deliveries\0body', so the
-- worker's wait returns with it and no fetch comes between. One message per park: the hand-off
-- deletes the park key. An empty row only wakes the worker (a delayed message falls due sooner).
local function inbox_key(k, cid)
  return string.sub(k.ready, 1, -6) .. 'inbox:' .. cid  -- '<prefix>:{queue}:ready' -> ':inbox:<id>'
end

local function park_key(k, cid)
  return string.sub(k.seq, 1, -4) .. 'park:' .. cid  -- '<prefix>:seq' -> '<prefix>:park:<id>'
end

-- What a park was handed (the message id), kept for the lease: if the reply to the worker's BLPOP
-- is lost, the row is gone from its inbox and only this finds the message (park.lua's 'recover').
local function handed_key(k, nonce)
  return string.sub(k.seq, 1, -4) .. 'handed:' .. nonce
end

-- Take a parked worker of queue k whose park lasts until at least `until_ms`: its id and park
-- value, or nil. (Parks that ended are dropped by park.lua.)
local function claim_waiter(k, now, until_ms)
  while true do
    local cid = redis.call('ZRANGEBYSCORE', k.waiters, until_ms, '+inf', 'LIMIT', 0, 1)[1]
    if not cid then return nil end
    redis.call('ZREM', k.waiters, cid)
    local park = redis.call('GET', park_key(k, cid))
    if park then
      redis.call('DEL', park_key(k, cid))
      return cid, park
    end  -- it was handed a message from another queue already
  end
end

-- Hand queue k's best ready messages to its parked workers, one each, while both last. With no
-- worker parked (a busy system, or producers alone) it costs one command.
local function hand_off(k, now)
  while true do
    if not redis.call('ZRANGEBYSCORE', k.waiters, now, '+inf', 'LIMIT', 0, 1)[1] then return end
    local id = redis.call('ZRANGE', k.ready, 0, 0)[1]
    if not id then return end
    local cid, park = claim_waiter(k, now, now)
    if not cid then return end
    local nonce, lease = string.match(park, '^([^|]+)|(%d+)$')
    if not nonce then return end  -- a park this script cannot read: hand nothing, change nothing
    local m = read_meta(k, id)
    local inbox = inbox_key(k, cid)
    redis.call('ZREM', k.ready, id)
    m.deliveries = m.deliveries + 1
    m.token = nonce .. '.0'
    write_meta(k, id, m)
    redis.call('ZADD', k.leased, now + tonumber(lease), id)
    local body = redis.call('HGET', k.body, id) or ''
    redis.call('RPUSH', inbox, id .. '\0' .. m.token .. '\0' .. m.prio .. '\0' .. m.deliveries .. '\0' .. body)
    redis.call('PEXPIRE', inbox, tonumber(lease))
    redis.call('SET', handed_key(k, nonce), id, 'PX', math.max(tonumber(lease), 1))
  end
end

-- A message of queue k falls due at `due` (ms): wake one parked worker that would sleep past it.
local function wake_for(k, now, due)
  local cid = claim_waiter(k, now, due + 1)
  if cid then
    local inbox = inbox_key(k, cid)
    redis.call('RPUSH', inbox, '')
    redis.call('PEXPIRE', inbox, 60000)
  end
end
