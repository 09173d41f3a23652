//! `Runtime::decide_at` on arbitrary request paths and bodies, against fixed small runtimes built from
//! `examples/assets/**` and the e2e recorded Gemini streams through the public API (parse, key, bundle,
//! compile), plus one templated asset with several responses and `synthesize` rules, in both miss modes.
//!
//! Input: the first line is the request path (if it is not an LLM path, a route is picked from its length),
//! the rest is the body. Properties: never panics; a streamed 2xx answer (SSE, a JSON array, NDJSON or an AWS
//! event stream) assembles back into a body; a JSON 2xx answer is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use understudy_matcher::stream::assemble_recorded;
use understudy_matcher::synth::SynthRule;
use understudy_matcher::{
    classify, parse_asset_file, Asset, Bundle, BundledAsset, Decision, NormalizationConfig, Normalizer, OnMiss,
    PluginConfig, Route, Runtime, Store,
};

const ASSET_FILES: &[(&str, &str)] = &[
    ("anthropic/messages-haiku.json", include_str!("../../examples/assets/anthropic/messages-haiku.json")),
    ("openai/chat-capital.json", include_str!("../../examples/assets/openai/chat-capital.json")),
    ("openai/chat-weather-tool.json", include_str!("../../examples/assets/openai/chat-weather-tool.json")),
    ("openai/embeddings-fox.json", include_str!("../../examples/assets/openai/embeddings-fox.json")),
    ("gemini/generate-capital.json", include_str!("../../examples/assets/gemini/generate-capital.json")),
    ("gemini/generate-weather-tool.json", include_str!("../../examples/assets/gemini/generate-weather-tool.json")),
    ("gemini/embed-fox.json", include_str!("../../examples/assets/gemini/embed-fox.json")),
    ("gemini/count-tokens.json", include_str!("../../examples/assets/gemini/count-tokens.json")),
    ("gemini/vertex-haiku.json", include_str!("../../examples/assets/gemini/vertex-haiku.json")),
    ("gemini/recorded-streams.json", include_str!("../../tests/e2e/assets/gemini/recorded-streams.json")),
    ("vertex-anthropic/messages-oslo.json", include_str!("../../examples/assets/vertex-anthropic/messages-oslo.json")),
    ("bedrock/converse.json", include_str!("../../examples/assets/bedrock/converse.json")),
    (
        "bedrock/converse-stream-recorded.json",
        include_str!("../../examples/assets/bedrock/converse-stream-recorded.json"),
    ),
    ("bedrock/invoke-claude.json", include_str!("../../examples/assets/bedrock/invoke-claude.json")),
    ("bedrock/titan-embed.json", include_str!("../../examples/assets/bedrock/titan-embed.json")),
    ("ollama/chat-sky.json", include_str!("../../examples/assets/ollama/chat-sky.json")),
    ("ollama/chat-weather-tool.json", include_str!("../../examples/assets/ollama/chat-weather-tool.json")),
    ("ollama/generate-sky.json", include_str!("../../examples/assets/ollama/generate-sky.json")),
    (
        "ollama/generate-recorded-stream.json",
        include_str!("../../examples/assets/ollama/generate-recorded-stream.json"),
    ),
    ("ollama/embed-sky.json", include_str!("../../examples/assets/ollama/embed-sky.json")),
];

const FALLBACK_PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
    "/v1beta/models/gemini-2.0-flash:generateContent",
    "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
    "/v1beta/models/text-embedding-004:batchEmbedContents",
    "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-embedding-001:embedContent",
    "/v1beta/models/gemini-2.0-flash:countTokens",
    "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-haiku-4-5@20251001:streamRawPredict",
    "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse",
    "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream",
    "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream",
    "/model/amazon.titan-embed-text-v2%3A0/invoke",
    "/model/meta.llama3-8b-instruct-v1%3A0/invoke-with-response-stream",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
];

const NOW_NANOS: u64 = 1_764_403_200_123_456_789;

