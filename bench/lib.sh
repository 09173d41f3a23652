# Helpers shared by bench/run.sh, bench/scale.sh and bench/micro.sh: messages, the work dir, process groups
# (start, readiness, teardown), free ports and a few report pieces. Sourced, never run:
#
#   LOG_TAG=bench               # the prefix of die/log messages
#   source "$BENCH/lib.sh"
#   init_work bench             # WORK=$(mktemp -d …/understudy-bench.XXXXXX), PIDS=(), EXIT/INT/TERM traps
#
# A script may redefine the hooks on_group_stopped (PID) and on_failed_run (before "logs kept in $WORK") after
# sourcing, and set STOP_WAIT_S (seconds stop_group waits after SIGTERM before SIGKILL, default 5).
# shellcheck shell=bash

: "${LOG_TAG:?set LOG_TAG before sourcing bench/lib.sh}"
STOP_WAIT_S=${STOP_WAIT_S:-5}

die() { echo "$LOG_TAG: error: $*" >&2; exit 1; }
log() { echo "$LOG_TAG: $*" >&2; }

# apt_install COMMAND PACKAGE: installs PACKAGE with apt-get (as root only) unless COMMAND is already there.
apt_install() {
    command -v "$1" >/dev/null && return 0
    [[ $(id -u) -eq 0 ]] || die "$1 is missing and we are not root: install it (apt-get install -y $2)"
    log "installing $2 (apt)"
    apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; } ||
        die "could not install $2 with apt-get"
}

# ---- work dir, process bookkeeping, teardown -------------------------------------------------------------
WORK=
PIDS=()      # process-group leaders we started (setsid), each stopped by its own id
LAST_PID=    # the group started last by launch

on_group_stopped() { :; } # on_group_stopped PID: after stop_group has stopped a group (hook)
on_failed_run() { :; }    # before cleanup keeps $WORK for a failed run (hook)

# init_work NAME: the work dir $WORK, and the traps that stop every group we started on exit; a failed run
# keeps its logs in $WORK.
init_work() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/understudy-$1.XXXXXX")
    PIDS=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# stop_group PGID: SIGTERM to the group, SIGKILL if it is still there after $STOP_WAIT_S s.
stop_group() {
    local pid=$1 i gone=0
    kill -TERM -- "-$pid" 2>/dev/null || return 0
    for ((i = 0; i < STOP_WAIT_S * 10; i++)); do
        kill -0 -- "-$pid" 2>/dev/null || { gone=1; break; }
        sleep 0.1
    done
    ((gone)) || kill -KILL -- "-$pid" 2>/dev/null || true
    on_group_stopped "$pid"
}

cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do stop_group "$pid"; done
    PIDS=()
    if [[ $rc -ne 0 ]]; then
        on_failed_run
        log "failed (exit $rc); logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}

# stop PGID: stop_group, and forget it.
stop() {
    local pid=$1 keep=() p
    stop_group "$pid"
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# launch NAME CMD...: starts CMD in its own process group (LAST_PID = its id = the group id), log in $WORK/NAME.log.
launch() {
    local name=$1
    shift
    setsid "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_until NAME PID PROBE...: until the PROBE command succeeds (60 s), failing if the process dies.
wait_until() {
    local name=$1 pid=$2
    shift 2
    local deadline=$((SECONDS + 60)) logf=$WORK/$name.log
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2 || true
            die "$name exited during start-up (log: $logf)"
        fi
        "$@" && return 0
        ((SECONDS < deadline)) || { tail -n 30 "$logf" >&2 || true; die "$name not ready within 60 s (log: $logf)"; }
        sleep 0.1
    done
}
envoy_live() { [[ $(curl -s --max-time 1 "http://127.0.0.1:$1/ready" 2>/dev/null || true) == LIVE ]]; }
http_ok() { curl -sf --max-time 1 -o /dev/null "$1" 2>/dev/null; }

# start NAME ADMIN_PORT CMD...: an Envoy (or `understudy up`) in its own process group, ready when /ready says LIVE.
start() {
    local name=$1 admin=$2
    shift 2
    launch "$name" "$@"
    wait_until "$name" "$LAST_PID" envoy_live "$admin"
}

# ---- report pieces ----------------------------------------------------------------------------------------
# to_ms VALUE: wrk's "1.23ms" / "850.00us" / "1.02s" → milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else { print "?" } }'
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }                                      # "1.02 0.85 0.60"
cpu_model() { awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null; } # the first CPU's model name
# envoy_version: "1.40.0" from `$ENVOY --version` (fails when it prints no version).
envoy_version() { "$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -n1 | cut -d' ' -f2 | cut -d/ -f2; }
