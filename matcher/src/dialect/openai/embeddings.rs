//! OpenAI embeddings (`.../embeddings`): float and base64 vector encodings, and synthesized vectors.
//!
//! An asset stored with float vectors also answers `encoding_format: "base64"` (little-endian f32, what the
//! official Python SDK requests by default), and a base64 asset answers float requests.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::dialect::shape::value_text;
use crate::dialect::{EmbeddingEncoding, SynthInput};
use crate::synth::{embedding_seed, embedding_vector, f32_value, requested_dimensions, MAX_EMBEDDING_FLOATS};
use crate::tokens::estimate_tokens;

/// The encoding a request asks for (`encoding_format`).
pub(super) fn requested(request: &Value) -> EmbeddingEncoding {
    match request.get("encoding_format").and_then(Value::as_str) {
        Some("base64") => EmbeddingEncoding::Base64,
        _ => EmbeddingEncoding::Float,
    }
}

/// The encoding an embeddings answer uses, if it holds any vectors.
pub(super) fn encoding_of(body: &Value) -> Option<EmbeddingEncoding> {
    let first = body.get("data")?.as_array()?.first()?.get("embedding")?;
    match first {
        Value::Array(_) => Some(EmbeddingEncoding::Float),
        Value::String(_) => Some(EmbeddingEncoding::Base64),
        _ => None,
    }
}

/// Rewrites every `data[].embedding` to `want`. Returns false if a vector couldn't be converted.
pub(super) fn convert(body: &mut Value, want: EmbeddingEncoding) -> bool {
    let Some(items) = body.get_mut("data").and_then(Value::as_array_mut) else {
        return false;
    };
    let mut ok = true;
    for item in items {
        let Some(e) = item.get_mut("embedding") else {
            continue;
        };
        let converted = match (want, &*e) {
            (EmbeddingEncoding::Base64, Value::Array(xs)) => floats_to_base64(xs),
            (EmbeddingEncoding::Float, Value::String(s)) => base64_to_floats(s),
            _ => continue,
        };
        match converted {
            Some(v) => *e = v,
            None => ok = false,
        }
    }
    ok
}

fn floats_to_base64(xs: &[Value]) -> Option<Value> {
    let mut bytes = Vec::with_capacity(xs.len() * 4);
    for x in xs {
        let f = x.as_f64()? as f32;
        if !f.is_finite() {
            return None; // outside f32's range: keep the recorded floats rather than emit inf
        }
        bytes.extend_from_slice(&f.to_le_bytes());
    }
    Some(Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)))
}

fn base64_to_floats(s: &str) -> Option<Value> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4);
    for c in bytes.chunks_exact(4) {
        let f = f32::from_le_bytes([*c.first()?, *c.get(1)?, *c.get(2)?, *c.get(3)?]);
        // Shortest f32 spelling, so the client's float32 is bit-identical to the recorded one.
        let n: serde_json::Number = serde_json::from_str(&format!("{f:?}")).ok()?;
        out.push(Value::Number(n));
    }
    Some(Value::Array(out))
}

/// One embeddings input: text, or token ids (canonical text of the ids, and their count).
enum EmbedInput {
    Text(String),
    Tokens(String, usize),
}

impl EmbedInput {
    fn tokens(&self) -> u64 {
        match self {
            EmbedInput::Text(t) => estimate_tokens(t),
            EmbedInput::Tokens(_, n) => *n as u64,
        }
    }

    fn seed(&self, model: &str) -> Vec<u8> {
        match self {
            EmbedInput::Text(t) => embedding_seed(model, "text", t),
            EmbedInput::Tokens(ids, _) => embedding_seed(model, "tokens", ids),
        }
    }
}

fn token_ids(a: &[Value]) -> EmbedInput {
    let ids: Vec<String> = a.iter().map(value_text).collect();
    EmbedInput::Tokens(ids.join(","), a.len())
}

fn inputs(input: Option<&Value>) -> Vec<EmbedInput> {
    match input {
        Some(Value::String(s)) => vec![EmbedInput::Text(s.clone())],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => vec![token_ids(a)],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::Array(t) => token_ids(t),
                other => EmbedInput::Text(value_text(other)),
            })
            .collect(),
        Some(other) if !other.is_null() => vec![EmbedInput::Text(value_text(other))],
        _ => Vec::new(),
    }
}

/// The model's native dimension.
fn default_dimensions(model: &str) -> usize {
    if model.contains("text-embedding-3-large") {
        3072
    } else {
        1536
    }
}

/// Synthesized vectors, one per input, of the request's `dimensions`, else the rule's, else the model's
/// (3072 for `text-embedding-3-large`, 1536 otherwise); base64 when the request asks for it.
pub(super) fn synthesize(input: &SynthInput<'_>) -> Option<Value> {
    let (request, model) = (input.request, input.model);
    let dims = requested_dimensions(request.get("dimensions"))
        .or(input.dimensions)
        .unwrap_or_else(|| default_dimensions(model));
    let inputs = inputs(request.get("input"));
    let base64 = requested(request) == EmbeddingEncoding::Base64;
    // Floats as JSON cost several times their base64 form: both are priced before any vector is built.
    let floats = inputs.len().saturating_mul(dims);
    if floats > MAX_EMBEDDING_FLOATS || crate::budget::embeddings_over_budget(floats, dims, base64, input.answer_budget)
    {
        return None;
    }
    let mut tokens = 0u64;
    let mut data = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        tokens = tokens.saturating_add(input.tokens());
        let v = embedding_vector(&input.seed(model), dims);
        let embedding = if base64 {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            Value::Array(v.iter().map(|x| f32_value(*x)).collect())
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    let mut body = Map::new();
    body.insert("object".into(), json!("list"));
    body.insert("data".into(), Value::Array(data));
    body.insert("model".into(), json!(model));
    body.insert("usage".into(), json!({"prompt_tokens": tokens, "total_tokens": tokens}));
    Some(Value::Object(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_round_trip_between_float_and_base64() {
        let mut body = json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -2.5, 3.0e-8, 0.0]}]});
        let orig = body.clone();
        assert!(convert(&mut body, EmbeddingEncoding::Base64));
        let b64 = body["data"][0]["embedding"].as_str().unwrap().to_string();
        let raw = base64::engine::general_purpose::STANDARD.decode(&b64).unwrap();
        assert_eq!(raw.len(), 16);
        assert_eq!(f32::from_le_bytes(raw[4..8].try_into().unwrap()), -2.5);
        assert_eq!(encoding_of(&body), Some(EmbeddingEncoding::Base64));
        assert!(convert(&mut body, EmbeddingEncoding::Float));
        let back32: Vec<f32> =
            body["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let want32: Vec<f32> =
            orig["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(back32, want32);
    }

    #[test]
    fn out_of_range_floats_are_not_turned_into_inf() {
        let mut body = json!({"data": [{"embedding": [1e39]}]});
        assert!(!convert(&mut body, EmbeddingEncoding::Base64));
        assert!(body["data"][0]["embedding"].is_array());
    }

    #[test]
    fn bad_base64_is_reported_not_panicked() {
        let mut body = json!({"data": [{"embedding": "!!!"}]});
        assert!(!convert(&mut body, EmbeddingEncoding::Float));
        let mut body = json!({"data": [{"embedding": "AAA="}]});
        assert!(!convert(&mut body, EmbeddingEncoding::Float));
    }
}
