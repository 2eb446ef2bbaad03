-- tollhouse: settle one request after its response ended, and record the call (one round trip).
--
-- Corrections follow tollhouse_core's `Ledger::settle`: a latency debit or a higher real cost is
-- charged shortest window first (the last tier may go below zero); a lower real cost is given back
-- longest window first, only to tiers whose window has not changed since admission (the caller
-- passes a zero share for the others) and never below zero. The call record follows
-- `UsageLedger::record`.
--
-- KEYS[1]   the org's window index (sorted set: counter key -> window end, instance ms)
-- KEYS[2]   the call log (list, newest first)
-- KEYS[3]   the org's current local date (days since 0001-01-01)
-- KEYS[4]   the day hash of the call's date: b = billable calls, a = admitted calls
-- KEYS[5]   endpoint calls of that date (hash: method \n route -> calls)
-- KEYS[6]   endpoint points of that date (hash: method \n route -> points)
-- KEYS[7]   repeated requests of that date (hash: method \n path -> "count first last")
-- KEYS[8..] the counters of every correction, in order
--
-- ARGV[1]   now (instance clock, ms)
-- ARGV[2]   margin (ms)
-- ARGV[3]   number of corrections
-- then per correction: kind ('c' charge or 'r' refund), amount, number of tiers n,
--                      then n times: capacity, counter ttl (ms), window end (instance ms), share
--                      (for a refund, what the tier took at admission; 0 if its window changed)
-- then the record: '1' or '0' (nothing to record); when '1':
--   encoded call, calls kept, call log ttl (ms), date, day ttl (ms), report ttl (ms),
--   billable (1/0), admitted (1/0), endpoint field, points, repeat field, at (ms),
--   max endpoints, max repeated paths, the overflow endpoint field

if redis.replicate_commands then
  redis.replicate_commands()
end

local now = tonumber(ARGV[1])
local margin = tonumber(ARGV[2])
local pos = 4
local key = 8
local pruned = false

for _ = 1, tonumber(ARGV[3]) do
  local kind = ARGV[pos]
  local left = tonumber(ARGV[pos + 1])
  local n = tonumber(ARGV[pos + 2])
  pos = pos + 3
  local caps, ttls, ends, shares = {}, {}, {}, {}
  for t = 1, n do
    caps[t] = tonumber(ARGV[pos])
    ttls[t] = ARGV[pos + 1]
    ends[t] = ARGV[pos + 2]
    shares[t] = tonumber(ARGV[pos + 3])
    pos = pos + 4
  end
  local used = {}
  local values = redis.call('MGET', unpack(KEYS, key, key + n - 1))
  for t = 1, n do
    used[t] = tonumber(values[t]) or 0
  end
  if kind == 'c' then
    for t = 1, n do
      if left <= 0 then
        break
      end
      local take = left
      if t < n then
        take = math.min(left, math.max(caps[t] - used[t], 0))
      end
      if take > 0 then
        local k = key + t - 1
        local after = redis.call('INCRBY', KEYS[k], take)
        if after == take then
          redis.call('PEXPIRE', KEYS[k], ttls[t])
          redis.call('ZADD', KEYS[1], ends[t], KEYS[k])
          if not pruned then
            redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - margin)
            pruned = true
          end
          if redis.call('PTTL', KEYS[1]) < tonumber(ttls[t]) then
            redis.call('PEXPIRE', KEYS[1], ttls[t])
          end
        end
        left = left - take
      end
    end
  else
    for t = n, 1, -1 do
      if left <= 0 then
        break
      end
      local back = math.min(left, shares[t], math.max(used[t], 0))
      if back > 0 then
        redis.call('DECRBY', KEYS[key + t - 1], back)
        left = left - back
      end
    end
  end
  key = key + n
end

if ARGV[pos] ~= '1' then
  return 0
end

local encoded = ARGV[pos + 1]
local kept = tonumber(ARGV[pos + 2])
local log_ttl = ARGV[pos + 3]
local date = tonumber(ARGV[pos + 4])
local day_ttl = ARGV[pos + 5]
local report_ttl = ARGV[pos + 6]
local billable = ARGV[pos + 7] == '1'
local admitted = ARGV[pos + 8] == '1'
local endpoint = ARGV[pos + 9]
local points = tonumber(ARGV[pos + 10])
local path = ARGV[pos + 11]
local at = tonumber(ARGV[pos + 12])
local max_endpoints = tonumber(ARGV[pos + 13])
local max_repeated = tonumber(ARGV[pos + 14])
local other = ARGV[pos + 15]

-- The org's date only moves forward; a late call for an earlier date counts as billable on its
-- date but not in today's report.
local today = tonumber(redis.call('GET', KEYS[3]))
if today == nil or date > today then
  redis.call('SET', KEYS[3], date, 'PX', day_ttl)
  today = date
end

if billable then
  redis.call('HINCRBY', KEYS[4], 'b', 1)
  redis.call('PEXPIRE', KEYS[4], day_ttl)
end

if date == today then
  if admitted then
    redis.call('HINCRBY', KEYS[4], 'a', 1)
    redis.call('PEXPIRE', KEYS[4], day_ttl)
  end

  if redis.call('HEXISTS', KEYS[5], endpoint) == 0
      and redis.call('HLEN', KEYS[5]) >= max_endpoints - 1 then
    endpoint = other
  end
  redis.call('HINCRBY', KEYS[5], endpoint, 1)
  redis.call('HINCRBY', KEYS[6], endpoint, points)
  redis.call('PEXPIRE', KEYS[5], report_ttl)
  redis.call('PEXPIRE', KEYS[6], report_ttl)

  local current = redis.call('HGET', KEYS[7], path)
  if current then
    local count, first, last = string.match(current, '^(%-?%d+) (%-?%d+) (%-?%d+)$')
    count = tonumber(count) + 1
    first = math.min(tonumber(first), at)
    last = math.max(tonumber(last), at)
    redis.call('HSET', KEYS[7], path, string.format('%d %d %d', count, first, last))
  else
    local room = true
    if redis.call('HLEN', KEYS[7]) >= max_repeated then
      -- Make room by forgetting the paths seen least (at or below the median count); a path that
      -- repeats comes back quickly.
      local all = redis.call('HGETALL', KEYS[7])
      local counts = {}
      for i = 2, #all, 2 do
        counts[#counts + 1] = tonumber(string.match(all[i], '^(%-?%d+)'))
      end
      table.sort(counts)
      local cut = counts[math.floor(#counts / 2) + 1]
      for i = 1, #all, 2 do
        if tonumber(string.match(all[i + 1], '^(%-?%d+)')) <= cut then
          redis.call('HDEL', KEYS[7], all[i])
        end
      end
      room = redis.call('HLEN', KEYS[7]) < max_repeated
    end
    if room then
      redis.call('HSET', KEYS[7], path, string.format('%d %d %d', 1, at, at))
    end
  end
  redis.call('PEXPIRE', KEYS[7], report_ttl)
end

redis.call('LPUSH', KEYS[2], encoded)
redis.call('LTRIM', KEYS[2], 0, kept - 1)
redis.call('PEXPIRE', KEYS[2], log_ttl)
return 1
