//! `understudy-matcher`: the pure core of Understudy, with no proxy-wasm dependency.
//!
//! It classifies an HTTP request as an LLM operation of one API ([`classify`], one module per API under
//! [`dialect`]), normalizes its JSON body and hashes a canonical form into a 64-hex-char key
//! ([`Normalizer`]), loads validated asset bundles into an indexed [`Store`] inside a [`Runtime`], and turns
//! one request into one [`Decision`]. The Envoy filter and the `understudy` CLI both call this crate, so
//! they compute the same keys by construction; golden vectors check it natively and under wasm.
//!
//! ```
//! use understudy_matcher::{classify, Normalizer, NormalizationConfig};
//! let n = Normalizer::compile(&NormalizationConfig::default()).unwrap();
//! let route = classify("POST", "/v1/chat/completions").unwrap();
//! let (a, _) = n.key(&route, br#"{"model":"gpt-4o","messages":[],"temperature":0.70,"stream":true}"#).unwrap();
//! let (b, _) = n.key(&route, br#"{ "temperature": 7e-1, "messages": [], "model": "gpt-4o" }"#).unwrap();
//! assert_eq!(a, b);
//! assert_eq!(a.len(), 64);
//! ```

pub mod asset;
pub mod budget;
pub mod canonical;
pub mod cost;
pub mod dialect;
pub mod error;
pub mod headers;
pub mod key;
pub mod limits;
pub mod parity;
pub mod policy;
pub mod record;
mod runtime;
pub mod store;
pub mod stream;
pub mod synth;
pub mod template;
pub mod tokens;

pub use asset::{parse_asset_file, Asset, Bundle, BundledAsset, BUNDLE_FORMAT};
pub use dialect::{classify, Api, Operation, Route, Usage};
pub use error::{ConfigError, RequestError};
pub use key::{NormalizationConfig, Normalizer, ScrubberConfig};
pub use record::{Mode, RecordConfig, Recorder};
pub use runtime::{
    error_answer, Accounting, BundleSource, Decision, EmbeddedOf, Fetch, Fetched, LocalResponse, OnMiss, Outcome,
    PluginConfig, PluginConfigOf, Runtime, StoreAnswer, StoreConfig, EMBEDDED_FORMAT, EMBED_MARKER_MAGIC,
};
pub use store::Store;

/// Parses a request body as a JSON value. Duplicate object keys: the last one wins (as in JavaScript).
pub fn parse_body(body: &[u8]) -> Result<serde_json::Value, RequestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::Empty);
    }
    serde_json::from_slice(body).map_err(|e| RequestError::Malformed(e.to_string()))
}

/// [`parse_body`] within a memory budget: a body whose parsed tree (and the work of deciding it) would cost
/// more than `budget` bytes ([`budget::request_cost`]) is refused with [`RequestError::OverBudget`] before
/// anything is allocated. What the filter calls.
pub fn parse_body_within(
    body: &[u8],
    processing: budget::Processing,
    budget: u64,
) -> Result<serde_json::Value, RequestError> {
    if let Err((cost, shape)) = budget::check_request(body, processing, budget) {
        return Err(RequestError::OverBudget(budget::request_over_budget_message(body.len(), cost, &shape, budget)));
    }
    parse_body(body)
}
