//! Record mode: turning one live exchange (a request the client sent and the answer the upstream gave) into a
//! capture, the public asset it becomes plus the key replay will look it up by. The filter calls it in two
//! halves ([`Recorder::begin`] when the request is forwarded, [`Capture::push_body`] as the answer passes,
//! [`Recorder::finish`] when it has ended); `understudy import` calls [`Recorder::exchange`] on traffic
//! captured elsewhere. Both produce the same capture, so a collector and an importer write the same files.
//!
//! What a capture holds, and what it never does:
//!
//! - the request body as the client sent it, after redaction (configured JSON Pointers and patterns), and
//!   its path with credential query parameters (`?key=`) removed; never a request header;
//! - the answer's status, the response headers a client may use ([`kept_response_header`]: never
//!   credentials, cookies, hop-by-hop or transport headers) and its body, redacted the same way;
//! - for a streamed answer, the stream as it came, with when each chunk arrived;
//! - the key, computed from the request *before* redaction exactly as replay computes it. A redaction that
//!   would change the key is refused when the configuration loads unless normalization drops or scrubs the
//!   same thing (a redacted pointer in `ignore_fields`, a redacted pattern among the `scrubbers` with the
//!   same placeholder), and every capture is checked again: its redacted request must key like the live one.
//!
//! Answers that are not good assets are not captured: 5xx and 429 (unless `keep_errors`), streams cut short
//! (the dialect's own check: it assembles and ends with the API's last event). Every capture is bounded
//! ([`crate::limits::MAX_CAPTURE_BYTES`]).

use std::cell::Cell;
use std::fmt;
use std::hash::BuildHasher;

use base64::Engine as _;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::asset::{Asset, AssetRequest, AssetResponse, Recorded, Timing};
use crate::budget::Processing;
use crate::dialect::Route;
use crate::error::ConfigError;
use crate::key::{parse_pointer, NormalizationConfig, Normalizer, ScrubberConfig};
use crate::limits::{ANSWER_BUDGET, MAX_CAPTURE_BYTES, MAX_TIMING_CHUNKS, REQUEST_BUDGET};

/// Version tag of a capture, the document the filter sends the collector.
pub const CAPTURE_FORMAT: &str = "understudy.capture/v1";

/// The collector's path captures are posted to.
pub const CAPTURE_PATH: &str = "/v1/captures";

/// What the replacement of a redacted JSON value is, unless configured.
pub const DEFAULT_REPLACEMENT: &str = "[REDACTED]";

/// What the filter does with LLM calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Answer from the assets (today's behaviour); misses follow `on_miss`.
    #[default]
    Replay,
    /// Every LLM call goes to the upstream and is captured.
    Record,
    /// Hits are answered from the assets; misses go to the upstream and are captured (VCR's `new_episodes`).
    RecordMissing,
}

impl Mode {
    /// Is this the default mode (left out of a serialized plugin configuration)?
    pub fn is_replay(&self) -> bool {
        *self == Mode::Replay
    }

    /// Does this mode capture anything?
    pub fn records(self) -> bool {
        self != Mode::Replay
    }
}

/// Record-mode settings (the plugin configuration's `record`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// The Envoy cluster captures are sent to.
    #[serde(default = "default_collector")]
    pub collector: String,
    /// Response headers never recorded, besides the built-in credential and transport headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_headers: Vec<String>,
    /// JSON Pointers (`*` for any member or element) whose values are replaced in request bodies. Each must be
    /// dropped by normalization (`ignore_fields`), so the redacted request keys like the live one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_request: Vec<String>,
    /// JSON Pointers whose values are replaced in JSON response bodies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_response: Vec<String>,
    /// Patterns replaced in every string of request and response bodies (and in recorded stream text). Each
    /// must also be a normalization scrubber with the same pattern and placeholder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_patterns: Vec<ScrubberConfig>,
    /// What a redacted JSON Pointer's value becomes.
    #[serde(default = "default_replacement")]
    pub replacement: String,
    /// Store 5xx and 429 answers too, as error assets (default: not stored, counted).
    #[serde(default)]
    pub keep_errors: bool,
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            collector: default_collector(),
            redact_headers: Vec::new(),
            redact_request: Vec::new(),
            redact_response: Vec::new(),
            redact_patterns: Vec::new(),
            replacement: default_replacement(),
            keep_errors: false,
        }
    }
}

impl RecordConfig {
    /// Is this the default configuration (left out of a serialized plugin configuration)?
    pub fn is_default(&self) -> bool {
        *self == RecordConfig::default()
    }
}

fn default_collector() -> String {
    "understudy_collector".into()
}

fn default_replacement() -> String {
    DEFAULT_REPLACEMENT.into()
}

/// Paced replay of recorded streams (the plugin configuration's `pacing`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacingConfig {
    /// Replay speed: 1 is as recorded, 2 twice as fast, 0.5 half as fast.
    pub speed: f64,
}

/// The request header that routes a paced answer to the pacer (set by the filter only; a client's is removed).
pub const PACE_HEADER: &str = "x-understudy-pace";

/// A paced answer: the bytes to send and when, handed to the pacer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pace {
    /// `[at_ms, bytes]` per chunk, already scaled by the speed; the lengths add up to the body's.
    pub chunks: Vec<(u64, u64)>,
}

impl Pace {
    /// `chunks` (recorded for a body of `recorded_len` bytes) fitted to a served body of `len` bytes (a stream
    /// re-framed for the client may differ in length: chunk ends move proportionally) at `speed`.
    pub fn fit(chunks: &[(u64, u64)], recorded_len: u64, len: u64, speed: f64) -> Pace {
        let speed = if speed.is_finite() && speed > 0.0 { speed } else { 1.0 };
        let mut out = Vec::with_capacity(chunks.len());
        let (mut end, mut sent) = (0u64, 0u64);
        for (i, (at, bytes)) in chunks.iter().enumerate() {
            end = end.saturating_add(*bytes);
            let fitted = if i + 1 == chunks.len() || recorded_len == 0 {
                len
            } else {
                (u128::from(end) * u128::from(len) / u128::from(recorded_len)).min(u128::from(len)) as u64
            };
            let at = (*at as f64 / speed).round() as u64;
            out.push((at, fitted.saturating_sub(sent)));
            sent = sent.max(fitted);
        }
        Pace { chunks: out }
    }

