-- Settle one delivery held by its token. KEYS: its queue group. ARGV: op, id, token, then
--   retry: delay_ms | release: nothing | extend: lease_ms |
--   dead: reason, error_type, error_message, traceback
-- Returns 1 when done, 0 when the lease was lost.
local k = queue_keys(1)
local op, id, token = ARGV[1], ARGV[2], ARGV[3]
local m = held(k, id, token)
if not m then return 0 end
local now = now_ms()
if op == 'extend' then
  redis.call('ZREM', k.ready, id)
  redis.call('ZADD', k.leased, now + tonumber(ARGV[4]), id)
elseif op == 'dead' then
  bury(k, id, m, ARGV[4], ARGV[5], ARGV[6], ARGV[7])
else
  redis.call('ZREM', k.leased, id)
  redis.call('ZREM', k.ready, id)
  m.token = ''
  local delay = 0
  if op == 'release' then m.deliveries = m.deliveries - 1 else delay = tonumber(ARGV[4]) end
  write_meta(k, id, m)
  if delay > 0 then
    redis.call('ZADD', k.delayed, now + delay, id)
    wake_for(k, now, now + delay)
  else
    redis.call('ZADD', k.ready, ready_score(m), id)
    hand_off(k, now)
  end
end
return 1
