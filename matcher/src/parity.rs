//! Parity: does the answer Understudy would have served still look like the live model's answer?
//!
//! In parity mode a request goes live and the client gets the live answer; the filter keeps what it would
//! have served and [`Parity::compare`]s the two on what tests rely on, never on what changes on every call:
//!
//! - the status class (2xx, 4xx, 5xx): when it differs, nothing else is compared;
//! - the JSON shape: a key on one side only ([`DiffKind::Missing`] / [`DiffKind::Extra`]), a value of another
//!   JSON type ([`DiffKind::Type`]; all numbers are one type, and `null` goes with any type, as nullable
//!   fields are null or not as the model's answer goes). Arrays are compared by their first element's
//!   shape, not their length; in arrays of typed objects (`"type": "text"`, `"tool_use"`, ...) the first
//!   element of each type present on both sides;
//! - finish / stop reasons, tool-call names (and how many calls) and argument keys (OpenAI's arguments are a
//!   JSON string: parsed), embedding dimensions and L2 norms (within `norm_tolerance`), and whether usage is
//!   reported: where each API keeps them is its module's business ([`crate::dialect`], `parity_fields`);
//! - the generated text, only when configured: exactly, or a Sørensen–Dice similarity over character bigrams
//!   ([`strsim::sorensen_dice`], whitespace ignored) of at least `min_similarity`.
//!
//! Values never count (ids, `created`, timestamps, `system_fingerprint`, model snapshots, usage numbers are
//! only ever compared by type), and volatile fields (ids, timestamps, fingerprints, timings: each API's
//! refreshed fields and its own list) don't count even when present on one side only. Streams (SSE, NDJSON,
//! Gemini's JSON array, AWS event streams) are assembled into the whole answer first, with the same code that
//! assembles recorded streams, so a streamed live answer compares with a plain expected one.
//!
//! The comparison is pure and bounded: at most [`MAX_PARITY_DIFFS`] differences, each value quoted up to
//! [`MAX_PARITY_VALUE_CHARS`] chars. Every [`DiffKind`] is a mismatch.
//!
//! ```
//! use understudy_matcher::parity::{Observed, ParityConfig, DiffKind};
//! use understudy_matcher::{Operation, Route};
//! let parity = ParityConfig::default().compile().unwrap();
//! let ok = |body: &'static str| Observed { status: 200, content_type: Some("application/json"), body: body.as_bytes() };
//! let route = Route::of(Operation::Messages);
//! let v = parity.compare(&route,
//!     ok(r#"{"id":"msg_1","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}"#),
//!     ok(r#"{"id":"msg_2","content":[{"type":"text","text":"Hello"}],"stop_reason":"max_tokens","usage":{"input_tokens":1,"output_tokens":9}}"#));
//! assert!(!v.matched);
//! assert_eq!((v.diffs[0].path.as_str(), v.diffs[0].kind), ("/stop_reason", DiffKind::FinishReason));
//! assert_eq!(v.diffs.len(), 1);
//! ```

use std::collections::BTreeSet;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dialect::{ParityFields, Route, ToolCalls};
use crate::error::ConfigError;
use crate::key::parse_pointer;
pub use crate::limits::{MAX_PARITY_DIFFS, MAX_PARITY_VALUE_CHARS};

/// Version tag of a [`ParityRecord`].
pub const PARITY_FORMAT: &str = "understudy.parity/v1";

/// Default relative tolerance of embedding L2 norms (`parity.norm_tolerance`).
pub const DEFAULT_NORM_TOLERANCE: f64 = 0.01;

/// Parity settings (the plugin configuration's `parity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParityConfig {
    /// Compare the generated text exactly (off by default).
    pub exact_text: bool,
    /// Else, when set, the texts' similarity in `[0, 1]` must reach it.
    pub min_similarity: Option<f64>,
    /// Extra JSON Pointers (RFC 6901; `*` stands for any array index) that never count, with what is below.
    pub ignore: Vec<String>,
    /// Relative tolerance of embedding L2 norms: `|a - b| / max(a, b)` above it is a mismatch.
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
    /// Is this the default configuration (left out of a serialized plugin configuration)?
    pub fn is_default(&self) -> bool {
        *self == ParityConfig::default()
    }

    /// Validates the settings (a similarity in `[0, 1]`, a finite non-negative tolerance, well-formed
    /// pointers) and compiles them.
    pub fn compile(&self) -> Result<Parity, ConfigError> {
        if let Some(s) = self.min_similarity {
            if !(0.0..=1.0).contains(&s) {
                return Err(ConfigError::invalid(
                    "parity.min_similarity",
                    format!("{s} is not a similarity: use a number from 0 (anything) to 1 (identical)"),
                ));
            }
        }
        if !self.norm_tolerance.is_finite() || self.norm_tolerance < 0.0 {
            return Err(ConfigError::invalid(
                "parity.norm_tolerance",
                format!("{} is not a relative tolerance: use a number of 0 or more (0.01 is 1%)", self.norm_tolerance),
            ));
        }
        let ignore = self
            .ignore
            .iter()
            .enumerate()
            .map(|(i, p)| Pattern::parse(p).map_err(|e| ConfigError::invalid(format!("parity.ignore[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Parity {
            exact_text: self.exact_text,
            min_similarity: self.min_similarity,
            ignore,
            norm_tolerance: self.norm_tolerance,
        })
    }
}

/// Compiled parity settings: what [`Parity::compare`] runs with.
#[derive(Debug, Clone)]
pub struct Parity {
    exact_text: bool,
    min_similarity: Option<f64>,
    ignore: Vec<Pattern>,
    norm_tolerance: f64,
}

impl Default for Parity {
    fn default() -> Self {
        Parity { exact_text: false, min_similarity: None, ignore: Vec::new(), norm_tolerance: DEFAULT_NORM_TOLERANCE }
    }
}

/// One side of a comparison: an HTTP answer as it was (or would have been) sent.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// HTTP status.
    pub status: u16,
    /// Its `content-type`, if any (a stream's tells how to read it; otherwise the body is tried as JSON, then
    /// as a stream of the operation).
    pub content_type: Option<&'a str>,
    /// The body as sent, a stream included.
    pub body: &'a [u8],
}

/// The outcome of one comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// No difference counted (`diffs` is empty).
    pub matched: bool,
    /// The differences, at most [`MAX_PARITY_DIFFS`].
    pub diffs: Vec<Diff>,
}

