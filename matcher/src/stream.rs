//! Streaming (Server-Sent Events) forms of LLM responses.
//!
//! [`render_sse`] turns a recorded non-streaming response body into the SSE stream the live API sends when
//! the request says `"stream": true`, so one asset answers both kinds of client. [`assemble_sse`] does the
//! reverse for assets recorded as streams (`response.body_text` holding SSE): it yields the body the
//! non-streaming API would have returned. Both are pure and never panic; bad input is a [`StreamError`]
//! that names the field or the event.
//!
//! The grammars follow the live APIs and the official SDKs' stream accumulators:
//!
//! - OpenAI chat completions: `data: {chat.completion.chunk}` lines, an opening delta per choice with the
//!   role, text pieces, tool-call headers then argument pieces, a closing delta with `finish_reason`, an
//!   optional usage chunk (`stream_options.include_usage`), then `data: [DONE]`.
//! - OpenAI legacy completions: `text_completion` chunks with `choices[].text` pieces, the same ending.
//! - OpenAI responses: `event: response.*` events with strictly increasing `sequence_number`, from
//!   `response.created` to `response.completed` (or `.incomplete` / `.failed`), no `[DONE]`.
//! - Anthropic messages: `message_start`, `ping`, `content_block_start` / `_delta` / `_stop` per block,
//!   `message_delta` (stop reason, cumulative usage), `message_stop`.
//!
//! Embeddings have no streaming form: [`StreamError::NotStreamable`].
//!
//! ```
//! use serde_json::json;
//! use understudy_matcher::stream::{assemble_sse, render_sse, StreamOptions};
//! use understudy_matcher::Operation;
//!
//! let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
//!     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}]});
//! let sse = render_sse(Operation::ChatCompletions, &body, &StreamOptions::default()).unwrap();
//! assert!(sse.starts_with("data: {") && sse.ends_with("data: [DONE]\n\n"));
//! let back = assemble_sse(Operation::ChatCompletions, &sse).unwrap();
//! assert_eq!(back["choices"][0]["message"]["content"], "Paris.");
//! ```

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::dialect::Operation;

/// The `content-type` of a streamed response, as OpenAI and Anthropic send it.
pub const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";

/// Default target size of one streamed text piece, in chars.
pub const DEFAULT_CHUNK_CHARS: usize = 8;

/// How to render a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// OpenAI `stream_options.include_usage`: every chunk carries `"usage": null` and a last chunk with
    /// `choices: []` carries the body's usage. Ignored by the responses and Anthropic grammars, which always
    /// report usage.
    pub include_usage: bool,
    /// Target size of a text or arguments piece, in chars. Pieces end early before whitespace, so words
    /// arrive whole like tokens (`"The"`, `" capital"`); longer words are cut. `0` sends each text whole.
    pub chunk_chars: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { include_usage: false, chunk_chars: DEFAULT_CHUNK_CHARS }
    }
}

impl StreamOptions {
    /// The options a request body asks for (`stream_options.include_usage`), with the default piece size.
    pub fn from_request(request: &Value) -> Self {
        let include_usage = request
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        StreamOptions { include_usage, ..StreamOptions::default() }
    }
}

/// Does this request body ask for a streamed response (`"stream": true`)?
pub fn wants_stream(request: &Value) -> bool {
    request.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// Why a body could not be rendered as a stream, or a stream could not be assembled into a body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StreamError {
    /// The operation has no streaming form (embeddings).
    #[error("{0} responses have no streaming form")]
    NotStreamable(Operation),
    /// The response body lacks a field the stream needs, or holds one of the wrong type.
    #[error("{op}: cannot stream this response body: `{field}` {reason}")]
    BadBody {
        /// The operation.
        op: Operation,
        /// Path of the field in the body, e.g. `choices[0].message.tool_calls[1].function.arguments`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An event of the stream can't be used.
    #[error("{op}: SSE event #{index} ({event}, line {line}): {reason}")]
    BadEvent {
        /// The operation.
        op: Operation,
        /// 0-based position of the event in the stream.
        index: usize,
        /// Its `event:` name, or the `type` of its data, or `message`.
        event: String,
        /// 1-based line where the event starts.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The stream ended without an event it needs.
    #[error("{op}: the stream has no `{event}` event")]
    MissingEvent {
        /// The operation.
        op: Operation,
        /// The missing event.
        event: &'static str,
    },
    /// The rendered stream would be longer than an answer may be (a third of `limits::ANSWER_BUDGET`, so that
    /// the text and the buffer it grows from fit the budget).
    #[error("{op}: the rendered stream would be longer than {limit} bytes (ANSWER_BUDGET, see docs/limits.md)")]
    TooLarge {
        /// The operation.
        op: Operation,
        /// The cap in bytes.
        limit: usize,
    },
    /// The recorded stream itself carries an API error.
    #[error("{op}: the recorded stream reports an error: {message}")]
    Upstream {
        /// The operation.
        op: Operation,
        /// The API's message (or the whole error object).
        message: String,
    },
}

fn bad(op: Operation, field: impl Into<String>, reason: impl Into<String>) -> StreamError {
    StreamError::BadBody { op, field: field.into(), reason: reason.into() }
}

/// Renders a non-streaming response `body` of `op` as the SSE stream the live API sends.
pub fn render_sse(op: Operation, body: &Value, opts: &StreamOptions) -> Result<String, StreamError> {
    match op {
        Operation::ChatCompletions => render_chat(body, opts),
        Operation::Completions => render_completions(body, opts),
        Operation::Responses => render_responses(body, opts),
        Operation::Messages => render_messages(body, opts),
        Operation::Embeddings => Err(StreamError::NotStreamable(op)),
    }
}

/// Assembles a recorded SSE stream of `op` into the body the non-streaming API returns.
/// Tolerates `\r\n` / `\r` line ends, comments, multi-line `data:` fields and a missing final blank line.
pub fn assemble_sse(op: Operation, sse: &str) -> Result<Value, StreamError> {
    let events = parse_sse(sse);
    match op {
        Operation::ChatCompletions => assemble_chat(&events),
        Operation::Completions => assemble_completions(&events),
        Operation::Responses => assemble_responses(&events),
        Operation::Messages => assemble_messages(&events),
        Operation::Embeddings => Err(StreamError::NotStreamable(op)),
    }
}

/// Heuristic: does `text` look like an SSE stream? True when its first line that is neither blank nor a
/// comment is a `data:` or `event:` field.
pub fn is_sse(text: &str) -> bool {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for line in lines(text).take(256) {
        if line.trim().is_empty() || line.starts_with(':') {
            continue;
        }
        return line.starts_with("data:") || line.starts_with("event:");
    }
    false
}

// ---------------------------------------------------------------------------------------------------------
// Writing

/// Keys first in this order when serializing (the live APIs' order, roughly); the rest alphabetically.
const KEY_ORDER: &[&str] = &[
    "type",
    "id",
    "object",
    "created",
    "created_at",
    "sequence_number",
    "response",
    "model",
    "role",
    "item_id",
    "index",
    "output_index",
    "content_index",
    "summary_index",
    "annotation_index",
    "status",
    "service_tier",
    "system_fingerprint",
    "choices",
    "delta",
    "message",
    "content_block",
    "part",
    "item",
    "text",
    "content",
    "refusal",
    "name",
    "call_id",
    "arguments",
    "input",
    "tool_calls",
    "function",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "stop_sequence",
    "usage",
];

/// A chat tool call (delta) reads `index, id, type, function`, unlike events where `type` leads.
const TOOL_CALL_ORDER: &[&str] = &["index", "id", "type", "function", "custom"];

fn key_rank(order: &[&str], k: &str) -> usize {
    order.iter().position(|x| *x == k).unwrap_or(order.len())
}

/// Compact JSON with [`KEY_ORDER`] key order. (serde_json's map is sorted, which reads oddly in a stream.)
fn write_json(out: &mut String, v: &Value) {
    match v {
        Value::Object(m) => {
            let order = if m.contains_key("index") && m.contains_key("id") { TOOL_CALL_ORDER } else { KEY_ORDER };
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by_key(|(k, _)| key_rank(order, k));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_json(out, v);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

#[derive(Default)]
struct Sse {
    out: String,
    seq: u64,
    /// The stream went over `SSE_CAP` and stopped growing (`finish` reports it).
    over: bool,
}

/// The longest rendered stream: a third of the answer budget (the text and the buffer it grows from).
const SSE_CAP: usize = (crate::limits::ANSWER_BUDGET / 3) as usize;

impl Sse {
    fn data(&mut self, v: &Value) {
        // Past the cap nothing more is written: the renderer's result is an error (`finish`), never a trap.
        if self.over || self.out.len() > SSE_CAP {
            self.over = true;
            return;
        }
        self.out.push_str("data: ");
        write_json(&mut self.out, v);
        self.out.push_str("\n\n");
    }

    fn named(&mut self, name: &str, v: &Value) {
        self.out.push_str("event: ");
        self.out.push_str(name);
        self.out.push('\n');
        self.data(v);
    }

    /// A responses event: `type` and the next `sequence_number` are added to `fields`.
    fn sequenced(&mut self, ty: &str, mut fields: Map<String, Value>) {
        fields.insert("type".into(), ty.into());
        fields.insert("sequence_number".into(), self.seq.into());
        self.seq = self.seq.saturating_add(1);
        self.named(ty, &Value::Object(fields));
    }

    fn done(mut self, op: Operation) -> Result<String, StreamError> {
        self.out.push_str("data: [DONE]\n\n");
        self.finish(op)
    }

    fn finish(self, op: Operation) -> Result<String, StreamError> {
        if self.over {
            return Err(StreamError::TooLarge { op, limit: SSE_CAP });
        }
        Ok(self.out)
    }
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn obj<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(map(entries))
}

/// Splits `text` into pieces of about `max` chars, always on char boundaries. A piece also ends before
/// whitespace that follows a word, so the whitespace leads the next piece, like model tokens do.
fn pieces(text: &str, max: usize) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    if max == 0 {
        return vec![text];
    }
    let mut out = Vec::new();
    let (mut start, mut n, mut has_word) = (0usize, 0usize, false);
    for (i, c) in text.char_indices() {
        if i > start && (n >= max || (c.is_whitespace() && has_word)) {
            out.extend(text.get(start..i));
            start = i;
            n = 0;
            has_word = false;
        }
        n += 1;
        has_word |= !c.is_whitespace();
    }
    out.extend(text.get(start..));
    out
}

fn path_of(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn as_object<'a>(op: Operation, v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, StreamError> {
    v.as_object().ok_or_else(|| bad(op, if path.is_empty() { "(body)" } else { path }, "must be a JSON object"))
}

fn req_str<'a>(op: Operation, o: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, StreamError> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s),
        None => Err(bad(op, path_of(at, key), "is missing")),
        Some(_) => Err(bad(op, path_of(at, key), "must be a string")),
    }
}

fn opt_str<'a>(op: Operation, o: &'a Map<String, Value>, key: &str, at: &str) -> Result<Option<&'a str>, StreamError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(op, path_of(at, key), "must be a string or null")),
    }
}

