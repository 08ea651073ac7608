#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a bounded time: ZPXE_FUZZ_SECONDS each
# (default 30). ZPXE_FUZZ_RUNS=N runs each for N executions instead (the long tier,
# ZPXE_FUZZ_RUNS=10000000, is not part of the test command), and ZPXE_FUZZ_TARGETS="a b"
# picks targets; each line gives the seconds taken and libFuzzer's last stats. Fails on any
# crash, leak of a panic, or timeout; a crashing input is left in
# fuzz/artifacts/<target>/. New inputs go to fuzz/target/corpus/<target> (not committed); the
# committed seeds in fuzz/corpus/<target> are only read. To grow those, merge by hand:
#   cargo +nightly fuzz run <target> fuzz/corpus/<target> fuzz/target/corpus/<target> -- -merge=1
# Needs the nightly toolchain; installs cargo-fuzz when missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${ZPXE_FUZZ_SECONDS:-30}"
runs="${ZPXE_FUZZ_RUNS:-}"
if [ -n "$runs" ]; then
  bound=(-runs="$runs")
  what="$runs executions"
else
  bound=(-max_total_time="$seconds")
  what="${seconds}s"
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
if ! cargo fuzz --version >/dev/null 2>&1; then
  timeout 1200 cargo install cargo-fuzz --locked
fi

# No sanitizer: the engine forbids unsafe code, so what fuzzing looks for is panics (overflow
# checks and debug assertions are on), hangs and unbounded memory, which need none; without
# ASan each target runs several times faster.
fuzz=(cargo +nightly fuzz)
opts=(--sanitizer none)
"${fuzz[@]}" build "${opts[@]}"

failed=()
for target in ${ZPXE_FUZZ_TARGETS:-$("${fuzz[@]}" list)}; do
  work="target/corpus/$target"
  log="target/fuzz-$target.log"
  mkdir -p "$work" "corpus/$target"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: runaway memory is a crash.
  began=$SECONDS
  if "${fuzz[@]}" run "${opts[@]}" "$target" "$work" "corpus/$target" -- \
      "${bound[@]}" -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
    echo "fuzz: $target: $((SECONDS - began))s: $(grep -E '^#[0-9]+' "$log" | tail -n 1)"
  else
    tail -n 60 "$log" >&2
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/target/)" >&2
  exit 1
fi
echo "fuzz: every target ran $what without a crash"
