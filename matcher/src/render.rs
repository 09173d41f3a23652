//! Virtual response rendering: asset responses, dialect-shaped errors and embedding encodings.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::dialect::Dialect;

/// Headers that carry credentials: never stored, logged or hashed.
pub const SECRET_HEADERS: &[&str] =
    &["authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "set-cookie"];

/// Headers Envoy computes itself; copying them from an asset would corrupt the reply.
const HOP_BY_HOP: &[&str] =
    &["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"];

/// Is `name` a credential-bearing header?
pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Should `name` be dropped when replaying an asset's headers?
pub fn is_dropped_header(name: &str) -> bool {
    is_secret_header(name)
        || HOP_BY_HOP.iter().any(|s| s.eq_ignore_ascii_case(name))
        || name.starts_with(':')
        || is_understudy_header(name)
}

/// `x-understudy*` headers are Understudy's own; an asset can't set them.
pub fn is_understudy_header(name: &str) -> bool {
    name.get(..12).is_some_and(|p| p.eq_ignore_ascii_case("x-understudy"))
}

/// An error body in the dialect's own shape, so SDKs raise their usual exception types.
pub fn error_body(dialect: Dialect, status: u16, message: &str, code: &str) -> Vec<u8> {
    let kind = if status == 404 { "not_found_error" } else { "invalid_request_error" };
    serde_json::to_vec(&error_json(dialect, kind, message, Some(code))).unwrap_or_default()
}

/// An error object of type `kind` in the dialect's shape (OpenAI's `code` is dropped for Anthropic).
pub fn error_json(dialect: Dialect, kind: &str, message: &str, code: Option<&str>) -> Value {
    match dialect {
        Dialect::OpenAi => json!({
            "error": {"message": message, "type": kind, "param": null, "code": code}
        }),
        Dialect::Anthropic => json!({
            "type": "error",
            "error": {"type": kind, "message": message}
        }),
    }
}

/// How a client wants embedding vectors encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingEncoding {
    /// JSON arrays of numbers (OpenAI's default).
    Float,
    /// Base64 of little-endian f32 (what the official Python SDK asks for).
    Base64,
}

impl EmbeddingEncoding {
    /// From the request body's `encoding_format`.
    pub fn requested(body: &Value) -> Self {
        match body.get("encoding_format").and_then(Value::as_str) {
            Some("base64") => EmbeddingEncoding::Base64,
            _ => EmbeddingEncoding::Float,
        }
    }
}

/// The encoding an embeddings response body uses, if it holds any vectors.
pub fn embedding_encoding_of(body: &Value) -> Option<EmbeddingEncoding> {
    let first = body.get("data")?.as_array()?.first()?.get("embedding")?;
    match first {
        Value::Array(_) => Some(EmbeddingEncoding::Float),
        Value::String(_) => Some(EmbeddingEncoding::Base64),
        _ => None,
    }
}

/// Rewrites every `data[].embedding` to `want`. Returns false if a vector couldn't be converted.
pub fn convert_embeddings(body: &mut Value, want: EmbeddingEncoding) -> bool {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_round_trip_between_float_and_base64() {
        let mut body = json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -2.5, 3.0e-8, 0.0]}]});
        let orig = body.clone();
        assert!(convert_embeddings(&mut body, EmbeddingEncoding::Base64));
        let b64 = body["data"][0]["embedding"].as_str().unwrap().to_string();
        let raw = base64::engine::general_purpose::STANDARD.decode(&b64).unwrap();
        assert_eq!(raw.len(), 16);
        assert_eq!(f32::from_le_bytes(raw[4..8].try_into().unwrap()), -2.5);
        assert_eq!(embedding_encoding_of(&body), Some(EmbeddingEncoding::Base64));
        assert!(convert_embeddings(&mut body, EmbeddingEncoding::Float));
        let back: Vec<f64> =
            body["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let want: Vec<f64> = orig["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32 as f64)
            .collect();
        let back32: Vec<f32> = back.iter().map(|x| *x as f32).collect();
        let want32: Vec<f32> = want.iter().map(|x| *x as f32).collect();
        assert_eq!(back32, want32);
    }

    #[test]
    fn out_of_range_floats_are_not_turned_into_inf() {
        let mut body = json!({"data": [{"embedding": [1e39]}]});
        assert!(!convert_embeddings(&mut body, EmbeddingEncoding::Base64));
        assert!(body["data"][0]["embedding"].is_array());
    }

    #[test]
    fn own_headers_are_dropped_from_assets() {
        assert!(is_dropped_header("X-Understudy"));
        assert!(is_dropped_header("x-understudy-key"));
        assert!(!is_dropped_header("x-request-id"));
    }

    #[test]
    fn bad_base64_is_reported_not_panicked() {
        let mut body = json!({"data": [{"embedding": "!!!"}]});
        assert!(!convert_embeddings(&mut body, EmbeddingEncoding::Float));
        let mut body = json!({"data": [{"embedding": "AAA="}]});
        assert!(!convert_embeddings(&mut body, EmbeddingEncoding::Float));
    }

    #[test]
    fn error_bodies_have_each_dialects_shape() {
        let o: Value = serde_json::from_slice(&error_body(Dialect::OpenAi, 404, "m", "c")).unwrap();
        assert_eq!(o["error"]["message"], "m");
        assert_eq!(o["error"]["code"], "c");
        let a: Value = serde_json::from_slice(&error_body(Dialect::Anthropic, 400, "m", "c")).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "invalid_request_error");
    }
}
