//! An asset's answers, compiled for serving: status, headers and body, the strings holding placeholders,
//! a body pre-serialized around the fields refreshed per hit, and a recorded stream.

use std::borrow::Cow;
use std::cell::OnceCell;

use serde_json::{Number, Value};

use crate::asset::{validate_response, AssetResponse};
use crate::dialect::{EmbeddingEncoding, Refresh, Route, Usage};
use crate::headers::is_dropped_header;
use crate::template::{refresh_id, Rng, Template};

/// One step of a path to a string holding placeholders.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// A compiled response of an asset. Kept lean: a big store is held once per worker VM.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    /// The body as served when nothing dynamic applies (empty when `splice` holds it).
    body: Vec<u8>,
    /// The JSON body, kept only when placeholders are expanded per hit; other rewrites parse `body` on demand.
    json: Option<Value>,
    /// Strings holding placeholders.
    pub(crate) templates: Vec<(Vec<Step>, Template)>,
    /// The body pre-serialized around its refreshed fields: the common hit needs no JSON work at all.
    pub(crate) splice: Option<Splice>,
    /// A recorded stream, served (verbatim, or re-framed by the API) to streaming requests.
    pub(crate) stream: Option<Vec<u8>>,
    /// Encoding of an embeddings body.
    pub(crate) embeddings: Option<EmbeddingEncoding>,
    /// An error answer: never streamed or refreshed.
    pub(crate) is_error: bool,
    /// The body is JSON (authored, or assembled from a recorded stream).
    pub(crate) has_json: bool,
    /// Output tokens of the answer (its usage, else estimated), for latency.
    pub(crate) output_tokens: u64,
    /// The usage the answer reports, if it does.
    pub(crate) usage: Option<Usage>,
    /// When the recorded stream's chunks arrived (`[at_ms, bytes]`), for paced replay.
    pub(crate) timing: Option<Box<[(u64, u64)]>>,
}

impl Response {
    /// The stored body bytes.
    pub(crate) fn source(&self) -> Cow<'_, [u8]> {
        match &self.splice {
            Some(s) => Cow::Owned(s.original()),
            None => Cow::Borrowed(&self.body),
        }
    }

    /// The JSON body to rewrite for one hit.
    pub(crate) fn json_for_hit(&self) -> Option<Value> {
        match &self.json {
            Some(v) => Some(v.clone()),
            None => serde_json::from_slice(&self.source()).ok(),
        }
    }

    /// Feeds what [`Response::same_as`] compares into a hash (duplicate detection without keeping answers).
    pub(crate) fn fingerprint(&self, h: &mut sha2::Sha256) {
        use sha2::Digest;
        h.update(self.status.to_le_bytes());
        for (k, v) in &self.headers {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        let source = self.source();
        h.update([0xff, u8::from(self.is_error)]);
        h.update((source.len() as u64).to_le_bytes());
        h.update(&source);
        match &self.stream {
            Some(s) => {
                h.update([1]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s);
            }
            None => h.update([0]),
        }
    }

    /// Same answers (for duplicate-vs-conflict detection of two assets with one key).
    fn same_as(&self, other: &Response) -> bool {
        self.status == other.status
            && self.headers == other.headers
            && self.source() == other.source()
            && self.stream == other.stream
            && self.is_error == other.is_error
    }
}

/// An asset's answers: compiled at load, or — for a sealed bundle, which `understudy bundle` validated before
/// sealing and whose content hash the load verifies — kept as their JSON text and compiled on first use.
/// Compiling every response up front was most of a 100k-asset load, paid by every worker VM.
#[derive(Debug)]
pub(crate) enum Answers {
    Ready(Vec<Response>),
    Deferred {
        /// The JSON of `response` (one) or `responses` (a list).
        raw: Box<str>,
        many: bool,
        compiled: OnceCell<Result<Vec<Response>, String>>,
    },
}

impl Answers {
    /// Compiles typed answers now; an error names the response.
    pub(crate) fn compile(route: &Route, all: Vec<AssetResponse>, many: bool, refresh: bool) -> Result<Self, String> {
        compile_all(route, all, many, refresh).map(Answers::Ready)
    }

    /// Keeps answers as JSON text, compiled on first use.
    pub(crate) fn deferred(raw: &str, many: bool) -> Self {
        Answers::Deferred { raw: raw.into(), many, compiled: OnceCell::new() }
    }