fn req_array<'a>(op: Operation, o: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a [Value], StreamError> {
    match o.get(key) {
        Some(Value::Array(a)) => Ok(a),
        None => Err(bad(op, path_of(at, key), "is missing")),
        Some(_) => Err(bad(op, path_of(at, key), "must be an array")),
    }
}

fn opt_array<'a>(op: Operation, o: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a [Value], StreamError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(bad(op, path_of(at, key), "must be an array or null")),
    }
}

fn copy_keys(from: &Map<String, Value>, to: &mut Map<String, Value>, keys: &[&str]) {
    for k in keys {
        if let Some(v) = from.get(*k) {
            to.insert((*k).to_string(), v.clone());
        }
    }
}

/// Choices sorted by their `index` (position when absent), with their position in the body.
fn sorted_choices(choices: &[Value]) -> Vec<(u64, usize, &Value)> {
    let mut v: Vec<(u64, usize, &Value)> = choices
        .iter()
        .enumerate()
        .map(|(pos, c)| (c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64), pos, c))
        .collect();
    v.sort_by_key(|(index, pos, _)| (*index, *pos));
    v
}

/// Round-robin over the per-choice entry lists, as the live API interleaves choices when `n > 1`.
fn interleave(lists: Vec<Vec<Value>>) -> Vec<Value> {
    let mut iters: Vec<std::vec::IntoIter<Value>> = lists.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for it in iters.iter_mut() {
            out.extend(it.next());
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Logprob entries whose tokens concatenate exactly to `text`: then each token is one streamed piece.
fn aligned_tokens<'a>(text: &str, entries: &'a [Value]) -> Option<Vec<(&'a str, &'a Value)>> {
    let mut joined = String::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let t = e.get("token")?.as_str()?;
        joined.push_str(t);
        out.push((t, e));
    }
    (joined == text && !out.is_empty()).then_some(out)
}

// ---------------------------------------------------------------------------------------------------------
// OpenAI chat completions

fn render_chat(body: &Value, opts: &StreamOptions) -> Result<String, StreamError> {
    let op = Operation::ChatCompletions;
    let b = as_object(op, body, "")?;
    let choices = req_array(op, b, "choices", "")?;
    let mut base = Map::new();
    copy_keys(b, &mut base, &["id"]);
    base.insert("object".into(), "chat.completion.chunk".into());
    copy_keys(b, &mut base, &["created", "model", "service_tier", "system_fingerprint"]);
    if opts.include_usage {
        base.insert("usage".into(), Value::Null);
    }
    let mut per_choice = Vec::with_capacity(choices.len());
    for (index, pos, choice) in sorted_choices(choices) {
        per_choice.push(chat_choice(op, index, pos, choice, opts)?);
    }
    let mut sse = Sse::default();
    for entry in interleave(per_choice) {
        let mut chunk = base.clone();
        chunk.insert("choices".into(), Value::Array(vec![entry]));
        sse.data(&Value::Object(chunk));
    }
    if opts.include_usage {
        let mut chunk = base;
        chunk.insert("choices".into(), Value::Array(Vec::new()));
        chunk.insert("usage".into(), b.get("usage").cloned().unwrap_or(Value::Null));
        sse.data(&Value::Object(chunk));
    }
    sse.done(op)
}

/// The `choices[]` entries (one per chunk) that stream one choice.
fn chat_choice(
    op: Operation,
    index: u64,
    pos: usize,
    choice: &Value,
    opts: &StreamOptions,
) -> Result<Vec<Value>, StreamError> {
    let at = format!("choices[{pos}]");
    let c = as_object(op, choice, &at)?;
    let m_at = format!("{at}.message");
    let msg = as_object(op, c.get("message").unwrap_or(&Value::Null), &m_at)?;
    let content = opt_str(op, msg, "content", &m_at)?;
    let refusal = opt_str(op, msg, "refusal", &m_at)?;
    let annotations = opt_array(op, msg, "annotations", &m_at)?;
    let tool_calls = opt_array(op, msg, "tool_calls", &m_at)?;
    let calls = tool_calls
        .iter()
        .enumerate()
        .map(|(k, tc)| tool_call_deltas(op, &format!("{m_at}.tool_calls[{k}]"), k, tc, opts))
        .collect::<Result<Vec<_>, _>>()?;
    let mut logprobs = c.get("logprobs").filter(|v| !v.is_null()).cloned();

    // (delta, logprobs) per chunk.
    let mut deltas: Vec<(Value, Value)> = Vec::new();
    let mut opening = Map::new();
    opening.insert("role".into(), msg.get("role").cloned().unwrap_or_else(|| "assistant".into()));
    opening.insert("content".into(), content.map_or(Value::Null, |_| "".into()));
    opening.insert("refusal".into(), refusal.map_or(Value::Null, |_| "".into()));
    // Like the live API, a message with only tool calls opens with its first tool call's header.
    let open_with_call = content.is_none() && refusal.is_none();
    if open_with_call {
        if let Some((header, _)) = calls.first() {
            opening.insert("tool_calls".into(), Value::Array(vec![header.clone()]));
        }
    }
    deltas.push((Value::Object(opening), Value::Null));

    let mut first_text: Option<usize> = None;
    if let Some(text) = content {
        let refusal_lp_empty = logprobs
            .as_ref()
            .and_then(|l| l.get("refusal"))
            .is_none_or(|r| r.is_null() || r.as_array().is_some_and(Vec::is_empty));
        let aligned = logprobs
            .as_ref()
            .and_then(|l| l.get("content"))
            .and_then(Value::as_array)
            .filter(|_| refusal_lp_empty)
            .and_then(|entries| aligned_tokens(text, entries));
        if let Some(tokens) = aligned {
            for (token, entry) in tokens {
                let lp = obj([("content", Value::Array(vec![entry.clone()])), ("refusal", Value::Null)]);
                deltas.push((obj([("content", token.into())]), lp));
            }
            logprobs = None;
        } else {
            for p in pieces(text, opts.chunk_chars) {
                first_text.get_or_insert(deltas.len());
                deltas.push((obj([("content", p.into())]), Value::Null));
            }
        }
    }
    if let Some(text) = refusal {
        for p in pieces(text, opts.chunk_chars) {
            first_text.get_or_insert(deltas.len());
            deltas.push((obj([("refusal", p.into())]), Value::Null));
        }
    }
    if !annotations.is_empty() {
        deltas.push((obj([("annotations", Value::Array(annotations.to_vec()))]), Value::Null));
    }
    if let Some(audio) = msg.get("audio").filter(|v| !v.is_null()) {
        deltas.push((obj([("audio", audio.clone())]), Value::Null));
    }
    if let Some(fc) = msg.get("function_call").filter(|v| !v.is_null()) {
        let f_at = format!("{m_at}.function_call");
        let f = as_object(op, fc, &f_at)?;
        let args = req_str(op, f, "arguments", &f_at)?;
        let mut head = f.clone();
        head.insert("arguments".into(), "".into());
        deltas.push((obj([("function_call", Value::Object(head))]), Value::Null));
        for p in pieces(args, opts.chunk_chars) {
            deltas.push((obj([("function_call", obj([("arguments", p.into())]))]), Value::Null));
        }
    }
    for (k, (header, rest)) in calls.into_iter().enumerate() {
        if !(k == 0 && open_with_call) {
            deltas.push((obj([("tool_calls", Value::Array(vec![header]))]), Value::Null));
        }
        for p in rest {
            deltas.push((obj([("tool_calls", Value::Array(vec![p]))]), Value::Null));
        }
    }
    if let Some(lp) = logprobs {
        if let Some(slot) = deltas.get_mut(first_text.unwrap_or(0)) {
            slot.1 = lp;
        }
    }

    let finish = c.get("finish_reason").cloned().unwrap_or(Value::Null);
    let mut out: Vec<Value> = deltas
        .into_iter()
        .map(|(delta, lp)| {
            obj([("index", index.into()), ("delta", delta), ("logprobs", lp), ("finish_reason", Value::Null)])
        })
        .collect();
    out.push(obj([
        ("index", index.into()),
        ("delta", Value::Object(Map::new())),
        ("logprobs", Value::Null),
        ("finish_reason", finish),
    ]));
    Ok(out)
}

/// A tool call's header delta (`index`, `id`, `type`, name, empty arguments) and its argument pieces.
fn tool_call_deltas(
    op: Operation,
    at: &str,
    k: usize,
    tc: &Value,
    opts: &StreamOptions,
) -> Result<(Value, Vec<Value>), StreamError> {
    let t = as_object(op, tc, at)?;
    let ty = match t.get("type") {
        None | Some(Value::Null) => "function",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad(op, path_of(at, "type"), "must be a string")),
    };
    let p_at = path_of(at, ty);
    let payload = as_object(op, t.get(ty).unwrap_or(&Value::Null), &p_at)?;
    // Function calls stream `arguments`; custom tool calls stream `input`.
    let field = if payload.contains_key("arguments") || !payload.contains_key("input") { "arguments" } else { "input" };
    let args = req_str(op, payload, field, &p_at)?;
    let mut head_payload = payload.clone();
    head_payload.insert(field.into(), "".into());
    let mut header = t.clone();
    header.insert("index".into(), k.into());
    header.insert("type".into(), ty.into());
    header.insert(ty.into(), Value::Object(head_payload));
    let rest = pieces(args, opts.chunk_chars)
        .into_iter()
        .map(|p| {
            let mut d = Map::new();
            d.insert("index".into(), k.into());
            d.insert(ty.into(), obj([(field, p.into())]));
            Value::Object(d)
        })
        .collect();
    Ok((Value::Object(header), rest))
}

