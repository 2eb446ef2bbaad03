-- tollhouse: admit one request, atomically (one round trip). Runs after gcra.lua and grants.lua.
--
-- Checks concurrency (a sorted set of leases scored by their expiry in Redis server time), then
-- every tier of every limit, and charges all of them or none, exactly as tollhouse_core's
-- `Ledger::admit`: tiers drain shortest window first, a charge may spill over into longer windows,
-- only the last tier may go below zero; `requests`/`points` limits admit when the tiers together
-- hold the charge, `latency_ms` limits while they hold more than zero.
--
-- KEYS[1]   the org's lease set (sorted set: lease id -> expiry, Redis server ms)
-- KEYS[2]   the org's window index (sorted set: counter key -> when it may go, instance ms)
-- KEYS[3..] one counter per tier of every limit, in plan order, named by the window's start
-- then, with a grant part (ARGV[9] > 0): the org's grants (hash), when they lapse (sorted set),
--           and the counters of the grant given back
--
-- ARGV[1]   now (instance clock, ms)
-- ARGV[2]   margin (ms): index entries whose counter could go this long ago are dropped (0)
-- ARGV[3]   concurrency limit (0: none)
-- ARGV[4]   lease id to add when admitted: every admitted request holds a lease while in flight,
--           so the lease set counts an org's requests in flight with or without a limit
-- ARGV[5]   lease time to live (ms)
-- ARGV[6]   number of limits
-- ARGV[7]   deadline (Redis server ms; 0: none): the instance stops waiting for the reply then,
--           so a script that runs later (Redis was stalled) charges nothing
-- ARGV[8]   number of counters (the keys from KEYS[3] that are counters)
-- ARGV[9]   where the grant part starts in ARGV (0: none); limits start at ARGV[10]
-- then per limit: latency (1 or 0), amount to charge, number of tiers n,
--                 then n times: capacity, when the counter may go (instance ms: the window's end
--                 plus a margin no longer than the window);
--                 or for a rate, n = 0, then its emission interval (µs) and burst: its one key
--                 holds its theoretical arrival time (µs on Redis's clock; see tollhouse_core's
--                 `Gcra`, whose integer arithmetic this repeats)
--
-- The grant part (an instance's quota grant: see grants.lua): the grant to give back first (its
-- id, 0 for none, the number k of its counters, then the unused units of each), then the grant to
-- take once the request is admitted (its id, 0 for none; how long it lives, ms; the share of the
-- room it may take, 1/d, split among the instances holding grants; then per limit, the units
-- wanted and the fewest worth taking; then the concurrency slots wanted and the fewest worth
-- taking, and the members the slots get: a prefix and the first of consecutive lease numbers). Every limit of a granted plan has tiers; a grant takes from
-- each limit's first tier only, after the request's own charge, and is all or nothing.
--
-- Returns {status, in flight, server µs, used..., granted...}: status 1 admitted, 0 rejected by a
-- limit, 2 rejected for concurrency, 3 too late (past the deadline; nothing else follows, and
-- nothing was given back); the live leases after this request when the plan limits concurrency
-- (-1 when it does not); Redis's clock when the script ran, in microseconds; what each counter held
-- before this request (after the grant given back); then, when a grant was taken, the units it
-- took of each limit and the concurrency slots it took (leases held by the instance).

if redis.replicate_commands then
  redis.replicate_commands()
end

local time = redis.call('TIME')
local server_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local server_ms = math.floor(server_us / 1000)
local deadline = tonumber(ARGV[7])
if deadline > 0 and server_ms > deadline then
  return { 3, 0, server_us }
end

local counters = tonumber(ARGV[8])
local grant_at = tonumber(ARGV[9])
local grants, lapses = KEYS[counters + 3], KEYS[counters + 4]
if grant_at > 0 and ARGV[grant_at] ~= '0' then
  grant_give_back(grants, lapses, ARGV[grant_at], counters + 5, grant_at + 2,
    tonumber(ARGV[grant_at + 1]))
end

local used = {}
if counters > 0 then
  local values = redis.call('MGET', unpack(KEYS, 3, counters + 2))
  for i = 1, #values do
    used[i + 2] = tonumber(values[i]) or 0
  end
end

