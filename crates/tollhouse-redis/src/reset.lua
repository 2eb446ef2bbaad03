-- tollhouse: forget what one limit (or every limit) of an org used in its current windows. Runs
-- after grants.lua.
--
-- The caller reads the org's window index first and passes the counters to forget, so that every
-- key the script touches is declared (Redis Cluster routes and checks declared keys). A counter
-- that quota grants still hold units of keeps those units (their holders may spend them): it is
-- set to what the live grants charged to it, and deleted when they charged nothing.
--
-- KEYS[1]   the org's window index (sorted set: counter key -> window end)
-- KEYS[2]   the org's grants (hash: grant id -> what it charged, see grants.lua)
-- KEYS[3..] the counters to forget
--
-- Returns how many counters were forgotten.

local held = grant_holdings(KEYS[2])

local forgotten = 0
for i = 3, #KEYS do
  local units = held[KEYS[i]]
  if units then
    if redis.call('SET', KEYS[i], units, 'KEEPTTL', 'XX') then
      forgotten = forgotten + 1
    end
  else
    forgotten = forgotten + redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], KEYS[i])
  end
end
return forgotten
