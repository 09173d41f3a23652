#!/usr/bin/env bash
# Scale curves for Understudy: how a hit behaves as one dimension grows, each point its own `understudy up`.
#
#   bash bench/scale.sh                 # all four curves → bench/results/scale.md (about 5 min)
#   bash bench/scale.sh body            # one curve: body | assets | stream | workers (other sections kept)
#   QUICK=1 bash bench/scale.sh         # smoke run: fewer, smaller points, 1 s measurements
#
# Curves:
#   body     request body 1 KiB → 64 MiB (one asset and one bundle per size); wrk -c1, >= MIN_REQS requests
#   assets   asset store 10 → 100k distinct small chat assets; bundle build, start-up, per-VM load and memory,
#            Envoy RSS, hit latency with wrk rotating over 100 different bodies
#   stream   "stream": true answers of 10 → 10k SSE chunks; chunk count verified with curl; wrk
#   workers  the chat-bench hit with --workers 1 / wrk -t1 and --workers 2 / wrk -t2
# Every point is checked first (200 + `x-understudy: hit`); a point that fails to start or doesn't hit is
# reported as such in the table (with the reason from the log) and not measured.
# Knobs (env): DURATION (5s), WARMUP (1s), CONNS (16), STREAM_CONNS (4), BODY_SIZES, STORE_SIZES, STREAM_CHUNKS, ROTATE (100),
# MIN_REQS (20: body and stream points run DURATION, or longer so that about that many requests complete),
# MAX_BODY (70000000, for --max-body-bytes), READY_TIMEOUT (180 s), SCALE_RESULTS (the report file).
set -euo pipefail

MODE=${1:-all}
case $MODE in
all | body | assets | stream | workers) ;;
*)
    echo "usage: bash bench/scale.sh [all|body|assets|stream|workers]   (env QUICK=1 for a smoke run)" >&2
    exit 2
    ;;
esac

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-1s}
    WARMUP=${WARMUP:-1s}
    BODY_SIZES=${BODY_SIZES:-"1K 256K 4M"}
    STORE_SIZES=${STORE_SIZES:-"10 1000"}
    STREAM_CHUNKS=${STREAM_CHUNKS:-"10 1000"}
    MIN_REQS=${MIN_REQS:-5}
else
    DURATION=${DURATION:-5s}
    WARMUP=${WARMUP:-1s}
    BODY_SIZES=${BODY_SIZES:-"1K 16K 256K 1M 4M 16M 64M"}
    STORE_SIZES=${STORE_SIZES:-"10 1000 10000 100000"}
    STREAM_CHUNKS=${STREAM_CHUNKS:-"10 100 1000 10000"}
    MIN_REQS=${MIN_REQS:-20}
fi
CONNS=${CONNS:-16}
STREAM_CONNS=${STREAM_CONNS:-4}
ROTATE=${ROTATE:-100}
MAX_BODY=${MAX_BODY:-70000000}
READY_TIMEOUT=${READY_TIMEOUT:-180}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
SCALE=$BENCH/scale
ENVOY=${UNDERSTUDY_ENVOY:-$ROOT/.venv/bin/envoy}
UNDERSTUDY=$ROOT/target/release/understudy
WASM=$ROOT/target/wasm32-wasip1/release/understudy.wasm
CHAT_ASSET=$BENCH/assets/openai/chat-bench.json
RESULTS=${SCALE_RESULTS:-$BENCH/results/scale.md}
PATH_=/v1/chat/completions

LOG_TAG=scale
STOP_WAIT_S=10
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh" # die, log, apt_install, init_work, launch/stop, envoy_live, free_port, to_ms, ...

# ---- prerequisites (installed here, idempotently, from apt) -------------------------------------------
[[ -x $ENVOY ]] || die "no Envoy at $ENVOY: run 'bash scripts/setup.sh' (or set UNDERSTUDY_ENVOY)"
[[ -x $UNDERSTUDY ]] || die "no CLI at $UNDERSTUDY: run 'bash scripts/setup.sh' (cargo build --release)"
[[ -f $WASM ]] || die "no filter at $WASM: run 'bash scripts/setup.sh'"
[[ -f $CHAT_ASSET ]] || die "missing $CHAT_ASSET"
apt_install jq jq
apt_install curl curl
apt_install python3 python3
apt_install wrk wrk
apt_install pgrep procps
[[ -x /usr/bin/time ]] || { apt_install time time; }
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (apt-get install -y time)"

