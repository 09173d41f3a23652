//! The asset file format (a public contract: tools outside this repo write it) and the bundle format.
//!
//! Every `*.json` file under an assets directory holds one asset object or an array of them:
//! `{"name"?, "request": {"method"?, "path", "body"}, "response": {"status"?, "headers"?, "body" | "body_text"}}`.

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
    /// The virtual response.
    pub response: AssetResponse,
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
    /// HTTP status, default 200.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Response headers, default `content-type: application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// A JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// A non-JSON body (e.g. recorded SSE), instead of `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
}

fn default_method() -> String {
    "POST".to_string()
}

fn default_status() -> u16 {
    200
}

/// Version tag of the bundle format.
pub const BUNDLE_FORMAT: &str = "understudy.bundle/v1";

/// What `understudy bundle` writes and the filter loads: validated assets with their keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The assets, in a stable order.
    pub assets: Vec<BundledAsset>,
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
    /// The response.
    pub response: AssetResponse,
}

impl BundledAsset {
    /// The asset without bundle bookkeeping.
    pub fn asset(&self) -> Asset {
        Asset {
            name: self.name.clone(),
            request: self.request.clone(),
            response: self.response.clone(),
        }
    }
}

/// Deserializes `T` strictly, reporting the path of the offending field.
pub fn from_str_strict<T: serde::de::DeserializeOwned>(text: &str, source_name: &str) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let res: Result<T, _> = serde_path_to_error::deserialize(de);
    match res {
        Ok(v) => {
            // Reject trailing garbage after the document.
            let mut de = serde_json::Deserializer::from_str(text);
            let _ = serde::de::IgnoredAny::deserialize(&mut de);
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
    ConfigError::Parse {
        source_name: source_name.to_string(),
        field: field.to_string(),
        reason,
    }
}

/// Parses one asset file (an object or an array of objects). Each asset gets a `file#index` source label.
pub fn parse_asset_file(text: &str, source_name: &str) -> Result<Vec<(String, Asset)>, ConfigError> {
    let doc: Value = from_str_strict(text, source_name)?;
    let items: Vec<(String, Value)> = match doc {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("{source_name}#{i}"), v))
            .collect(),
        v @ Value::Object(_) => vec![(format!("{source_name}#0"), v)],
        _ => {
            return Err(parse_err(
                source_name,
                ".",
                "an asset file holds one asset object or an array of them".into(),
            ))
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
    let err = |reason: String| ConfigError::Asset {
        asset: label.to_string(),
        reason,
    };
    if crate::classify(&a.request.method, &a.request.path).is_none() {
        return Err(err(format!(
            "request: {} {} is not an LLM operation Understudy virtualizes (POST .../chat/completions, .../completions, .../embeddings, .../responses, .../v1/messages)",
            a.request.method, a.request.path
        )));
    }
    if !a.request.body.is_object() {
        return Err(err("request.body: must be a JSON object".into()));
    }
    match (&a.response.body, &a.response.body_text) {
        (Some(_), Some(_)) => return Err(err("response: has both `body` and `body_text`; keep one".into())),
        (None, None) => return Err(err("response: needs `body` (JSON) or `body_text` (string)".into())),
        _ => {}
    }
    if !(100..=599).contains(&a.response.status) {
        return Err(err(format!(
            "response.status: {} is not an HTTP status",
            a.response.status
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in a.response.headers.iter().flatten() {
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(err(format!(
                "response.headers: {name:?} appears twice (header names are case-insensitive)"
            )));
        }
        if crate::render::is_understudy_header(name) {
            return Err(err(format!(
                "response.headers.{name}: x-understudy headers are set by Understudy itself"
            )));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(err(format!("response.headers.{name}: value holds control characters")));
        }
        if crate::render::is_secret_header(name) {
            return Err(err(format!(
                "response.headers.{name}: secret-bearing headers never belong in an asset; remove it"
            )));
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(err(format!("response.headers: {name:?} is not a valid header name")));
        }
    }
    Ok(())
}
