//! The plugin configuration, compiled once into an indexed runtime, and the one `decide()` call.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasher;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::asset::{from_str_strict, validate_asset, Asset, AssetResponse, Bundle, Latency, Sequence, BUNDLE_FORMAT};
use crate::dialect::{classify, Operation, Route};
use crate::error::{ConfigError, RequestError};
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

/// A compiled response of an asset.
#[derive(Debug, Clone)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body as served when nothing dynamic applies.
    body: Vec<u8>,
    /// The JSON body, kept when it must be rewritten per hit (refresh, placeholders, embeddings, streaming).
    json: Option<Value>,
    /// Strings holding placeholders.
    templates: Vec<(Vec<Step>, Template)>,
    /// A recorded SSE stream, served verbatim to streaming requests.
    sse: Option<String>,
    /// Encoding of an embeddings body.
    embeddings: Option<EmbeddingEncoding>,
    /// An error answer: never streamed or refreshed.
    is_error: bool,
    /// Estimated output tokens, for latency.
    output_tokens: u64,
}

/// A compiled asset ready to be served.
#[derive(Debug)]
struct Compiled {
    label: String,
    key: String,
    operation: Operation,
    normalized: Value,
    responses: Vec<Response>,
    sequence: Sequence,
    seed: u64,
    refresh: bool,
    latency: Option<Latency>,
    /// Calls served so far by this VM (sequence position).
    calls: Cell<u64>,
    /// Response identity, for duplicate vs conflict detection.
    fingerprint: String,
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
        let bad = |reason: String| ConfigError::Asset { asset: label.to_string(), reason };
        let route = classify(&asset.request.method, &asset.request.path)
            .ok_or_else(|| bad("request is not an LLM operation".into()))?;
        let mut normalized = asset.request.body.clone();
        normalizer.normalize(&route, &mut normalized).map_err(|e| bad(format!("request.body: {e}")))?;
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
        let many = asset.responses.is_some();
        let mut responses = Vec::new();
        for (i, r) in asset.all_responses().into_iter().enumerate() {
            let at = if many { format!("responses[{i}]") } else { "response".to_string() };
            responses.push(compile_response(route.operation, r, asset.refresh).map_err(|e| bad(format!("{at}{e}")))?);
        }
        let fingerprint =
            serde_json::to_string(&(asset.all_responses(), asset.sequence, asset.seed, asset.refresh, asset.latency))
                .unwrap_or_default();
        if let Some(&i) = self.index.get(&key) {
            let prev = self.assets.get(i).map(|p| (p.label.clone(), p.fingerprint.clone())).unwrap_or_default();
            if prev.1 == fingerprint {
                self.duplicates.push((prev.0, display));
                return Ok(key);
            }
            return Err(ConfigError::Conflict { key, first: prev.0, second: display });
        }
        let seed = asset.seed.unwrap_or_else(|| u64::from_str_radix(key.get(..16).unwrap_or("0"), 16).unwrap_or(0));
        let idx = self.assets.len();
        self.assets.push(Compiled {
            label: display,
            key: key.clone(),
            operation: route.operation,
            normalized,
            responses,
            sequence: asset.sequence,
            seed,
            refresh: asset.refresh,
            latency: asset.latency,
            calls: Cell::new(0),
            fingerprint,
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

/// Compiles one response. Errors are suffixes for the `response`/`responses[i]` label (".body_text: ...").
fn compile_response(op: Operation, r: &AssetResponse, refresh: bool) -> Result<Response, String> {
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
            sse: None,
            embeddings: None,
            is_error: true,
            output_tokens: 0,
        });
    }
    // A recorded stream answers streaming requests verbatim and others with the assembled body.
    let (json, sse) = match (&r.body, &r.body_text) {
        (Some(v), _) => (Some(v.clone()), None),
        (None, Some(t)) if status < 400 && op != Operation::Embeddings && is_sse(t) => {
            let assembled = assemble_sse(op, t).map_err(|e| format!(".body_text: looks like an SSE stream but {e}"))?;
            (Some(assembled), Some(t.clone()))
        }
        _ => (None, None),
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
    let body = match (&json, &r.body_text) {
        (Some(v), _) => serde_json::to_vec(v).map_err(|e| format!(".body: {e}"))?,
        (None, Some(t)) => t.clone().into_bytes(),
        (None, None) => Vec::new(),
    };
    let embeddings = match (op, &json) {
        (Operation::Embeddings, Some(v)) => embedding_encoding_of(v),
        _ => None,
    };
    let is_error = status >= 400;
    let output_tokens = json.as_ref().map(output_tokens).unwrap_or(0);
    let dynamic =
        embeddings.is_some() || !templates.is_empty() || (refresh && !is_error) || op != Operation::Embeddings;
    Ok(Response {
        status,
        headers,
        body,
        json: if dynamic { json } else { None },
        templates,
        sse,
        embeddings,
        is_error,
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
}

impl Runtime {
    /// Parses and compiles a plugin configuration. Any problem fails the whole load, naming the field/asset.
    /// A bundle without a content hash is accepted here (tools and tests build them); the filter uses
    /// [`Runtime::from_json_sealed`].
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::compile(PluginConfig::from_json(text)?)
    }

    /// As [`Runtime::from_json`], but the bundle must carry its content hash (`bundle.sha256`), so deleting
    /// the hash can't switch the integrity check off. What the filter loads.
    pub fn from_json_sealed(text: &str) -> Result<Self, ConfigError> {
        let cfg = PluginConfig::from_json(text)?;
        if cfg.bundle.sha256.is_none() {
            return Err(ConfigError::invalid(
                "bundle.sha256",
                "missing: the filter loads only sealed bundles; build the bundle with `understudy bundle` \
                 (or `understudy plugin-config`)",
            ));
        }
        Self::compile(cfg)
    }

    /// Compiles a parsed configuration.
    pub fn compile(cfg: PluginConfig) -> Result<Self, ConfigError> {
        if cfg.bundle.format != BUNDLE_FORMAT {
            return Err(ConfigError::invalid(
                "bundle.format",
                format!("{:?} is not supported by this filter (expected {BUNDLE_FORMAT:?})", cfg.bundle.format),
            ));
        }
        cfg.bundle.verify()?;
        let normalizer = Normalizer::compile(&cfg.normalization)?;
        let synth = Synthesizer::compile(&cfg.synthesize)?;
        let mut assets = AssetSet::default();
        for (i, b) in cfg.bundle.assets.iter().enumerate() {
            let label = format!("bundle.assets[{i}] from {}", b.source);
            assets.add(&normalizer, &label, &b.asset(), Some(&b.key))?;
        }
        // std seeds RandomState from the OS (WASI random_get under Envoy): a per-VM salt.
        let salt = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        Ok(Runtime { on_miss: cfg.on_miss, normalizer, assets, synth, salt, served: Cell::new(0) })
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
        let request = match crate::parse_body(body) {
            Ok(v) => v,
            Err(e) => return self.bad_request(route, &e),
        };
        let mut normalized = request.clone();
        if let Err(e) = self.normalizer.normalize(route, &mut normalized) {
            return self.bad_request(route, &e);
        }
        let key = Normalizer::key_of_normalized(route.operation, &normalized);
        let Some(asset) = self.assets.index.get(&key).and_then(|&i| self.assets.assets.get(i)) else {
            if let Some(r) = self.synthesized(route, &request, key.clone(), now_nanos) {
                return Decision::Respond(r);
            }
            if self.on_miss == OnMiss::Passthrough {
                return Decision::Forward(Outcome::Miss);
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
        Decision::Respond(self.serve(asset, route, &request, key, now_nanos))
    }

    fn serve(&self, asset: &Compiled, route: &Route, request: &Value, key: String, now_nanos: u64) -> LocalResponse {
        let call = asset.calls.get();
        asset.calls.set(call.saturating_add(1));
        let n = asset.responses.len() as u64;
        let pick = match asset.sequence {
            Sequence::RepeatLast => call.min(n.saturating_sub(1)),
            Sequence::Cycle => call.checked_rem(n).unwrap_or(0),
            Sequence::Random => Rng::new(asset.seed ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15)).below(n),
        };
        let Some(resp) = asset.responses.get(pick as usize) else {
            return self.asset_error(asset, route, &key, "has no response".into());
        };
        let mut headers = resp.headers.clone();
        let stream = wants_stream(request) && !resp.is_error && asset.operation != Operation::Embeddings;
        let needs_work = stream
            || asset.refresh
            || !resp.templates.is_empty()
            || resp.embeddings.is_some_and(|have| have != EmbeddingEncoding::requested(request));
        let body = match (&resp.json, &resp.sse) {
            (_, Some(sse)) if stream => {
                set_content_type(&mut headers, SSE_CONTENT_TYPE);
                sse.clone().into_bytes()
            }
            (Some(json), _) if !resp.is_error && needs_work => {
                let mut v = json.clone();
                let mut ids = self.fresh_ids(now_nanos);
                let mut choices = Rng::new(asset.seed ^ call.wrapping_mul(0xA076_1D64_78BD_642F));
                if asset.refresh {
                    refresh(&mut v, now_nanos, &mut ids);
                }
                if !resp.templates.is_empty() {
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
                    let want = EmbeddingEncoding::requested(request);
                    if want != have {
                        convert_embeddings(&mut v, want);
                    }
                }
                if stream {
                    match render_sse(asset.operation, &v, &StreamOptions::from_request(request)) {
                        Ok(text) => {
                            set_content_type(&mut headers, SSE_CONTENT_TYPE);
                            text.into_bytes()
                        }
                        Err(e) => return self.asset_error(asset, route, &key, format!("can't be streamed: {e}")),
                    }
                } else {
                    serde_json::to_vec(&v).unwrap_or_else(|_| resp.body.clone())
                }
            }
            _ => resp.body.clone(),
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
        let body = self.synth.synthesize(route, request, now_nanos / 1_000_000_000, &mut ids)?;
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        let stream = wants_stream(request) && route.operation != Operation::Embeddings;
        let bytes = if stream {
            set_content_type(&mut headers, SSE_CONTENT_TYPE);
            headers.push(("cache-control".into(), "no-cache".into()));
            render_sse(route.operation, &body, &StreamOptions::from_request(request)).ok()?.into_bytes()
        } else {
            serde_json::to_vec(&body).ok()?
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
            delay_ms: 0,
        })
    }

    /// The miss explanation: the key, the closest asset and where it differs, and how to record one.
    fn miss_message(&self, operation: Operation, key: &str, normalized: &Value) -> String {
        let mut msg = format!("Understudy has no asset for this {operation} request (key {key}).");
        // Rank a bounded number of same-operation candidates so a miss stays cheap on huge stores.
        const SCAN: usize = 5_000;
        const CAP: usize = 10_000;
        let candidates = self.assets.by_operation.get(&operation).map(Vec::as_slice).unwrap_or_default();
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

/// Time to first token plus time per output token, in milliseconds.
fn delay(latency: Option<Latency>, output_tokens: u64) -> u64 {
    latency.map_or(0, |l| {
        let per_token = l.per_token_ms * output_tokens as f64;
        l.ttft_ms.saturating_add(per_token.min(600_000.0) as u64)
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