# ---- work dir, process bookkeeping, teardown (bench/lib.sh) ----------------------------------------------
init_work scale
# `understudy up` removes its own temp dir when it exits normally; not when killed.
on_group_stopped() { rm -rf "${TMPDIR:-/tmp}/understudy-up-$1"; }
# A failed run keeps the logs, not the (possibly huge) generated assets and bundles.
on_failed_run() {
    find "$WORK" -mindepth 1 -maxdepth 1 ! -name '*.log' ! -name '*.txt' -exec rm -rf {} + 2>/dev/null || true
}

now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }
mib() { awk -v b="$1" 'BEGIN { if (b == "" || b == "-") print "-"; else printf "%.1f", b / 1048576 }'; }
human() { # bytes → 1K / 16K / 4M style
    awk -v b="$1" 'BEGIN { if (b >= 1048576 && b % 1048576 == 0) printf "%dM", b / 1048576;
        else if (b >= 1024 && b % 1024 == 0) printf "%dK", b / 1024; else printf "%d", b }'
}
bytes_of() { # 1K / 16M / 123 → bytes
    local v=$1
    case $v in
    *K) echo $((${v%K} * 1024)) ;;
    *M) echo $((${v%M} * 1048576)) ;;
    *[!0-9]* | "") die "bad size '$v' (use 1K, 16M or a byte count)" ;;
    *) echo "$v" ;;
    esac
}

# proc_kib PID FIELD → VmRSS / VmHWM of a process in KiB ("-" if gone)
proc_kib() { awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print "-" }' "/proc/$1/status" 2>/dev/null || echo -; }
rss_mib() {
    local k
    k=$(proc_kib "$1" "$2")
    if [[ $k == - ]]; then echo -; else mib $((k * 1024)); fi
}