    /// The document the pacer reads: one line of JSON (`{"chunks": [[at_ms, bytes], ...]}`), then the body.
    pub fn frame(&self, body: &[u8]) -> Vec<u8> {
        let head = json!({"chunks": self.chunks}).to_string();
        let mut out = Vec::with_capacity(head.len() + 1 + body.len());
        out.extend_from_slice(head.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
        out
    }

    /// Reads [`Pace::frame`]'s document: the chunks and the body. `None` when it is not one.
    pub fn unframe(doc: &[u8]) -> Option<(Pace, &[u8])> {
        let nl = doc.iter().position(|b| *b == b'\n')?;
        let (head, rest) = doc.split_at(nl);
        let body = rest.get(1..)?;
        let v: Value = serde_json::from_slice(head).ok()?;
        let chunks: Vec<(u64, u64)> = serde_json::from_value(v.get("chunks")?.clone()).ok()?;
        let total: u64 = chunks.iter().map(|c| c.1).sum();
        (total == body.len() as u64).then_some((Pace { chunks }, body))
    }
}

/// Why an exchange was not captured. Never carries request or answer content (it is logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not a good asset on purpose: a 5xx or 429 answer (without `keep_errors`), or a request no asset can
    /// hold (its body is not a JSON object).
    NotStored(String),
    /// The answer was cut short: a stream without its last event, a JSON body that does not parse.
    Truncated(String),
    /// It should have been recorded but can't be: too big, no room in the record buffer, a redaction that
    /// would change the key or break the stream.
    Failed(String),
}

impl Skip {
    /// The counter it goes to: `record_skipped`, `record_truncated` or `record_failed`.
    pub fn stat(&self) -> &'static str {
        match self {
            Skip::NotStored(_) => "record_skipped",
            Skip::Truncated(_) => "record_truncated",
            Skip::Failed(_) => "record_failed",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotStored(why) => write!(f, "not recorded: {why}"),
            Skip::Truncated(why) => write!(f, "not recorded, the answer was cut short: {why}"),
            Skip::Failed(why) => write!(f, "recording FAILED: {why}"),
        }
    }
}

/// Response headers never recorded, besides [`crate::headers::SECRET_HEADERS`]: credentials the upstream
/// echoes (`openai-organization`, `openai-project`), AWS SigV4 headers, hop-by-hop and transport headers that
/// describe one connection rather than the answer.
pub const NEVER_RECORDED: &[&str] = &[
    "openai-organization",
    "openai-project",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "set-cookie2",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "date",
    "server",
    "via",
    "alt-svc",
    "age",
    "strict-transport-security",
    "x-envoy-upstream-service-time",
    "x-envoy-upstream-healthchecked-cluster",
    "x-envoy-decorator-operation",
];

/// May a response header be recorded? Never credentials, cookies, Understudy's own, hop-by-hop or transport
/// headers, pseudo-headers, or one configured in `redact_headers` (`extra`, lower-case).
pub fn kept_response_header(name: &str, extra: &[String]) -> bool {
    let lower = name.to_ascii_lowercase();
    !(lower.starts_with(':')
        || lower.starts_with("x-envoy-")
        || crate::headers::is_secret_header(&lower)
        || crate::headers::is_understudy_header(&lower)
        || NEVER_RECORDED.contains(&lower.as_str())
        || extra.contains(&lower))
}

/// `path` without credential-bearing query parameters (`?key=`, `access_token`, ...); other parameters
/// (`api-version`, `alt=sse`) stay, in order.
pub fn strip_credentials(path: &str) -> String {
    let Some((base, query)) = path.split_once('?') else { return path.to_string() };
    let query = query.split('#').next().unwrap_or_default();
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && crate::headers::secret_query_param(&format!("?{pair}")).is_none())
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// The words a person would recognize a request by: the start of its last prompt text (the last string under
/// a `content`, `text`, `prompt`, `input` or `inputText` member, which in every API's request is the newest
/// user turn or the input), at most `max_words` words.
pub fn first_words(body: &Value, max_words: usize) -> String {
    fn last_text<'a>(v: &'a Value, under_text_key: bool, found: &mut Option<&'a str>) {
        match v {
            Value::String(s) if under_text_key && !s.trim().is_empty() => *found = Some(s),
            Value::Array(a) => a.iter().for_each(|x| last_text(x, under_text_key, found)),
            Value::Object(m) => {
                for (k, x) in m {
                    let texty = matches!(k.as_str(), "content" | "text" | "prompt" | "input" | "inputText");
                    // A system prompt names the assistant, not the request.
                    if matches!(k.as_str(), "system" | "instructions" | "systemInstruction") {
                        continue;
                    }
                    last_text(x, texty || (under_text_key && !x.is_string()), found);
                }
            }
            _ => {}
        }
    }
    let mut found = None;
    last_text(body, false, &mut found);
    found.unwrap_or_default().split_whitespace().take(max_words).collect::<Vec<_>>().join(" ")
}

/// Compiled record settings: the mode, the redactions, and the normalizer keys are computed with.
#[derive(Debug)]
pub struct Recorder {
    mode: Mode,
    normalizer: Normalizer,
    collector: String,
    keep_errors: bool,
    extra_headers: Vec<String>,
    request_pointers: Vec<Vec<String>>,
    response_pointers: Vec<Vec<String>>,
    patterns: Vec<(Regex, String)>,
    replacement: String,
    /// Distinguishes this recorder's capture ids from other workers'.
    salt: u64,
    serial: Cell<u64>,
}

