//! The asset file format (a public contract: tools outside this repo write it) and the bundle format.
//!
//! Every `*.json` file under an assets directory holds one asset object or an array of them:
//! `{"name"?, "request": {"method"?, "path", "body"}, "response": {"status"?, "headers"?, "body" | "body_text" | "error"}}`.
//! Optional: `"responses": [...]` instead of `"response"` with `"sequence"` (`repeat_last`, `cycle`, `random`)
//! and `"seed"`; `"refresh": false` to replay ids and timestamps byte-exact; `"latency"`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ConfigError;

/// One asset as written in an asset file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// Optional human label, shown in miss diagnostics and `x-understudy-asset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The request, as a client sends it.
    pub request: AssetRequest,
    /// The virtual response (or use `responses`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AssetResponse>,
    /// Several responses, served per `sequence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<Vec<AssetResponse>>,
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
    /// An error in the dialect's shape, instead of `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorSpec>,
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

/// Version tag of the bundle format.
pub const BUNDLE_FORMAT: &str = "understudy.bundle/v1";

/// What `understudy bundle` writes and the filter loads: validated assets with their keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// SHA-256 of the canonical JSON of `assets`, written by `understudy bundle` and verified by the filter,
    /// so a bundle edited or truncated after it was validated fails the load instead of serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The assets, in a stable order.
    pub assets: Vec<BundledAsset>,
}

impl Bundle {
    /// A sealed bundle: `assets` plus their content hash.
    pub fn sealed(assets: Vec<BundledAsset>) -> Self {
        let mut b = Bundle { format: BUNDLE_FORMAT.to_string(), sha256: None, assets };
        b.sha256 = Some(b.content_hash());
        b
    }

    /// SHA-256 (hex) of the canonical JSON of the assets.
    pub fn content_hash(&self) -> String {
        let mut h = ContentHasher::default();
        self.assets.iter().for_each(|a| h.add(a));
        h.finish()
    }

    /// Checks the stored content hash, if any.
    pub fn verify(&self) -> Result<(), ConfigError> {
        match &self.sha256 {
            Some(stored) => {
                let computed = self.content_hash();
                if *stored == computed {
                    Ok(())
                } else {
                    Err(hash_mismatch(stored, &computed))
                }
            }
            None => Ok(()),
        }
    }
}

pub(crate) fn hash_mismatch(stored: &str, computed: &str) -> ConfigError {
    ConfigError::invalid(
        "bundle.sha256",
        format!(
            "the assets do not match the bundle's content hash {stored} (computed {computed}): the bundle was \
             changed after `understudy bundle` validated it; rebuild it"
        ),
    )
}

/// Computes [`Bundle::content_hash`] one asset at a time, so a huge bundle is never held twice in memory:
/// the digest is that of the canonical JSON array `[a0,a1,...]`.
#[derive(Default)]
pub(crate) struct ContentHasher {
    sink: crate::canonical::HashSink,
    count: usize,
}

impl ContentHasher {
    pub(crate) fn add(&mut self, asset: &BundledAsset) {
        self.add_value(&serde_json::to_value(asset).unwrap_or(Value::Null));
    }

    /// Adds an asset as parsed JSON. For a bundle written by `understudy bundle` this equals [`Self::add`] of
    /// the typed asset; a bundle edited by hand afterwards (even to spell out a default) no longer verifies.
    pub(crate) fn add_value(&mut self, v: &Value) {
        use crate::canonical::Sink;
        self.sink.put(if self.count == 0 { "[" } else { "," });
        crate::canonical::write_canonical(v, &mut self.sink);
        self.count += 1;
    }

    pub(crate) fn finish(mut self) -> String {
        use crate::canonical::Sink;
        self.sink.put(if self.count == 0 { "[]" } else { "]" });
        crate::normalize::hex(&self.sink.finish())
    }
}

/// A bundle whose assets are still raw JSON slices of the configuration text: the filter parses, checks and
/// compiles them one at a time, so loading needs memory for the text and the compiled store only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBundle<'a> {
    pub(crate) format: String,
    #[serde(default)]
    pub(crate) sha256: Option<String>,
    #[serde(borrow)]
    pub(crate) assets: Vec<&'a serde_json::value::RawValue>,
}

