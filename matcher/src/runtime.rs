//! The plugin configuration, compiled once into an indexed runtime, and the one `decide()` call.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::asset::{from_str_strict, validate_asset, Asset, Bundle, BundledAsset, BUNDLE_FORMAT};
use crate::dialect::{classify, Operation, Route};
use crate::error::{ConfigError, RequestError};
use crate::normalize::{difference_count, first_difference, NormalizationConfig, Normalizer};
use crate::render::{convert_embeddings, embedding_encoding_of, error_body, is_dropped_header, EmbeddingEncoding};

/// What to do when no asset matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMiss {
    /// Answer 404 in the dialect's error shape; nothing goes upstream (strict virtual mode).
    #[default]
    Error,
    /// Forward the request to the live upstream.
    Passthrough,
}

/// The filter's plugin configuration, as JSON. Unknown fields fail the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Miss policy; default `error`.
    #[serde(default)]
    pub on_miss: OnMiss,
    /// Normalization settings; keys in `bundle` must have been computed with the same ones.
    #[serde(default)]
    pub normalization: NormalizationConfig,
    /// The asset bundle, as written by `understudy bundle`.
    pub bundle: Bundle,
}

impl PluginConfig {
    /// Strict parse; errors name the field.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        from_str_strict(text, "plugin configuration")
    }
}

/// The final outcome of one LLM request, for stats and the `x-understudy` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An asset matched.
    Hit,
    /// No asset matched.
    Miss,
    /// The body could not be parsed.
    BadRequest,
}

/// A reply Envoy sends locally, without the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalResponse {
    /// Why.
    pub outcome: Outcome,
    /// HTTP status.
    pub status: u16,
    /// Headers, including `x-understudy`.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// The decision for one LLM request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Answer locally.
    Respond(LocalResponse),
    /// Forward to the upstream (passthrough mode); the outcome says why.
    Forward(Outcome),
}

/// A compiled asset ready to be served.
#[derive(Debug, Clone)]
struct Compiled {
    label: String,
    key: String,
    normalized: Value,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Parsed body of embeddings responses, kept for float/base64 conversion.
    embeddings: Option<(Value, EmbeddingEncoding)>,
    /// Response identity, for duplicate vs conflict detection.
    response_fingerprint: String,
}

/// A set of assets indexed by key, with duplicate/conflict detection. Shared by the bundler and the filter.
#[derive(Debug, Default)]
pub struct AssetSet {
    assets: Vec<Compiled>,
    index: HashMap<String, usize>,
    by_operation: HashMap<Operation, Vec<usize>>,
    duplicates: Vec<(String, String)>,
}

