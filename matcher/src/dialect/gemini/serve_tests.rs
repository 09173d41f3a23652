//! The Gemini API and Vertex AI served end to end by the runtime (natively): one asset for both, both stream
//! framings, recorded streams re-framed, misses and bad requests in Google's error shape, synthesized
//! answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use serde_json::{json, Value};

use crate::asset::{Bundle, BundledAsset};
use crate::runtime::{Decision, LocalResponse, OnMiss, Outcome, PluginConfig, Runtime};
use crate::synth::SynthRule;
use crate::{classify, parse_asset_file, Normalizer, Store};

const NOW: u64 = 1_764_403_200_123_456_789;
const GEMINI_PATH: &str = "/v1beta/models/gemini-2.0-flash:generateContent";
const VERTEX_PATH: &str =
    "/v1beta1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent";

fn runtime(files: &[(&str, &str)], synthesize: Value) -> Runtime {
    let normalizer = Normalizer::default();
    let mut store = Store::default();
    let mut assets = Vec::new();
    for (name, text) in files {
        for (label, asset) in parse_asset_file(text, name).unwrap() {
            let key = store.add(&normalizer, &label, &asset, None).unwrap();
            assets.push(BundledAsset { key, source: label, asset });
        }
    }
    let synthesize: Vec<SynthRule> = serde_json::from_value(synthesize).unwrap();
    let cfg = PluginConfig {
        on_miss: OnMiss::Error,
        bundle: Some(Bundle::sealed(assets)),
        synthesize,
        ..PluginConfig::default()
    };
    Runtime::compile(cfg).unwrap()
}

fn examples() -> Runtime {
    runtime(
        &[
            ("capital.json", include_str!("../../../../examples/assets/gemini/generate-capital.json")),
            ("vertex.json", include_str!("../../../../examples/assets/gemini/vertex-haiku.json")),
            ("streams.json", include_str!("../../../../tests/e2e/assets/gemini/recorded-streams.json")),
            ("quota.json", include_str!("../../../../tests/e2e/assets/gemini/quota-error.json")),
            ("claude.json", include_str!("../../../../examples/assets/vertex-anthropic/messages-oslo.json")),
        ],
        json!([
            {"operation": "gemini.generate_content", "model": "synth-*", "text": "A modeled answer."},
            {"operation": "gemini.batch_embed_contents", "model": "synth-*", "dimensions": 4},
            {"operation": "gemini.count_tokens", "model": "synth-*"},
        ]),
    )
}

fn send(rt: &Runtime, path: &str, body: &Value) -> LocalResponse {
    let route = classify("POST", path).unwrap();
    match rt.decide_at(&route, body.to_string().as_bytes(), NOW) {
        Decision::Respond(r) => r,
        Decision::Forward(o) => panic!("forwarded: {o:?}"),
        Decision::Fetch(f) => panic!("fetched {}", f.key),
    }
}

fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn question(text: &str) -> Value {
    json!({"contents": [{"parts": [{"text": text}], "role": "user"}]})
}

#[test]
fn one_asset_answers_the_gemini_api_and_vertex_ai_with_fresh_ids() {
    let rt = examples();
    let asset: Value =
        serde_json::from_str(include_str!("../../../../examples/assets/gemini/generate-capital.json")).unwrap();
    let recorded = &asset["response"]["body"];
    let mut keys = Vec::new();
    for path in [GEMINI_PATH, VERTEX_PATH, "/v1/models/gemini-2.0-flash:generateContent?key=AIzaSy-secret"] {
        let r = send(&rt, path, &question("What is the capital of France?"));
        assert_eq!((r.outcome, r.status), (Outcome::Hit, 200), "{path}");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["candidates"], recorded["candidates"]);
        assert_eq!(v["usageMetadata"], recorded["usageMetadata"]);
        let id = v["responseId"].as_str().unwrap();
        assert!(id != recorded["responseId"] && id.len() == 23, "{id}");
        keys.push(header(&r, "x-understudy-key").unwrap().to_string());
    }
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
    assert!(!keys[0].contains("secret"));
    // Vertex AI's createTime is refreshed, with its microseconds.
    let r = send(
        &rt,
        VERTEX_PATH,
        &json!({"contents": [{"parts": [{"text": "Write a haiku about Oslo."}], "role": "user"}], "generationConfig": {"temperature": 0.2}}),
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["createTime"], "2025-11-29T08:00:00.123456Z");
}

