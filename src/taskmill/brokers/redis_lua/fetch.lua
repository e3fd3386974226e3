-- Ack, then lease up to `limit` messages across the queues, best priority first, then oldest.
-- KEYS: one group per queue. ARGV: limit, lease_ms, max_deliveries, dead_retention_ms, the
--   delivery-limit text, n_acks, then (queue index, id, token) per ack, then a fresh random nonce:
--   the n-th delivery of this call gets the token nonce .. '.' .. n, unique without a uuid each;
--   then the worker's park id ('' for none): what its inboxes hold comes first (see common.lua),
--   counted in `limit` (beyond it too: those are leased to it already), leased afresh from now.
-- Returns {lost ack positions (1-based), buried, deliveries...} where each delivery is
--   {queue index, id, body, priority, deliveries, token} and each buried one (dead-lettered for
--   delivery_limit just now) {queue index, id, body, priority, deliveries}. (When to look again
--   is park.lua's business.)
-- Acks and leases touch each structure with one command per queue (HMGET, ZREM, ...), not one per
-- message: a Lua redis.call costs more than the work it does.
local limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_deliveries, retention, limit_text = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local n_acks = tonumber(ARGV[6])
local nonce, cid = ARGV[7 + 3 * n_acks], ARGV[8 + 3 * n_acks] or ''
local now = now_ms()
local lost, buried = {}, {}

local acks = {}  -- queue index -> {ids, tokens, positions}
for a = 1, n_acks do
  local pos = 4 + 3 * a
  local q = tonumber(ARGV[pos])
  local group = acks[q]
  if not group then
    group = {ids = {}, tokens = {}, positions = {}}
    acks[q] = group
  end
  table.insert(group.ids, ARGV[pos + 1])
  table.insert(group.tokens, ARGV[pos + 2])
  table.insert(group.positions, a)
end
for q, group in pairs(acks) do
  local k = queue_keys(q)
  local metas = many('HMGET', k.meta, group.ids)
  local held_ids = {}
  for i = 1, #group.ids do
    local token = metas[i] and string.match(metas[i], '^%d+|%d+|%d+|(.*)$')
    if token and token ~= '' and token == group.tokens[i] then  -- leased, or expired and not re-fetched
      table.insert(held_ids, group.ids[i])
    else
      table.insert(lost, group.positions[i])
    end
  end
  if #held_ids > 0 then  -- a held message is leased or (lease expired) ready, never delayed
    many('ZREM', k.leased, held_ids)
    many('ZREM', k.ready, held_ids)
    many('HDEL', k.body, held_ids)
    many('HDEL', k.meta, held_ids)
  end
end
table.sort(lost)

local n_queues = #KEYS / GROUP
local handed = {}  -- deliveries a publish pushed onto this worker's inboxes, still its own
if limit > 0 and cid ~= '' then
  for q = 1, n_queues do
    local k = queue_keys(q)
    local inbox = inbox_key(k, cid)
    for _, row in ipairs(redis.call('LRANGE', inbox, 0, -1)) do
      local id, token = string.match(row, '^([^%z]*)%z([^%z]*)%z')
      local m = id and held(k, id, token)
      if m then  -- its lease runs from now: it may have waited in the inbox
        redis.call('ZADD', k.leased, now + lease, id)
        table.insert(handed, {q, id, redis.call('HGET', k.body, id) or '', m.prio, m.deliveries, token})
      end
    end
    redis.call('DEL', inbox)
  end
  limit = math.max(limit - #handed, 0)
end
local heads = {}
for q = 1, n_queues do
  local k = queue_keys(q)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k.delayed, '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', k.delayed, id)
    local m = read_meta(k, id)
    if m then redis.call('ZADD', k.ready, ready_score(m), id) end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k.leased, '-inf', now, 'LIMIT', 0, 1000)) do
    local m = read_meta(k, id)
    if not m then
      redis.call('ZREM', k.leased, id)
    elseif m.deliveries >= max_deliveries then
      table.insert(buried, {q, id, redis.call('HGET', k.body, id), m.prio, m.deliveries})
      bury(k, id, m, 'delivery_limit', '', limit_text, '')
    else  -- back to ready; the token stays, so a late holder may still settle it until re-fetched
      redis.call('ZREM', k.leased, id)
      redis.call('ZADD', k.ready, ready_score(m), id)
    end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k.dead, '-inf', (now - retention) * 1000, 'LIMIT', 0, 100)) do
    redis.call('ZREM', k.dead, id)
    redis.call('HDEL', k.deadinfo, id)
    redis.call('HDEL', k.deadbody, id)
  end
  if limit > 0 then heads[q] = redis.call('ZRANGE', k.ready, 0, limit - 1, 'WITHSCORES') end
end

-- Merge the queues' heads: the best `limit` in order, then lease them one queue at a time.
local picked = {}  -- {queue index, id} in delivery order
local chosen = {}  -- queue index -> ids
local cursor = {}
for q = 1, n_queues do cursor[q] = 1 end
for _ = 1, limit do
  local best, best_score = nil, nil
  for q = 1, n_queues do
    local h = heads[q]
    if h and h[cursor[q]] then
      local score = tonumber(h[cursor[q] + 1])
      if best_score == nil or score < best_score then best, best_score = q, score end
    end
  end
  if best == nil then break end
  local id = heads[best][cursor[best]]
  cursor[best] = cursor[best] + 2
  table.insert(picked, {best, id})
  chosen[best] = chosen[best] or {}
  table.insert(chosen[best], id)
end
local leased = {}  -- queue index -> id -> {body, priority, deliveries, token}
local serial = 0
for q, ids in pairs(chosen) do
  local k = queue_keys(q)
  local metas = many('HMGET', k.meta, ids)
  local bodies = many('HMGET', k.body, ids)
  local meta_pairs, lease_pairs, rows = {}, {}, {}
  for i, id in ipairs(ids) do
    local prio, seq, deliveries = string.match(metas[i] or '', '^(%d+)|(%d+)|(%d+)|')
    if prio then
      serial = serial + 1
      local token = nonce .. '.' .. serial
      deliveries = tonumber(deliveries) + 1
      table.insert(meta_pairs, id)
      table.insert(meta_pairs, prio .. '|' .. seq .. '|' .. deliveries .. '|' .. token)
      table.insert(lease_pairs, now + lease)
      table.insert(lease_pairs, id)
      rows[id] = {bodies[i] or '', tonumber(prio), deliveries, token}
    end
  end
  many('ZREM', k.ready, ids)
  if #meta_pairs > 0 then
    many('HSET', k.meta, meta_pairs)
    many('ZADD', k.leased, lease_pairs)
  end
  leased[q] = rows
end
local out = {lost, buried}
for _, row in ipairs(handed) do table.insert(out, row) end
for _, pick in ipairs(picked) do
  local row = leased[pick[1]][pick[2]]
  if row then table.insert(out, {pick[1], pick[2], row[1], row[2], row[3], row[4]}) end
end
return out