impl Recorder {
    /// Validates and compiles record settings against the normalization keys are computed with: a redaction
    /// that would change a key is refused here, naming the normalization entry that would make it safe.
    pub fn compile(mode: Mode, cfg: &RecordConfig, norm: &NormalizationConfig) -> Result<Recorder, ConfigError> {
        let normalizer = Normalizer::compile(norm)?;
        let mut request_pointers = Vec::new();
        for (i, p) in cfg.redact_request.iter().enumerate() {
            let field = format!("record.redact_request[{i}]");
            let segs = parse_pointer(p).map_err(|e| ConfigError::invalid(&field, e))?;
            if !normalizer.drops(&segs) {
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "redacting {p} would change the request's key, so the recording would never match it at \
                         replay; add \"{p}\" to normalization.ignore_fields (it then never counts in a key)"
                    ),
                ));
            }
            request_pointers.push(segs);
        }
        let mut response_pointers = Vec::new();
        for (i, p) in cfg.redact_response.iter().enumerate() {
            let segs = parse_pointer(p).map_err(|e| ConfigError::invalid(format!("record.redact_response[{i}]"), e))?;
            response_pointers.push(segs);
        }
        let mut patterns = Vec::new();
        for (i, s) in cfg.redact_patterns.iter().enumerate() {
            let field = format!("record.redact_patterns[{i}]");
            let re =
                Regex::new(&s.pattern).map_err(|e| ConfigError::invalid(format!("{field}.pattern"), e.to_string()))?;
            if re.is_match("") {
                return Err(ConfigError::invalid(
                    format!("{field}.pattern"),
                    format!("{:?} matches the empty string", s.pattern),
                ));
            }
            if re.is_match(&s.placeholder) {
                return Err(ConfigError::invalid(
                    format!("{field}.placeholder"),
                    format!("{:?} matches its own pattern: redacting twice would not be stable", s.placeholder),
                ));
            }
            if !normalizer.scrubs(&s.pattern, &s.placeholder) {
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "redacting {:?} in request bodies would change their keys, so recordings would never match \
                         at replay; add the same scrubber to normalization.scrubbers: {}",
                        s.pattern,
                        json!({"pattern": s.pattern, "placeholder": s.placeholder})
                    ),
                ));
            }
            patterns.push((re, s.placeholder.clone()));
        }
        if mode.records() && cfg.collector.trim().is_empty() {
            return Err(ConfigError::invalid("record.collector", "names no Envoy cluster"));
        }
        let salt = std::collections::hash_map::RandomState::new().hash_one(0x7265_636f_7264_u64);
        Ok(Recorder {
            mode,
            normalizer,
            collector: cfg.collector.clone(),
            keep_errors: cfg.keep_errors,
            extra_headers: cfg.redact_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            request_pointers,
            response_pointers,
            patterns,
            replacement: cfg.replacement.clone(),
            salt,
            serial: Cell::new(0),
        })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The environment's policy sets the mode (the settings stay).
    pub(crate) fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// The Envoy cluster of the collector.
    pub fn collector(&self) -> &str {
        &self.collector
    }

    /// Starts a capture of a request being forwarded: computes its key as replay will, redacts the body and
    /// checks that the redacted body keys the same. `id` names the capture (a fresh one when `None`).
    pub fn begin(
        &self,
        route: &Route,
        path: &str,
        body: &[u8],
        now_nanos: u64,
        id: Option<String>,
    ) -> Result<Capture, Skip> {
        if body.len() > MAX_CAPTURE_BYTES {
            return Err(too_big(body.len()));
        }
        let processing = Processing { plain: self.normalizer.is_plain(), synthesizes: false };
        let mut request = crate::parse_body_within(body, processing, REQUEST_BUDGET)
            .map_err(|e| Skip::NotStored(format!("the request body can't be an asset's: {e}")))?;
        let key = self
            .normalizer
            .key_of_request(route, &request)
            .map_err(|e| Skip::NotStored(format!("the request body can't be an asset's: {e}")))?;
        for segs in &self.request_pointers {
            replace_pointer(&mut request, segs, &self.replacement);
        }
        self.redact_strings(&mut request);
        if self.in_member_names(&request) {
            return Err(unredactable_name());
        }
        let after = self.normalizer.key_of_request(route, &request).unwrap_or_default();
        if after != key {
            return Err(Skip::Failed(
                "redacting the request changed its key (a redacted value counts in the key: add a matching \
                 normalization scrubber or ignore_fields entry)"
                    .into(),
            ));
        }
        let wants_stream = route.dialect().wants_stream(route, &request);
        let request_bytes = crate::budget::to_vec_exact(&request);
        let id = id.unwrap_or_else(|| self.fresh_id(&key, now_nanos));
        Ok(Capture {
            id,
            key,
            route: route.clone(),
            path: strip_credentials(path),
            request: request_bytes,
            wants_stream,
            started_nanos: now_nanos,
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            chunks: Vec::new(),
            over: false,
        })
    }

    /// A capture id: 16 hex characters, unique per VM and capture.
    fn fresh_id(&self, key: &str, now_nanos: u64) -> String {
        let serial = self.serial.get();
        self.serial.set(serial.wrapping_add(1));
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update(self.salt.to_le_bytes());
        h.update(serial.to_le_bytes());
        h.update(now_nanos.to_le_bytes());
        crate::key::hex(&h.finalize()).chars().take(16).collect()
    }

    /// Replaces every match of the redaction patterns in every string of `v`.
    fn redact_strings(&self, v: &mut Value) {
        if self.patterns.is_empty() {
            return;
        }
        match v {
            Value::String(s) => {
                if let Some(new) = self.redact_text(s) {
                    *s = new;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.redact_strings(x)),
            Value::Object(m) => m.values_mut().for_each(|x| self.redact_strings(x)),
            _ => {}
        }
    }

    /// Does a redaction pattern match a member name somewhere in `v`? Names can't be redacted (normalization
    /// never rewrites them, so the key would change): such a capture is refused instead.
    fn in_member_names(&self, v: &Value) -> bool {
        match v {
            Value::Array(a) => a.iter().any(|x| self.in_member_names(x)),
            Value::Object(m) => {
                m.iter().any(|(k, x)| self.patterns.iter().any(|(re, _)| re.is_match(k)) || self.in_member_names(x))
            }
            _ => false,
        }
    }

    /// `text` with the patterns replaced, or `None` when none matched.
    fn redact_text(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for (re, placeholder) in &self.patterns {
            let cur = out.as_deref().unwrap_or(text);
            if re.is_match(cur) {
                out = Some(re.replace_all(cur, regex::NoExpand(placeholder)).into_owned());
            }
        }
        out
    }

    /// Ends a capture whose answer has ended: checks that it is a good asset, redacts it and returns the
    /// capture document for the collector.
    pub fn finish(&self, c: Capture, now_nanos: u64) -> Result<Delivery, Skip> {
        if c.over {
            return Err(too_big(MAX_CAPTURE_BYTES + 1));
        }
        let status = c.status;
        if !(100..=599).contains(&status) {
            return Err(Skip::Truncated(format!("no HTTP status ({status})")));
        }
        if (status >= 500 || status == 429) && !self.keep_errors {
            return Err(Skip::NotStored(format!("the upstream answered {status} (set record.keep_errors to keep it)")));
        }
        let op = c.route.operation;
        let dialect = op.dialect();
        let ok = status < 400;
        let stream = c.wants_stream && ok && op.streams();
        let mut response = AssetResponse {
            status: Some(status),
            headers: None,
            body: None,
            body_text: None,
            body_base64: None,
            error: None,
            timing: None,
            recorded: Some(Recorded { capture: c.id.clone(), at: crate::template::iso8601(now_nanos / 1_000_000_000) }),
        };
        let mut chunks = c.chunks;
        if stream {
            let mut raw = c.body;
            let read = readable(&c.route, &raw);
            if !dialect.is_recorded_stream(op, &read) {
                return Err(Skip::Truncated(format!("the answer is not a {op} stream")));
            }
            dialect.stream_complete(op, &read).map_err(|e| Skip::Truncated(e.to_string()))?;
            let redacts = self.redacts_assembled(op, &read);
            drop(read);
            // A stream splits text into pieces, so a secret may straddle two events where no pattern sees it:
            // when a redaction applies to the assembled answer, the answer is kept assembled and redacted
            // (replay renders its stream) instead of the verbatim stream.
            if redacts {
                let mut v = dialect
                    .assemble_stream(op, &readable(&c.route, &raw))
                    .map_err(|e| Skip::Truncated(e.to_string()))?;
                self.redact_response_json(&mut v)?;
                response.body = Some(v);
                chunks.clear();
            } else {
                match String::from_utf8(raw) {
                    Ok(text) => {
                        let text = match self.redact_text(&text) {
                            Some(red) => {
                                dialect.stream_complete(op, &readable(&c.route, red.as_bytes())).map_err(|e| {
                                    Skip::Failed(format!("a redaction pattern breaks the recorded stream: {e}"))
                                })?;
                                chunks = Pace::fit(&chunks, text.len() as u64, red.len() as u64, 1.0).chunks;
                                red
                            }
                            None => text,
                        };
                        response.body_text = Some(text);
                    }
                    Err(e) => {
                        raw = e.into_bytes();
                        if self.redact_text(&String::from_utf8_lossy(&raw)).is_some() {
                            return Err(Skip::Failed(
                                "a redaction pattern matches inside a binary stream, which can't be redacted".into(),
                            ));
                        }
                        response.body_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&raw));
                    }
                }
            }
            if !chunks.is_empty() {
                response.timing = Some(Timing { chunks });
            }
        } else {
            // An answer that is a stream although none was asked for is held to the same whole-stream rule.
            if ok && op.streams() && dialect.is_recorded_stream(op, &readable(&c.route, &c.body)) {
                dialect
                    .stream_complete(op, &readable(&c.route, &c.body))
                    .map_err(|e| Skip::Truncated(e.to_string()))?;
            }
            self.plain_body(&mut response, c.body, ok)?;
        }
        let headers: std::collections::BTreeMap<String, String> = c
            .headers
            .into_iter()
            .filter(|(k, _)| kept_response_header(k, &self.extra_headers))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        response.headers = Some(headers);
        let body: Value = serde_json::from_slice(&c.request)
            .map_err(|e| Skip::Failed(format!("the redacted request no longer parses: {e}")))?;
        let words = first_words(&body, 12);
        let asset = Asset {
            name: (!words.is_empty()).then_some(words),
            request: AssetRequest { method: "POST".into(), path: c.path, body },
            response: Some(response),
            responses: None,
            sequence: Default::default(),
            seed: None,
            refresh: true,
            latency: None,
        };
        let route = crate::asset::validate(&asset, "capture").map_err(|e| Skip::Failed(e.to_string()))?;
        if route.operation != op {
            return Err(Skip::Failed(format!("the recorded path is a {} call, not {op}", route.operation)));
        }
        // Compiled as the collector and the bundler will compile it (the same validator): what can't be served
        // is not shipped, and the key is checked once more.
        let compiled = crate::Store::default().add(&self.normalizer, "capture", &asset, None);
        match compiled {
            Ok(key) if key == c.key => {}
            Ok(_) => return Err(Skip::Failed("the recorded request no longer keys like the live one".into())),
            Err(e) => return Err(Skip::Failed(format!("the recording would not load: {e}"))),
        }
        let doc = json!({"format": CAPTURE_FORMAT, "id": c.id, "key": c.key, "asset": asset});
        let bytes = crate::budget::to_vec_exact(&doc);
        Ok(Delivery { path: CAPTURE_PATH, id: c.id, key: c.key, body: bytes })
    }

    /// Redacts a JSON answer: the response pointers, then the patterns in every string.
    fn redact_response_json(&self, v: &mut Value) -> Result<(), Skip> {
        for segs in &self.response_pointers {
            replace_pointer(v, segs, &self.replacement);
        }
        self.redact_strings(v);
        if self.in_member_names(v) {
            return Err(unredactable_name());
        }
        Ok(())
    }

    /// Would a redaction change the answer a recorded stream assembles into (a pattern in its text, a
    /// response pointer that is there)?
    fn redacts_assembled(&self, op: crate::Operation, raw: &[u8]) -> bool {
        if self.patterns.is_empty() && self.response_pointers.is_empty() {
            return false;
        }
        let Ok(v) = op.dialect().assemble_stream(op, raw) else { return false };
        let mut redacted = v.clone();
        // A pattern in a member name changes it too (and fails the capture when it is redacted).
        self.redact_response_json(&mut redacted).is_err() || redacted != v
    }

    /// A non-streamed body: JSON (redacted by pointer and pattern) when it parses, else text or bytes.
    fn plain_body(&self, response: &mut AssetResponse, raw: Vec<u8>, ok: bool) -> Result<(), Skip> {
        let looks_json = raw.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| matches!(b, b'{' | b'['));
        if looks_json {
            let parsed = crate::parse_body_within(&raw, Processing { plain: true, synthesizes: false }, ANSWER_BUDGET);
            match parsed {
                Ok(mut v) => {
                    self.redact_response_json(&mut v)?;
                    response.body = Some(v);
                    return Ok(());
                }
                Err(crate::RequestError::OverBudget(_)) if self.response_pointers.is_empty() => {}
                Err(crate::RequestError::OverBudget(m)) => return Err(Skip::Failed(m)),
                Err(e) if ok => return Err(Skip::Truncated(format!("the JSON answer does not parse: {e}"))),
                Err(_) => {}
            }
        }
        match String::from_utf8(raw) {
            Ok(text) => response.body_text = Some(self.redact_text(&text).unwrap_or(text)),
            Err(e) => {
                let raw = e.into_bytes();
                if self.redact_text(&String::from_utf8_lossy(&raw)).is_some() {
                    return Err(Skip::Failed("a redaction pattern matches inside a binary body".into()));
                }
                response.body_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&raw));
            }
        }
        Ok(())
    }

    /// A whole exchange captured elsewhere (an importer): [`Recorder::begin`], the body, [`Recorder::finish`].
    #[allow(clippy::too_many_arguments)]
    pub fn exchange(
        &self,
        route: &Route,
        path: &str,
        request: &[u8],
        status: u16,
        headers: Vec<(String, String)>,
        body: &[u8],
        now_nanos: u64,
        id: String,
    ) -> Result<Delivery, Skip> {
        let mut c = self.begin(route, path, request, now_nanos, Some(id))?;
        c.response_headers(status, headers);
        c.push_body(body, now_nanos)?;
        c.chunks.clear();
        self.finish(c, now_nanos)
    }
}