# Commands shown in the report: the work dir and checkout are abbreviated.
CMDS=()
record() {
    local c="$*"
    c=${c//$WORK/\$WORK}
    c=${c//$ROOT\//}
    CMDS+=("$c")
}

# start_up NAME ADMIN_PORT UP_ARGS...: `understudy up` in its own process group, logging to $WORK/NAME.log,
# waiting until Envoy's admin says LIVE. Sets UP_PID, ENVOY_PID, READY_MS (start → ready, or → exit).
# Returns 1 with START_ERR set if it exits or isn't ready within READY_TIMEOUT s.
UP_PID='' ENVOY_PID='' READY_MS='' START_ERR='' UP_LOG=''
start_up() {
    local name=$1 admin=$2 t0
    shift 2
    UP_LOG=$WORK/$name.log
    record "$UNDERSTUDY" up "$@"
    t0=$(now_ms)
    launch "$name" "$UNDERSTUDY" up "$@"
    UP_PID=$LAST_PID
    ENVOY_PID='' START_ERR=''
    local deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        if ! kill -0 "$UP_PID" 2>/dev/null; then
            READY_MS=$(($(now_ms) - t0))
            START_ERR="exited after $(secs "$READY_MS") s: $(python3 "$SCALE/logerr.py" "$UP_LOG")"
            log "$name: $START_ERR"
            stop "$UP_PID"
            return 1
        fi
        if envoy_live "$admin"; then
            READY_MS=$(($(now_ms) - t0))
            ENVOY_PID=$(pgrep -P "$UP_PID" | head -n1 || true)
            [[ -n $ENVOY_PID ]] || { stop "$UP_PID"; die "$name: ready, but no Envoy child of $UP_PID"; }
            return 0
        fi
        if ((SECONDS >= deadline)); then
            READY_MS=$(($(now_ms) - t0))
            START_ERR="not ready within $READY_TIMEOUT s: $(python3 "$SCALE/logerr.py" "$UP_LOG")"
            log "$name: $START_ERR"
            stop "$UP_PID"
            return 1
        fi
        sleep 0.1
    done
}

# load_info LOG: the filter's load lines ("understudy: loaded N assets in X ms (wasm memory M bytes)", one per
# VM) → LOAD_MS ("a/b/c", in log order), LOAD_MEM (largest M in bytes), LOAD_VMS (how many lines) and
# LOAD_THREADS (how many Envoy threads logged them);
# "-" when the filter predates the line.
load_info() {
    local lines
    lines=$(grep -o 'loaded [0-9]* assets in [0-9]* ms (wasm memory [0-9]* bytes)' "$1" || true)
    if [[ -z $lines ]]; then
        LOAD_MS=- LOAD_MEM=- LOAD_VMS=0 LOAD_THREADS=0
        return
    fi
    LOAD_THREADS=$(sed -n 's/^\[[^]]*\]\[\([0-9]*\)\].*loaded [0-9]* assets in.*/\1/p' "$1" | sort -u | wc -l)
    LOAD_MS=$(awk '{ printf "%s%s", (NR > 1 ? "/" : ""), $5 }' <<<"$lines")
    LOAD_MEM=$(awk '{ v = $9 + 0; if (v > m) m = v } END { printf "%d", m }' <<<"$lines")
    LOAD_VMS=$(wc -l <<<"$lines")
}

# ustat ADMIN NAME → wasmcustom.understudy.NAME (counter or gauge), "-" if absent
ustat() {
    curl -s "http://127.0.0.1:$1/stats?filter=^wasmcustom\.understudy\." |
        awk -v n="wasmcustom.understudy.$2:" '$1 == n { print $2; f = 1 } END { if (!f) print "-" }'
}

# probe URL BODY_FILE OUT_FILE: one request. Sets PROBE_CODE, PROBE_HIT (yes/no), PROBE_BYTES, PROBE_S (s).
probe() {
    local url=$1 body=$2 out=$3 w
    w=$(curl -s --max-time 300 -D "$out.headers" -o "$out" -w '%{http_code} %{size_download} %{time_total}' \
        -H 'content-type: application/json' -H 'authorization: Bearer sk-bench' --data-binary "@$body" "$url" ||
        echo "000 0 0")
    read -r PROBE_CODE PROBE_BYTES PROBE_S <<<"$w"
    if grep -qi '^x-understudy: hit' "$out.headers" 2>/dev/null; then PROBE_HIT=yes; else PROBE_HIT=no; fi
}
probe_err() { # what a non-hit answered, for the table
    local h
    h=$(grep -i '^x-understudy:' "$1.headers" 2>/dev/null | tr -d '\r' | head -n1 || true)
    echo "answered $PROBE_CODE${h:+ ($h)}: $(head -c 160 "$1" 2>/dev/null | tr -d '\n|`')"
}

# run_wrk KEY THREADS CONNS DURATION BODY_LIST URL: a $WARMUP warm-up, then a measured
#   wrk -tTHREADS -cCONNS -dDURATION --latency --timeout 120s
# rotating over the request bodies listed in BODY_LIST. Sets W_RPS, W_P50, W_P99 (ms), W_REQS, W_NOTE.
run_wrk() {
    local key=$1 threads=$2 conns=$3 dur=$4 list=$5 url=$6 out non2xx errs timeouts
    ((conns >= threads)) || conns=$threads
    BENCH_BODIES=$list wrk -t"$threads" -c"$conns" -d"$WARMUP" --timeout 120s -s "$SCALE/rotate.lua" "$url" >/dev/null
    record BENCH_BODIES="$list" wrk -t"$threads" -c"$conns" -d"$dur" --latency --timeout 120s \
        -s "$SCALE/rotate.lua" "$url" "  # after a $WARMUP warm-up"
    out=$(BENCH_BODIES=$list wrk -t"$threads" -c"$conns" -d"$dur" --latency --timeout 120s -s "$SCALE/rotate.lua" "$url")
    echo "$out" >"$WORK/wrk-$key.txt"
    W_RPS=$(awk '/^Requests\/sec:/ { v = $2 + 0; printf (v < 100 ? "%.1f" : "%.0f"), v }' <<<"$out")
    W_P50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    W_P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    W_REQS=$(awk '/requests in/ { print $1 }' <<<"$out")
    [[ -n $W_RPS && -n $W_REQS ]] || { echo "$out" >&2; die "[$key] could not parse wrk output"; }
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    errs=$(awk '/Socket errors:/ { sub(/.*Socket errors: /, ""); print }' <<<"$out")
    timeouts=$(awk '/Socket errors:/ { for (i = 1; i < NF; i++) if ($i == "timeout") print $(i + 1) + 0 }' <<<"$out")
    W_NOTE=""
    [[ -z $non2xx ]] || W_NOTE+="**non-2xx: $non2xx**; "
    [[ -z $errs ]] || W_NOTE+="socket errors: $errs; "
    [[ ${timeouts:-0} == 0 ]] || W_NOTE+="**$timeouts timeouts (120 s)**; "
    if ((W_REQS == 0)); then
        W_NOTE+="**no request completed within $dur**; "
        W_P50=- W_P99=-
    fi
    log "[$key] $W_REQS requests, $W_RPS req/s, p50 $W_P50 ms, p99 $W_P99 ms ${W_NOTE:+($W_NOTE)}"
}

# long_enough SECONDS_PER_REQUEST CONNS → a wrk duration: DURATION, or longer (at most 60 s) so that about
# MIN_REQS requests complete at that pace (CONNS requests in flight, served one after the other).
long_enough() {
    awk -v t="$1" -v c="$2" -v n="$MIN_REQS" -v d="${DURATION%s}" 'BEGIN {
        x = int(t * (n + c) * 1.5 + 1); if (x < d) x = d; if (x > 60) x = 60; print x "s" }'
}

# hit_note ADMIN: the stats verdict after a measurement (every request must have hit).
hit_note() {
    local hits misses
    hits=$(ustat "$1" hits)
    misses=$(ustat "$1" misses)
    if [[ $misses != 0 ]]; then
        echo "**misses=$misses** hits=$hits"
    else
        echo "hits=$hits misses=0"
    fi
}

# section_begin: what the section's header reports about the start of its run (call before measuring).
S_DATE='' S_LOAD='' S_WASM='' S_COMMIT=''
section_begin() {
    S_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    S_LOAD=$(load_note)
    S_WASM=$(sha256sum "$WASM" | cut -c1-12)
    S_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)
}

