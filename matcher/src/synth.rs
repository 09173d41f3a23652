//! Modeled responses: schema-correct answers synthesized for LLM requests that no asset matches.
//!
//! A list of [`SynthRule`]s (the plugin configuration's `synthesize`) is compiled once into a
//! [`Synthesizer`]. For a request, the first rule whose `operation` and `model` glob match answers:
//!
//! - chat completions, completions, Responses API and Anthropic messages get the rule's fixed `text`, or with
//!   `echo: true` the text of the request's last user message (the prompt for completions), in the exact
//!   non-streaming body the live API sends: fresh ids, `created`, the request's model (the Azure deployment
//!   when the body has none), `n` choices, and estimated token `usage`;
//! - embeddings get deterministic pseudo-random unit vectors, one per input: the same (model, input) always
//!   gives the same vector, on every call, process and platform (only IEEE basic arithmetic and `sqrt` are
//!   used), and different inputs give unrelated vectors (cosine near 0). The dimension is the request's
//!   `dimensions`, else the rule's, else the model's default (3072 for `text-embedding-3-large`, 1536
//!   otherwise). `encoding_format: "base64"` gets base64 little-endian f32, as from the live API; floats are
//!   written as the shortest decimal that reads back as the same f32.
//!
//! [`Synthesizer::synthesize`] returns `None` when no rule matches, and also when the answer would be
//! unreasonably large (more than [`MAX_EMBEDDING_FLOATS`] embedding floats or an embeddings answer over the
//! answer budget, [`MAX_CHOICES`] choices, or [`MAX_TEXT_BYTES`] of answer text over all choices): when a rule
//! matched ([`Synthesizer::matches`]), the caller answers a 413 naming the limit. `n` is clamped to
//! 1..=[`crate::limits::MAX_N`], the API's own range. The limits live in [`crate::limits`].
//!
//! # Token estimates
//!
//! [`estimate_tokens`] approximates OpenAI's `o200k_base` tokenizer without its 200k-entry vocabulary. It
//! splits text the way that tokenizer's pre-tokenizer does, then prices each piece:
//!
//! - a letter run (split at lower→upper case changes, so `fooBar` is two) with its optional leading space
//!   is 1 token, plus 0.04 a letter beyond 6 in English, or 0.13 a letter beyond 4 in words that are
//!   accented or non-Latin or in text whose letters are ≥ 1% accented Latin (German, French, Cyrillic…
//!   split more), plus 0.3 a letter beyond 13; ALL-CAPS runs cost 0.9 + 0.17 a letter; a run led by one
//!   punctuation mark instead of a space (`_name`, `.field`, `/path`) costs 0.05 + 0.08 a further letter
//!   more, and one with no leading character (line starts, after brackets) 0.03 a letter more;
//! - Chinese, Japanese and Korean runs cost 0.72 (Han), 0.65 (kana) or 0.5 (Hangul) a character, plus 0.5;
//! - digits: 1 token per group of up to 3; a space before a number is its own token;
//! - ASCII punctuation runs (with their trailing newlines): 1 token up to 3 characters, then 0.45 a
//!   character; other symbols (emoji, CJK punctuation) 1 each;
//! - a whitespace run that is not a word's or punctuation's leading space (newlines, indentation): 1 token.
//!
//! The weights come from piece-level statistics of separate text (manual pages in six languages, Rust and
//! Python sources); a change was kept only when it helped on both that text and the benchmark sample.
//!
//! The sum is rounded, with at least 1 token for non-empty text. Prompt tokens add, like OpenAI's own
//! accounting, 3 tokens a message plus 3 to prime the reply; the role, name and every other string in a
//! message (tool calls, tool results) are estimated as text; an image, audio or file part counts as a flat
//! 85 tokens. Tool definitions are estimated from their strings. Anthropic and older OpenAI tokenizers are
//! not modeled separately. `bench/tokens/` measures the error against the real `o200k_base` and
//! `cl100k_base` tokenizers (`bench/tokens/run.sh`, results in `bench/tokens/results.md`).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::dialect::{Operation, Route};
use crate::error::ConfigError;
use crate::template::{fresh_id, Rng};

pub use crate::limits::{MAX_CHOICES, MAX_DIMENSIONS, MAX_EMBEDDING_FLOATS, MAX_TEXT_BYTES};
/// The flat token price of an image, audio or file part.
const MEDIA_TOKENS: u64 = 85;

fn any() -> String {
    "*".to_string()
}

/// One `synthesize` rule of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthRule {
    /// Operation name as in `Operation::name()` (`openai.chat_completions`, `openai.completions`,
    /// `openai.embeddings`, `openai.responses`, `anthropic.messages`) or `*`.
    #[serde(default = "any")]
    pub operation: String,
    /// Model glob, `*` wildcard anywhere (`gpt-4o*`); default `*`. Case-sensitive. Matched against the
    /// body's `model`, or the Azure deployment when the body has none.
    #[serde(default = "any")]
    pub model: String,
    /// Fixed answer text for chat/completions/responses/messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Answer with the last user message's text (echo).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo: bool,
    /// Embeddings dimension when the request has no `dimensions` (default: the model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    /// Simulated latency of these answers, as on an asset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<crate::asset::Latency>,
}

/// What a text operation answers.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Text(String),
    Echo,
    /// Embeddings-only rule.
    Nothing,
}

#[derive(Debug, Clone)]
struct Rule {
    /// `None` for `*`.
    operation: Option<Operation>,
    model: Glob,
    answer: Answer,
    dimensions: Option<usize>,
    latency: Option<crate::asset::Latency>,
}

/// Compiled `synthesize` rules.
#[derive(Debug, Clone, Default)]
pub struct Synthesizer {
    rules: Vec<Rule>,
    /// The answer budget embeddings are priced against (`None`: `limits::ANSWER_BUDGET`; tests lower it).
    answer_budget: Option<u64>,
}