/// A stream recorded on `route` as its operation's module reads it: the recording itself, unless the route's
/// API wraps another API's events (Bedrock's event stream around Anthropic's), which are unwrapped here
/// (`stream::readable`), the single place record mode reads a stream in the operation's framing.
fn readable<'a>(route: &Route, recorded: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    // A wrapping that doesn't unwrap is read as it is: the stream checks below then refuse it.
    crate::stream::readable(route, recorded).unwrap_or(std::borrow::Cow::Borrowed(recorded))
}

fn unredactable_name() -> Skip {
    Skip::Failed("a redaction pattern matches a JSON member name, which can't be redacted".into())
}

fn too_big(len: usize) -> Skip {
    Skip::Failed(format!(
        "the exchange is over {} MiB ({len} bytes or more; MAX_CAPTURE_BYTES, see docs/limits.md)",
        MAX_CAPTURE_BYTES >> 20
    ))
}

/// Replaces the value(s) at a parsed JSON Pointer with `replacement`.
fn replace_pointer(v: &mut Value, segs: &[String], replacement: &str) {
    let Some((first, rest)) = segs.split_first() else {
        *v = Value::String(replacement.to_string());
        return;
    };
    match v {
        Value::Object(m) if first == "*" => m.values_mut().for_each(|x| replace_pointer(x, rest, replacement)),
        Value::Object(m) => {
            if let Some(x) = m.get_mut(first.as_str()) {
                replace_pointer(x, rest, replacement);
            }
        }
        Value::Array(a) if first == "*" => a.iter_mut().for_each(|x| replace_pointer(x, rest, replacement)),
        Value::Array(a) => {
            if let Some(x) = first.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                replace_pointer(x, rest, replacement);
            }
        }
        _ => {}
    }
}

