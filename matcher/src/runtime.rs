//! The plugin configuration, compiled once into an indexed runtime, and the one `decide()` call.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::asset::{
    from_str_strict, from_str_strict_borrowed, hash_mismatch, validate_asset, Asset, AssetResponse, Bundle,
    BundledAsset, ContentHasher, Latency, RawBundle, Sequence, BUNDLE_FORMAT,
};
use crate::budget::{answer_cost, Budgets, Processing};
use crate::dialect::{classify, Operation, Route};
use crate::error::{ConfigError, RequestError};
use crate::limits::{
    KEEP_CANONICAL, MAX_DELAY_MS, MEMO_BODY, MEMO_BYTES, MISS_DIFF_CAP, MISS_PARSE, MISS_PATH_CHARS, MISS_PREFIX_BYTES,
    MISS_SCAN, MISS_SHORTLIST,
};
use crate::normalize::{difference_count, first_difference, NormalizationConfig, Normalizer};
use crate::render::{
    convert_embeddings, embedding_encoding_of, error_body, error_json, is_dropped_header, EmbeddingEncoding,
};
use crate::stream::{assemble_sse, is_sse, render_sse, wants_stream, StreamOptions, SSE_CONTENT_TYPE};
use crate::synth::{SynthRule, Synthesizer};
use crate::template::{refresh_id, Context, Rng, Template};

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
    /// Rules that synthesize an answer for requests no asset matches (before `on_miss` applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synthesize: Vec<SynthRule>,
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
    /// No asset matched; a `synthesize` rule answered.
    Synthesized,
    /// The body could not be parsed.
    BadRequest,
    /// Reading the request or building its answer would take more memory than a budget allows
    /// (`crate::limits`): answered with a typed error (forwarded under passthrough when it is the request).
    OverBudget,
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
    /// Simulated latency: send the reply after this many milliseconds.
    pub delay_ms: u64,
}

/// The decision for one LLM request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Answer locally.
    Respond(LocalResponse),
    /// Forward to the upstream (passthrough mode); the outcome says why.
    Forward(Outcome),
}

/// One step of a path to a string holding placeholders.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// A compiled response of an asset. Kept lean: a big store is held once per worker VM.
#[derive(Debug, Clone)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body as served when nothing dynamic applies (empty when `splice` holds it).
    body: Vec<u8>,
    /// The JSON body, kept only when placeholders are expanded per hit; other rewrites parse `body` on demand.
    json: Option<Value>,
    /// Strings holding placeholders.
    templates: Vec<(Vec<Step>, Template)>,
    /// The body pre-serialized around its refreshed fields: the common hit needs no JSON work at all.
    splice: Option<Splice>,
    /// A recorded SSE stream, served verbatim to streaming requests.
    sse: Option<String>,
    /// Encoding of an embeddings body.
    embeddings: Option<EmbeddingEncoding>,
    /// An error answer: never streamed or refreshed.
    is_error: bool,
    /// The body is JSON (authored, or assembled from a recorded stream).
    has_json: bool,
    /// Estimated output tokens, for latency.
    output_tokens: u64,
}

impl Response {
    /// The stored body bytes.
    fn source(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.splice {
            Some(s) => std::borrow::Cow::Owned(s.original()),
            None => std::borrow::Cow::Borrowed(&self.body),
        }
    }

    /// The JSON body to rewrite for one hit.
    fn json_for_hit(&self) -> Option<Value> {
        match &self.json {
            Some(v) => Some(v.clone()),
            None => serde_json::from_slice(&self.source()).ok(),
        }
    }

    /// Same answers (for duplicate-vs-conflict detection of two assets with one key).
    fn same_as(&self, other: &Response) -> bool {
        self.status == other.status
            && self.headers == other.headers
            && self.source() == other.source()
            && self.sse == other.sse
            && self.is_error == other.is_error
    }
}

/// A refreshed field inside a pre-serialized body.
#[derive(Debug, Clone, PartialEq)]
enum Hole {
    /// The top-level `id` (its original value): a fresh id of the same shape per hit.
    Id(String),
    /// `created`/`created_at` (its original literal): the current Unix time per hit.
    Created(String),
}

fn hole_of(v: &Value) -> Option<Hole> {
    match v {
        Value::String(id) => Some(Hole::Id(id.clone())),
        Value::Number(n) => Some(Hole::Created(n.to_string())),
        _ => None,
    }
}

/// A JSON body split around its refreshed fields: `(literal, hole)*` then a literal tail.
#[derive(Debug, Clone)]
struct Splice {
    parts: Vec<(Vec<u8>, Hole)>,
    tail: Vec<u8>,
}

const ID_MARK: &str = "\u{1}understudy-refresh:id\u{1}";
const CREATED_MARK: &str = "\u{1}understudy-refresh:created\u{1}";

