//! Anthropic's Messages API (`.../v1/messages`, and on Vertex AI `.../publishers/anthropic/models/{m}:rawPredict`
//! and `:streamRawPredict`, whose paths the Gemini module recognizes: the model is the path's and the body
//! carries `anthropic_version`, which never counts).
//!
//! The stream is `message_start`, `ping`, `content_block_start` / `_delta` / `_stop` per block,
//! `message_delta` (stop reason, cumulative usage), `message_stop`. Errors are
//! `{"type": "error", "error": {"type", "message"}}`. Usage: `input_tokens` excludes prompt-cache reads
//! and writes, which are reported apart (`cache_read_input_tokens`, `cache_creation_input_tokens`); the
//! input Understudy accounts is their sum, the cached part the reads.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::shape::{append, as_object, bad, copy_keys, last_user_text, map, obj, opt_str, pieces, req_array, req_str};
use super::sse::{event_error, json_events, parse_sse, upstream, Sse};
use super::{Dialect, Operation, ParityFields, PathView, Route, SynthInput, ToolCalls, Usage};
use crate::stream::{StreamError, StreamOptions};
use crate::template::Rng;
use crate::tokens::{estimate_tokens, messages_tokens, value_tokens};

/// The Anthropic API module.
pub(crate) struct Anthropic;

impl Dialect for Anthropic {
    fn classify(&self, path: &PathView<'_>) -> Option<Route> {
        let segs = path.segs();
        // An Azure OpenAI deployment path is never Anthropic's.
        if segs.windows(2).any(|w| w == ["openai", "deployments"]) {
            return None;
        }
        match segs.as_slice() {
            [.., "v1", "messages"] => Some(Route::of(Operation::Messages)),
            _ => None,
        }
    }

    fn provider(&self) -> &'static str {
        "anthropic"
    }

    fn paths(&self) -> &'static [&'static str] {
        &[".../v1/messages"]
    }

    fn ignored(&self, _op: Operation, field: &str) -> bool {
        // `anthropic_version` is in the body only where the header can't carry it (Anthropic on Vertex AI and
        // Bedrock): the API version, not a request for another answer.
        super::openai::ALWAYS_IGNORED.contains(&field) || field == "anthropic_version"
    }

    fn otel_operation(&self, _op: Operation) -> &'static str {
        "chat"
    }

    fn streams(&self, _op: Operation) -> bool {
        true
    }

    fn render_stream(&self, _route: &Route, body: &Value, opts: &StreamOptions) -> Result<Vec<u8>, StreamError> {
        render(body, opts).map(String::into_bytes)
    }

    fn assemble_stream(&self, op: Operation, recorded: &[u8]) -> Result<Value, StreamError> {
        assemble(super::sse::text(op, recorded)?)
    }

    fn stream_complete(&self, op: Operation, recorded: &[u8]) -> Result<(), StreamError> {
        self.assemble_stream(op, recorded)?;
        super::sse::ends_with(op, recorded, "message_stop")
    }

    fn usage(&self, _op: Operation, body: &Value) -> Option<Usage> {
        let u = body.get("usage")?;
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        if u.get("input_tokens").is_none() && u.get("output_tokens").is_none() {
            return None;
        }
        let cached = n("cache_read_input_tokens");
        Some(Usage {
            input: n("input_tokens").saturating_add(n("cache_creation_input_tokens")).saturating_add(cached),
            output: n("output_tokens"),
            cached_input: cached,
        })
    }

    fn output_text(&self, _op: Operation, body: &Value) -> String {
        super::shape::generated_text(body)
    }

    fn prompt_tokens(&self, _op: Operation, request: &Value) -> u64 {
        prompt_tokens(request)
    }

    fn fresh_id(&self, _op: Operation, rng: &mut Rng) -> String {
        format!("msg_01{}", rng.base62(22))
    }

    fn parity_fields(&self, _op: Operation) -> ParityFields {
        ParityFields {
            finish: &["/stop_reason"],
            tools: &[ToolCalls { calls: "/content/*", name: "/name", arguments: "/input" }],
            usage: "/usage",
            volatile: &["/content/*/id"],
            text: "/content",
            ..ParityFields::default()
        }
    }

    fn synthesize(&self, _op: Operation, input: &SynthInput<'_>, ids: &mut Rng) -> Option<Value> {
        let request = input.request;
        let text = input.answer.text(|| last_user_text(request.get("messages")));
        if text.len() > input.text_cap {
            return None;
        }
        let tokens_in = prompt_tokens(request);
        let tokens_out = estimate_tokens(&text);
        Some(json!({
            "id": self.fresh_id(Operation::Messages, ids),
            "type": "message",
            "role": "assistant",
            "model": input.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": tokens_in,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": tokens_out,
                "service_tier": "standard",
            },
        }))
    }

    fn error_body(&self, _route: &Route, kind: &str, message: &str, _code: Option<&str>) -> Value {
        json!({"type": "error", "error": {"type": kind, "message": message}})
    }
}

/// Estimated input tokens: system prompt, tools and messages.
pub(crate) fn prompt_tokens(request: &Value) -> u64 {
    let system = request.get("system").map_or(0, value_tokens);
    let tools = request.get("tools").map_or(0, value_tokens);
    messages_tokens(request.get("messages")).saturating_add(system).saturating_add(tools)
}

/// Usage keys a `message_delta` carries (cumulative totals; the SDK overwrites its snapshot with them).
const DELTA_USAGE_KEYS: &[&str] = &[
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
];

/// The event stream of a message.
pub(crate) fn render(body: &Value, opts: &StreamOptions) -> Result<String, StreamError> {
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

/// Assembles a recorded event stream into the `message` body.
pub(crate) fn assemble(text: &str) -> Result<Value, StreamError> {
    let op = Operation::Messages;
    let events = parse_sse(text);
    let mut message: Option<Map<String, Value>> = None;
    let mut blocks: BTreeMap<u64, BlockAcc> = BTreeMap::new();
    let mut last = None;
    for (index, ev, data) in json_events(op, &events)? {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_cache_reads_and_writes_as_input() {
        let body = json!({"usage": {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 20, "output_tokens": 7}});
        assert_eq!(Anthropic.usage(Operation::Messages, &body), Some(Usage { input: 35, output: 7, cached_input: 20 }));
        assert_eq!(Anthropic.usage(Operation::Messages, &json!({"content": []})), None);
    }

    #[test]
    fn error_bodies_have_anthropics_shape() {
        let a = Anthropic.error_body(&Route::of(Operation::Messages), "invalid_request_error", "m", Some("c"));
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "invalid_request_error");
        assert_eq!(a["error"]["message"], "m");
    }
}