#[test]
fn a_plain_asset_streams_as_sse_or_as_a_json_array() {
    let rt = examples();
    let q = question("What is the capital of France?");
    let sse = send(&rt, "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", &q);
    assert_eq!(header(&sse, "content-type"), Some("text/event-stream"));
    let text = String::from_utf8(sse.body.clone()).unwrap();
    assert!(text.starts_with("data: {\"candidates\"") && text.ends_with("\r\n\r\n"), "{text}");
    let arr = send(&rt, "/v1beta/models/gemini-2.0-flash:streamGenerateContent", &q);
    assert_eq!(header(&arr, "content-type"), Some("application/json; charset=UTF-8"));
    let chunks: Vec<Value> = serde_json::from_slice(&arr.body).unwrap();
    assert!(chunks.len() > 2);
    let text: String =
        chunks.iter().map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, "The capital of France is Paris.\n");
    // Every chunk carries the same fresh id.
    let id = &chunks[0]["responseId"];
    assert!(id != "Gx7WaJ2uDdKrnvgP8OHs2Qs" && chunks.iter().all(|c| &c["responseId"] == id));
}

#[test]
fn recorded_streams_are_verbatim_in_their_framing_and_reframed_in_the_other() {
    let rt = examples();
    let assets: Value =
        serde_json::from_str(include_str!("../../../../tests/e2e/assets/gemini/recorded-streams.json")).unwrap();
    let (sse_asset, arr_asset) = (&assets[0], &assets[1]);
    let sse_text = sse_asset["response"]["body_text"].as_str().unwrap();
    let arr_text = arr_asset["response"]["body_text"].as_str().unwrap();
    let sse_req = &sse_asset["request"]["body"];
    let arr_req = &arr_asset["request"]["body"];
    let r = send(&rt, "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse", sse_req);
    assert_eq!(String::from_utf8(r.body).unwrap(), sse_text);
    let r = send(&rt, "/v1beta/models/gemini-2.0-flash:streamGenerateContent", arr_req);
    assert_eq!(String::from_utf8(r.body).unwrap(), arr_text);
    // The other framing: the same chunks.
    let r = send(&rt, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", sse_req);
    let as_array: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(as_array.len(), 3);
    assert_eq!(as_array[2]["candidates"][0]["finishReason"], "STOP");
    let r = send(&rt, "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", arr_req);
    assert_eq!(header(&r, "content-type"), Some("text/event-stream"));
    let want: Vec<Value> = serde_json::from_str(arr_text).unwrap();
    let text = String::from_utf8(r.body).unwrap();
    let got: Vec<Value> = text
        .split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.trim_start_matches("data: ")).unwrap())
        .collect();
    assert_eq!(got, want);
    // A plain request gets the assembled answer: thoughts and text apart, the final usage.
    let r = send(&rt, "/v1beta/models/gemini-2.5-flash:generateContent", sse_req);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let parts = v["candidates"][0]["content"]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["thought"], true);
    assert!(
        parts[1]["text"].as_str().unwrap().starts_with("Sunlight is scattered")
            && parts[1]["thoughtSignature"].is_string()
    );
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 33);
}

