-- tollhouse: read an org's usage (one round trip, read only).
--
-- KEYS[1]   the org's lease set (sorted set: lease id -> expiry, Redis server ms)
-- KEYS[2]   the org's current local date (days since 0001-01-01)
-- KEYS[3]   the day hash of the asked date (b = billable calls, a = admitted calls)
-- KEYS[4]   endpoint calls of the asked date
-- KEYS[5]   endpoint points of the asked date
-- KEYS[6]   repeated requests of the asked date
-- KEYS[7]   the call log
-- KEYS[8..] the day hashes of the billing days, oldest first
--
-- ARGV[1]   the asked date (days since 0001-01-01)
--
-- Returns {in flight, current (1/0), admitted, {billable...}, {endpoint calls}, {endpoint points},
--          {repeated}, {calls}}; the report parts are empty unless the asked date is the org's
--          current date.

local time = redis.call('TIME')
local server_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local in_flight = redis.call('ZCOUNT', KEYS[1], '(' .. server_ms, '+inf')

local billable = {}
for i = 8, #KEYS do
  billable[#billable + 1] = tonumber(redis.call('HGET', KEYS[i], 'b')) or 0
end

local today = tonumber(redis.call('GET', KEYS[2]))
local current = today ~= nil and today == tonumber(ARGV[1])
local admitted = 0
local calls, points, repeated = {}, {}, {}
if current then
  admitted = tonumber(redis.call('HGET', KEYS[3], 'a')) or 0
  calls = redis.call('HGETALL', KEYS[4])
  points = redis.call('HGETALL', KEYS[5])
  repeated = redis.call('HGETALL', KEYS[6])
end

return {
  in_flight,
  current and 1 or 0,
  admitted,
  billable,
  calls,
  points,
  repeated,
  redis.call('LRANGE', KEYS[7], 0, -1),
}