section_head() { # section_head TITLE: the section's title and how/where it was produced
    local cpu envoy_v wasm_now
    cpu=$(cpu_model || true)
    envoy_v=$(envoy_version || true)
    wasm_now=$(sha256sum "$WASM" | cut -c1-12)
    echo "## $1"
    echo
    echo "$S_DATE · $(uname -srm) · $(nproc) CPUs (${cpu:-unknown CPU}) ·" \
        "$(awk '{ printf "%.0f GiB", $2 / 1048576; exit }' /proc/meminfo) RAM · Envoy ${envoy_v:-?} ·" \
        "$(wrk -v 2>&1 | head -n1 | awk '{ print $1, $2 }') · commit $S_COMMIT (work tree may differ)" \
        "· filter sha256 $S_WASM$([[ $QUICK == 1 ]] && echo ' · **QUICK=1 smoke run**')"
    [[ $wasm_now == "$S_WASM" ]] ||
        echo "· **the filter was rebuilt during this curve (now sha256 $wasm_now): points may mix two builds; rerun**"
    echo "· load average at start: $S_LOAD"
    echo
}

# load_note: the 1/5/15-min load average, flagged when the machine was busier than its CPU count (other jobs
# running at the same time skew every number of the section).
load_note() {
    local l
    l=$(loadavg)
    if awk -v l="${l%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n) }'; then
        echo "$l — **busy machine (load above $(nproc) CPUs): other jobs skew these numbers; rerun alone**"
    else
        echo "$l"
    fi
}

section_cmds() { # the load at the end, the exact commands, then clears them
    echo
    echo "Load average at the end: $(load_note)"
    echo
    echo "Commands (exactly as run):"
    echo
    echo '```'
    printf '%s\n' "${CMDS[@]}"
    echo '```'
    CMDS=()
}

finish_section() { # finish_section NAME FILE
    mkdir -p "$(dirname "$RESULTS")"
    python3 "$SCALE/report.py" "$RESULTS" "$1" "$2"
    log "wrote the $1 section of $RESULTS"
    sed 's/^/    /' "$2" >&2
}

