//! The asset file format (a public contract: tools outside this repo write it) and the bundle format.
//!
//! Every `*.json` file under an assets directory holds one asset object or an array of them:
//! `{"name"?, "request": {"method"?, "path", "body"}, "response": {"status"?, "headers"?, "body" | "body_text" | "body_base64" | "error"}}`.
//! Optional: `"responses": [...]` instead of `"response"` with `"sequence"` (`repeat_last`, `cycle`, `random`)
//! and `"seed"`; `"refresh": false` to replay ids and timestamps byte-exact; `"latency"`.
//!
//! One model describes an asset everywhere: [`AssetOf`], whose answers are typed ([`Asset`]) when a file
//! is read or a bundle is built, and left as JSON text ([`RawAsset`]) when the filter loads a sealed
//! bundle and compiles each answer on first use. [`validate`] checks both the same way.

mod bundle;

pub(crate) use bundle::{check_format, hash_mismatch, ContentHasher, RawBundle};
pub use bundle::{Bundle, BundleOf, BundledAsset, BundledOf, CanonicalBundleWriter, BUNDLE_FORMAT};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::dialect::{classify, Route};
use crate::error::ConfigError;

/// An asset as written in an asset file.
pub type Asset = AssetOf<AssetResponse, Vec<AssetResponse>>;

/// An asset whose answers are still JSON text (`R`/`L` borrowed from a bundle): compiled on first use.
pub type RawAsset<'a> = AssetOf<&'a RawValue, &'a RawValue>;

/// One asset; `R` is how an answer is held, `L` how a list of them is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetOf<R, L> {
    /// Optional human label, shown in miss diagnostics and `x-understudy-asset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The request, as a client sends it.
    pub request: AssetRequest,
    /// The virtual response (or use `responses`).
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub response: Option<R>,
    /// Several responses, served per `sequence`.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub responses: Option<L>,
    /// How `responses` are served; default `repeat_last`.
    #[serde(default, skip_serializing_if = "Sequence::is_default")]
    pub sequence: Sequence,
    /// Seed for `random` sequences and `random:` placeholders; default derived from the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Refresh the response's top-level `id` and `created`/`created_at` on every hit (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub refresh: bool,
    /// Simulated latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
}

/// How an asset with several responses picks one. Positions are kept per Envoy worker (per wasm VM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sequence {
    /// 1st call gets the 1st response, 2nd the 2nd, ..., then the last one forever.
    #[default]
    RepeatLast,
    /// Round robin: after the last, start again at the first.
    Cycle,
    /// A seeded pseudo-random pick per call.
    Random,
}

impl Sequence {
    fn is_default(&self) -> bool {
        *self == Sequence::RepeatLast
    }
}

/// Simulated model latency: time to first token plus time per output token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Milliseconds before the first byte of the answer.
    #[serde(default)]
    pub ttft_ms: u64,
    /// Milliseconds per output token (estimated from the answer's text), added to the delay.
    #[serde(default)]
    pub per_token_ms: f64,
}

pub(crate) fn yes() -> bool {
    true
}

fn none<T>() -> Option<T> {
    None
}

/// Checks latency bounds (assets and `synthesize` rules alike).
pub(crate) fn check_latency(l: &Latency) -> Result<(), String> {
    let max = crate::limits::MAX_DELAY_MS;
    if !(l.per_token_ms.is_finite() && l.per_token_ms >= 0.0) || l.ttft_ms > max {
        return Err(format!("ttft_ms must be at most {max} and per_token_ms a non-negative number"));
    }
    Ok(())
}

fn is_true(b: &bool) -> bool {
    *b
}

/// An error answer in the dialect's own shape, e.g. `{"type": "rate_limit_error", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorSpec {
    /// Error type: `rate_limit_error`, `overloaded_error`, `api_error`, `invalid_request_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Human message.
    pub message: String,
    /// OpenAI's `code` field (Anthropic has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl ErrorSpec {
    /// The HTTP status an error type has when the asset doesn't say.
    pub fn default_status(&self) -> u16 {
        match self.kind.as_str() {
            "invalid_request_error" => 400,
            "authentication_error" => 401,
            "permission_error" => 403,
            "not_found_error" => 404,
            "request_too_large" => 413,
            "rate_limit_error" | "insufficient_quota" => 429,
            "overloaded_error" => 529,
            "timeout_error" => 504,
            _ => 500,
        }
    }
}

/// The request half of an asset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetRequest {
    /// HTTP method; only POST is an LLM call.
    #[serde(default = "default_method")]
    pub method: String,
    /// Request path, e.g. `/v1/chat/completions`; any gateway prefix and query string are allowed.
    pub path: String,
    /// The request body JSON.
    pub body: Value,
}