impl Splice {
    /// Splits `json` (an object) around the fields [`refresh`] rewrites; `None` when there is nothing to refresh
    /// or the markers can't be found unambiguously. `json` is marked in place and restored before returning.
    fn of(json: &mut Value) -> Option<Splice> {
        let m = json.as_object_mut()?;
        let mut holes: Vec<(&str, &'static str, Value)> = Vec::new();
        for (field, mark) in [("id", ID_MARK), ("created", CREATED_MARK), ("created_at", CREATED_MARK)] {
            let wanted = match m.get(field) {
                Some(Value::String(_)) => field == "id",
                Some(Value::Number(_)) => field != "id",
                _ => false,
            };
            if let (true, Some(slot)) = (wanted, m.get_mut(field)) {
                holes.push((field, mark, std::mem::replace(slot, Value::String(mark.into()))));
            }
        }
        if holes.is_empty() {
            return None;
        }
        let text = serde_json::to_string(&*m);
        let mut originals = Vec::with_capacity(holes.len());
        for (field, mark, original) in holes {
            if let Some(slot) = m.get_mut(field) {
                originals.push((mark, hole_of(&original)));
                *slot = original;
            }
        }
        Self::split(&text.ok()?, originals)
    }

    fn split(text: &str, holes: Vec<(&'static str, Option<Hole>)>) -> Option<Splice> {
        // Holes appear in the serializer's (sorted) key order: find each marker's position.
        let mut found: Vec<(usize, usize, Hole)> = Vec::new();
        for mark in [ID_MARK, CREATED_MARK] {
            let quoted = serde_json::to_string(mark).ok()?;
            let mut expected: Vec<Hole> =
                holes.iter().filter(|(m, _)| *m == mark).map(|(_, h)| h.clone()).collect::<Option<_>>()?;
            let positions: Vec<usize> = text.match_indices(quoted.as_str()).map(|(i, _)| i).collect();
            if positions.len() != expected.len() {
                return None;
            }
            // Several `created` holes: their original literals in key order ("created" < "created_at").
            expected.reverse();
            for at in positions {
                found.push((at, quoted.len(), expected.pop()?));
            }
        }
        found.sort_by_key(|(at, _, _)| *at);
        let bytes = text.as_bytes();
        let mut parts = Vec::with_capacity(found.len());
        let mut from = 0;
        for (at, len, hole) in found {
            parts.push((bytes.get(from..at)?.to_vec(), hole));
            from = at + len;
        }
        Some(Splice { parts, tail: bytes.get(from..)?.to_vec() })
    }

    /// The body with fresh values, as [`refresh`] would write it.
    fn render(&self, now_nanos: u64, ids: &mut Rng) -> Vec<u8> {
        let now = (now_nanos / 1_000_000_000).to_string();
        self.write(|hole, out| match hole {
            Hole::Id(old) => {
                let _ = serde_json::to_writer(out, &refresh_id(old, ids));
            }
            Hole::Created(_) => out.extend_from_slice(now.as_bytes()),
        })
    }

    /// The body as stored.
    fn original(&self) -> Vec<u8> {
        self.write(|hole, out| match hole {
            Hole::Id(old) => {
                let _ = serde_json::to_writer(out, old);
            }
            Hole::Created(n) => out.extend_from_slice(n.as_bytes()),
        })
    }

    /// The literals, with `fill` writing each hole.
    fn write(&self, mut fill: impl FnMut(&Hole, &mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.tail.len() + self.parts.iter().map(|(l, _)| l.len() + 40).sum::<usize>());
        for (lit, hole) in &self.parts {
            out.extend_from_slice(lit);
            fill(hole, &mut out);
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

// KEEP_CANONICAL (crate::limits): requests up to that size are matched by their canonical text (a plain
// hash-map lookup, no SHA-256: SHA-256 is ~8x slower in a wasm VM than natively); bigger ones by key.

/// A compiled asset ready to be served.
#[derive(Debug)]
struct Compiled {
    label: String,
    key: String,
    operation: Operation,
    /// Canonical JSON of the normalized request (the hit index's key, and parsed for miss diagnostics);
    /// empty if huge.
    normalized: Rc<str>,
    responses: Answers,
    sequence: Sequence,
    seed: u64,
    refresh: bool,
    latency: Option<Latency>,
    /// Calls served so far by this VM (sequence position).
    calls: Cell<u64>,
}

/// An asset's answers: compiled at load, or — for a sealed bundle, which `understudy bundle` validated before
/// sealing and whose content hash the load verifies — kept as their JSON text and compiled on first use.
/// Compiling every response up front was most of a 100k-asset load, paid by every worker VM.
#[derive(Debug)]
enum Answers {
    Ready(Vec<Response>),
    Deferred {
        /// The JSON of `response` (one) or `responses` (a list).
        raw: Box<str>,
        many: bool,
        compiled: std::cell::OnceCell<Result<Vec<Response>, String>>,
    },
}

impl Compiled {
    /// Same answers as `other` (an identical duplicate, not a conflict).
    fn same_as(&self, other: &Compiled) -> bool {
        let answers = match (&self.responses, &other.responses) {
            (Answers::Ready(a), Answers::Ready(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_as(y)),
            (Answers::Deferred { raw: a, many: m, .. }, Answers::Deferred { raw: b, many: n, .. }) => a == b && m == n,
            _ => false,
        };
        answers
            && self.sequence == other.sequence
            && self.seed == other.seed
            && self.refresh == other.refresh
            && self.latency == other.latency
    }

    /// The compiled answers, compiling deferred ones on first use; an error says which response is bad.
    fn answers(&self) -> Result<&[Response], &str> {
        match &self.responses {
            Answers::Ready(v) => Ok(v),
            Answers::Deferred { raw, many, compiled } => compiled
                .get_or_init(|| compile_raw(self.operation, raw, *many, self.refresh))
                .as_deref()
                .map_err(String::as_str),
        }
    }
}

/// Parses, validates and compiles deferred answers (see [`Answers::Deferred`]).
fn compile_raw(op: Operation, raw: &str, many: bool, refresh: bool) -> Result<Vec<Response>, String> {
    let all: Vec<AssetResponse> = if many {
        serde_json::from_str(raw).map_err(|e| format!("responses: {e}"))?
    } else {
        vec![serde_json::from_str(raw).map_err(|e| format!("response: {e}"))?]
    };
    if all.is_empty() {
        return Err("responses: the list is empty".into());
    }
    let mut out = Vec::with_capacity(all.len());
    for (i, r) in all.into_iter().enumerate() {
        let at = if many { format!("responses[{i}]") } else { "response".to_string() };
        crate::asset::validate_response(&r, &at)?;
        out.push(compile_response(op, r, refresh).map_err(|e| format!("{at}{e}"))?);
    }
    Ok(out)
}

/// What an asset is besides its answers.
struct Head<'a> {
    label: &'a str,
    name: Option<String>,
    key: String,
    canonical: Rc<str>,
    sequence: Sequence,
    seed: Option<u64>,
    refresh: bool,
    latency: Option<Latency>,
}

/// Classifies and keys an asset's request (checking a stored key); returns the route, key and the canonical
/// text kept for matching.
fn keyed(
    normalizer: &Normalizer,
    label: &str,
    request: crate::asset::AssetRequest,
    stored_key: Option<&str>,
) -> Result<(Route, String, Rc<str>), ConfigError> {
    let bad = |reason: String| ConfigError::Asset { asset: label.to_string(), reason };
    let route = classify(&request.method, &request.path).ok_or_else(|| {
        bad(format!("request: {} {} is not an LLM operation Understudy virtualizes", request.method, request.path))
    })?;
    let mut normalized = request.body;
    normalizer.normalize(&route, &mut normalized).map_err(|e| bad(format!("request.body: {e}")))?;
    // Too big to be worth its memory in every VM: matched by key only.
    let (key, canonical) = Normalizer::key_and_canonical(route.operation, &normalized, KEEP_CANONICAL);
    let canonical = canonical.unwrap_or_default();
    drop(normalized);
    if let Some(stored) = stored_key {
        if stored != key {
            return Err(ConfigError::KeyMismatch {
                asset: label.to_string(),
                stored: stored.to_string(),
                computed: key,
            });
        }
    }
    Ok((route, key, canonical.into()))
}

/// A sealed bundle's asset, parsed only as far as matching needs; its answers stay JSON text until used.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LazyAsset<'a> {
    key: String,
    #[allow(dead_code)]
    source: String,
    #[serde(default)]
    name: Option<String>,
    request: crate::asset::AssetRequest,
    #[serde(default, borrow)]
    response: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    responses: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    sequence: Sequence,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default = "crate::asset::yes")]
    refresh: bool,
    #[serde(default)]
    latency: Option<Latency>,
}

/// A set of assets indexed by key, with duplicate/conflict detection. Shared by the bundler and the filter.
#[derive(Debug, Default)]
pub struct AssetSet {
    assets: Vec<Compiled>,
    index: HashMap<String, usize>,
    /// Per operation: canonical text of the normalized request → asset (assets up to `KEEP_CANONICAL`).
    by_text: HashMap<Operation, HashMap<Rc<str>, usize>>,
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
        self.add_owned(normalizer, label, asset.clone(), stored_key)
    }

    /// [`AssetSet::add`] taking the asset by value (no copy of its bodies: what a big bundle load needs).
    pub fn add_owned(
        &mut self,
        normalizer: &Normalizer,
        label: &str,
        asset: Asset,
        stored_key: Option<&str>,
    ) -> Result<String, ConfigError> {
        validate_asset(&asset, label)?;
        let bad = |reason: String| ConfigError::Asset { asset: label.to_string(), reason };
        let Asset { name, request, response, responses, sequence, seed, refresh, latency } = asset;
        let (route, key, canonical) = keyed(normalizer, label, request, stored_key)?;
        let many = responses.is_some();
        let all: Vec<AssetResponse> = match (response, responses) {
            (Some(r), _) => vec![r],
            (None, Some(rs)) => rs,
            (None, None) => Vec::new(),
        };
        let mut compiled = Vec::with_capacity(all.len());
        for (i, r) in all.into_iter().enumerate() {
            let at = if many { format!("responses[{i}]") } else { "response".to_string() };
            compiled.push(compile_response(route.operation, r, refresh).map_err(|e| bad(format!("{at}{e}")))?);
        }
        let head = Head { label, name, key, canonical, sequence, seed, refresh, latency };
        self.insert(route, head, Answers::Ready(compiled))
    }

    /// Adds a sealed bundle's asset with its answers deferred (see [`Answers::Deferred`]).
    fn add_deferred(&mut self, normalizer: &Normalizer, label: &str, a: LazyAsset<'_>) -> Result<String, ConfigError> {
        let bad = |reason: String| ConfigError::Asset { asset: label.to_string(), reason };
        if !a.request.body.is_object() {
            return Err(bad("request.body: must be a JSON object".into()));
        }
        let (raw, many) = match (a.response, a.responses) {
            (Some(r), None) => (r, false),
            (None, Some(rs)) => (rs, true),
            (Some(_), Some(_)) => return Err(bad("has both `response` and `responses`; keep one".into())),
            (None, None) => return Err(bad("needs `response` (or `responses`, a list)".into())),
        };
        let (route, key, canonical) = keyed(normalizer, label, a.request, Some(&a.key))?;
        let head = Head {
            label,
            name: a.name,
            key,
            canonical,
            sequence: a.sequence,
            seed: a.seed,
            refresh: a.refresh,
            latency: a.latency,
        };
        let answers = Answers::Deferred { raw: raw.get().into(), many, compiled: std::cell::OnceCell::new() };
        self.insert(route, head, answers)
    }

    fn insert(&mut self, route: Route, h: Head<'_>, responses: Answers) -> Result<String, ConfigError> {
        let key = h.key;
        let display = match &h.name {
            Some(n) => format!("{n:?} ({})", h.label),
            None => h.label.to_string(),
        };
        let seed = h.seed.unwrap_or_else(|| u64::from_str_radix(key.get(..16).unwrap_or("0"), 16).unwrap_or(0));
        let candidate = Compiled {
            label: display,
            key: key.clone(),
            operation: route.operation,
            normalized: h.canonical,
            responses,
            sequence: h.sequence,
            seed,
            refresh: h.refresh,
            latency: h.latency,
            calls: Cell::new(0),
        };
        if let Some(&i) = self.index.get(&key) {
            let Some(prev) = self.assets.get(i) else { return Ok(key) };
            if prev.same_as(&candidate) {
                self.duplicates.push((prev.label.clone(), candidate.label));
                return Ok(key);
            }
            return Err(ConfigError::Conflict { key, first: prev.label.clone(), second: candidate.label });
        }
        let idx = self.assets.len();
        self.assets.push(candidate);
        self.index.insert(key.clone(), idx);
        if let Some(text) = self.assets.get(idx).map(|a| a.normalized.clone()).filter(|t| !t.is_empty()) {
            self.by_text.entry(route.operation).or_default().insert(text, idx);
        }
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

/// Compiles one response. Errors are suffixes for the `response`/`responses[i]` label (".body_text: ...").
fn compile_response(op: Operation, r: AssetResponse, refresh: bool) -> Result<Response, String> {
    let status = r.status();
    let mut headers: Vec<(String, String)> = match &r.headers {
        Some(h) => {
            h.iter().filter(|(k, _)| !is_dropped_header(k)).map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect()
        }
        None => vec![("content-type".to_string(), "application/json".to_string())],
    };
    if let Some(e) = &r.error {
        let body = error_json(op.dialect(), &e.kind, &e.message, e.code.as_deref());
        if !headers.iter().any(|(k, _)| k == "content-type") {
            headers.push(("content-type".into(), "application/json".into()));
        }
        return Ok(Response {
            status,
            headers,
            body: serde_json::to_vec(&body).map_err(|e| format!(".error: {e}"))?,
            json: None,
            templates: Vec::new(),
            splice: None,
            sse: None,
            embeddings: None,
            is_error: true,
            has_json: false,
            output_tokens: 0,
        });
    }
    // A recorded stream answers streaming requests verbatim and others with the assembled body.
    let (json, sse, text) = match (r.body, r.body_text) {
        (Some(v), _) => (Some(v), None, None),
        (None, Some(t)) if status < 400 && op != Operation::Embeddings && is_sse(&t) => {
            let assembled =
                assemble_sse(op, &t).map_err(|e| format!(".body_text: looks like an SSE stream but {e}"))?;
            (Some(assembled), Some(t), None)
        }
        (None, t) => (None, None, t),
    };
    if sse.is_some() {
        headers.retain(|(k, _)| k != "content-type");
        headers.push(("content-type".into(), "application/json".into()));
    }
    // Placeholders live in authored `body`s only; a recorded stream is a literal recording, served the same
    // streamed or assembled.
    let mut templates = Vec::new();
    if let (Some(v), None) = (&json, &sse) {
        collect_templates(v, &mut Vec::new(), &mut templates).map_err(|e| format!(".body{e}"))?;
    }
    let embeddings = match (op, &json) {
        (Operation::Embeddings, Some(v)) => embedding_encoding_of(v),
        _ => None,
    };
    let is_error = status >= 400;
    let output_tokens = json.as_ref().map(output_tokens).unwrap_or(0);
    let mut json = json;
    let splice = match json.as_mut() {
        Some(v) if refresh && !is_error && templates.is_empty() => Splice::of(v),
        _ => None,
    };
    let body = match (&splice, &json, text) {
        (Some(_), _, _) => Vec::new(),
        (None, Some(v), _) => serde_json::to_vec(v).map_err(|e| format!(".body: {e}"))?,
        (None, None, Some(t)) => t.into_bytes(),
        (None, None, None) => Vec::new(),
    };
    let has_json = json.is_some();
    Ok(Response {
        status,
        headers,
        body,
        json: if templates.is_empty() { None } else { json },
        templates,
        splice,
        sse,
        embeddings,
        is_error,
        has_json,
        output_tokens,
    })
}

fn collect_templates(v: &Value, path: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, Template)>) -> Result<(), String> {
    match v {
        Value::String(s) => {
            if let Some(t) = Template::compile(s).map_err(|e| format!("{}: {e}", pointer(path)))? {
                out.push((path.clone(), t));
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(Step::Index(i));
                collect_templates(x, path, out)?;
                path.pop();
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                path.push(Step::Key(k.clone()));
                collect_templates(x, path, out)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

fn pointer(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => format!("/{}", k.replace('~', "~0").replace('/', "~1")),
            Step::Index(i) => format!("/{i}"),
        })
        .collect()
}

fn at_path<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |cur, step| match step {
        Step::Key(k) => cur.get_mut(k.as_str()),
        Step::Index(i) => cur.get_mut(*i),
    })
}

/// Output tokens of a response body: its `usage` when recorded, else ~4 characters a token of its text.
fn output_tokens(v: &Value) -> u64 {
    let usage = v.get("usage");
    for field in ["completion_tokens", "output_tokens"] {
        if let Some(n) = usage.and_then(|u| u.get(field)).and_then(Value::as_u64) {
            return n;
        }
    }
    fn text_len(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.iter().map(text_len).sum(),
            Value::Object(m) => m
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "choices"
                            | "message"
                            | "content"
                            | "text"
                            | "output"
                            | "arguments"
                            | "tool_calls"
                            | "function"
                            | "input"
                    )
                })
                .map(|(_, x)| text_len(x))
                .sum(),
            _ => 0,
        }
    }
    (text_len(v) as u64).div_ceil(4)
}