impl Synthesizer {
    /// Validates and compiles rules; errors name `synthesize[i].field`.
    pub fn compile(rules: &[SynthRule]) -> Result<Self, ConfigError> {
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let field = |f: &str| format!("synthesize[{i}].{f}");
            let operation = if r.operation == "*" {
                None
            } else {
                let op = Operation::ALL.iter().copied().find(|o| o.name() == r.operation);
                let known: Vec<&str> = Operation::ALL.iter().map(|o| o.name()).collect();
                Some(op.ok_or_else(|| {
                    ConfigError::invalid(
                        field("operation"),
                        format!("unknown operation {:?} (known: {}, or \"*\" for all)", r.operation, known.join(", ")),
                    )
                })?)
            };
            if r.model.is_empty() {
                return Err(ConfigError::invalid(field("model"), "empty model pattern (use \"*\" for any model)"));
            }
            let embeddings_only = operation == Some(Operation::Embeddings);
            let answer = match (&r.text, r.echo) {
                (Some(_), true) => {
                    return Err(ConfigError::invalid(
                        field("echo"),
                        "`text` and `echo` are both set; a rule answers with one of them",
                    ))
                }
                (Some(_), false) if embeddings_only => {
                    return Err(ConfigError::invalid(
                        field("text"),
                        "has no effect on openai.embeddings (embeddings answers are vectors)",
                    ))
                }
                (None, true) if embeddings_only => {
                    return Err(ConfigError::invalid(
                        field("echo"),
                        "has no effect on openai.embeddings (embeddings answers are vectors)",
                    ))
                }
                (Some(t), false) => Answer::Text(t.clone()),
                (None, true) => Answer::Echo,
                (None, false) if embeddings_only => Answer::Nothing,
                (None, false) => {
                    let what = operation.map_or("every operation but openai.embeddings", Operation::name);
                    return Err(ConfigError::invalid(
                        field("text"),
                        format!("missing: set `text` (a fixed answer) or `echo: true` for {what}"),
                    ));
                }
            };
            if let Some(d) = r.dimensions {
                if d == 0 || d > MAX_DIMENSIONS {
                    return Err(ConfigError::invalid(
                        field("dimensions"),
                        format!("{d} is out of range (1 to {MAX_DIMENSIONS})"),
                    ));
                }
                if operation.is_some() && !embeddings_only {
                    return Err(ConfigError::invalid(field("dimensions"), "only applies to openai.embeddings"));
                }
            }
            if let Some(l) = &r.latency {
                if !(l.per_token_ms.is_finite() && l.per_token_ms >= 0.0) || l.ttft_ms > crate::limits::MAX_DELAY_MS {
                    return Err(ConfigError::invalid(
                        field("latency"),
                        "ttft_ms must be at most 600000 and per_token_ms a non-negative number",
                    ));
                }
            }
            out.push(Rule {
                operation,
                model: Glob::new(&r.model),
                answer,
                dimensions: r.dimensions,
                latency: r.latency,
            });
        }
        Ok(Synthesizer { rules: out, answer_budget: None })
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// First matching rule wins. Returns the non-streaming response body the live API would send,
    /// schema-correct for the operation, or `None` when no rule matches (or the answer would be too large).
    /// Never panics, whatever the request holds.
    pub fn synthesize(&self, route: &Route, request: &Value, now_secs: u64, ids: &mut Rng) -> Option<Value> {
        let op = route.operation;
        let model = request_model(route, request);
        let rule = self.rule_for(route, request)?;
        let answer = |echo: &dyn Fn() -> String| match &rule.answer {
            Answer::Text(t) => t.clone(),
            Answer::Echo => echo(),
            Answer::Nothing => String::new(),
        };
        match op {
            Operation::ChatCompletions => {
                let text = answer(&|| last_user_text(request.get("messages")));
                chat_completion(request, &model, text, now_secs, ids, self.text_cap())
            }
            Operation::Completions => completion(request, &model, &rule.answer, now_secs, ids, self.text_cap()),
            Operation::Responses => {
                let text = answer(&|| responses_echo(request.get("input")));
                response(request, &model, text, now_secs, ids, self.text_cap())
            }
            Operation::Messages => {
                let text = answer(&|| last_user_text(request.get("messages")));
                anthropic_message(request, &model, text, ids, self.text_cap())
            }
            Operation::Embeddings => {
                let budget = self.answer_budget.unwrap_or(crate::limits::ANSWER_BUDGET);
                embeddings(request, &model, rule.dimensions, budget)
            }
        }
    }
}

impl Synthesizer {
    fn rule_for(&self, route: &Route, request: &Value) -> Option<&Rule> {
        let model = request_model(route, request);
        self.rules.iter().find(|r| r.operation.is_none_or(|o| o == route.operation) && r.model.matches(&model))
    }

    /// Prices embeddings answers against `budget` instead of `limits::ANSWER_BUDGET`.
    pub fn set_answer_budget(&mut self, budget: u64) {
        self.answer_budget = Some(budget);
    }

    /// Most answer text over all choices: [`MAX_TEXT_BYTES`], or less when the answer budget is lower (the
    /// text is copied into the answer tree before the rendered answer is priced).
    fn text_cap(&self) -> usize {
        let budget = self.answer_budget.unwrap_or(crate::limits::ANSWER_BUDGET) / 4;
        MAX_TEXT_BYTES.min(usize::try_from(budget).unwrap_or(usize::MAX))
    }

    /// Does a rule answer this request? (When it does and [`Synthesizer::synthesize`] gives `None`, the answer
    /// was over a limit.)
    pub fn matches(&self, route: &Route, request: &Value) -> bool {
        self.rule_for(route, request).is_some()
    }

    /// The simulated latency of the rule that answers this request, if it sets one.
    pub fn latency(&self, route: &Route, request: &Value) -> Option<crate::asset::Latency> {
        self.rule_for(route, request).and_then(|r| r.latency)
    }
}

/// The request's model: the body's `model` string, else the Azure deployment, else empty.
fn request_model(route: &Route, request: &Value) -> String {
    match (request.get("model").and_then(Value::as_str), &route.deployment) {
        (Some(m), _) => m.to_string(),
        (None, Some(d)) => d.clone(),
        (None, None) => String::new(),
    }
}

/// A `*` glob: literal parts between wildcards.
#[derive(Debug, Clone)]
struct Glob {
    parts: Vec<String>,
}

impl Glob {
    fn new(pattern: &str) -> Self {
        Glob { parts: pattern.split('*').map(str::to_string).collect() }
    }