// ---------------------------------------------------------------------------------------------------------
// OpenAI legacy completions

fn render_completions(body: &Value, opts: &StreamOptions) -> Result<String, StreamError> {
    let op = Operation::Completions;
    let b = as_object(op, body, "")?;
    let choices = req_array(op, b, "choices", "")?;
    let mut base = Map::new();
    copy_keys(b, &mut base, &["id"]);
    base.insert("object".into(), "text_completion".into());
    copy_keys(b, &mut base, &["created", "model", "system_fingerprint"]);
    if opts.include_usage {
        base.insert("usage".into(), Value::Null);
    }
    let mut per_choice = Vec::with_capacity(choices.len());
    for (index, pos, choice) in sorted_choices(choices) {
        let at = format!("choices[{pos}]");
        let c = as_object(op, choice, &at)?;
        let text = req_str(op, c, "text", &at)?;
        let mut logprobs = c.get("logprobs").filter(|v| !v.is_null()).cloned();
        let entry = |text: &str, lp: Value, finish: Value| {
            obj([("text", text.into()), ("index", index.into()), ("logprobs", lp), ("finish_reason", finish)])
        };
        let mut entries: Vec<Value> = pieces(text, opts.chunk_chars)
            .into_iter()
            .map(|p| entry(p, logprobs.take().unwrap_or(Value::Null), Value::Null))
            .collect();
        let finish = c.get("finish_reason").cloned().unwrap_or(Value::Null);
        entries.push(entry("", logprobs.take().unwrap_or(Value::Null), finish));
        per_choice.push(entries);
    }
    let mut sse = Sse::default();
    for entry in interleave(per_choice) {
        let mut chunk = base.clone();
        chunk.insert("choices".into(), Value::Array(vec![entry]));
        sse.data(&Value::Object(chunk));
    }
    if opts.include_usage {
        let mut chunk = base;
        chunk.insert("choices".into(), Value::Array(Vec::new()));
        chunk.insert("usage".into(), b.get("usage").cloned().unwrap_or(Value::Null));
        sse.data(&Value::Object(chunk));
    }
    sse.done(op)
}

// ---------------------------------------------------------------------------------------------------------
// OpenAI responses

fn render_responses(body: &Value, opts: &StreamOptions) -> Result<String, StreamError> {
    let op = Operation::Responses;
    let b = as_object(op, body, "")?;
    let output = req_array(op, b, "output", "")?;
    let mut s = Sse::default();
    let mut start = b.clone();
    start.insert("status".into(), "in_progress".into());
    start.insert("output".into(), Value::Array(Vec::new()));
    for k in ["usage", "completed_at", "error", "incomplete_details"] {
        if let Some(v) = start.get_mut(k) {
            *v = Value::Null;
        }
    }
    s.sequenced("response.created", map([("response", Value::Object(start.clone()))]));
    s.sequenced("response.in_progress", map([("response", Value::Object(start))]));
    for (oi, item) in output.iter().enumerate() {
        let at = format!("output[{oi}]");
        let it = as_object(op, item, &at)?;
        let ty = req_str(op, it, "type", &at)?;
        let mut added = it.clone();
        if matches!(ty, "message" | "function_call" | "custom_tool_call") || added.contains_key("status") {
            added.insert("status".into(), "in_progress".into());
        }
        match ty {
            "message" => {
                let id = req_str(op, it, "id", &at)?;
                let parts = req_array(op, it, "content", &at)?;
                added.insert("content".into(), Value::Array(Vec::new()));
                s.sequenced(
                    "response.output_item.added",
                    map([("output_index", oi.into()), ("item", Value::Object(added))]),
                );
                for (ci, part) in parts.iter().enumerate() {
                    message_part(&mut s, op, &format!("{at}.content[{ci}]"), id, oi, ci, part, opts)?;
                }
            }
            "function_call" | "custom_tool_call" => {
                let id = req_str(op, it, "id", &at)?;
                let (field, delta_ty, done_ty) = if ty == "function_call" {
                    ("arguments", "response.function_call_arguments.delta", "response.function_call_arguments.done")
                } else {
                    ("input", "response.custom_tool_call_input.delta", "response.custom_tool_call_input.done")
                };
                let args = req_str(op, it, field, &at)?;
                added.insert(field.into(), "".into());
                s.sequenced(
                    "response.output_item.added",
                    map([("output_index", oi.into()), ("item", Value::Object(added))]),
                );
                for p in pieces(args, opts.chunk_chars) {
                    s.sequenced(
                        delta_ty,
                        map([("item_id", id.into()), ("output_index", oi.into()), ("delta", p.into())]),
                    );
                }
                s.sequenced(done_ty, map([("item_id", id.into()), ("output_index", oi.into()), (field, args.into())]));
            }
            "reasoning" => {
                let id = req_str(op, it, "id", &at)?;
                let summary = opt_array(op, it, "summary", &at)?;
                added.insert("summary".into(), Value::Array(Vec::new()));
                s.sequenced(
                    "response.output_item.added",
                    map([("output_index", oi.into()), ("item", Value::Object(added))]),
                );
                for (si, part) in summary.iter().enumerate() {
                    let p_at = format!("{at}.summary[{si}]");
                    let text = req_str(op, as_object(op, part, &p_at)?, "text", &p_at)?;
                    let ids =
                        || map([("item_id", id.into()), ("output_index", oi.into()), ("summary_index", si.into())]);
                    let mut f = ids();
                    f.insert("part".into(), obj([("type", "summary_text".into()), ("text", "".into())]));
                    s.sequenced("response.reasoning_summary_part.added", f);
                    for p in pieces(text, opts.chunk_chars) {
                        let mut f = ids();
                        f.insert("delta".into(), p.into());
                        s.sequenced("response.reasoning_summary_text.delta", f);
                    }
                    let mut f = ids();
                    f.insert("text".into(), text.into());
                    s.sequenced("response.reasoning_summary_text.done", f);
                    let mut f = ids();
                    f.insert("part".into(), obj([("type", "summary_text".into()), ("text", text.into())]));
                    s.sequenced("response.reasoning_summary_part.done", f);
                }
            }
            _ => s.sequenced(
                "response.output_item.added",
                map([("output_index", oi.into()), ("item", Value::Object(added))]),
            ),
        }
        s.sequenced("response.output_item.done", map([("output_index", oi.into()), ("item", item.clone())]));
    }
    let terminal = match b.get("status").and_then(Value::as_str) {
        Some("incomplete") => "response.incomplete",
        Some("failed") => "response.failed",
        _ => "response.completed",
    };
    s.sequenced(terminal, map([("response", body.clone())]));
    s.finish(op)
}