    /// The compiled answers, compiling deferred ones on first use; an error says which response is bad.
    pub(crate) fn get(&self, route: &Route, refresh: bool) -> Result<&[Response], &str> {
        match self {
            Answers::Ready(v) => Ok(v),
            Answers::Deferred { raw, many, compiled } => compiled
                .get_or_init(|| {
                    let all: Vec<AssetResponse> = if *many {
                        serde_json::from_str(raw).map_err(|e| format!("responses: {e}"))?
                    } else {
                        vec![serde_json::from_str(raw).map_err(|e| format!("response: {e}"))?]
                    };
                    if all.is_empty() {
                        return Err("responses: the list is empty".into());
                    }
                    compile_all(route, all, *many, refresh)
                })
                .as_deref()
                .map_err(String::as_str),
        }
    }

    /// Deferred, and compiled (`true`) or not yet.
    #[cfg(test)]
    pub(crate) fn is_deferred(&self, compiled: bool) -> bool {
        matches!(self, Answers::Deferred { compiled: c, .. } if c.get().is_some() == compiled)
    }

    /// Same answers as `other`.
    pub(crate) fn same_as(&self, other: &Answers) -> bool {
        match (self, other) {
            (Answers::Ready(a), Answers::Ready(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_as(y)),
            (Answers::Deferred { raw: a, many: m, .. }, Answers::Deferred { raw: b, many: n, .. }) => a == b && m == n,
            _ => false,
        }
    }
}

/// Validates and compiles an asset's responses; an error names the response.
fn compile_all(route: &Route, all: Vec<AssetResponse>, many: bool, refresh: bool) -> Result<Vec<Response>, String> {
    let mut out = Vec::with_capacity(all.len());
    for (i, r) in all.into_iter().enumerate() {
        let at = if many { format!("responses[{i}]") } else { "response".to_string() };
        validate_response(&r, &at)?;
        out.push(compile_response(route, r, refresh).map_err(|e| format!("{at}{e}"))?);
    }
    Ok(out)
}

/// Compiles one response of an asset recorded on `route`. Errors are suffixes for the `response` /
/// `responses[i]` label (".body_text: ...").
fn compile_response(route: &Route, r: AssetResponse, refresh: bool) -> Result<Response, String> {
    let op = route.operation;
    let dialect = op.dialect();
    let status = r.status();
    let mut headers: Vec<(String, String)> = match &r.headers {
        Some(h) => {
            h.iter().filter(|(k, _)| !is_dropped_header(k)).map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect()
        }
        None => vec![("content-type".to_string(), "application/json".to_string())],
    };
    if let Some(e) = &r.error {
        let body = route.dialect().error_body(route, &e.kind, &e.message, e.code.as_deref());
        if !headers.iter().any(|(k, _)| k == "content-type") {
            headers.push(("content-type".into(), "application/json".into()));
        }
        for (k, v) in route.dialect().error_headers(route, &e.kind) {
            if !headers.iter().any(|(have, _)| *have == k) {
                headers.push((k, v));
            }
        }
        return Ok(Response {
            status,
            headers,
            body: serde_json::to_vec(&body).map_err(|e| format!(".error: {e}"))?,
            json: None,
            templates: Vec::new(),
            splice: None,
            stream: None,
            embeddings: None,
            is_error: true,
            has_json: false,
            output_tokens: 0,
            usage: None,
            timing: None,
        });
    }
    // A recorded stream answers streaming requests verbatim and others with the assembled body.
    let (raw, field) = match (r.body_text, r.body_base64) {
        (Some(t), _) => (Some(t.into_bytes()), ".body_text"),
        (None, Some(b)) => {
            use base64::Engine as _;
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| format!(".body_base64: {e}"))?;
            (Some(bytes), ".body_base64")
        }
        (None, None) => (None, ""),
    };
    let timing = r.timing.map(|t| t.chunks.into_boxed_slice());
    // A stream recorded in the route's framing around another API's events is read in the operation's own.
    let assembled = match &raw {
        Some(t) if r.body.is_none() && status < 400 && op.streams() => {
            let looks = |e| format!("{field}: looks like a stream but {e}");
            let readable = crate::stream::readable(route, t).map_err(looks)?;
            if dialect.is_recorded_stream(op, &readable) {
                Some(dialect.assemble_stream(op, &readable).map_err(looks)?)
            } else {
                None
            }
        }
        _ => None,
    };
    let (json, stream, text) = match (r.body, raw, assembled) {
        (Some(v), _, _) => (Some(v), None, None),
        (None, Some(t), Some(assembled)) => (Some(assembled), Some(t), None),
        (None, t, _) => (None, None, t),
    };
    if stream.is_some() {
        headers.retain(|(k, _)| k != "content-type");
        headers.push(("content-type".into(), "application/json".into()));
    }
    // Placeholders live in authored `body`s only; a recorded stream is a literal recording, served the same
    // streamed or assembled.
    let mut templates = Vec::new();
    if let (Some(v), None) = (&json, &stream) {
        collect_templates(v, &mut Vec::new(), &mut templates).map_err(|e| format!(".body{e}"))?;
    }
    let embeddings = json.as_ref().and_then(|v| dialect.embedding_encoding(op, v));
    let is_error = status >= 400;
    let output_tokens = json.as_ref().map_or(0, |v| output_tokens(route, v));
    let usage = json.as_ref().and_then(|v| dialect.usage(op, v));
    let mut json = json;
    let splice = match json.as_mut() {
        Some(v) if refresh && !is_error && templates.is_empty() => Splice::of(v, dialect.refreshed(op)),
        _ => None,
    };
    let body = match (&splice, &json, text) {
        (Some(_), _, _) => Vec::new(),
        (None, Some(v), _) => serde_json::to_vec(v).map_err(|e| format!(".body: {e}"))?,
        (None, None, Some(t)) => t,
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
        stream,
        embeddings,
        is_error,
        has_json,
        output_tokens,
        usage,
        timing,
    })
}