/// The response half of an asset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetResponse {
    /// HTTP status, default 200 (or the error type's status with `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Response headers, default `content-type: application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// A JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// A non-JSON body (e.g. recorded SSE), instead of `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    /// A binary body (e.g. a recorded AWS event stream) as standard base64, instead of `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// An error in the dialect's shape, instead of `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorSpec>,
    /// When the chunks of a recorded stream (`body_text` / `body_base64`) arrived; replayed by the pacer
    /// when pacing is on (`understudy up --replay-speed`), ignored otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// Where a recorded response came from (written by the collector; not used to serve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<Recorded>,
}

/// The arrival of a recorded stream's chunks: `[at_ms, bytes]` pairs in order, `at_ms` counted from the
/// moment the request went upstream (the first is the time to first chunk), `bytes` the chunk's length.
/// The lengths add up to the body's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// `[at_ms, bytes]` per chunk.
    pub chunks: Vec<(u64, u64)>,
}

/// A recorded response's provenance: the capture it came from (a repeated delivery of the same capture is
/// recognized by it) and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recorded {
    /// The capture id.
    pub capture: String,
    /// When the answer was recorded (RFC 3339, UTC).
    pub at: String,
}

impl AssetResponse {
    /// The status to answer with.
    pub fn status(&self) -> u16 {
        match (self.status, &self.error) {
            (Some(s), _) => s,
            (None, Some(e)) => e.default_status(),
            (None, None) => 200,
        }
    }
}

fn default_method() -> String {
    "POST".to_string()
}

impl Asset {
    /// Its responses in order (`response` alone is a sequence of one).
    pub fn all_responses(&self) -> Vec<&AssetResponse> {
        match (&self.response, &self.responses) {
            (Some(r), _) => vec![r],
            (None, Some(rs)) => rs.iter().collect(),
            (None, None) => Vec::new(),
        }
    }
}

/// A list of answers, typed or as JSON text.
pub trait AnswerList {
    /// Is the list empty?
    fn is_empty_list(&self) -> bool;
}

impl AnswerList for Vec<AssetResponse> {
    fn is_empty_list(&self) -> bool {
        self.is_empty()
    }
}

impl AnswerList for &RawValue {
    fn is_empty_list(&self) -> bool {
        self.get().trim_start().strip_prefix('[').is_some_and(|rest| rest.trim_start().starts_with(']'))
    }
}

/// Deserializes `T` strictly, reporting the path of the offending field.
pub fn from_str_strict<T: serde::de::DeserializeOwned>(text: &str, source_name: &str) -> Result<T, ConfigError> {
    from_str_strict_borrowed(text, source_name)
}

/// [`from_str_strict`] for types that borrow from `text` (e.g. raw JSON slices). One pass over the text.
pub(crate) fn from_str_strict_borrowed<'a, T: Deserialize<'a>>(
    text: &'a str,
    source_name: &str,
) -> Result<T, ConfigError> {
    // Fast path without path tracking (it costs a third of a big load); on failure, parse again to name the field.
    if let Ok(v) = serde_json::from_str(text) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let res: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    match res {
        Ok(v) => {
            // Reject trailing garbage after the document.
            de.end().map_err(|e| parse_err(source_name, ".", e.to_string()))?;
            Ok(v)
        }
        Err(e) => {
            let field = e.path().to_string();
            Err(parse_err(source_name, &field, e.into_inner().to_string()))
        }
    }
}

fn parse_err(source_name: &str, field: &str, reason: String) -> ConfigError {
    ConfigError::Parse { source_name: source_name.to_string(), field: field.to_string(), reason }
}

