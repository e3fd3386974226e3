-- Take the lock KEYS[1] for owner ARGV[1] for ARGV[2] ms, or renew it when that owner holds it.
-- Returns 1 if the owner holds the lock now, 0 if another owner does.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