/// An asset inside a bundle: the asset plus where it came from and the key the bundler computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundledAsset {
    /// Key computed by the bundler; the filter recomputes and compares it.
    pub key: String,
    /// `file#index` it came from.
    pub source: String,
    /// Optional label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The request.
    pub request: AssetRequest,
    /// See [`Asset::response`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AssetResponse>,
    /// See [`Asset::responses`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<Vec<AssetResponse>>,
    /// See [`Asset::sequence`].
    #[serde(default, skip_serializing_if = "Sequence::is_default")]
    pub sequence: Sequence,
    /// See [`Asset::seed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// See [`Asset::refresh`].
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub refresh: bool,
    /// See [`Asset::latency`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
}

impl BundledAsset {
    /// Bundles `asset` under its computed key and source label.
    pub fn new(key: String, source: String, a: Asset) -> Self {
        BundledAsset {
            key,
            source,
            name: a.name,
            request: a.request,
            response: a.response,
            responses: a.responses,
            sequence: a.sequence,
            seed: a.seed,
            refresh: a.refresh,
            latency: a.latency,
        }
    }

    /// The asset without bundle bookkeeping, by value.
    pub fn into_asset(self) -> Asset {
        Asset {
            name: self.name,
            request: self.request,
            response: self.response,
            responses: self.responses,
            sequence: self.sequence,
            seed: self.seed,
            refresh: self.refresh,
            latency: self.latency,
        }
    }
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
        validate_asset(&asset, &label)?;
        out.push((label, asset));
    }
    Ok(out)
}

/// Checks the rules serde can't express. `label` names the asset in errors.
pub fn validate_asset(a: &Asset, label: &str) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::Asset { asset: label.to_string(), reason };
    if crate::classify(&a.request.method, &a.request.path).is_none() {
        return Err(err(format!(
            "request: {} {} is not an LLM operation Understudy virtualizes (POST .../chat/completions, .../completions, .../embeddings, .../responses, .../v1/messages)",
            a.request.method, a.request.path
        )));
    }
    if !a.request.body.is_object() {
        return Err(err("request.body: must be a JSON object".into()));
    }
    match (&a.response, &a.responses) {
        (Some(_), Some(_)) => return Err(err("has both `response` and `responses`; keep one".into())),
        (None, None) => return Err(err("needs `response` (or `responses`, a list)".into())),
        (None, Some(rs)) if rs.is_empty() => return Err(err("responses: the list is empty".into())),
        _ => {}
    }
    if let Some(l) = &a.latency {
        if !(l.per_token_ms.is_finite() && l.per_token_ms >= 0.0) || l.ttft_ms > crate::limits::MAX_DELAY_MS {
            return Err(err("latency: ttft_ms must be at most 600000 and per_token_ms a non-negative number".into()));
        }
    }
    let many = a.responses.is_some();
    for (i, r) in a.all_responses().into_iter().enumerate() {
        let at = if many { format!("responses[{i}]") } else { "response".to_string() };
        validate_response(r, &at).map_err(&err)?;
    }
    Ok(())
}

pub(crate) fn validate_response(r: &AssetResponse, at: &str) -> Result<(), String> {
    let bodies = [r.body.is_some(), r.body_text.is_some(), r.error.is_some()].iter().filter(|b| **b).count();
    if bodies > 1 {
        return Err(format!("{at}: has more than one of `body`, `body_text`, `error`; keep one"));
    }
    if bodies == 0 {
        return Err(format!("{at}: needs `body` (JSON), `body_text` (string) or `error`"));
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
        if crate::render::is_understudy_header(name) {
            return Err(format!("{at}.headers.{name}: x-understudy headers are set by Understudy itself"));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("{at}.headers.{name}: value holds control characters"));
        }
        if crate::render::is_secret_header(name) {
            return Err(format!("{at}.headers.{name}: secret-bearing headers never belong in an asset; remove it"));
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("{at}.headers: {name:?} is not a valid header name"));
        }
    }
    Ok(())
}
