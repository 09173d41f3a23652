//! The `x-understudy-closest` header of a strict miss: `<key> <label>`, the label percent-encoded outside
//! printable ASCII, naming asset metadata only (never request content). `understudy run` reads it from
//! Envoy's access log to name the closest asset of every miss in its summary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use serde_json::json;
use understudy_matcher::{
    classify, Bundle, BundledAsset, Decision, NormalizationConfig, Normalizer, OnMiss, Outcome, PluginConfig, Runtime,
};

fn asset(content: &str, name: &str, source: &str) -> BundledAsset {
    asset_for("m", content, name, source)
}

fn asset_for(model: &str, content: &str, name: &str, source: &str) -> BundledAsset {
    let body = json!({"model": model, "messages": [{"role": "user", "content": content}]});
    let route = classify("POST", "/v1/chat/completions").unwrap();
    let text = serde_json::to_vec(&body).unwrap();
    let (key, _) = Normalizer::compile(&NormalizationConfig::default()).unwrap().key(&route, &text).unwrap();
    serde_json::from_value(json!({
        "key": key, "source": source,
        "asset": {
            "name": name,
            "request": {"path": "/v1/chat/completions", "body": body},
            "response": {"body": {"id": "x", "choices": []}},
        },
    }))
    .unwrap()
}

fn runtime(assets: Vec<BundledAsset>, on_miss: OnMiss) -> Runtime {
    let cfg = PluginConfig { on_miss, bundle: Some(Bundle::sealed(assets)), ..PluginConfig::default() };
    Runtime::compile(cfg).unwrap()
}

fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    let Decision::Respond(r) = d else { panic!("expected a local answer, got {d:?}") };
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn a_strict_miss_names_the_closest_asset_by_key_and_label() {
    let near = asset("What is the capital of France?", "capital: France ½ %", "openai/capital.json#0");
    let far = asset_for("other", "Write a poem", "poem", "poem.json#0");
    let near_key = near.key.clone();
    let rt = runtime(vec![far, near], OnMiss::Error);
    let route = classify("POST", "/v1/chat/completions").unwrap();
    let secret = "What is the capital of Spain?";
    let body = json!({"model": "m", "messages": [{"role": "user", "content": secret}]}).to_string();
    let d = rt.decide(&route, body.as_bytes());
    let Decision::Respond(r) = &d else { panic!("{d:?}") };
    assert_eq!((r.outcome, r.status), (Outcome::Miss, 404));
    let closest = header(&d, "x-understudy-closest").expect("a strict miss names its closest asset");
    let (key, label) = closest.split_once(' ').unwrap();
    assert_eq!(key, near_key);
    // Debug-quoted name and source, as the miss message shows it; non-ASCII and `%` percent-encoded.
    assert_eq!(label, r#""capital: France %C2%BD %25" (bundle.assets[1] from openai/capital.json#0)"#);
    assert!(closest.bytes().all(|b| (b' '..=b'~').contains(&b)), "not a valid header value: {closest:?}");
    assert!(!closest.contains("Spain"), "request content leaked into the header: {closest:?}");
}

#[test]
fn the_label_in_the_header_is_bounded() {
    let long = "n".repeat(5000);
    let rt = runtime(vec![asset("hi", &long, "a.json#0")], OnMiss::Error);
    let route = classify("POST", "/v1/chat/completions").unwrap();
    let d = rt.decide(&route, br#"{"model": "m", "messages": [{"role": "user", "content": "bye"}]}"#);
    let closest = header(&d, "x-understudy-closest").unwrap();
    assert_eq!(closest.len(), 64 + 1 + 256);
}

#[test]
fn no_closest_header_without_a_candidate_nor_on_hits() {
    let rt = runtime(vec![asset("hi", "hi", "a.json#0")], OnMiss::Error);
    let emb = classify("POST", "/v1/embeddings").unwrap();
    let d = rt.decide(&emb, br#"{"model": "e", "input": "x"}"#);
    assert_eq!(header(&d, "x-understudy"), Some("miss"));
    assert_eq!(header(&d, "x-understudy-closest"), None, "no embeddings asset is loaded");
    let chat = classify("POST", "/v1/chat/completions").unwrap();
    let d = rt.decide(&chat, br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#);
    assert_eq!(header(&d, "x-understudy"), Some("hit"));
    assert_eq!(header(&d, "x-understudy-closest"), None);
}
