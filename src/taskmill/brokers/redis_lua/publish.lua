-- KEYS: one queue group, then the set of known queue names. ARGV: the queue's name, then
-- (id, priority, delay_ms, body) per record. Ready messages go straight to parked workers.
-- Returns how many were new (an id that is still queued is skipped: publishing is idempotent).
-- One command per structure for the whole batch (HMGET, INCRBY, HSET, ZADD), not one per record.
local k = queue_keys(1)
redis.call('SADD', KEYS[GROUP + 1], ARGV[1])
local now = now_ms()
local ids = {}
for i = 2, #ARGV, 4 do table.insert(ids, ARGV[i]) end
local queued = many('HMGET', k.meta, ids)
local fresh, seen = {}, {}
for n, id in ipairs(ids) do
  if not queued[n] and not seen[id] then  -- the first copy of an id in a batch wins, as if sent one by one
    seen[id] = true
    table.insert(fresh, 2 + 4 * (n - 1))
  end
end
if #fresh == 0 then return 0 end
local seq = redis.call('INCRBY', k.seq, #fresh) - #fresh
local metas, bodies, ready, delayed = {}, {}, {}, {}
for _, i in ipairs(fresh) do
  local id, prio, delay = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  seq = seq + 1
  local m = {prio = prio, seq = seq, deliveries = 0, token = ''}
  table.insert(metas, id)
  table.insert(metas, m.prio .. '|' .. m.seq .. '|0|')
  table.insert(bodies, id)
  table.insert(bodies, ARGV[i + 3])
  if delay > 0 then
    table.insert(delayed, now + delay)
    table.insert(delayed, id)
  else
    table.insert(ready, ready_score(m))
    table.insert(ready, id)
  end
end
many('HSET', k.meta, metas)
many('HSET', k.body, bodies)
if #ready > 0 then
  many('ZADD', k.ready, ready)
  hand_off(k, now)
end
if #delayed > 0 then
  many('ZADD', k.delayed, delayed)
  local soonest = delayed[1]
  for i = 3, #delayed, 2 do soonest = math.min(soonest, delayed[i]) end
  wake_for(k, now, soonest)
end
return #fresh
