-- Operations on one queue. KEYS: its group. ARGV: op, then 'all' or 'ids' followed by the ids.
--   purge: delete ready and delayed messages (and expired leases) | retry_dead | purge_dead
-- Returns how many messages it changed.
local k = queue_keys(1)
local op = ARGV[1]
local now = now_ms()
local count = 0
if op == 'purge' then
  local doomed = redis.call('ZRANGE', k.ready, 0, -1)
  for _, id in ipairs(redis.call('ZRANGE', k.delayed, 0, -1)) do table.insert(doomed, id) end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k.leased, '-inf', now)) do table.insert(doomed, id) end
  for _, id in ipairs(doomed) do forget(k, id); count = count + 1 end
  return count
end
local ids = {}
if ARGV[2] == 'all' then ids = redis.call('ZRANGE', k.dead, 0, -1)
else for i = 3, #ARGV do table.insert(ids, ARGV[i]) end end
for _, id in ipairs(ids) do
  if redis.call('ZSCORE', k.dead, id) then
    if op == 'purge_dead' then
      redis.call('ZREM', k.dead, id)
      redis.call('HDEL', k.deadinfo, id)
      redis.call('HDEL', k.deadbody, id)
      count = count + 1
    elseif op == 'retry_dead' and not is_queued(k, id) then
      local info = cjson.decode(redis.call('HGET', k.deadinfo, id))
      local m = {prio = info.priority, seq = redis.call('INCR', k.seq), deliveries = 0, token = ''}
      write_meta(k, id, m)
      redis.call('HSET', k.body, id, redis.call('HGET', k.deadbody, id))
      redis.call('ZADD', k.ready, ready_score(m), id)
      redis.call('ZREM', k.dead, id)
      redis.call('HDEL', k.deadinfo, id)
      redis.call('HDEL', k.deadbody, id)
      count = count + 1
    end
  end
end
if op == 'retry_dead' and count > 0 then hand_off(k, now) end
return count
