//! Request normalization and the matching key.
//!
//! A key is `SHA-256("understudy-key/v1\n" + operation + "\n" + canonical_json(normalized_body))`, hex encoded.
//! Normalization sets the path's model as the body's `model` (Azure's deployment, ...), removes the top-level
//! fields the operation's API module says never change an answer ([`crate::dialect`]), the configured JSON
//! Pointers, and rewrites string values with the configured scrubbers. Headers are never part of a key.

mod diff;

pub use diff::{difference_count, first_difference};

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::{write_canonical, write_canonical_object_with, HashSink, Sink};
use crate::dialect::{Operation, Route};
use crate::error::ConfigError;

const KEY_DOMAIN: &str = "understudy-key/v1";

/// User-facing normalization settings (part of the plugin configuration).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizationConfig {
    /// More fields to ignore, as JSON Pointers into the request body; `*` stands for any array element
    /// or object member, e.g. `/messages/*/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_fields: Vec<String>,
    /// Regex rewrites applied to every string value (not to object keys), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scrubbers: Vec<ScrubberConfig>,
}

/// One scrubber: every match of `pattern` in a string value becomes `placeholder`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubberConfig {
    /// A Rust `regex` pattern.
    pub pattern: String,
    /// Replacement text; `$1`-style group references are not expanded.
    pub placeholder: String,
}

/// Compiled normalization settings.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    ignore: Vec<Vec<String>>,
    scrubbers: Vec<(Regex, String)>,
}

impl Normalizer {
    /// Validates and compiles `cfg`; errors name the offending field.
    pub fn compile(cfg: &NormalizationConfig) -> Result<Self, ConfigError> {
        let mut ignore = Vec::with_capacity(cfg.ignore_fields.len());
        for (i, p) in cfg.ignore_fields.iter().enumerate() {
            let segs =
                parse_pointer(p).map_err(|e| ConfigError::invalid(format!("normalization.ignore_fields[{i}]"), e))?;
            ignore.push(segs);
        }
        let mut scrubbers = Vec::with_capacity(cfg.scrubbers.len());
        for (i, s) in cfg.scrubbers.iter().enumerate() {
            let re = Regex::new(&s.pattern)
                .map_err(|e| ConfigError::invalid(format!("normalization.scrubbers[{i}].pattern"), e.to_string()))?;
            if re.is_match("") {
                return Err(ConfigError::invalid(
                    format!("normalization.scrubbers[{i}].pattern"),
                    format!("{:?} matches the empty string, which would rewrite every value", s.pattern),
                ));
            }
            scrubbers.push((re, s.placeholder.clone()));
        }
        Ok(Normalizer { ignore, scrubbers })
    }

    /// Normalizes a parsed request body in place for `route`.
    pub fn normalize(&self, route: &Route, body: &mut Value) -> Result<(), crate::RequestError> {
        let obj = body.as_object_mut().ok_or(crate::RequestError::NotAnObject)?;
        if let Some(model) = &route.model {
            obj.insert("model".to_string(), Value::String(model.clone()));
        }
        let dialect = route.operation.dialect();
        obj.retain(|k, v| !dialect.ignored_member(route.operation, k, v));
        for segs in &self.ignore {
            remove_pointer(body, segs);
        }
        if !self.scrubbers.is_empty() {
            self.scrub(body);
        }
        Ok(())
    }

    fn scrub(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                for (re, placeholder) in &self.scrubbers {
                    if re.is_match(s) {
                        *s = re.replace_all(s, regex::NoExpand(placeholder)).into_owned();
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.scrub(x)),
            Value::Object(m) => m.values_mut().for_each(|x| self.scrub(x)),
            _ => {}
        }
    }

    /// The key of an already normalized body.
    pub fn key_of_normalized(operation: Operation, normalized: &Value) -> String {
        let mut sink = HashSink::default();
        Self::header(operation, &mut sink);
        write_canonical(normalized, &mut sink);
        hex(&sink.finish())
    }

