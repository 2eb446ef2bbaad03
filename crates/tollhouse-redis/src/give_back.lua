-- tollhouse: give a quota grant back (runs after grants.lua).
--
-- KEYS[1]   the org's grants (hash: grant id -> what it charged)
-- KEYS[2]   when each grant lapses (sorted set)
-- KEYS[3..] the counters the grant charged
-- ARGV[1]   the grant id
-- ARGV[2..] the units of each counter it did not use
--
-- Returns 1 if the units were given back, 0 if the grant had been given back or had lapsed.

return grant_give_back(KEYS[1], KEYS[2], ARGV[1], 3, 2, #KEYS - 2)
