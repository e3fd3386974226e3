-- Shared by every script (prepended when the scripts are registered).
-- Per queue, KEYS come in groups of 9, in this order:
--   ready (zset, score = (9 - priority) * 2^40 + seq), delayed (zset, score = run-at ms),
--   leased (zset, score = lease expiry ms), body (hash id -> body), meta (hash id -> "prio|seq|deliveries|token"),
--   dead (zset, score = dead-at in microseconds), deadinfo (hash id -> JSON), deadbody (hash id -> body), seq (counter)
local GROUP = 9
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
          seq = KEYS[base + 9]}
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
