//! AWS Bedrock Runtime through the public API: the example assets of `examples/assets/bedrock` in a runtime,
//! decided on Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream routes as boto3 spells
//! them: hits, streams rendered from plain answers, recorded streams served verbatim and assembled, misses
//! and bad bodies in Bedrock's error shape, and synthesized answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use base64::Engine as _;
use serde_json::{json, Value};
use understudy_matcher::stream::{assemble_recorded, render_stream, StreamOptions};
use understudy_matcher::synth::SynthRule;
use understudy_matcher::{
    classify, parse_asset_file, Asset, Bundle, BundledAsset, Decision, LocalResponse, NormalizationConfig, Normalizer,
    OnMiss, Operation, Outcome, PluginConfig, Route, Runtime, Store,
};

const HAIKU: &str = "anthropic.claude-3-5-haiku-20241022-v1%3A0";
const EVENTSTREAM: &str = "application/vnd.amazon.eventstream";

const FILES: &[(&str, &str)] = &[
    ("converse.json", include_str!("../../examples/assets/bedrock/converse.json")),
    ("converse-stream-recorded.json", include_str!("../../examples/assets/bedrock/converse-stream-recorded.json")),
    ("invoke-claude.json", include_str!("../../examples/assets/bedrock/invoke-claude.json")),
    ("titan-embed.json", include_str!("../../examples/assets/bedrock/titan-embed.json")),
];

fn route(path: &str) -> Route {
    classify("POST", path).unwrap_or_else(|| panic!("{path} not classified"))
}

fn assets() -> Vec<(String, Asset)> {
    let mut all = Vec::new();
    for (name, text) in FILES {
        all.extend(parse_asset_file(text, name).unwrap());
    }
    all
}

/// A Claude answer recorded on Bedrock's InvokeModelWithResponseStream (chunks), and one recorded as SSE on
/// the Anthropic API with the Bedrock model id: both answer Bedrock's stream and plain routes.
fn recorded_claude_streams() -> Vec<(String, Asset)> {
    let message = |text: &str| {
        json!({"id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
               "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
               "usage": {"input_tokens": 9, "output_tokens": 4}})
    };
    let opts = StreamOptions::default();
    let chunks =
        render_stream(&route(&format!("/model/{HAIKU}/invoke-with-response-stream")), &message("From chunks."), &opts)
            .unwrap();
    let sse = render_stream(&Route::of(Operation::Messages), &message("From SSE."), &opts).unwrap();
    let body = |prompt: &str| json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]});
    let mut on_messages = body("sse");
    on_messages.as_object_mut().unwrap().remove("anthropic_version");
    on_messages["model"] = json!("anthropic.claude-3-5-haiku-20241022-v1:0");
    vec![
        (
            "chunks#0".into(),
            serde_json::from_value(json!({
                "request": {"path": format!("/model/{HAIKU}/invoke-with-response-stream"), "body": body("chunks")},
                "response": {"body_base64": base64::engine::general_purpose::STANDARD.encode(&chunks)},
            }))
            .unwrap(),
        ),
        (
            "sse#0".into(),
            serde_json::from_value(json!({
                "request": {"path": "/v1/messages", "body": on_messages},
                "response": {"body_text": String::from_utf8(sse).unwrap()},
            }))
            .unwrap(),
        ),
    ]
}

fn runtime(on_miss: OnMiss) -> Runtime {
    let normalization = NormalizationConfig::default();
    let normalizer = Normalizer::compile(&normalization).unwrap();
    let mut store = Store::default();
    let mut bundled = Vec::new();
    for (label, asset) in assets().into_iter().chain(recorded_claude_streams()) {
        let key = store.add(&normalizer, &label, &asset, None).unwrap_or_else(|e| panic!("{label}: {e}"));
        bundled.push(BundledAsset { key, source: label, asset });
    }
    let synthesize: Vec<SynthRule> = serde_json::from_value(json!([
        {"operation": "bedrock.converse", "model": "amazon.nova-*", "text": "A modeled answer."},
        {"operation": "bedrock.titan_embeddings"},
        {"operation": "anthropic.messages", "model": "anthropic.claude-3-haiku-*", "echo": true},
    ]))
    .unwrap();
    let cfg = PluginConfig {
        on_miss,
        normalization,
        bundle: Some(Bundle::sealed(bundled)),
        synthesize,
        ..PluginConfig::default()
    };
    Runtime::compile(cfg).unwrap()
}