/// The plugin configuration with the bundle's assets left as raw JSON slices (see [`Runtime::load`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPluginConfig<'a> {
    #[serde(default)]
    on_miss: OnMiss,
    #[serde(default)]
    normalization: NormalizationConfig,
    #[serde(borrow)]
    bundle: RawBundle<'a>,
    #[serde(default)]
    synthesize: Vec<SynthRule>,
}

/// A parse error inside `bundle.assets[i]`, its field path made relative to the whole configuration.
fn in_asset(i: usize, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Parse { source_name, field, reason } => {
            let field = if field == "." { String::new() } else { format!(".{field}") };
            ConfigError::Parse { source_name, field: format!("bundle.assets[{i}]{field}"), reason }
        }
        other => other,
    }
}

fn check_format(format: &str) -> Result<(), ConfigError> {
    if format == BUNDLE_FORMAT {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "bundle.format",
        format!("{format:?} is not supported by this filter (expected {BUNDLE_FORMAT:?})"),
    ))
}

/// What the answer needs to know of a request besides its match.
#[derive(Debug, Clone, Copy)]
struct Facts {
    stream: bool,
    encoding: EmbeddingEncoding,
    options: StreamOptions,
}

impl Facts {
    fn of(request: &Value) -> Self {
        Facts {
            stream: wants_stream(request),
            encoding: EmbeddingEncoding::requested(request),
            options: StreamOptions::from_request(request),
        }
    }
}

