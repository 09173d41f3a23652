//! Record mode: an arbitrary request body and answer (the input split at its first NUL byte, the answer fed in
//! pieces) through `Recorder::begin` / `Capture::push_body` / `Recorder::finish` on every operation's path,
//! streamed and not, with redaction configured.
//!
//! Properties: never panics; a capture that comes out parses as a capture document whose asset keys as the
//! filter said (the collector's check); and no text the redaction pattern matches survives in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regex::Regex;
use serde_json::json;
use understudy_matcher::record::{CaptureDoc, Mode, RecordConfig, Recorder};
use understudy_matcher::{classify, NormalizationConfig, Normalizer};

const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1beta/models/gemini-2.5-flash:generateContent?key=AIzaSECRET",
    "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
];

const SECRET: &str = "sk-live-[0-9a-f]{4,}";

fn setup() -> (Recorder, Normalizer, Regex) {
    {
        let norm: NormalizationConfig = serde_json::from_value(json!({
            "ignore_fields": ["/metadata/email"],
            "scrubbers": [{"pattern": SECRET, "placeholder": "<key>"}],
        }))
        .expect("normalization");
        let cfg: RecordConfig = serde_json::from_value(json!({
            "redact_request": ["/metadata/email"],
            "redact_response": ["/id"],
            "redact_patterns": [{"pattern": SECRET, "placeholder": "<key>"}],
        }))
        .expect("record config");
        let rec = Recorder::compile(Mode::Record, &cfg, &norm).expect("recorder");
        (rec, Normalizer::compile(&norm).expect("normalizer"), Regex::new(SECRET).expect("regex"))
    }
}

thread_local! {
    // The recorder counts its capture ids in a Cell: one per fuzzing thread.
    static SETUP: (Recorder, Normalizer, Regex) = setup();
}

fuzz_target!(|data: &[u8]| SETUP.with(|(rec, normalizer, secret)| {
    let (request, answer) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    for path in PATHS {
        let Some(route) = classify("POST", path) else { continue };
        for status in [200u16, 400, 503] {
            let Ok(mut c) = rec.begin(&route, path, request, 0, None) else { continue };
            c.response_headers(status, vec![("content-type".into(), "text/event-stream".into())]);
            for (i, piece) in answer.chunks(1 + answer.len() / 3).enumerate() {
                if c.push_body(piece, i as u64 * 1_000_000).is_err() {
                    break;
                }
            }
            let Ok(d) = rec.finish(c, 0) else { continue };
            let text = String::from_utf8(d.body).expect("a capture is UTF-8 JSON");
            if let Err(e) = CaptureDoc::parse(&text, normalizer) {
                panic!("{path} {status}: the capture does not check out: {e}\n{text}");
            }
            if let Some(m) = secret.find(&text) {
                panic!("{path} {status}: {:?} survived redaction\n{text}", m.as_str());
            }
        }
    }
}));