/// A chat asset whose responses hold placeholders, served in a seeded random order.
fn templated() -> Asset {
    serde_json::from_value(json!({
        "name": "templated",
        "request": {"path": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "template me"}]}},
        "responses": [
            {"body": {"id": "{{id}}", "object": "chat.completion", "created": "{{now}}", "model": "{{request.model}}",
                "choices": [{"index": 0, "message": {"role": "assistant",
                    "content": "{{random:a|b|c}} at {{now_iso}} {{uuid}} {{request:/messages/0/content}}"},
                    "finish_reason": "stop"}]}},
            {"body": {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "{{random_int:-5:5}}"},
                    "finish_reason": "length"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}},
            {"status": 429, "error": {"type": "rate_limit_error", "message": "slow down"}}
        ],
        "sequence": "random",
        "seed": 7,
        "latency": {"ttft_ms": 5, "per_token_ms": 0.5}
    }))
    .expect("templated asset parses")
}

fn runtime(on_miss: OnMiss, synthesize: Vec<SynthRule>) -> Runtime {
    let normalization = NormalizationConfig::default();
    let normalizer = Normalizer::compile(&normalization).expect("default normalization compiles");
    let mut set = Store::default();
    let mut assets = Vec::new();
    let mut all: Vec<(String, Asset)> = Vec::new();
    for (name, text) in ASSET_FILES {
        all.extend(parse_asset_file(text, name).expect("example asset parses"));
    }
    all.push(("inline#0".into(), templated()));
    for (label, asset) in all {
        let key = set.add(&normalizer, &label, &asset, None).expect("example asset compiles");
        assets.push(BundledAsset { key, source: label, asset });
    }
    let cfg =
        PluginConfig { on_miss, normalization, bundle: Some(Bundle::sealed(assets)), synthesize, ..PluginConfig::default() };
    Runtime::compile(cfg).expect("runtime compiles")
}

fn rules() -> Vec<SynthRule> {
    serde_json::from_value(json!([
        {"operation": "openai.chat_completions", "model": "echo*", "echo": true},
        {"operation": "openai.embeddings", "model": "*", "dimensions": 16},
        {"model": "gpt-*", "text": "Synthesized answer, streamed in pieces.", "latency": {"ttft_ms": 1}},
        {"operation": "anthropic.messages", "echo": true},
        {"operation": "gemini.generate_content", "echo": true},
        {"operation": "gemini.embed_content", "dimensions": 8},
        {"operation": "gemini.batch_embed_contents"},
        {"operation": "gemini.count_tokens"},
        {"operation": "bedrock.converse", "echo": true},
        {"operation": "bedrock.titan_embeddings", "dimensions": 8},
        {"operation": "ollama.generate", "echo": true},
        {"operation": "ollama.embed", "model": "*"},
        {"operation": "ollama.embeddings", "dimensions": 8}
    ]))
    .expect("rules parse")
}

thread_local! {
    static RUNTIMES: [Runtime; 2] = [runtime(OnMiss::Error, rules()), runtime(OnMiss::Passthrough, Vec::new())];
}

fn route_for(path: &str) -> Route {
    classify("POST", path).unwrap_or_else(|| {
        let p = FALLBACK_PATHS.get(path.len() % FALLBACK_PATHS.len()).copied().unwrap_or("/v1/chat/completions");
        classify("POST", p).expect("fallback path classifies")
    })
}

fuzz_target!(|data: &[u8]| {
    let (path, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let route = route_for(&String::from_utf8_lossy(path));
    RUNTIMES.with(|rts| {
        for rt in rts {
            let Decision::Respond(r) = rt.decide_at(&route, body, NOW_NANOS) else { continue };
            if !(200..300).contains(&r.status) {
                continue;
            }
            let ct = r.headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.as_str()).unwrap_or("");
            if ct.starts_with("text/event-stream")
                || ct.starts_with("application/x-ndjson")
                || ct == "application/vnd.amazon.eventstream"
            {
                if let Err(e) = assemble_recorded(&route, &r.body) {
                    panic!("served stream does not assemble: {e}\n{}", String::from_utf8_lossy(&r.body));
                }
            } else if ct.starts_with("application/json") {
                if let Err(e) = serde_json::from_slice::<serde_json::Value>(&r.body) {
                    panic!("served JSON does not parse: {e}");
                }
                // A JSON-array stream (Gemini without `alt=sse`).
                if route.stream.is_some() && route.operation.streams() {
                    if let Err(e) = assemble_recorded(&route, &r.body) {
                        panic!("served JSON-array stream does not assemble: {e}");
                    }
                }
            }
        }
    });
});