#[test]
fn misses_bad_bodies_and_asset_errors_have_googles_error_shape() {
    let rt = examples();
    let r = send(&rt, GEMINI_PATH, &question("never recorded"));
    assert_eq!((r.outcome, r.status), (Outcome::Miss, 404));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((v["error"]["code"].as_u64(), v["error"]["status"].as_str()), (Some(404), Some("NOT_FOUND")));
    let msg = v["error"]["message"].as_str().unwrap();
    let key = header(&r, "x-understudy-key").unwrap();
    assert!(msg.contains(key) && msg.contains("gemini.generate_content") && msg.contains("Closest asset"), "{msg}");
    assert_eq!(v["error"]["details"][0]["reason"], "understudy_no_matching_asset");
    let route = classify("POST", GEMINI_PATH).unwrap();
    let Decision::Respond(r) = rt.decide_at(&route, b"{not json", NOW) else { panic!() };
    assert_eq!((r.outcome, r.status), (Outcome::BadRequest, 400));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    let r = send(&rt, GEMINI_PATH, &question("Trigger a quota error."));
    assert_eq!((r.outcome, r.status), (Outcome::Hit, 429));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}})
    );
    // An error answer never streams.
    let r =
        send(&rt, "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", &question("Trigger a quota error."));
    assert_eq!((r.status, header(&r, "content-type")), (429, Some("application/json")));
}

#[test]
fn anthropic_on_vertex_is_served_in_anthropics_shape() {
    let rt = examples();
    let path = "/v1/projects/other/locations/global/publishers/anthropic/models/claude-haiku-4-5@20251001";
    let body = json!({"anthropic_version": "2026-10-21", "max_tokens": 1024, "messages": [{"role": "user", "content": "Write a haiku about Oslo."}]});
    let r = send(&rt, &format!("{path}:rawPredict"), &body);
    assert_eq!((r.outcome, r.status), (Outcome::Hit, 200));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("msg_vrtx_01") && id != "msg_vrtx_01PqR3sVx8TkWm2bNc5rLd7G", "{id}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = send(&rt, &format!("{path}:streamRawPredict"), &streamed);
    assert!(String::from_utf8(r.body).unwrap().starts_with("event: message_start\n"));
    let r = send(&rt, &format!("{path}:rawPredict"), &json!({"max_tokens": 1, "messages": []}));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (r.status, v["type"].as_str(), v["error"]["type"].as_str()),
        (404, Some("error"), Some("not_found_error"))
    );
}

#[test]
fn synthesized_text_embeddings_and_token_counts() {
    let rt = examples();
    let r = send(&rt, "/v1beta/models/synth-flash:streamGenerateContent?alt=sse", &question("anything"));
    assert_eq!((r.outcome, header(&r, "content-type")), (Outcome::Synthesized, Some("text/event-stream")));
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("\"modelVersion\":\"synth-flash\"") && text.contains("\"finishReason\":\"STOP\""), "{text}");
    let batch = json!({"requests": [
        {"content": {"parts": [{"text": "a"}], "role": "user"}, "model": "models/synth-embed"},
        {"content": {"parts": [{"text": "b"}], "role": "user"}, "model": "models/synth-embed", "outputDimensionality": 6},
    ]});
    let r = send(&rt, "/v1beta/models/synth-embed:batchEmbedContents", &batch);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(r.outcome, Outcome::Synthesized);
    assert_eq!(v["embeddings"][0]["values"].as_array().unwrap().len(), 4);
    assert_eq!(v["embeddings"][1]["values"].as_array().unwrap().len(), 6);
    let r = send(&rt, "/v1beta/models/synth-flash:countTokens", &question("How many tokens is this?"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["totalTokens"].as_u64().unwrap() > 2, "{v}");
    // No rule for this model: a miss.
    assert_eq!(send(&rt, "/v1beta/models/other:countTokens", &question("x")).status, 404);
}

#[test]
fn an_api_key_in_an_asset_path_is_refused() {
    let text = include_str!("../../../../examples/assets/gemini/generate-capital.json")
        .replace(":generateContent", ":generateContent?key=AIzaSyLeakedKey");
    let err = parse_asset_file(&text, "leak.json").unwrap_err().to_string();
    assert!(err.contains("leak.json#0") && err.contains("`key` carries a credential"), "{err}");
    assert!(!err.contains("AIzaSyLeakedKey"), "{err}");
}
