#!/usr/bin/env bash
# Side-by-side throughput/latency benchmark: Envoy direct_response (the ceiling), Understudy hits,
# Understudy miss→passthrough and plain Envoy proxying to the same local upstream.
#
#   bash bench/run.sh            # writes bench/results/latest.md and prints it
#
# Every contender runs alone, on loopback, with ONE Envoy worker, driven by
#   wrk -t1 -c$CONNS -d$DURATION --latency   after a $WARMUP warm-up.
# Knobs (env): DURATION (10s), WARMUP (2s), CONNS (16), THREADS (1), UPSTREAM_WORKERS (1).
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-16}
THREADS=${THREADS:-1}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
ENVOY=${UNDERSTUDY_ENVOY:-$ROOT/.venv/bin/envoy}
UNDERSTUDY=$ROOT/target/release/understudy
WASM=$ROOT/target/wasm32-wasip1/release/understudy.wasm
ASSET=$BENCH/assets/openai/chat-bench.json
RESULTS=$BENCH/results

die() { echo "bench: error: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

# ---- prerequisites -----------------------------------------------------------------------------------
[[ -x $ENVOY ]] || die "no Envoy at $ENVOY: run 'bash scripts/setup.sh' (or set UNDERSTUDY_ENVOY)"
[[ -x $UNDERSTUDY ]] || die "no CLI at $UNDERSTUDY: run 'bash scripts/setup.sh' (cargo build --release)"
[[ -f $WASM ]] || die "no filter at $WASM: run 'bash scripts/setup.sh'"
[[ -f $ASSET ]] || die "missing $ASSET"
if ! command -v jq >/dev/null && [ "$(id -u)" -eq 0 ]; then
    apt-get install -y jq >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y jq >/dev/null; } || true
fi
for t in jq curl python3; do command -v "$t" >/dev/null || die "$t is required"; done
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; } ||
            die "could not install wrk with apt-get"
    else
        die "wrk is missing and we are not root: install it (apt-get install -y wrk)"
    fi
fi

# ---- work dir, process bookkeeping, teardown -------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/understudy-bench.XXXXXX")
PIDS=()   # process-group leaders we started (setsid), each killed by its own id on exit

