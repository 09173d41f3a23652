//! The OpenAI Responses API (`.../responses`): its event stream, assembly, and synthesized answers.
//!
//! The stream is `event: response.*` events with strictly increasing `sequence_number`, from
//! `response.created` to `response.completed` (or `.incomplete` / `.failed`), with no `[DONE]`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::dialect::shape::{
    aligned_tokens, as_object, content_text, echoed, is_user, map, obj, opt_array, pieces, req_array, req_str,
};
use crate::dialect::sse::{event_error, json_events, parse_sse, upstream, Sse};
use crate::dialect::{Operation, SynthInput};
use crate::stream::{StreamError, StreamOptions};
use crate::template::Rng;
use crate::tokens::{estimate_tokens, messages_tokens, value_tokens};

/// The `response.*` event stream of a response.
pub(super) fn render(body: &Value, opts: &StreamOptions) -> Result<String, StreamError> {
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

/// Assembles a recorded event stream into the final `response` object.
pub(super) fn assemble(text: &str) -> Result<Value, StreamError> {
    let op = Operation::Responses;
    let events = parse_sse(text);
    let mut done_items: BTreeMap<u64, Value> = BTreeMap::new();
    for (index, ev, data) in json_events(op, &events)? {
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

/// Responses API `input`: the string itself, or the last user message item's text.
pub(super) fn echo_text(request: &Value) -> String {
    match request.get("input") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .rev()
            .find(|m| is_user(m) && m.get("type").and_then(Value::as_str).is_none_or(|t| t == "message"))
            .map(|m| content_text(m.get("content")))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Estimated input tokens: instructions, tools and the input items.
pub(super) fn prompt_tokens(request: &Value) -> u64 {
    let instructions = request.get("instructions").map_or(0, value_tokens);
    let tools = request.get("tools").map_or(0, value_tokens);
    let input = match request.get("input") {
        // One user message: overhead + role + text + priming.
        Some(Value::String(s)) => estimate_tokens(s).saturating_add(7),
        other => messages_tokens(other),
    };
    input.saturating_add(instructions).saturating_add(tools)
}

/// A synthesized `response`: one assistant message with the rule's text; the request's settings echoed.
pub(super) fn synthesize(input: &SynthInput<'_>, ids: &mut Rng) -> Option<Value> {
    let request = input.request;
    let text = input.answer.text(|| echo_text(request));
    if text.len() > input.text_cap {
        return None;
    }
    let (now, model) = (input.now_secs, input.model);
    let tokens_in = prompt_tokens(request);
    let tokens_out = estimate_tokens(&text);
    let id = super::fresh_id(Operation::Responses, ids);
    let msg_id = format!("msg_{}", super::fresh_id(Operation::Responses, ids).trim_start_matches("resp_"));
    Some(json!({
        "id": id,
        "object": "response",
        "created_at": now,
        "status": "completed",
        "background": false,
        "completed_at": now,
        "error": null,
        "incomplete_details": null,
        "instructions": echoed(request, "instructions", Value::Null),
        "max_output_tokens": echoed(request, "max_output_tokens", Value::Null),
        "max_tool_calls": echoed(request, "max_tool_calls", Value::Null),
        "model": model,
        "output": [{
            "id": msg_id,
            "type": "message",
            "status": "completed",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
            "role": "assistant",
        }],
        "parallel_tool_calls": echoed(request, "parallel_tool_calls", Value::Bool(true)),
        "previous_response_id": echoed(request, "previous_response_id", Value::Null),
        "prompt_cache_key": echoed(request, "prompt_cache_key", Value::Null),
        "reasoning": echoed(request, "reasoning", json!({"effort": null, "summary": null})),
        "safety_identifier": echoed(request, "safety_identifier", Value::Null),
        "service_tier": "default",
        "store": echoed(request, "store", Value::Bool(true)),
        "temperature": echoed(request, "temperature", json!(1.0)),
        "text": echoed(request, "text", json!({"format": {"type": "text"}, "verbosity": "medium"})),
        "tool_choice": echoed(request, "tool_choice", json!("auto")),
        "tools": echoed(request, "tools", json!([])),
        "top_logprobs": echoed(request, "top_logprobs", json!(0)),
        "top_p": echoed(request, "top_p", json!(1.0)),
        "truncation": echoed(request, "truncation", json!("disabled")),
        "usage": {
            "input_tokens": tokens_in,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": tokens_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_in.saturating_add(tokens_out),
        },
        "user": echoed(request, "user", Value::Null),
        "metadata": echoed(request, "metadata", json!({})),
    }))
}
