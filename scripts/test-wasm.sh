#!/usr/bin/env bash
# Runs the matcher's unit and integration tests (golden key vectors included) compiled to wasm32-wasip1,
# under Node's WASI (scripts/wasi-runner.mjs), so the keys the wasm filter computes are checked against
# the same vectors as the native CLI. Doctests can't run on this target and are skipped (--tests).
# Extra arguments go to cargo, e.g. `scripts/test-wasm.sh --test golden`.
# wasm32-wasip1 has no unwinding: a failing test aborts its whole test binary (exit 134) and libtest's
# captured output is lost; rerun with `scripts/test-wasm.sh --test NAME -- --nocapture` to see the panic.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v node >/dev/null 2>&1; then
  echo "test-wasm.sh: node (>= 20) is required to run wasm32-wasip1 tests" >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "test-wasm.sh: node >= 20 is required (found $(node --version))" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx 'wasm32-wasip1'; then
  echo "test-wasm.sh: the wasm32-wasip1 target is missing: rustup target add wasm32-wasip1" >&2
  exit 1
fi

# Cargo splits this on whitespace, so the repository path must not contain spaces.
export CARGO_TARGET_WASM32_WASIP1_RUNNER="${CARGO_TARGET_WASM32_WASIP1_RUNNER:-node $root/scripts/wasi-runner.mjs}"

exec cargo test -p understudy-matcher --target wasm32-wasip1 --tests "$@"
