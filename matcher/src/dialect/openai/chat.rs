//! OpenAI chat completions (`.../chat/completions`): the chunk stream, its assembly, and synthesized answers.
//!
//! The stream is `data: {chat.completion.chunk}` lines: an opening delta per choice with the role, text
//! pieces, tool-call headers then argument pieces, a closing delta with `finish_reason`, an optional usage
//! chunk (`stream_options.include_usage`), then `data: [DONE]`.

use serde_json::{json, Map, Value};

use super::{assemble_chunks, ChoiceAcc};
use crate::dialect::shape::{
    aligned_tokens, as_object, bad, copy_keys, interleave, obj, opt_array, opt_str, path_of, pieces, req_array,
    req_str, sorted_choices,
};
use crate::dialect::sse::Sse;
use crate::dialect::{Operation, SynthInput};
use crate::stream::{StreamError, StreamOptions};
use crate::synth::choice_count;
use crate::template::Rng;
use crate::tokens::{estimate_tokens, messages_tokens, value_tokens};

/// The `chat.completion.chunk` stream of a chat completion.
pub(super) fn render(body: &Value, opts: &StreamOptions) -> Result<String, StreamError> {
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

/// Assembles a recorded chunk stream into the `chat.completion` body.
pub(super) fn assemble(text: &str) -> Result<Value, StreamError> {
    let op = Operation::ChatCompletions;
    // Azure's content-filter chunks have an empty `object`: the SDK skips them too.
    let (meta, choices) =
        assemble_chunks(op, text, "chat.completion.chunk", true, |acc: &mut Map<String, Value>, choice| {
            match choice.get("delta") {
                Some(Value::Object(d)) => crate::dialect::shape::accumulate(acc, d),
                None | Some(Value::Null) => {}
                Some(_) => return Err("a choice's `delta` is not an object"),
            }
            Ok(())
        })?;
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|(i, c): (u64, ChoiceAcc<Map<String, Value>>)| {
            let mut m = c.body;
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
                ("message", Value::Object(m)),
                ("logprobs", c.logprobs),
                ("finish_reason", c.finish_reason),
            ])
        })
        .collect();
    Ok(meta.body("chat.completion", choices))
}

/// A synthesized `chat.completion`: `n` choices of the rule's text.
pub(super) fn synthesize(input: &SynthInput<'_>, ids: &mut Rng) -> Option<Value> {
    let request = input.request;
    let text = input.answer.text(|| crate::dialect::shape::last_user_text(request.get("messages")));
    let n = choice_count(request);
    if text.len().saturating_mul(n) > input.text_cap {
        return None;
    }
    let prompt = prompt_tokens(request);
    let completion = estimate_tokens(&text).saturating_mul(n as u64);
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": "stop",
            })
        })
        .collect();
    Some(json!({
        "id": super::fresh_id(Operation::ChatCompletions, ids),
        "object": "chat.completion",
        "created": input.now_secs,
        "model": input.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": null,
    }))
}

/// Estimated prompt tokens: the messages and the tool definitions.
pub(super) fn prompt_tokens(request: &Value) -> u64 {
    let tools = request.get("tools").map_or(0, value_tokens);
    messages_tokens(request.get("messages")).saturating_add(tools)
}