fn respond(rt: &Runtime, path: &str, body: &Value) -> LocalResponse {
    match rt.decide_at(&route(path), body.to_string().as_bytes(), 1_800_000_000_000_000_000) {
        Decision::Respond(r) => r,
        Decision::Forward(o) => panic!("{path}: forwarded ({o:?})"),
        Decision::Fetch(f) => panic!("{path}: fetched {}", f.key),
    }
}

fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn asset_body(i: usize) -> Value {
    serde_json::to_value(&assets()[i].1.request.body).unwrap()
}

fn asset_answer(i: usize) -> Value {
    assets()[i].1.response.clone().unwrap().body.unwrap()
}

#[test]
fn converse_hits_plain_and_streamed_from_one_asset() {
    let rt = runtime(OnMiss::Error);
    for i in [0, 1] {
        let r = respond(&rt, &format!("/model/{HAIKU}/converse"), &asset_body(i));
        assert_eq!((r.outcome, r.status), (Outcome::Hit, 200));
        assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), asset_answer(i));
        let path = format!("/model/{HAIKU}/converse-stream");
        let r = respond(&rt, &path, &asset_body(i));
        assert_eq!((r.outcome, header(&r, "content-type")), (Outcome::Hit, Some(EVENTSTREAM)));
        assert_eq!(assemble_recorded(&route(&path), &r.body).unwrap(), asset_answer(i));
    }
}

#[test]
fn a_recorded_converse_stream_is_served_verbatim_and_assembled() {
    let rt = runtime(OnMiss::Error);
    let recorded = assets()[2].1.response.clone().unwrap().body_base64.unwrap();
    let recorded = base64::engine::general_purpose::STANDARD.decode(recorded).unwrap();
    let r = respond(&rt, &format!("/model/{HAIKU}/converse-stream"), &asset_body(2));
    assert_eq!(r.body, recorded);
    assert_eq!(header(&r, "content-type"), Some(EVENTSTREAM));
    let r = respond(&rt, &format!("/model/{HAIKU}/converse"), &asset_body(2));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["output"]["message"]["content"], json!([{"text": "Red, yellow and blue."}]));
    assert_eq!(v["stopReason"], "end_turn");
    assert_eq!(v["usage"]["totalTokens"], 22);
    assert!(v.get("p").is_none(), "AWS's padding is not part of the answer: {v}");
    assert_eq!(header(&r, "content-type"), Some("application/json"));
}

#[test]
fn claude_on_invoke_model_hits_streams_and_refreshes_its_id() {
    let rt = runtime(OnMiss::Error);
    let r = respond(&rt, &format!("/model/{HAIKU}/invoke"), &asset_body(3));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let want = asset_answer(3);
    assert_eq!(v["content"], want["content"]);
    assert_ne!(v["id"], want["id"]);
    assert_eq!(v["id"].as_str().unwrap().len(), want["id"].as_str().unwrap().len());
    assert_eq!(header(&r, "x-amzn-bedrock-input-token-count"), Some("14"));
    let path = format!("/model/{HAIKU}/invoke-with-response-stream");
    let r = respond(&rt, &path, &asset_body(3));
    assert_eq!(header(&r, "content-type"), Some(EVENTSTREAM));
    assert_eq!(assemble_recorded(&route(&path), &r.body).unwrap()["content"], want["content"]);
}

