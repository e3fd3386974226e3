-- KEYS: one group per queue. Returns {ready, delayed, in flight, dead} per queue, on Redis's clock,
-- and the soonest time (ms from now) something becomes fetchable, or -1.
local now = now_ms()
local out = {}
local soonest = -1
for q = 1, #KEYS / GROUP do
  local k = queue_keys(q)
  local ready = redis.call('ZCARD', k.ready) + redis.call('ZCOUNT', k.delayed, '-inf', now)
    + redis.call('ZCOUNT', k.leased, '-inf', now)
  table.insert(out, {ready, redis.call('ZCOUNT', k.delayed, '(' .. now, '+inf'),
    redis.call('ZCOUNT', k.leased, '(' .. now, '+inf'), redis.call('ZCARD', k.dead)})
  if ready > 0 then soonest = 0 end
  soonest = soonest_due(k, now, soonest)
end
table.insert(out, soonest)
return out