impl AssetSet {
    /// Adds an asset; `stored_key` (from a bundle) must equal the computed key.
    /// Returns the computed key. Identical duplicates are recorded and skipped; conflicting ones are errors.
    pub fn add(
        &mut self,
        normalizer: &Normalizer,
        label: &str,
        asset: &Asset,
        stored_key: Option<&str>,
    ) -> Result<String, ConfigError> {
        validate_asset(asset, label)?;
        let route = classify(&asset.request.method, &asset.request.path).ok_or_else(|| ConfigError::Asset {
            asset: label.to_string(),
            reason: "request is not an LLM operation".into(),
        })?;
        let mut normalized = asset.request.body.clone();
        normalizer
            .normalize(&route, &mut normalized)
            .map_err(|e| ConfigError::Asset {
                asset: label.to_string(),
                reason: format!("request.body: {e}"),
            })?;
        let key = Normalizer::key_of_normalized(route.operation, &normalized);
        if let Some(stored) = stored_key {
            if stored != key {
                return Err(ConfigError::KeyMismatch {
                    asset: label.to_string(),
                    stored: stored.to_string(),
                    computed: key,
                });
            }
        }
        let display = match &asset.name {
            Some(n) => format!("{n:?} ({label})"),
            None => label.to_string(),
        };
        let r = &asset.response;
        let body = match (&r.body, &r.body_text) {
            (Some(v), _) => serde_json::to_vec(v).map_err(|e| ConfigError::Asset {
                asset: display.clone(),
                reason: e.to_string(),
            })?,
            (None, Some(t)) => t.clone().into_bytes(),
            (None, None) => Vec::new(),
        };
        let headers: Vec<(String, String)> = match &r.headers {
            Some(h) => h
                .iter()
                .filter(|(k, _)| !is_dropped_header(k))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            None => vec![("content-type".to_string(), "application/json".to_string())],
        };
        let fingerprint = format!("{}|{:?}|{}", r.status, headers, String::from_utf8_lossy(&body));
        if let Some(&i) = self.index.get(&key) {
            let prev = self
                .assets
                .get(i)
                .map(|p| (p.label.clone(), p.response_fingerprint.clone()))
                .unwrap_or_default();
            if prev.1 == fingerprint {
                self.duplicates.push((prev.0, display));
                return Ok(key);
            }
            return Err(ConfigError::Conflict {
                key,
                first: prev.0,
                second: display,
            });
        }
        let embeddings = match (route.operation, &r.body) {
            (Operation::Embeddings, Some(v)) => embedding_encoding_of(v).map(|enc| (v.clone(), enc)),
            _ => None,
        };
        let idx = self.assets.len();
        self.assets.push(Compiled {
            label: display,
            key: key.clone(),
            normalized,
            status: r.status,
            headers,
            body,
            embeddings,
            response_fingerprint: fingerprint,
        });
        self.index.insert(key.clone(), idx);
        self.by_operation.entry(route.operation).or_default().push(idx);
        Ok(key)
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.assets.len()
    }

    /// True when no asset is loaded.
    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }

    /// Identical duplicates skipped so far: (kept, skipped).
    pub fn duplicates(&self) -> &[(String, String)] {
        &self.duplicates
    }

    /// Asset counts per operation.
    pub fn counts(&self) -> Vec<(Operation, usize)> {
        let mut v: Vec<(Operation, usize)> = self.by_operation.iter().map(|(op, ix)| (*op, ix.len())).collect();
        v.sort();
        v
    }
}

/// The compiled, validated runtime the filter holds for its lifetime.
#[derive(Debug)]
pub struct Runtime {
    on_miss: OnMiss,
    normalizer: Normalizer,
    assets: AssetSet,
}