    fn matches(&self, s: &str) -> bool {
        match self.parts.as_slice() {
            [] => s.is_empty(),
            [only] => s == only,
            [first, middle @ .., last] => {
                let Some(mut rest) = s.strip_prefix(first.as_str()).and_then(|r| r.strip_suffix(last.as_str())) else {
                    return false;
                };
                for part in middle {
                    match rest.find(part.as_str()) {
                        Some(at) => rest = rest.get(at + part.len()..).unwrap_or_default(),
                        None => return false,
                    }
                }
                true
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Text operations
// ---------------------------------------------------------------------------------------------------------

/// `n`, clamped to 1..=MAX_N (the API's own limit).
fn choice_count(request: &Value) -> usize {
    request.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, crate::limits::MAX_N) as usize
}

fn chat_completion(request: &Value, model: &str, text: String, now: u64, ids: &mut Rng, cap: usize) -> Option<Value> {
    let n = choice_count(request);
    if text.len().saturating_mul(n) > cap {
        return None;
    }
    let prompt = chat_prompt_tokens(request);
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
        "id": fresh_id(Operation::ChatCompletions, ids),
        "object": "chat.completion",
        "created": now,
        "model": model,
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

fn completion(request: &Value, model: &str, answer: &Answer, now: u64, ids: &mut Rng, cap: usize) -> Option<Value> {
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
        let generated = match answer {
            Answer::Text(t) => t.clone(),
            Answer::Echo => prompt_text.to_string(),
            Answer::Nothing => String::new(),
        };
        let generated_tokens = estimate_tokens(&generated);
        let text = if echo_prompt { format!("{prompt_text}{generated}") } else { generated };
        for _ in 0..n {
            bytes = bytes.saturating_add(text.len());
            if bytes > cap {
                return None;
            }
            completion_tokens = completion_tokens.saturating_add(generated_tokens);
            let index = choices.len();
            choices.push(json!({"text": text, "index": index, "logprobs": null, "finish_reason": "stop"}));
        }
    }
    Some(json!({
        "id": fresh_id(Operation::Completions, ids),
        "object": "text_completion",
        "created": now,
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens.saturating_add(completion_tokens),
        },
    }))
}

/// The request's value for `key`, or `default` when absent or null.
fn echoed(request: &Value, key: &str, default: Value) -> Value {
    match request.get(key) {
        Some(v) if !v.is_null() => v.clone(),
        _ => default,
    }
}

fn response(request: &Value, model: &str, text: String, now: u64, ids: &mut Rng, cap: usize) -> Option<Value> {
    if text.len() > cap {
        return None;
    }
    let input = responses_prompt_tokens(request);
    let output = estimate_tokens(&text);
    let id = fresh_id(Operation::Responses, ids);
    let msg_id = format!("msg_{}", fresh_id(Operation::Responses, ids).trim_start_matches("resp_"));
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
            "input_tokens": input,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input.saturating_add(output),
        },
        "user": echoed(request, "user", Value::Null),
        "metadata": echoed(request, "metadata", json!({})),
    }))
}

fn anthropic_message(request: &Value, model: &str, text: String, ids: &mut Rng, cap: usize) -> Option<Value> {
    if text.len() > cap {
        return None;
    }
    let input = anthropic_prompt_tokens(request);
    let output = estimate_tokens(&text);
    Some(json!({
        "id": fresh_id(Operation::Messages, ids),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": input,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output,
            "service_tier": "standard",
        },
    }))
}

// ---------------------------------------------------------------------------------------------------------
// Reading requests: echo text and prompt token estimates
// ---------------------------------------------------------------------------------------------------------

/// The text of a message `content`: a string, or its text parts joined by newlines.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(m) => {
                        let ty = m.get("type").and_then(Value::as_str).unwrap_or("text");
                        if matches!(ty, "text" | "input_text" | "output_text") {
                            m.get("text").and_then(Value::as_str)
                        } else {
                            None
                        }
                    }
                    _ => None,
                })
                .collect();
            texts.join("\n")
        }
        _ => String::new(),
    }
}

fn is_user(item: &Value) -> bool {
    item.get("role").and_then(Value::as_str) == Some("user")
}

/// The last user message's text of a chat/Anthropic `messages` array; empty when there is none.
fn last_user_text(messages: Option<&Value>) -> String {
    let Some(messages) = messages.and_then(Value::as_array) else {
        return String::new();
    };
    messages.iter().rev().find(|m| is_user(m)).map(|m| content_text(m.get("content"))).unwrap_or_default()
}

/// Responses API `input`: the string itself, or the last user item's text.
fn responses_echo(input: Option<&Value>) -> String {
    match input {
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

/// A scalar as text (numbers, booleans); empty for null and containers.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// Tokens of every string in a JSON value, skipping `type` tags; media parts count a flat price and their
/// (base64) data is not read.
fn value_tokens(v: &Value) -> u64 {
    match v {
        Value::String(s) => estimate_tokens(s),
        Value::Array(a) => a.iter().map(value_tokens).fold(0, u64::saturating_add),
        Value::Object(m) => {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
            if matches!(
                ty,
                "image" | "image_url" | "input_image" | "input_audio" | "audio" | "file" | "input_file" | "document"
            ) {
                return MEDIA_TOKENS;
            }
            m.iter().filter(|(k, _)| k.as_str() != "type").map(|(_, x)| value_tokens(x)).fold(0, u64::saturating_add)
        }
        _ => 0,
    }
}

/// 3 tokens a message plus its strings, plus 3 priming the reply.
fn messages_tokens(messages: Option<&Value>) -> u64 {
    let per = messages
        .and_then(Value::as_array)
        .map(|ms| ms.iter().map(|m| value_tokens(m).saturating_add(3)).fold(0, u64::saturating_add))
        .unwrap_or(0);
    per.saturating_add(3)
}

fn chat_prompt_tokens(request: &Value) -> u64 {
    let tools = request.get("tools").map_or(0, value_tokens);
    messages_tokens(request.get("messages")).saturating_add(tools)
}

fn anthropic_prompt_tokens(request: &Value) -> u64 {
    let system = request.get("system").map_or(0, value_tokens);
    let tools = request.get("tools").map_or(0, value_tokens);
    messages_tokens(request.get("messages")).saturating_add(system).saturating_add(tools)
}

fn responses_prompt_tokens(request: &Value) -> u64 {
    let instructions = request.get("instructions").map_or(0, value_tokens);
    let tools = request.get("tools").map_or(0, value_tokens);
    let input = match request.get("input") {
        // One user message: overhead + role + text + priming.
        Some(Value::String(s)) => estimate_tokens(s).saturating_add(7),
        other => messages_tokens(other),
    };
    input.saturating_add(instructions).saturating_add(tools)
}

// ---------------------------------------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------------------------------------

/// One embeddings input: text, or token ids (canonical text of the ids, and their count).
enum EmbedInput {
    Text(String),
    Tokens(String, usize),
}

impl EmbedInput {
    fn tokens(&self) -> u64 {
        match self {
            EmbedInput::Text(t) => estimate_tokens(t),
            EmbedInput::Tokens(_, n) => *n as u64,
        }
    }

    fn seed_bytes(&self, model: &str) -> Vec<u8> {
        let (kind, body) = match self {
            EmbedInput::Text(t) => ("text", t.as_str()),
            EmbedInput::Tokens(ids, _) => ("tokens", ids.as_str()),
        };
        let mut b = Vec::with_capacity(model.len() + body.len() + 32);
        b.extend_from_slice(b"understudy.embedding.v1\0");
        b.extend_from_slice(model.as_bytes());
        b.push(0);
        b.extend_from_slice(kind.as_bytes());
        b.push(0);
        b.extend_from_slice(body.as_bytes());
        b
    }
}

fn token_ids(a: &[Value]) -> EmbedInput {
    let ids: Vec<String> = a.iter().map(value_text).collect();
    EmbedInput::Tokens(ids.join(","), a.len())
}

fn embed_inputs(input: Option<&Value>) -> Vec<EmbedInput> {
    match input {
        Some(Value::String(s)) => vec![EmbedInput::Text(s.clone())],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => vec![token_ids(a)],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::Array(t) => token_ids(t),
                other => EmbedInput::Text(value_text(other)),
            })
            .collect(),
        Some(other) if !other.is_null() => vec![EmbedInput::Text(value_text(other))],
        _ => Vec::new(),
    }
}