#[allow(clippy::too_many_arguments)]
fn message_part(
    s: &mut Sse,
    op: Operation,
    at: &str,
    item_id: &str,
    oi: usize,
    ci: usize,
    part: &Value,
    opts: &StreamOptions,
) -> Result<(), StreamError> {
    let p = as_object(op, part, at)?;
    let ty = req_str(op, p, "type", at)?;
    let ids = || map([("item_id", item_id.into()), ("output_index", oi.into()), ("content_index", ci.into())]);
    let with = |k: &str, v: Value| {
        let mut f = ids();
        f.insert(k.into(), v);
        f
    };
    match ty {
        "output_text" => {
            let text = req_str(op, p, "text", at)?;
            let annotations = opt_array(op, p, "annotations", at)?;
            let logprobs = opt_array(op, p, "logprobs", at)?;
            let mut start = p.clone();
            start.insert("text".into(), "".into());
            start.insert("annotations".into(), Value::Array(Vec::new()));
            if start.contains_key("logprobs") {
                start.insert("logprobs".into(), Value::Array(Vec::new()));
            }
            s.sequenced("response.content_part.added", with("part", Value::Object(start)));
            match aligned_tokens(text, logprobs) {
                Some(tokens) => {
                    for (token, entry) in tokens {
                        let mut f = with("delta", token.into());
                        f.insert("logprobs".into(), Value::Array(vec![entry.clone()]));
                        s.sequenced("response.output_text.delta", f);
                    }
                }
                None => {
                    for piece in pieces(text, opts.chunk_chars) {
                        let mut f = with("delta", piece.into());
                        f.insert("logprobs".into(), Value::Array(Vec::new()));
                        s.sequenced("response.output_text.delta", f);
                    }
                }
            }
            for (ai, a) in annotations.iter().enumerate() {
                let mut f = with("annotation_index", ai.into());
                f.insert("annotation".into(), a.clone());
                s.sequenced("response.output_text.annotation.added", f);
            }
            let mut f = with("text", text.into());
            f.insert("logprobs".into(), Value::Array(logprobs.to_vec()));
            s.sequenced("response.output_text.done", f);
        }
        "refusal" => {
            let text = req_str(op, p, "refusal", at)?;
            let mut start = p.clone();
            start.insert("refusal".into(), "".into());
            s.sequenced("response.content_part.added", with("part", Value::Object(start)));
            for piece in pieces(text, opts.chunk_chars) {
                s.sequenced("response.refusal.delta", with("delta", piece.into()));
            }
            s.sequenced("response.refusal.done", with("refusal", text.into()));
        }
        _ => s.sequenced("response.content_part.added", with("part", part.clone())),
    }
    s.sequenced("response.content_part.done", with("part", part.clone()));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Anthropic messages

/// Usage keys a `message_delta` carries (cumulative totals; the SDK overwrites its snapshot with them).
const DELTA_USAGE_KEYS: &[&str] = &[
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
];

fn render_messages(body: &Value, opts: &StreamOptions) -> Result<String, StreamError> {
    let op = Operation::Messages;
    let b = as_object(op, body, "")?;
    let content = req_array(op, b, "content", "")?;
    let usage = match b.get("usage") {
        None | Some(Value::Null) => None,
        Some(u) => Some(as_object(op, u, "usage")?),
    };
    let output_tokens = usage.and_then(|u| u.get("output_tokens")).cloned().unwrap_or(0.into());

    let mut start = b.clone();
    start.insert("content".into(), Value::Array(Vec::new()));
    start.insert("stop_reason".into(), Value::Null);
    start.insert("stop_sequence".into(), Value::Null);
    if let Some(v) = start.get_mut("stop_details") {
        *v = Value::Null;
    }
    if let Some(u) = usage {
        // The live API reports the first output token(s) at message_start.
        let mut su = u.clone();
        if let Some(n) = output_tokens.as_u64() {
            su.insert("output_tokens".into(), n.min(1).into());
        }
        start.insert("usage".into(), Value::Object(su));
    }
    let mut s = Sse::default();
    s.named("message_start", &obj([("type", "message_start".into()), ("message", Value::Object(start))]));
    s.named("ping", &obj([("type", "ping".into())]));

    for (i, block) in content.iter().enumerate() {
        let at = format!("content[{i}]");
        let bl = as_object(op, block, &at)?;
        let ty = req_str(op, bl, "type", &at)?;
        let mut started = bl.clone();
        let mut deltas: Vec<Value> = Vec::new();
        match ty {
            "text" => {
                let text = req_str(op, bl, "text", &at)?;
                started.insert("text".into(), "".into());
                if let Some(Value::Array(cites)) = bl.get("citations") {
                    started.insert("citations".into(), Value::Array(Vec::new()));
                    for c in cites {
                        deltas.push(obj([("type", "citations_delta".into()), ("citation", c.clone())]));
                    }
                }
                for p in pieces(text, opts.chunk_chars) {
                    deltas.push(obj([("type", "text_delta".into()), ("text", p.into())]));
                }
            }
            "thinking" => {
                let thinking = req_str(op, bl, "thinking", &at)?;
                let signature = opt_str(op, bl, "signature", &at)?;
                started.insert("thinking".into(), "".into());
                started.insert("signature".into(), "".into());
                for p in pieces(thinking, opts.chunk_chars) {
                    deltas.push(obj([("type", "thinking_delta".into()), ("thinking", p.into())]));
                }
                if let Some(sig) = signature.filter(|s| !s.is_empty()) {
                    deltas.push(obj([("type", "signature_delta".into()), ("signature", sig.into())]));
                }
            }
            "tool_use" | "server_tool_use" | "mcp_tool_use" => {
                let input = bl.get("input").ok_or_else(|| bad(op, format!("{at}.input"), "is missing"))?;
                started.insert("input".into(), Value::Object(Map::new()));
                deltas.push(obj([("type", "input_json_delta".into()), ("partial_json", "".into())]));
                if input.as_object().is_none_or(|o| !o.is_empty()) {
                    let json = input.to_string();
                    for p in pieces(&json, opts.chunk_chars) {
                        deltas.push(obj([("type", "input_json_delta".into()), ("partial_json", p.into())]));
                    }
                }
            }
            _ => {}
        }
        s.named(
            "content_block_start",
            &obj([
                ("type", "content_block_start".into()),
                ("index", i.into()),
                ("content_block", Value::Object(started)),
            ]),
        );
        for d in deltas {
            s.named(
                "content_block_delta",
                &obj([("type", "content_block_delta".into()), ("index", i.into()), ("delta", d)]),
            );
        }
        s.named("content_block_stop", &obj([("type", "content_block_stop".into()), ("index", i.into())]));
    }

    let mut delta = map([
        ("stop_reason", b.get("stop_reason").cloned().unwrap_or(Value::Null)),
        ("stop_sequence", b.get("stop_sequence").cloned().unwrap_or(Value::Null)),
    ]);
    copy_keys(b, &mut delta, &["stop_details"]);
    if let Some(c) = b.get("container").filter(|v| !v.is_null()) {
        delta.insert("container".into(), c.clone());
    }
    let mut du = Map::new();
    if let Some(u) = usage {
        copy_keys(u, &mut du, DELTA_USAGE_KEYS);
    }
    du.insert("output_tokens".into(), output_tokens);
    s.named(
        "message_delta",
        &obj([("type", "message_delta".into()), ("delta", Value::Object(delta)), ("usage", Value::Object(du))]),
    );
    s.named("message_stop", &obj([("type", "message_stop".into())]));
    s.finish(op)
}

// ---------------------------------------------------------------------------------------------------------
// Reading

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawEvent {
    name: Option<String>,
    data: String,
    line: usize,
}

/// Lines split on `\r\n`, `\n` or `\r`.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r'))
}

/// The SSE event stream interpretation (WHATWG), lenient about a missing final blank line.
fn parse_sse(text: &str) -> Vec<RawEvent> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut events = Vec::new();
    let mut name: Option<String> = None;
    let mut data = String::new();
    let mut has_data = false;
    let mut start: Option<usize> = None;
    for (i, line) in lines(text).enumerate() {
        if line.is_empty() {
            if has_data {
                events.push(RawEvent {
                    name: name.take().filter(|n| !n.is_empty()),
                    data: std::mem::take(&mut data),
                    line: start.unwrap_or(i + 1),
                });
            }
            name = None;
            data.clear();
            has_data = false;
            start = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        start.get_or_insert(i + 1);
        match field {
            "event" => name = Some(value.to_string()),
            "data" => {
                if has_data {
                    data.push('\n');
                }
                data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    if has_data {
        events.push(RawEvent { name: name.filter(|n| !n.is_empty()), data, line: start.unwrap_or(1) });
    }
    events
}

/// Parses each event's data as a JSON object. Stops at `[DONE]`.
/// An event's position, the event, and its data parsed as a JSON object.
type JsonEvent<'a> = (usize, &'a RawEvent, Map<String, Value>);

fn json_events(op: Operation, events: &[RawEvent]) -> Result<Vec<JsonEvent<'_>>, StreamError> {
    let mut out = Vec::with_capacity(events.len());
    for (index, ev) in events.iter().enumerate() {
        if ev.data.trim() == "[DONE]" {
            break;
        }
        let fail = |reason: String| StreamError::BadEvent {
            op,
            index,
            event: ev.name.clone().unwrap_or_else(|| "message".into()),
            line: ev.line,
            reason,
        };
        match serde_json::from_str::<Value>(&ev.data) {
            Ok(Value::Object(m)) => out.push((index, ev, m)),
            Ok(_) => return Err(fail("the data is not a JSON object".into())),
            Err(e) => return Err(fail(format!("the data is not valid JSON: {e}"))),
        }
    }
    Ok(out)
}

fn event_error(
    op: Operation,
    index: usize,
    ev: &RawEvent,
    data: &Map<String, Value>,
    reason: impl Into<String>,
) -> StreamError {
    StreamError::BadEvent {
        op,
        index,
        event: ev
            .name
            .clone()
            .or_else(|| data.get("type").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "message".into()),
        line: ev.line,
        reason: reason.into(),
    }
}

fn upstream(op: Operation, error: &Value) -> StreamError {
    let message = error.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| error.to_string());
    StreamError::Upstream { op, message }
}

/// The SDKs' delta accumulation: strings concatenate, objects merge, lists of `index`ed objects merge by
/// index, other lists extend, `index`/`type` and scalars are replaced.
fn accumulate(acc: &mut Map<String, Value>, delta: &Map<String, Value>) {
    for (k, dv) in delta {
        let unset = acc.get(k).is_none_or(Value::is_null);
        if unset {
            let v = match dv {
                Value::Array(items) if has_indexed(items) => {
                    let mut list = Vec::new();
                    merge_indexed(&mut list, items);
                    Value::Array(list)
                }
                other => other.clone(),
            };
            acc.insert(k.clone(), v);
            continue;
        }
        let Some(av) = acc.get_mut(k) else { continue };
        if k == "index" || k == "type" {
            *av = dv.clone();
            continue;
        }
        match (av, dv) {
            (Value::String(a), Value::String(d)) => a.push_str(d),
            (Value::Object(a), Value::Object(d)) => accumulate(a, d),
            (Value::Array(a), Value::Array(d)) => {
                if has_indexed(d) {
                    merge_indexed(a, d);
                } else {
                    a.extend(d.iter().cloned());
                }
            }
            (av, dv) => {
                if !dv.is_null() {
                    *av = dv.clone();
                }
            }
        }
    }
}

fn has_indexed(items: &[Value]) -> bool {
    items.iter().any(|e| e.get("index").is_some())
}

fn merge_indexed(acc: &mut Vec<Value>, delta: &[Value]) {
    for entry in delta {
        let idx = entry.get("index").filter(|i| i.is_number());
        let existing = idx.and_then(|i| acc.iter_mut().find(|a| a.get("index") == Some(i)));
        if let (Some(Value::Object(a)), Value::Object(d)) = (existing, entry) {
            accumulate(a, d);
            continue;
        }
        acc.push(entry.clone());
    }
}

/// Appends a logprobs delta: lists extend, other fields are replaced.
fn merge_logprobs(acc: &mut Value, delta: &Value) {
    if delta.is_null() {
        return;
    }
    match (acc, delta) {
        (Value::Object(a), Value::Object(d)) => {
            for (k, dv) in d {
                match (a.get_mut(k), dv) {
                    (Some(Value::Array(av)), Value::Array(items)) => av.extend(items.iter().cloned()),
                    (Some(_), Value::Null) => {}
                    (_, dv) => {
                        a.insert(k.clone(), dv.clone());
                    }
                }
            }
        }
        (acc, delta) => *acc = delta.clone(),
    }
}

/// Chunk-level fields shared by both OpenAI chunk grammars: (first id/created/model, last non-null others).
#[derive(Default)]
struct ChunkMeta {
    head: Map<String, Value>,
    tail: Map<String, Value>,
}