# ============================================================================================================
# 1. request body size
# ============================================================================================================
curve_body() {
    local sec=$WORK/section-body.md rows=() size dir p a bt bmax bundle_b url dur mbs
    local note hw rss gauge ready
    section_begin
    log "== body size curve: $BODY_SIZES"
    for tok in $BODY_SIZES; do
        size=$(bytes_of "$tok")
        dir=$WORK/body-$size
        record python3 "$SCALE/gen.py" body --size "$size" --out "$dir"
        python3 "$SCALE/gen.py" body --size "$size" --out "$dir" >"$WORK/gen-body-$size.txt"
        # Bundle build on its own (`up` bundles again at start-up, inside its ready time).
        /usr/bin/time -f '%e %M' -o "$WORK/time-bundle-$size.txt" "$UNDERSTUDY" bundle "$dir/assets" \
            -o "$dir/bundle.json" >"$WORK/bundle-$size.log" 2>&1 || {
            rows+=("| $(human "$size") | **bundle failed**: $(tail -n1 "$WORK/bundle-$size.log" | tr -d '|') | | | | | | | | | |")
            rm -rf "$dir"
            continue
        }
        read -r bt bmax <"$WORK/time-bundle-$size.txt"
        bundle_b=$(stat -c %s "$dir/bundle.json")
        rm -f "$dir/bundle.json"
        record /usr/bin/time -f "'%e %M'" "$UNDERSTUDY" bundle "$dir/assets" -o "$dir/bundle.json"
        p=$(free_port)
        a=$(free_port)
        url="http://127.0.0.1:$p$PATH_"
        log "[body $(human "$size")] up (bundle ${bt}s, $bundle_b B)"
        if ! start_up "body-$size" "$a" --assets "$dir/assets" --port "$p" --admin-port "$a" --workers 1 \
            --log-level info --max-body-bytes "$MAX_BODY"; then
            rows+=("| $(human "$size") | $bt | $bundle_b | - | - | **no** | - | - | - | - | - | - | **start failed**: $START_ERR |")
            rm -rf "$dir"
            continue
        fi
        ready=$(secs "$READY_MS")
        load_info "$UP_LOG"
        probe "$url" "$dir/request.json" "$WORK/probe-body.out"
        if [[ $PROBE_CODE != 200 || $PROBE_HIT != yes ]]; then
            note="**not a hit**: $(probe_err "$WORK/probe-body.out")"
            rows+=("| $(human "$size") | $bt | $bundle_b | $ready | 1 | **no** | - | - | - | - | $(rss_mib "$ENVOY_PID" VmHWM) | $(mib "$LOAD_MEM") | $note |")
            stop "$UP_PID"
            rm -rf "$dir"
            continue
        fi
        # One connection; long enough for MIN_REQS requests at the checked request's pace.
        dur=$(long_enough "$PROBE_S" 1)
        echo "$dir/request.json" >"$WORK/body-list.txt"
        run_wrk "body-$size" 1 1 "$dur" "$WORK/body-list.txt" "$url"
        mbs=$(awk -v b="$size" -v ms="$W_P50" 'BEGIN { if (ms > 0) printf "%.0f", b / (ms / 1000) / 1e6; else print "?" }')
        hw=$(rss_mib "$ENVOY_PID" VmHWM)
        rss=$(rss_mib "$ENVOY_PID" VmRSS)
        gauge=$(ustat "$a" wasm_memory_bytes)
        note="${W_NOTE}$(hit_note "$a"); per-VM load ${LOAD_MS} ms"
        ((W_REQS >= MIN_REQS)) || note+="; **only $W_REQS requests in $dur**"
        rows+=("| $(human "$size") | $bt | $bundle_b | $ready | $W_REQS | yes | $W_P50 | $W_P99 | $W_RPS | $mbs | $rss ($hw) | $(mib "$LOAD_MEM") / $(mib "$gauge") | $note |")
        log "[body $(human "$size")] p50 $W_P50 ms, p99 $W_P99 ms, $mbs MB/s, Envoy RSS $rss MiB (peak $hw)"
        stop "$UP_PID"
        rm -rf "$dir"
    done
    {
        section_head "1. Request body size"
        echo "One chat request per size whose last message is padded with ASCII prose so the **whole body** is exactly"
        echo "the size (1K = 1024 B … 64M = 67108864 B); it is also the asset (its own assets dir and bundle), so it hits."
        echo "\`understudy up --workers 1 --max-body-bytes $MAX_BODY\` per size; one connection (\`wrk -t1 -c1\`) for"
        echo "$DURATION or, for big bodies, as long as $MIN_REQS requests take at the checked request's pace (at most"
        echo "60 s), after a $WARMUP warm-up; with ~20 requests p99 is the slowest one. MB/s = body bytes / p50"
        echo "(10^6 B/s). *bundle s* = \`understudy bundle\` wall time; *up → ready s* = \`understudy up\` start until"
        echo "Envoy's /ready says LIVE (bundling again, Envoy parsing the bootstrap that inlines the bundle, and the VMs"
        echo "loading it). Envoy RSS after the requests (peak VmHWM);"
        echo "wasm memory per VM from the filter's load log line / the \`understudy.wasm_memory_bytes\` gauge after"
        echo "the requests."
        echo
        echo "| body | bundle s | bundle bytes | up → ready s | requests | hit | p50 ms | p99 ms | req/s | MB/s | Envoy RSS MiB (peak) | wasm MiB/VM: load / gauge | notes |"
        echo "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"
        printf '%s\n' "${rows[@]}"
        section_cmds
    } >"$sec"
    finish_section body "$sec"
}

