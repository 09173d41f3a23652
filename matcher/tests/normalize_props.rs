//! Normalization and runtime behaviour through the public API only: equivalence classes of spellings,
//! `ignore_fields` wildcards, configuration errors that name the field, and `Runtime::decide` for hits,
//! misses, bad requests, embeddings encodings, and bundle integrity (key mismatch, conflicts, duplicates).
//! Runs natively and under wasm32-wasip1 (`scripts/test-wasm.sh`); nothing here touches the filesystem.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use base64::Engine as _;
use serde_json::{json, Value};
use understudy_matcher::{
    classify, Asset, ConfigError, Decision, LocalResponse, NormalizationConfig, Normalizer, Operation, Outcome,
    RequestError, Route, Runtime, ScrubberConfig, Store, BUNDLE_FORMAT,
};

const CHAT: &str = "/v1/chat/completions";
const EMB: &str = "/v1/embeddings";
const MSG: &str = "/v1/messages";

fn route(path: &str) -> Route {
    classify("POST", path).unwrap_or_else(|| panic!("{path} not classified"))
}

fn norm(ignore: &[&str], scrub: &[(&str, &str)]) -> NormalizationConfig {
    NormalizationConfig {
        ignore_fields: ignore.iter().map(|s| s.to_string()).collect(),
        scrubbers: scrub
            .iter()
            .map(|(p, r)| ScrubberConfig { pattern: p.to_string(), placeholder: r.to_string() })
            .collect(),
    }
}

fn key_with(cfg: &NormalizationConfig, path: &str, body: &str) -> String {
    Normalizer::compile(cfg).unwrap().key(&route(path), body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}")).0
}

fn key(path: &str, body: &str) -> String {
    key_with(&NormalizationConfig::default(), path, body)
}

fn normalized(cfg: &NormalizationConfig, path: &str, body: Value) -> Value {
    let mut v = body;
    Normalizer::compile(cfg).unwrap().normalize(&route(path), &mut v).unwrap();
    v
}

fn assert_all_same(path: &str, bodies: &[&str]) {
    let k0 = key(path, bodies[0]);
    for b in bodies {
        assert_eq!(key(path, b), k0, "{b} vs {}", bodies[0]);
    }
}

// ---------------------------------------------------------------------------------------------------
// Equivalence classes
// ---------------------------------------------------------------------------------------------------

