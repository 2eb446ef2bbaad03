-- tollhouse: read the part of an org's usage a usage route shows (one round trip, read only).
--
-- KEYS[1]   the org's lease set (sorted set: lease id -> expiry, Redis server ms)
-- KEYS[2]   the org's current local date (days since 0001-01-01)
-- KEYS[3]   the day hash of the asked date (b = billable calls, a = admitted calls)
-- KEYS[4]   endpoint calls of the asked date
-- KEYS[5]   endpoint points of the asked date
-- KEYS[6]   repeated requests of the asked date (sorted set: entry hash -> count)
-- KEYS[7]   what each repeated request is (hash: entry hash -> "first last method \n path")
-- KEYS[8]   the call log
-- KEYS[9]   what each instance's quota grants add to the lease set's count to make its requests
--           in flight (hash: instance -> "adjustment until-ms": requests admitted without a lease,
--           less slots held idle)
-- KEYS[10..] the day hashes of the billing days, oldest first
--
-- ARGV[1]   the asked date (days since 0001-01-01)
-- ARGV[2]   calls of the log to read (0: none)
-- ARGV[3]   repeated requests to read at most (0: no report)
-- ARGV[4]   the count from which a request is reported as repeated
-- ARGV[5]   the reading instance's field in KEYS[9] (it adds its own count, which is fresher)
--
-- Returns {in flight, current (1/0), admitted, {billable...}, {endpoint calls}, {endpoint points},
--          {entry, count, info, ...}, {calls}}; the report parts are empty unless the asked date is
--          the org's current date and the report was asked for. Every read is bounded: the
--          endpoint hashes hold at most their cap, the repeated requests are the top N, the log
--          the last N.

local time = redis.call('TIME')
local server_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local in_flight = redis.call('ZCOUNT', KEYS[1], '(' .. server_ms, '+inf')
local granted = redis.call('HGETALL', KEYS[9])
for i = 1, #granted, 2 do
  local count, till = string.match(granted[i + 1], '^(-?%d+) (%d+)$')
  if granted[i] ~= ARGV[5] and count and tonumber(till) > server_ms then
    in_flight = in_flight + tonumber(count)
  end
end

in_flight = math.max(in_flight, 0)

local billable = {}
for i = 10, #KEYS do
  billable[#billable + 1] = tonumber(redis.call('HGET', KEYS[i], 'b')) or 0
end

local log_count = tonumber(ARGV[2])
local report_rows = tonumber(ARGV[3])
local today = tonumber(redis.call('GET', KEYS[2]))
local current = today ~= nil and today == tonumber(ARGV[1])
local admitted = 0
local calls, points, repeated = {}, {}, {}
if current then
  admitted = tonumber(redis.call('HGET', KEYS[3], 'a')) or 0
  if report_rows > 0 then
    calls = redis.call('HGETALL', KEYS[4])
    points = redis.call('HGETALL', KEYS[5])
    local top = redis.call('ZREVRANGEBYSCORE', KEYS[6], '+inf', ARGV[4], 'WITHSCORES', 'LIMIT', 0,
      report_rows)
    if #top > 0 then
      local entries = {}
      for i = 1, #top, 2 do
        entries[#entries + 1] = top[i]
      end
      local info = redis.call('HMGET', KEYS[7], unpack(entries))
      for i = 1, #entries do
        if info[i] then
          repeated[#repeated + 1] = entries[i]
          repeated[#repeated + 1] = top[2 * i]
          repeated[#repeated + 1] = info[i]
        end
      end
    end
  end
end

local log = {}
if log_count > 0 then
  log = redis.call('LRANGE', KEYS[8], 0, log_count - 1)
end

return {
  in_flight,
  current and 1 or 0,
  admitted,
  billable,
  calls,
  points,
  repeated,
  log,
}