# ============================================================================================================
# 2. asset store size
# ============================================================================================================
curve_assets() {
    local sec=$WORK/section-assets.md rows=() n dir p a bt bmax bundle_b url gen rss_load hw_load gauge note
    local list rot first last ready rss hw
    section_begin
    log "== asset store curve: $STORE_SIZES"
    for n in $STORE_SIZES; do
        dir=$WORK/store-$n
        log "[assets $n] generating"
        gen=$(python3 "$SCALE/gen.py" store --count "$n" --rotate "$ROTATE" --out "$dir")
        echo "$gen" >"$WORK/gen-store-$n.txt"
        /usr/bin/time -f '%e %M' -o "$WORK/time-bundle-$n.txt" "$UNDERSTUDY" bundle "$dir/assets" \
            -o "$dir/bundle.json" >"$WORK/bundle-$n.log" 2>&1 || {
            rows+=("| $n | **bundle failed**: $(tail -n1 "$WORK/bundle-$n.log" | tr -d '|') | | | | | | | | | | | |")
            rm -rf "$dir"
            continue
        }
        read -r bt bmax <"$WORK/time-bundle-$n.txt"
        bundle_b=$(stat -c %s "$dir/bundle.json")
        rm -f "$dir/bundle.json"
        record python3 "$SCALE/gen.py" store --count "$n" --rotate "$ROTATE" --out "$dir"
        record /usr/bin/time -f "'%e %M'" "$UNDERSTUDY" bundle "$dir/assets" -o "$dir/bundle.json"
        p=$(free_port)
        a=$(free_port)
        url="http://127.0.0.1:$p$PATH_"
        log "[assets $n] up (bundle ${bt}s, $bundle_b B, CLI peak RSS $((bmax / 1024)) MiB)"
        if ! start_up "store-$n" "$a" --assets "$dir/assets" --port "$p" --admin-port "$a" --workers 1 \
            --log-level info; then
            rows+=("| $n | $bt ($((bmax / 1024))) | $bundle_b | - | - | - | - | - | - | - | - | - | **start failed**: $START_ERR |")
            rm -rf "$dir"
            continue
        fi
        ready=$(secs "$READY_MS")
        load_info "$UP_LOG"
        gauge=$(ustat "$a" wasm_memory_bytes)
        rss_load=$(rss_mib "$ENVOY_PID" VmRSS)
        hw_load=$(rss_mib "$ENVOY_PID" VmHWM)
        list=$WORK/bodies-$n.txt
        find "$dir/bodies" -name '*.json' | sort >"$list"
        rot=$(wc -l <"$list")
        first=$(head -n1 "$list")
        last=$(tail -n1 "$list")
        note=""
        for b in "$first" "$last"; do
            probe "$url" "$b" "$WORK/probe-store.out"
            [[ $PROBE_CODE == 200 && $PROBE_HIT == yes ]] || note="**not a hit**: $(probe_err "$WORK/probe-store.out")"
        done
        if [[ -n $note ]]; then
            rows+=("| $n | $bt ($((bmax / 1024))) | $bundle_b | $ready | $LOAD_MS | $(mib "$LOAD_MEM") | $(mib "$gauge") | $rss_load ($hw_load) | $rot | - | - | - | $note |")
            stop "$UP_PID"
            rm -rf "$dir"
            continue
        fi
        run_wrk "assets-$n" 1 "$CONNS" "$DURATION" "$list" "$url"
        rss=$(rss_mib "$ENVOY_PID" VmRSS)
        hw=$(rss_mib "$ENVOY_PID" VmHWM)
        note="${W_NOTE}$(hit_note "$a"); $LOAD_VMS VM loads on $LOAD_THREADS threads; $W_REQS measured requests; Envoy RSS after the run $rss MiB (peak $hw); avg request $(jq -r .avg_request_bytes <<<"$gen") B, response $(jq -r .avg_response_bytes <<<"$gen") B"
        rows+=("| $n | $bt ($((bmax / 1024))) | $bundle_b | $ready | $LOAD_MS | $(mib "$LOAD_MEM") | $(mib "$gauge") | $rss_load ($hw_load) | $rot | $W_RPS | $W_P50 | $W_P99 | ${note//|/\\|} |")
        stop "$UP_PID"
        rm -rf "$dir"
    done
    {
        section_head "2. Asset store size"
        echo "N distinct small chat assets (one file each, 1000 per directory; ~300 B request, ~620 B response,"
        echo "unique content) from \`bench/scale/gen.py store\`. *bundle s (MiB)* = \`understudy bundle\` wall time"
        echo "(its peak RSS); *up → ready s* = \`understudy up --workers 1\` start until /ready is LIVE. *per-VM load ms*"
        echo "and *wasm MiB/VM* come from the filter's log line \`understudy: loaded N assets in X ms (wasm memory M"
        echo "bytes)\` (one line per VM, in log order; the notes say how many VMs on how many Envoy threads); the"
        echo "gauge is \`understudy.wasm_memory_bytes\` from /stats after load (the filter keeps the largest VM's value)."
        echo "Latency: wrk rotating over $ROTATE different assets' requests (all N when N < $ROTATE), one Envoy worker."
        echo
        echo "| assets | bundle s (MiB) | bundle bytes | up → ready s | per-VM load ms | wasm MiB/VM | gauge MiB | Envoy RSS after load MiB (peak) | rotation | req/s | p50 ms | p99 ms | notes |"
        echo "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
        printf '%s\n' "${rows[@]}"
        section_cmds
    } >"$sec"
    finish_section assets "$sec"
}

