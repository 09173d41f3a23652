#!/usr/bin/env bash
# What counting cost (filter/src/metrics.rs) adds to a hit: Envoy CPU per request of two builds of the filter,
# interleaved, on the hit path of examples/assets/openai/chat-capital.json (1 worker, wrk -t1 -c16, 8 s after a
# 2 s warm-up per round). CPU per request = Envoy's utime+stime (/proc) over the requests wrk completed; medians
# over the rounds, which matter on a shared machine. Writes bench/results/cost-overhead.md.
#
#   BASE_LABEL="40ddba4" bash bench/cost-overhead.sh BASE.wasm COST.wasm [ROUNDS=7]
# e.g. BASE.wasm built from the commit before the cost metrics, COST.wasm = target/wasm32-wasip1/release/understudy.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=$(realpath "$1"); COST=$(realpath "$2"); ROUNDS=${3:-7}
command -v wrk >/dev/null || bash scripts/install-bench-tools.sh
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
.venv/bin/python - "$work/post.lua" <<'PY'
import json, sys
body = json.dumps(json.load(open("examples/assets/openai/chat-capital.json"))["request"]["body"])
open(sys.argv[1], "w").write('wrk.method = "POST"\nwrk.headers["content-type"] = "application/json"\nwrk.body = %s\n' % json.dumps(body))
PY
one() { # one WASM → "req/s cpu_us_per_req"
    ./target/release/understudy up --port 0 --admin-port 0 --workers 1 --wasm "$1" > "$work/up.log" 2>&1 &
    local up=$! port envoy c0 c1 out reqs
    for _ in $(seq 600); do grep -q "OpenAI base URL" "$work/up.log" && break; sleep 0.1; done
    grep -q "OpenAI base URL" "$work/up.log" || { cat "$work/up.log" >&2; kill $up; echo "understudy up did not start" >&2; exit 1; }
    port=$(grep -o "127.0.0.1:[0-9]*/v1" "$work/up.log" | head -1 | cut -d: -f2 | cut -d/ -f1)
    envoy=$(pgrep -P $up | head -1)
    wrk -t1 -c16 -d2s -s "$work/post.lua" "http://127.0.0.1:$port/v1/chat/completions" > /dev/null
    c0=$(awk '{print $14+$15}' /proc/$envoy/stat)
    out=$(wrk -t1 -c16 -d8s -s "$work/post.lua" "http://127.0.0.1:$port/v1/chat/completions")
    c1=$(awk '{print $14+$15}' /proc/$envoy/stat)
    reqs=$(echo "$out" | grep -o "[0-9]* requests in" | cut -d' ' -f1)
    echo "$(echo "$out" | grep Requests/sec | tr -s ' ' | cut -d' ' -f2) $(python3 -c "print(round(($c1-$c0)/$(getconf CLK_TCK)*1e6/$reqs,1))")"
    kill $up; wait $up 2>/dev/null || true
}
rows=""
for i in $(seq "$ROUNDS"); do
    rows+="| $i | base | $(one "$BASE" | tr ' ' '|' | sed 's/|/ | /') |"$'\n'
    rows+="| $i | cost | $(one "$COST" | tr ' ' '|' | sed 's/|/ | /') |"$'\n'
done
median() { echo "$rows" | awk -F'|' -v w="$1" '$3 ~ w {print $5+0}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
    echo "# Cost metrics overhead on a hit"
    echo
    echo "\`bash bench/cost-overhead.sh BASE.wasm COST.wasm $ROUNDS\` on $(date -u +%Y-%m-%d), $(nproc) shared CPUs; Envoy $(tr -d '[:space:]' < envoy/ENVOY_VERSION), 1 worker."
    echo "Base: ${BASE_LABEL:-$BASE}. Median Envoy CPU per request: base $(median base) µs, with cost metrics $(median cost) µs"
    echo "(req/s swings with the other load on the machine; CPU per request is the steadier figure)."
    echo
    echo "| round | build | req/s | Envoy CPU µs/request |"
    echo "|---|---|---:|---:|"
    echo -n "$rows"
} > bench/results/cost-overhead.md
cat bench/results/cost-overhead.md