/// An exchange being recorded: the request (key, redacted body, path) and the answer as it arrives.
#[derive(Debug)]
pub struct Capture {
    id: String,
    key: String,
    route: Route,
    path: String,
    request: Vec<u8>,
    wants_stream: bool,
    started_nanos: u64,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunks: Vec<(u64, u64)>,
    over: bool,
}

impl Capture {
    /// The key replay will look the recording up by.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The capture id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bytes it holds (what it costs the record buffer).
    pub fn held_bytes(&self) -> usize {
        self.request.len()
            + self.body.len()
            + self.chunks.len() * 16
            + self.headers.iter().map(|(k, v)| k.len() + v.len() + 32).sum::<usize>()
    }

    /// The answer as received so far: status, `content-type` and body (what a parity check compares).
    pub fn answer(&self) -> (u16, Option<&str>, &[u8]) {
        let ct = self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.as_str());
        (self.status, ct, &self.body)
    }

    /// The answer's status and headers.
    pub fn response_headers(&mut self, status: u16, headers: Vec<(String, String)>) {
        self.status = status;
        self.headers = headers;
    }

    /// A piece of the answer's body arrived at `now_nanos`. Past [`MAX_CAPTURE_BYTES`] the capture is given
    /// up (its buffer is freed at once); the client's answer is not affected.
    pub fn push_body(&mut self, chunk: &[u8], now_nanos: u64) -> Result<(), Skip> {
        if self.over {
            return Err(too_big(MAX_CAPTURE_BYTES + 1));
        }
        if self.request.len() + self.body.len() + chunk.len() > MAX_CAPTURE_BYTES {
            self.over = true;
            self.body = Vec::new();
            self.chunks = Vec::new();
            return Err(too_big(self.request.len() + self.body.len() + chunk.len()));
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.body.extend_from_slice(chunk);
        if self.wants_stream {
            let at_ms = now_nanos.saturating_sub(self.started_nanos) / 1_000_000;
            let at_ms = at_ms.min(crate::limits::MAX_DELAY_MS);
            let full = self.chunks.len() >= MAX_TIMING_CHUNKS;
            match self.chunks.last_mut() {
                // Past the cap, later chunks join the last one.
                Some(last) if full => last.1 = last.1.saturating_add(chunk.len() as u64),
                _ => self.chunks.push((at_ms, chunk.len() as u64)),
            }
        }
        Ok(())
    }
}

/// A finished capture, ready for the collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The collector's path it is posted to ([`CAPTURE_PATH`], or `crate::policy::PARITY_PATH` for a parity
    /// record).
    pub path: &'static str,
    /// The capture id (a repeated delivery of it is recognized by the collector).
    pub id: String,
    /// The key.
    pub key: String,
    /// The capture document ([`CAPTURE_FORMAT`]), JSON.
    pub body: Vec<u8>,
}

