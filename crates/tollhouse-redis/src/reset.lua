-- tollhouse: forget what one limit (or every limit) of an org used in its current windows.
--
-- The caller reads the org's window index first and passes the counters to forget, so that every
-- key the script touches is declared (Redis Cluster routes and checks declared keys).
--
-- KEYS[1]   the org's window index (sorted set: counter key -> window end)
-- KEYS[2..] the counters to delete
--
-- Returns how many counters were deleted.

local deleted = 0
for i = 2, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[i])
  redis.call('ZREM', KEYS[1], KEYS[i])
end
return deleted
