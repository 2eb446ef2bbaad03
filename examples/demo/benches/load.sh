#!/usr/bin/env bash
# Load test against the demo over loopback: the same small JSON route with and without the layer,
# in one run, with wrk. The policy gives the caller room for every request, so each one is admitted
# and pays the whole path: identity, 2 limits (points, daily), concurrency, both header families,
# settle and usage record.
#
#   examples/demo/benches/load.sh                  # DURATION=10s CONNECTIONS=32 THREADS=2
set -euo pipefail
cd "$(dirname "$0")/../../.."
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
command -v wrk >/dev/null || { echo "wrk is missing (Debian: apt-get install wrk)" >&2; exit 1; }

policy=$(mktemp --suffix .toml)
cat > "$policy" <<'TOML'
[plans.load]
concurrency = 1000
[[plans.load.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 1000000000 }]
[[plans.load.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 1000000000 }]

[[orgs]]
id = "load"
plan = "load"
time_zone = "Europe/Amsterdam"
keys = ["load-key"]
TOML

cargo build --release -q -p tollhouse-demo
out=$(mktemp)
RUST_LOG=warn target/release/tollhouse-demo --config "$policy" --listen 127.0.0.1:0 > "$out" &
demo=$!
trap 'kill $demo 2>/dev/null; rm -f "$policy" "$out"' EXIT
for _ in $(seq 1 100); do grep -q listening "$out" && break; sleep 0.05; done
base=$(sed -n 's/^tollhouse-demo listening on //p' "$out")

echo "== cores: $(nproc); wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
echo "== without the layer: GET /healthz"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$base/healthz" | grep -E "Requests/sec|Latency  |50%|99%|Non-2xx"
echo "== behind the layer: GET /v1/items (admitted, metered)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer load-key" "$base/v1/items" \
  | grep -E "Requests/sec|Latency  |50%|99%|Non-2xx"