/// Output tokens of an answer: its usage when it reports one, else estimated from its generated text.
pub(crate) fn output_tokens(route: &Route, v: &Value) -> u64 {
    let dialect = route.operation.dialect();
    match dialect.usage(route.operation, v).filter(|u| u.output > 0) {
        Some(u) => u.output,
        None => crate::tokens::estimate_tokens(&dialect.output_text(route.operation, v)),
    }
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

/// The value at `path` inside `v`.
pub(crate) fn at_path<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |cur, step| match step {
        Step::Key(k) => cur.get_mut(k.as_str()),
        Step::Index(i) => cur.get_mut(*i),
    })
}

/// Refreshes the top-level `fields` of `v` (see [`Refresh`]).
pub(crate) fn refresh(v: &mut Value, fields: &[(&str, Refresh)], now_nanos: u64, ids: &mut Rng) {
    let Some(m) = v.as_object_mut() else { return };
    for (field, kind) in fields {
        match (kind, m.get_mut(*field)) {
            (Refresh::Id, Some(Value::String(id))) => *id = refresh_id(id, ids),
            (Refresh::UnixSeconds, Some(slot @ Value::Number(_))) => {
                *slot = Value::Number(Number::from(now_nanos / 1_000_000_000));
            }
            (Refresh::IsoTime, Some(Value::String(t))) => *t = iso_now(t, now_nanos),
            _ => {}
        }
    }
}

/// Now as RFC 3339 UTC, with as many fractional-second digits as `old` has (Ollama writes nanoseconds).
fn iso_now(old: &str, now_nanos: u64) -> String {
    let secs = crate::template::iso8601(now_nanos / 1_000_000_000);
    let digits = old.split_once('.').map_or(0, |(_, frac)| frac.bytes().take_while(u8::is_ascii_digit).count());
    if digits == 0 {
        return secs;
    }
    let frac = format!("{:09}", now_nanos % 1_000_000_000);
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(digits.min(9)).collect();
    format!("{}.{frac}Z", secs.trim_end_matches('Z'))
}

/// A refreshed field inside a pre-serialized body.
#[derive(Debug, Clone, PartialEq)]
enum Hole {
    /// A string id (its original value): a fresh id of the same shape per hit.
    Id(String),
    /// A number of Unix seconds (its original literal): the current Unix time per hit.
    UnixSeconds(String),
    /// An RFC 3339 time string (its original value): now, in the same precision.
    IsoTime(String),
}

/// A JSON body split around its refreshed fields: `(literal, hole)*` then a literal tail.
#[derive(Debug, Clone)]
pub(crate) struct Splice {
    parts: Vec<(Vec<u8>, Hole)>,
    tail: Vec<u8>,
}

const ID_MARK: &str = "\u{1}understudy-refresh:id\u{1}";
const TIME_MARK: &str = "\u{1}understudy-refresh:time\u{1}";
const ISO_MARK: &str = "\u{1}understudy-refresh:iso\u{1}";

