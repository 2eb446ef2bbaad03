-- tollhouse: a smooth rate's arithmetic (tollhouse_core's `Gcra`), in integer microseconds on
-- Redis's clock. Put in front of the scripts that charge or correct a rate (admit.lua, settle.lua).
--
-- Every value stays below 2^53, where a Lua number (a double) is exact.

-- The deepest debt a rate holds, and the longest it takes to fill: 2^50 µs.
local GCRA_MAX_FILL_US = 1125899906842624

-- a / b rounded up, exactly, for integers 0 <= a < 2^53 and b >= 1 (a double's quotient alone
-- may round across an integer).
local function ceil_div(a, b)
  local q = math.floor(a / b)
  while q * b > a do
    q = q - 1
  end
  while (q + 1) * b <= a do
    q = q + 1
  end
  if q * b < a then
    q = q + 1
  end
  return q
end

-- The state after charging `units` at `now`: from `max(tat, now)`, the debt capped.
local function gcra_charged(tat, now, units, interval)
  local cost = math.min(units * interval, GCRA_MAX_FILL_US)
  return math.min(math.max(tat, now) + cost, now + GCRA_MAX_FILL_US)
end

-- The state after giving back `units` at `now`: never fuller than full.
local function gcra_refunded(tat, now, units, interval)
  if tat <= now then
    return tat
  end
  return math.max(tat - math.min(units * interval, GCRA_MAX_FILL_US), now)
end

-- Writes a rate's state `tat` to `key` (gone once full) and its entry in the org's counter index
-- (`index`, scored on the instance's clock `instance_ms`). Written as integers: a number handed
-- to Redis as is would be cut to 14 digits.
local function gcra_store(key, index, tat, now, instance_ms)
  if tat <= now then
    redis.call('DEL', key)
    return
  end
  local ttl = ceil_div(tat - now, 1000) + 1
  redis.call('SET', key, string.format('%.0f', tat), 'PX', string.format('%.0f', ttl))
  redis.call('ZADD', index, string.format('%.0f', instance_ms + ttl), key)
end

