-- tollhouse: quota grants (a slice of an org's room charged in advance to one instance, which
-- admits from it in memory). Put in front of the scripts that give grants back (admit.lua,
-- give_back.lua).
--
-- An org's grants are a hash (grant id -> "units length key units length key ...": what each
-- grant charged to which counter, each key preceded by its length, as keys may hold spaces) and a sorted set (grant id -> when it lapses, Redis server ms). A grant is given
-- back once: only the call that removes its id from the hash gives its units back, so a retried
-- or late give-back refunds nothing twice.

-- Gives back grant `id`: the unused units ARGV[first_arg + i] of counter KEYS[first_key + i], for
-- i in 0 .. count - 1, never below zero and never into a counter that is gone (its window ended).
-- Returns 1 if the grant was there, 0 if it had been given back (or had lapsed) already.
local function grant_give_back(hash, lapses, id, first_key, first_arg, count)
  if redis.call('HDEL', hash, id) == 0 then
    return 0
  end
  redis.call('ZREM', lapses, id)
  for i = 0, count - 1 do
    local units = tonumber(ARGV[first_arg + i])
    if units > 0 then
      local held = tonumber(redis.call('GET', KEYS[first_key + i]) or '0')
      if held > 0 then
        redis.call('DECRBY', KEYS[first_key + i], math.min(units, held))
      end
    end
  end
  return 1
end

-- Forgets the grants that lapsed by `server_ms` (their holders stopped spending them before; their
-- units stay charged until their windows end) and returns how many are live.
local function grant_live(hash, lapses, server_ms)
  local lapsed = redis.call('ZRANGEBYSCORE', lapses, '-inf', server_ms)
  if #lapsed > 0 then
    redis.call('HDEL', hash, unpack(lapsed))
    redis.call('ZREMRANGEBYSCORE', lapses, '-inf', server_ms)
  end
  return redis.call('ZCARD', lapses)
end

-- What the live grants in `hash` hold of each counter: counter key -> units.
local function grant_holdings(hash)
  local held = {}
  for _, charged in ipairs(redis.call('HVALS', hash)) do
    local at = 1
    while at <= #charged do
      local _, head, units, length = string.find(charged, '^(%d+) (%d+) ', at)
      if not head then
        break
      end
      local counter = string.sub(charged, head + 1, head + tonumber(length))
      held[counter] = (held[counter] or 0) + tonumber(units)
      at = head + tonumber(length) + 2
    end
  end
  return held
end