impl Runtime {
    /// Parses and compiles a plugin configuration. Any problem fails the whole load, naming the field/asset.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::compile(PluginConfig::from_json(text)?)
    }

    /// Compiles a parsed configuration.
    pub fn compile(cfg: PluginConfig) -> Result<Self, ConfigError> {
        if cfg.bundle.format != BUNDLE_FORMAT {
            return Err(ConfigError::invalid(
                "bundle.format",
                format!(
                    "{:?} is not supported by this filter (expected {BUNDLE_FORMAT:?})",
                    cfg.bundle.format
                ),
            ));
        }
        let normalizer = Normalizer::compile(&cfg.normalization)?;
        let mut assets = AssetSet::default();
        for (i, b) in cfg.bundle.assets.iter().enumerate() {
            let BundledAsset { key, source, .. } = b;
            let label = format!("bundle.assets[{i}] from {source}");
            assets.add(&normalizer, &label, &b.asset(), Some(key))?;
        }
        Ok(Runtime {
            on_miss: cfg.on_miss,
            normalizer,
            assets,
        })
    }

    /// The miss policy.
    pub fn on_miss(&self) -> OnMiss {
        self.on_miss
    }

    /// Number of assets loaded.
    pub fn asset_count(&self) -> usize {
        self.assets.len()
    }

    /// Decides what to do with a complete LLM request body for `route`. Never panics on any input.
    pub fn decide(&self, route: &Route, body: &[u8]) -> Decision {
        let dialect = route.operation.dialect();
        let mut parsed = match crate::parse_body(body) {
            Ok(v) => v,
            Err(e) => return self.bad_request(route, &e),
        };
        let encoding = EmbeddingEncoding::requested(&parsed);
        if let Err(e) = self.normalizer.normalize(route, &mut parsed) {
            return self.bad_request(route, &e);
        }
        let key = Normalizer::key_of_normalized(route.operation, &parsed);
        let Some(asset) = self.assets.index.get(&key).and_then(|&i| self.assets.assets.get(i)) else {
            if self.on_miss == OnMiss::Passthrough {
                return Decision::Forward(Outcome::Miss);
            }
            let message = self.miss_message(route.operation, &key, &parsed);
            let mut headers = local_headers("miss", &key);
            headers.push(("x-understudy-operation".into(), route.operation.name().into()));
            return Decision::Respond(LocalResponse {
                outcome: Outcome::Miss,
                status: 404,
                headers,
                body: error_body(dialect, 404, &message, "understudy_no_matching_asset"),
            });
        };
        let mut headers = asset.headers.clone();
        headers.push(("x-understudy".into(), "hit".into()));
        headers.push(("x-understudy-key".into(), key));
        let body = match &asset.embeddings {
            Some((value, have)) if *have != encoding => {
                let mut v = value.clone();
                if convert_embeddings(&mut v, encoding) {
                    serde_json::to_vec(&v).unwrap_or_else(|_| asset.body.clone())
                } else {
                    asset.body.clone()
                }
            }
            _ => asset.body.clone(),
        };
        Decision::Respond(LocalResponse {
            outcome: Outcome::Hit,
            status: asset.status,
            headers,
            body,
        })
    }

    fn bad_request(&self, route: &Route, e: &RequestError) -> Decision {
        if self.on_miss == OnMiss::Passthrough {
            return Decision::Forward(Outcome::BadRequest);
        }
        let message = format!("Understudy could not read this {} request: {e}", route.operation);
        let mut headers = local_headers("bad-request", "");
        headers.retain(|(k, _)| k != "x-understudy-key");
        Decision::Respond(LocalResponse {
            outcome: Outcome::BadRequest,
            status: 400,
            headers,
            body: error_body(route.operation.dialect(), 400, &message, "understudy_bad_request"),
        })
    }

    /// The miss explanation: the key, the closest asset and where it differs, and how to record one.
    fn miss_message(&self, operation: Operation, key: &str, normalized: &Value) -> String {
        let mut msg = format!("Understudy has no asset for this {operation} request (key {key}).");
        // Rank a bounded number of same-operation candidates so a miss stays cheap on huge stores.
        const SCAN: usize = 5_000;
        const CAP: usize = 10_000;
        let candidates = self
            .assets
            .by_operation
            .get(&operation)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let best = candidates
            .iter()
            .take(SCAN)
            .filter_map(|&i| self.assets.assets.get(i))
            .map(|a| (difference_count(&a.normalized, normalized, CAP), a))
            .min_by_key(|(d, _)| *d);
        match best {
            Some((_, a)) => {
                let at = first_difference(&a.normalized, normalized).unwrap_or_default();
                let at = if at.is_empty() { "/".to_string() } else { at };
                msg.push_str(&format!(
                    " Closest asset: {} (key {}), first difference at {at}.",
                    a.label, a.key
                ));
            }
            None => msg.push_str(&format!(" No asset for {operation} is loaded.")),
        }
        msg.push_str(
            " To virtualize it, add an asset file with this request and its response to your assets directory \
             and rebuild the bundle (`understudy bundle DIR -o FILE`, or restart `understudy up`); \
             `understudy key FILE` prints a request's key.",
        );
        msg
    }
}

fn local_headers(outcome: &str, key: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        ("x-understudy".into(), outcome.into()),
        ("x-understudy-key".into(), key.into()),
    ]
}
