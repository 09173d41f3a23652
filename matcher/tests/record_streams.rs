//! Every API's streams record whole, and none cut short does: each example asset is served as a stream (the
//! stream variant of its path, or `"stream": true`), the served bytes are fed to the recorder in small pieces
//! as if the live API had sent them, and the capture must keep the stream; the same stream cut at two thirds
//! must not be recorded. New APIs' examples join the check by being in `examples/assets`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use serde_json::json;
use understudy_matcher::record::{CaptureDoc, Mode, RecordConfig, Recorder};
use understudy_matcher::{
    classify, parse_asset_file, Bundle, BundledAsset, Decision, NormalizationConfig, Normalizer, PluginConfig, Runtime,
};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/assets");

fn examples() -> Vec<BundledAsset> {
    let mut out = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(EXAMPLES)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for (label, asset) in parse_asset_file(&text, &p.display().to_string()).unwrap() {
                let route = classify(&asset.request.method, &asset.request.path).unwrap();
                let key = Normalizer::default().key(&route, asset.request.body.to_string().as_bytes()).unwrap().0;
                out.push(BundledAsset { key, source: label, asset });
            }
        }
    }
    out
}

/// The streaming form of a request: the path's stream variant where the API has one, else `"stream": true`.
fn streaming(path: &str, body: &serde_json::Value) -> (String, serde_json::Value) {
    let streamed = path
        .replace("/converse", "/converse-stream")
        .replace("/invoke", "/invoke-with-response-stream")
        .replace(":generateContent", ":streamGenerateContent?alt=sse");
    let mut body = body.clone();
    if streamed == path {
        if let Some(o) = body.as_object_mut() {
            o.insert("stream".into(), json!(true));
        }
    }
    (streamed, body)
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn every_apis_streams_record_whole_and_cut_ones_do_not() {
    let assets = examples();
    // Every setting at its default but the bundle.
    let cfg: PluginConfig = serde_json::from_value(json!({"bundle": Bundle::sealed(assets.clone())})).unwrap();
    let rt = Runtime::compile(cfg).unwrap();
    let rec = Recorder::compile(Mode::Record, &RecordConfig::default(), &NormalizationConfig::default()).unwrap();
    let mut operations = std::collections::BTreeSet::new();
    for a in &assets {
        let (path, body) = streaming(&a.asset.request.path, &a.asset.request.body);
        let Some(route) = classify("POST", &path) else { continue };
        if !route.operation.streams() {
            continue;
        }
        let Decision::Respond(r) = rt.decide_at(&route, body.to_string().as_bytes(), 0) else { continue };
        if r.status != 200 {
            continue;
        }
        let request = body.to_string();
        let mut c = rec.begin(&route, &path, request.as_bytes(), 0, None).unwrap();
        c.response_headers(200, r.headers.clone());
        for (i, piece) in r.body.chunks(37).enumerate() {
            c.push_body(piece, (i as u64 + 1) * 1_000_000).unwrap();
        }
        let d = rec.finish(c, 0).unwrap_or_else(|e| panic!("{path} ({}): {e}", route.operation));
        let doc = CaptureDoc::parse(std::str::from_utf8(&d.body).unwrap(), &Normalizer::default()).unwrap();
        let resp = doc.asset.response.unwrap();
        assert!(resp.body_text.is_some() || resp.body_base64.is_some(), "{path}: the stream was not kept");
        assert!(resp.timing.is_some_and(|t| t.chunks.len() > 1), "{path}: no timing");
        operations.insert(route.operation.name());

        let mut c = rec.begin(&route, &path, request.as_bytes(), 0, None).unwrap();
        c.response_headers(200, r.headers.clone());
        c.push_body(&r.body[..r.body.len() * 2 / 3], 1).unwrap();
        let cut = rec.finish(c, 0);
        assert!(cut.is_err(), "{path} ({}): a stream cut at two thirds was recorded as whole", route.operation);
    }
    for op in ["openai.chat_completions", "anthropic.messages", "gemini.generate_content"] {
        assert!(operations.contains(op), "no {op} stream was checked: {operations:?}");
    }
}