/// Parses one asset file (an object or an array of objects). Each asset gets a `file#index` source label.
pub fn parse_asset_file(text: &str, source_name: &str) -> Result<Vec<(String, Asset)>, ConfigError> {
    let doc: Value = from_str_strict(text, source_name)?;
    let items: Vec<(String, Value)> = match doc {
        Value::Array(items) => items.into_iter().enumerate().map(|(i, v)| (format!("{source_name}#{i}"), v)).collect(),
        v @ Value::Object(_) => vec![(format!("{source_name}#0"), v)],
        _ => {
            return Err(parse_err(source_name, ".", "an asset file holds one asset object or an array of them".into()))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (label, v) in items {
        let asset: Asset = serde_path_to_error::deserialize(v).map_err(|e| {
            let field = e.path().to_string();
            parse_err(&label, &field, e.into_inner().to_string())
        })?;
        validate(&asset, &label)?;
        let many = asset.responses.is_some();
        for (i, r) in asset.all_responses().into_iter().enumerate() {
            let at = if many { format!("responses[{i}]") } else { "response".to_string() };
            validate_response(r, &at).map_err(|reason| ConfigError::Asset { asset: label.clone(), reason })?;
        }
        out.push((label, asset));
    }
    Ok(out)
}

/// The one asset validator: checks what serde can't express, the same for typed and raw assets, and returns
/// the asset's route. `label` names the asset in errors. Answers are checked by [`validate_response`] when
/// they are compiled (at once for typed assets, on first use for a sealed bundle's).
pub fn validate<R, L: AnswerList>(a: &AssetOf<R, L>, label: &str) -> Result<Route, ConfigError> {
    let err = |reason: String| ConfigError::Asset { asset: label.to_string(), reason };
    let Some(route) = classify(&a.request.method, &a.request.path) else {
        return Err(err(format!(
            "request: {} {} is not an LLM operation Understudy virtualizes (POST {})",
            a.request.method,
            a.request.path,
            crate::dialect::known_paths()
        )));
    };
    if let Some(param) = crate::headers::secret_query_param(&a.request.path) {
        return Err(err(format!(
            "request.path: the query parameter `{param}` carries a credential, which never belongs in an asset; \
             remove it (query strings never count in a key)"
        )));
    }
    if !a.request.body.is_object() {
        return Err(err("request.body: must be a JSON object".into()));
    }
    match (&a.response, &a.responses) {
        (Some(_), Some(_)) => return Err(err("has both `response` and `responses`; keep one".into())),
        (None, None) => return Err(err("needs `response` (or `responses`, a list)".into())),
        (None, Some(rs)) if rs.is_empty_list() => return Err(err("responses: the list is empty".into())),
        _ => {}
    }
    if let Some(l) = &a.latency {
        check_latency(l).map_err(|e| err(format!("latency: {e}")))?;
    }
    Ok(route)
}

/// A timing describes the recorded body it sits beside: the chunk lengths add up to the body's, times never go
/// back and stay within the longest simulated latency.
fn check_timing(r: &AssetResponse, t: &Timing) -> Result<(), String> {
    use base64::Engine as _;
    let len = match (&r.body_text, &r.body_base64) {
        (Some(text), _) => text.len(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).map(|v| v.len()).unwrap_or(0),
        (None, None) => return Err("only a recorded body (`body_text` or `body_base64`) has a timing".into()),
    };
    if t.chunks.len() > crate::limits::MAX_TIMING_CHUNKS {
        return Err(format!("has {} chunks; at most {} are kept", t.chunks.len(), crate::limits::MAX_TIMING_CHUNKS));
    }
    let mut last = 0;
    let mut total: u64 = 0;
    for (i, (at_ms, bytes)) in t.chunks.iter().enumerate() {
        if *at_ms < last || *at_ms > crate::limits::MAX_DELAY_MS {
            return Err(format!(
                "chunks[{i}]: {at_ms} ms goes back in time or past {} ms",
                crate::limits::MAX_DELAY_MS
            ));
        }
        last = *at_ms;
        total = total.saturating_add(*bytes);
    }
    if total != len as u64 {
        return Err(format!("the chunks add up to {total} bytes but the body has {len}"));
    }
    Ok(())
}

pub(crate) fn validate_response(r: &AssetResponse, at: &str) -> Result<(), String> {
    let bodies = [r.body.is_some(), r.body_text.is_some(), r.body_base64.is_some(), r.error.is_some()];
    let bodies = bodies.iter().filter(|b| **b).count();
    if bodies > 1 {
        return Err(format!("{at}: has more than one of `body`, `body_text`, `body_base64`, `error`; keep one"));
    }
    if bodies == 0 {
        return Err(format!("{at}: needs `body` (JSON), `body_text` (string), `body_base64` (bytes) or `error`"));
    }
    if let Some(b) = &r.body_base64 {
        use base64::Engine as _;
        if let Err(e) = base64::engine::general_purpose::STANDARD.decode(b) {
            return Err(format!("{at}.body_base64: not standard base64: {e}"));
        }
    }
    if let Some(t) = &r.timing {
        check_timing(r, t).map_err(|e| format!("{at}.timing: {e}"))?;
    }
    let status = r.status();
    if !(100..=599).contains(&status) {
        return Err(format!("{at}.status: {status} is not an HTTP status"));
    }
    if r.error.is_some() && status < 400 {
        return Err(format!("{at}.status: an `error` response needs a 4xx or 5xx status, not {status}"));
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in r.headers.iter().flatten() {
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(format!("{at}.headers: {name:?} appears twice (header names are case-insensitive)"));
        }
        if crate::headers::is_understudy_header(name) {
            return Err(format!("{at}.headers.{name}: x-understudy headers are set by Understudy itself"));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("{at}.headers.{name}: value holds control characters"));
        }
        if crate::headers::is_secret_header(name) {
            return Err(format!("{at}.headers.{name}: secret-bearing headers never belong in an asset; remove it"));
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("{at}.headers: {name:?} is not a valid header name"));
        }
    }
    Ok(())
}
