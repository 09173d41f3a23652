#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (understudy-matcher: normalization/keys, decide, config and asset
# parsing, SSE rendering/assembly, templates) for a bounded time each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 20 s for every target (CI); pass more on demand
#
# - Installs cargo-fuzz (`cargo install cargo-fuzz --locked`, into the default cargo bin) when it is missing.
# - Works on the stable toolchain: cargo-fuzz's nightly-only flags are unlocked with RUSTC_BOOTSTRAP=1.
#   AddressSanitizer is used when it builds, else `-s none` (set FUZZ_SANITIZER=none|address to force one).
# - Seeds come from fuzz/corpus/<target>/ (committed, read-only here); inputs the fuzzer finds interesting go
#   to a temporary directory that is deleted at the end (set FUZZ_KEEP_CORPUS=DIR to keep them in DIR).
# - A crash, panic, timeout or OOM makes the script exit non-zero after all targets ran; it prints the saved
#   input (fuzz/artifacts/<target>/..., git-ignored) and the command that reproduces it; minimize it with
#   `RUSTC_BOOTSTRAP=1 cargo fuzz tmin -a TARGET FILE`. Every crash becomes a test in
#   matcher/tests/regressions.rs (see fuzz/README.md).
# - Extra libFuzzer flags: FUZZ_ARGS="-max_len=65536 -only_ascii=1" etc.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

secs="${1:-20}"
if [ "$#" -gt 0 ]; then shift; fi
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz.sh: SECONDS_PER_TARGET must be a positive integer (got '$secs')" >&2
  exit 2
fi

start_all=$SECONDS
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)..."
  t0=$SECONDS
  cargo install cargo-fuzz --locked
  echo "fuzz.sh: cargo-fuzz installed in $((SECONDS - t0)) s"
fi
echo "fuzz.sh: $(cargo fuzz --version), $(rustc --version)"

# cargo-fuzz passes -Z flags to rustc; RUSTC_BOOTSTRAP=1 lets the stable compiler accept them.
export RUSTC_BOOTSTRAP=1

# Debug assertions and overflow checks on (-a): an overflow is a finding even where release builds wrap.
build_flags=(--release --debug-assertions)
t0=$SECONDS
sanitizer="${FUZZ_SANITIZER:-}"
if [ -z "$sanitizer" ]; then
  if cargo fuzz build -s address "${build_flags[@]}"; then
    sanitizer=address
  else
    echo "fuzz.sh: the AddressSanitizer build failed; falling back to -s none" >&2
    sanitizer=none
  fi
fi
if [ "$sanitizer" != address ] || [ -n "${FUZZ_SANITIZER:-}" ]; then
  cargo fuzz build -s "$sanitizer" "${build_flags[@]}"
fi
build_secs=$((SECONDS - t0))
echo "fuzz.sh: built with sanitizer=$sanitizer in ${build_secs} s"

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/understudy-fuzz.XXXXXX")"
cleanup() {
  if [ -n "${FUZZ_KEEP_CORPUS:-}" ]; then
    mkdir -p "$FUZZ_KEEP_CORPUS" && cp -R "$work/corpus/." "$FUZZ_KEEP_CORPUS/" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck disable=SC2206
extra=(${FUZZ_ARGS:-})
failed=()
summary=()
total_runs=0
for t in "${targets[@]}"; do
  seeds="$root/fuzz/corpus/$t"
  out="$work/corpus/$t"
  artifacts="$root/fuzz/artifacts/$t"
  mkdir -p "$out" "$artifacts" "$seeds"
  log="$work/$t.log"
  echo "fuzz.sh: == $t: ${secs} s, seeds $(find "$seeds" -type f 2>/dev/null | wc -l) files =="
  t0=$SECONDS
  rc=0
  # New corpus entries go to $out (first corpus dir); the committed seeds are only read.
  cargo fuzz run -s "$sanitizer" "${build_flags[@]}" "$t" "$out" "$seeds" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "${extra[@]}" >"$log" 2>&1 || rc=$?
  took=$((SECONDS - t0))
  runs="$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n1 || true)"
  runs="${runs:-0}"
  total_runs=$((total_runs + runs))
  cov="$(sed -n 's/^#[0-9]*[[:space:]]*DONE[[:space:]].*cov: *\([0-9]*\).*/\1/p' "$log" | tail -n1 || true)"
  if [ "$rc" -ne 0 ]; then
    crash="$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$log" | tail -n1 || true)"
    cp "$log" "$root/fuzz/artifacts/$t.log"
    echo "fuzz.sh: $t FAILED (exit $rc) after ${took} s; full log: fuzz/artifacts/$t.log" >&2
    # The panic or sanitizer report and cargo-fuzz's summary, without libFuzzer's progress lines.
    { grep -v '^#[0-9]' "$log" | grep -E -A12 'panicked at|ERROR: |^SUMMARY' \
        | grep -v -E '^ +(#[0-9]|[0-9]+:|at )|^stack backtrace|^note: ' | head -n 40; } >&2 || true
    echo "fuzz.sh: $t crash input: ${crash:-(none written; see the log above)}" >&2
    if [ -n "$crash" ]; then
      echo "fuzz.sh: reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer -a $t $crash" >&2
    fi
    failed+=("$t: ${crash:-exit $rc}")
    summary+=("$t FAILED")
  else
    found="$(find "$out" -type f | wc -l)"
    echo "fuzz.sh: $t ok: ${runs} runs in ${took} s, coverage ${cov:-?}, ${found} new corpus entries"
    summary+=("$t ${runs} runs/${took}s")
  fi
done

total=$((SECONDS - start_all))
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${#failed[@]} of ${#targets[@]} targets crashed (${total} s total):" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "fuzz.sh: OK: ${#targets[@]} targets x ${secs} s, ${total_runs} runs, 0 crashes, sanitizer=$sanitizer," \
  "build ${build_secs} s, total ${total} s [$(IFS=,; echo "${summary[*]}")]"
exit 0
