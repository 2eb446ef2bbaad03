#!/usr/bin/env bash
# Redis's own work per request, and the demo's throughput with Redis beside the memory store, in
# one run: the demo's shipped policy, `wrk -t2 -c32` on `GET /v1/items` for one org and for 1,000
# orgs (a key each, round robin), Redis's CPU time (INFO cpu) and INFO commandstats.
#
# Two policies: the `build` plan as shipped (its concurrency limit raised to 100,000, so that 32
# connections are not refused), and the same plan without a concurrency limit; each on the memory
# store, on Redis, and on Redis with quota grants (`--grants`: a hot org's requests admitted in
# memory from quota and concurrency slots taken in advance).
#
#   crates/tollhouse-redis/benches/redis_work.sh            # 10 s per run
#   DURATION=20 crates/tollhouse-redis/benches/redis_work.sh
set -euo pipefail

cd "$(dirname "$0")/../../.."
DURATION=${DURATION:-10}
for tool in redis-server redis-cli wrk python3; do
  command -v "$tool" >/dev/null || { echo "redis_work.sh needs $tool on PATH" >&2; exit 1; }
done

cargo build --release -q -p tollhouse-demo
DEMO=target/release/tollhouse-demo
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A policy of the shipped plans plus 1,000 orgs on the build plan with a day's quota nobody reaches.
python3 - "$WORK/policy.toml" <<'PY'
import re, sys
text = open("examples/demo/policy.toml").read()
text = text.replace("capacity = 2500", "capacity = 100000000").replace("capacity = 100 }", "capacity = 100000000 }")
orgs = "".join(
    f'\n[[orgs]]\nid = "bench-{n}"\nplan = "build"\nkeys = ["bench-key-{n:04}"]\n' for n in range(1000)
)
open(sys.argv[1], "w").write(text + orgs)
PY
sed -e 's/^concurrency = 3$//' -e 's/^concurrency_wait_ms = 0$//' "$WORK/policy.toml" > "$WORK/policy-nc.toml"
sed -i 's/^concurrency = 3$/concurrency = 100000/' "$WORK/policy.toml"
grep -q '^concurrency = 100000$' "$WORK/policy.toml" || { echo "the build plan's concurrency line moved" >&2; exit 1; }

# wrk sends each request with one of N keys, in turn.
cat > "$WORK/keys.lua" <<'LUA'
local n = tonumber(os.getenv("ORGS") or "1")
local i = 0
request = function()
  i = (i + 1) % n
  local key = n == 1 and "acme-key-1" or string.format("bench-key-%04d", i)
  return wrk.format("GET", "/v1/items", { ["Authorization"] = "Bearer " .. key })
end
LUA

start_demo() {
  local port=$(free_port)
  "$DEMO" --config "$WORK/$POLICY" --listen "127.0.0.1:$port" "$@" >"$WORK/demo.out" 2>"$WORK/demo.err" &
  DEMO_PID=$!
  until grep -q listening "$WORK/demo.out" 2>/dev/null; do
    kill -0 "$DEMO_PID" 2>/dev/null || { cat "$WORK/demo.err" >&2; exit 1; }
    sleep 0.05
  done
  DEMO_PORT=$port
}

stop_demo() { kill -TERM "$DEMO_PID"; wait "$DEMO_PID" 2>/dev/null || true; }

requests_per_s() { awk '/Requests\/sec/ {print $2}' "$1"; }
requests_done() { awk '/requests in/ {print $1}' "$1"; }

cpu() { redis-cli -p "$REDIS_PORT" info cpu | awk -F: '/used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'; }

run() { # store label, orgs, demo args...
  local label=$1 orgs=$2; shift 2
  start_demo "$@"
  ORGS=$orgs wrk -t2 -c32 -d2s -s "$WORK/keys.lua" "http://127.0.0.1:$DEMO_PORT/" >/dev/null   # warm up
  local before=0 after=0
  [ -n "${REDIS_PORT:-}" ] && { redis-cli -p "$REDIS_PORT" config resetstat >/dev/null; before=$(cpu); }
  ORGS=$orgs wrk -t2 -c32 -d"${DURATION}s" -s "$WORK/keys.lua" "http://127.0.0.1:$DEMO_PORT/" > "$WORK/wrk.out"
  [ -n "${REDIS_PORT:-}" ] && after=$(cpu)
  stop_demo
  local done=$(requests_done "$WORK/wrk.out") rps=$(requests_per_s "$WORK/wrk.out")
  if [ -n "${REDIS_PORT:-}" ]; then
    python3 - "$label" "$orgs" "$rps" "$done" "$before" "$after" <<'PY'
import sys
label, orgs, rps, done, before, after = sys.argv[1:]
us = (float(after) - float(before)) * 1e6 / float(done)
print(f"{label:8} {orgs:>5} orgs: {float(rps):9.0f} req/s, Redis CPU {us:5.1f} us/request")
PY
    # Command time: what the calls from clients took inside Redis (a script's own commands are
    # inside its EVALSHA's time).
    redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[:=,]' -v done="$done" '
      /^cmdstat_/ {
        name = substr($1, 9); calls[name] = $3; usec[name] = $5
      }
      END {
        top = usec["evalsha"] + usec["zrem"] + usec["mget"] + usec["zrange"]
        printf "           command time %.1f us/request (EVALSHA %.2f, ZREM %.2f calls/request)\n", top / done, calls["evalsha"] / done, calls["zrem"] / done
        n = 0
        for (name in calls) if (name != "evalsha" && name != "info" && name != "config|resetstat") { n += calls[name] }
        printf "           %.1f commands/request inside scripts and out\n", n / done
      }'
  else
    printf '%-8s %5s orgs: %9.0f req/s\n' "$label" "$orgs" "$rps"
  fi
}

with_redis() { # label, orgs, demo args...: a run on a redis-server of its own
  local label=$1 orgs=$2; shift 2
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
  until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done
  run "$label" "$orgs" --redis "redis://127.0.0.1:$REDIS_PORT/" "$@"
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  unset REDIS_PORT
}

echo "cores: $(nproc)"
for orgs in 1 1000; do
  echo "build plan, concurrency limit 100,000"
  POLICY=policy.toml
  run memory "$orgs" --state none
  with_redis redis "$orgs"
  with_redis grants "$orgs" --grants
  echo "build plan, no concurrency limit"
  POLICY=policy-nc.toml
  run memory "$orgs" --state none
  with_redis redis "$orgs"
  with_redis grants "$orgs" --grants
done
