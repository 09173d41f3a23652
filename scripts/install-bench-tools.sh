#!/usr/bin/env bash
# Tools for bench/run.sh, installed idempotently from package registries only:
#   Debian: wrk, jq, curl (and nodejs/npm, default-jre-headless if missing)
#   npm (pinned, into the gitignored .tools/bench-node/): wiremock (ships the standalone jar), mountebank
#
#   bash scripts/install-bench-tools.sh          # prints nothing when everything is already there
#
# Afterwards: .tools/bench-node/node_modules/.bin/mb and the WireMock jar under
# .tools/bench-node/node_modules/wiremock/ (bench/run.sh finds it with `find`).
set -euo pipefail

WIREMOCK_VERSION=3.13.2
MOUNTEBANK_VERSION=2.9.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE_DIR=${BENCH_NODE_DIR:-$ROOT/.tools/bench-node}

say() { echo "install-bench-tools: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ---- Debian packages ---------------------------------------------------------------------------------------
APT_UPDATED=
apt_install() { # apt_install COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    [[ $(id -u) -eq 0 ]] || die "$1 is missing and we are not root: apt-get install -y $2"
    say "installing $2 (apt)"
    if [[ -z $APT_UPDATED ]]; then
        apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null || die "apt-get install $2 failed"
    command -v "$1" >/dev/null 2>&1 || die "$1 is not on PATH after installing $2"
}
apt_install wrk wrk
apt_install jq jq
apt_install curl curl
apt_install node nodejs
apt_install npm npm
apt_install java default-jre-headless

JAVA_MAJOR=$(java -version 2>&1 | awk -F'"' '/version/ { split($2, v, "."); print (v[1] == 1 ? v[2] : v[1]); exit }')
[[ ${JAVA_MAJOR:-0} -ge 11 ]] || die "WireMock $WIREMOCK_VERSION needs Java 11+, found: $(java -version 2>&1 | head -n1)"

# ---- npm packages (pinned) ---------------------------------------------------------------------------------------
installed_version() { # installed_version PACKAGE → version in NODE_DIR, or nothing
    local f=$NODE_DIR/node_modules/$1/package.json
    if [[ -f $f ]]; then node -e 'process.stdout.write(require(process.argv[1]).version)' "$f" 2>/dev/null || true; fi
}
if [[ $(installed_version wiremock) != "$WIREMOCK_VERSION" || $(installed_version mountebank) != "$MOUNTEBANK_VERSION" ]]; then
    say "installing wiremock@$WIREMOCK_VERSION and mountebank@$MOUNTEBANK_VERSION (npm) into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    [[ -f $NODE_DIR/package.json ]] || echo '{"name": "understudy-bench-tools", "private": true}' >"$NODE_DIR/package.json"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error --save-exact \
        "wiremock@$WIREMOCK_VERSION" "mountebank@$MOUNTEBANK_VERSION" >"$NODE_DIR/npm-install.log" 2>&1 ||
        { cat "$NODE_DIR/npm-install.log" >&2; die "npm install failed"; }
fi
[[ -x $NODE_DIR/node_modules/.bin/mb ]] || die "no mb in $NODE_DIR/node_modules/.bin after installing"
JAR=$(find "$NODE_DIR/node_modules/wiremock" -name 'wiremock*standalone*.jar' | head -n1)
[[ -n $JAR ]] || die "the wiremock npm package has no standalone jar under $NODE_DIR/node_modules/wiremock"