/// What an exact request body came to the last time.
#[derive(Debug, Clone, Copy)]
enum Remembered {
    /// This asset (by index), with these request facts.
    Hit(usize, Facts),
    /// A passthrough miss.
    Forward,
}

/// Per-VM memo of exact request bodies already decided: load tests replay the same few bodies, and a repeat
/// is then answered without parsing, normalizing or hashing it (the bytes are compared in full, so only an
/// identical body on the same operation and deployment is a repeat; the answer is still rendered fresh).
#[derive(Debug, Default)]
struct Memo {
    entries: std::cell::RefCell<HashMap<Box<[u8]>, Vec<MemoEntry>>>,
    bytes: Cell<usize>,
    /// True when off (`set_memo(false)`), so the derived default is on.
    disabled: bool,
}

/// What one body came to on one operation and deployment.
type MemoEntry = (Operation, Option<String>, Remembered);

// MEMO_BODY and MEMO_BYTES (crate::limits): the largest body remembered, and the memo's total size per VM;
// when full it starts over.

impl Memo {
    fn get(&self, route: &Route, body: &[u8]) -> Option<Remembered> {
        if self.disabled || body.len() > MEMO_BODY {
            return None;
        }
        let entries = self.entries.borrow();
        let seen = entries.get(body)?;
        seen.iter().find(|(op, dep, _)| *op == route.operation && *dep == route.deployment).map(|(_, _, r)| *r)
    }

    fn put(&self, route: &Route, body: &[u8], what: Remembered) {
        if self.disabled || body.len() > MEMO_BODY {
            return;
        }
        let mut entries = self.entries.borrow_mut();
        if self.bytes.get() + body.len() > MEMO_BYTES {
            entries.clear();
            self.bytes.set(0);
        }
        let seen = entries.entry(body.into()).or_default();
        if seen.iter().any(|(op, dep, _)| *op == route.operation && *dep == route.deployment) {
            return;
        }
        if seen.is_empty() {
            self.bytes.set(self.bytes.get() + body.len());
        }
        seen.push((route.operation, route.deployment.clone(), what));
    }
}

/// A request's key, computed only when something shows it.
enum Lazy {
    Known(String),
    Text(Operation, String),
}

impl Lazy {
    fn get(&mut self) -> String {
        if let Lazy::Text(op, text) = self {
            *self = Lazy::Known(Normalizer::key_of_canonical(*op, text));
        }
        match self {
            Lazy::Known(k) => k.clone(),
            Lazy::Text(..) => String::new(),
        }
    }
}

/// The compiled, validated runtime the filter holds for its lifetime.
#[derive(Debug)]
pub struct Runtime {
    on_miss: OnMiss,
    normalizer: Normalizer,
    assets: AssetSet,
    synth: Synthesizer,
    /// Distinguishes this VM's fresh ids from other workers'.
    salt: u64,
    /// Fresh-id generators handed out so far (see `fresh_ids`).
    served: Cell<u64>,
    /// Exact request bodies seen before and what they came to.
    memo: Memo,
    /// Memory budgets of one request and one answer (crate::budget).
    budgets: Budgets,
}

