//! Arbitrary bytes as the request body of every operation (via `classify` routes, Azure, Gemini and Vertex AI
//! included), keyed with the default normalizer and with a configured one (wildcard pointers and scrubbers).
//!
//! Properties: `Normalizer::key` never panics; when it succeeds, keying the re-serialized normalized body
//! (compact and pretty) gives the same key (normalization is idempotent, as `understudy key FILE` relies on),
//! the key is the key of the returned normalized value, and canonical JSON is a fixed point of
//! canonicalization (`canonical_number` is idempotent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_matcher::canonical::to_canonical;
use understudy_matcher::{classify, NormalizationConfig, Normalizer, Route, ScrubberConfig};

const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    "/v1beta/models/gemini-2.0-flash:generateContent",
    "/v1/projects/p/locations/l/publishers/google/models/gemini-embedding-001:embedContent",
    "/v1beta/models/text-embedding-004:batchEmbedContents",
    "/v1beta/models/gemini-2.0-flash:countTokens",
    "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-haiku-4-5@20251001:rawPredict",
];

struct Setup {
    routes: Vec<Route>,
    normalizers: Vec<Normalizer>,
}

fn setup() -> Setup {
    let routes = PATHS.iter().map(|p| classify("POST", p).expect("fixed path classifies")).collect();
    // Only configurations whose normalization is idempotent by construction: no trailing array index in
    // `ignore_fields` (removing `/a/0` twice removes two elements) and placeholders the patterns can't match.
    let configured = NormalizationConfig {
        ignore_fields: vec!["/messages/*/name".into(), "/tools/*/function/description".into(), "/seed".into()],
        scrubbers: vec![
            ScrubberConfig {
                pattern: "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}".into(),
                placeholder: "<uuid>".into(),
            },
            ScrubberConfig { pattern: r"\d{4}-\d{2}-\d{2}".into(), placeholder: "<date>".into() },
        ],
    };
    let normalizers = vec![
        Normalizer::compile(&NormalizationConfig::default()).expect("default config compiles"),
        Normalizer::compile(&configured).expect("fixed config compiles"),
    ];
    Setup { routes, normalizers }
}

thread_local! {
    static SETUP: Setup = setup();
}

fuzz_target!(|data: &[u8]| {
    SETUP.with(|s| {
        for n in &s.normalizers {
            for route in &s.routes {
                let Ok((key, normalized)) = n.key(route, data) else { continue };
                assert_eq!(key.len(), 64);
                assert_eq!(Normalizer::key_of_normalized(route.operation, &normalized), key);
                let compact = serde_json::to_vec(&normalized).expect("a Value serializes");
                let (again, renormalized) = n.key(route, &compact).expect("a normalized body keys again");
                assert_eq!(again, key, "re-keying the normalized body changed the key ({:?})", route.operation);
                assert_eq!(renormalized, normalized, "normalize(normalize(x)) != normalize(x)");
                // The canonical form is JSON whose canonical form is itself (numbers included).
                let canonical = to_canonical(&normalized);
                let reparsed: serde_json::Value = serde_json::from_str(&canonical).expect("canonical JSON parses");
                assert_eq!(to_canonical(&reparsed), canonical, "canonical JSON is not a fixed point");
                let pretty = serde_json::to_vec_pretty(&normalized).expect("a Value serializes");
                let (pretty_key, _) = n.key(route, &pretty).expect("a pretty normalized body keys again");
                assert_eq!(pretty_key, key, "pretty printing changed the key");
            }
        }
    });
});