local in_flight = 0
local granted = nil
local function reply(status)
  local out = { status, in_flight, server_us }
  for i = 3, counters + 2 do
    out[#out + 1] = used[i]
  end
  if granted then
    for i = 1, #granted do
      out[#out + 1] = granted[i]
    end
  end
  return out
end

-- Only a plan that limits concurrency counts the leases: the live ones, without pruning (the
-- renewals prune what expired). Without a limit, the count is left to the usage reads (-1).
local concurrency = tonumber(ARGV[3])
if concurrency > 0 then
  in_flight = redis.call('ZCOUNT', KEYS[1], '(' .. server_ms, '+inf')
  if in_flight >= concurrency then
    return reply(2)
  end
else
  in_flight = -1
end

-- First pass: does every limit hold its charge? No tables: the arguments are read in place.
local limit_count = tonumber(ARGV[6])
local pos = 10
local key = 3
-- What each limit holds beyond the charge, all its tiers together (a last tier in debt included).
local spare = {}
for l = 1, limit_count do
  local latency = ARGV[pos] == '1'
  local amount = tonumber(ARGV[pos + 1])
  local n = tonumber(ARGV[pos + 2])
  pos = pos + 3
  local available = 0
  if n == 0 then
    local interval = tonumber(ARGV[pos])
    local backlog = math.max(used[key] - server_us, 0)
    available = tonumber(ARGV[pos + 1]) - ceil_div(backlog, interval)
    pos = pos + 2
    key = key + 1
  end
  for t = 1, n do
    local remaining = tonumber(ARGV[pos]) - used[key]
    if t < n and remaining < 0 then
      remaining = 0
    end
    available = available + remaining
    pos = pos + 2
    key = key + 1
  end
  if (latency and available <= 0) or (not latency and available < amount) then
    return reply(0)
  end
  spare[l] = available - amount
end

-- Second pass: charge, shortest window first. A counter created here gets its time to live (until
-- it may go, on the instance's clock) and an entry in the index.
local now = tonumber(ARGV[1])
local margin = tonumber(ARGV[2])
local pruned = false
local function new_counter(counter, ends)
  local ttl = math.max(math.max(tonumber(ends) - now, 0) + margin, 1)
  redis.call('PEXPIRE', counter, ttl)
  redis.call('ZADD', KEYS[2], ends, counter)
  if not pruned then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - margin)
    pruned = true
  end
  if redis.call('PTTL', KEYS[2]) < ttl then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
-- Each limit's first tier: its key, capacity, when it may go, and what it holds after the charge.
local firsts = {}
pos = 10
key = 3
for _ = 1, limit_count do
  local left = tonumber(ARGV[pos + 1])
  local n = tonumber(ARGV[pos + 2])
  pos = pos + 3
  if n == 0 then
    if left > 0 then
      local tat = gcra_charged(used[key], server_us, left, tonumber(ARGV[pos]))
      gcra_store(KEYS[key], KEYS[2], tat, server_us, now)
    end
    pos = pos + 2
    key = key + 1
  end
  for t = 1, n do
    local after = used[key]
    if left > 0 then
      local take = left
      if t < n then
        take = math.min(left, math.max(tonumber(ARGV[pos]) - used[key], 0))
      end
      if take > 0 then
        after = redis.call('INCRBY', KEYS[key], take)
        if after == take then
          new_counter(KEYS[key], ARGV[pos + 1])
        end
        left = left - take
      end
    end
    if t == 1 then
      firsts[#firsts + 1] = { key = KEYS[key], capacity = tonumber(ARGV[pos]), ends = ARGV[pos + 1],
        after = after }
    end
    pos = pos + 2
    key = key + 1
  end
end

-- A grant: 1/d of what each limit's first tier has left, shared by the instances holding grants,
-- at most what is wanted; none if any limit's share is below the fewest worth taking.
local function take_grant(at)
  local id = ARGV[at]
  if id == '0' or #firsts ~= limit_count then
    return nil
  end
  local life = tonumber(ARGV[at + 1])
  local holders = grant_live(grants, lapses, server_ms) + 1
  local divisor = tonumber(ARGV[at + 2]) * holders
  local sizes = {}
  for l = 1, limit_count do
    local want = tonumber(ARGV[at + 1 + 2 * l])
    -- The first tier's room, but never more than the limit holds in all (a debt counts).
    local room = math.min(firsts[l].capacity - firsts[l].after, spare[l])
    local size = math.min(want, math.floor(math.max(room, 0) / divisor))
    if size < tonumber(ARGV[at + 2 + 2 * l]) then
      return nil
    end
    sizes[l] = size
  end
  -- Slots of a concurrency limit: leases held by the instance, renewed with its other leases.
  local slot_at = at + 3 + 2 * limit_count
  local slots = 0
  if concurrency > 0 then
    slots = math.min(tonumber(ARGV[slot_at]),
      math.floor(math.max(concurrency - in_flight, 0) / divisor))
    if slots < tonumber(ARGV[slot_at + 1]) then
      return nil
    end
  end
  local charged = {}
  for l = 1, limit_count do
    local first = firsts[l]
    if sizes[l] > 0 then
      if redis.call('INCRBY', first.key, sizes[l]) == sizes[l] then
        new_counter(first.key, first.ends)
      end
      charged[#charged + 1] = sizes[l] .. ' ' .. #first.key .. ' ' .. first.key
    end
  end
  local first_lease = tonumber(ARGV[slot_at + 3])
  for i = 0, slots - 1 do
    redis.call('ZADD', KEYS[1], server_ms + tonumber(ARGV[5]),
      ARGV[slot_at + 2] .. string.format('%.0f', first_lease + i))
  end
  sizes[limit_count + 1] = slots
  redis.call('HSET', grants, id, table.concat(charged, ' '))
  redis.call('ZADD', lapses, server_ms + life, id)
  -- Only ever later: instances may give their grants different lives.
  for _, held in ipairs({ grants, lapses }) do
    if redis.call('PTTL', held) < life * 2 then
      redis.call('PEXPIRE', held, life * 2)
    end
  end
  return sizes
end

local ttl = tonumber(ARGV[5])
redis.call('ZADD', KEYS[1], server_ms + ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
if in_flight >= 0 then
  in_flight = in_flight + 1
end

if grant_at > 0 then
  granted = take_grant(grant_at + 2 + tonumber(ARGV[grant_at + 1]))
end
return reply(1)