impl Verdict {
    /// One line for a log: `match`, or how many differences and the first few
    /// (`2 differences: finish_reason at /choices/0/finish_reason (stop -> length), usage_missing at /usage (present -> absent)`).
    pub fn summary(&self) -> String {
        const SHOWN: usize = 3;
        if self.diffs.is_empty() {
            return "match".to_string();
        }
        let n = self.diffs.len();
        let mut out = format!("{n} difference{}: ", if n == 1 { "" } else { "s" });
        let shown: Vec<String> = self
            .diffs
            .iter()
            .take(SHOWN)
            .map(|d| {
                let side = |v: &Option<String>| v.as_deref().map_or_else(|| "absent".to_string(), |s| cut_to(s, 40));
                let path = if d.path.is_empty() { "the whole answer" } else { d.path.as_str() };
                format!("{} at {path} ({} -> {})", d.kind.name(), side(&d.expected), side(&d.live))
            })
            .collect();
        out.push_str(&shown.join(", "));
        if n > SHOWN {
            out.push_str(&format!(", and {} more", n - SHOWN));
        }
        out
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// JSON Pointer of the differing value in the (assembled) answer; `""` for the whole answer.
    pub path: String,
    /// What differs.
    pub kind: DiffKind,
    /// What Understudy would have served there (a value, a JSON type name, a status), if anything.
    pub expected: Option<String>,
    /// What the live answer holds there, if anything.
    pub live: Option<String>,
}

/// What kind of difference a [`Diff`] is. Every kind counts as a mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// The status classes (2xx, 4xx, 5xx) differ; the bodies were not compared.
    StatusClass,
    /// A key Understudy serves is not in the live answer.
    Missing,
    /// The live answer has a key Understudy does not serve.
    Extra,
    /// A value's JSON type differs.
    Type,
    /// Finish / stop reasons differ.
    FinishReason,
    /// Tool-call names differ, or the number of tool calls.
    ToolName,
    /// A tool call's argument keys differ.
    ToolArguments,
    /// Embedding dimensions differ.
    EmbeddingDimension,
    /// Embedding L2 norms differ by more than `norm_tolerance`.
    EmbeddingNorm,
    /// Usage is reported on one side only.
    UsageMissing,
    /// The generated text differs (only when `exact_text` or `min_similarity` is configured).
    Text,
    /// A body is neither JSON nor a stream of the operation (or is empty on one side only).
    Unparsable,
}

impl DiffKind {
    /// The kind's name as serialized (`status_class`, `missing`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DiffKind::StatusClass => "status_class",
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Type => "type",
            DiffKind::FinishReason => "finish_reason",
            DiffKind::ToolName => "tool_name",
            DiffKind::ToolArguments => "tool_arguments",
            DiffKind::EmbeddingDimension => "embedding_dimension",
            DiffKind::EmbeddingNorm => "embedding_norm",
            DiffKind::UsageMissing => "usage_missing",
            DiffKind::Text => "text",
            DiffKind::Unparsable => "unparsable",
        }
    }
}

/// What the filter ships to the collector (`POST /v1/parity`) and what `understudy parity-report` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityRecord {
    /// [`PARITY_FORMAT`].
    pub format: String,
    /// The request's key.
    pub key: String,
    /// The asset that would have answered (its source and name); `None`: no asset answered.
    pub asset: Option<String>,
    /// OpenTelemetry `gen_ai.provider.name` of the route (`openai`, `anthropic`, ...).
    pub provider: String,
    /// The operation's name ([`crate::Operation::name`]).
    pub operation: String,
    /// The request's model.
    pub model: Option<String>,
    /// The environment the filter runs in.
    pub env: String,
    /// When the comparison was made, Unix milliseconds.
    pub at_ms: u64,
    /// The comparison.
    pub verdict: Verdict,
}

impl ParityRecord {
    /// The record of one comparison on `route` (its provider and operation are the route's).
    pub fn new(
        route: &Route,
        key: impl Into<String>,
        asset: Option<String>,
        model: Option<String>,
        env: impl Into<String>,
        at_ms: u64,
        verdict: Verdict,
    ) -> ParityRecord {
        ParityRecord {
            format: PARITY_FORMAT.to_string(),
            key: key.into(),
            asset,
            provider: route.provider.to_string(),
            operation: route.operation.name().to_string(),
            model,
            env: env.into(),
            at_ms,
            verdict,
        }
    }

    /// Parses a record, refusing another format.
    pub fn parse(text: &str) -> Result<ParityRecord, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not a parity record: not JSON: {e}"))?;
        match v.get("format").and_then(Value::as_str) {
            Some(PARITY_FORMAT) => {}
            Some(other) => return Err(format!("format is {other:?}, expected {PARITY_FORMAT:?}")),
            None => return Err(format!("not a parity record: no \"format\": {PARITY_FORMAT:?}")),
        }
        let r: ParityRecord = serde_json::from_value(v).map_err(|e| format!("not a parity record: {e}"))?;
        if r.verdict.matched != r.verdict.diffs.is_empty() {
            return Err(format!(
                "verdict.matched is {} but it lists {} differences",
                r.verdict.matched,
                r.verdict.diffs.len()
            ));
        }
        Ok(r)
    }
}

impl Parity {
    /// Compares `expected` (what Understudy would have served: a rendered answer, possibly a stream) with
    /// `live` (what the upstream answered) for a request classified as `route`.
    pub fn compare(&self, route: &Route, expected: Observed<'_>, live: Observed<'_>) -> Verdict {
        let mut out = Vec::new();
        self.compare_into(route, expected, live, &mut out);
        out.truncate(MAX_PARITY_DIFFS);
        let diffs: Vec<Diff> = out.into_iter().map(Found::into_diff).collect();
        Verdict { matched: diffs.is_empty(), diffs }
    }

    fn compare_into(&self, route: &Route, expected: Observed<'_>, live: Observed<'_>, out: &mut Vec<Found>) {
        if expected.status / 100 != live.status / 100 {
            out.push(Found::new(
                Vec::new(),
                DiffKind::StatusClass,
                Some(expected.status.to_string()),
                Some(live.status.to_string()),
            ));
            return;
        }
        let (e, l) = match (answer(route, &expected), answer(route, &live)) {
            (Ok(Some(e)), Ok(Some(l))) => (e, l),
            (Ok(None), Ok(None)) => return,
            (e, l) => {
                out.push(Found::new(Vec::new(), DiffKind::Unparsable, unparsable(e), unparsable(l)));
                return;
            }
        };
        let op = route.operation;
        let dialect = op.dialect();
        let fields = dialect.parity_fields(op);
        let mut ignore = self.ignore.clone();
        ignore.extend(dialect.refreshed(op).iter().map(|(name, _)| Pattern(vec![(*name).to_string()])));
        ignore.extend(fields.volatile.iter().map(|p| Pattern::builtin(p)));

        let mut specific = Vec::new();
        finish_reasons(&fields, &e, &l, &mut specific);
        tool_calls(&fields, &e, &l, &mut specific);
        vectors(&fields, &e, &l, self.norm_tolerance, &mut specific);
        if dialect.usage(op, &e).is_some() != dialect.usage(op, &l).is_some() {
            let present = |v: &Value| dialect.usage(op, v).map(|_| "present".to_string());
            specific.push(Found::new(
                Pattern::builtin(fields.usage).0,
                DiffKind::UsageMissing,
                present(&e),
                present(&l),
            ));
        }
        if self.exact_text || self.min_similarity.is_some() {
            let (et, lt) = (dialect.output_text(op, &e), dialect.output_text(op, &l));
            let differs = if self.exact_text {
                et != lt
            } else {
                self.min_similarity.is_some_and(|min| strsim::sorensen_dice(&et, &lt) < min)
            };
            if differs {
                specific.push(Found::new(Pattern::builtin(fields.text).0, DiffKind::Text, Some(et), Some(lt)));
            }
        }
        specific.retain(|d| !ignore.iter().any(|p| p.covers(&d.path)));

        // Tool arguments are compared by their keys above, not by the shape of their values (their own type
        // still counts: OpenAI's are a JSON string).
        let mut skip = ignore;
        skip.extend(fields.tools.iter().map(|t| {
            let mut p = Pattern::builtin(t.calls);
            p.0.extend(Pattern::builtin(t.arguments).0);
            p.0.push(ANY.to_string());
            p
        }));
        let mut shape = Vec::new();
        walk(&e, &l, &mut Vec::new(), &skip, &mut shape);
        // A missing usage, finish reason, tool call or vector explains the shape differences at or under its
        // path (a text difference explains none).
        shape.retain(|d| {
            !specific.iter().any(|s| s.kind != DiffKind::Text && !s.path.is_empty() && d.path.starts_with(&s.path))
        });
        out.extend(specific);
        out.extend(shape);
    }
}

