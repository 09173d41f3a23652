//! Inputs found by fuzzing (`scripts/fuzz.sh`) or the property tests (`tests/props.rs`) that broke a
//! property, minimized, one test each. A test for a bug not fixed yet is `#[ignore = "why"]`; fixing the bug
//! means removing the `ignore`. Runs natively and under wasm32-wasip1 (`scripts/test-wasm.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use understudy_matcher::canonical::canonical_number;
use understudy_matcher::{classify, NormalizationConfig, Normalizer};

fn key(body: &str) -> String {
    let route = classify("POST", "/v1/chat/completions").unwrap();
    Normalizer::compile(&NormalizationConfig::default()).unwrap().key(&route, body.as_bytes()).unwrap().0
}

/// `parse_exp` used to clamp exponents to `i64::MAX / 4` (2305843009213693951) before the mantissa's digits
/// shifted them, so near the clamp the canonical spelling was neither idempotent nor one-per-value. Found
/// while writing the `canonical_number` idempotence property. Fixed with exact i128 exponent arithmetic.
#[test]
fn canonical_number_near_the_exponent_clamp() {
    // 123e2305843009213693951 == 1.23e2305843009213693953.
    let once = canonical_number("123e2305843009213693951");
    assert_eq!(canonical_number(&once), once, "not idempotent");
    assert_eq!(once, canonical_number("1.23e2305843009213693953"), "one value, two canonical spellings");
    // Different values must keep different spellings (and keys).
    assert_ne!(canonical_number("1.23e2305843009213693953"), canonical_number("1.23e2305843009213693951"));
    assert_eq!(key(r#"{"t":123e2305843009213693951}"#), key(r#"{"t":1.23e2305843009213693953}"#));
    assert_ne!(key(r#"{"t":1.23e2305843009213693953}"#), key(r#"{"t":1.23e2305843009213693951}"#));
}

/// Found by the `sse` fuzz target: Bedrock's opaque InvokeModel stream rendered a JSON array body as a `chunk`
/// whose bytes its own assembly refused (a chunk holds one JSON object). Rendering now refuses such a body, so
/// whatever renders assembles.
#[test]
fn an_opaque_bedrock_stream_of_a_non_object_body_is_refused_not_unreadable() {
    use understudy_matcher::stream::{assemble_recorded, render_stream, StreamOptions};
    let route = classify("POST", "/model/meta.llama3-8b-instruct-v1%3A0/invoke-with-response-stream").unwrap();
    let opts = StreamOptions::default();
    assert!(render_stream(&route, &serde_json::json!([{"generation": "a"}, {"generation": "b"}]), &opts).is_err());
    let stream = render_stream(&route, &serde_json::json!({"generation": "ok", "stop_reason": "stop"}), &opts).unwrap();
    assert_eq!(assemble_recorded(&route, &stream).unwrap()["generation"], "ok");
}
