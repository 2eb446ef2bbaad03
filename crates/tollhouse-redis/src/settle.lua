-- tollhouse: settle one org's requests after their responses ended, and record its calls: a
-- batch of one org and one date, merged by the instance (one round trip per org per flush).
--
-- Corrections follow tollhouse_core's `Ledger::settle`: a latency debit or a higher real cost is
-- charged shortest window first (the last tier may go below zero); a lower real cost is given back
-- longest window first, only to tiers whose window has not changed since admission (the caller
-- passes a zero share for the others) and never below zero. The records follow
-- `UsageLedger::record`, counted together: billable and admitted calls summed, each endpoint's and
-- each repeated request's counts summed, the call log's entries pushed in one go.
--
-- KEYS[1]   the org's window index (sorted set: counter key -> window end, instance ms)
-- KEYS[2]   the call log (list, newest first)
-- KEYS[3]   the org's current local date (days since 0001-01-01)
-- KEYS[4]   the day hash of the date: b = billable calls, a = admitted calls
-- KEYS[5]   endpoint calls of that date (hash: method \n route -> calls)
-- KEYS[6]   endpoint points of that date (hash: method \n route -> points)
-- KEYS[7]   repeated requests of that date (sorted set: entry hash -> count)
-- KEYS[8]   what each repeated request is (hash: entry hash -> "first last method \n path")
-- KEYS[9..] the counters of every correction, in order
--
-- ARGV[1]   now (instance clock, ms)
-- ARGV[2]   margin (ms): index entries whose counter could go this long ago are dropped (0)
-- ARGV[3]   number of corrections
-- then per correction: kind ('c' charge or 'r' refund), amount, number of tiers n (0 for a rate,
--                      then its emission interval in µs and nothing more),
--                      then n times: capacity, counter ttl (ms), when the counter may go
--                      (instance ms: the index's score), share
--                      (for a refund, what the tier took at admission; 0 if its window changed)
-- then the records: date, calls kept, log ttl (ms), day ttl (ms), report ttl (ms),
--   billable calls, admitted calls, max endpoints, max repeated, the overflow endpoint field,
--   number of log entries e, then e encoded calls (oldest first),
--   number of endpoints p, then p times: field, calls, points,
--   number of repeated requests q, then q times: entry hash, count, first (ms), last (ms), display
--
-- Every step is O(1) or O(log n) in the size of the org's maps, and each key's time to live is
-- set when its date begins (the first batch of a date), not on every call.

if redis.replicate_commands then
  redis.replicate_commands()
end

local now = tonumber(ARGV[1])
local margin = tonumber(ARGV[2])
local pos = 4
local key = 9
local pruned = false

-- Redis's clock, read only when a rate is corrected.
local server_us = nil
local function correct_rate(kind, units, interval, rate_key)
  if server_us == nil then
    local time = redis.call('TIME')
    server_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
  end
  local tat = tonumber(redis.call('GET', rate_key)) or 0
  if kind == 'c' then
    gcra_store(rate_key, KEYS[1], gcra_charged(tat, server_us, units, interval), server_us, now)
  elseif tat > server_us then
    gcra_store(rate_key, KEYS[1], gcra_refunded(tat, server_us, units, interval), server_us, now)
  end
end

for _ = 1, tonumber(ARGV[3]) do
  local kind = ARGV[pos]
  local left = tonumber(ARGV[pos + 1])
  local n = tonumber(ARGV[pos + 2])
  pos = pos + 3
  if n == 0 then
    -- A rate: its emission interval (µs), then its one key.
    correct_rate(kind, left, tonumber(ARGV[pos]), KEYS[key])
    pos = pos + 1
    key = key + 1
  end
  if n > 0 then
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
end

if pos > #ARGV then
  return 0
end

local date = tonumber(ARGV[pos])
local kept = tonumber(ARGV[pos + 1])
local log_ttl = ARGV[pos + 2]
local day_ttl = ARGV[pos + 3]
local report_ttl = ARGV[pos + 4]
local billable = tonumber(ARGV[pos + 5])
local admitted = tonumber(ARGV[pos + 6])
local max_endpoints = tonumber(ARGV[pos + 7])
local max_repeated = tonumber(ARGV[pos + 8])
local other = ARGV[pos + 9]
pos = pos + 10

-- The org's date only moves forward; a late call for an earlier date counts as billable on its
-- date but not in today's report. The first batch of a date gives its keys their time to live.
local today = tonumber(redis.call('GET', KEYS[3]))
local new_date = today == nil or date > today
if new_date then
  redis.call('SET', KEYS[3], date, 'PX', day_ttl)
  today = date
end

if billable > 0 then
  redis.call('HINCRBY', KEYS[4], 'b', billable)
  if new_date or date < today then
    redis.call('PEXPIRE', KEYS[4], day_ttl)
  end
end

local entries = tonumber(ARGV[pos])
if entries > 0 then
  local length = redis.call('LPUSH', KEYS[2], unpack(ARGV, pos + 1, pos + entries))
  if length > kept then
    redis.call('LTRIM', KEYS[2], 0, kept - 1)
  end
  if new_date or length == entries then
    redis.call('PEXPIRE', KEYS[2], log_ttl)
  end
end
pos = pos + 1 + entries

if date ~= today then
  return 1
end

if admitted > 0 then
  redis.call('HINCRBY', KEYS[4], 'a', admitted)
end

local endpoints = tonumber(ARGV[pos])
pos = pos + 1
for _ = 1, endpoints do
  local field = ARGV[pos]
  if redis.call('HLEN', KEYS[5]) >= max_endpoints - 1
      and redis.call('HEXISTS', KEYS[5], field) == 0 then
    field = other
  end
  redis.call('HINCRBY', KEYS[5], field, ARGV[pos + 1])
  redis.call('HINCRBY', KEYS[6], field, ARGV[pos + 2])
  pos = pos + 3
end
if new_date and endpoints > 0 then
  redis.call('PEXPIRE', KEYS[5], report_ttl)
  redis.call('PEXPIRE', KEYS[6], report_ttl)
end

local repeated = tonumber(ARGV[pos])
pos = pos + 1
for _ = 1, repeated do
  local entry = ARGV[pos]
  local count = tonumber(ARGV[pos + 1])
  local at_first = tonumber(ARGV[pos + 2])
  local at_last = tonumber(ARGV[pos + 3])
  local display = ARGV[pos + 4]
  pos = pos + 5
  local info = redis.call('HGET', KEYS[8], entry)
  if info then
    local first, last = string.match(info, '^(%-?%d+) (%-?%d+) ')
    local rest = string.sub(info, #first + #last + 3)
    first = math.min(tonumber(first), at_first)
    last = math.max(tonumber(last), at_last)
    redis.call('ZINCRBY', KEYS[7], count, entry)
    redis.call('HSET', KEYS[8], entry, string.format('%d %d ', first, last) .. rest)
  else
    if redis.call('ZCARD', KEYS[7]) >= max_repeated then
      -- Forget the entry counted least (the lowest hash on a tie), as the memory store does.
      local least = redis.call('ZPOPMIN', KEYS[7])
      if least[1] then
        redis.call('HDEL', KEYS[8], least[1])
      end
    end
    redis.call('ZADD', KEYS[7], count, entry)
    redis.call('HSET', KEYS[8], entry, string.format('%d %d ', at_first, at_last) .. display)
  end
end
if new_date and repeated > 0 then
  redis.call('PEXPIRE', KEYS[7], report_ttl)
  redis.call('PEXPIRE', KEYS[8], report_ttl)
end
return 1