/// A capture as the collector reads it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureDoc {
    /// Always [`CAPTURE_FORMAT`].
    pub format: String,
    /// The capture id.
    pub id: String,
    /// The key the filter computed from the live request.
    pub key: String,
    /// The asset, in the public asset format.
    pub asset: Asset,
}

impl CaptureDoc {
    /// Parses and checks a capture document: the format, the asset (the asset validator), and that the asset's
    /// request keys as the filter's key under `normalizer` (same normalization on both sides).
    pub fn parse(text: &str, normalizer: &Normalizer) -> Result<CaptureDoc, ConfigError> {
        let doc: CaptureDoc = crate::asset::from_str_strict(text, "capture")?;
        if doc.format != CAPTURE_FORMAT {
            return Err(ConfigError::invalid("format", format!("{:?} is not {CAPTURE_FORMAT:?}", doc.format)));
        }
        if doc.id.is_empty() || doc.id.len() > 128 || !doc.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ConfigError::invalid("id", "must be 1 to 128 letters, digits or dashes"));
        }
        let mut store = crate::Store::default();
        let key = store.add(normalizer, "capture", &doc.asset, None)?;
        if key != doc.key {
            return Err(ConfigError::invalid(
                "key",
                format!(
                    "the recorded request keys as {key} here but as {} in the filter: the collector and the filter \
                     must use the same normalization settings",
                    doc.key
                ),
            ));
        }
        Ok(doc)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::classify;

    const SECRET: &str = "sk-live-0123456789abcdef";

    fn norm() -> NormalizationConfig {
        serde_json::from_value(json!({
            "ignore_fields": ["/metadata/session"],
            "scrubbers": [{"pattern": "sk-live-[0-9a-f]+", "placeholder": "<api-key>"}],
        }))
        .unwrap()
    }

    fn cfg() -> RecordConfig {
        serde_json::from_value(json!({
            "redact_request": ["/metadata/session"],
            "redact_response": ["/system_fingerprint"],
            "redact_patterns": [{"pattern": "sk-live-[0-9a-f]+", "placeholder": "<api-key>"}],
            "redact_headers": ["X-Internal-Trace"],
        }))
        .unwrap()
    }

    fn recorder() -> Recorder {
        Recorder::compile(Mode::Record, &cfg(), &norm()).unwrap()
    }

    fn chat_request(stream: bool) -> Value {
        json!({"model": "gpt-4o-mini", "stream": stream, "metadata": {"session": "alice@example.com"},
               "messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": format!("My key is {SECRET}. What is the capital of France?")}]})
    }

    fn chat_answer() -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
               "system_fingerprint": "fp_secret", "choices": [{"index": 0, "message": {"role": "assistant",
               "content": format!("Paris. (Never share {SECRET}.)")}, "finish_reason": "stop"}]})
    }

    fn headers() -> Vec<(String, String)> {
        [
            ("content-type", "application/json"),
            ("Set-Cookie", "__cf_bm=abc"),
            ("openai-organization", "org-secret"),
            ("OpenAI-Project", "proj_secret"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-internal-trace", "t-1"),
            ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("x-envoy-upstream-service-time", "12"),
            ("content-length", "123"),
            ("x-request-id", "req_1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn capture(path: &str, req: &Value, status: u16, body: &[u8], chunked: &[usize]) -> Result<CaptureDoc, Skip> {
        let rec = recorder();
        let route = classify("POST", path).unwrap();
        let mut c = rec.begin(&route, path, req.to_string().as_bytes(), 1_000_000_000, None)?;
        c.response_headers(status, headers());
        let mut at = 1_000_000_000;
        let mut rest = body;
        for n in chunked {
            let (head, tail) = rest.split_at((*n).min(rest.len()));
            at += 40_000_000;
            c.push_body(head, at)?;
            rest = tail;
        }
        c.push_body(rest, at + 40_000_000)?;
        let d = rec.finish(c, 2_000_000_000_000_000_000)?;
        let text = String::from_utf8(d.body).unwrap();
        assert!(!text.contains(SECRET) && !text.contains("alice@") && !text.contains("org-secret"), "{text}");
        let n = Normalizer::compile(&norm()).unwrap();
        Ok(CaptureDoc::parse(&text, &n).unwrap())
    }

    #[test]
    fn a_capture_is_redacted_and_keys_like_the_live_request() {
        let req = chat_request(false);
        let doc = capture(
            "/v1/chat/completions?key=AIzaSECRET&api-version=1",
            &req,
            200,
            chat_answer().to_string().as_bytes(),
            &[],
        )
        .unwrap();
        let n = Normalizer::compile(&norm()).unwrap();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let (live, _) = n.key(&route, req.to_string().as_bytes()).unwrap();
        assert_eq!(doc.key, live, "the key is the live request's");
        let a = &doc.asset;
        assert_eq!(a.request.path, "/v1/chat/completions?api-version=1", "credential query parameters are gone");
        assert_eq!(a.request.body["metadata"]["session"], json!(DEFAULT_REPLACEMENT));
        assert_eq!(
            a.request.body["messages"][1]["content"],
            json!("My key is <api-key>. What is the capital of France?")
        );
        let r = a.response.as_ref().unwrap();
        assert_eq!(r.status, Some(200));
        let body = r.body.as_ref().unwrap();
        assert_eq!(body["system_fingerprint"], json!(DEFAULT_REPLACEMENT));
        assert_eq!(body["choices"][0]["message"]["content"], json!("Paris. (Never share <api-key>.)"));
        let h = r.headers.as_ref().unwrap();
        let names: Vec<&str> = h.keys().map(String::as_str).collect();
        assert_eq!(names, ["content-type", "x-ratelimit-remaining-requests", "x-request-id"]);
        assert_eq!(a.name.as_deref(), Some("My key is <api-key>. What is the capital of France?"));
        assert_eq!(r.recorded.as_ref().unwrap().capture, doc.id);
    }

    #[test]
    fn a_whole_stream_is_captured_with_its_timing_and_a_cut_one_is_not() {
        let mut answer = chat_answer();
        answer["choices"][0]["message"]["content"] = json!("Paris, of course.");
        answer.as_object_mut().unwrap().remove("system_fingerprint");
        let sse = crate::stream::render_sse(crate::Operation::ChatCompletions, &answer, &Default::default()).unwrap();
        let doc = capture("/v1/chat/completions", &chat_request(true), 200, sse.as_bytes(), &[30, 30, 30]).unwrap();
        let r = doc.asset.response.as_ref().unwrap();
        let text = r.body_text.as_ref().unwrap();
        assert!(text.ends_with("data: [DONE]\n\n") && text.contains("\"Paris,\""), "{text}");
        let t = r.timing.as_ref().unwrap();
        assert_eq!(t.chunks.iter().map(|c| c.0).collect::<Vec<_>>(), [40, 80, 120, 160]);
        assert_eq!(t.chunks.iter().map(|c| c.1).sum::<u64>(), text.len() as u64);
        // A secret split over the stream's pieces: the answer is kept assembled and redacted.
        let sse =
            crate::stream::render_sse(crate::Operation::ChatCompletions, &chat_answer(), &Default::default()).unwrap();
        let doc = capture("/v1/chat/completions", &chat_request(true), 200, sse.as_bytes(), &[30]).unwrap();
        let r = doc.asset.response.as_ref().unwrap();
        assert!(r.body_text.is_none() && r.timing.is_none());
        assert_eq!(
            r.body.as_ref().unwrap()["choices"][0]["message"]["content"],
            json!("Paris. (Never share <api-key>.)")
        );
        // Without [DONE] (the upstream stopped early): truncated.
        let cut = sse.trim_end().trim_end_matches("data: [DONE]");
        let err = capture("/v1/chat/completions", &chat_request(true), 200, cut.as_bytes(), &[]).unwrap_err();
        assert!(matches!(err, Skip::Truncated(_)), "{err}");
        assert_eq!(err.stat(), "record_truncated");
        // Anthropic without message_stop, half a JSON body.
        let msg = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}});
        let sse = crate::stream::render_sse(crate::Operation::Messages, &msg, &Default::default()).unwrap();
        let req = json!({"model": "claude", "max_tokens": 5, "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
        assert!(capture("/v1/messages", &req, 200, sse.as_bytes(), &[]).is_ok());
        let cut = &sse[..sse.find("event: message_stop").unwrap()];
        assert!(matches!(capture("/v1/messages", &req, 200, cut.as_bytes(), &[]), Err(Skip::Truncated(_))));
        let half = chat_answer().to_string();
        let half = &half[..half.len() / 2];
        assert!(matches!(
            capture("/v1/chat/completions", &chat_request(false), 200, half.as_bytes(), &[]),
            Err(Skip::Truncated(_))
        ));
    }

    #[test]
    fn server_errors_and_rate_limits_are_not_stored_unless_asked_and_client_errors_are() {
        let err = json!({"error": {"message": "Rate limit", "type": "requests"}}).to_string();
        for status in [429, 500, 503] {
            let e = capture("/v1/chat/completions", &chat_request(false), status, err.as_bytes(), &[]).unwrap_err();
            assert_eq!(e.stat(), "record_skipped", "{status}");
        }
        let doc = capture("/v1/chat/completions", &chat_request(true), 400, err.as_bytes(), &[]).unwrap();
        let r = doc.asset.response.unwrap();
        assert_eq!((r.status, r.body.is_some(), r.timing.is_none()), (Some(400), true, true));
        let mut c = cfg();
        c.keep_errors = true;
        let rec = Recorder::compile(Mode::Record, &c, &norm()).unwrap();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let d = rec
            .exchange(
                &route,
                "/v1/chat/completions",
                chat_request(false).to_string().as_bytes(),
                429,
                headers(),
                err.as_bytes(),
                0,
                "imp-1".into(),
            )
            .unwrap();
        assert!(String::from_utf8(d.body).unwrap().contains("\"status\":429"));
    }

    #[test]
    fn redactions_that_would_change_keys_are_refused_at_load_naming_the_fix() {
        let mut c = cfg();
        c.redact_request.push("/messages/0/content".into());
        let e = Recorder::compile(Mode::Record, &c, &norm()).unwrap_err().to_string();
        assert!(e.contains("record.redact_request[1]") && e.contains("ignore_fields"), "{e}");
        let mut c = cfg();
        c.redact_patterns.push(ScrubberConfig { pattern: "\\d{16}".into(), placeholder: "<card>".into() });
        let e = Recorder::compile(Mode::Record, &c, &norm()).unwrap_err().to_string();
        assert!(
            e.contains("record.redact_patterns[1]") && e.contains(r#"{"pattern":"\\d{16}","placeholder":"<card>"}"#),
            "{e}"
        );
        // Fields an API always ignores and wildcard ignore_fields cover a redaction.
        let mut c = cfg();
        c.redact_request = vec!["/user".into(), "/metadata/user_id".into()];
        assert!(Recorder::compile(Mode::Record, &c, &norm()).is_ok());
        let n: NormalizationConfig =
            serde_json::from_value(json!({"ignore_fields": ["/messages/*/name"], "scrubbers": norm().scrubbers}))
                .unwrap();
        let mut c = cfg();
        c.redact_request = vec!["/messages/3/name".into(), "/messages/*/name".into()];
        assert!(Recorder::compile(Mode::Record, &c, &n).is_ok());
        c.redact_request = vec!["/messages/*/content".into()];
        assert!(Recorder::compile(Mode::Record, &c, &n).is_err());
        let mut c = cfg();
        c.redact_patterns = vec![ScrubberConfig { pattern: "x+".into(), placeholder: "xx".into() }];
        assert!(Recorder::compile(Mode::Record, &c, &norm()).unwrap_err().to_string().contains("its own pattern"));
    }

    #[test]
    fn paths_lose_credentials_and_keep_everything_else() {
        assert_eq!(
            strip_credentials("/v1beta/models/g:streamGenerateContent?alt=sse&key=AIza"),
            "/v1beta/models/g:streamGenerateContent?alt=sse"
        );
        assert_eq!(strip_credentials("/v1/models/g:generateContent?key=AIza"), "/v1/models/g:generateContent");
        assert_eq!(
            strip_credentials("/openai/deployments/d/chat/completions?api-version=2024-10-21&%6Bey=x"),
            "/openai/deployments/d/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(strip_credentials("/v1/chat/completions"), "/v1/chat/completions");
    }

    #[test]
    fn headers_a_client_may_use_are_kept_and_no_credential_is() {
        for h in [
            "Authorization",
            "api-key",
            "X-Api-Key",
            "x-goog-api-key",
            "cookie",
            "set-cookie",
            "openai-organization",
            "openai-project",
            "x-amz-security-token",
            "x-amz-date",
            "X-Amz-Content-Sha256",
            "content-length",
            "transfer-encoding",
            ":status",
            "x-understudy",
            "x-envoy-upstream-service-time",
        ] {
            assert!(!kept_response_header(h, &[]), "{h}");
        }
        for h in [
            "content-type",
            "x-request-id",
            "anthropic-ratelimit-requests-remaining",
            "retry-after",
            "openai-processing-ms",
        ] {
            assert!(kept_response_header(h, &[]), "{h}");
        }
        assert!(!kept_response_header("X-Tenant", &["x-tenant".into()]));
    }

    #[test]
    fn first_words_come_from_the_newest_prompt_in_every_api() {
        assert_eq!(first_words(&chat_request(false), 4), "My key is sk-live-0123456789abcdef.");
        let gemini = json!({"systemInstruction": {"parts": [{"text": "sys"}]}, "contents": [{"role": "user", "parts": [{"text": "Why is the sky blue?"}]}]});
        assert_eq!(first_words(&gemini, 3), "Why is the");
        assert_eq!(first_words(&json!({"model": "e", "input": ["one two", "three four"]}), 12), "three four");
        assert_eq!(first_words(&json!({"model": "m"}), 5), "");
    }

    #[test]
    fn big_exchanges_are_refused_and_their_buffer_freed() {
        let rec = recorder();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let mut c =
            rec.begin(&route, "/v1/chat/completions", chat_request(true).to_string().as_bytes(), 0, None).unwrap();
        let piece = vec![b'x'; 1 << 20];
        let mut refused = None;
        for i in 0..20 {
            if let Err(e) = c.push_body(&piece, i) {
                refused = Some(e);
                break;
            }
        }
        assert_eq!(refused.unwrap().stat(), "record_failed");
        assert!(c.held_bytes() < 4096, "the buffer is freed at once");
        assert!(rec.finish(c, 0).is_err());
    }

    #[test]
    fn pacing_fits_chunks_to_a_reframed_body_and_scales_time() {
        let p = Pace::fit(&[(100, 10), (150, 10), (300, 20)], 40, 80, 2.0);
        assert_eq!(p.chunks, [(50, 20), (75, 20), (150, 40)]);
        let doc = p.frame(&[7u8; 80]);
        let (back, body) = Pace::unframe(&doc).unwrap();
        assert_eq!((back, body.len()), (p, 80));
        assert!(Pace::unframe(b"{\"chunks\":[[1,5]]}\nabc").is_none(), "lengths must add up");
    }

    #[test]
    fn capture_ids_are_unique() {
        let rec = recorder();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let body = chat_request(false).to_string();
        let ids: std::collections::HashSet<String> =
            (0..100).map(|_| rec.begin(&route, "/v1/chat/completions", body.as_bytes(), 5, None).unwrap().id).collect();
        assert_eq!(ids.len(), 100);
    }

    #[test]
    fn a_collector_with_other_normalization_refuses_the_capture() {
        let doc = capture("/v1/chat/completions", &chat_request(false), 200, chat_answer().to_string().as_bytes(), &[])
            .unwrap();
        let text = serde_json::to_string(&doc).unwrap();
        let other: NormalizationConfig = serde_json::from_value(json!({"ignore_fields": ["/model"]})).unwrap();
        let e = CaptureDoc::parse(&text, &Normalizer::compile(&other).unwrap()).unwrap_err().to_string();
        assert!(e.contains("same normalization"), "{e}");
    }

    #[test]
    fn an_asset_timing_must_describe_its_recorded_body() {
        let check = |v: Value| {
            let r: AssetResponse = serde_json::from_value(v).unwrap();
            crate::asset::validate_response(&r, "response")
        };
        assert!(check(json!({"body_text": "abcdef", "timing": {"chunks": [[5, 2], [9, 4]]}})).is_ok());
        let e = check(json!({"body_text": "abcdef", "timing": {"chunks": [[5, 2], [9, 3]]}})).unwrap_err();
        assert!(e.contains("add up to 5 bytes but the body has 6"), "{e}");
        let e = check(json!({"body_text": "ab", "timing": {"chunks": [[9, 1], [5, 1]]}})).unwrap_err();
        assert!(e.contains("goes back in time"), "{e}");
        let e = check(json!({"body": {}, "timing": {"chunks": []}})).unwrap_err();
        assert!(e.contains("only a recorded body"), "{e}");
        assert!(check(json!({"body_base64": "AAEC", "timing": {"chunks": [[0, 3]]}})).is_ok());
    }

    #[test]
    fn a_secret_in_a_member_name_fails_the_capture_instead_of_leaving() {
        let rec = recorder();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let req = json!({"model": "m", "messages": [], "metadata": {SECRET: 1}});
        assert_eq!(
            rec.begin(&route, "/v1/chat/completions", req.to_string().as_bytes(), 0, None).unwrap_err().stat(),
            "record_failed"
        );
        let mut c =
            rec.begin(&route, "/v1/chat/completions", chat_request(false).to_string().as_bytes(), 0, None).unwrap();
        c.response_headers(200, headers());
        c.push_body(json!({"id": "x", "choices": [], SECRET: true}).to_string().as_bytes(), 0).unwrap();
        assert_eq!(rec.finish(c, 0).unwrap_err().stat(), "record_failed");
    }

    #[test]
    fn a_stream_nobody_asked_for_must_be_whole_too() {
        // Found by the `record` fuzz target: a cut stream answering a non-streaming request was shipped as
        // `body_text`, which the collector then refused.
        let rec = recorder();
        let route = classify("POST", "/v1/responses").unwrap();
        let req = json!({"model": "m", "input": "hi"}).to_string();
        let mut c = rec.begin(&route, "/v1/responses", req.as_bytes(), 0, None).unwrap();
        c.response_headers(200, headers());
        c.push_body(b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"output\":[]}}\n\n", 0).unwrap();
        assert_eq!(rec.finish(c, 0).unwrap_err().stat(), "record_truncated");
    }
}