/// A difference while it is being found: its path still in segments.
struct Found {
    path: Vec<String>,
    kind: DiffKind,
    expected: Option<String>,
    live: Option<String>,
}

impl Found {
    fn new(path: Vec<String>, kind: DiffKind, expected: Option<String>, live: Option<String>) -> Found {
        Found { path, kind, expected, live }
    }

    fn into_diff(self) -> Diff {
        let path = self.path.iter().map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1"))).collect();
        Diff { path, kind: self.kind, expected: self.expected.map(cut), live: self.live.map(cut) }
    }
}

/// Quotes at most [`MAX_PARITY_VALUE_CHARS`] chars of a value.
fn cut(s: String) -> String {
    match s.char_indices().nth(MAX_PARITY_VALUE_CHARS) {
        Some(_) => cut_to(&s, MAX_PARITY_VALUE_CHARS),
        None => s,
    }
}

/// At most `max` chars of `s`, ending with `…` when cut.
fn cut_to(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", s.get(..at).unwrap_or_default()),
        None => s.to_string(),
    }
}

/// A JSON Pointer whose `*` segments stand for any array index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(Vec<String>);

/// A built-in pattern segment that stands for any key or index (no JSON Pointer a user writes has it).
const ANY: &str = "\u{0}any";

impl Pattern {
    fn parse(p: &str) -> Result<Pattern, String> {
        parse_pointer(p).map(Pattern)
    }

    /// A pattern of an API module (a unit test checks they all parse); `""` is the whole answer.
    fn builtin(p: &str) -> Pattern {
        if p.is_empty() {
            return Pattern(Vec::new());
        }
        Pattern(parse_pointer(p).unwrap_or_else(|_| vec!["\u{0}invalid".to_string()]))
    }

    /// Is `path` this pattern's value, or under it?
    fn covers(&self, path: &[String]) -> bool {
        self.0.len() <= path.len()
            && self
                .0
                .iter()
                .zip(path)
                .all(|(p, s)| p == s || p == ANY || (p == "*" && s.bytes().all(|b| b.is_ascii_digit())))
    }

    /// Every value the pattern selects in `v`, with its path.
    fn select<'v>(&self, v: &'v Value) -> Vec<(Vec<String>, &'v Value)> {
        let mut found = vec![(Vec::new(), v)];
        for seg in &self.0 {
            let mut next = Vec::new();
            for (path, v) in found {
                let mut push = |k: String, x: &'v Value| {
                    let mut p = path.clone();
                    p.push(k);
                    next.push((p, x));
                };
                match v {
                    Value::Array(a) if seg == "*" => a.iter().enumerate().for_each(|(i, x)| push(i.to_string(), x)),
                    Value::Array(a) => {
                        if let Some(x) = seg.parse::<usize>().ok().and_then(|i| a.get(i)) {
                            push(seg.clone(), x);
                        }
                    }
                    Value::Object(m) => {
                        if let Some(x) = m.get(seg) {
                            push(seg.clone(), x);
                        }
                    }
                    _ => {}
                }
            }
            found = next;
        }
        found
    }
}

/// The answer a side holds: `None` for an empty body, else the JSON body or the assembled stream.
fn answer(route: &Route, o: &Observed<'_>) -> Result<Option<Value>, String> {
    if o.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let op = route.operation;
    let streamed = o.content_type.is_some_and(|ct| {
        let ct = ct.to_ascii_lowercase();
        ct.contains("event-stream") || ct.contains("eventstream") || ct.contains("ndjson")
    });
    let json_error = if streamed {
        None
    } else {
        match serde_json::from_slice::<Value>(o.body) {
            // A JSON array is Gemini's stream framing; no answer of an operation that streams is one, but an
            // array that is no stream is compared as the JSON it is.
            Ok(v) if v.is_array() && op.streams() => {
                return Ok(Some(crate::stream::assemble_recorded(route, o.body).unwrap_or(v)));
            }
            Ok(v) => return Ok(Some(v)),
            Err(e) => Some(format!("not JSON: {e}")),
        }
    };
    if !op.streams() {
        return Err(json_error.unwrap_or_else(|| format!("{op} answers have no streaming form")));
    }
    crate::stream::assemble_recorded(route, o.body).map(Some).map_err(|e| match json_error {
        Some(j) => format!("{j}; nor a stream: {e}"),
        None => e.to_string(),
    })
}

/// How an unusable side is described in an [`DiffKind::Unparsable`] difference.
fn unparsable(side: Result<Option<Value>, String>) -> Option<String> {
    match side {
        Ok(Some(v)) => Some(format!("a JSON {}", type_name(&v))),
        Ok(None) => Some("an empty body".to_string()),
        Err(e) => Some(e),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn quote(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Compares the shapes of `e` and `l` at `path`, skipping what a `skip` pattern covers.
fn walk(e: &Value, l: &Value, path: &mut Vec<String>, skip: &[Pattern], out: &mut Vec<Found>) {
    if out.len() >= MAX_PARITY_DIFFS || skip.iter().any(|p| p.covers(path)) {
        return;
    }
    match (e, l) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, ev) in a {
                path.push(k.clone());
                match b.get(k) {
                    Some(lv) => walk(ev, lv, path, skip, out),
                    None if !skip.iter().any(|p| p.covers(path)) => {
                        out.push(Found::new(path.clone(), DiffKind::Missing, Some(type_name(ev).into()), None));
                    }
                    None => {}
                }
                path.pop();
            }
            for (k, lv) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                path.push(k.clone());
                if !skip.iter().any(|p| p.covers(path)) {
                    out.push(Found::new(path.clone(), DiffKind::Extra, None, Some(type_name(lv).into())));
                }
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, j) in pairs(a, b) {
                if let (Some(ev), Some(lv)) = (a.get(i), b.get(j)) {
                    path.push(i.to_string());
                    walk(ev, lv, path, skip, out);
                    path.pop();
                }
            }
        }
        // Nullable fields (`content`, `refusal`, `stop_sequence`, `logprobs`) are null or not as the model's
        // answer goes: a null on one side is not a schema change.
        (Value::Null, _) | (_, Value::Null) => {}
        _ if type_name(e) != type_name(l) => {
            out.push(Found::new(path.clone(), DiffKind::Type, Some(type_name(e).into()), Some(type_name(l).into())));
        }
        _ => {}
    }
}

/// Which elements of two arrays are compared: the first ones; in arrays of typed objects, the first element
/// of each `type` present on both sides (a tool-use block is not compared with a text block).
fn pairs(a: &[Value], b: &[Value]) -> Vec<(usize, usize)> {
    let type_of = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_owned);
    let (Some(first_e), Some(first_l)) = (a.first(), b.first()) else { return Vec::new() };
    if type_of(first_e).is_none() || type_of(first_l).is_none() {
        return vec![(0, 0)];
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, ev) in a.iter().enumerate() {
        let Some(t) = type_of(ev) else { continue };
        if !seen.insert(t.clone()) {
            continue;
        }
        if let Some(j) = b.iter().position(|lv| type_of(lv).as_deref() == Some(t.as_str())) {
            out.push((i, j));
        }
    }
    out
}

