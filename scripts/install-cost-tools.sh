#!/usr/bin/env bash
# Tools for the cost tests (tests/e2e/test_cost.py), installed idempotently from Debian's archive:
#   prometheus  a real Prometheus, started by the test on loopback with a generated config, scraping
#               `understudy up`'s Envoy and answering the Grafana dashboard's queries
#   chromium    headless Chromium, which opens `understudy report --html` and screenshots its chart
#
#   bash scripts/install-cost-tools.sh          # prints nothing when everything is already there
set -euo pipefail

say() { echo "install-cost-tools: $*" >&2; }
die() { say "error: $*"; exit 1; }

APT_UPDATED=
apt_install() { # apt_install COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    say "installing $2 (apt)"
    if [[ -z $APT_UPDATED ]]; then
        $SUDO apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    # policy-rc.d may refuse to start the packaged service: the tests run their own Prometheus process.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$2" >/dev/null 2>&1 \
        || die "apt-get install $2 failed"
    command -v "$1" >/dev/null 2>&1 || die "$1 is missing after installing $2"
}
apt_install prometheus prometheus
apt_install chromium chromium
