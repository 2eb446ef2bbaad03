#!/usr/bin/env bash
# Coverage-guided fuzzing, bounded in time: builds every target of fuzz/fuzz_targets with cargo-fuzz
# and runs each for a fixed time, two at a time, starting from the seeds in fuzz/seeds/<target>/
# and the corpus earlier runs grew in fuzz/corpus/<target>/.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET (or FUZZ_SECONDS) defaults to 20, so that a cold build and every target take
# about four minutes on two cores. Other settings: FUZZ_JOBS (targets run at once, default 2),
# FUZZ_SANITIZER (default none: the crates forbid unsafe code, and the address sanitizer would
# slow the build and halve the executions), FUZZ_TARGET_DIR (the build cache, default
# ~/.cache/tollhouse-fuzz/target; CARGO_TARGET_DIR wins). Exits non-zero when a target crashes
# (a panic, an overflow, a failed check, a timeout), printing the input that reproduces it, saved
# under fuzz/artifacts/<target>/. Under CI=true nothing is ever skipped.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-${FUZZ_SECONDS:-20}}"
shift || true
jobs="${FUZZ_JOBS:-2}"
sanitizer="${FUZZ_SANITIZER:-none}"
ci="${CI:-false}"

# The longest input each target is given, in bytes.
declare -A max_len=(
  [policy_loader]=4096
  [window_bounds]=64
  [route_pattern]=512
  [bearer_token]=256
  [redis_codec]=1024
  [ledger_model]=1024
)
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(policy_loader window_bounds route_pattern bearer_token redis_codec ledger_model)
fi

give_up() {
  echo "fuzz: $1" >&2
  if [ "$ci" = true ]; then
    echo "fuzz: CI=true, so this is a failure" >&2
    exit 1
  fi
  echo "fuzz: skipped" >&2
  exit 0
}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked || give_up "cargo-fuzz could not be installed"
fi
# libFuzzer's instrumentation needs unstable flags: a nightly toolchain when there is one, else
# the stable one with RUSTC_BOOTSTRAP.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
fi
# Builds go to a cache shared by every checkout on this machine (CI clones afresh each run): the
# dependencies are built once, only the workspace's crates again. Checkouts that share it are told
# apart by the contents of their files, not their times (-Z checksum-freshness).
flags=(--sanitizer "$sanitizer" --debug-assertions --codegen-units 16 -Z checksum-freshness)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${FUZZ_TARGET_DIR:-${HOME:-/tmp}/.cache/tollhouse-fuzz/target}}"

started=$(date +%s)
echo "fuzz: building every target (${fuzz[*]} build ${flags[*]}, in $CARGO_TARGET_DIR)"
"${fuzz[@]}" build "${flags[@]}"
built=$(date +%s)
echo "fuzz: built in $((built - started)) s; running each target for $seconds s, $jobs at a time"

mkdir -p logs
for target in "${targets[@]}"; do
  [ -n "${max_len[$target]:-}" ] || { echo "fuzz: unknown target $target" >&2; exit 2; }
  mkdir -p "corpus/$target" "artifacts/$target"
  if [ -d "seeds/$target" ]; then
    cp -n "seeds/$target"/* "corpus/$target"/ 2>/dev/null || true
  fi
done

# Runs one target; its whole output goes to logs/<target>.log.
run_target() {
  local target=$1
  "${fuzz[@]}" run "${flags[@]}" "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len="${max_len[$target]}" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 >"logs/$target.log" 2>&1
}

# One line per finished target: its time, executions and corpus; on a crash, what failed and the
# input that reproduces it (also in base64, for a CI log whose checkout is gone).
report() {
  local target=$1 status=$2 log="logs/$1.log"
  local execs corpus
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(find "corpus/$target" -type f | wc -l)
  if [ "$status" = 0 ]; then
    echo "fuzz: $target: ok, $seconds s, ${execs:-?} executions, $corpus inputs in its corpus"
    return 0
  fi
  echo "fuzz: $target: FAILED (exit $status) after ${execs:-?} executions; from fuzz/$log:" >&2
  grep -E -A4 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | grep -v '^ *[0-9]*: \|^ *at ' | head -30 >&2
  local artifact
  for artifact in $(grep -o 'Test unit written to [^ ]*' "$log" | awk '{print $NF}'); do
    echo "fuzz: $target: reproducer: $artifact" >&2
    echo "fuzz: $target: reproducer in base64: $(base64 -w0 "$artifact")" >&2
    echo "fuzz: $target: reproduce with: (cd fuzz && ${fuzz[*]} run ${flags[*]} $target $artifact)" >&2
  done
  return 1
}

declare -A running=()
failed=0
wait_one() {
  local pid status=0
  wait -n -p pid "${!running[@]}" || status=$?
  report "${running[$pid]}" "$status" || failed=1
  unset "running[$pid]"
}
for target in "${targets[@]}"; do
  while [ "${#running[@]}" -ge "$jobs" ]; do wait_one; done
  run_target "$target" &
  running[$!]=$target
done
while [ "${#running[@]}" -gt 0 ]; do wait_one; done

finished=$(date +%s)
echo "fuzz: done in $((finished - started)) s (build $((built - started)) s)"
if [ "$failed" != 0 ]; then
  echo "fuzz: a target crashed; see above" >&2
  exit 1
fi