/// Finish reasons present on both sides that differ (one present on one side only is a shape difference).
fn finish_reasons(fields: &ParityFields, e: &Value, l: &Value, out: &mut Vec<Found>) {
    for p in fields.finish {
        let pattern = Pattern::builtin(p);
        let live = pattern.select(l);
        for (path, ev) in pattern.select(e) {
            if let Some((_, lv)) = live.iter().find(|(lp, _)| *lp == path) {
                if ev != *lv {
                    out.push(Found::new(path, DiffKind::FinishReason, Some(quote(ev)), Some(quote(lv))));
                }
            }
        }
    }
}

/// One tool call of an answer.
struct Call {
    /// Where the call is.
    path: Vec<String>,
    spec: ToolCalls,
    name: String,
    /// Its argument keys; `None` when the arguments are not a JSON object.
    keys: Option<BTreeSet<String>>,
}

impl Call {
    fn at(&self, rel: &str) -> Vec<String> {
        let mut p = self.path.clone();
        p.extend(Pattern::builtin(rel).0);
        p
    }
}

fn calls(fields: &ParityFields, v: &Value) -> Vec<Call> {
    let mut out = Vec::new();
    for spec in fields.tools {
        for (path, call) in Pattern::builtin(spec.calls).select(v) {
            let Some(name) = call.pointer(spec.name).and_then(Value::as_str) else { continue };
            out.push(Call {
                path,
                spec: *spec,
                name: name.to_string(),
                keys: argument_keys(call.pointer(spec.arguments)),
            });
        }
    }
    out
}

fn argument_keys(args: Option<&Value>) -> Option<BTreeSet<String>> {
    let keys = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect();
    match args {
        None | Some(Value::Null) => Some(BTreeSet::new()),
        Some(Value::Object(m)) => Some(keys(m)),
        Some(Value::String(s)) if s.trim().is_empty() => Some(BTreeSet::new()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Some(keys(&m)),
            _ => None,
        },
        Some(_) => None,
    }
}

fn describe_keys(keys: &Option<BTreeSet<String>>) -> String {
    match keys {
        Some(k) => format!("{{{}}}", k.iter().map(String::as_str).collect::<Vec<_>>().join(", ")),
        None => "arguments that are not a JSON object".to_string(),
    }
}

/// Tool calls in order: names, how many, and argument keys.
fn tool_calls(fields: &ParityFields, e: &Value, l: &Value, out: &mut Vec<Found>) {
    let (ec, lc) = (calls(fields, e), calls(fields, l));
    for i in 0..ec.len().max(lc.len()) {
        match (ec.get(i), lc.get(i)) {
            (Some(a), Some(b)) if a.name != b.name => {
                out.push(Found::new(a.at(a.spec.name), DiffKind::ToolName, Some(a.name.clone()), Some(b.name.clone())));
            }
            (Some(a), Some(b)) if a.keys != b.keys || a.keys.is_none() != b.keys.is_none() => {
                out.push(Found::new(
                    a.at(a.spec.arguments),
                    DiffKind::ToolArguments,
                    Some(describe_keys(&a.keys)),
                    Some(describe_keys(&b.keys)),
                ));
            }
            (Some(a), None) => out.push(Found::new(a.at(a.spec.name), DiffKind::ToolName, Some(a.name.clone()), None)),
            (None, Some(b)) => out.push(Found::new(b.at(b.spec.name), DiffKind::ToolName, None, Some(b.name.clone()))),
            _ => {}
        }
    }
}

/// An embedding vector's dimension and L2 norm: an array of numbers or base64 of little-endian f32.
fn vector(v: &Value) -> Option<(usize, f64)> {
    match v {
        Value::Array(a) => {
            let mut sum = 0.0;
            for x in a {
                let x = x.as_f64()?;
                sum += x * x;
            }
            Some((a.len(), sum.sqrt()))
        }
        Value::String(s) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
            if bytes.len() % 4 != 0 {
                return None;
            }
            let sum: f64 = bytes
                .chunks_exact(4)
                .map(|c| {
                    let x = f64::from(f32::from_le_bytes([
                        c.first().copied().unwrap_or(0),
                        c.get(1).copied().unwrap_or(0),
                        c.get(2).copied().unwrap_or(0),
                        c.get(3).copied().unwrap_or(0),
                    ]));
                    x * x
                })
                .sum();
            Some((bytes.len() / 4, sum.sqrt()))
        }
        _ => None,
    }
}