impl Runtime {
    /// Parses and compiles a plugin configuration. Any problem fails the whole load, naming the field/asset.
    /// A bundle without a content hash is accepted here (tools and tests build them); the filter uses
    /// [`Runtime::from_json_sealed`].
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::load(text, false)
    }

    /// As [`Runtime::from_json`], but the bundle must carry its content hash (`bundle.sha256`), so deleting
    /// the hash can't switch the integrity check off. What the filter loads.
    pub fn from_json_sealed(text: &str) -> Result<Self, ConfigError> {
        Self::load(text, true)
    }

    /// Streams the bundle: each asset is parsed from its slice of `text`, hashed, compiled and dropped, so the
    /// peak is the text plus the compiled store (a 100k-asset bundle would not fit a wasm VM twice).
    fn load(text: &str, sealed: bool) -> Result<Self, ConfigError> {
        const SOURCE: &str = "plugin configuration";
        let raw: RawPluginConfig<'_> = from_str_strict_borrowed(text, SOURCE)?;
        if sealed && raw.bundle.sha256.is_none() {
            return Err(ConfigError::invalid(
                "bundle.sha256",
                "missing: the filter loads only sealed bundles; build the bundle with `understudy bundle` \
                 (or `understudy plugin-config`)",
            ));
        }
        check_format(&raw.bundle.format)?;
        let normalizer = Normalizer::compile(&raw.normalization)?;
        let synth = Synthesizer::compile(&raw.synthesize)?;
        if let Some(stored) = raw.bundle.sha256.as_deref() {
            let assets = Self::load_sealed(&raw.bundle.assets, stored, &normalizer)?;
            return Ok(Self::assemble(raw.on_miss, normalizer, assets, synth));
        }
        // Unsealed (tools, tests): every asset compiled now, so any problem fails the load.
        let mut assets = AssetSet::default();
        assets.assets.reserve(raw.bundle.assets.len());
        for (i, slice) in raw.bundle.assets.iter().enumerate() {
            let named = |e: ConfigError| in_asset(i, e);
            let b: BundledAsset = from_str_strict(slice.get(), SOURCE).map_err(named)?;
            let label = format!("bundle.assets[{i}] from {}", b.source);
            let key = b.key.clone();
            assets.add_owned(&normalizer, &label, b.into_asset(), Some(&key))?;
        }
        Ok(Self::assemble(raw.on_miss, normalizer, assets, synth))
    }

    /// A sealed bundle's assets, answers deferred. The content hash is first taken over the assets' text as
    /// it is — `understudy plugin-config` writes canonical JSON, so that is the hash — and only if that differs
    /// (a bundle re-formatted, e.g. pretty-printed) over their canonical form; a real mismatch is reported
    /// before any other problem, since an edited bundle explains it.
    fn load_sealed(
        slices: &[&serde_json::value::RawValue],
        stored: &str,
        normalizer: &Normalizer,
    ) -> Result<AssetSet, ConfigError> {
        const SOURCE: &str = "plugin configuration";
        let mut raw_hash = crate::canonical::HashSink::default();
        let mut assets = AssetSet::default();
        assets.assets.reserve(slices.len());
        let mut failure = None;
        for (i, slice) in slices.iter().enumerate() {
            use crate::canonical::Sink;
            raw_hash.put(if i == 0 { "[" } else { "," });
            raw_hash.put(slice.get());
            if failure.is_some() {
                continue;
            }
            let named = |e: ConfigError| in_asset(i, e);
            let added = match serde_json::from_str::<LazyAsset<'_>>(slice.get()) {
                Ok(a) => {
                    let label = format!("bundle.assets[{i}] from {}", a.source);
                    assets.add_deferred(normalizer, &label, a)
                }
                // Parse again, strictly and fully, for an error that names the field.
                Err(e) => Err(named(
                    from_str_strict::<BundledAsset>(slice.get(), SOURCE)
                        .err()
                        .unwrap_or_else(|| ConfigError::invalid(format!("bundle.assets[{i}]"), e.to_string())),
                )),
            };
            if let Err(e) = added {
                failure = Some(e);
            }
        }
        {
            use crate::canonical::Sink;
            raw_hash.put(if slices.is_empty() { "[]" } else { "]" });
        }
        let raw_hex = crate::normalize::hex(&raw_hash.finish());
        if raw_hex != stored {
            let mut canonical = ContentHasher::default();
            for (i, slice) in slices.iter().enumerate() {
                let tree: Value = serde_json::from_str(slice.get()).map_err(|e| ConfigError::Parse {
                    source_name: SOURCE.into(),
                    field: format!("bundle.assets[{i}]"),
                    reason: e.to_string(),
                })?;
                canonical.add_value(&tree);
            }
            let computed = canonical.finish();
            if computed != stored {
                return Err(hash_mismatch(stored, &computed));
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(assets),
        }
    }

    /// Compiles a parsed configuration.
    pub fn compile(cfg: PluginConfig) -> Result<Self, ConfigError> {
        check_format(&cfg.bundle.format)?;
        cfg.bundle.verify()?;
        let normalizer = Normalizer::compile(&cfg.normalization)?;
        let synth = Synthesizer::compile(&cfg.synthesize)?;
        let mut assets = AssetSet::default();
        for (i, b) in cfg.bundle.assets.into_iter().enumerate() {
            let label = format!("bundle.assets[{i}] from {}", b.source);
            let key = b.key.clone();
            assets.add_owned(&normalizer, &label, b.into_asset(), Some(&key))?;
        }
        Ok(Self::assemble(cfg.on_miss, normalizer, assets, synth))
    }

    fn assemble(on_miss: OnMiss, normalizer: Normalizer, assets: AssetSet, synth: Synthesizer) -> Self {
        // std seeds RandomState from the OS (WASI random_get under Envoy): a per-VM salt.
        let salt = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        let budgets = Budgets::default();
        Runtime { on_miss, normalizer, assets, synth, salt, served: Cell::new(0), memo: Memo::default(), budgets }
    }

    /// Replaces the memory budgets (`crate::limits::REQUEST_BUDGET`, `ANSWER_BUDGET`); tests lower them to
    /// exercise the checks with small bodies.
    #[doc(hidden)]
    pub fn set_budgets(&mut self, budgets: Budgets) {
        self.budgets = budgets;
        self.synth.set_answer_budget(budgets.answer);
    }

    /// How this runtime processes a request, as far as its memory cost goes.
    fn processing(&self) -> Processing {
        Processing { plain: self.normalizer.is_plain(), synthesizes: !self.synth.is_empty() }
    }

    /// Turns the memo of exact repeated bodies on (the default) or off; benchmarks use it to measure the
    /// full path. Off also forgets what was remembered.
    pub fn set_memo(&mut self, on: bool) {
        self.memo.disabled = !on;
        self.memo.entries.borrow_mut().clear();
        self.memo.bytes.set(0);
    }

    /// The miss policy.
    pub fn on_miss(&self) -> OnMiss {
        self.on_miss
    }

    /// Number of assets loaded.
    pub fn asset_count(&self) -> usize {
        self.assets.len()
    }

    /// [`Runtime::decide_at`] with the system clock.
    pub fn decide(&self, route: &Route, body: &[u8]) -> Decision {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        self.decide_at(route, body, u64::try_from(now).unwrap_or(u64::MAX))
    }

    /// Decides what to do with a complete LLM request body for `route`, at Unix time `now_nanos`.
    /// Never panics on any input.
    pub fn decide_at(&self, route: &Route, body: &[u8], now_nanos: u64) -> Decision {
        let dialect = route.operation.dialect();
        match self.memo.get(route, body) {
            Some(Remembered::Hit(i, facts)) => {
                if let Some(asset) = self.assets.assets.get(i) {
                    return Decision::Respond(self.serve(asset, route, &facts, None, asset.key.clone(), now_nanos));
                }
            }
            Some(Remembered::Forward) => return Decision::Forward(Outcome::Miss),
            None => {}
        }
        // Priced before it is parsed: a body whose tree would not fit the request budget is a 413 (budget.rs).
        let request = match crate::parse_body_within(body, self.processing(), self.budgets.request) {
            Ok(v) => v,
            Err(e) => return self.bad_request(route, &e),
        };
        // Small requests are looked up by canonical text (no SHA-256 on the hot path: a hit reports its asset's
        // key, a passthrough miss needs none); big ones are hashed as they are written, never held as text.
        // Every asset is in the key index too, so skipping the text walk for a big body is always correct.
        let text = if body.len() <= 2 * KEEP_CANONICAL {
            self.normalizer.canonical_of_request(route, &request, KEEP_CANONICAL)
        } else {
            Ok(None)
        };
        let (found, mut key) = match text {
            Ok(Some(text)) => {
                let found = self.assets.by_text.get(&route.operation).and_then(|m| m.get(text.as_str())).copied();
                match found.and_then(|i| self.assets.assets.get(i).map(|a| (i, a))) {
                    Some((i, a)) => (Some((i, a)), Lazy::Known(a.key.clone())),
                    None => (None, Lazy::Text(route.operation, text)),
                }
            }
            Ok(None) => match self.normalizer.key_of_request(route, &request) {
                Ok(k) => {
                    let found = self.assets.index.get(&k).and_then(|&i| self.assets.assets.get(i).map(|a| (i, a)));
                    (found, Lazy::Known(k))
                }
                Err(e) => return self.bad_request(route, &e),
            },
            Err(e) => return self.bad_request(route, &e),
        };
        let Some(found) = found else {
            if !self.synth.is_empty() {
                if let Some(r) = self.synthesized(route, &request, key.get(), now_nanos) {
                    return Decision::Respond(r);
                }
            }
            if self.on_miss == OnMiss::Passthrough {
                if self.synth.is_empty() {
                    self.memo.put(route, body, Remembered::Forward);
                }
                return Decision::Forward(Outcome::Miss);
            }
            let key = key.get();
            // Only a strict miss needs the normalized tree (for the closest-asset hint); the request is not
            // needed after this, so it is normalized in place rather than copied.
            let mut normalized = request;
            if let Err(e) = self.normalizer.normalize(route, &mut normalized) {
                return self.bad_request(route, &e);
            }
            let message = self.miss_message(route.operation, &key, &normalized);
            let mut headers = local_headers("miss", &key);
            headers.push(("x-understudy-operation".into(), route.operation.name().into()));
            return Decision::Respond(LocalResponse {
                outcome: Outcome::Miss,
                status: 404,
                headers,
                body: error_body(dialect, 404, &message, "understudy_no_matching_asset"),
                delay_ms: 0,
            });
        };
        let (i, asset) = found;
        let facts = Facts::of(&request);
        let response = self.serve(asset, route, &facts, Some(&request), key.get(), now_nanos);
        // Placeholders may read the request itself: only answers without them are replayed from the memo.
        if asset.answers().is_ok_and(|a| a.iter().all(|r| r.templates.is_empty())) {
            self.memo.put(route, body, Remembered::Hit(i, facts));
        }
        Decision::Respond(response)
    }

    fn serve(
        &self,
        asset: &Compiled,
        route: &Route,
        facts: &Facts,
        request: Option<&Value>,
        key: String,
        now_nanos: u64,
    ) -> LocalResponse {
        let call = asset.calls.get();
        asset.calls.set(call.saturating_add(1));
        let answers = match asset.answers() {
            Ok(a) => a,
            Err(e) => return self.asset_error(asset, route, &key, format!("can't be served: {e}")),
        };
        let n = answers.len() as u64;
        let pick = match asset.sequence {
            Sequence::RepeatLast => call.min(n.saturating_sub(1)),
            Sequence::Cycle => call.checked_rem(n).unwrap_or(0),
            Sequence::Random => Rng::new(asset.seed ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15)).below(n),
        };
        let Some(resp) = answers.get(pick as usize) else {
            return self.asset_error(asset, route, &key, "has no response".into());
        };
        let mut headers = resp.headers.clone();
        let stream = facts.stream && !resp.is_error && asset.operation != Operation::Embeddings;
        let converting = resp.embeddings.is_some_and(|have| have != facts.encoding);
        let needs_work = stream || asset.refresh || !resp.templates.is_empty() || converting;
        let body = match (&resp.splice, &resp.sse) {
            (_, Some(sse)) if stream => {
                set_content_type(&mut headers, SSE_CONTENT_TYPE);
                sse.clone().into_bytes()
            }
            // The common hit: only the id and timestamps change, written into the pre-serialized body.
            (Some(splice), _) if !stream && !converting => splice.render(now_nanos, &mut self.fresh_ids(now_nanos)),
            _ if resp.has_json && !resp.is_error && needs_work => {
                let Some(mut v) = resp.json_for_hit() else {
                    return self.asset_error(asset, route, &key, "has a body that no longer parses".into());
                };
                let mut ids = self.fresh_ids(now_nanos);
                let mut choices = Rng::new(asset.seed ^ call.wrapping_mul(0xA076_1D64_78BD_642F));
                if asset.refresh {
                    refresh(&mut v, now_nanos, &mut ids);
                }
                if !resp.templates.is_empty() {
                    // A memoized repeat never reaches here: answers with placeholders are not memoized.
                    let Some(request) = request else {
                        return self.asset_error(asset, route, &key, "needs the parsed request".into());
                    };
                    let mut ctx = Context {
                        operation: asset.operation,
                        request,
                        deployment: route.deployment.as_deref(),
                        now_nanos,
                        ids: &mut ids,
                        choices: &mut choices,
                    };
                    for (path, t) in &resp.templates {
                        let val = t.expand(&mut ctx);
                        if let Some(slot) = at_path(&mut v, path) {
                            *slot = val;
                        }
                    }
                }
                if let Some(have) = resp.embeddings {
                    let want = facts.encoding;
                    if want != have {
                        convert_embeddings(&mut v, want);
                    }
                }
                // Priced before it is rendered: an asset's answer over the answer budget is a 500 naming the limit.
                let cost = answer_cost(&v, stream.then_some(&facts.options));
                if cost > self.budgets.answer {
                    let label = Some(asset.label.as_str());
                    return crate::budget::answer_over_budget(route, &key, label, Some(cost), self.budgets.answer);
                }
                if stream {
                    match render_sse(asset.operation, &v, &facts.options) {
                        Ok(text) => {
                            set_content_type(&mut headers, SSE_CONTENT_TYPE);
                            text.into_bytes()
                        }
                        Err(e) => return self.asset_error(asset, route, &key, format!("can't be streamed: {e}")),
                    }
                } else {
                    crate::budget::to_vec_exact(&v)
                }
            }
            _ => resp.source().into_owned(),
        };
        if stream {
            headers.push(("cache-control".into(), "no-cache".into()));
        }
        headers.push(("x-understudy".into(), "hit".into()));
        headers.push(("x-understudy-key".into(), key));
        if n > 1 {
            headers.push(("x-understudy-response".into(), format!("{}/{n}", pick + 1)));
        }
        let delay_ms = delay(asset.latency, resp.output_tokens);
        LocalResponse { outcome: Outcome::Hit, status: resp.status, headers, body, delay_ms }
    }

    /// A generator for fresh ids: seeded from the clock, this VM's salt and a per-VM serial, so ids differ
    /// across hits, workers and restarts.
    fn fresh_ids(&self, now_nanos: u64) -> Rng {
        let serial = self.served.get();
        self.served.set(serial.wrapping_add(1));
        Rng::new(now_nanos ^ self.salt ^ serial.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// A `synthesize` rule's answer for a request no asset matches, if a rule applies.
    fn synthesized(&self, route: &Route, request: &Value, key: String, now_nanos: u64) -> Option<LocalResponse> {
        if self.synth.is_empty() {
            return None;
        }
        let mut ids = self.fresh_ids(now_nanos);
        let Some(body) = self.synth.synthesize(route, request, now_nanos / 1_000_000_000, &mut ids) else {
            // A rule matched but its answer is over a synthesis limit: a typed 413 naming it, not a miss.
            let matched = self.synth.matches(route, request);
            return matched.then(|| crate::budget::answer_over_budget(route, &key, None, None, self.budgets.answer));
        };
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        let stream = wants_stream(request) && route.operation != Operation::Embeddings;
        // Priced before it is rendered (n choices, streamed pieces, dimensions): over the answer budget, a 413.
        let cost = answer_cost(&body, stream.then(|| StreamOptions::from_request(request)).as_ref());
        if cost > self.budgets.answer {
            return Some(crate::budget::answer_over_budget(route, &key, None, Some(cost), self.budgets.answer));
        }
        let bytes = if stream {
            set_content_type(&mut headers, SSE_CONTENT_TYPE);
            headers.push(("cache-control".into(), "no-cache".into()));
            render_sse(route.operation, &body, &StreamOptions::from_request(request)).ok()?.into_bytes()
        } else {
            crate::budget::to_vec_exact(&body)
        };
        headers.push(("x-understudy".into(), "synthesized".into()));
        headers.push(("x-understudy-key".into(), key));
        let delay_ms = delay(self.synth.latency(route, request), output_tokens(&body));
        Some(LocalResponse { outcome: Outcome::Synthesized, status: 200, headers, body: bytes, delay_ms })
    }

    /// An asset that matched but can't produce this answer: a 500 that says why, never a panic.
    fn asset_error(&self, asset: &Compiled, route: &Route, key: &str, why: String) -> LocalResponse {
        let message = format!("Understudy matched asset {} but it {why}", asset.label);
        let kind = "api_error";
        let body =
            serde_json::to_vec(&error_json(route.operation.dialect(), kind, &message, Some("understudy_bad_asset")))
                .unwrap_or_default();
        LocalResponse { outcome: Outcome::Hit, status: 500, headers: local_headers("hit", key), body, delay_ms: 0 }
    }

    /// The decision for a request rejected before its body could be read: a 400 in the dialect's shape
    /// under `on_miss: error`, forwarded under `passthrough`.
    pub fn reject(&self, route: &Route, e: &RequestError) -> Decision {
        self.bad_request(route, e)
    }

    fn bad_request(&self, route: &Route, e: &RequestError) -> Decision {
        // A body over the request budget is told apart (413, its own outcome and stat) from a malformed one.
        let (outcome, label) = match e {
            RequestError::OverBudget(_) => (Outcome::OverBudget, "over-budget"),
            _ => (Outcome::BadRequest, "bad-request"),
        };
        if self.on_miss == OnMiss::Passthrough {
            return Decision::Forward(outcome);
        }
        let message = format!("Understudy could not read this {} request: {e}", route.operation);
        let mut headers = local_headers(label, "");
        headers.retain(|(k, _)| k != "x-understudy-key");
        Decision::Respond(LocalResponse {
            outcome,
            status: e.status(),
            headers,
            body: error_body(route.operation.dialect(), e.status(), &message, e.code()),
            delay_ms: 0,
        })
    }

    /// The miss explanation: the key, the closest asset and where it differs, and how to record one.
    fn miss_message(&self, operation: Operation, key: &str, normalized: &Value) -> String {
        let mut msg = format!("Understudy has no asset for this {operation} request (key {key}).");
        // Rank a bounded number of same-operation candidates so a miss stays cheap on huge stores (the limits
        // are in crate::limits and docs/limits.md).
        let candidates = self.assets.by_operation.get(&operation).map(Vec::as_slice).unwrap_or_default();
        let mut shortlist: Vec<&Compiled> = candidates
            .iter()
            .take(MISS_SCAN)
            .filter_map(|&i| self.assets.assets.get(i))
            .filter(|a| !a.normalized.is_empty())
            .collect();
        if shortlist.len() > MISS_PARSE {
            // Big store: keep the candidates sharing the longest start of the canonical text (keys are sorted,
            // so that is mostly the conversation), and compare only those in full. Only the start is written.
            let text = crate::normalize::canonical_prefix(normalized, MISS_PREFIX_BYTES);
            let common = |a: &Compiled| a.normalized.bytes().zip(text.bytes()).take_while(|(x, y)| x == y).count();
            shortlist.sort_by_cached_key(|a| std::cmp::Reverse(common(a)));
            shortlist.truncate(MISS_SHORTLIST);
        }
        // The store keeps canonical text, not parsed trees (memory per VM): parse candidates here, on a miss.
        let best = shortlist
            .into_iter()
            .filter_map(|a| serde_json::from_str::<Value>(&a.normalized).ok().map(|v| (a, v)))
            .map(|(a, v)| (difference_count(&v, normalized, MISS_DIFF_CAP), a, v))
            .min_by_key(|(d, _, _)| *d);
        match best {
            Some((_, a, v)) => {
                let at = first_difference(&v, normalized).unwrap_or_default();
                let mut at = if at.is_empty() { "/".to_string() } else { at };
                // A key can be as long as the body: quote the start of the pointer only.
                if let Some((cut, _)) = at.char_indices().nth(MISS_PATH_CHARS) {
                    at.truncate(cut);
                    at.push('…');
                }
                msg.push_str(&format!(" Closest asset: {} (key {}), first difference at {at}.", a.label, a.key));
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

/// Time to first token plus time per output token, in milliseconds, at most `MAX_DELAY_MS` in all.
fn delay(latency: Option<Latency>, output_tokens: u64) -> u64 {
    latency.map_or(0, |l| {
        let per_token = l.per_token_ms * output_tokens as f64;
        l.ttft_ms.saturating_add(per_token.min(MAX_DELAY_MS as f64) as u64).min(MAX_DELAY_MS)
    })
}

/// Fresh top-level `id` in the same format, and `created`/`created_at` set to now.
fn refresh(v: &mut Value, now_nanos: u64, ids: &mut Rng) {
    let Some(m) = v.as_object_mut() else { return };
    if let Some(Value::String(id)) = m.get_mut("id") {
        *id = refresh_id(id, ids);
    }
    for field in ["created", "created_at"] {
        if let Some(slot @ Value::Number(_)) = m.get_mut(field) {
            *slot = Value::Number(Number::from(now_nanos / 1_000_000_000));
        }
    }
}

fn set_content_type(headers: &mut Vec<(String, String)>, value: &str) {
    headers.retain(|(k, _)| k != "content-type");
    headers.push(("content-type".into(), value.into()));
}

fn local_headers(outcome: &str, key: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        ("x-understudy".into(), outcome.into()),
        ("x-understudy-key".into(), key.into()),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the pre-serialized path must produce: the tree rewrite it replaces.
    fn refreshed_by_tree(body: &Value, now: u64, seed: u64) -> Vec<u8> {
        let mut v = body.clone();
        refresh(&mut v, now, &mut Rng::new(seed));
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn splice_renders_exactly_what_the_tree_rewrite_does() {
        let bodies = [
            json!({"id": "chatcmpl-abc123XYZ", "object": "chat.completion", "created": 1700000000, "choices": []}),
            json!({"id": "msg_01AbCdEf", "type": "message", "content": [{"type": "text", "text": "\"quoted\" \u{1}"}]}),
            json!({"id": "resp_1", "created_at": 1.5e9, "created": 12, "output": [{"id": "inner", "created": 3}]}),
            json!({"created": 5, "data": [1, 2, 3]}),
            json!({"id": "weird \" id \\ with \n escapes-and_more", "z": "\u{1}understudy-refresh:idx"}),
        ];
        for body in &bodies {
            let splice = Splice::of(&mut body.clone()).expect("something to refresh");
            assert_eq!(splice.original(), serde_json::to_vec(body).unwrap(), "{body}");
            for (now, seed) in [(1_800_000_000_123_456_789u64, 1u64), (0, 42), (u64::MAX, 7)] {
                let got = splice.render(now, &mut Rng::new(seed));
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(refreshed_by_tree(body, now, seed)).unwrap()
                );
            }
        }
    }

    #[test]
    fn splice_declines_when_there_is_nothing_to_refresh_or_a_marker_is_ambiguous() {
        for body in [
            json!({"object": "list", "data": []}),
            json!(["id", 1]),
            json!({"id": 7, "created": "yesterday"}),
            // A body that already holds the marker text as a whole string value: can't split unambiguously.
            json!({"id": "x-1", "echo": ID_MARK}),
        ] {
            let mut marked = body.clone();
            assert!(Splice::of(&mut marked).is_none(), "{body}");
            assert_eq!(marked, body, "restored");
        }
    }

    fn bundle_json(assets: Vec<BundledAsset>) -> String {
        let cfg = PluginConfig {
            on_miss: OnMiss::Error,
            normalization: NormalizationConfig::default(),
            bundle: Bundle::sealed(assets),
            synthesize: Vec::new(),
        };
        serde_json::to_string(&cfg).unwrap()
    }

    fn asset(i: u64) -> BundledAsset {
        let request = json!({"model": "m", "messages": [{"role": "user", "content": format!("q{i}")}]});
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let mut n = request.clone();
        Normalizer::default().normalize(&route, &mut n).unwrap();
        let key = Normalizer::key_of_normalized(route.operation, &n);
        serde_json::from_value(json!({
            "key": key, "source": format!("f{i}.json#0"),
            "request": {"path": "/v1/chat/completions", "body": request},
            "response": {"body": {"id": format!("chatcmpl-{i:08}"), "created": 1, "choices": []}},
        }))
        .unwrap()
    }

    #[test]
    fn streamed_load_verifies_the_same_content_hash_and_serves() {
        let text = bundle_json((0..20).map(asset).collect());
        let rt = Runtime::from_json_sealed(&text).unwrap();
        assert_eq!(rt.asset_count(), 20);
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let body = br#"{"messages":[{"content":"q7","role":"user"}],"model":"m","stream":false}"#;
        let Decision::Respond(r) = rt.decide_at(&route, body, 2_000_000_000_000_000_000) else { panic!() };
        assert_eq!(r.outcome, Outcome::Hit);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["created"], json!(2_000_000_000u64));
        assert_ne!(v["id"], json!("chatcmpl-00000007"));
        assert_eq!(v["id"].as_str().unwrap().len(), "chatcmpl-00000007".len());
        // An empty sealed bundle too.
        assert_eq!(Runtime::from_json_sealed(&bundle_json(Vec::new())).unwrap().asset_count(), 0);
    }

    #[test]
    fn tampering_is_reported_as_a_hash_mismatch_even_when_an_asset_no_longer_compiles() {
        let text = bundle_json((0..5).map(asset).collect());
        // Changing a request changes its key: the content hash, not the key check, must report it.
        let tampered = text.replace("\"q3\"", "\"q3 changed\"");
        assert_ne!(tampered, text);
        let err = Runtime::from_json_sealed(&tampered).unwrap_err().to_string();
        assert!(err.contains("bundle.sha256") && err.contains("changed after"), "{err}");
        // Unsealed (tools): the key check names the asset.
        let unsealed = tampered
            .replace(&format!("\"sha256\":\"{}\",", Bundle::sealed((0..5).map(asset).collect()).sha256.unwrap()), "");
        assert_ne!(unsealed, tampered);
        let err = Runtime::from_json(&unsealed).unwrap_err().to_string();
        assert!(err.contains("bundle.assets[3]"), "{err}");
    }

    #[test]
    fn requests_bigger_than_the_text_index_still_hit_by_key_and_small_ones_by_text() {
        let big = "word ".repeat(KEEP_CANONICAL / 4);
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let mut assets = Vec::new();
        for content in [big.as_str(), "small"] {
            let request = json!({"model": "m", "messages": [{"role": "user", "content": content}]});
            let key = Normalizer::default().key(&route, request.to_string().as_bytes()).unwrap().0;
            assets.push(
                serde_json::from_value(json!({
                    "key": key, "source": "t.json#0",
                    "request": {"path": "/v1/chat/completions", "body": request},
                    "response": {"body": {"id": "chatcmpl-1", "choices": [{"message": {"content": content.len()}}]}},
                }))
                .unwrap(),
            );
        }
        let rt = Runtime::from_json_sealed(&bundle_json(assets)).unwrap();
        for content in [big.as_str(), "small"] {
            // Spelled differently (spaces, key order, an ignored field): the same key either way.
            let body = format!(
                r#"{{ "stream": false, "messages": [ {{ "content": {}, "role": "user" }} ], "model": "m" }}"#,
                serde_json::to_string(content).unwrap()
            );
            let want = Normalizer::default().key(&route, body.as_bytes()).unwrap().0;
            let Decision::Respond(r) = rt.decide_at(&route, body.as_bytes(), 0) else { panic!() };
            assert_eq!(r.outcome, Outcome::Hit, "{} bytes", content.len());
            assert!(r.headers.contains(&("x-understudy-key".to_string(), want)));
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], json!(content.len()));
            // One character more: a miss, with the key of what was sent.
            let other = body.replacen("\"user\"", "\"user \"", 1);
            let want = Normalizer::default().key(&route, other.as_bytes()).unwrap().0;
            let Decision::Respond(r) = rt.decide_at(&route, other.as_bytes(), 0) else { panic!() };
            assert_eq!((r.outcome, r.status), (Outcome::Miss, 404));
            assert!(r.headers.contains(&("x-understudy-key".to_string(), want)));
        }
    }

    #[test]
    fn a_repeated_body_is_answered_from_the_memo_exactly_as_the_full_path_answers_it() {
        let mut a = asset(1);
        a.responses = Some(vec![a.response.take().unwrap(), serde_json::from_value(json!({"body": {"id": "c-2", "choices": [{"index": 0, "message": {"role": "assistant", "content": "two"}, "finish_reason": "stop"}]}})).unwrap()]);
        a.sequence = Sequence::Cycle;
        let text = bundle_json(vec![a, asset(2)]);
        let chat = classify("POST", "/v1/chat/completions").unwrap();
        let azure = classify("POST", "/openai/deployments/m/chat/completions?api-version=1").unwrap();
        let hit = br#"{"model":"m","messages":[{"role":"user","content":"q1"}],"stream":true}"#;
        let miss = br#"{"model":"m","messages":[{"role":"user","content":"nope"}]}"#;
        let run = |memo: bool| {
            let mut rt = Runtime::from_json_sealed(&text).unwrap();
            rt.set_memo(memo);
            let mut out = Vec::new();
            for (route, body) in [
                (&chat, &hit[..]),
                (&chat, &hit[..]),
                (&azure, &hit[..]),
                (&chat, &miss[..]),
                (&chat, &miss[..]),
                (&chat, &hit[..]),
            ] {
                out.push(match rt.decide_at(route, body, 5_000_000_000) {
                    Decision::Respond(r) => (
                        r.outcome,
                        r.status,
                        r.headers.iter().find(|(k, _)| k == "x-understudy-response").cloned(),
                        r.headers.iter().any(|(_, v)| v.starts_with("text/event-stream")),
                        r.body.len(),
                    ),
                    Decision::Forward(o) => (o, 0, None, false, 0),
                });
            }
            let remembered: usize = rt.memo.entries.borrow().values().map(Vec::len).sum();
            (out, remembered)
        };
        let (full, none) = run(false);
        let (memo, remembered) = run(true);
        assert_eq!(none, 0);
        assert_eq!(remembered, 2, "the hit body on two routes; a strict miss is not remembered");
        assert_eq!(memo, full, "the memo must not change any answer: sequence position, streaming, route");
        assert_eq!(full[0].2, Some(("x-understudy-response".into(), "1/2".into())));
        assert_eq!(full[1].2, Some(("x-understudy-response".into(), "2/2".into())));
        assert!(full[0].3, "stream: true is a fact of the body the memo keeps");
        assert_eq!(full[3].1, 404);
    }

    #[test]
    fn the_memo_stays_within_its_budget() {
        let rt = Runtime::from_json_sealed(&bundle_json(vec![asset(1)])).unwrap();
        let chat = classify("POST", "/v1/chat/completions").unwrap();
        let pad = "x".repeat(MEMO_BODY - 100);
        for i in 0..(2 * MEMO_BYTES / MEMO_BODY) {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"q1"}}],"user":"{i}{pad}"}}"#);
            assert!(body.len() <= MEMO_BODY);
            let Decision::Respond(r) = rt.decide_at(&chat, body.as_bytes(), 0) else { panic!() };
            assert_eq!(r.outcome, Outcome::Hit);
            assert!(rt.memo.bytes.get() <= MEMO_BYTES);
        }
        let big = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"q1"}}],"user":"{}"}}"#,
            "y".repeat(MEMO_BODY)
        );
        let before = rt.memo.bytes.get();
        let Decision::Respond(r) = rt.decide_at(&chat, big.as_bytes(), 0) else { panic!() };
        assert_eq!(r.outcome, Outcome::Hit);
        assert_eq!(rt.memo.bytes.get(), before, "bodies over MEMO_BODY are not remembered");
    }

    #[test]
    fn a_strict_miss_in_a_big_store_names_the_closest_asset() {
        let rt = Runtime::from_json_sealed(&bundle_json((0..1000).map(asset).collect())).unwrap();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"q537?"}]}"#;
        let Decision::Respond(r) = rt.decide_at(&route, body, 0) else { panic!() };
        assert_eq!(r.status, 404);
        let text = String::from_utf8(r.body).unwrap();
        assert!(text.contains("from f537.json#0") && text.contains("/messages/0/content"), "{text}");
    }

    #[test]
    fn a_bad_asset_slice_names_its_index_and_field() {
        let sealed = bundle_json((0..3).map(asset).collect());
        let stored = Bundle::sealed((0..3).map(asset).collect()).sha256.unwrap();
        let text = sealed.replace("\"source\":\"f1.json#0\"", "\"source\":\"f1.json#0\",\"bogus\":1");
        // Sealed: the edit is what went wrong.
        let err = Runtime::from_json_sealed(&text).unwrap_err().to_string();
        assert!(err.contains("bundle.sha256") && err.contains("changed after"), "{err}");
        // Unsealed: the field is named.
        let text = text.replace(&format!("\"sha256\":\"{stored}\","), "");
        let err = Runtime::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("bundle.assets[1]") && err.contains("bogus"), "{err}");
    }

    fn deferred(rt: &Runtime, compiled: bool) -> usize {
        rt.assets
            .assets
            .iter()
            .filter(|a| matches!(&a.responses, Answers::Deferred { compiled: c, .. } if c.get().is_some() == compiled))
            .count()
    }

    #[test]
    fn a_sealed_bundle_loads_from_canonical_or_reformatted_text_and_compiles_answers_on_first_use() {
        let cfg: Value = serde_json::from_str(&bundle_json((0..4).map(asset).collect())).unwrap();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"q2"}]}"#;
        for text in [crate::canonical::to_canonical(&cfg), serde_json::to_string_pretty(&cfg).unwrap()] {
            let rt = Runtime::from_json_sealed(&text).unwrap();
            assert_eq!(deferred(&rt, false), 4);
            let Decision::Respond(r) = rt.decide_at(&route, body, 0) else { panic!() };
            assert_eq!((r.outcome, r.status), (Outcome::Hit, 200));
            assert_eq!(deferred(&rt, true), 1, "only the asset that was hit is compiled");
        }
    }

    #[test]
    fn a_deferred_answer_that_does_not_compile_is_a_500_that_says_why_not_a_crash() {
        // Sealed by hand around a response `understudy bundle` would have refused (two bodies).
        let mut a = asset(0);
        a.response.as_mut().unwrap().body_text = Some("also".into());
        let text = bundle_json(vec![a]);
        let rt = Runtime::from_json_sealed(&text).unwrap();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"q0"}]}"#;
        for _ in 0..2 {
            let Decision::Respond(r) = rt.decide_at(&route, body, 0) else { panic!() };
            assert_eq!(r.status, 500);
            let text = String::from_utf8(r.body).unwrap();
            assert!(text.contains("more than one of `body`, `body_text`"), "{text}");
        }
    }

    #[test]
    fn identical_duplicates_are_skipped_and_conflicts_named() {
        let n = Normalizer::default();
        let a = asset(1).into_asset();
        let mut set = AssetSet::default();
        set.add(&n, "a", &a, None).unwrap();
        set.add(&n, "b", &a, None).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.duplicates().len(), 1);
        let mut c = a.clone();
        c.response.as_mut().unwrap().body = Some(json!({"id": "chatcmpl-other", "created": 1, "choices": []}));
        let err = set.add(&n, "c", &c, None).unwrap_err().to_string();
        assert!(err.contains("a") && err.contains("c"), "{err}");
        let mut d = a.clone();
        d.refresh = false;
        assert!(set.add(&n, "d", &d, None).is_err(), "refresh differs: a conflict");
    }
}
