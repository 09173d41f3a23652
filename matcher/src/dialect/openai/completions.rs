//! OpenAI legacy completions (`.../completions`): the chunk stream, its assembly, and synthesized answers.
//!
//! The stream is `text_completion` chunks with `choices[].text` pieces, then the usage chunk when asked for
//! and `data: [DONE]`, like chat completions.

use serde_json::{json, Map, Value};

use super::{assemble_chunks, ChoiceAcc};
use crate::dialect::shape::{
    as_object, copy_keys, interleave, obj, pieces, req_array, req_str, sorted_choices, value_text,
};
use crate::dialect::sse::Sse;
use crate::dialect::{Operation, SynthInput};
use crate::stream::{StreamError, StreamOptions};
use crate::synth::{choice_count, Answer, MAX_CHOICES};
use crate::template::Rng;
use crate::tokens::estimate_tokens;

/// The `text_completion` chunk stream of a completion.
pub(super) fn render(body: &Value, opts: &StreamOptions) -> Result<String, StreamError> {
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

/// Assembles a recorded chunk stream into the `text_completion` body.
pub(super) fn assemble(text: &str) -> Result<Value, StreamError> {
    let op = Operation::Completions;
    let (meta, choices) = assemble_chunks(op, text, "text_completion", false, |acc: &mut String, choice| {
        match choice.get("text") {
            Some(Value::String(t)) => acc.push_str(t),
            None | Some(Value::Null) => {}
            Some(_) => return Err("a choice's `text` is not a string"),
        }
        Ok(())
    })?;
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|(i, c): (u64, ChoiceAcc<String>)| {
            obj([
                ("text", c.body.into()),
                ("index", i.into()),
                ("logprobs", c.logprobs),
                ("finish_reason", c.finish_reason),
            ])
        })
        .collect();
    Ok(meta.body("text_completion", choices))
}

/// One completions prompt: text, or token ids (echoed as nothing: there is no tokenizer to decode them).
enum Prompt {
    Text(String),
    Tokens(usize),
}

fn prompts(prompt: Option<&Value>) -> Vec<Prompt> {
    fn is_int(v: &Value) -> bool {
        v.is_u64() || v.is_i64()
    }
    match prompt {
        Some(Value::String(s)) => vec![Prompt::Text(s.clone())],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(is_int) => vec![Prompt::Tokens(a.len())],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|p| match p {
                Value::String(s) => Prompt::Text(s.clone()),
                Value::Array(t) => Prompt::Tokens(t.len()),
                other => Prompt::Text(value_text(other)),
            })
            .collect(),
        _ => vec![Prompt::Text(String::new())],
    }
}

/// A synthesized `text_completion`: `n` choices per prompt; an echo rule answers each prompt with itself.
pub(super) fn synthesize(input: &SynthInput<'_>, ids: &mut Rng) -> Option<Value> {
    let request = input.request;
    let n = choice_count(request);
    let prompts = prompts(request.get("prompt"));
    if prompts.len().saturating_mul(n) > MAX_CHOICES {
        return None;
    }
    let echo_prompt = request.get("echo").and_then(Value::as_bool).unwrap_or(false);
    let mut choices = Vec::with_capacity(prompts.len() * n);
    let (mut prompt_tokens, mut completion_tokens, mut bytes) = (0u64, 0u64, 0usize);
    for p in &prompts {
        let (prompt_text, tokens) = match p {
            Prompt::Text(t) => (t.as_str(), estimate_tokens(t)),
            Prompt::Tokens(k) => ("", *k as u64),
        };
        prompt_tokens = prompt_tokens.saturating_add(tokens);
        let generated = match input.answer {
            Answer::Text(t) => t.clone(),
            Answer::Echo => prompt_text.to_string(),
            Answer::Nothing => String::new(),
        };
        let generated_tokens = estimate_tokens(&generated);
        let text = if echo_prompt { format!("{prompt_text}{generated}") } else { generated };
        for _ in 0..n {
            bytes = bytes.saturating_add(text.len());
            if bytes > input.text_cap {
                return None;
            }
            completion_tokens = completion_tokens.saturating_add(generated_tokens);
            let index = choices.len();
            choices.push(json!({"text": text, "index": index, "logprobs": null, "finish_reason": "stop"}));
        }
    }
    Some(json!({
        "id": super::fresh_id(Operation::Completions, ids),
        "object": "text_completion",
        "created": input.now_secs,
        "model": input.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens.saturating_add(completion_tokens),
        },
    }))
}