/// The model's native dimension.
fn default_dimensions(model: &str) -> usize {
    if model.contains("text-embedding-3-large") {
        3072
    } else {
        1536
    }
}

fn embeddings(request: &Value, model: &str, rule_dimensions: Option<usize>, budget: u64) -> Option<Value> {
    let requested = request
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| (1..=MAX_DIMENSIONS).contains(d));
    let dims = requested.or(rule_dimensions).unwrap_or_else(|| default_dimensions(model));
    let inputs = embed_inputs(request.get("input"));
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    // Floats as JSON cost several times their base64 form: both are priced before any vector is built.
    let floats = inputs.len().saturating_mul(dims);
    if floats > MAX_EMBEDDING_FLOATS || crate::budget::embeddings_over_budget(floats, dims, base64, budget) {
        return None;
    }
    let mut tokens = 0u64;
    let mut data = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        tokens = tokens.saturating_add(input.tokens());
        let v = embedding_vector(&input.seed_bytes(model), dims);
        let embedding = if base64 {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            Value::Array(v.iter().map(|x| f32_value(*x)).collect())
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    let mut body = Map::new();
    body.insert("object".into(), json!("list"));
    body.insert("data".into(), Value::Array(data));
    body.insert("model".into(), json!(model));
    body.insert("usage".into(), json!({"prompt_tokens": tokens, "total_tokens": tokens}));
    Some(Value::Object(body))
}

/// The shortest decimal that reads back as this f32.
fn f32_value(x: f32) -> Value {
    serde_json::from_str::<Number>(&format!("{x:?}")).map_or(Value::Null, Value::Number)
}

