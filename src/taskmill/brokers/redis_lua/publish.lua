-- KEYS: one queue group, then the set of known queue names. ARGV: the queue's name, its notify
-- channel, then (id, priority, delay_ms, body) per record.
-- Returns how many were new (an id that is still queued is skipped: publishing is idempotent).
local k = queue_keys(1)
redis.call('SADD', KEYS[GROUP + 1], ARGV[1])
local now = now_ms()
local added = 0
for i = 3, #ARGV, 4 do
  local id, prio, delay = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if not is_queued(k, id) then
    local m = {prio = prio, seq = redis.call('INCR', k.seq), deliveries = 0, token = ''}
    write_meta(k, id, m)
    redis.call('HSET', k.body, id, ARGV[i + 3])
    if delay > 0 then
      redis.call('ZADD', k.delayed, now + delay, id)
    else
      redis.call('ZADD', k.ready, ready_score(m), id)
    end
    added = added + 1
  end
end
if added > 0 then redis.call('PUBLISH', ARGV[2], '1') end
return added