# ============================================================================================================
# 3. streaming responses
# ============================================================================================================
curve_stream() {
    local sec=$WORK/section-stream.md rows=() c dir p a url got done_ok gen cbytes mbs note list dur
    section_begin
    log "== stream curve: $STREAM_CHUNKS chunks"
    for c in $STREAM_CHUNKS; do
        dir=$WORK/stream-$c
        record python3 "$SCALE/gen.py" stream --chunks "$c" --out "$dir"
        gen=$(python3 "$SCALE/gen.py" stream --chunks "$c" --out "$dir")
        cbytes=$(jq -r .content_bytes <<<"$gen")
        p=$(free_port)
        a=$(free_port)
        url="http://127.0.0.1:$p$PATH_"
        if ! start_up "stream-$c" "$a" --assets "$dir/assets" --port "$p" --admin-port "$a" --workers 1 --log-level info; then
            rows+=("| $c | - | $cbytes | - | - | - | - | - | **start failed**: $START_ERR |")
            rm -rf "$dir"
            continue
        fi
        probe "$url" "$dir/request.json" "$WORK/probe-stream.out"
        record curl -s -D - --data-binary "@$dir/request.json" -H "'content-type: application/json'" "$url" \
            "| grep -c '^data: {'   # chunk count check"
        got=$(grep -c '^data: {' "$WORK/probe-stream.out" || true)
        done_ok=no
        [[ $(grep '^data: ' "$WORK/probe-stream.out" | tail -n1) == "data: [DONE]" ]] && done_ok=yes
        if [[ $PROBE_CODE != 200 || $PROBE_HIT != yes ]]; then
            rows+=("| $c | $got | $cbytes | $PROBE_BYTES | - | - | - | - | **not a hit**: $(probe_err "$WORK/probe-stream.out") |")
            stop "$UP_PID"
            rm -rf "$dir"
            continue
        fi
        note=""
        [[ $got == "$c" ]] || note+="**chunk count $got, expected $c**; "
        [[ $done_ok == yes ]] || note+="**no final data: [DONE]**; "
        grep -qi '^content-type: text/event-stream' "$WORK/probe-stream.out.headers" || note+="**not text/event-stream**; "
        list=$WORK/stream-bodies-$c.txt
        echo "$dir/request.json" >"$list"
        dur=$(long_enough "$PROBE_S" "$STREAM_CONNS")
        run_wrk "stream-$c" 1 "$STREAM_CONNS" "$dur" "$list" "$url"
        mbs=$(awk -v b="$PROBE_BYTES" -v r="$W_RPS" 'BEGIN { printf "%.0f", b * r / 1e6 }')
        note+="${W_NOTE}$(hit_note "$a")"
        rows+=("| $c | $got$([[ $done_ok == yes ]] && echo ' + [DONE]') | $cbytes | $PROBE_BYTES | $W_RPS | $W_P50 | $W_P99 | $mbs | $note |")
        stop "$UP_PID"
        rm -rf "$dir"
    done
    {
        section_head "3. Streaming responses"
        echo "A chat asset whose answer content is k short words; with \`\"stream\": true\` Understudy renders it as SSE:"
        echo "one opening delta (role), one delta per word (matcher/src/stream.rs cuts pieces of ≤ 8 chars that end"
        echo "before whitespace), one closing delta (finish_reason), then \`data: [DONE]\`, so *chunks* = k + 2"
        echo "\`chat.completion.chunk\` events. *verified* = \`data: {\` lines counted in one curl answer (must equal"
        echo "the target). Response bytes from that answer; MB/s out = response bytes × req/s."
        echo "\`understudy up --workers 1\`, wrk -t1 -c$STREAM_CONNS after a $WARMUP warm-up, for $DURATION or longer (at most"
        echo "60 s) so that about $MIN_REQS requests complete at the checked request's pace."
        echo
        echo "| chunks | verified | content bytes | response bytes | req/s | p50 ms | p99 ms | MB/s out | notes |"
        echo "|---:|---|---:|---:|---:|---:|---:|---:|---|"
        printf '%s\n' "${rows[@]}"
        section_cmds
    } >"$sec"
    finish_section stream "$sec"
}

