-- Park an idle worker (see common.lua), or tell it to fetch now; or unpark it for good; or find
-- what a park was handed when the reply to its BLPOP was lost.
-- KEYS: one group per queue it serves. ARGV: 'park', its id, a fresh nonce, lease_ms, wait_ms, the
--   nonce of its last park ('' for none) | 'leave', its id | 'recover', its id, the park's nonce.
-- park returns -1 when a fetch would find something now (a ready message, a delayed one or an
--   expired lease due, or a row in its inboxes); else it parks the worker for wait_ms (shortened
--   to when the next delayed message or lease falls due) and returns that many ms (at least 1).
-- leave returns {queue index, row} for each message its inboxes still hold (the worker gives them
--   back), and parks it no more.
-- recover ends that park (its BLPOP failed: nobody listens to its inboxes now) and returns {queue
--   index, row} for the message handed to it if the worker still holds it (the row leaves the inbox,
--   if it is still there), else {}. Run twice, it answers the same (its reply may be lost too).
local op, cid = ARGV[1], ARGV[2]
local n_queues = #KEYS / GROUP
if op == 'recover' then
  local park = park_key(queue_keys(1), cid)
  if string.sub(redis.call('GET', park) or '', 1, #ARGV[3] + 1) == ARGV[3] .. '|' then redis.call('DEL', park) end
  for q = 1, n_queues do redis.call('ZREM', queue_keys(q).waiters, cid) end
  local id = redis.call('GET', handed_key(queue_keys(1), ARGV[3]))  -- kept: the next park or its expiry drops it
  if not id then return {} end
  local token = ARGV[3] .. '.0'
  for q = 1, n_queues do
    local k = queue_keys(q)
    local m = held(k, id, token)
    if m then
      local row = id .. '\0' .. token .. '\0' .. m.prio .. '\0' .. m.deliveries .. '\0' .. (redis.call('HGET', k.body, id) or '')
      redis.call('LREM', inbox_key(k, cid), 0, row)  -- a fetch must not find it there as well
      return {q, row}
    end
  end
  return {}
end
if op == 'leave' then
  redis.call('DEL', park_key(queue_keys(1), cid))
  local out = {}
  for q = 1, n_queues do
    local k = queue_keys(q)
    local inbox = inbox_key(k, cid)
    redis.call('ZREM', k.waiters, cid)
    for _, row in ipairs(redis.call('LRANGE', inbox, 0, -1)) do
      if row ~= '' then table.insert(out, {q, row}) end
    end
    redis.call('DEL', inbox)
  end
  return out
end

local now = now_ms()
if ARGV[6] and ARGV[6] ~= '' then redis.call('DEL', handed_key(queue_keys(1), ARGV[6])) end  -- received, or never handed
-- An earlier park of this worker ends here (a wait whose BLPOP failed leaves one): a worker that is
-- told to fetch now may not wait again soon (its fetch loop may move to another thread).
redis.call('DEL', park_key(queue_keys(1), cid))
for q = 1, n_queues do redis.call('ZREM', queue_keys(q).waiters, cid) end
local soonest = -1
for q = 1, n_queues do
  local k = queue_keys(q)
  if redis.call('ZCARD', k.ready) > 0 or redis.call('LLEN', inbox_key(k, cid)) > 0 then return -1 end
  soonest = soonest_due(k, now, soonest)
end
if soonest == 0 then return -1 end
local wait = math.max(tonumber(ARGV[5]), 1)
if soonest > 0 and soonest < wait then wait = soonest end
-- The park ends when the worker's BLPOP would (which starts a round trip later, so outlives it): a
-- message is handed only while the worker is still blocked on its inboxes, or about to be.
redis.call('SET', park_key(queue_keys(1), cid), ARGV[3] .. '|' .. ARGV[4], 'PX', wait)
for q = 1, n_queues do
  local waiters = queue_keys(q).waiters
  redis.call('ZREMRANGEBYSCORE', waiters, '-inf', now - 1)  -- parks that ended (their workers left or died)
  redis.call('ZADD', waiters, now + wait, cid)
end
return wait
