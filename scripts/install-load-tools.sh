#!/usr/bin/env bash
# Load generator for the soak test (Debian's `hey`: a fixed request count, status code histogram).
set -euo pipefail
if ! command -v hey >/dev/null 2>&1; then
  echo "install-load-tools: installing hey"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq hey >/dev/null
fi
command -v hey >/dev/null || { echo "install-load-tools: hey is not on PATH after installing" >&2; exit 1; }