impl ChunkMeta {
    fn take(&mut self, chunk: &Map<String, Value>) {
        for k in ["id", "created", "model"] {
            if let Some(v) = chunk.get(k).filter(|v| !v.is_null()) {
                self.head.entry(k.to_string()).or_insert_with(|| v.clone());
            }
        }
        for k in ["service_tier", "system_fingerprint", "usage"] {
            if let Some(v) = chunk.get(k).filter(|v| !v.is_null()) {
                self.tail.insert(k.to_string(), v.clone());
            }
        }
    }
}

#[derive(Default)]
struct ChatChoiceAcc {
    message: Map<String, Value>,
    logprobs: Value,
    finish_reason: Value,
}

fn assemble_chat(events: &[RawEvent]) -> Result<Value, StreamError> {
    let op = Operation::ChatCompletions;
    let mut meta = ChunkMeta::default();
    let mut choices: BTreeMap<u64, ChatChoiceAcc> = BTreeMap::new();
    let mut seen = false;
    for (index, ev, chunk) in json_events(op, events)? {
        if let Some(e) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(upstream(op, e));
        }
        // Azure's content-filter chunks have an empty `object`: the SDK skips them too.
        if chunk.get("object").and_then(Value::as_str).is_some_and(|o| o != "chat.completion.chunk") {
            continue;
        }
        seen = true;
        meta.take(&chunk);
        let list = match chunk.get("choices") {
            Some(Value::Array(l)) => l.as_slice(),
            None | Some(Value::Null) => &[],
            Some(_) => return Err(event_error(op, index, ev, &chunk, "`choices` is not an array")),
        };
        for choice in list {
            let Some(i) = choice.get("index").and_then(Value::as_u64) else {
                return Err(event_error(op, index, ev, &chunk, "a choice has no integer `index`"));
            };
            let acc = choices.entry(i).or_default();
            match choice.get("delta") {
                Some(Value::Object(d)) => accumulate(&mut acc.message, d),
                None | Some(Value::Null) => {}
                Some(_) => return Err(event_error(op, index, ev, &chunk, "a choice's `delta` is not an object")),
            }
            if let Some(f) = choice.get("finish_reason").filter(|f| !f.is_null()) {
                acc.finish_reason = f.clone();
            }
            if let Some(lp) = choice.get("logprobs") {
                merge_logprobs(&mut acc.logprobs, lp);
            }
        }
    }
    if !seen {
        return Err(StreamError::MissingEvent { op, event: "chat.completion.chunk" });
    }
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|(i, mut c)| {
            let m = &mut c.message;
            m.entry("role").or_insert_with(|| "assistant".into());
            m.entry("content").or_insert(Value::Null);
            m.entry("refusal").or_insert(Value::Null);
            m.entry("annotations").or_insert_with(|| Value::Array(Vec::new()));
            if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
                for call in calls.iter_mut().filter_map(Value::as_object_mut) {
                    call.remove("index");
                }
            }
            obj([
                ("index", i.into()),
                ("message", Value::Object(c.message)),
                ("logprobs", c.logprobs),
                ("finish_reason", c.finish_reason),
            ])
        })
        .collect();
    let mut out = meta.head;
    out.insert("object".into(), "chat.completion".into());
    out.insert("choices".into(), Value::Array(choices));
    out.extend(meta.tail);
    Ok(Value::Object(out))
}

#[derive(Default)]
struct TextChoiceAcc {
    text: String,
    logprobs: Value,
    finish_reason: Value,
}

fn assemble_completions(events: &[RawEvent]) -> Result<Value, StreamError> {
    let op = Operation::Completions;
    let mut meta = ChunkMeta::default();
    let mut choices: BTreeMap<u64, TextChoiceAcc> = BTreeMap::new();
    let mut seen = false;
    for (index, ev, chunk) in json_events(op, events)? {
        if let Some(e) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(upstream(op, e));
        }
        seen = true;
        meta.take(&chunk);
        let list = match chunk.get("choices") {
            Some(Value::Array(l)) => l.as_slice(),
            None | Some(Value::Null) => &[],
            Some(_) => return Err(event_error(op, index, ev, &chunk, "`choices` is not an array")),
        };
        for choice in list {
            let Some(i) = choice.get("index").and_then(Value::as_u64) else {
                return Err(event_error(op, index, ev, &chunk, "a choice has no integer `index`"));
            };
            let acc = choices.entry(i).or_default();
            match choice.get("text") {
                Some(Value::String(t)) => acc.text.push_str(t),
                None | Some(Value::Null) => {}
                Some(_) => return Err(event_error(op, index, ev, &chunk, "a choice's `text` is not a string")),
            }
            if let Some(f) = choice.get("finish_reason").filter(|f| !f.is_null()) {
                acc.finish_reason = f.clone();
            }
            if let Some(lp) = choice.get("logprobs") {
                merge_logprobs(&mut acc.logprobs, lp);
            }
        }
    }
    if !seen {
        return Err(StreamError::MissingEvent { op, event: "text_completion" });
    }
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|(i, c)| {
            obj([
                ("text", c.text.into()),
                ("index", i.into()),
                ("logprobs", c.logprobs),
                ("finish_reason", c.finish_reason),
            ])
        })
        .collect();
    let mut out = meta.head;
    out.insert("object".into(), "text_completion".into());
    out.insert("choices".into(), Value::Array(choices));
    out.extend(meta.tail);
    Ok(Value::Object(out))
}

fn assemble_responses(events: &[RawEvent]) -> Result<Value, StreamError> {
    let op = Operation::Responses;
    let mut done_items: BTreeMap<u64, Value> = BTreeMap::new();
    for (index, ev, data) in json_events(op, events)? {
        let ty = data.get("type").and_then(Value::as_str).or(ev.name.as_deref()).unwrap_or_default();
        match ty {
            "error" => return Err(upstream(op, &Value::Object(data.clone()))),
            "response.output_item.done" => {
                let (Some(oi), Some(item)) = (data.get("output_index").and_then(Value::as_u64), data.get("item"))
                else {
                    return Err(event_error(op, index, ev, &data, "needs `output_index` and `item`"));
                };
                done_items.insert(oi, item.clone());
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                let Some(Value::Object(mut response)) = data.get("response").cloned() else {
                    return Err(event_error(op, index, ev, &data, "`response` is not an object"));
                };
                // Like the SDK: recover the output from the finished items when the final event omits it.
                if response.get("output").is_none_or(Value::is_null) {
                    response.insert("output".into(), Value::Array(done_items.into_values().collect()));
                }
                return Ok(Value::Object(response));
            }
            _ => {}
        }
    }
    Err(StreamError::MissingEvent { op, event: "response.completed" })
}

struct BlockAcc {
    block: Map<String, Value>,
    json: String,
    finished: bool,
}

impl BlockAcc {
    /// Parses the concatenated `partial_json` into `input`.
    fn finish(&mut self) -> Result<(), String> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if self.json.trim().is_empty() {
            return Ok(());
        }
        let input: Value = serde_json::from_str(&self.json)
            .map_err(|e| format!("the tool input (concatenated partial_json) is not valid JSON: {e}"))?;
        self.block.insert("input".into(), input);
        Ok(())
    }
}

