#!/usr/bin/env bash
# Asset stores beyond one configuration blob, side by side at 100k and 1M assets → bench/results/store.md:
#
#   store     `understudy publish` → nginx on loopback → `understudy up --store URL` (no bundle in the config)
#   embedded  `understudy package --assets` → `understudy up --wasm MODULE` (the bundle inside the module)
#   inline    `understudy up --assets DIR` (today's bundle in the plugin configuration)
#
#   bash bench/store.sh                  # 100k and 1M (about 20 min on 2 busy cores; ~6 GB of disk in $TMPDIR)
#   SIZES="100000" bash bench/store.sh   # one size
#
# Per point: preparation time (publish / package / bundle at start-up) and its peak RSS, up → ready, each VM's
# load time and wasm memory (the filter's load log line), Envoy's RSS; hit latency cold (the first request for
# each of COLD keys, one at a time: a fetch from nginx for the store, the first use of an asset otherwise) and
# warm (the same keys again), measured by bench/store/client.py over one keep-alive connection; warm throughput
# with wrk -t1 -c16; for the store also the memory after FILL more distinct keys than the cache holds (the
# cache's bound). One Envoy worker. The inline bundle is not run at 1M (see the report) and the embedded one is
# refused there by the packager: both are reported as what happens. Generated data lives in $WORK (deleted).
set -euo pipefail

SIZES=${SIZES:-"100000 1000000"}
COLD=${COLD:-1000}
FILL=${FILL:-12000}
DURATION=${DURATION:-5s}
READY_TIMEOUT=${READY_TIMEOUT:-300}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
ENVOY=${UNDERSTUDY_ENVOY:-$ROOT/.venv/bin/envoy}
UNDERSTUDY=$ROOT/target/release/understudy
WASM=$ROOT/target/wasm32-wasip1/release/understudy.wasm
RESULTS=${STORE_RESULTS:-$BENCH/results/store.md}
NGINX=/usr/sbin/nginx
LOG_TAG=store
STOP_WAIT_S=10
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

[[ -x $ENVOY && -x $UNDERSTUDY && -f $WASM ]] || die "run 'bash scripts/setup.sh' first"
apt_install wrk wrk
apt_install curl curl
[[ -x /usr/bin/time ]] || apt_install time time
[[ -x $NGINX ]] || bash "$ROOT/scripts/install-deploy-tools.sh"
init_work store
on_failed_run() { find "$WORK" -mindepth 1 -maxdepth 1 ! -name '*.log' ! -name '*.txt' -exec rm -rf {} + 2>/dev/null || true; }

