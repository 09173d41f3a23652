//! Parity: does the answer Understudy would have served still look like the live model's answer?
//!
//! Skeleton (API contract); the comparison is filled in by the next commit.

use serde::{Deserialize, Serialize};

use crate::dialect::Route;
use crate::error::ConfigError;

/// Version tag of a [`ParityRecord`].
pub const PARITY_FORMAT: &str = "understudy.parity/v1";

/// Default relative tolerance of embedding L2 norms.
pub const DEFAULT_NORM_TOLERANCE: f64 = 0.01;

/// Parity settings (the plugin configuration's `parity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParityConfig {
    /// Compare the generated text exactly.
    pub exact_text: bool,
    /// Else, when set, the texts' similarity in `[0, 1]` must reach it.
    pub min_similarity: Option<f64>,
    /// Extra JSON Pointers (`*` for any array index) that never count.
    pub ignore: Vec<String>,
    /// Relative tolerance of embedding L2 norms.
    pub norm_tolerance: f64,
}

impl Default for ParityConfig {
    fn default() -> Self {
        ParityConfig {
            exact_text: false,
            min_similarity: None,
            ignore: Vec::new(),
            norm_tolerance: DEFAULT_NORM_TOLERANCE,
        }
    }
}

impl ParityConfig {
    /// Validates and compiles the settings.
    pub fn compile(&self) -> Result<Parity, ConfigError> {
        Ok(Parity { cfg: self.clone() })
    }
}

/// Compiled parity settings.
#[derive(Debug, Clone)]
pub struct Parity {
    cfg: ParityConfig,
}

/// One side of a comparison: an HTTP answer.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// HTTP status.
    pub status: u16,
    /// Its `content-type`, if any.
    pub content_type: Option<&'a str>,
    /// The body as received (a stream included).
    pub body: &'a [u8],
}

impl Parity {
    /// Compares `expected` (what Understudy would have served) with `live` (what the upstream answered).
    pub fn compare(&self, route: &Route, expected: Observed<'_>, live: Observed<'_>) -> Verdict {
        let _ = (&self.cfg, route, expected, live);
        Verdict { matched: true, diffs: Vec::new() }
    }
}

/// The outcome of one comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// No difference counted.
    pub matched: bool,
    /// The differences.
    pub diffs: Vec<Diff>,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// JSON Pointer of the differing value.
    pub path: String,
    /// What differs.
    pub kind: DiffKind,
    /// What Understudy would have served there.
    pub expected: Option<String>,
    /// What the live answer holds there.
    pub live: Option<String>,
}

/// What kind of difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// The status classes (2xx/4xx/5xx) differ.
    StatusClass,
    /// A key Understudy serves is missing from the live answer.
    Missing,
    /// The live answer has a key Understudy does not serve.
    Extra,
    /// A value's JSON type differs.
    Type,
    /// Finish / stop reasons differ.
    FinishReason,
    /// Tool-call names (or their number) differ.
    ToolName,
    /// Tool-call argument keys differ.
    ToolArguments,
    /// Embedding dimensions differ.
    EmbeddingDimension,
    /// Embedding L2 norms differ beyond the tolerance.
    EmbeddingNorm,
    /// Usage is reported on one side only.
    UsageMissing,
    /// Generated text differs (only when configured).
    Text,
    /// A body could not be parsed.
    Unparsable,
}

/// What the filter ships to the collector (`POST /v1/parity`) and what `understudy parity-report` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityRecord {
    /// [`PARITY_FORMAT`].
    pub format: String,
    /// The request's key.
    pub key: String,
    /// The asset that would have answered (source/name); `None`: no asset.
    pub asset: Option<String>,
    /// `gen_ai.provider.name`.
    pub provider: String,
    /// Operation name.
    pub operation: String,
    /// The request's model.
    pub model: Option<String>,
    /// Environment.
    pub env: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The comparison.
    pub verdict: Verdict,
}
