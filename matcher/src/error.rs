//! Typed errors that carry their context: which file, which asset, which field, which key.

use thiserror::Error;

/// Why a request body could not be turned into a key. Answered as a 400 in the dialect's shape.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The body is empty.
    #[error("the request body is empty; an LLM request needs a JSON object body")]
    Empty,
    /// The body is not valid UTF-8 JSON.
    #[error("the request body is not valid JSON: {0}")]
    Malformed(String),
    /// Valid JSON, but not an object.
    #[error("the request body must be a JSON object")]
    NotAnObject,
    /// The body is compressed; Understudy matches plain JSON only.
    #[error(
        "the request body is compressed (content-encoding: {0}); Understudy matches uncompressed JSON: put \
         envoy.filters.http.decompressor before it (`understudy up` does), or send the body uncompressed"
    )]
    Compressed(String),
    /// Parsing the body would take more of the VM's memory than one request may
    /// ([`crate::limits::REQUEST_BUDGET`]); the message names the limit and the predicted cost.
    #[error("{0}")]
    OverBudget(String),
}

impl RequestError {
    /// The HTTP status it is answered with: 413 over the request budget, else 400.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::OverBudget(_) => 413,
            _ => 400,
        }
    }

    /// The `code` of the error body (OpenAI's shape).
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::OverBudget(_) => "understudy_request_over_budget",
            _ => "understudy_bad_request",
        }
    }
}

/// A bad asset, bundle or plugin configuration. Always names where the problem is.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A field holds a value that can't be used.
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `normalization.scrubbers[0].pattern`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The document doesn't parse or has unknown/missing fields.
    #[error("{source_name}: {field}: {reason}")]
    Parse {
        /// The file or document it came from.
        source_name: String,
        /// The path of the bad field inside it (`.` for the whole document).
        field: String,
        /// The parser's message.
        reason: String,
    },
    /// An asset is unusable.
    #[error("asset {asset}: {reason}")]
    Asset {
        /// `file#index` and name of the asset.
        asset: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two assets share a key but answer differently.
    #[error("conflicting responses for key {key}: {first} and {second} match the same request but answer differently")]
    Conflict {
        /// The shared key.
        key: String,
        /// One asset.
        first: String,
        /// The other.
        second: String,
    },
    /// A bundle's stored key disagrees with the key this build computes.
    #[error("asset {asset}: the bundle says key {stored} but this build computes {computed}; the bundle was built with other normalization settings or another Understudy version: rebuild it with `understudy bundle`")]
    KeyMismatch {
        /// The asset.
        asset: String,
        /// Key in the bundle.
        stored: String,
        /// Key computed now.
        computed: String,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { field: field.into(), reason: reason.into() }
    }
}