stop_group() {
    local pid=$1
    kill -TERM -- "-$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 -- "-$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do stop_group "$pid"; done
    PIDS=()
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_ready NAME PID ADMIN_PORT LOG: until the admin says LIVE (60 s), failing if the process dies.
wait_ready() {
    local name=$1 pid=$2 admin=$3 logf=$4
    local deadline=$((SECONDS + 60))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2 || true
            die "$name exited during start-up (log: $logf)"
        fi
        if [[ $(curl -s --max-time 1 "http://127.0.0.1:$admin/ready" 2>/dev/null || true) == LIVE ]]; then
            return 0
        fi
        ((SECONDS < deadline)) || { tail -n 30 "$logf" >&2 || true; die "$name not ready within 60 s (log: $logf)"; }
        sleep 0.1
    done
}

# start NAME ADMIN_PORT CMD...: starts CMD in its own process group, logs to $WORK/NAME.log, waits ready.
LAST_PID=
start() {
    local name=$1 admin=$2
    shift 2
    setsid "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_ready "$name" "$LAST_PID" "$admin" "$WORK/$name.log"
}

stop() {
    local pid=$1 keep=() p
    stop_group "$pid"
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# direct_bootstrap OUT PORT ADMIN_PORT
direct_bootstrap() {
    sed -e "s|@PORT@|$2|" -e "s|@ADMIN_PORT@|$3|" -e "s|@BODY_FILE@|$RESP_BODY|" "$BENCH/direct.yaml" >"$1"
}

envoy_cmd() { # envoy_cmd CONFIG WORKERS
    echo "$ENVOY" -c "$1" --concurrency "$2" --disable-hot-restart --log-level warning
}

# ---- inputs ------------------------------------------------------------------------------------------
HIT_BODY=$WORK/hit.json
MISS_BODY=$WORK/miss.json
RESP_BODY=$WORK/response.json
jq -c '.request.body' "$ASSET" >"$HIT_BODY"
# Same size, one word different: no asset matches it.
jq -c '.request.body | .messages[-1].content |= sub("France"; "Norway")' "$ASSET" >"$MISS_BODY"
jq -c '.response.body' "$ASSET" | tr -d '\n' >"$RESP_BODY"
cmp -s "$HIT_BODY" "$MISS_BODY" && die "miss body equals hit body"
ASSETS=$WORK/assets   # the project's example assets plus the bench asset
mkdir -p "$ASSETS"
cp -r "$ROOT/examples/assets/." "$ASSETS/"
cp -r "$BENCH/assets/." "$ASSETS/"
log "request body $(wc -c <"$HIT_BODY") B, response body $(wc -c <"$RESP_BODY") B, work dir $WORK"

# check URL BODY EXPECT_HEADER: one request must answer 200 (and carry the header line, if given).
check() {
    local url=$1 body=$2 want=${3:-} out
    out=$(curl -s -D - -o "$WORK/check.out" -w '%{http_code}' -H 'content-type: application/json' \
        --data-binary "@$body" "$url") || die "request to $url failed"
    [[ ${out: -3} == 200 ]] || { cat "$WORK/check.out" >&2; die "$url answered ${out: -3}, not 200"; }
    if [[ -n $want ]] && ! grep -qi "^$want" <<<"$out"; then
        echo "$out" >&2
        die "$url: response lacks '$want'"
    fi
}

# to_ms VALUE: wrk's "1.23ms" / "850.00us" / "1.02s" → milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else { print "?" } }'
}

declare -A RPS P50 P99 NOTE
ORDER=()

# bench KEY LABEL URL BODY
bench() {
    local key=$1 label=$2 url=$3 body=$4 out
    log "[$key] $label: warm-up $WARMUP"
    BENCH_BODY=$body wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$BENCH/post.lua" "$url" >/dev/null
    log "[$key] $label: measuring $DURATION"
    out=$(BENCH_BODY=$body wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$BENCH/post.lua" "$url")
    echo "$out" >"$WORK/wrk-$key.txt"
    echo "$out" | sed 's/^/    /' >&2
    RPS[$key]=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    P50[$key]=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    P99[$key]=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    [[ -n ${RPS[$key]} ]] || die "[$key] could not parse wrk output"
    local non2xx errs
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
    errs=$(awk '/Socket errors:/ {sub(/.*Socket errors: /, ""); print}' <<<"$out")
    NOTE[$key]=""
    [[ -z $non2xx ]] || NOTE[$key]+="non-2xx: $non2xx; "
    [[ -z $errs ]] || NOTE[$key]+="socket errors: $errs; "
    ORDER+=("$key")
    LABEL[$key]=$label
}
declare -A LABEL

# understudy_stat ADMIN NAME → the counter's value (0 if absent)
understudy_stat() {
    curl -s "http://127.0.0.1:$1/stats?filter=understudy" |
        awk -v n="$2" '{ k = $1; sub(/:$/, "", k); if (k ~ ("understudy\\." n "$")) { print $2; f = 1; exit } } END { if (!f) print 0 }'
}

PATH_=/v1/chat/completions

# ---- (a) Envoy direct_response: the ceiling ------------------------------------------------------------------
P=$(free_port); A=$(free_port)
direct_bootstrap "$WORK/direct-a.yaml" "$P" "$A"
start direct-a "$A" $(envoy_cmd "$WORK/direct-a.yaml" 1)
check "http://127.0.0.1:$P$PATH_" "$HIT_BODY"
bench a "Envoy direct_response (ceiling)" "http://127.0.0.1:$P$PATH_" "$HIT_BODY"
stop "$LAST_PID"

# ---- (b) Understudy hit ----------------------------------------------------------------------------------
P=$(free_port); A=$(free_port)
start understudy-hit "$A" "$UNDERSTUDY" up --assets "$ASSETS" --port "$P" --admin-port "$A" --workers 1
check "http://127.0.0.1:$P$PATH_" "$HIT_BODY" "x-understudy: hit"
bench b "Understudy hit" "http://127.0.0.1:$P$PATH_" "$HIT_BODY"
NOTE[b]+="hits=$(understudy_stat "$A" hits) misses=$(understudy_stat "$A" misses); "
stop "$LAST_PID"

# ---- the shared upstream for (c) and (d): another direct_response Envoy ---------------------------------------
UP=$(free_port); UA=$(free_port)
direct_bootstrap "$WORK/upstream.yaml" "$UP" "$UA"
start upstream "$UA" $(envoy_cmd "$WORK/upstream.yaml" "$UPSTREAM_WORKERS")
UPSTREAM_PID=$LAST_PID

# ---- (c) Understudy miss → passthrough ------------------------------------------------------------------------
P=$(free_port); A=$(free_port)
start understudy-pass "$A" "$UNDERSTUDY" up --assets "$ASSETS" --port "$P" --admin-port "$A" --workers 1 \
    --upstream "http://127.0.0.1:$UP" --on-miss passthrough
check "http://127.0.0.1:$P$PATH_" "$MISS_BODY" "x-understudy: passthrough"
bench c "Understudy miss → passthrough" "http://127.0.0.1:$P$PATH_" "$MISS_BODY"
NOTE[c]+="hits=$(understudy_stat "$A" hits) misses=$(understudy_stat "$A" misses); "
stop "$LAST_PID"

# ---- (d) plain Envoy proxy: understudy's bootstrap without the understudy and buffer filters -----------------
P=$(free_port); A=$(free_port)
"$UNDERSTUDY" up --assets "$ASSETS" --port "$P" --admin-port "$A" --upstream "http://127.0.0.1:$UP" \
    --on-miss passthrough --print-config "$WORK/plain-full.json" >&2
jq '(.static_resources.listeners[].filter_chains[].filters[].typed_config.http_filters) |=
        map(select(.name != "understudy" and .name != "envoy.filters.http.buffer"))' \
    "$WORK/plain-full.json" >"$WORK/plain.json"
jq -e '[.static_resources.listeners[].filter_chains[].filters[].typed_config.http_filters[].name]
        | (index("understudy") == null) and (index("envoy.filters.http.buffer") == null)
          and (index("envoy.filters.http.router") != null)' "$WORK/plain.json" >/dev/null ||
    die "could not strip the understudy/buffer filters from the bootstrap"
start plain-proxy "$A" $(envoy_cmd "$WORK/plain.json" 1)
check "http://127.0.0.1:$P$PATH_" "$MISS_BODY"
bench d "plain Envoy proxy (no understudy, no buffer)" "http://127.0.0.1:$P$PATH_" "$MISS_BODY"
stop "$LAST_PID"
stop "$UPSTREAM_PID"

# ---- report ---------------------------------------------------------------------------------------------------
mkdir -p "$RESULTS"
REPORT=$RESULTS/latest.md
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (y > 0) printf "%.2f", x / y; else print "?" }'; }
{
    echo "# Understudy benchmark"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) · $(uname -srm) · $(nproc) CPUs · $("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -n1 | cut -d' ' -f2 | cut -d/ -f2) envoy"
    echo "· \`wrk -t$THREADS -c$CONNS -d$DURATION --latency\` after a $WARMUP warm-up · one Envoy worker per contender"
    echo "(upstream for c/d: a separate direct_response Envoy, $UPSTREAM_WORKERS worker(s))"
    echo "· request body $(wc -c <"$HIT_BODY") B POST $PATH_ · response body $(wc -c <"$RESP_BODY") B"
    echo
    echo "| | contender | req/s | p50 ms | p99 ms | vs ceiling | notes |"
    echo "|---|---|---:|---:|---:|---:|---|"
    for k in "${ORDER[@]}"; do
        printf '| %s | %s | %.0f | %s | %s | %s | %s |\n' "$k" "${LABEL[$k]}" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" \
            "$(ratio "${RPS[$k]}" "${RPS[a]}")" "${NOTE[$k]%; }"
    done
    echo
    awk -v c="${RPS[c]}" -v d="${RPS[d]}" 'BEGIN {
        printf "Passthrough overhead (d - c) / d = %.1f%% of plain-proxy throughput", (d - c) / d * 100 }'
    awk -v c="${P50[c]}" -v d="${P50[d]}" 'BEGIN { printf "; p50 +%.3f ms.\n", c - d }'
} >"$REPORT"
cat "$REPORT"
