#!/usr/bin/env bash
# Measures Understudy's token estimate against the real tokenizers and rewrites results.md.
#   bash bench/tokens/run.sh [SAMPLE.jsonl]
# Needs cargo and Node (npm installs js-tiktoken, which ships its ranks: no download at run time).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
sample="$(cd "$(dirname "${1:-$here/sample.jsonl}")" && pwd)/$(basename "${1:-$here/sample.jsonl}")"
estimates="$here/estimates.json"

if [ ! -d "$here/node_modules/js-tiktoken" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --silent)
fi
(cd "$root" && UNDERSTUDY_TOKEN_SAMPLE="$sample" UNDERSTUDY_TOKEN_ESTIMATES="$estimates" \
  cargo test -q -p understudy-matcher --lib tokens::tests::token_sample_estimates -- --exact >/dev/null)
if [ "${1:-}" = "" ]; then
  node "$here/measure.mjs" "$sample" "$estimates" "$here/results.md"
else
  node "$here/measure.mjs" "$sample" "$estimates"
fi