fn assemble_messages(events: &[RawEvent]) -> Result<Value, StreamError> {
    let op = Operation::Messages;
    let mut message: Option<Map<String, Value>> = None;
    let mut blocks: BTreeMap<u64, BlockAcc> = BTreeMap::new();
    let mut last = None;
    for (index, ev, data) in json_events(op, events)? {
        let ty = data.get("type").and_then(Value::as_str).or(ev.name.as_deref()).unwrap_or_default().to_string();
        let fail = |reason: &str| event_error(op, index, ev, &data, reason);
        if ty == "error" {
            return Err(upstream(op, data.get("error").unwrap_or(&Value::Object(data.clone()))));
        }
        if ty == "ping" {
            continue;
        }
        if ty == "message_start" {
            let Some(Value::Object(m)) = data.get("message") else {
                return Err(fail("`message` is not an object"));
            };
            message = Some(m.clone());
            continue;
        }
        let Some(msg) = message.as_mut() else {
            if matches!(
                ty.as_str(),
                "content_block_start" | "content_block_delta" | "content_block_stop" | "message_delta" | "message_stop"
            ) {
                return Err(fail("comes before `message_start`"));
            }
            continue;
        };
        let block_index = || data.get("index").and_then(Value::as_u64).ok_or_else(|| fail("has no integer `index`"));
        match ty.as_str() {
            "content_block_start" => {
                let i = block_index()?;
                let Some(Value::Object(b)) = data.get("content_block") else {
                    return Err(fail("`content_block` is not an object"));
                };
                blocks.insert(i, BlockAcc { block: b.clone(), json: String::new(), finished: false });
            }
            "content_block_delta" => {
                let i = block_index()?;
                let Some(acc) = blocks.get_mut(&i) else {
                    return Err(fail("its content block was never started"));
                };
                let Some(Value::Object(d)) = data.get("delta") else {
                    return Err(fail("`delta` is not an object"));
                };
                let text_of = |k: &str| {
                    d.get(k).and_then(Value::as_str).ok_or_else(|| fail(&format!("the delta has no string `{k}`")))
                };
                match d.get("type").and_then(Value::as_str).unwrap_or_default() {
                    "text_delta" => append(&mut acc.block, "text", text_of("text")?),
                    "thinking_delta" => append(&mut acc.block, "thinking", text_of("thinking")?),
                    "signature_delta" => {
                        acc.block.insert("signature".into(), text_of("signature")?.into());
                    }
                    "input_json_delta" => acc.json.push_str(text_of("partial_json")?),
                    "citations_delta" => {
                        let c = d.get("citation").cloned().unwrap_or(Value::Null);
                        match acc.block.get_mut("citations") {
                            Some(Value::Array(list)) => list.push(c),
                            _ => {
                                acc.block.insert("citations".into(), Value::Array(vec![c]));
                            }
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                let i = block_index()?;
                let Some(acc) = blocks.get_mut(&i) else {
                    return Err(fail("its content block was never started"));
                };
                acc.finish().map_err(|e| fail(&e))?;
            }
            "message_delta" => {
                if let Some(Value::Object(d)) = data.get("delta") {
                    for (k, v) in d {
                        if k != "container" || !v.is_null() {
                            msg.insert(k.clone(), v.clone());
                        }
                    }
                }
                if let Some(Value::Object(u)) = data.get("usage") {
                    let usage = msg.entry("usage").or_insert_with(|| Value::Object(Map::new()));
                    if !usage.is_object() {
                        *usage = Value::Object(Map::new());
                    }
                    if let Some(um) = usage.as_object_mut() {
                        for (k, v) in u.iter().filter(|(_, v)| !v.is_null()) {
                            um.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            "message_stop" => {
                last = Some(index);
                break;
            }
            _ => {}
        }
    }
    let Some(mut msg) = message else {
        return Err(StreamError::MissingEvent { op, event: "message_start" });
    };
    let mut content = Vec::with_capacity(blocks.len());
    for (i, mut acc) in blocks {
        if let Err(reason) = acc.finish() {
            // A block the stream never stopped: report it against the end of the stream.
            let index = last.unwrap_or(events.len());
            return Err(StreamError::BadEvent {
                op,
                index,
                event: "content_block_stop".into(),
                line: events.last().map_or(0, |e| e.line),
                reason: format!("content block {i}: {reason}"),
            });
        }
        content.push(Value::Object(acc.block));
    }
    msg.insert("content".into(), Value::Array(content));
    Ok(Value::Object(msg))
}

fn append(block: &mut Map<String, Value>, key: &str, piece: &str) {
    match block.get_mut(key) {
        Some(Value::String(s)) => s.push_str(piece),
        _ => {
            block.insert(key.into(), piece.into());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(include_usage: bool, chunk_chars: usize) -> StreamOptions {
        StreamOptions { include_usage, chunk_chars }
    }

    const SIZES: [usize; 5] = [0, 1, 3, DEFAULT_CHUNK_CHARS, 1000];

    /// Data payloads of a stream, in order.
    fn datas(sse: &str) -> Vec<String> {
        parse_sse(sse).into_iter().map(|e| e.data).collect()
    }

    fn chunks(sse: &str) -> Vec<Value> {
        datas(sse).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect()
    }

    fn chat_body(choices: Value) -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1764403200, "model": "gpt-4o-mini-2024-07-18",
            "choices": choices,
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            "service_tier": "default", "system_fingerprint": "fp_1"
        })
    }

    fn text_choice(index: u64, content: Value) -> Value {
        json!({"index": index, "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
               "logprobs": null, "finish_reason": "stop"})
    }

    const MULTIBYTE: &str = "Grüße aus Zürich — 東京タワー 🚀🇳🇴 naïve café, ﬁn. 👩‍👩‍👧 e\u{301}";

    fn weather_calls() -> Value {
        json!([
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"unit\":\"°C\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"Europe/Oslo\"}"}},
            {"id": "call_c", "type": "function", "function": {"name": "noop", "arguments": "{}"}}
        ])
    }

    fn assert_chat_round_trip(body: &Value) {
        for size in SIZES {
            for usage in [false, true] {
                let sse = render_sse(Operation::ChatCompletions, body, &opts(usage, size)).unwrap();
                let back = assemble_sse(Operation::ChatCompletions, &sse).unwrap();
                let want = body["choices"].as_array().unwrap();
                assert_eq!(back["choices"].as_array().unwrap().len(), want.len());
                for w in want {
                    let i = w["index"].as_u64().unwrap() as usize;
                    let got = &back["choices"][i];
                    for k in ["content", "refusal", "tool_calls", "role", "function_call"] {
                        assert_eq!(got["message"][k], w["message"][k], "{k} size {size}: {sse}");
                    }
                    assert_eq!(got["finish_reason"], w["finish_reason"]);
                    assert_eq!(got["logprobs"], w["logprobs"]);
                }
                for k in ["id", "created", "model", "service_tier", "system_fingerprint"] {
                    assert_eq!(back[k], body[k], "{k}");
                }
                assert_eq!(back["object"], "chat.completion");
                if usage {
                    assert_eq!(back["usage"], body["usage"]);
                } else {
                    assert!(back.get("usage").is_none());
                }
            }
        }
    }

    #[test]
    fn pieces_split_on_char_boundaries_and_rejoin() {
        for text in
            ["", "a", "The capital of France is Paris.", MULTIBYTE, "  lead\n\nand trail  ", "xxxxxxxxxxxxxxxxxxxxxx"]
        {
            for size in SIZES {
                let p = pieces(text, size);
                assert_eq!(p.concat(), text);
                assert!(p.iter().all(|s| !s.is_empty()));
                if size > 0 {
                    assert!(p.iter().all(|s| s.chars().count() <= size), "{p:?}");
                }
            }
        }
        assert_eq!(
            pieces("The capital of France is Paris.", 8),
            ["The", " capital", " of", " France", " is", " Paris."]
        );
        assert!(pieces(MULTIBYTE, 3).len() > 10);
    }

    #[test]
    fn chat_text_round_trips() {
        assert_chat_round_trip(&chat_body(json!([text_choice(0, json!("The capital of France is Paris."))])));
        assert_chat_round_trip(&chat_body(json!([text_choice(0, json!(MULTIBYTE))])));
        assert_chat_round_trip(&chat_body(json!([text_choice(0, json!(""))])));
    }

    #[test]
    fn chat_tool_calls_round_trip() {
        let only_calls = json!([{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": weather_calls(), "refusal": null},
                                 "logprobs": null, "finish_reason": "tool_calls"}]);
        assert_chat_round_trip(&chat_body(only_calls));
        let text_and_calls = json!([{"index": 0, "message": {"role": "assistant", "content": "Checking…", "tool_calls": weather_calls()},
                                     "logprobs": null, "finish_reason": "tool_calls"}]);
        assert_chat_round_trip(&chat_body(text_and_calls));
    }

    #[test]
    fn chat_n2_refusal_and_empty_round_trip() {
        let body = chat_body(json!([
            text_choice(0, json!(MULTIBYTE)),
            {"index": 1, "message": {"role": "assistant", "content": null, "refusal": "I can’t help with that.", "annotations": []},
             "logprobs": null, "finish_reason": "stop"},
            {"index": 2, "message": {"role": "assistant", "content": null, "tool_calls": weather_calls()}, "logprobs": null, "finish_reason": "tool_calls"},
            text_choice(3, json!("")),
        ]));
        assert_chat_round_trip(&body);
        // Choices are interleaved and each chunk carries one.
        let sse = render_sse(Operation::ChatCompletions, &body, &opts(false, 4)).unwrap();
        let order: Vec<u64> = chunks(&sse).iter().map(|c| c["choices"][0]["index"].as_u64().unwrap()).collect();
        assert_eq!(&order[..4], &[0, 1, 2, 3]);
    }

    #[test]
    fn chat_logprobs_follow_tokens() {
        let lp = |t: &str| json!({"token": t, "logprob": -0.5, "bytes": t.as_bytes(), "top_logprobs": []});
        let mut choice = text_choice(0, json!("Hi there"));
        choice["logprobs"] = json!({"content": [lp("Hi"), lp(" there")], "refusal": null});
        let body = chat_body(json!([choice]));
        assert_chat_round_trip(&body);
        let sse = render_sse(Operation::ChatCompletions, &body, &opts(false, 1)).unwrap();
        let c = chunks(&sse);
        assert_eq!(c[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(c[1]["choices"][0]["logprobs"]["content"][0]["token"], "Hi");
        // Not aligned with the text: sent whole on the first text chunk.
        let mut choice = text_choice(0, json!("Hello"));
        choice["logprobs"] = json!({"content": [lp("Bye")], "refusal": null});
        assert_chat_round_trip(&chat_body(json!([choice])));
    }

    #[test]
    fn chat_grammar() {
        let body = chat_body(
            json!([{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": weather_calls()},
                                    "logprobs": null, "finish_reason": "tool_calls"}]),
        );
        for usage in [false, true] {
            let sse = render_sse(Operation::ChatCompletions, &body, &opts(usage, 4)).unwrap();
            assert!(sse.ends_with("data: [DONE]\n\n"));
            assert!(sse.lines().all(|l| l.is_empty() || l.starts_with("data: ")));
            let c = chunks(&sse);
            for chunk in &c {
                assert_eq!(chunk["object"], "chat.completion.chunk");
                assert_eq!(chunk["id"], "chatcmpl-1");
                assert_eq!(chunk["created"], 1764403200);
                assert_eq!(chunk["system_fingerprint"], "fp_1");
                assert_eq!(chunk.get("usage").is_some(), usage);
            }
            let first = &c[0]["choices"][0]["delta"];
            assert_eq!(first["role"], "assistant");
            assert_eq!(first["content"], Value::Null);
            assert_eq!(first["tool_calls"][0]["id"], "call_a");
            assert_eq!(first["tool_calls"][0]["function"]["arguments"], "");
            // Argument pieces carry only index + function.arguments.
            let piece = &c[1]["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(piece.as_object().unwrap().keys().collect::<Vec<_>>(), ["function", "index"]);
            assert_eq!(piece["function"].as_object().unwrap().keys().collect::<Vec<_>>(), ["arguments"]);
            let last_choice = if usage {
                assert_eq!(c.last().unwrap()["choices"], json!([]));
                assert_eq!(c.last().unwrap()["usage"], body["usage"]);
                assert!(c[..c.len() - 1].iter().all(|ch| ch["usage"].is_null()));
                &c[c.len() - 2]
            } else {
                &c[c.len() - 1]
            };
            assert_eq!(last_choice["choices"][0]["delta"], json!({}));
            assert_eq!(last_choice["choices"][0]["finish_reason"], "tool_calls");
            let finishes = c.iter().filter(|ch| !ch["choices"][0]["finish_reason"].is_null()).count();
            assert_eq!(finishes, 1);
        }
        // Text: the opening delta has role, empty content and refusal null, and the live key order.
        let sse = render_sse(
            Operation::ChatCompletions,
            &chat_body(json!([text_choice(0, json!("Paris."))])),
            &opts(true, 8),
        )
        .unwrap();
        let first = sse.lines().next().unwrap();
        assert!(first
            .starts_with(r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764403200,"model":"#));
        assert!(first.contains(r#""delta":{"role":"assistant","content":"","refusal":null}"#), "{first}");
    }

    #[test]
    fn completions_round_trip_and_grammar() {
        let body = json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
            "choices": [{"text": MULTIBYTE, "index": 0, "logprobs": null, "finish_reason": "length"},
                        {"text": "", "index": 1, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}});
        for size in SIZES {
            for usage in [false, true] {
                let sse = render_sse(Operation::Completions, &body, &opts(usage, size)).unwrap();
                assert!(sse.ends_with("data: [DONE]\n\n"));
                let c = chunks(&sse);
                assert!(c.iter().all(|ch| ch["object"] == "text_completion"));
                assert_eq!(c.iter().any(|ch| ch["choices"] == json!([])), usage);
                let back = assemble_sse(Operation::Completions, &sse).unwrap();
                assert_eq!(back["choices"], body["choices"]);
                assert_eq!(back.get("usage").is_some(), usage);
            }
        }
    }

    fn responses_body() -> Value {
        json!({
            "id": "resp_1", "object": "response", "created_at": 1764403200, "status": "completed", "error": null,
            "incomplete_details": null, "model": "gpt-4.1-2025-04-14", "parallel_tool_calls": true, "tools": [],
            "output": [
                {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Thinking about Oslo…"}]},
                {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant", "content": [
                    {"type": "output_text", "text": MULTIBYTE, "annotations": [], "logprobs": []},
                    {"type": "refusal", "refusal": "No."}
                ]},
                {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"id": "fc_2", "type": "function_call", "status": "completed", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
                {"id": "ws_1", "type": "web_search_call", "status": "completed"}
            ],
            "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}
        })
    }

    /// Reassembles text and arguments from the delta events alone (not from response.completed).
    fn response_deltas(sse: &str) -> BTreeMap<(u64, u64), String> {
        let mut out: BTreeMap<(u64, u64), String> = BTreeMap::new();
        for e in chunks(sse) {
            let key = (e["output_index"].as_u64().unwrap_or(0), e["content_index"].as_u64().unwrap_or(99));
            match e["type"].as_str().unwrap() {
                "response.output_text.delta" | "response.refusal.delta" | "response.function_call_arguments.delta" => {
                    out.entry(key).or_default().push_str(e["delta"].as_str().unwrap())
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn responses_round_trip_and_grammar() {
        let body = responses_body();
        for size in SIZES {
            let sse = render_sse(Operation::Responses, &body, &opts(false, size)).unwrap();
            assert_eq!(assemble_sse(Operation::Responses, &sse).unwrap(), body);
            let d = response_deltas(&sse);
            assert_eq!(d.get(&(1, 0)).map(String::as_str).unwrap_or(""), MULTIBYTE);
            assert_eq!(d.get(&(1, 1)).map(String::as_str).unwrap_or(""), "No.");
            assert_eq!(d.get(&(2, 99)).map(String::as_str).unwrap_or(""), "{\"city\":\"Oslo\"}");
            assert_eq!(d.get(&(3, 99)).map(String::as_str).unwrap_or(""), "{}");

            let events = parse_sse(&sse);
            assert!(!sse.contains("[DONE]"));
            let c = chunks(&sse);
            for (i, (ev, data)) in events.iter().zip(&c).enumerate() {
                assert_eq!(ev.name.as_deref(), data["type"].as_str());
                assert_eq!(data["sequence_number"], i as u64);
            }
            let types: Vec<&str> = c.iter().map(|e| e["type"].as_str().unwrap()).collect();
            assert_eq!(&types[..3], &["response.created", "response.in_progress", "response.output_item.added"]);
            assert_eq!(*types.last().unwrap(), "response.completed");
            assert_eq!(c[0]["response"]["status"], "in_progress");
            assert_eq!(c[0]["response"]["output"], json!([]));
            assert_eq!(c[0]["response"]["usage"], Value::Null);
            for e in &c {
                if e["type"] == "response.output_text.delta" {
                    assert_eq!(e["item_id"], "msg_1");
                    assert_eq!(e["logprobs"], json!([]));
                }
            }
            let added = c.iter().filter(|e| e["type"] == "response.output_item.added").count();
            let done = c.iter().filter(|e| e["type"] == "response.output_item.done").count();
            assert_eq!((added, done), (5, 5));
        }
        let mut incomplete = body.clone();
        incomplete["status"] = "incomplete".into();
        let sse = render_sse(Operation::Responses, &incomplete, &opts(false, 8)).unwrap();
        assert!(sse.contains("event: response.incomplete\n"));
        assert_eq!(assemble_sse(Operation::Responses, &sse).unwrap(), incomplete);
    }

    fn anthropic_body() -> Value {
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "The user wants Oslo’s weather.", "signature": "EqQBCgIYAhIM"},
                {"type": "text", "text": MULTIBYTE},
                {"type": "text", "text": ""},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "days": [1, 2.50, 1e3], "opts": {"unit": "°C", "x": null}}},
                {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}},
                {"type": "redacted_thinking", "data": "abc"}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 384, "output_tokens": 62, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "service_tier": "standard"}
        })
    }

    #[test]
    fn anthropic_round_trip_is_exact() {
        let body = anthropic_body();
        for size in SIZES {
            let sse = render_sse(Operation::Messages, &body, &opts(false, size)).unwrap();
            assert_eq!(assemble_sse(Operation::Messages, &sse).unwrap(), body, "{sse}");
        }
    }

    #[test]
    fn anthropic_grammar() {
        let sse = render_sse(Operation::Messages, &anthropic_body(), &opts(false, 8)).unwrap();
        let events = parse_sse(&sse);
        let c = chunks(&sse);
        for (ev, data) in events.iter().zip(&c) {
            assert_eq!(ev.name.as_deref(), data["type"].as_str());
        }
        let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
        assert_eq!(&names[..3], &["message_start", "ping", "content_block_start"]);
        assert_eq!(&names[names.len() - 2..], &["message_delta", "message_stop"]);
        // Per block: start, deltas, stop, with the block's index, in order.
        let mut open: Option<u64> = None;
        let mut next = 0u64;
        for d in &c[2..c.len() - 2] {
            let i = d["index"].as_u64().unwrap();
            match d["type"].as_str().unwrap() {
                "content_block_start" => {
                    assert_eq!((open, i), (None, next));
                    open = Some(i);
                }
                "content_block_delta" => assert_eq!(open, Some(i)),
                "content_block_stop" => {
                    assert_eq!(open, Some(i));
                    open = None;
                    next += 1;
                }
                t => panic!("unexpected {t}"),
            }
        }
        assert_eq!(next, 6);
        let start = &c[0]["message"];
        assert_eq!(start["content"], json!([]));
        assert_eq!(start["stop_reason"], Value::Null);
        assert_eq!(start["usage"]["input_tokens"], 384);
        assert_eq!(start["usage"]["output_tokens"], 1);
        assert_eq!(c[2]["content_block"], json!({"type": "thinking", "thinking": "", "signature": ""}));
        let tool_start = c.iter().find(|d| d["content_block"]["type"] == "tool_use").unwrap();
        assert_eq!(tool_start["content_block"]["input"], json!({}));
        let md = &c[c.len() - 2];
        assert_eq!(md["delta"], json!({"stop_reason": "tool_use", "stop_sequence": null}));
        assert_eq!(md["usage"]["output_tokens"], 62);
        assert!(c.iter().any(|d| d["delta"]["type"] == "signature_delta"));
        assert!(c.iter().any(|d| d["delta"]["type"] == "input_json_delta" && d["delta"]["partial_json"] != ""));
    }

    #[test]
    fn embeddings_do_not_stream() {
        let body = json!({"object": "list", "data": []});
        assert_eq!(
            render_sse(Operation::Embeddings, &body, &StreamOptions::default()),
            Err(StreamError::NotStreamable(Operation::Embeddings))
        );
        assert!(assemble_sse(Operation::Embeddings, "data: {}\n\n").is_err());
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let field_of = |op, body: Value| match render_sse(op, &body, &StreamOptions::default()) {
            Err(StreamError::BadBody { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(Operation::ChatCompletions, json!([])), "(body)");
        assert_eq!(field_of(Operation::ChatCompletions, json!({})), "choices");
        assert_eq!(field_of(Operation::ChatCompletions, json!({"choices": [{}]})), "choices[0].message");
        assert_eq!(
            field_of(Operation::ChatCompletions, json!({"choices": [{"message": {"content": 3}}]})),
            "choices[0].message.content"
        );
        assert_eq!(
            field_of(
                Operation::ChatCompletions,
                json!({"choices": [{"message": {"content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]}}]})
            ),
            "choices[0].message.tool_calls[0].function.arguments"
        );
        assert_eq!(field_of(Operation::Completions, json!({"choices": [{"index": 0}]})), "choices[0].text");
        assert_eq!(
            field_of(Operation::Responses, json!({"output": [{"type": "message", "content": []}]})),
            "output[0].id"
        );
        assert_eq!(
            field_of(Operation::Responses, json!({"output": [{"type": "function_call", "id": "fc"}]})),
            "output[0].arguments"
        );
        assert_eq!(field_of(Operation::Messages, json!({"content": [{"type": "text"}]})), "content[0].text");
        assert_eq!(field_of(Operation::Messages, json!({"content": [{"type": "tool_use"}]})), "content[0].input");
        let e = render_sse(Operation::Messages, &json!({"content": "x"}), &StreamOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "anthropic.messages: cannot stream this response body: `content` must be an array");
    }

    #[test]
    fn parser_tolerates_crlf_comments_and_multiline_data() {
        let sse = ": keep-alive\r\nevent: message_start\r\ndata: {\"type\":\"message_start\",\r\ndata: \"message\":{\"id\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\r\n\r\n\
                   :comment\rdata:{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\r\
                   data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hé\"}}\n\n\
                   event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n\
                   event: message_stop\ndata: {\"type\":\"message_stop\"}";
        let m = assemble_sse(Operation::Messages, sse).unwrap();
        assert_eq!(m["content"], json!([{"type": "text", "text": "Hé"}]));
        assert_eq!(m["stop_reason"], "end_turn");
        assert_eq!(m["usage"], json!({"input_tokens": 1, "output_tokens": 5}));
        let ev = parse_sse("data: a\ndata:b\ndata\n\nid: 1\nretry: 5\n\n");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "a\nb\n");
    }

    #[test]
    fn assembles_live_like_openai_stream() {
        // Azure filter chunk first, obfuscation padding, usage chunk, keep-alive comment.
        let sse = concat!(
            "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[]}\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}],\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"ab\"}\n\n",
            ": ping\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
            "data: garbage after done is ignored\n\n"
        );
        let b = assemble_sse(Operation::ChatCompletions, sse).unwrap();
        assert_eq!(
            b,
            json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 7, "model": "gpt-4o", "system_fingerprint": "fp",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null, "annotations": [],
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                    "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
        );
    }

    #[test]
    fn malformed_streams_are_typed_errors() {
        let op = Operation::ChatCompletions;
        assert!(matches!(assemble_sse(op, ""), Err(StreamError::MissingEvent { .. })));
        assert!(matches!(assemble_sse(op, "data: [DONE]\n\n"), Err(StreamError::MissingEvent { .. })));
        match assemble_sse(op, "data: {\"choices\":[]}\n\ndata: {nope\n\n") {
            Err(StreamError::BadEvent { index, line, .. }) => assert_eq!((index, line), (1, 3)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(assemble_sse(op, "data: [1]\n\n"), Err(StreamError::BadEvent { .. })));
        assert!(matches!(
            assemble_sse(op, "data: {\"choices\":[{\"delta\":{}}]}\n\n"),
            Err(StreamError::BadEvent { .. })
        ));
        assert!(matches!(
            assemble_sse(op, "data: {\"error\":{\"message\":\"boom\"}}\n\n"),
            Err(StreamError::Upstream { message, .. }) if message == "boom"
        ));
        let m = Operation::Messages;
        assert!(matches!(
            assemble_sse(m, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"),
            Err(StreamError::BadEvent { .. })
        ));
        assert!(matches!(
            assemble_sse(m, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"),
            Err(StreamError::Upstream { message, .. }) if message == "Overloaded"
        ));
        let bad_input = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"content\":[]}}\n\n\
                         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"input\":{}}}\n\n\
                         event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\n\
                         event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
        match assemble_sse(m, bad_input) {
            Err(e @ StreamError::BadEvent { .. }) => assert!(e.to_string().contains("partial_json"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            assemble_sse(
                Operation::Responses,
                "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{}}\n\n"
            ),
            Err(StreamError::MissingEvent { event: "response.completed", .. })
        ));
        assert!(matches!(assemble_sse(m, "data: {}"), Err(StreamError::MissingEvent { .. })));
    }

    /// Tiny deterministic PRNG (no extra test dependencies).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> usize {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) as usize
        }
    }

    #[test]
    fn truncated_and_mutated_streams_never_panic() {
        let cases = [
            (Operation::ChatCompletions, chat_body(json!([text_choice(0, json!(MULTIBYTE))]))),
            (
                Operation::ChatCompletions,
                chat_body(
                    json!([{"index": 0, "message": {"content": null, "tool_calls": weather_calls()}, "finish_reason": "tool_calls"}]),
                ),
            ),
            (Operation::Responses, responses_body()),
            (Operation::Messages, anthropic_body()),
        ];
        let junk =
            ["\n", "\r", ":", "data: ", "{", "}", "\"", "[DONE]", "event: error\n", "é", "\u{feff}", "0", "null"];
        let mut rng = Lcg(7);
        for (op, body) in cases {
            let sse = render_sse(op, &body, &opts(true, 5)).unwrap();
            let bounds: Vec<usize> = sse.char_indices().map(|(i, _)| i).collect();
            for &cut in bounds.iter().step_by(7) {
                let _ = assemble_sse(op, &sse[..cut]);
                let _ = is_sse(&sse[..cut]);
            }
            for _ in 0..300 {
                let mut s = sse.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let here: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
                    let at = here[rng.next() % here.len()];
                    if rng.next() % 2 == 0 {
                        s.insert_str(at, junk[rng.next() % junk.len()]);
                    } else if let Some((i, c)) = s.char_indices().nth(rng.next() % s.chars().count().max(1)) {
                        s.replace_range(i..i + c.len_utf8(), "");
                    }
                }
                for o in Operation::ALL {
                    let _ = assemble_sse(o, &s);
                }
            }
        }
    }

    #[test]
    fn odd_bodies_never_panic() {
        let values = [
            json!(null),
            json!(1),
            json!("x"),
            json!({"choices": null}),
            json!({"choices": [null, 1, "x", {"message": null}, {"index": -1, "message": {}}]}),
            json!({"choices": [{"index": 18446744073709551615u64, "message": {"content": "a", "tool_calls": [null, {"type": 1}, {"type": "x"}]}}]}),
            json!({"output": [null, {"type": 1}, {"type": "message", "id": "m", "content": [null, {"type": "output_text"}]}]}),
            json!({"output": [{"type": "reasoning", "id": "r", "summary": [1]}]}),
            json!({"content": [null, {"type": "thinking"}, {"type": "text", "text": "a", "citations": null}], "usage": 3}),
        ];
        for v in values {
            for op in Operation::ALL {
                for size in SIZES {
                    let _ = render_sse(op, &v, &opts(true, size));
                }
            }
        }
        // Minimal bodies render and round-trip.
        let m = json!({"choices": [{"message": {"content": "hi"}}]});
        let sse = render_sse(Operation::ChatCompletions, &m, &StreamOptions::default()).unwrap();
        assert_eq!(assemble_sse(Operation::ChatCompletions, &sse).unwrap()["choices"][0]["message"]["content"], "hi");
    }

    #[test]
    fn sse_is_recognized() {
        assert!(is_sse("data: {}\n\n"));
        assert!(is_sse("\u{feff}\r\n: hi\r\nevent: message_start\r\ndata: {}\r\n\r\n"));
        assert!(is_sse("data:[DONE]"));
        assert!(!is_sse("{\"data\": 1}"));
        assert!(!is_sse(""));
        assert!(!is_sse("  \n\n"));
        assert!(!is_sse("hello\ndata: x"));
        assert!(!is_sse("database: x"));
        for op in [Operation::ChatCompletions, Operation::Completions, Operation::Responses, Operation::Messages] {
            let body = match op {
                Operation::Responses => responses_body(),
                Operation::Messages => anthropic_body(),
                Operation::Completions => json!({"choices": [{"text": "x", "index": 0}]}),
                _ => chat_body(json!([text_choice(0, json!("x"))])),
            };
            assert!(is_sse(&render_sse(op, &body, &StreamOptions::default()).unwrap()));
        }
    }

    #[test]
    fn options_from_request() {
        let r = json!({"stream": true, "stream_options": {"include_usage": true}});
        assert!(wants_stream(&r));
        assert!(StreamOptions::from_request(&r).include_usage);
        assert!(!wants_stream(&json!({"stream": "yes"})));
        assert_eq!(StreamOptions::from_request(&json!({})), StreamOptions::default());
    }

    /// Writes rendered streams of every example asset and `tests/stream_sdk/fixtures` asset to the
    /// directory in `UNDERSTUDY_SSE_OUT`, for `tests/stream_sdk/check.py` to feed to the official SDKs.
    /// A no-op without the variable.
    #[test]
    fn stream_fixtures_for_sdk_check() {
        let Ok(out) = std::env::var("UNDERSTUDY_SSE_OUT") else {
            return;
        };
        let out = std::path::PathBuf::from(out);
        std::fs::create_dir_all(&out).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in [root.join("../examples/assets"), root.join("tests/stream_sdk/fixtures")] {
            collect_json(&dir, &mut files);
        }
        files.sort();
        assert!(!files.is_empty());
        let mut manifest = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let doc: Value = serde_json::from_str(&text).unwrap();
            let assets = match doc {
                Value::Array(a) => a,
                v => vec![v],
            };
            let stem = file.file_stem().unwrap().to_string_lossy().to_string();
            for (i, asset) in assets.iter().enumerate() {
                let method = asset["request"]["method"].as_str().unwrap_or("POST");
                let route = crate::classify(method, asset["request"]["path"].as_str().unwrap()).unwrap();
                let Some(body) = asset["response"].get("body") else {
                    continue;
                };
                if route.operation == Operation::Embeddings {
                    assert!(render_sse(route.operation, body, &StreamOptions::default()).is_err());
                    continue;
                }
                for (variant, o) in
                    [("plain", opts(false, DEFAULT_CHUNK_CHARS)), ("usage-1", opts(true, 1)), ("whole", opts(true, 0))]
                {
                    let sse = render_sse(route.operation, body, &o).unwrap();
                    let back = assemble_sse(route.operation, &sse).unwrap();
                    let name = format!("{stem}-{i}-{variant}");
                    std::fs::write(out.join(format!("{name}.sse")), &sse).unwrap();
                    manifest.push(json!({
                        "name": name,
                        "label": asset.get("name").cloned().unwrap_or(Value::Null),
                        "source": file.strip_prefix(root).unwrap_or(&file).to_string_lossy(),
                        "operation": route.operation.name(),
                        "include_usage": o.include_usage,
                        "chunk_chars": o.chunk_chars,
                        "sse": format!("{name}.sse"),
                        "request": asset["request"]["body"],
                        "expected": body,
                        "assembled": back,
                    }));
                }
            }
        }
        let text = serde_json::to_string_pretty(&manifest).unwrap();
        std::fs::write(out.join("manifest.json"), text).unwrap();
        eprintln!("wrote {} streams to {}", manifest.len(), out.display());
    }

    fn collect_json(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for entry in rd {
            let p = entry.unwrap().path();
            if p.is_dir() {
                collect_json(&p, out);
            } else if p.extension().is_some_and(|e| e == "json") {
                out.push(p);
            }
        }
    }
}