    /// The key of an already normalized body and the body's canonical JSON if it is at most `cap` bytes (kept
    /// by the store for matching and miss diagnostics). One walk; a bigger body is never held as text.
    pub fn key_and_canonical(operation: Operation, normalized: &Value, cap: usize) -> (String, Option<String>) {
        let mut tee = Tee { hash: HashSink::default(), text: CappedString { text: String::new(), cap, over: false } };
        Self::header(operation, &mut tee.hash);
        write_canonical(normalized, &mut tee);
        let text = if tee.text.over { None } else { Some(tee.text.text) };
        (hex(&tee.hash.finish()), text)
    }

    fn header<S: Sink>(operation: Operation, out: &mut S) {
        out.put(KEY_DOMAIN);
        out.put("\n");
        out.put(operation.name());
        out.put("\n");
    }

    /// Does normalization drop what `segs` (a parsed JSON Pointer, `*` for any member) points at, so that
    /// whatever is there never counts in a key? An `ignore_fields` pointer covers it when it names it or one
    /// of its parents (`*` covering any segment); a top-level field some API always ignores covers it too
    /// (e.g. `/user`, `/metadata/user_id`).
    pub(crate) fn drops(&self, segs: &[String]) -> bool {
        let covered = self
            .ignore
            .iter()
            .any(|ig| ig.len() <= segs.len() && ig.iter().zip(segs).all(|(i, s)| i == "*" || (i == s && s != "*")));
        covered || segs.first().is_some_and(|top| Operation::ALL.iter().any(|op| op.dialect().ignored(*op, top)))
    }

    /// Does normalization rewrite every match of `pattern` to `placeholder` (a scrubber with exactly these)?
    pub(crate) fn scrubs(&self, pattern: &str, placeholder: &str) -> bool {
        self.scrubbers.iter().any(|(re, p)| re.as_str() == pattern && p == placeholder)
    }

    /// True when normalization only drops the always-ignored top-level fields (no `ignore_fields`, no
    /// scrubbers): then [`Normalizer::key_of_request`] needs no copy of the request.
    pub fn is_plain(&self) -> bool {
        self.ignore.is_empty() && self.scrubbers.is_empty()
    }

    /// The key of a parsed, not yet normalized request. With a plain normalization the canonical text is
    /// written straight from `request`, skipping ignored members, into the hash: no copy of a big body is made.
    /// Otherwise it normalizes a copy.
    pub fn key_of_request(&self, route: &Route, request: &Value) -> Result<String, crate::RequestError> {
        let obj = request.as_object().ok_or(crate::RequestError::NotAnObject)?;
        if !self.is_plain() {
            let mut v = request.clone();
            self.normalize(route, &mut v)?;
            return Ok(Self::key_of_normalized(route.operation, &v));
        }
        let dialect = route.operation.dialect();
        let skip = |k: &str, v: &Value| dialect.ignored_member(route.operation, k, v);
        let mut sink = HashSink::default();
        Self::header(route.operation, &mut sink);
        let set = route.model.as_deref().map(|m| ("model", m));
        write_canonical_object_with(obj, skip, set, &mut sink);
        Ok(hex(&sink.finish()))
    }

    /// The canonical text of a parsed, not yet normalized request, if it is at most `cap` bytes (`None`
    /// beyond: then use [`Normalizer::key_of_request`], which never holds the text). With a plain
    /// normalization nothing is copied but the text itself.
    pub fn canonical_of_request(
        &self,
        route: &Route,
        request: &Value,
        cap: usize,
    ) -> Result<Option<String>, crate::RequestError> {
        let obj = request.as_object().ok_or(crate::RequestError::NotAnObject)?;
        let mut out = CappedString { text: String::with_capacity(512), cap, over: false };
        if self.is_plain() {
            let dialect = route.operation.dialect();
            let skip = |k: &str, v: &Value| dialect.ignored_member(route.operation, k, v);
            let set = route.model.as_deref().map(|m| ("model", m));
            write_canonical_object_with(obj, skip, set, &mut out);
        } else {
            let mut v = request.clone();
            self.normalize(route, &mut v)?;
            write_canonical(&v, &mut out);
        }
        Ok(if out.over { None } else { Some(out.text) })
    }

