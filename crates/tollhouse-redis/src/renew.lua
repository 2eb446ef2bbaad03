-- tollhouse: renew the leases this instance still holds (one round trip per org).
--
-- KEYS[1]   the org's lease set (sorted set: lease id -> expiry, Redis server ms)
-- ARGV[1]   lease time to live (ms)
-- ARGV[2..] the lease ids to renew; a lease already released or expired is not brought back
--
-- Returns how many leases were renewed.

if redis.replicate_commands then
  redis.replicate_commands()
end

local time = redis.call('TIME')
local server_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[1])
-- The leases of instances that stopped without releasing them: admissions count only live leases
-- and never prune, so the renewals do.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', server_ms)
local renewed = 0
for i = 2, #ARGV do
  local expiry = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if expiry and tonumber(expiry) > server_ms then
    redis.call('ZADD', KEYS[1], server_ms + ttl, ARGV[i])
    renewed = renewed + 1
  end
end
if renewed > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
return renewed