impl Splice {
    /// Splits `json` (an object) around the `fields` [`refresh`] rewrites; `None` when there is nothing to
    /// refresh or the markers can't be found unambiguously. `json` is marked in place and restored before
    /// returning.
    fn of(json: &mut Value, fields: &[(&str, Refresh)]) -> Option<Splice> {
        let m = json.as_object_mut()?;
        let mut holes: Vec<(&str, &'static str, Value)> = Vec::new();
        for (field, kind) in fields {
            let mark = match (kind, m.get(*field)) {
                (Refresh::Id, Some(Value::String(_))) => ID_MARK,
                (Refresh::UnixSeconds, Some(Value::Number(_))) => TIME_MARK,
                (Refresh::IsoTime, Some(Value::String(_))) => ISO_MARK,
                _ => continue,
            };
            if let Some(slot) = m.get_mut(*field) {
                holes.push((field, mark, std::mem::replace(slot, Value::String(mark.into()))));
            }
        }
        if holes.is_empty() {
            return None;
        }
        // The serializer writes keys in sorted order: holes sharing a mark appear in their fields' order.
        holes.sort_by(|a, b| a.0.cmp(b.0));
        let text = serde_json::to_string(&*m);
        let mut originals = Vec::with_capacity(holes.len());
        for (field, mark, original) in holes {
            if let Some(slot) = m.get_mut(field) {
                let hole = match (&original, mark) {
                    (Value::String(t), ISO_MARK) => Some(Hole::IsoTime(t.clone())),
                    (Value::String(id), _) => Some(Hole::Id(id.clone())),
                    (Value::Number(n), _) => Some(Hole::UnixSeconds(n.to_string())),
                    _ => None,
                };
                originals.push((mark, hole));
                *slot = original;
            }
        }
        Self::split(&text.ok()?, originals)
    }

    fn split(text: &str, holes: Vec<(&'static str, Option<Hole>)>) -> Option<Splice> {
        let mut found: Vec<(usize, usize, Hole)> = Vec::new();
        for mark in [ID_MARK, TIME_MARK, ISO_MARK] {
            let quoted = serde_json::to_string(mark).ok()?;
            let mut expected: Vec<Hole> =
                holes.iter().filter(|(m, _)| *m == mark).map(|(_, h)| h.clone()).collect::<Option<_>>()?;
            let positions: Vec<usize> = text.match_indices(quoted.as_str()).map(|(i, _)| i).collect();
            if positions.len() != expected.len() {
                return None;
            }
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
    pub(crate) fn render(&self, now_nanos: u64, ids: &mut Rng) -> Vec<u8> {
        let now = (now_nanos / 1_000_000_000).to_string();
        self.write(|hole, out| match hole {
            Hole::Id(old) => {
                let _ = serde_json::to_writer(out, &refresh_id(old, ids));
            }
            Hole::UnixSeconds(_) => out.extend_from_slice(now.as_bytes()),
            Hole::IsoTime(old) => {
                let _ = serde_json::to_writer(out, &iso_now(old, now_nanos));
            }
        })
    }

    /// The body as stored.
    fn original(&self) -> Vec<u8> {
        self.write(|hole, out| match hole {
            Hole::Id(old) => {
                let _ = serde_json::to_writer(out, old);
            }
            Hole::UnixSeconds(n) => out.extend_from_slice(n.as_bytes()),
            Hole::IsoTime(old) => {
                let _ = serde_json::to_writer(out, old);
            }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIELDS: &[(&str, Refresh)] = &[
        ("id", Refresh::Id),
        ("created", Refresh::UnixSeconds),
        ("created_at", Refresh::UnixSeconds),
        ("stamp", Refresh::IsoTime),
    ];

    #[test]
    fn iso_times_are_refreshed_in_the_same_precision() {
        let now = 1_800_000_000_123_456_789u64;
        assert_eq!(iso_now("2023-08-04T19:22:45Z", now), "2027-01-15T08:00:00Z");
        assert_eq!(iso_now("2023-08-04T19:22:45.499127Z", now), "2027-01-15T08:00:00.123456Z");
        assert_eq!(iso_now("2023-08-04T19:22:45.4991270000Z", now), "2027-01-15T08:00:00.123456789Z");
    }

    /// What the pre-serialized path must produce: the tree rewrite it replaces.
    fn refreshed_by_tree(body: &Value, now: u64, seed: u64) -> Vec<u8> {
        let mut v = body.clone();
        refresh(&mut v, FIELDS, now, &mut Rng::new(seed));
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn splice_renders_exactly_what_the_tree_rewrite_does() {
        let bodies = [
            json!({"id": "chatcmpl-abc123XYZ", "object": "chat.completion", "created": 1700000000, "choices": []}),
            json!({"id": "msg_01AbCdEf", "type": "message", "content": [{"type": "text", "text": "\"quoted\" \u{1}"}]}),
            json!({"id": "resp_1", "created_at": 1.5e9, "created": 12, "output": [{"id": "inner", "created": 3}]}),
            json!({"created": 5, "data": [1, 2, 3]}),
            json!({"model": "llama3.2", "stamp": "2023-08-04T19:22:45.499127Z", "done": true}),
            json!({"id": "weird \" id \\ with \n escapes-and_more", "z": "\u{1}understudy-refresh:idx"}),
        ];
        for body in &bodies {
            let splice = Splice::of(&mut body.clone(), FIELDS).expect("something to refresh");
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
            assert!(Splice::of(&mut marked, FIELDS).is_none(), "{body}");
            assert_eq!(marked, body, "restored");
        }
    }
}