    /// The first `cap` bytes (about: whole pieces) of a value's canonical text, never more.
    pub fn canonical_prefix(v: &Value, cap: usize) -> String {
        let mut out = CappedString { text: String::new(), cap, over: false };
        write_canonical(v, &mut out);
        out.text
    }

    /// The key of a normalized body given as canonical text (see [`Normalizer::canonical_of_request`]).
    pub fn key_of_canonical(operation: Operation, canonical: &str) -> String {
        let mut sink = HashSink::default();
        Self::header(operation, &mut sink);
        sink.put(canonical);
        hex(&sink.finish())
    }

    /// Parses, normalizes and hashes a raw request body. Returns the key and the normalized body.
    pub fn key(&self, route: &Route, body: &[u8]) -> Result<(String, Value), crate::RequestError> {
        let mut v = crate::parse_body(body)?;
        self.normalize(route, &mut v)?;
        Ok((Self::key_of_normalized(route.operation, &v), v))
    }
}

/// The start of the canonical text of `v`: at most `cap` bytes, never the whole of a big body (miss
/// diagnostics rank candidates by their common start).
pub fn canonical_prefix(v: &Value, cap: usize) -> String {
    let mut out = CappedString { text: String::new(), cap, over: false };
    write_canonical(v, &mut out);
    out.text
}

/// Canonical text into the hash and, up to its cap, into a string.
struct Tee {
    hash: HashSink,
    text: CappedString,
}

impl Sink for Tee {
    fn put(&mut self, s: &str) {
        self.hash.put(s);
        self.text.put(s);
    }
}

/// Canonical text up to a size; past it, writing stops and `over` is set.
struct CappedString {
    text: String,
    cap: usize,
    over: bool,
}

impl Sink for CappedString {
    fn put(&mut self, s: &str) {
        if self.over || self.text.len() + s.len() > self.cap {
            self.over = true;
            return;
        }
        self.text.push_str(s);
    }
}

/// A JSON Pointer's segments (`~1` and `~0` decoded); `*` stays a wildcard for any member or element.
pub(crate) fn parse_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() || !p.starts_with('/') {
        return Err(format!("{p:?} is not a JSON Pointer (must start with '/')"));
    }
    let mut segs = Vec::new();
    for raw in p.split('/').skip(1) {
        if raw.contains('~') && !valid_pointer_escapes(raw) {
            return Err(format!("{p:?} has an invalid '~' escape (use ~0 or ~1)"));
        }
        segs.push(raw.replace("~1", "/").replace("~0", "~"));
    }
    Ok(segs)
}

fn valid_pointer_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().all(|(i, &c)| c != b'~' || matches!(b.get(i + 1), Some(b'0') | Some(b'1')))
}

fn remove_pointer(v: &mut Value, segs: &[String]) {
    let Some((first, rest)) = segs.split_first() else {
        return;
    };
    if rest.is_empty() {
        match v {
            Value::Object(m) if first == "*" => m.clear(),
            Value::Object(m) => {
                m.remove(first);
            }
            Value::Array(a) if first == "*" => a.clear(),
            Value::Array(a) => {
                if let Ok(i) = first.parse::<usize>() {
                    if i < a.len() {
                        a.remove(i);
                    }
                }
            }
            _ => {}
        }
        return;
    }
    match v {
        Value::Object(m) if first == "*" => m.values_mut().for_each(|x| remove_pointer(x, rest)),
        Value::Object(m) => {
            if let Some(x) = m.get_mut(first) {
                remove_pointer(x, rest)
            }
        }
        Value::Array(a) if first == "*" => a.iter_mut().for_each(|x| remove_pointer(x, rest)),
        Value::Array(a) => {
            if let Some(x) = first.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                remove_pointer(x, rest)
            }
        }
        _ => {}
    }
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let digit = |n: u8| char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 });
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(digit(b >> 4));
        s.push(digit(b & 15));
    }
    s
}
