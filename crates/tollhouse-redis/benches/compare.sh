#!/usr/bin/env bash
# Admissions per second through RedisStore against redis-benchmark running the same EVALSHA, on the
# same Redis, in the same run.
#
#   crates/tollhouse-redis/benches/compare.sh            # starts its own redis-server
#   REQUESTS=200000 CLIENTS=50 PIPELINE=1 MEASURE=5 crates/tollhouse-redis/benches/compare.sh
#
# redis-benchmark calls src/admit.lua with exactly the keys and arguments RedisStore sends for the
# bench's plan (benches/redis.rs: `points` minute + hour, `daily` day, cost 3, 2026-03-10T12:00:30Z,
# no concurrency limit, a lease added as every admission adds one; no deadline, which RedisStore
# computes per call and the script compares with Redis's clock either way), from CLIENTS
# connections, one command at a time each (-P 1). The Rust bench keeps 64 admissions in flight on
# its one multiplexed connection.
set -euo pipefail

cd "$(dirname "$0")/../../.."
REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
MEASURE=${MEASURE:-5}

for tool in redis-server redis-cli redis-benchmark jq; do
  command -v "$tool" >/dev/null || { echo "compare.sh needs $tool on PATH" >&2; exit 1; }
done

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.05; done

SHA=$(redis-cli -p "$PORT" SCRIPT LOAD "$(cat crates/tollhouse-redis/src/gcra.lua crates/tollhouse-redis/src/admit.lua)")

# The instant and the windows RedisStore computes for it (UTC zone).
NOW=1773144030000           # 2026-03-10T12:00:30Z
MINUTE=1773144000000; MINUTE_END=1773144060000
HOUR=1773144000000;   HOUR_END=1773147600000
DAY=1773100800000;    DAY_END=1773187200000
MARGIN=60000
CAP=1000000000000
ttl() { echo $(( $1 - NOW + MARGIN )); }
P='bench:{acme}'

KEYS=("$P:c" "$P:w" "$P:l:points:minute:$MINUTE" "$P:l:points:hour:$HOUR" "$P:l:daily:day:$DAY")
ARGS=("$NOW" "$MARGIN" 0 "bench-lease" 15000 2 0
      0 3 2 "$CAP" "$(ttl $MINUTE_END)" "$MINUTE_END" "$CAP" "$(ttl $HOUR_END)" "$HOUR_END"
      0 1 1 "$CAP" "$(ttl $DAY_END)" "$DAY_END")

echo "== redis-benchmark: EVALSHA admit.lua, $REQUESTS requests, $CLIENTS clients, -P ${PIPELINE:-1}"
redis-cli -p "$PORT" EVALSHA "$SHA" "${#KEYS[@]}" "${KEYS[@]}" "${ARGS[@]}" | head -1 \
  | grep -qx 1 || { echo "the EVALSHA was not admitted" >&2; exit 1; }
RAW=$(redis-benchmark -p "$PORT" -n "$REQUESTS" -c "$CLIENTS" -P "${PIPELINE:-1}" --csv \
  EVALSHA "$SHA" "${#KEYS[@]}" "${KEYS[@]}" "${ARGS[@]}" | tail -1)
RAW_RATE=$(echo "$RAW" | cut -d, -f2 | tr -d '"')
echo "redis-benchmark: $RAW_RATE EVALSHA/s"

echo "== RedisStore: cargo bench -p tollhouse-redis --bench redis"
TOLLHOUSE_REDIS_URL="redis://127.0.0.1:$PORT/" cargo bench -p tollhouse-redis --bench redis -- \
  --warm-up-time 2 --measurement-time "$MEASURE" 'redis_store/admit/' >/dev/null
EST=target/criterion/redis_store/admit/64/new/estimates.json
NS=$(jq '.mean.point_estimate' "$EST")
STORE_RATE=$(python3 -c "print(round(1e9 / $NS))")
echo "RedisStore:      $STORE_RATE admissions/s (mean $NS ns per admission)"
python3 -c "print(f'ratio: {$STORE_RATE / $RAW_RATE:.0%} of redis-benchmark (target: at least 70%)')"