# ============================================================================================================
# 4. workers
# ============================================================================================================
curve_workers() {
    local sec=$WORK/section-workers.md rows=() w dir p a url body list note rps1=
    section_begin
    log "== workers curve: 1, 2"
    dir=$WORK/workers
    mkdir -p "$dir/assets/openai"
    cp "$CHAT_ASSET" "$dir/assets/openai/"
    body=$dir/request.json
    jq -c '.request.body' "$CHAT_ASSET" >"$body"
    list=$dir/bodies.txt
    echo "$body" >"$list"
    for w in 1 2; do
        p=$(free_port)
        a=$(free_port)
        url="http://127.0.0.1:$p$PATH_"
        if ! start_up "workers-$w" "$a" --assets "$dir/assets" --port "$p" --admin-port "$a" --workers "$w" --log-level info; then
            rows+=("| $w | - | - | - | - | - | **start failed**: $START_ERR |")
            continue
        fi
        probe "$url" "$body" "$WORK/probe-workers.out"
        if [[ $PROBE_CODE != 200 || $PROBE_HIT != yes ]]; then
            rows+=("| $w | - | - | - | - | - | **not a hit**: $(probe_err "$WORK/probe-workers.out") |")
            stop "$UP_PID"
            continue
        fi
        run_wrk "workers-$w" "$w" "$CONNS" "$DURATION" "$list" "$url"
        [[ -n $rps1 ]] || rps1=$W_RPS
        note="${W_NOTE}$(hit_note "$a"); Envoy RSS $(rss_mib "$ENVOY_PID" VmRSS) MiB"
        rows+=("| $w | wrk -t$w -c$CONNS | $W_RPS | $(awk -v x="$W_RPS" -v y="$rps1" 'BEGIN { printf "%.2f", x / y }') | $W_P50 | $W_P99 | $note |")
        stop "$UP_PID"
    done
    {
        section_head "4. Envoy workers"
        echo "The chat-bench hit (bench/assets/openai/chat-bench.json: $(wc -c <"$body") B request) with \`understudy up"
        echo "--workers W\` and \`wrk -tW -c$CONNS -d$DURATION\` after a $WARMUP warm-up. Only $(nproc) CPUs: wrk shares them with"
        echo "Envoy, so 2 workers + 2 wrk threads oversubscribe the machine; the ratio is a lower bound on scaling."
        echo
        echo "| workers | load | req/s | vs 1 worker | p50 ms | p99 ms | notes |"
        echo "|---:|---|---:|---:|---:|---:|---|"
        printf '%s\n' "${rows[@]}"
        section_cmds
    } >"$sec"
    finish_section workers "$sec"
    rm -rf "$dir"
}

log "work dir $WORK"
case $MODE in
body) curve_body ;;
assets) curve_assets ;;
stream) curve_stream ;;
workers) curve_workers ;;
all)
    curve_body
    curve_assets
    curve_stream
    curve_workers
    ;;
esac
log "done: $RESULTS"