mib() { awk -v b="$1" 'BEGIN { if (b == "" || b == "-") print "-"; else printf "%.1f", b / 1048576 }'; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }
now_ms() { date +%s%3N; }
rss_mib() { awk '$1 == "VmRSS:" { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo -; }
ustat() { curl -s "http://127.0.0.1:$1/stats?filter=^wasmcustom\.understudy\." | awk -v n="wasmcustom.understudy.$2:" '$1 == n { print $2 }'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

ROWS=()   # the table
NOTES=()  # what happened where a point could not run
CMDS=()
record() { local c="$*"; c=${c//$WORK/\$WORK}; c=${c//$ROOT\//}; CMDS+=("$c"); }

# up NAME ADMIN ARGS...: `understudy up` until /ready is LIVE; sets UP_PID ENVOY_PID READY_MS (or returns 1).
up() {
    local name=$1 admin=$2 t0 deadline
    shift 2
    record "$UNDERSTUDY" up "$@"
    t0=$(now_ms)
    launch "$name" "$UNDERSTUDY" up "$@"
    UP_PID=$LAST_PID
    deadline=$((SECONDS + READY_TIMEOUT))
    until envoy_live "$admin"; do
        if ! kill -0 "$UP_PID" 2>/dev/null || ((SECONDS > deadline)); then
            START_ERR=$(python3 "$BENCH/scale/logerr.py" "$WORK/$name.log")
            stop "$UP_PID"
            return 1
        fi
        sleep 0.1
    done
    READY_MS=$(($(now_ms) - t0))
    ENVOY_PID=$(pgrep -P "$UP_PID" | head -n1)
}

# measure NAME PORT ADMIN KIND N PREP_S PREP_MIB: latency, throughput and memory of a running instance → a row.
measure() {
    local name=$1 port=$2 admin=$3 kind=$4 n=$5 prep=$6 prep_mib=$7 lines load_ms vm_mib rss cold warm w rps p50 p99
    lines=$(grep -o 'loaded [0-9]* assets in [0-9]* ms (wasm memory [0-9]* bytes)' "$WORK/$name.log" || true)
    load_ms=$(awk '{ printf "%s%s", (NR > 1 ? "/" : ""), $5 }' <<<"$lines")
    vm_mib=$(awk '{ v = $9 + 0; if (v > m) m = v } END { printf "%.1f", m / 1048576 }' <<<"$lines")
    rss=$(rss_mib "$ENVOY_PID")
    cold=$(python3 "$BENCH/store/client.py" --port "$port" --bodies "$WORK/cold-$n.txt")
    warm=$(python3 "$BENCH/store/client.py" --port "$port" --bodies "$WORK/cold-$n.txt")
    [[ $(json "d['hits']" <<<"$cold") == "$COLD" && $(json "d['hits']" <<<"$warm") == "$COLD" ]] ||
        die "$name: not every request hit: cold $cold, warm $warm (log $WORK/$name.log)"
    record BENCH_BODIES="\$WORK/cold-$n.txt" wrk -t1 -c16 -d"$DURATION" --latency -s bench/scale/rotate.lua "http://127.0.0.1:$port/v1/chat/completions"
    w=$(BENCH_BODIES="$WORK/cold-$n.txt" wrk -t1 -c16 -d"$DURATION" --latency -s "$BENCH/scale/rotate.lua" "http://127.0.0.1:$port/v1/chat/completions")
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$w")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$w")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$w")")
    grep -q "Non-2xx" <<<"$w" && die "$name: non-2xx answers under wrk: $w"
    local after_rss after_gauge fill_note=""
    if [[ $kind == store ]]; then
        local fill
        fill=$(python3 "$BENCH/store/client.py" --port "$port" --bodies "$WORK/fill-$n.txt" --threads 8)
        fill_note="; then $FILL more keys (8 clients, $(json "round(d['n']/d['wall_s'])" <<<"$fill") fetches/s): wasm $(mib "$(ustat "$admin" wasm_memory_bytes)") MiB, Envoy RSS $(rss_mib "$ENVOY_PID") MiB, store_fetches $(ustat "$admin" store_fetches), store_errors $(ustat "$admin" store_errors)"
    fi
    after_rss=$(rss_mib "$ENVOY_PID")
    after_gauge=$(mib "$(ustat "$admin" wasm_memory_bytes)")
    ROWS+=("| $n | $kind | $prep ($prep_mib) | $(secs "$READY_MS") | $load_ms | $vm_mib | $rss | $(json "d['p50']" <<<"$cold") / $(json "d['p99']" <<<"$cold") | $(json "d['p50']" <<<"$warm") / $(json "d['p99']" <<<"$warm") | $rps | $p50 / $p99 | $after_gauge / $after_rss$fill_note |")
    log "$n $kind: ${ROWS[-1]}"
}

# timed OUT_FILE CMD...: runs CMD under /usr/bin/time; TIMED_S, TIMED_MIB.
timed() {
    local out=$1
    shift
    record /usr/bin/time -f "'%e %M'" "$@"
    /usr/bin/time -f '%e %M' -o "$WORK/time.txt" "$@" >"$out" 2>&1 || { tail -n 5 "$out" >&2; return 1; }
    read -r TIMED_S kib <"$WORK/time.txt"
    TIMED_MIB=$(awk -v k="$kib" 'BEGIN { printf "%.0f MiB", k / 1024 }')
}

DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_START=$(loadavg)
for n in $SIZES; do
    per=$((n >= 1000000 ? 1000 : 100))
    data=$WORK/data-$n
    log "generating $n assets ($per per file)"
    record python3 bench/scale/gen.py store --count "$n" --per-file "$per" --rotate $((COLD + FILL)) --out "\$WORK/data-$n"
    python3 "$BENCH/scale/gen.py" store --count "$n" --per-file "$per" --rotate $((COLD + FILL)) --out "$data" >"$WORK/gen-$n.txt"
    find "$data/bodies" -name '*.json' | sort >"$WORK/bodies-$n.txt"
    sed -n "1,${COLD}p" "$WORK/bodies-$n.txt" >"$WORK/cold-$n.txt"
    sed -n "$((COLD + 1)),\$p" "$WORK/bodies-$n.txt" >"$WORK/fill-$n.txt"

    # --- the remote store -----------------------------------------------------------------------------
    log "$n: publish"
    timed "$WORK/publish-$n.log" "$UNDERSTUDY" publish "$data/assets" --to "$WORK/www-$n/s" || die "publish failed"
    pub_s=$TIMED_S pub_mib=$TIMED_MIB
    layout=$(du -sb "$WORK/www-$n/s" | cut -f1)
    nport=$(free_port)
    mkdir -p "$WORK/nginx-$n/tmp"
    cat >"$WORK/nginx-$n/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log $WORK/nginx-$n/error.log;
pid $WORK/nginx-$n/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-$n/tmp;
  proxy_temp_path $WORK/nginx-$n/tmp;
  fastcgi_temp_path $WORK/nginx-$n/tmp;
  uwsgi_temp_path $WORK/nginx-$n/tmp;
  scgi_temp_path $WORK/nginx-$n/tmp;
  default_type application/json;
  server { listen 127.0.0.1:$nport; root $WORK/www-$n; }
}
EOF
    launch "nginx-$n" "$NGINX" -c "$WORK/nginx-$n/nginx.conf" -p "$WORK/nginx-$n"
    NGINX_PID=$LAST_PID
    wait_until "nginx-$n" "$NGINX_PID" http_ok "http://127.0.0.1:$nport/s/understudy-store.json"
    port=$(free_port) admin=$(free_port)
    up "store-$n" "$admin" --store "http://127.0.0.1:$nport/s" --port "$port" --admin-port "$admin" --workers 1 --log-level info ||
        die "store $n did not start: $START_ERR"
    measure "store-$n" "$port" "$admin" store "$n" "publish $pub_s s" "$pub_mib; layout $(mib "$layout") MiB"
    stop "$UP_PID"
    stop "$NGINX_PID"
    rm -rf "$WORK/www-$n"

    # --- the bundle embedded in the module ----------------------------------------------------------------
    log "$n: package --assets"
    if timed "$WORK/package-$n.log" "$UNDERSTUDY" package --assets "$data/assets" --module-out "$WORK/module-$n.wasm" -o "$WORK/oci-$n"; then
        module=$(stat -c %s "$WORK/module-$n.wasm")
        port=$(free_port) admin=$(free_port)
        if up "embedded-$n" "$admin" --wasm "$WORK/module-$n.wasm" --port "$port" --admin-port "$admin" --workers 1 --log-level info; then
            measure "embedded-$n" "$port" "$admin" embedded "$n" "package $TIMED_S s" "$TIMED_MIB; module $(mib "$module") MiB"
            stop "$UP_PID"
        else
            NOTES+=("- **$n, embedded**: \`understudy up --wasm\` did not start: $START_ERR")
        fi
    else
        NOTES+=("- **$n, embedded**: \`understudy package --assets\` refused: $(grep -o 'error: .*' "$WORK/package-$n.log" | head -n1 | tr -d '|')")
    fi
    rm -rf "$WORK/oci-$n" "$WORK/module-$n.wasm"

    # --- today's inline bundle ------------------------------------------------------------------------------
    if ((n <= 200000)); then
        log "$n: inline bundle"
        port=$(free_port) admin=$(free_port)
        if up "inline-$n" "$admin" --assets "$data/assets" --port "$port" --admin-port "$admin" --workers 1 --log-level info; then
            measure "inline-$n" "$port" "$admin" inline "$n" "bundled at start-up" "-"
            stop "$UP_PID"
        else
            NOTES+=("- **$n, inline**: did not start: $START_ERR")
        fi
    else
        NOTES+=("- **$n, inline**: not run. The inline bundle of 100k assets takes 256 MiB of each VM's linear memory (this table, and bench/results/scale.md), about 2.6 KiB per asset per VM, so $n assets would need about $((n * 26 / 10240)) MiB in every VM, past V8's 1 GiB cap for one VM: the VM's allocation fails while it loads the configuration and Envoy refuses it (with \`FAIL_RELOAD\`, LLM calls get 503s). The configuration itself would be about $((n * 1900 / 1048576)) MiB of JSON, copied into Envoy's config and each VM, and no Kubernetes object holds more than 1 MiB. Past roughly 300k small assets a store no longer fits inline; the filter warns at load once the store leaves less room than the per-request budgets need (docs/limits.md).")
    fi
    rm -rf "$data"
done

mkdir -p "$(dirname "$RESULTS")"
{
    echo "# Asset stores beyond one configuration blob"
    echo
    echo "$DATE · $(uname -srm) · $(nproc) CPUs ($(cpu_model)) · $(awk '{ printf "%.0f GiB", $2 / 1048576; exit }' /proc/meminfo) RAM · Envoy $(envoy_version) · nginx $($NGINX -v 2>&1 | cut -d/ -f2) · commit $(git -C "$ROOT" rev-parse --short HEAD) (work tree may differ) · load average at start: $LOAD_START, at the end: $(loadavg)"
    echo
    echo "\`bash bench/store.sh\`: N distinct small chat assets from \`bench/scale/gen.py store\` (~300 B request, ~630 B"
    echo "response, 100 assets per file at 100k, 1000 at 1M), served three ways by \`understudy up --workers 1\` (two"
    echo "VMs: the main thread's and the worker's). *prep* is what happens before Envoy starts (publish, package; the"
    echo "inline bundle is built inside *up → ready*), with its peak RSS. *load ms* and *wasm MiB/VM* come from each"
    echo "VM's load log line. Latency: \`bench/store/client.py\`, one request at a time over a keep-alive connection, for"
    echo "$COLD distinct keys spread over the store: *cold* is the first request for each key (for the store: a fetch from"
    echo "nginx on loopback through Envoy, verified and cached; for embedded and inline: the first use of an asset,"
    echo "whose answer compiles then), *warm* the same keys again. *wrk*: \`wrk -t1 -c16 -d$DURATION\` rotating over those"
    echo "keys. *after* is the wasm memory gauge and Envoy's RSS once measured; for the store, then, $FILL more"
    echo "distinct keys are fetched (more than the cache's $(grep -o 'STORE_CACHE_ENTRIES: usize = [0-9_]*' "$ROOT/matcher/src/limits.rs" | awk '{print $NF}' | tr -d _) entries) to show its bound."
    echo
    echo "| assets | how | prep s (peak RSS) | up → ready s | load ms per VM | wasm MiB/VM at load | Envoy RSS MiB | cold p50 / p99 ms | warm p50 / p99 ms | wrk req/s | wrk p50 / p99 ms | after: wasm MiB / Envoy RSS MiB |"
    echo "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    [[ ${#NOTES[@]} -eq 0 ]] || { printf '%s\n' "${NOTES[@]}"; echo; }
    echo "Commands (exactly as run):"
    echo
    echo '```'
    printf '%s\n' "${CMDS[@]}"
    echo '```'
} >"$RESULTS"
log "wrote $RESULTS"
cat "$RESULTS" >&2