/// A deterministic unit vector seeded by SHA-256 of `seed`. Components are Irwin–Hall(4) (sums of four
/// 16-bit uniforms, close to Gaussian), so the direction is close to uniform on the sphere; only integer
/// arithmetic, IEEE `+ - * /` and `sqrt` are used, so every platform computes the same bits.
fn embedding_vector(seed: &[u8], dims: usize) -> Vec<f32> {
    let digest = Sha256::digest(seed);
    let seed = digest.iter().take(8).fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut rng = Rng::new(seed);
    let raw: Vec<f64> = (0..dims)
        .map(|_| {
            let r = rng.next_u64();
            let sum = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
            // Each uniform in [0, 1): mean 2 for the sum; centre it.
            (sum as f64 + 2.0) / 65_536.0 - 2.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return (0..dims).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    }
    raw.iter().map(|x| (x / norm) as f32).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Token estimate
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Upper,
    /// Lowercase and caseless letters (CJK, marks).
    Lower,
    Digit,
    Newline,
    Space,
    Punct,
}

fn class(c: char) -> Class {
    if c == '\n' || c == '\r' {
        Class::Newline
    } else if c.is_whitespace() {
        Class::Space
    } else if c.is_alphabetic() {
        if c.is_uppercase() {
            Class::Upper
        } else {
            Class::Lower
        }
    } else if is_mark(c) {
        Class::Lower
    } else if c.is_numeric() {
        Class::Digit
    } else {
        Class::Punct
    }
}

/// Common combining-mark blocks (letters for the tokenizer).
fn is_mark(c: char) -> bool {
    matches!(u32::from(c), 0x300..=0x36F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

fn is_letter(c: Option<Class>) -> bool {
    matches!(c, Some(Class::Upper | Class::Lower))
}

/// Accented Latin letters (Latin-1 Supplement to Latin Extended-B, Latin Extended Additional).
fn is_accented_latin(c: char) -> bool {
    matches!(u32::from(c), 0xC0..=0x24F | 0x1E00..=0x1EFF) && c.is_alphabetic()
}

/// Per-character price of a CJK letter, `None` for other letters.
fn cjk_price(c: char) -> Option<f64> {
    match u32::from(c) {
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FFFF => Some(0.72),
        0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => Some(0.65),
        0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => Some(0.5),
        _ => None,
    }
}

/// Estimated number of tokens of `text` for OpenAI's `o200k_base` tokenizer; see the module doc for the
/// method and `bench/tokens/results.md` for its measured error. Linear time, no allocation per piece.
pub fn estimate_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let chars: Vec<char> = text.chars().collect();
    let letters = chars.iter().filter(|c| c.is_alphabetic()).count();
    let accented = chars.iter().filter(|c| is_accented_latin(**c)).count();
    // Text whose letters are ≥ 1% accented is not English: its words split more.
    let foreign = accented * 100 >= letters.max(1);
    let at = |k: usize| chars.get(k).copied().map(class);
    let mut cost = 0.0f64;
    let mut i = 0;
    while let Some(c) = chars.get(i).copied() {
        let cls = class(c);
        // A letter run with an optional leading space or single punctuation mark.
        let prefixed = matches!(cls, Class::Space | Class::Punct) && is_letter(at(i + 1));
        if prefixed || is_letter(Some(cls)) {
            let start = if prefixed { i + 1 } else { i };
            let mut k = start;
            while at(k) == Some(Class::Upper) {
                k += 1;
            }
            while at(k) == Some(Class::Lower) {
                k += 1;
            }
            let word = chars.get(start..k).unwrap_or_default();
            let prefix = if prefixed { Some(c) } else { None };
            cost += word_cost(word, prefix, foreign);
            i = k + contraction_len(&chars, k);
            continue;
        }
        match cls {
            Class::Digit => {
                let mut k = i;
                while k < i + 3 && at(k) == Some(Class::Digit) {
                    k += 1;
                }
                cost += 1.0;
                i = k;
            }
            Class::Punct | Class::Space if c == ' ' && at(i + 1) == Some(Class::Punct) || cls == Class::Punct => {
                let mut k = if cls == Class::Space { i + 1 } else { i };
                let run_start = k;
                let mut non_ascii = 0usize;
                while at(k) == Some(Class::Punct) {
                    if chars.get(k).is_some_and(|c| !c.is_ascii()) {
                        non_ascii += 1;
                    }
                    k += 1;
                }
                let run = k - run_start;
                let ascii = run - non_ascii;
                let mut trailing = 0usize;
                while chars.get(k).is_some_and(|c| matches!(c, '\r' | '\n' | '/')) {
                    k += 1;
                    trailing += 1;
                }
                cost += punct_cost(ascii) + non_ascii as f64 + if ascii == 0 && trailing > 0 { 1.0 } else { 0.0 };
                i = k;
            }
            _ => {
                // Whitespace (a lone space before a letter or punctuation was taken above).
                let mut e = i;
                let mut last_newline = None;
                while matches!(at(e), Some(Class::Space | Class::Newline)) {
                    if at(e) == Some(Class::Newline) {
                        last_newline = Some(e);
                    }
                    e += 1;
                }
                i = match last_newline {
                    Some(nl) => nl + 1,
                    None if e >= chars.len() || e - i == 1 => e.max(i + 1),
                    // Leave the last space to the next word.
                    None => e - 1,
                };
                cost += 1.0;
            }
        }
    }
    (cost.round() as u64).max(1)
}

/// `'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d` after a word (any case) belong to it.
fn contraction_len(chars: &[char], k: usize) -> usize {
    if chars.get(k) != Some(&'\'') {
        return 0;
    }
    let lower = |j: usize| chars.get(k + j).map(|c| c.to_ascii_lowercase());
    match (lower(1), lower(2)) {
        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
        (Some('s' | 't' | 'm' | 'd'), _) => 2,
        _ => 0,
    }
}

fn punct_cost(ascii_run: usize) -> f64 {
    match ascii_run {
        0 => 0.0,
        1..=3 => 1.0,
        n => 1.0 + 0.45 * (n - 3) as f64,
    }
}

fn word_cost(word: &[char], prefix: Option<char>, foreign_text: bool) -> f64 {
    let n = word.len();
    if n == 0 {
        return 0.0;
    }
    let cjk_chars = word.iter().filter(|c| cjk_price(**c).is_some()).count();
    if cjk_chars > 0 {
        // Mixed runs: CJK characters at their price, the rest like foreign letters.
        let cjk_part: f64 = word.iter().filter_map(|c| cjk_price(*c)).sum();
        let rest = (n - cjk_chars) as f64 * 0.35;
        let punct_prefix = if prefix.is_some_and(|p| p != ' ') { 0.5 } else { 0.0 };
        return 0.5 + cjk_part + rest + punct_prefix;
    }
    let nf = n as f64;
    let upper = word.iter().filter(|c| c.is_uppercase()).count();
    let non_latin = word.iter().any(|c| !c.is_ascii() && !is_accented_latin(*c) && !is_mark(*c));
    let foreign = foreign_text || non_latin || word.iter().any(|c| is_accented_latin(*c));
    let mut cost = if upper == n && n > 2 {
        // ALL CAPS: about a token per 3 letters.
        0.9 + 0.17 * nf
    } else if foreign {
        1.0 + 0.13 * (nf - 4.0).max(0.0) + if upper > 0 { 0.15 } else { 0.0 }
    } else {
        1.0 + 0.04 * (nf - 6.0).max(0.0) + if upper > 0 { 0.05 } else { 0.0 }
    };
    cost += 0.3 * (nf - 13.0).max(0.0);
    match prefix {
        // Line starts, after brackets: slightly rarer forms.
        None if n >= 3 => cost += 0.03 * nf.min(12.0),
        // `_name`, `.field`, `/path`: much rarer forms than ` word`.
        Some(p) if p != ' ' => cost += 0.05 + 0.08 * (nf - 1.0).min(12.0),
        _ => {}
    }
    cost
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::dialect::classify;

    fn rule(op: &str, model: &str) -> SynthRule {
        SynthRule {
            operation: op.to_string(),
            model: model.to_string(),
            text: Some("modeled".to_string()),
            echo: false,
            dimensions: None,
            latency: None,
        }
    }

    fn echo_rule(op: &str) -> SynthRule {
        SynthRule { text: None, echo: true, ..rule(op, "*") }
    }

    fn emb_rule(dimensions: Option<usize>) -> SynthRule {
        SynthRule { text: None, dimensions, ..rule("openai.embeddings", "*") }
    }

    fn synth(rules: &[SynthRule], path: &str, body: Value) -> Option<Value> {
        let s = Synthesizer::compile(rules).unwrap();
        let route = classify("POST", path).unwrap();
        s.synthesize(&route, &body, 1_764_403_200, &mut Rng::new(7))
    }

    fn vector(v: &Value, i: usize) -> Vec<f32> {
        v["data"][i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    }

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>() / (norm(a) * norm(b))
    }

    fn usage(v: &Value, a: &str, b: &str, total: &str) {
        let (x, y, t) =
            (v["usage"][a].as_u64().unwrap(), v["usage"][b].as_u64().unwrap(), v["usage"][total].as_u64().unwrap());
        assert!(x > 0 && y > 0, "{v}");
        assert_eq!(x + y, t);
    }

    #[test]
    fn chat_completion_shape() {
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]});
        let v = synth(&[rule("*", "*")], "/v1/chat/completions", body).unwrap();
        assert_eq!(v["object"], "chat.completion");
        let id = v["id"].as_str().unwrap();
        assert!(id.starts_with("chatcmpl-") && id.len() == 38, "{id}");
        assert_eq!(v["created"], 1_764_403_200u64);
        assert_eq!(v["model"], "gpt-4o-mini");
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 1);
        let c = &choices[0];
        assert_eq!(c["index"], 0);
        assert_eq!(c["message"]["role"], "assistant");
        assert_eq!(c["message"]["content"], "modeled");
        assert!(c["message"]["refusal"].is_null());
        assert!(c["logprobs"].is_null());
        assert_eq!(c["finish_reason"], "stop");
        usage(&v, "prompt_tokens", "completion_tokens", "total_tokens");
        // 2 messages: 2 × 3 overhead + roles + texts + 3 priming.
        let p = v["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!((12..=20).contains(&p), "{p}");
    }

    #[test]
    fn n_choices() {
        let body = json!({"model": "gpt-4o", "n": 3, "messages": [{"role": "user", "content": "x"}]});
        let v = synth(&[rule("openai.chat_completions", "*")], "/v1/chat/completions", body).unwrap();
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
            assert_eq!(c["message"]["content"], "modeled");
        }
        assert_eq!(v["usage"]["completion_tokens"], 3 * estimate_tokens("modeled"));
        let huge = json!({"n": 1_000_000_000u64, "messages": []});
        let v = synth(&[rule("*", "*")], "/v1/chat/completions", huge).unwrap();
        assert_eq!(v["choices"].as_array().unwrap().len(), 128);
    }

    #[test]
    fn echo_string_and_array_content() {
        let rules = [echo_rule("*")];
        let body = json!({"model": "m", "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "second question"},
            {"role": "tool", "content": "tool output", "tool_call_id": "c1"},
        ]});
        let v = synth(&rules, "/v1/chat/completions", body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "second question");
        let body = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look at"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "this"},
        ]}]});
        let v = synth(&rules, "/v1/chat/completions", body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "look at\nthis");
        // Anthropic content blocks.
        let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text", "text": "bonjour"}]}]});
        let v = synth(&rules, "/v1/messages", body).unwrap();
        assert_eq!(v["content"][0]["text"], "bonjour");
        // Responses API: a string, or items.
        let v = synth(&rules, "/v1/responses", json!({"model": "gpt-4.1", "input": "hello"})).unwrap();
        assert_eq!(v["output"][0]["content"][0]["text"], "hello");
        let body = json!({"model": "gpt-4.1", "input": [
            {"role": "user", "content": "old"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "new"}]},
            {"type": "function_call_output", "call_id": "c", "output": "42"},
        ]});
        let v = synth(&rules, "/v1/responses", body).unwrap();
        assert_eq!(v["output"][0]["content"][0]["text"], "new");
        // Completions: the prompt.
        let v =
            synth(&rules, "/v1/completions", json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this"})).unwrap();
        assert_eq!(v["choices"][0]["text"], "Say this");
        // No user message: empty answer, still schema-correct.
        let v = synth(
            &rules,
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "system", "content": "s"}]}),
        )
        .unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "");
    }

    #[test]
    fn completions_shape_prompts_and_n() {
        let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": ["a b c", "d"], "n": 2});
        let v = synth(&[rule("openai.completions", "*")], "/v1/completions", body).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 4);
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
            assert_eq!(c["text"], "modeled");
            assert_eq!(c["finish_reason"], "stop");
            assert!(c["logprobs"].is_null());
        }
        usage(&v, "prompt_tokens", "completion_tokens", "total_tokens");
        // Token-id prompts count their ids; `echo: true` prepends the prompt.
        let body = json!({"model": "x", "prompt": [1, 2, 3, 4, 5]});
        let v = synth(&[rule("*", "*")], "/v1/completions", body).unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 5);
        let body = json!({"model": "x", "prompt": [[1, 2], [3]]});
        let v = synth(&[rule("*", "*")], "/v1/completions", body).unwrap();
        assert_eq!((v["usage"]["prompt_tokens"].as_u64(), v["choices"].as_array().unwrap().len()), (Some(3), 2));
        let many: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let body = json!({"model": "x", "prompt": many, "n": 128});
        assert!(synth(&[rule("*", "*")], "/v1/completions", body).is_none());
        let big = "x".repeat(1 << 20);
        let body = json!({"model": "x", "n": 128, "messages": [{"role": "user", "content": big}]});
        assert!(synth(&[echo_rule("*")], "/v1/chat/completions", body).is_none());
        let body = json!({"model": "x", "prompt": "Q: ", "echo": true});
        let v = synth(&[rule("*", "*")], "/v1/completions", body).unwrap();
        assert_eq!(v["choices"][0]["text"], "Q: modeled");
    }

    #[test]
    fn responses_shape() {
        let body =
            json!({"model": "gpt-4.1-mini", "input": "Tell me a joke", "instructions": "Be funny", "temperature": 0.5});
        let v = synth(&[rule("openai.responses", "gpt-4.1*")], "/v1/responses", body).unwrap();
        let id = v["id"].as_str().unwrap();
        assert!(id.starts_with("resp_") && id.len() == 53, "{id}");
        assert_eq!(v["object"], "response");
        assert_eq!(v["created_at"], 1_764_403_200u64);
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "gpt-4.1-mini");
        assert_eq!(v["instructions"], "Be funny");
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["tools"], json!([]));
        assert_eq!(v["tool_choice"], "auto");
        assert_eq!(v["parallel_tool_calls"], true);
        assert!(v["error"].is_null() && v["incomplete_details"].is_null());
        let out = &v["output"][0];
        assert_eq!(out["type"], "message");
        assert!(out["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(out["status"], "completed");
        assert_eq!(out["role"], "assistant");
        assert_eq!(
            out["content"][0],
            json!({"type": "output_text", "annotations": [], "logprobs": [], "text": "modeled"})
        );
        usage(&v, "input_tokens", "output_tokens", "total_tokens");
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 0);
        assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
    }

    #[test]
    fn anthropic_shape() {
        let body = json!({"model": "claude-haiku-4-5", "max_tokens": 100, "system": "Be terse.", "messages": [{"role": "user", "content": "Hello"}]});
        let v = synth(&[rule("anthropic.messages", "claude-*")], "/v1/messages", body).unwrap();
        let id = v["id"].as_str().unwrap();
        assert!(id.starts_with("msg_01") && id.len() == 28, "{id}");
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["model"], "claude-haiku-4-5");
        assert_eq!(v["content"], json!([{"type": "text", "text": "modeled"}]));
        assert_eq!(v["stop_reason"], "end_turn");
        assert!(v["stop_sequence"].is_null());
        assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    }

    #[test]
    fn azure_deployment_is_the_model() {
        let rules = [rule("*", "my-gpt*"), emb_rule(None)];
        let body = json!({"messages": [{"role": "user", "content": "hi"}]});
        let v = synth(&rules, "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21", body).unwrap();
        assert_eq!(v["model"], "my-gpt4o");
        let v = synth(&rules, "/openai/deployments/other/chat/completions", json!({"messages": []}));
        assert!(v.is_none());
        // A model in the body wins.
        let v = synth(&rules, "/openai/deployments/x/chat/completions", json!({"model": "my-gpt-5", "messages": []}))
            .unwrap();
        assert_eq!(v["model"], "my-gpt-5");
        let v = synth(&rules, "/openai/deployments/emb-large/embeddings", json!({"input": "a"})).unwrap();
        assert_eq!(v["model"], "emb-large");
    }

    #[test]
    fn embeddings_shape_and_dimension_precedence() {
        let v =
            synth(&[emb_rule(None)], "/v1/embeddings", json!({"model": "text-embedding-3-small", "input": "hello"}))
                .unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "text-embedding-3-small");
        assert_eq!(v["data"][0]["object"], "embedding");
        assert_eq!(v["data"][0]["index"], 0);
        assert_eq!(vector(&v, 0).len(), 1536);
        let t = v["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(t > 0);
        assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap(), t);
        let dims =
            |rule_dims, body: Value| vector(&synth(&[emb_rule(rule_dims)], "/v1/embeddings", body).unwrap(), 0).len();
        assert_eq!(dims(None, json!({"model": "text-embedding-3-large", "input": "a"})), 3072);
        assert_eq!(dims(None, json!({"model": "text-embedding-ada-002", "input": "a"})), 1536);
        assert_eq!(dims(None, json!({"model": "custom", "input": "a"})), 1536);
        assert_eq!(dims(Some(64), json!({"model": "text-embedding-3-large", "input": "a"})), 64);
        assert_eq!(dims(Some(64), json!({"model": "text-embedding-3-large", "input": "a", "dimensions": 256})), 256);
        // An unusable request dimension falls back to the rule's.
        assert_eq!(dims(Some(64), json!({"model": "m", "input": "a", "dimensions": 0})), 64);
        assert_eq!(dims(Some(64), json!({"model": "m", "input": "a", "dimensions": 10_000_000})), 64);
    }

    #[test]
    fn embeddings_are_unit_deterministic_and_distinct() {
        let rules = [emb_rule(None)];
        let get = |input: &str| {
            let v =
                synth(&rules, "/v1/embeddings", json!({"model": "text-embedding-3-small", "input": input})).unwrap();
            vector(&v, 0)
        };
        let a = get("The quick brown fox");
        let a2 = get("The quick brown fox");
        let b = get("The quick brown fix");
        assert_eq!(a, a2);
        assert!((1.0 - norm(&a)).abs() < 1e-5, "{}", norm(&a));
        assert!((1.0 - norm(&b)).abs() < 1e-5);
        assert!(cosine(&a, &b).abs() < 0.5, "{}", cosine(&a, &b));
        // Another model gives another vector for the same text.
        let v =
            synth(&rules, "/v1/embeddings", json!({"model": "text-embedding-ada-002", "input": "The quick brown fox"}))
                .unwrap();
        assert!(cosine(&a, &vector(&v, 0)).abs() < 0.5);
        // Pinned: the same vector in every process and on every platform.
        let v = synth(&[emb_rule(Some(4))], "/v1/embeddings", json!({"model": "m", "input": "pin"})).unwrap();
        assert_eq!(v["data"][0]["embedding"].to_string(), "[0.9941296,0.057092004,-0.06724903,-0.06264534]");
        // Floats are written as shortest f32 decimals.
        for x in v["data"][0]["embedding"].as_array().unwrap() {
            let s = x.to_string();
            let f: f32 = s.parse().unwrap();
            assert_eq!(format!("{f:?}"), s);
        }
        // Many random pairs: near-orthogonal on average.
        let vs: Vec<Vec<f32>> = (0..20).map(|i| get(&format!("text number {i}"))).collect();
        let mean: f64 = (1..20).map(|i| cosine(&vs[0], &vs[i]).abs()).sum::<f64>() / 19.0;
        assert!(mean < 0.1, "{mean}");
    }

    #[test]
    fn embeddings_multiple_and_token_inputs() {
        let rules = [emb_rule(Some(8))];
        let v = synth(&rules, "/v1/embeddings", json!({"model": "m", "input": ["a", "b", "a"]})).unwrap();
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        for (i, d) in data.iter().enumerate() {
            assert_eq!(d["index"], i);
        }
        assert_eq!(vector(&v, 0), vector(&v, 2));
        assert_ne!(vector(&v, 0), vector(&v, 1));
        // Token ids: one array, or an array of arrays.
        let v = synth(&rules, "/v1/embeddings", json!({"model": "m", "input": [101, 202, 303]})).unwrap();
        assert_eq!((v["data"].as_array().unwrap().len(), v["usage"]["prompt_tokens"].as_u64()), (1, Some(3)));
        let v2 = synth(&rules, "/v1/embeddings", json!({"model": "m", "input": [[101, 202, 303], [7]]})).unwrap();
        assert_eq!((v2["data"].as_array().unwrap().len(), v2["usage"]["prompt_tokens"].as_u64()), (2, Some(4)));
        assert_eq!(vector(&v, 0), vector(&v2, 0));
        assert!((1.0 - norm(&vector(&v2, 1))).abs() < 1e-5);
        // base64 when asked, decoding to the same floats.
        let f = synth(&rules, "/v1/embeddings", json!({"model": "m", "input": "z"})).unwrap();
        let b =
            synth(&rules, "/v1/embeddings", json!({"model": "m", "input": "z", "encoding_format": "base64"})).unwrap();
        let raw =
            base64::engine::general_purpose::STANDARD.decode(b["data"][0]["embedding"].as_str().unwrap()).unwrap();
        let decoded: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(decoded, vector(&f, 0));
        // Too many floats: not synthesized.
        let inputs: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
        assert!(synth(&[emb_rule(Some(65_536))], "/v1/embeddings", json!({"model": "m", "input": inputs})).is_none());
    }

    #[test]
    fn first_matching_rule_wins_and_globs() {
        let rules = [
            SynthRule { text: Some("mini".into()), ..rule("openai.chat_completions", "gpt-4o-mini*") },
            SynthRule { text: Some("4o".into()), ..rule("openai.chat_completions", "gpt-4o*") },
            SynthRule { text: Some("mid".into()), ..rule("*", "*-mid-*") },
            SynthRule { text: Some("claude".into()), ..rule("anthropic.messages", "*") },
        ];
        let ask = |path: &str, model: &str| {
            synth(&rules, path, json!({"model": model, "messages": []})).map(|v| {
                v["choices"][0]["message"]["content"].as_str().or(v["content"][0]["text"].as_str()).unwrap().to_string()
            })
        };
        assert_eq!(ask("/v1/chat/completions", "gpt-4o-mini-2024-07-18").as_deref(), Some("mini"));
        assert_eq!(ask("/v1/chat/completions", "gpt-4o").as_deref(), Some("4o"));
        assert_eq!(ask("/v1/chat/completions", "x-mid-y").as_deref(), Some("mid"));
        assert_eq!(ask("/v1/chat/completions", "x-mid-").as_deref(), Some("mid"));
        assert_eq!(ask("/v1/chat/completions", "GPT-4O"), None);
        assert_eq!(ask("/v1/chat/completions", "gpt-5"), None);
        assert_eq!(ask("/v1/messages", "gpt-4o").as_deref(), Some("claude"));
        assert!(synth(&rules, "/v1/embeddings", json!({"model": "gpt-4o", "input": "a"})).is_none());
        let g = Glob::new("a*b*c");
        assert!(g.matches("abc") && g.matches("aXbYc") && g.matches("abbc"));
        assert!(!g.matches("ac") && !g.matches("abca") && !Glob::new("a*a").matches("a"));
        assert!(Glob::new("*").matches("") && Glob::new("**").matches("x") && !Glob::new("exact").matches("exact2"));
        assert!(Synthesizer::compile(&[]).unwrap().is_empty());
        assert!(!Synthesizer::compile(&rules).unwrap().is_empty());
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |r: SynthRule| match Synthesizer::compile(&[rule("*", "*"), r]).unwrap_err() {
            ConfigError::Invalid { field, reason } => (field, reason),
            e => panic!("{e:?}"),
        };
        let (f, why) = err(rule("openai.chat", "*"));
        assert_eq!(f, "synthesize[1].operation");
        assert!(why.contains("openai.chat_completions"), "{why}");
        assert_eq!(err(SynthRule { echo: true, ..rule("*", "*") }).0, "synthesize[1].echo");
        assert_eq!(err(SynthRule { text: None, ..rule("*", "*") }).0, "synthesize[1].text");
        assert_eq!(err(SynthRule { text: None, ..rule("openai.responses", "*") }).0, "synthesize[1].text");
        assert_eq!(err(rule("openai.embeddings", "*")).0, "synthesize[1].text");
        assert_eq!(err(rule("*", "")).0, "synthesize[1].model");
        for d in [0, 65_537, usize::MAX] {
            assert_eq!(err(emb_rule(Some(d))).0, "synthesize[1].dimensions");
        }
        let (f, _) = err(SynthRule { dimensions: Some(8), ..rule("openai.chat_completions", "*") });
        assert_eq!(f, "synthesize[1].dimensions");
        // Valid: dimensions on `*`, bare embeddings rule, max dimension.
        assert!(Synthesizer::compile(&[SynthRule { dimensions: Some(8), ..rule("*", "*") }, emb_rule(Some(65_536))])
            .is_ok());
        // Serde: defaults and unknown fields.
        let r: SynthRule = serde_json::from_str(r#"{"text": "hi"}"#).unwrap();
        assert_eq!((r.operation.as_str(), r.model.as_str(), r.echo, r.dimensions), ("*", "*", false, None));
        assert!(serde_json::from_str::<SynthRule>(r#"{"text": "hi", "txt": 1}"#).is_err());
    }

    #[test]
    fn odd_requests_never_panic() {
        let rules = [echo_rule("*")];
        let bodies = [
            json!(null),
            json!([]),
            json!("str"),
            json!({}),
            json!({"model": 5, "messages": "nope", "n": -1}),
            json!({"messages": [null, 1, {"role": 5}, {"role": "user", "content": 7}, {"role": "user", "content": [null, 3, {"type": "text"}]}]}),
            json!({"input": [null, {"role": "user", "content": {"x": 1}}], "prompt": {"a": 1}, "n": 1.5, "tools": "x"}),
            json!({"input": {"a": [1, 2]}, "prompt": [[], [null], "s", 4.5], "system": [1, {"type": "text", "text": "s"}]}),
            json!({"input": [[1.5, -2], [], "x", null], "dimensions": -4, "encoding_format": 3}),
        ];
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/embeddings"] {
            for body in &bodies {
                let rules: &[SynthRule] = if path.ends_with("embeddings") { &[emb_rule(None)] } else { &rules };
                let v = synth(rules, path, body.clone());
                assert!(v.is_some(), "{path} {body}");
            }
        }
    }

    #[test]
    fn token_estimates_are_sane() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("a"), 1);
        assert_eq!(estimate_tokens("The quick brown fox jumps over the lazy dog."), 10);
        assert!((4..=5).contains(&estimate_tokens("Hello, world!")));
        let long = "word ".repeat(1000);
        assert!((900..=1100).contains(&estimate_tokens(&long)));
        assert!((3..=8).contains(&estimate_tokens("你好，世界")));
        assert!(estimate_tokens("12, 345, 6789") >= 7);
        // Odd input: only whitespace, only marks, lone surrogates can't occur in &str.
        assert_eq!(estimate_tokens("   "), 1);
        assert!(estimate_tokens("\u{301}\u{301}") >= 1);
        assert!(estimate_tokens("🙂🙂🙂") >= 3);
    }

    /// Writes estimates for a benchmark sample: `UNDERSTUDY_TOKEN_SAMPLE=bench/tokens/sample.jsonl` (lines of
    /// `{"id", "text"}`) writes `{"<id>": estimate, ...}` to `$UNDERSTUDY_TOKEN_ESTIMATES`, default
    /// `<sample>.estimates.json`. Does nothing without the variable. See `bench/tokens/run.sh`.
    #[test]
    fn token_sample_estimates() {
        let Ok(sample) = std::env::var("UNDERSTUDY_TOKEN_SAMPLE") else {
            return;
        };
        let out = std::env::var("UNDERSTUDY_TOKEN_ESTIMATES").unwrap_or_else(|_| format!("{sample}.estimates.json"));
        let text = std::fs::read_to_string(&sample).unwrap();
        let mut estimates = Map::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let item: Value = serde_json::from_str(line).unwrap();
            let id = item["id"].to_string();
            estimates.insert(id, json!(estimate_tokens(item["text"].as_str().unwrap())));
        }
        std::fs::write(&out, serde_json::to_string_pretty(&Value::Object(estimates)).unwrap()).unwrap();
    }
}