#[test]
fn recorded_claude_streams_answer_both_bedrock_routes() {
    let rt = runtime(OnMiss::Error);
    let streamed = format!("/model/{HAIKU}/invoke-with-response-stream");
    for (prompt, text) in [("chunks", "From chunks."), ("sse", "From SSE.")] {
        let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]});
        let r = respond(&rt, &streamed, &body);
        assert_eq!((r.outcome, header(&r, "content-type")), (Outcome::Hit, Some(EVENTSTREAM)), "{prompt}");
        assert_eq!(assemble_recorded(&route(&streamed), &r.body).unwrap()["content"][0]["text"], text);
        let r = respond(&rt, &format!("/model/{HAIKU}/invoke"), &body);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["content"][0]["text"], text, "{prompt}");
    }
}

#[test]
fn misses_and_bad_bodies_get_bedrocks_error_shape() {
    let rt = runtime(OnMiss::Error);
    let miss = json!({"messages": [{"role": "user", "content": [{"text": "never recorded"}]}]});
    let r = respond(&rt, &format!("/model/{HAIKU}/converse-stream"), &miss);
    assert_eq!((r.outcome, r.status), (Outcome::Miss, 404));
    assert_eq!(header(&r, "x-amzn-errortype"), Some("ResourceNotFoundException"));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let key = header(&r, "x-understudy-key").unwrap();
    assert!(v["message"].as_str().unwrap().contains(key), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 1);
    let Decision::Respond(r) = rt.decide_at(&route(&format!("/model/{HAIKU}/invoke")), b"{not json", 0) else {
        panic!()
    };
    assert_eq!((r.outcome, r.status), (Outcome::BadRequest, 400));
    assert_eq!(header(&r, "x-amzn-errortype"), Some("ValidationException"));
    // Passthrough forwards misses.
    let rt = runtime(OnMiss::Passthrough);
    let d = rt.decide_at(&route(&format!("/model/{HAIKU}/converse")), miss.to_string().as_bytes(), 0);
    assert_eq!(d, Decision::Forward(Outcome::Miss));
}

#[test]
fn synthesized_bedrock_answers() {
    let rt = runtime(OnMiss::Error);
    let ask = json!({"messages": [{"role": "user", "content": [{"text": "Anything?"}]}]});
    let r = respond(&rt, "/model/amazon.nova-lite-v1%3A0/converse", &ask);
    assert_eq!(r.outcome, Outcome::Synthesized);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["output"]["message"]["content"][0]["text"], "A modeled answer.");
    assert!(v["usage"]["inputTokens"].as_u64().unwrap() > 0);
    let path = "/model/amazon.nova-lite-v1%3A0/converse-stream";
    let r = respond(&rt, path, &ask);
    assert_eq!(header(&r, "content-type"), Some(EVENTSTREAM));
    assert_eq!(assemble_recorded(&route(path), &r.body).unwrap(), v);

    let titan = json!({"inputText": "never recorded", "dimensions": 512});
    let r = respond(&rt, "/model/amazon.titan-embed-text-v2%3A0/invoke", &titan);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((r.outcome, v["embedding"].as_array().unwrap().len()), (Outcome::Synthesized, 512));
    assert!(v["inputTextTokenCount"].as_u64().unwrap() > 0);

    let claude = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": "Echo this"}]});
    let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream";
    let r = respond(&rt, path, &claude);
    assert_eq!((r.outcome, header(&r, "content-type")), (Outcome::Synthesized, Some(EVENTSTREAM)));
    let v = assemble_recorded(&route(path), &r.body).unwrap();
    assert_eq!(v["content"][0]["text"], "Echo this");
    assert_eq!(v["model"], "anthropic.claude-3-haiku-20240307-v1:0");
}

#[test]
fn a_corrupt_recorded_stream_is_refused_when_the_bundle_is_built() {
    let mut asset = assets()[2].1.clone();
    let resp = asset.response.as_mut().unwrap();
    let mut bytes = base64::engine::general_purpose::STANDARD.decode(resp.body_base64.take().unwrap()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    resp.body_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&bytes));
    let e = Store::default().add(&Normalizer::default(), "bad.json#0", &asset, None).unwrap_err().to_string();
    assert!(e.contains("body_base64") && e.contains("message CRC"), "{e}");
}
