-- Ack, then lease up to `limit` messages across the queues, best priority first, then oldest.
-- KEYS: one group per queue. ARGV: limit, lease_ms, max_deliveries, dead_retention_ms, the
--   delivery-limit text, n_acks, then (queue index, id, token) per ack, then `limit` fresh tokens.
-- Returns {lost ack positions (1-based), buried, deliveries...} where each delivery is
--   {queue index, id, body, priority, deliveries, token} and each buried one (dead-lettered for
--   delivery_limit just now) {queue index, id, body, priority, deliveries}.
local limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_deliveries, retention, limit_text = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local n_acks = tonumber(ARGV[6])
local now = now_ms()
local lost, buried = {}, {}
local pos = 7
for a = 1, n_acks do
  local k = queue_keys(tonumber(ARGV[pos]))
  local id, token = ARGV[pos + 1], ARGV[pos + 2]
  if held(k, id, token) then forget(k, id) else table.insert(lost, a) end
  pos = pos + 3
end
local tokens_at = pos
local n_queues = #KEYS / GROUP
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
local out = {lost, buried}
local cursor = {}
for q = 1, n_queues do cursor[q] = 1 end
for n = 1, limit do
  local best, best_score = nil, nil
  for q = 1, n_queues do
    local h = heads[q]
    if h and h[cursor[q]] then
      local score = tonumber(h[cursor[q] + 1])
      if best_score == nil or score < best_score then best, best_score = q, score end
    end
  end
  if best == nil then break end
  local k = queue_keys(best)
  local id = heads[best][cursor[best]]
  cursor[best] = cursor[best] + 2
  local m = read_meta(k, id)
  redis.call('ZREM', k.ready, id)
  m.deliveries = m.deliveries + 1
  m.token = ARGV[tokens_at + n - 1]
  write_meta(k, id, m)
  redis.call('ZADD', k.leased, now + lease, id)
  table.insert(out, {best, id, redis.call('HGET', k.body, id), m.prio, m.deliveries, m.token})
end
return out