#[test]
fn number_spellings_form_exact_equivalence_classes() {
    let groups: &[&[&str]] = &[
        &["1", "1.0", "1e0", "1E0", "1e+0", "10e-1", "0.1e1", "1.000", "100E-2"],
        &["0.7", "0.70", "7e-1", "70E-2", "0.007e2"],
        &["0", "-0", "0.0", "-0.0", "0e5", "0E-5"],
        &["64", "64.0", "6.4e1", "6.4E+1", "640e-1"],
        &["-2.5", "-25e-1", "-0.25E1"],
        &["0.3"],
        &["0.30000000000000004"],
        &["1e21", "10e20", "1000000000000000000000"],
        &["1e-7", "0.0000001", "0.1e-6"],
        &["18446744073709551616", "1.8446744073709551616e19"],
        &["18446744073709551615"],
        &["-9223372036854775809", "-9.223372036854775809e18"],
    ];
    let mut seen: Vec<(String, &str)> = Vec::new();
    for g in groups {
        let keys: Vec<String> =
            g.iter().map(|lit| key(CHAT, &format!(r#"{{"model":"m","temperature":{lit}}}"#))).collect();
        for (lit, k) in g.iter().zip(&keys) {
            assert_eq!(k, &keys[0], "{lit} should equal {}", g[0]);
        }
        if let Some((_, other)) = seen.iter().find(|(k, _)| *k == keys[0]) {
            panic!("{} and {other} collided", g[0]);
        }
        seen.push((keys[0].clone(), g[0]));
    }
}

#[test]
fn number_spellings_inside_arrays_and_nested_objects() {
    assert_all_same(
        EMB,
        &[
            r#"{"model":"e","input":[[1,2.5,3],[0.1]],"x":{"y":{"z":100}}}"#,
            r#"{"model":"e","input":[[1.0,25e-1,3e0],[1e-1]],"x":{"y":{"z":1e2}}}"#,
            r#"{"x":{"y":{"z":100.00}},"input":[[10E-1,2.50,0.3e1],[0.10]],"model":"e"}"#,
        ],
    );
}

/// Every permutation of the top-level members, with varied whitespace, hashes to one key.
#[test]
fn member_order_and_whitespace_never_matter() {
    let members = [
        r#""model":"gpt-4o""#,
        r#""messages":[{"role":"user","content":"hi"}]"#,
        r#""temperature":0.2"#,
        r#""tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}]"#,
    ];
    let seps = [",", " , ", ",\n\t", "\r\n,  "];
    let want = key(CHAT, &format!("{{{}}}", members.join(",")));
    let mut idx = [0usize, 1, 2, 3];
    let mut count = 0;
    // Heap's algorithm over the 24 permutations.
    fn permute(k: usize, a: &mut [usize; 4], out: &mut Vec<[usize; 4]>) {
        if k == 1 {
            out.push(*a);
            return;
        }
        for i in 0..k {
            permute(k - 1, a, out);
            if k % 2 == 0 {
                a.swap(i, k - 1);
            } else {
                a.swap(0, k - 1);
            }
        }
    }
    let mut perms = Vec::new();
    permute(4, &mut idx, &mut perms);
    assert_eq!(perms.len(), 24);
    for (n, p) in perms.iter().enumerate() {
        let sep = seps[n % seps.len()];
        let body = format!(" \n{{ {} }}\t\n", p.iter().map(|&i| members[i]).collect::<Vec<_>>().join(sep));
        assert_eq!(key(CHAT, &body), want, "{body}");
        count += 1;
    }
    assert_eq!(count, 24);
}

#[test]
fn string_escapes_decode_to_one_value() {
    assert_all_same(
        CHAT,
        &[
            r#"{"model":"m","messages":[{"role":"user","content":"é ☕ \"q\" / \\ \t\n😀"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"\u00e9 \u2615 \u0022q\u0022 \/ \u005c \u0009\u000a\ud83d\ude00"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"\u00E9 \u2615 \"q\" / \\ \t\n\uD83D\uDE00"}]}"#,
        ],
    );
    // Escaped member names too.
    assert_all_same(
        CHAT,
        &[r#"{"model":"m","logit_bias":{"é":1}}"#, r#"{"\u006dodel":"m","logit_bias":{"\u00e9":1.0}}"#],
    );
    // No Unicode normalization, no case folding, no trimming.
    let base = key(CHAT, r#"{"model":"m","messages":[{"role":"user","content":"é"}]}"#);
    for other in ["e\u{301}", "É", " é", "é "] {
        let b = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{other}"}}]}}"#);
        assert_ne!(key(CHAT, &b), base, "{other:?}");
    }
}

#[test]
fn always_ignored_fields_are_ignored_for_every_operation() {
    let extras = r#""stream":true,"stream_options":{"include_usage":true},"user":"u","metadata":{"a":"b"},"store":false,"service_tier":"flex","safety_identifier":"s","prompt_cache_key":"p""#;
    for path in [CHAT, "/v1/completions", EMB, "/v1/responses", MSG] {
        let plain = key(path, r#"{"model":"m","input":"x"}"#);
        let noisy = key(path, &format!(r#"{{"model":"m",{extras},"input":"x"}}"#));
        assert_eq!(plain, noisy, "{path}");
        // Each ignored field alone, with a non-trivial value.
        for f in [
            "stream",
            "stream_options",
            "user",
            "metadata",
            "store",
            "service_tier",
            "safety_identifier",
            "prompt_cache_key",
        ] {
            let b = format!(r#"{{"model":"m","input":"x","{f}":[1,{{"n":null}}]}}"#);
            assert_eq!(key(path, &b), plain, "{path} {f}");
        }
        // Nested fields with the same names are not ignored: only top-level request fields are.
        let nested = key(path, r#"{"model":"m","input":"x","tools":[{"user":"u"}]}"#);
        let nested2 = key(path, r#"{"model":"m","input":"x","tools":[{"user":"v"}]}"#);
        assert_ne!(nested, nested2, "{path}");
    }
}

#[test]
fn encoding_format_is_ignored_only_for_embeddings() {
    let b = r#"{"model":"m","input":"x"}"#;
    let bf = r#"{"model":"m","input":"x","encoding_format":"base64"}"#;
    assert_eq!(key(EMB, b), key(EMB, bf));
    for path in [CHAT, "/v1/completions", "/v1/responses", MSG] {
        assert_ne!(key(path, b), key(path, bf), "{path}");
    }
}

#[test]
fn operation_is_part_of_the_key_but_gateway_prefix_is_not() {
    let body = r#"{"model":"m","input":"x"}"#;
    let mut keys: Vec<String> = Vec::new();
    for op_path in [CHAT, "/v1/completions", EMB, "/v1/responses", MSG] {
        let k = key(op_path, body);
        assert!(!keys.contains(&k), "{op_path} collides with another operation");
        keys.push(k.clone());
        for prefix in ["/gw", "/a/b/c", "/openai", "/proxy/v2"] {
            let p = format!("{prefix}{op_path}?x=1&y=2#frag");
            assert_eq!(key(&p, body), k, "{p}");
        }
    }
}

#[test]
fn azure_deployment_is_the_model() {
    let openai = key(CHAT, r#"{"model":"gpt-4o","messages":[]}"#);
    for (path, body) in [
        ("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", r#"{"messages":[]}"#),
        ("/openai/deployments/gpt-4o/chat/completions", r#"{"messages":[],"model":"ignored"}"#),
        ("/my/gateway/openai/deployments/gpt%2d4o/chat/completions?api-version=1", r#"{"messages":[]}"#),
    ] {
        assert_eq!(key(path, body), openai, "{path} {body}");
    }
    assert_ne!(key("/openai/deployments/gpt-4o-mini/chat/completions", r#"{"messages":[]}"#), openai);
    // The deployment is visible in the normalized body as `model`.
    let v = normalized(
        &NormalizationConfig::default(),
        "/openai/deployments/dep/embeddings",
        json!({"input": "x", "encoding_format": "float"}),
    );
    assert_eq!(v, json!({"model": "dep", "input": "x"}));
}

#[test]
fn semantically_different_requests_differ() {
    let base = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":0.7,"max_tokens":10}"#;
    let variants = [
        r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":0.7,"max_tokens":10}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":0.8,"max_tokens":10}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":0.7,"max_tokens":11}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"u"},{"role":"system","content":"s"}],"temperature":0.7,"max_tokens":10}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":0.7,"max_tokens":10,"seed":1}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":0.7,"max_tokens":10,"seed":2}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":0.7,"max_tokens":10,"n":2}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":0.7,"max_tokens":10,"n":null}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":"0.7","max_tokens":10}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"u "}],"temperature":0.7,"max_tokens":10}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"}],"temperature":0.7,"max_tokens":10}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"temperature":0.7}"#,
    ];
    let mut keys = vec![key(CHAT, base)];
    for v in variants {
        let k = key(CHAT, v);
        assert!(!keys.contains(&k), "{v} collides");
        keys.push(k);
    }
    // Embeddings dimensions.
    assert_ne!(key(EMB, r#"{"model":"e","input":"x"}"#), key(EMB, r#"{"model":"e","input":"x","dimensions":256}"#));
}

#[test]
fn duplicate_members_last_one_wins() {
    assert_eq!(key(CHAT, r#"{"model":"a","model":"b","x":{"k":1,"k":2}}"#), key(CHAT, r#"{"model":"b","x":{"k":2}}"#));
}

// ---------------------------------------------------------------------------------------------------
// ignore_fields and scrubbers
// ---------------------------------------------------------------------------------------------------

#[test]
fn ignore_fields_wildcard_reaches_every_array_element() {
    let cfg = norm(&["/messages/*/name"], &[]);
    let v = normalized(
        &cfg,
        CHAT,
        json!({"model": "m", "messages": [
            {"role": "user", "name": "a", "content": "x"},
            {"role": "assistant", "content": "y"},
            {"role": "user", "name": "b", "content": "z", "nested": {"name": "kept"}},
            "not an object",
            null
        ]}),
    );
    assert_eq!(
        v,
        json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y"},
            {"role": "user", "content": "z", "nested": {"name": "kept"}},
            "not an object",
            null
        ]})
    );
}

#[test]
fn ignore_fields_wildcard_reaches_every_object_member() {
    let cfg = norm(&["/extra/*/id", "/*/trace"], &[]);
    let v = normalized(
        &cfg,
        CHAT,
        json!({
            "model": "m",
            "extra": {"a": {"id": 1, "keep": true}, "b": {"id": 2}, "c": [{"id": 3}], "trace": "t"},
            "tools": {"trace": "x", "other": 1},
            "trace": "top-level stays: /*/trace is one level down"
        }),
    );
    assert_eq!(
        v,
        json!({
            "model": "m",
            "extra": {"a": {"keep": true}, "b": {}, "c": [{"id": 3}]},
            "tools": {"other": 1},
            "trace": "top-level stays: /*/trace is one level down"
        })
    );
}

#[test]
fn ignore_fields_with_indices_escapes_and_trailing_wildcards() {
    // A numeric segment is an array index (and an object member name on objects).
    let v = normalized(
        &norm(&["/messages/0/name", "/map/0"], &[]),
        CHAT,
        json!({"messages": [{"name": "a", "c": 1}, {"name": "b"}], "map": {"0": "x", "1": "y"}}),
    );
    assert_eq!(v, json!({"messages": [{"c": 1}, {"name": "b"}], "map": {"1": "y"}}));
    // ~1 is '/', ~0 is '~'.
    let v = normalized(
        &norm(&["/a~1b", "/c~0d", "/e~01"], &[]),
        CHAT,
        json!({"a/b": 1, "c~d": 2, "e~1": 3, "a": {"b": 4}, "keep": 5}),
    );
    assert_eq!(v, json!({"a": {"b": 4}, "keep": 5}));
    // A trailing `*` empties the container; the container itself stays.
    let v =
        normalized(&norm(&["/tools/*", "/extra/*"], &[]), CHAT, json!({"tools": [1, 2, 3], "extra": {"x": 1}, "m": 1}));
    assert_eq!(v, json!({"tools": [], "extra": {}, "m": 1}));
    // Pointers through missing members, scalars or out-of-range indices are no-ops.
    let body = json!({"a": 1, "b": [1], "c": "s"});
    let v = normalized(&norm(&["/zz/y", "/a/x", "/b/5", "/b/5/x", "/c/*", "/b/-1"], &[]), CHAT, body.clone());
    assert_eq!(v, body);
}

#[test]
fn ignore_fields_change_keys_only_where_they_point() {
    let cfg = norm(&["/messages/*/name", "/extra/*/request_id"], &[]);
    let a = r#"{"model":"m","messages":[{"role":"user","name":"alice","content":"hi"}],"extra":{"w":{"request_id":"1","r":"eu"}}}"#;
    let b = r#"{"model":"m","messages":[{"role":"user","name":"bob","content":"hi"}],"extra":{"w":{"request_id":"2","r":"eu"}}}"#;
    let c = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"extra":{"w":{"r":"eu"}}}"#;
    let d = r#"{"model":"m","messages":[{"role":"user","name":"alice","content":"hi"}],"extra":{"w":{"request_id":"1","r":"us"}}}"#;
    assert_eq!(key_with(&cfg, CHAT, a), key_with(&cfg, CHAT, b));
    assert_eq!(key_with(&cfg, CHAT, a), key_with(&cfg, CHAT, c));
    assert_ne!(key_with(&cfg, CHAT, a), key_with(&cfg, CHAT, d));
    assert_ne!(key(CHAT, a), key(CHAT, b));
}

#[test]
fn scrubbers_rewrite_string_values_in_order() {
    let ts = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})";
    let uuid = r"(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
    let cfg = norm(&[], &[(ts, "<TS>"), (uuid, "<ID>")]);
    let v = normalized(
        &cfg,
        CHAT,
        json!({
            "model": "m",
            "messages": [{"role": "user", "content": "at 2024-01-02T03:04:05Z and 2024-01-02T03:04:05.123+01:00 id 123E4567-E89B-12D3-A456-426614174000"}],
            "2024-01-02T03:04:05Z": "keys are not scrubbed",
            "n": 20240102,
            "deep": [[{"t": "1999-12-31T23:59:59-08:00"}]]
        }),
    );
    assert_eq!(
        v,
        json!({
            "model": "m",
            "messages": [{"role": "user", "content": "at <TS> and <TS> id <ID>"}],
            "2024-01-02T03:04:05Z": "keys are not scrubbed",
            "n": 20240102,
            "deep": [[{"t": "<TS>"}]]
        })
    );
    // Later scrubbers see earlier output; `$1` in a placeholder is literal.
    let cfg = norm(&[], &[("(a+)", "b$1"), ("b\\$1", "c")]);
    let v = normalized(&cfg, CHAT, json!({"x": "aaa-a"}));
    assert_eq!(v, json!({"x": "c-c"}));
    // Scrubbers run after ignore_fields and see the Azure deployment as `model`.
    let cfg = norm(&["/secret"], &[("^dep-[0-9]+$", "dep-N")]);
    let v = normalized(&cfg, "/openai/deployments/dep-42/chat/completions", json!({"secret": "dep-1", "messages": []}));
    assert_eq!(v, json!({"model": "dep-N", "messages": []}));
}

// ---------------------------------------------------------------------------------------------------
// Configuration errors name the field
// ---------------------------------------------------------------------------------------------------

fn invalid_field(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { field, .. } => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn bad_normalization_config_names_the_field() {
    let cases: &[(NormalizationConfig, &str)] = &[
        (norm(&["messages"], &[]), "normalization.ignore_fields[0]"),
        (norm(&["/ok", ""], &[]), "normalization.ignore_fields[1]"),
        (norm(&["/a", "/b", "/c~2"], &[]), "normalization.ignore_fields[2]"),
        (norm(&["/c~"], &[]), "normalization.ignore_fields[0]"),
        (norm(&[], &[("(", "x")]), "normalization.scrubbers[0].pattern"),
        (norm(&[], &[("ok", "x"), ("[z-a]", "x")]), "normalization.scrubbers[1].pattern"),
        (norm(&[], &[("a*", "x")]), "normalization.scrubbers[0].pattern"),
        (norm(&[], &[("^", "x")]), "normalization.scrubbers[0].pattern"),
    ];
    for (cfg, want) in cases {
        let e = Normalizer::compile(cfg).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(want), "{text}");
        assert_eq!(invalid_field(e), *want, "{cfg:?}");
    }
    // And the same errors surface from a whole plugin configuration.
    let e = Runtime::from_json(&config_json(
        "error",
        r#"{"scrubbers":[{"pattern":"x","placeholder":"y"},{"pattern":"(unclosed","placeholder":"y"}]}"#,
        &[],
    ))
    .unwrap_err();
    assert_eq!(invalid_field(e), "normalization.scrubbers[1].pattern");
    let e = Runtime::from_json(&config_json("error", r#"{"ignore_fields":["/fine","no-slash"]}"#, &[])).unwrap_err();
    assert_eq!(invalid_field(e), "normalization.ignore_fields[1]");
}

#[test]
fn bad_plugin_config_names_the_field() {
    let empty = format!(r#"{{"format":"{BUNDLE_FORMAT}","assets":[]}}"#);
    let cases: Vec<(String, &[&str])> = vec![
        (format!(r#"{{"on_mis":"error","bundle":{empty}}}"#), &["on_mis:", "unknown field `on_mis`"]),
        (
            format!(r#"{{"normalization":{{"ignore_field":[]}},"bundle":{empty}}}"#),
            &["normalization.ignore_field:", "unknown field `ignore_field`"],
        ),
        (
            format!(
                r#"{{"normalization":{{"scrubbers":[{{"pattern":"a","placeholder":"b","flags":"i"}}]}},"bundle":{empty}}}"#
            ),
            &["normalization.scrubbers[0].flags:"],
        ),
        (format!(r#"{{"on_miss":"sometimes","bundle":{empty}}}"#), &["on_miss:", "sometimes"]),
        (format!(r#"{{"bundle":{{"format":"{BUNDLE_FORMAT}","assets":[],"extra":1}}}}"#), &["bundle.extra:"]),
        (
            format!(
                r#"{{"bundle":{{"format":"{BUNDLE_FORMAT}","assets":[{{"key":"k","source":"s","asset":{{"request":{{"path":"/v1/embeddings","body":{{}},"headers":{{}}}},"response":{{"body":{{}}}}}}}}]}}}}"#
            ),
            &["bundle.assets[0].asset.request.headers:"],
        ),
        (format!(r#"{{"bundle":{empty}}} trailing"#), &["plugin configuration"]),
        ("not json".to_string(), &["plugin configuration"]),
    ];
    for (text, needles) in cases {
        let e = Runtime::from_json(&text).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{text}: expected a parse error, got {e:?}");
        let msg = e.to_string();
        for n in needles {
            assert!(msg.contains(n), "{text}: {msg:?} should mention {n:?}");
        }
    }
    let e = Runtime::from_json(r#"{"bundle":{"format":"understudy.bundle/v0","assets":[]}}"#).unwrap_err();
    assert_eq!(invalid_field(e), "bundle.format");
    // No bundle, no store (and no module with an embedded bundle): the field is named, with the three ways.
    let e = Runtime::from_json(r#"{"on_miss":"error"}"#).unwrap_err();
    assert!(e.to_string().contains("understudy publish"), "{e}");
    assert_eq!(invalid_field(e), "bundle");
}

#[test]
fn invalid_assets_in_a_bundle_name_the_asset() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("/v1/files", r#"{"body":{}}"#, &["bundle.assets[0]", "/v1/files"]),
        (
            CHAT,
            r#"{"body":{},"headers":{"Authorization":"Bearer x"}}"#,
            &["bundle.assets[0]", "Authorization", "secret"],
        ),
        (CHAT, r#"{"body":{},"body_text":"x"}"#, &["bundle.assets[0]", "body_text"]),
        (CHAT, r#"{"status":700,"body":{}}"#, &["response.status"]),
        (CHAT, r#"{}"#, &["response"]),
    ];
    for (path, response, needles) in cases {
        let text = format!(
            r#"{{"bundle":{{"format":"{BUNDLE_FORMAT}","assets":[{{"key":"k","source":"f.json#0","asset":{{"request":{{"path":"{path}","body":{{"model":"m"}}}},"response":{response}}}}}]}}}}"#
        );
        let e = Runtime::from_json(&text).unwrap_err();
        assert!(matches!(e, ConfigError::Asset { .. }), "{e:?}");
        let msg = e.to_string();
        for n in *needles {
            assert!(msg.contains(n), "{msg:?} should mention {n:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Runtime: bundles built with keys from the same API
// ---------------------------------------------------------------------------------------------------

struct A<'a> {
    name: &'a str,
    path: &'a str,
    body: &'a str,
    response: &'a str,
}

fn a<'a>(name: &'a str, path: &'a str, body: &'a str, response: &'a str) -> A<'a> {
    A { name, path, body, response }
}

/// A plugin configuration whose bundle keys are computed with `Normalizer::key` under `normalization`.
fn config_json(on_miss: &str, normalization: &str, assets: &[A<'_>]) -> String {
    let cfg: NormalizationConfig = serde_json::from_str(normalization).unwrap();
    let items: Vec<String> = assets
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let k = key_with(&cfg, x.path, x.body);
            format!(
                r#"{{"key":"{k}","source":"assets/t.json#{i}","asset":{{"name":{name},"request":{{"method":"POST","path":{path},"body":{body}}},"response":{response}}}}}"#,
                name = serde_json::to_string(x.name).unwrap(),
                path = serde_json::to_string(x.path).unwrap(),
                body = x.body,
                response = x.response,
            )
        })
        .collect();
    format!(
        r#"{{"on_miss":"{on_miss}","normalization":{normalization},"bundle":{{"format":"{BUNDLE_FORMAT}","assets":[{}]}}}}"#,
        items.join(",")
    )
}

fn runtime(on_miss: &str, assets: &[A<'_>]) -> Runtime {
    Runtime::from_json(&config_json(on_miss, "{}", assets)).unwrap_or_else(|e| panic!("{e}"))
}

fn respond(d: Decision) -> LocalResponse {
    match d {
        Decision::Respond(r) => r,
        other => panic!("expected a local response, got {other:?}"),
    }
}

fn header<'r>(r: &'r LocalResponse, name: &str) -> Option<&'r str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn json_body(r: &LocalResponse) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&r.body)))
}

const GREETING: &str =
    r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hi"}],"temperature":0.7,"max_tokens":16}"#;
const GREETING_RESPONSE: &str = r#"{"headers":{"content-type":"application/json","x-request-id":"req-1","Content-Length":"999","Connection":"close"},"body":{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}}"#;

fn chat_runtime(on_miss: &str) -> Runtime {
    runtime(
        on_miss,
        &[
            a("greeting", CHAT, GREETING, GREETING_RESPONSE),
            a(
                "farewell",
                CHAT,
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say bye"}],"temperature":0,"max_tokens":99,"seed":3}"#,
                r#"{"body":{"choices":[{"message":{"content":"Bye"}}]}}"#,
            ),
            a(
                "rate-limited",
                CHAT,
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"429 please"}]}"#,
                r#"{"status":429,"headers":{"retry-after":"1","content-type":"application/json"},"body":{"error":{"message":"slow down"}}}"#,
            ),
            a(
                "claude",
                MSG,
                r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Say hi"}]}"#,
                r#"{"body":{"type":"message","content":[{"type":"text","text":"Hi"}]}}"#,
            ),
        ],
    )
}

#[test]
fn hit_serves_the_asset_with_understudy_headers() {
    let rt = chat_runtime("error");
    assert_eq!(rt.asset_count(), 4);
    // A differently spelled but equivalent request.
    let req = r#"{ "max_tokens": 1.6e1, "stream": false, "temperature": 0.70,
                   "messages": [ { "content": "Say hi", "role": "user" } ], "model": "gpt-4o", "user": "x" }"#;
    let want_key = key(CHAT, GREETING);
    let r = respond(rt.decide(&route(CHAT), req.as_bytes()));
    assert_eq!(r.outcome, Outcome::Hit);
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-understudy"), Some("hit"));
    assert_eq!(header(&r, "x-understudy-key"), Some(want_key.as_str()));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(header(&r, "x-request-id"), Some("req-1"));
    // Hop-by-hop headers from the asset are dropped; Envoy computes them.
    assert_eq!(header(&r, "content-length"), None);
    assert_eq!(header(&r, "connection"), None);
    let stored: Value = serde_json::from_str(GREETING_RESPONSE).unwrap();
    // The id is refreshed per hit in the same format (assets opt out with "refresh": false); the rest is the asset's.
    let mut served = json_body(&r);
    let id = served["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("chatcmpl-") && id != "chatcmpl-1", "{id}");
    served["id"] = stored["body"]["id"].clone();
    assert_eq!(served, stored["body"]);

    // Stored status and headers are replayed.
    let r = respond(rt.decide(
        &route("/gw/v1/chat/completions"),
        br#"{"messages":[{"role":"user","content":"429 please"}],"model":"gpt-4o"}"#,
    ));
    assert_eq!((r.outcome, r.status), (Outcome::Hit, 429));
    assert_eq!(header(&r, "retry-after"), Some("1"));

    // An Azure request for deployment gpt-4o hits the OpenAI-recorded asset.
    let r = respond(rt.decide(
        &route("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
        br#"{"messages":[{"role":"user","content":"Say hi"}],"temperature":0.7,"max_tokens":16}"#,
    ));
    assert_eq!(r.outcome, Outcome::Hit);
    assert_eq!(header(&r, "x-understudy-key"), Some(want_key.as_str()));
}

#[test]
fn miss_under_error_is_a_404_that_explains_itself() {
    let rt = chat_runtime("error");
    let req = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hi"}],"temperature":0.9,"max_tokens":16}"#;
    let req_key = key(CHAT, req);
    let greeting_key = key(CHAT, GREETING);
    let r = respond(rt.decide(&route(CHAT), req.as_bytes()));
    assert_eq!((r.outcome, r.status), (Outcome::Miss, 404));
    assert_eq!(header(&r, "x-understudy"), Some("miss"));
    assert_eq!(header(&r, "x-understudy-key"), Some(req_key.as_str()));
    assert_eq!(header(&r, "x-understudy-operation"), Some("openai.chat_completions"));
    let body = json_body(&r);
    assert_eq!(body["error"]["code"], "understudy_no_matching_asset");
    assert_eq!(body["error"]["type"], "not_found_error");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&req_key), "{msg}");
    assert!(msg.contains("greeting"), "closest asset by name: {msg}");
    assert!(msg.contains(&greeting_key), "closest asset's key: {msg}");
    assert!(msg.contains("first difference at /temperature"), "{msg}");

    // The closest asset is the one with the fewest differing leaves, and the path goes into arrays.
    let req = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say bye!"}],"temperature":0,"max_tokens":99,"seed":3}"#;
    let msg =
        json_body(&respond(rt.decide(&route(CHAT), req.as_bytes())))["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("farewell"), "{msg}");
    assert!(msg.contains("first difference at /messages/0/content"), "{msg}");

    // Anthropic misses use Anthropic's error shape.
    let r = respond(rt.decide(
        &route(MSG),
        br#"{"model":"claude-sonnet-4-5","max_tokens":65,"messages":[{"role":"user","content":"Say hi"}]}"#,
    ));
    assert_eq!((r.outcome, r.status), (Outcome::Miss, 404));
    let body = json_body(&r);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("claude"), "{msg}");
    assert!(msg.contains("first difference at /max_tokens"), "{msg}");

    // No asset for the operation at all.
    let r = respond(rt.decide(&route(EMB), br#"{"model":"e","input":"x"}"#));
    assert_eq!(r.status, 404);
    let msg = json_body(&r)["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("No asset for openai.embeddings is loaded"), "{msg}");
}

#[test]
fn passthrough_forwards_misses_and_bad_requests_but_serves_hits() {
    let rt = chat_runtime("passthrough");
    assert_eq!(rt.decide(&route(CHAT), br#"{"model":"gpt-4o","messages":[]}"#), Decision::Forward(Outcome::Miss));
    for bad in [&b""[..], b"{", b"[]", b"  "] {
        assert_eq!(
            rt.decide(&route(CHAT), bad),
            Decision::Forward(Outcome::BadRequest),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let r = respond(rt.decide(&route(CHAT), GREETING.as_bytes()));
    assert_eq!(r.outcome, Outcome::Hit);
}

fn deep(n: usize, open: &str, close: &str) -> Vec<u8> {
    let mut s = String::with_capacity(n * (open.len() + close.len()));
    for _ in 0..n {
        s.push_str(open);
    }
    for _ in 0..n {
        s.push_str(close);
    }
    s.into_bytes()
}

fn bad_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", b"".to_vec()),
        ("whitespace", b" \n\t\r ".to_vec()),
        ("truncated", br#"{"model":"gpt-4o""#.to_vec()),
        ("array", br#"[{"model":"gpt-4o"}]"#.to_vec()),
        ("string", br#""hello""#.to_vec()),
        ("number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        ("trailing garbage", br#"{"model":"m"} {}"#.to_vec()),
        ("invalid utf-8", b"{\"model\":\"\xff\"}".to_vec()),
        ("lone surrogate", br#"{"model":"\ud800"}"#.to_vec()),
        ("nan", br#"{"temperature":NaN}"#.to_vec()),
        ("bom", b"\xef\xbb\xbf{}".to_vec()),
        ("single quotes", b"{'model':'m'}".to_vec()),
        ("trailing comma", br#"{"model":"m",}"#.to_vec()),
        ("10k [", "[".repeat(10_000).into_bytes()),
        ("10k {\"a\":", "{\"a\":".repeat(10_000).into_bytes()),
        ("10k balanced []", deep(10_000, "[", "]")),
        ("deep inside an object", [&br#"{"model":"m","x":"#[..], &deep(10_000, "[", "]"), b"}"].concat()),
    ]
}

#[test]
fn bad_bodies_are_400s_in_the_dialects_shape() {
    let rt = chat_runtime("error");
    for (what, body) in bad_bodies() {
        for (path, anthropic) in [(CHAT, false), (MSG, true), (EMB, false)] {
            let r = respond(rt.decide(&route(path), &body));
            assert_eq!((r.outcome, r.status), (Outcome::BadRequest, 400), "{what} on {path}");
            assert_eq!(header(&r, "x-understudy"), Some("bad-request"), "{what}");
            assert_eq!(header(&r, "x-understudy-key"), None, "{what}");
            let v = json_body(&r);
            if anthropic {
                assert_eq!(v["type"], "error", "{what}");
                assert_eq!(v["error"]["type"], "invalid_request_error", "{what}");
            } else {
                assert_eq!(v["error"]["code"], "understudy_bad_request", "{what}");
            }
        }
    }
}

#[test]
fn bad_bodies_have_typed_errors() {
    let n = Normalizer::compile(&NormalizationConfig::default()).unwrap();
    let r = route(CHAT);
    assert_eq!(n.key(&r, b"").unwrap_err(), RequestError::Empty);
    assert_eq!(n.key(&r, b"\n ").unwrap_err(), RequestError::Empty);
    assert_eq!(n.key(&r, b"[]").unwrap_err(), RequestError::NotAnObject);
    assert_eq!(n.key(&r, b"1").unwrap_err(), RequestError::NotAnObject);
    assert!(matches!(n.key(&r, "[".repeat(10_000).as_bytes()).unwrap_err(), RequestError::Malformed(_)));
    assert!(matches!(n.key(&r, b"{").unwrap_err(), RequestError::Malformed(_)));
}

#[test]
fn moderately_deep_bodies_still_work() {
    // Well within the parser's nesting limit: keyed, hashed and served like any other body.
    let nested = String::from_utf8(deep(100, "[", "]")).unwrap();
    let body = format!(r#"{{"model":"m","input":{nested}}}"#);
    let rt = runtime("error", &[a("deep", EMB, &body, r#"{"body":{"data":[]}}"#)]);
    let r = respond(rt.decide(&route(EMB), body.as_bytes()));
    assert_eq!(r.outcome, Outcome::Hit);
}

#[test]
fn deeply_nested_config_is_an_error_not_a_crash() {
    let nested = String::from_utf8(deep(10_000, "[", "]")).unwrap();
    let text = format!(
        r#"{{"bundle":{{"format":"{BUNDLE_FORMAT}","assets":[{{"key":"k","source":"s","asset":{{"request":{{"path":"/v1/embeddings","body":{{"input":{nested}}}}},"response":{{"body":{{}}}}}}}}]}}}}"#
    );
    let e = Runtime::from_json(&text).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------------------
// Embeddings encodings
// ---------------------------------------------------------------------------------------------------

const EMB_REQ: &str = r#"{"model":"text-embedding-3-small","input":["a","b"]}"#;

fn f32s_of_base64(s: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    assert_eq!(bytes.len() % 4, 0);
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn base64_of_f32s(xs: &[f32]) -> String {
    let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn f32s_of_array(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn float_embeddings_are_served_as_base64_when_asked() {
    let v0 = [0.1f32, -2.5, 3.0e-8, 0.0, 1.0];
    let v1 = [0.25f32, 1.5e10];
    let response = r#"{"body":{"object":"list","model":"text-embedding-3-small","data":[{"object":"embedding","index":0,"embedding":[0.1,-2.5,3.0e-8,0,1.0]},{"object":"embedding","index":1,"embedding":[0.25,1.5e10]}],"usage":{"prompt_tokens":2,"total_tokens":2}}}"#;
    let rt = runtime("error", &[a("emb", EMB, EMB_REQ, response)]);
    let stored: Value = serde_json::from_str(response).unwrap();

    // base64 requested: vectors converted, everything else as stored.
    let r = respond(
        rt.decide(&route(EMB), br#"{"model":"text-embedding-3-small","input":["a","b"],"encoding_format":"base64"}"#),
    );
    assert_eq!(r.outcome, Outcome::Hit);
    let body = json_body(&r);
    assert_eq!(f32s_of_base64(body["data"][0]["embedding"].as_str().unwrap()), v0);
    assert_eq!(f32s_of_base64(body["data"][1]["embedding"].as_str().unwrap()), v1);
    assert_eq!(body["usage"], stored["body"]["usage"]);
    assert_eq!(body["data"][1]["index"], 1);

    // float requested, explicitly or by default: served exactly as stored.
    for req in [EMB_REQ, r#"{"model":"text-embedding-3-small","input":["a","b"],"encoding_format":"float"}"#] {
        let r = respond(rt.decide(&route(EMB), req.as_bytes()));
        assert_eq!(json_body(&r), stored["body"], "{req}");
        assert_eq!(r.body, serde_json::to_vec(&stored["body"]).unwrap(), "{req}");
    }
}

#[test]
fn base64_embeddings_are_served_as_floats_when_asked() {
    let v = [0.1f32, -2.5, 3.0e-8, 7.0];
    let b64 = base64_of_f32s(&v);
    let response =
        format!(r#"{{"body":{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":"{b64}"}}]}}}}"#);
    let rt = runtime(
        "error",
        &[a(
            "emb64",
            EMB,
            r#"{"model":"text-embedding-3-small","input":["a","b"],"encoding_format":"base64"}"#,
            &response,
        )],
    );
    // Float (the default) requested: decoded to numbers whose f32 values are bit-identical.
    let r = respond(rt.decide(&route(EMB), EMB_REQ.as_bytes()));
    assert_eq!(r.outcome, Outcome::Hit);
    let floats = f32s_of_array(&json_body(&r)["data"][0]["embedding"]);
    assert_eq!(
        floats.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
        v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
    );
    // base64 requested: as stored.
    let r = respond(
        rt.decide(&route(EMB), br#"{"encoding_format":"base64","model":"text-embedding-3-small","input":["a","b"]}"#),
    );
    assert_eq!(json_body(&r)["data"][0]["embedding"], b64.as_str());
}

// ---------------------------------------------------------------------------------------------------
// Bundle integrity
// ---------------------------------------------------------------------------------------------------

#[test]
fn wrong_stored_key_is_a_key_mismatch() {
    let good = config_json("error", "{}", &[a("g", CHAT, GREETING, r#"{"body":{}}"#)]);
    let real = key(CHAT, GREETING);
    let bad_key = "0".repeat(64);
    let text = good.replace(&real, &bad_key);
    assert_ne!(text, good);
    match Runtime::from_json(&text).unwrap_err() {
        ConfigError::KeyMismatch { asset, stored, computed } => {
            assert!(asset.contains("bundle.assets[0]"), "{asset}");
            assert!(asset.contains("assets/t.json#0"), "{asset}");
            assert_eq!(stored, bad_key);
            assert_eq!(computed, real);
        }
        other => panic!("{other:?}"),
    }
    // A bundle built with other normalization settings is also caught.
    let scrubbed = r#"{"scrubbers":[{"pattern":"hi","placeholder":"X"}]}"#;
    let text = config_json("error", scrubbed, &[a("g", CHAT, GREETING, r#"{"body":{}}"#)]);
    Runtime::from_json(&text).unwrap();
    let text = text.replace(&key_with(&serde_json::from_str(scrubbed).unwrap(), CHAT, GREETING), &real);
    assert!(matches!(Runtime::from_json(&text).unwrap_err(), ConfigError::KeyMismatch { .. }));
}

#[test]
fn same_key_different_response_is_a_conflict() {
    let respelled = r#"{"temperature":7e-1,"max_tokens":16,"model":"gpt-4o","messages":[{"content":"Say hi","role":"user"}],"stream":true}"#;
    let e = Runtime::from_json(&config_json(
        "error",
        "{}",
        &[
            a("first", CHAT, GREETING, r#"{"body":{"answer":1}}"#),
            a("second", CHAT, respelled, r#"{"body":{"answer":2}}"#),
        ],
    ))
    .unwrap_err();
    match e {
        ConfigError::Conflict { key: k, first, second } => {
            assert_eq!(k, key(CHAT, GREETING));
            assert!(first.contains("first"), "{first}");
            assert!(second.contains("second"), "{second}");
        }
        other => panic!("{other:?}"),
    }
    // Same body, different status: also a conflict.
    let e = Runtime::from_json(&config_json(
        "error",
        "{}",
        &[
            a("first", CHAT, GREETING, r#"{"body":{"answer":1}}"#),
            a("second", CHAT, GREETING, r#"{"status":500,"body":{"answer":1}}"#),
        ],
    ))
    .unwrap_err();
    assert!(matches!(e, ConfigError::Conflict { .. }), "{e:?}");
}

#[test]
fn identical_duplicates_are_recorded_not_errors() {
    let respelled =
        r#"{"temperature":0.70,"max_tokens":16,"model":"gpt-4o","messages":[{"content":"Say hi","role":"user"}]}"#;
    let rt = Runtime::from_json(&config_json(
        "error",
        "{}",
        &[
            a("first", CHAT, GREETING, r#"{"body":{"answer":1}}"#),
            a("second", CHAT, respelled, r#"{"body":{"answer":1}}"#),
            a("third", CHAT, GREETING, r#"{"body":{"answer":1}}"#),
        ],
    ))
    .unwrap();
    assert_eq!(rt.asset_count(), 1);

    // The shared Store records which copies were skipped.
    let n = Normalizer::compile(&NormalizationConfig::default()).unwrap();
    let mut set = Store::default();
    let mk = |body: &str, name: &str| -> Asset {
        serde_json::from_value(json!({
            "name": name,
            "request": {"path": CHAT, "body": serde_json::from_str::<Value>(body).unwrap()},
            "response": {"body": {"answer": 1}}
        }))
        .unwrap()
    };
    let k1 = set.add(&n, "a.json#0", &mk(GREETING, "one"), None).unwrap();
    let k2 = set.add(&n, "b.json#3", &mk(respelled, "two"), Some(&k1)).unwrap();
    assert_eq!(k1, k2);
    assert_eq!(set.len(), 1);
    assert_eq!(set.duplicates().len(), 1);
    let (kept, skipped) = &set.duplicates()[0];
    assert!(kept.contains("a.json#0") && kept.contains("one"), "{kept}");
    assert!(skipped.contains("b.json#3") && skipped.contains("two"), "{skipped}");
    assert_eq!(set.counts(), vec![(Operation::ChatCompletions, 1)]);
}

// ---------------------------------------------------------------------------------------------------
// Robustness: decide() never panics
// ---------------------------------------------------------------------------------------------------

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_bodies_never_panic_and_classify_consistently() {
    let rt = chat_runtime("error");
    let seeds = [
        GREETING.as_bytes(),
        br#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Say hi"}]}"#,
        EMB_REQ.as_bytes(),
        br#"{"a":[1,2.5e-3,-0,{"b":"\u00e9\"\\"}],"c":null,"d":true}"#,
    ];
    let alphabet = b"{}[]\",:0123456789.eE+-\\u \n\ttruefalsenull\xff\xc3\xa9";
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let n = Normalizer::compile(&NormalizationConfig::default()).unwrap();
    let mut outcomes = [0usize; 3];
    for i in 0..3000 {
        let mut body = seeds[i % seeds.len()].to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(body.len() + 1);
            match rng.below(4) {
                0 if at < body.len() => {
                    body.remove(at);
                }
                1 => body.insert(at, alphabet[rng.below(alphabet.len())]),
                2 if at < body.len() => body[at] = alphabet[rng.below(alphabet.len())],
                _ => body.truncate(at),
            }
        }
        for path in [CHAT, MSG, EMB] {
            let r = route(path);
            let d = rt.decide(&r, &body);
            let parsed_ok = n.key(&r, &body).is_ok();
            let outcome = match &d {
                Decision::Respond(resp) => {
                    assert!(serde_json::from_slice::<Value>(&resp.body).is_ok() || resp.outcome == Outcome::Hit);
                    resp.outcome
                }
                Decision::Forward(o) => panic!("error mode never forwards: {o:?}"),
                Decision::Fetch(f) => panic!("no store is configured, yet a fetch of {}", f.key),
            };
            assert_eq!(outcome == Outcome::BadRequest, !parsed_ok, "{:?} on {path}", String::from_utf8_lossy(&body));
            outcomes[match outcome {
                Outcome::Hit => 0,
                Outcome::Miss => 1,
                Outcome::BadRequest => 2,
                Outcome::Synthesized => panic!("no synthesize rules are configured"),
                Outcome::OverBudget => panic!("small bodies are never over the request budget"),
            }] += 1;
        }
    }
    // The mutations exercise both sides.
    assert!(outcomes[1] > 100 && outcomes[2] > 100, "{outcomes:?}");
}