/// Embedding vectors at the same place on both sides: dimension, then norm within `tolerance`.
fn vectors(fields: &ParityFields, e: &Value, l: &Value, tolerance: f64, out: &mut Vec<Found>) {
    for p in fields.vectors {
        let pattern = Pattern::builtin(p);
        let live = pattern.select(l);
        for (path, ev) in pattern.select(e) {
            let Some((_, lv)) = live.iter().find(|(lp, _)| *lp == path) else { continue };
            let (Some((ed, en)), Some((ld, ln))) = (vector(ev), vector(lv)) else { continue };
            if ed != ld {
                out.push(Found::new(path, DiffKind::EmbeddingDimension, Some(ed.to_string()), Some(ld.to_string())));
            } else if (en - ln).abs() > tolerance * en.max(ln) {
                out.push(Found::new(path, DiffKind::EmbeddingNorm, Some(format!("{en:.6}")), Some(format!("{ln:.6}"))));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::stream::{render_stream, StreamOptions};
    use crate::{classify, Operation};
    use serde_json::json;

    fn plain(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn ok(body: &[u8]) -> Observed<'_> {
        Observed { status: 200, content_type: Some("application/json"), body }
    }

    fn run(p: &Parity, route: &Route, e: &Value, l: &Value) -> Verdict {
        p.compare(route, ok(&plain(e)), ok(&plain(l)))
    }

    fn diffs(p: &Parity, route: &Route, e: &Value, l: &Value) -> Vec<(String, DiffKind)> {
        run(p, route, e, l).diffs.into_iter().map(|d| (d.path, d.kind)).collect()
    }

    fn chat() -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1764403200, "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris.", "refusal": null, "annotations": [],
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"unit\":\"C\"}"}}
                ]}, "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            "system_fingerprint": "fp_1"
        })
    }

    fn chat_route() -> Route {
        Route::of(Operation::ChatCompletions)
    }

    fn default() -> Parity {
        ParityConfig::default().compile().unwrap()
    }

    #[test]
    fn volatile_fields_text_and_usage_numbers_never_count() {
        let mut live = chat();
        live["id"] = json!("chatcmpl-2");
        live["created"] = json!(1);
        live["model"] = json!("gpt-4o-mini-2025-01-01");
        live["choices"][0]["message"]["content"] = json!("The capital is Paris, of course.");
        live["choices"][0]["message"]["tool_calls"][0]["id"] = json!("call_zzz");
        live["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] =
            json!("{\"unit\":\"F\",\"city\":\"Bergen\"}");
        live["usage"] = json!({"prompt_tokens": 500, "completion_tokens": 1, "total_tokens": 501});
        live.as_object_mut().unwrap().remove("system_fingerprint");
        let v = run(&default(), &chat_route(), &chat(), &live);
        assert_eq!(v, Verdict { matched: true, diffs: vec![] });
        // A status of the same class matches too.
        let body = plain(&chat());
        let created = Observed { status: 201, content_type: None, body: &body };
        assert!(default().compare(&chat_route(), ok(&body), created).matched);
    }

    #[test]
    fn status_class_is_compared_first() {
        let body = plain(&chat());
        let err = br#"{"error":{"message":"overloaded","type":"server_error"}}"#;
        let v = default().compare(&chat_route(), ok(&body), Observed { status: 503, content_type: None, body: err });
        assert!(!v.matched);
        assert_eq!(
            v.diffs,
            vec![Diff {
                path: String::new(),
                kind: DiffKind::StatusClass,
                expected: Some("200".into()),
                live: Some("503".into())
            }]
        );
        // Two errors of a class compare by shape.
        let other = br#"{"error":{"message":"x","type":"server_error","code":null}}"#;
        let v = default().compare(
            &chat_route(),
            Observed { status: 500, content_type: None, body: err },
            Observed { status: 502, content_type: None, body: other },
        );
        assert_eq!(
            v.diffs.iter().map(|d| (d.path.as_str(), d.kind)).collect::<Vec<_>>(),
            [("/error/code", DiffKind::Extra)]
        );
    }

    #[test]
    fn keys_on_one_side_only_are_missing_or_extra() {
        let mut live = chat();
        live["choices"][0]["message"].as_object_mut().unwrap().remove("refusal");
        live["choices"][0]["message"]["audio"] = json!(null);
        live["service_tier"] = json!("default");
        assert_eq!(
            diffs(&default(), &chat_route(), &chat(), &live),
            [
                ("/choices/0/message/refusal".to_string(), DiffKind::Missing),
                ("/choices/0/message/audio".to_string(), DiffKind::Extra),
                ("/service_tier".to_string(), DiffKind::Extra),
            ]
        );
        let v = run(&default(), &chat_route(), &chat(), &live);
        assert_eq!((v.diffs[0].expected.as_deref(), v.diffs[0].live.as_deref()), (Some("null"), None));
    }

    #[test]
    fn a_type_change_is_reported_with_both_types() {
        let mut live = chat();
        live["choices"][0]["message"]["content"] = json!([{"type": "text", "text": "Paris."}]);
        live["usage"]["total_tokens"] = json!("12");
        let v = run(&default(), &chat_route(), &chat(), &live);
        let got: Vec<_> =
            v.diffs.iter().map(|d| (d.path.as_str(), d.kind, d.expected.as_deref(), d.live.as_deref())).collect();
        assert_eq!(
            got,
            [
                ("/choices/0/message/content", DiffKind::Type, Some("string"), Some("array")),
                ("/usage/total_tokens", DiffKind::Type, Some("number"), Some("string")),
            ]
        );
        // Integers and floats are one type; null goes with any type (nullable fields).
        live = chat();
        live["usage"]["total_tokens"] = json!(12.5);
        live["choices"][0]["message"]["content"] = json!(null);
        live["choices"][0]["message"]["refusal"] = json!("I can't.");
        assert!(run(&default(), &chat_route(), &chat(), &live).matched);
    }

    #[test]
    fn arrays_compare_by_their_first_element_not_their_length() {
        let mut e = chat();
        e["choices"][0]["message"]["tool_calls"] = json!(null);
        e["choices"][0]["finish_reason"] = json!("stop");
        let mut l = e.clone();
        let second = json!({"index": 1, "message": {"role": "assistant", "content": "x", "refusal": null, "tool_calls": null}, "logprobs": null, "finish_reason": "stop"});
        l["choices"].as_array_mut().unwrap().push(second);
        assert!(run(&default(), &chat_route(), &e, &l).matched);
        l["choices"][0]["message"]["extra"] = json!(1);
        assert_eq!(
            diffs(&default(), &chat_route(), &e, &l),
            [("/choices/0/message/extra".to_string(), DiffKind::Extra)]
        );
    }

    #[test]
    fn finish_reasons_of_every_api() {
        let cases = [
            (Route::of(Operation::ChatCompletions), chat(), "/choices/0/finish_reason", json!("length")),
            (
                Route::of(Operation::Completions),
                json!({"choices": [{"text": "a", "index": 0, "finish_reason": "stop"}]}),
                "/choices/0/finish_reason",
                json!("length"),
            ),
            (
                Route::of(Operation::Responses),
                json!({"status": "completed", "output": []}),
                "/status",
                json!("incomplete"),
            ),
            (
                Route::of(Operation::Messages),
                json!({"content": [], "stop_reason": "end_turn"}),
                "/stop_reason",
                json!("max_tokens"),
            ),
            (
                Route::of(Operation::GenerateContent),
                json!({"candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"}]}),
                "/candidates/0/finishReason",
                json!("MAX_TOKENS"),
            ),
            (
                Route::of(Operation::BedrockConverse),
                json!({"output": {"message": {"content": []}}, "stopReason": "end_turn"}),
                "/stopReason",
                json!("max_tokens"),
            ),
            (
                Route::of(Operation::OllamaChat),
                json!({"message": {"content": "a"}, "done": true, "done_reason": "stop"}),
                "/done_reason",
                json!("length"),
            ),
            (
                Route::of(Operation::OllamaGenerate),
                json!({"response": "a", "done": true, "done_reason": "stop"}),
                "/done_reason",
                json!("length"),
            ),
        ];
        for (route, e, path, changed) in cases {
            assert!(run(&default(), &route, &e, &e).matched, "{}", route.operation);
            let mut l = e.clone();
            *l.pointer_mut(path).unwrap() = changed.clone();
            let v = run(&default(), &route, &e, &l);
            assert_eq!(v.diffs.len(), 1, "{}: {v:?}", route.operation);
            assert_eq!(
                (v.diffs[0].path.as_str(), v.diffs[0].kind),
                (path, DiffKind::FinishReason),
                "{}",
                route.operation
            );
            assert_eq!(v.diffs[0].live.as_deref(), changed.as_str());
        }
    }

    #[test]
    fn tool_names_and_their_number_of_every_api() {
        let cases = [
            (Route::of(Operation::ChatCompletions), chat(), "/choices/0/message/tool_calls/0/function/name"),
            (
                Route::of(Operation::Responses),
                json!({"status": "completed", "output": [
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}", "status": "completed"}]}),
                "/output/0/name",
            ),
            (
                Route::of(Operation::Messages),
                json!({"content": [{"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}], "stop_reason": "tool_use"}),
                "/content/1/name",
            ),
            (
                Route::of(Operation::GenerateContent),
                json!({"candidates": [{"content": {"parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]}, "finishReason": "STOP"}]}),
                "/candidates/0/content/parts/0/functionCall/name",
            ),
            (
                Route::of(Operation::BedrockConverse),
                json!({"output": {"message": {"content": [
                {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Oslo"}}}]}}, "stopReason": "tool_use"}),
                "/output/message/content/0/toolUse/name",
            ),
            (
                Route::of(Operation::OllamaChat),
                json!({"message": {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}, "done": true}),
                "/message/tool_calls/0/function/name",
            ),
        ];
        for (route, e, path) in cases {
            let mut l = e.clone();
            *l.pointer_mut(path).unwrap() = json!("get_time");
            let v = run(&default(), &route, &e, &l);
            let got: Vec<_> =
                v.diffs.iter().map(|d| (d.path.as_str(), d.kind, d.expected.as_deref(), d.live.as_deref())).collect();
            assert_eq!(got, [(path, DiffKind::ToolName, Some("get_weather"), Some("get_time"))], "{}", route.operation);
        }
        // One call more on the live side.
        let mut l = chat();
        let call = l["choices"][0]["message"]["tool_calls"][0].clone();
        l["choices"][0]["message"]["tool_calls"].as_array_mut().unwrap().push(call);
        let v = run(&default(), &chat_route(), &chat(), &l);
        let got: Vec<_> =
            v.diffs.iter().map(|d| (d.path.as_str(), d.kind, d.expected.as_deref(), d.live.as_deref())).collect();
        assert_eq!(
            got,
            [("/choices/0/message/tool_calls/1/function/name", DiffKind::ToolName, None, Some("get_weather"))]
        );
    }

    #[test]
    fn tool_argument_keys_not_values() {
        let mut l = chat();
        l["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] =
            json!("{\"city\":\"Oslo\",\"units\":\"C\"}");
        let v = run(&default(), &chat_route(), &chat(), &l);
        let got: Vec<_> =
            v.diffs.iter().map(|d| (d.path.as_str(), d.kind, d.expected.as_deref(), d.live.as_deref())).collect();
        assert_eq!(
            got,
            [(
                "/choices/0/message/tool_calls/0/function/arguments",
                DiffKind::ToolArguments,
                Some("{city, unit}"),
                Some("{city, units}")
            )]
        );
        l["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = json!({"city": "Oslo", "unit": "C"});
        assert_eq!(
            diffs(&default(), &chat_route(), &chat(), &l),
            [("/choices/0/message/tool_calls/0/function/arguments".to_string(), DiffKind::Type)],
            "same keys, but an object where OpenAI sends a JSON string"
        );
        l["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = json!("{\"city\":");
        let v = run(&default(), &chat_route(), &chat(), &l);
        assert_eq!(v.diffs[0].kind, DiffKind::ToolArguments);
        assert_eq!(v.diffs[0].live.as_deref(), Some("arguments that are not a JSON object"));
        // Object arguments (Anthropic): keys compared, nothing reported below them.
        let e = json!({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1, "b": {"c": 1}}}]});
        let l = json!({"content": [{"type": "tool_use", "id": "u", "name": "f", "input": {"a": "x"}}]});
        assert_eq!(
            diffs(&default(), &Route::of(Operation::Messages), &e, &l),
            [("/content/0/input".to_string(), DiffKind::ToolArguments)]
        );
    }

    fn b64(v: &[f32]) -> String {
        base64::engine::general_purpose::STANDARD.encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    #[test]
    fn embedding_dimension_and_norm_of_every_api() {
        let unit = [0.6, 0.8, 0.0];
        let cases = [
            (
                Operation::Embeddings,
                json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": unit}], "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
                "/data/0/embedding",
            ),
            (Operation::EmbedContent, json!({"embedding": {"values": unit}}), "/embedding/values"),
            (Operation::BatchEmbedContents, json!({"embeddings": [{"values": unit}]}), "/embeddings/0/values"),
            (Operation::BedrockTitanEmbeddings, json!({"embedding": unit, "inputTextTokenCount": 3}), "/embedding"),
            (
                Operation::OllamaEmbed,
                json!({"model": "m", "embeddings": [unit], "prompt_eval_count": 3}),
                "/embeddings/0",
            ),
            (Operation::OllamaEmbeddings, json!({"embedding": unit}), "/embedding"),
        ];
        for (op, e, path) in cases {
            let route = Route::of(op);
            let mut l = e.clone();
            *l.pointer_mut(path).unwrap() = json!([0.6, 0.8, 0.0, 0.0]);
            assert_eq!(diffs(&default(), &route, &e, &l), [(path.to_string(), DiffKind::EmbeddingDimension)], "{op}");
            *l.pointer_mut(path).unwrap() = json!([1.2, 1.6, 0.0]);
            let v = run(&default(), &route, &e, &l);
            let got: Vec<_> =
                v.diffs.iter().map(|d| (d.path.as_str(), d.kind, d.expected.as_deref(), d.live.as_deref())).collect();
            assert_eq!(got, [(path, DiffKind::EmbeddingNorm, Some("1.000000"), Some("2.000000"))], "{op}");
            // Within the tolerance, other values: a match.
            *l.pointer_mut(path).unwrap() = json!([0.0, 0.0, 1.005]);
            assert!(run(&default(), &route, &e, &l).matched, "{op}");
            let strict = ParityConfig { norm_tolerance: 0.001, ..ParityConfig::default() }.compile().unwrap();
            assert!(!run(&strict, &route, &e, &l).matched, "{op}");
        }
        // Base64 vectors (the OpenAI SDK's default encoding) are decoded.
        let route = Route::of(Operation::Embeddings);
        let e = json!({"data": [{"embedding": b64(&[0.6, 0.8])}]});
        assert!(run(&default(), &route, &e, &json!({"data": [{"embedding": b64(&[0.8, 0.6])}]})).matched);
        assert_eq!(
            diffs(&default(), &route, &e, &json!({"data": [{"embedding": b64(&[0.6, 0.8, 0.0])}]})),
            [("/data/0/embedding".to_string(), DiffKind::EmbeddingDimension)]
        );
    }

    #[test]
    fn usage_present_on_one_side_only() {
        let mut l = chat();
        l.as_object_mut().unwrap().remove("usage");
        let v = run(&default(), &chat_route(), &chat(), &l);
        let got: Vec<_> =
            v.diffs.iter().map(|d| (d.path.as_str(), d.kind, d.expected.as_deref(), d.live.as_deref())).collect();
        assert_eq!(got, [("/usage", DiffKind::UsageMissing, Some("present"), None)]);
        let cases = [
            (Operation::Messages, json!({"content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}), "/usage"),
            (
                Operation::GenerateContent,
                json!({"candidates": [], "usageMetadata": {"promptTokenCount": 1, "totalTokenCount": 1}}),
                "/usageMetadata",
            ),
            (
                Operation::BedrockConverse,
                json!({"output": {}, "usage": {"inputTokens": 1, "outputTokens": 1}}),
                "/usage",
            ),
            (Operation::OllamaChat, json!({"message": {}, "prompt_eval_count": 1}), "/prompt_eval_count"),
        ];
        for (op, e, path) in cases {
            let mut l = e.clone();
            l.as_object_mut().unwrap().remove(&path[1..]);
            assert_eq!(diffs(&default(), &Route::of(op), &e, &l), [(path.to_string(), DiffKind::UsageMissing)], "{op}");
            assert_eq!(diffs(&default(), &Route::of(op), &l, &e), [(path.to_string(), DiffKind::UsageMissing)], "{op}");
        }
    }

    #[test]
    fn text_counts_only_when_configured() {
        let mut l = chat();
        l["choices"][0]["message"]["content"] = json!("Berlin is the capital of Germany.");
        assert!(run(&default(), &chat_route(), &chat(), &l).matched);
        let exact = ParityConfig { exact_text: true, ..ParityConfig::default() }.compile().unwrap();
        let v = run(&exact, &chat_route(), &chat(), &l);
        assert_eq!(
            (v.diffs.len(), v.diffs[0].path.as_str(), v.diffs[0].kind),
            (1, "/choices/0/message/content", DiffKind::Text)
        );
        assert!(v.diffs[0].live.as_deref().unwrap().starts_with("Berlin is"));
        assert!(run(&exact, &chat_route(), &chat(), &chat()).matched);
        let similar = |min| ParityConfig { min_similarity: Some(min), ..ParityConfig::default() }.compile().unwrap();
        let mut close = chat();
        close["choices"][0]["message"]["content"] = json!("Paris!!");
        assert!(run(&similar(0.7), &chat_route(), &chat(), &close).matched);
        assert!(!run(&similar(0.7), &chat_route(), &chat(), &l).matched);
        assert!(run(&similar(0.0), &chat_route(), &chat(), &l).matched);
    }

    #[test]
    fn unparsable_or_empty_bodies() {
        let body = plain(&chat());
        let v = default().compare(&chat_route(), ok(&body), ok(b"<html>bad gateway</html>"));
        assert_eq!(v.diffs.len(), 1);
        assert_eq!((v.diffs[0].kind, v.diffs[0].expected.as_deref()), (DiffKind::Unparsable, Some("a JSON object")));
        assert!(v.diffs[0].live.as_deref().unwrap().contains("not JSON"), "{v:?}");
        let v = default().compare(&chat_route(), ok(&body), ok(b""));
        assert_eq!(v.diffs[0].live.as_deref(), Some("an empty body"));
        assert!(default().compare(&chat_route(), ok(b""), ok(b"  ")).matched);
        // A cut stream can't be assembled.
        let sse = render_stream(&chat_route(), &chat(), &StreamOptions::default()).unwrap();
        let cut = &sse[..sse.len() / 2];
        let v = default().compare(
            &chat_route(),
            ok(&body),
            Observed { status: 200, content_type: Some("text/event-stream"), body: cut },
        );
        assert_eq!(v.diffs[0].kind, DiffKind::Unparsable, "{v:?}");
        // Embeddings have no stream: a non-JSON body is unparsable.
        let emb = Route::of(Operation::Embeddings);
        let v = default().compare(&emb, ok(b"{\"data\":[]}"), ok(b"data: {}\n\n"));
        assert_eq!(v.diffs[0].kind, DiffKind::Unparsable);
    }

    /// A plain answer and a stream of it, for every streamed operation and framing.
    fn streamed_cases() -> Vec<(Route, Value, &'static str)> {
        let route = |p: &str| classify("POST", p).unwrap();
        vec![
            (route("/v1/chat/completions"), chat(), "/choices/0/finish_reason"),
            (
                route("/v1/completions"),
                json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                    "choices": [{"text": "Paris.", "index": 0, "logprobs": null, "finish_reason": "stop"}]}),
                "/choices/0/finish_reason",
            ),
            (
                route("/v1/messages"),
                json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                    "content": [{"type": "text", "text": "Paris."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}],
                    "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 5}}),
                "/stop_reason",
            ),
            (
                route("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"),
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Paris."}]}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}, "modelVersion": "gemini-2.0-flash"}),
                "/candidates/0/finishReason",
            ),
            (
                route("/v1beta/models/gemini-2.0-flash:streamGenerateContent"),
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Paris."}]}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}, "modelVersion": "gemini-2.0-flash"}),
                "/candidates/0/finishReason",
            ),
            (
                route("/model/amazon.nova-lite-v1:0/converse-stream"),
                json!({"output": {"message": {"role": "assistant", "content": [{"text": "Paris."}]}}, "stopReason": "end_turn",
                    "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}, "metrics": {"latencyMs": 10}}),
                "/stopReason",
            ),
            (
                route("/api/chat"),
                json!({"model": "llama3.2", "created_at": "2025-01-01T00:00:00Z", "message": {"role": "assistant", "content": "Paris."},
                    "done": true, "done_reason": "stop", "total_duration": 1, "load_duration": 1, "prompt_eval_count": 3,
                    "prompt_eval_duration": 1, "eval_count": 2, "eval_duration": 1}),
                "/done_reason",
            ),
        ]
    }

    #[test]
    fn streams_are_assembled_before_they_are_compared() {
        for (route, body, finish) in streamed_cases() {
            let opts = StreamOptions { include_usage: true, chunk_chars: 2 };
            let stream = render_stream(&route, &body, &opts).unwrap();
            let ct = Some(route.dialect().stream_content_type(&route));
            let streamed = Observed { status: 200, content_type: ct, body: &stream };
            let json = plain(&body);
            let v = default().compare(&route, ok(&json), streamed);
            assert!(v.matched, "{} {:?}: {v:?}", route.operation, route.stream);
            // Without its content-type the stream is recognized too.
            let v = default().compare(&route, streamed, Observed { content_type: None, ..streamed });
            assert!(v.matched, "{} {:?}: {v:?}", route.operation, route.stream);
            // A streamed live answer that stops for another reason.
            let mut other = body.clone();
            *other.pointer_mut(finish).unwrap() = json!("length");
            let other_stream = render_stream(&route, &other, &opts).unwrap();
            let v = default().compare(&route, ok(&json), Observed { body: &other_stream, ..streamed });
            assert_eq!(
                v.diffs.iter().map(|d| (d.path.as_str(), d.kind)).collect::<Vec<_>>(),
                [(finish, DiffKind::FinishReason)],
                "{} {:?}",
                route.operation,
                route.stream
            );
        }
    }

    #[test]
    fn streamed_tool_call_change_is_found() {
        let route = chat_route();
        let mut other = chat();
        other["choices"][0]["message"]["tool_calls"][0]["function"]["name"] = json!("get_time");
        let opts = StreamOptions { include_usage: true, chunk_chars: 3 };
        let (a, b) = (render_stream(&route, &chat(), &opts).unwrap(), render_stream(&route, &other, &opts).unwrap());
        let sse = |body| Observed { status: 200, content_type: Some("text/event-stream"), body };
        let v = default().compare(&route, sse(&a), sse(&b));
        assert_eq!(v.diffs.len(), 1, "{v:?}");
        assert_eq!(v.diffs[0].kind, DiffKind::ToolName);
    }

    #[test]
    fn typed_blocks_compare_with_blocks_of_their_type() {
        let route = Route::of(Operation::Messages);
        let e = json!({"content": [{"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "t", "name": "f", "input": {}}]});
        let l = json!({"content": [{"type": "tool_use", "id": "u", "name": "f", "input": {}}]});
        assert!(run(&default(), &route, &e, &l).matched);
        let l = json!({"content": [{"type": "tool_use", "id": "u", "name": "f", "input": {}, "caller": "x"}]});
        assert_eq!(diffs(&default(), &route, &e, &l), [("/content/1/caller".to_string(), DiffKind::Extra)]);
    }

    #[test]
    fn configured_pointers_never_count() {
        let mut l = chat();
        l["choices"][0]["message"].as_object_mut().unwrap().remove("refusal");
        l["choices"][0]["finish_reason"] = json!("stop");
        l["service_tier"] = json!("default");
        assert_eq!(run(&default(), &chat_route(), &chat(), &l).diffs.len(), 3);
        let p = ParityConfig {
            ignore: vec![
                "/choices/*/message/refusal".into(),
                "/service_tier".into(),
                "/choices/*/finish_reason".into(),
            ],
            ..ParityConfig::default()
        }
        .compile()
        .unwrap();
        assert!(run(&p, &chat_route(), &chat(), &l).matched);
        // A pointer with `~1` escapes a key holding `/`.
        let e = json!({"choices": [], "a/b": 1});
        let p = ParityConfig { ignore: vec!["/a~1b".into()], ..ParityConfig::default() }.compile().unwrap();
        assert!(run(&p, &chat_route(), &e, &json!({"choices": []})).matched);
        assert_eq!(run(&default(), &chat_route(), &e, &json!({"choices": []})).diffs[0].path, "/a~1b");
    }

    #[test]
    fn bad_settings_are_refused_with_the_field() {
        let bad = [
            (ParityConfig { min_similarity: Some(1.5), ..ParityConfig::default() }, "parity.min_similarity"),
            (ParityConfig { min_similarity: Some(f64::NAN), ..ParityConfig::default() }, "parity.min_similarity"),
            (ParityConfig { norm_tolerance: -0.1, ..ParityConfig::default() }, "parity.norm_tolerance"),
            (
                ParityConfig { ignore: vec!["/ok".into(), "usage".into()], ..ParityConfig::default() },
                "parity.ignore[1]",
            ),
            (ParityConfig { ignore: vec!["/a~2".into()], ..ParityConfig::default() }, "parity.ignore[0]"),
        ];
        for (cfg, field) in bad {
            let e = cfg.compile().unwrap_err();
            assert!(e.to_string().starts_with(field), "{e}");
        }
        let cfg: ParityConfig = serde_json::from_str(r#"{"min_similarity": 0.8}"#).unwrap();
        assert_eq!((cfg.norm_tolerance, cfg.exact_text), (DEFAULT_NORM_TOLERANCE, false));
        assert!(serde_json::from_str::<ParityConfig>(r#"{"min_similarty": 0.8}"#).is_err());
    }

    #[test]
    fn every_apis_parity_pointers_parse() {
        for op in Operation::ALL {
            let f = op.dialect().parity_fields(op);
            let mut all: Vec<&str> = f.finish.iter().chain(f.vectors).chain(f.volatile).copied().collect();
            for t in f.tools {
                all.extend([t.calls, t.name, t.arguments]);
            }
            all.extend([f.usage, f.text].into_iter().filter(|p| !p.is_empty()));
            for p in all {
                assert!(parse_pointer(p).is_ok(), "{op}: {p}");
            }
        }
    }

    #[test]
    fn differences_are_bounded() {
        let wide: serde_json::Map<String, Value> = (0..500).map(|i| (format!("k{i}"), json!(i))).collect();
        let v = run(&default(), &chat_route(), &Value::Object(wide), &json!({}));
        assert_eq!(v.diffs.len(), MAX_PARITY_DIFFS);
        assert!(!v.matched);
        let exact = ParityConfig { exact_text: true, ..ParityConfig::default() }.compile().unwrap();
        let mut l = chat();
        l["choices"][0]["message"]["content"] = json!("é".repeat(10_000));
        let v = run(&exact, &chat_route(), &chat(), &l);
        let live = v.diffs[0].live.as_deref().unwrap();
        assert_eq!(live.chars().count(), MAX_PARITY_VALUE_CHARS + 1);
        assert!(live.ends_with('…'));
    }

    /// JSON whose keys are the ones parity looks at, so arbitrary answers reach every check.
    fn answer_strategy() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        const KEYS: &[&str] = &[
            "choices",
            "message",
            "finish_reason",
            "tool_calls",
            "function",
            "name",
            "arguments",
            "usage",
            "type",
            "content",
            "input",
            "data",
            "embedding",
            "embeddings",
            "values",
            "candidates",
            "parts",
            "functionCall",
            "args",
            "stop_reason",
            "stopReason",
            "output",
            "toolUse",
            "id",
            "status",
            "prompt_tokens",
            "0",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..3).prop_map(|n| json!(n)),
            (-2.0f64..2.0).prop_map(|f| json!(f)),
            prop::sample::select(vec!["", "stop", "f", "{\"a\":1}", "{", "AACAPw==", "text"]).prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(5, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 128, failure_persistence: None, ..Default::default() })]

        #[test]
        fn an_answer_matches_itself_and_nothing_panics(
            a in answer_strategy(),
            b in answer_strategy(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            text in proptest::prelude::any::<bool>(),
        ) {
            let p = ParityConfig { exact_text: text, min_similarity: Some(0.5), ..ParityConfig::default() }.compile().unwrap();
            for op in Operation::ALL {
                let route = Route::of(op);
                let v = run(&p, &route, &a, &a);
                proptest::prop_assert!(v.matched, "{op}: {a} against itself: {v:?}");
                let v = run(&p, &route, &a, &b);
                proptest::prop_assert_eq!(v.matched, v.diffs.is_empty());
                proptest::prop_assert!(v.diffs.len() <= MAX_PARITY_DIFFS);
                let v = p.compare(&route, ok(&bytes), ok(&plain(&b)));
                proptest::prop_assert_eq!(v.matched, v.diffs.is_empty());
            }
        }
    }

    #[test]
    fn records_round_trip_and_other_formats_are_refused() {
        let mut l = chat();
        l["choices"][0]["finish_reason"] = json!("length");
        let verdict = run(&default(), &chat_route(), &chat(), &l);
        let route = classify("POST", "/openai/deployments/gpt4o/chat/completions").unwrap();
        let r = ParityRecord::new(
            &route,
            "ab".repeat(32),
            Some("assets/chat.json#0 capital".into()),
            Some("gpt4o".into()),
            "staging",
            1_764_403_200_000,
            verdict,
        );
        assert_eq!(
            (r.format.as_str(), r.provider.as_str(), r.operation.as_str()),
            (PARITY_FORMAT, "azure.ai.openai", "openai.chat_completions")
        );
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""kind":"finish_reason""#), "{text}");
        assert_eq!(ParityRecord::parse(&text).unwrap(), r);
        let other = text.replace(PARITY_FORMAT, "understudy.capture/v1");
        assert!(ParityRecord::parse(&other).unwrap_err().contains("format"));
        let lying = text.replace(r#""matched":false"#, r#""matched":true"#);
        assert!(ParityRecord::parse(&lying).unwrap_err().contains("matched"));
        assert!(ParityRecord::parse("{}").is_err());
        assert_eq!(
            r.verdict.summary(),
            "1 difference: finish_reason at /choices/0/finish_reason (tool_calls -> length)"
        );
        l.as_object_mut().unwrap().remove("usage");
        l["x"] = json!("y".repeat(100));
        l["z"] = json!(1);
        let v = run(&default(), &chat_route(), &chat(), &l);
        let s = v.summary();
        assert!(s.starts_with("4 differences: finish_reason at /choices/0/finish_reason (tool_calls -> length), usage_missing at /usage (present -> absent), extra at /x (absent -> string), and 1 more"), "{s}");
        assert_eq!(run(&default(), &chat_route(), &chat(), &chat()).summary(), "match");
        for k in [DiffKind::StatusClass, DiffKind::EmbeddingNorm, DiffKind::Unparsable] {
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.name()));
        }
    }
}
