#!/usr/bin/env bash
# Tools for the deployment tests (tests/e2e/test_package.py, test_manifests.py, test_ecds.py, test_store.py),
# installed idempotently from package registries only:
#   Debian: docker-registry (a real OCI registry, run on loopback by the tests), skopeo (an independent client),
#           nginx (a real static HTTP server for the remote asset store, run on loopback by the tests)
#   npm (pinned, into the gitignored .tools/deploy-node/): @kubernetes-models/istio (Istio's published CRD
#   schemas, used to validate generated manifests), js-yaml (reads them as a YAML 1.2 parser would)
#
#   bash scripts/install-deploy-tools.sh          # prints nothing when everything is already there
set -euo pipefail

ISTIO_MODELS_VERSION=3.0.1
JS_YAML_VERSION=4.1.0

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE_DIR=${DEPLOY_NODE_DIR:-$ROOT/.tools/deploy-node}

say() { echo "install-deploy-tools: $*" >&2; }
die() { say "error: $*"; exit 1; }

APT_UPDATED=
apt_install() { # apt_install PATH_OR_COMMAND PACKAGE
    if [[ $1 == /* ]]; then [[ -x $1 ]] && return 0; else command -v "$1" >/dev/null 2>&1 && return 0; fi
    if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    say "installing $2 (apt)"
    if [[ -z $APT_UPDATED ]]; then
        $SUDO apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    # policy-rc.d may refuse to start the packaged service: the tests run their own registry process.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null 2>&1 || die "apt-get install $2 failed"
    if [[ $1 == /* ]]; then [[ -x $1 ]]; else command -v "$1" >/dev/null 2>&1; fi || die "$1 is missing after installing $2"
}
apt_install /usr/bin/docker-registry docker-registry
apt_install skopeo skopeo
apt_install /usr/sbin/nginx nginx
apt_install node nodejs
apt_install npm npm

installed_version() { # installed_version PACKAGE → version in NODE_DIR, or nothing
    local f=$NODE_DIR/node_modules/$1/package.json
    if [[ -f $f ]]; then node -e 'process.stdout.write(require(process.argv[1]).version)' "$f" 2>/dev/null || true; fi
}
if [[ $(installed_version @kubernetes-models/istio) != "$ISTIO_MODELS_VERSION" || $(installed_version js-yaml) != "$JS_YAML_VERSION" ]]; then
    say "installing @kubernetes-models/istio@$ISTIO_MODELS_VERSION and js-yaml@$JS_YAML_VERSION (npm) into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    [[ -f $NODE_DIR/package.json ]] || echo '{"name": "understudy-deploy-tools", "private": true}' >"$NODE_DIR/package.json"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error --save-exact \
        "@kubernetes-models/istio@$ISTIO_MODELS_VERSION" "js-yaml@$JS_YAML_VERSION" >"$NODE_DIR/npm-install.log" 2>&1 ||
        { cat "$NODE_DIR/npm-install.log" >&2; die "npm install failed"; }
fi
[[ -d $NODE_DIR/node_modules/@kubernetes-models/istio ]] || die "no @kubernetes-models/istio under $NODE_DIR after installing"
