//! Modeled responses: schema-correct answers synthesized for LLM requests that no asset matches.
//!
//! A list of [`SynthRule`]s (the plugin configuration's `synthesize`) is compiled once into a
//! [`Synthesizer`]. For a request, the first rule whose `operation` and `model` glob match answers with
//! the exact plain body the live API sends, built by the operation's API module (`dialect/`): fresh ids,
//! the request's model ([`Route::model_of`]), `n` choices where the API has them, and estimated token
//! `usage` ([`crate::tokens`]):
//!
//! - text operations get the rule's fixed `text`, or with `echo: true` the text of the request's last user
//!   message (the prompt for completions);
//! - embeddings get deterministic pseudo-random unit vectors, one per input ([`embedding_vector`]): the same
//!   (model, input) always gives the same vector, on every call, process and platform (only IEEE basic
//!   arithmetic and `sqrt` are used), and different inputs give unrelated vectors (cosine near 0). The
//!   dimension is the request's, else the rule's, else the model's default.
//!
//! [`Synthesizer::synthesize`] returns `None` when no rule matches, and also when the answer would be
//! unreasonably large (more than [`MAX_EMBEDDING_FLOATS`] embedding floats or an embeddings answer over the
//! answer budget, [`MAX_CHOICES`] choices, or [`MAX_TEXT_BYTES`] of answer text over all choices): when a rule
//! matched ([`Synthesizer::matches`]), the caller answers a 413 naming the limit. `n` is clamped to
//! 1..=[`crate::limits::MAX_N`], the API's own range. The limits live in [`crate::limits`].

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use sha2::{Digest, Sha256};
use wildmatch::WildMatch;

use crate::dialect::{Operation, Route, SynthInput};
use crate::error::ConfigError;
use crate::template::Rng;

pub use crate::limits::{MAX_CHOICES, MAX_DIMENSIONS, MAX_EMBEDDING_FLOATS, MAX_TEXT_BYTES};

fn any() -> String {
    "*".to_string()
}

/// One `synthesize` rule of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthRule {
    /// Operation name as in `Operation::name()` (`openai.chat_completions`, `anthropic.messages`, ...) or `*`.
    #[serde(default = "any")]
    pub operation: String,
    /// Model glob (`*` any run of characters, `?` any one; `gpt-4o*`); default `*`. Case-sensitive. Matched
    /// against the request's model ([`Route::model_of`]: the path's model, else the body's).
    #[serde(default = "any")]
    pub model: String,
    /// Fixed answer text for the text operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Answer with the last user message's text (echo).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo: bool,
    /// Embeddings dimension when the request has none (default: the model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    /// Simulated latency of these answers, as on an asset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<crate::asset::Latency>,
}

/// What a rule answers text operations with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// The rule's fixed text.
    Text(String),
    /// The request's own last user text (each prompt's, for completions).
    Echo,
    /// An embeddings-only rule: no text.
    Nothing,
}

impl Answer {
    /// The answer text, `echo` giving the request's text when the rule echoes.
    pub(crate) fn text(&self, echo: impl FnOnce() -> String) -> String {
        match self {
            Answer::Text(t) => t.clone(),
            Answer::Echo => echo(),
            Answer::Nothing => String::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    /// `None` for `*`.
    operation: Option<Operation>,
    model: WildMatch,
    answer: Answer,
    dimensions: Option<usize>,
    latency: Option<crate::asset::Latency>,
}

/// Compiled `synthesize` rules.
#[derive(Debug, Clone, Default)]
pub struct Synthesizer {
    rules: Vec<Rule>,
    /// The answer budget answers are priced against (`None`: `limits::ANSWER_BUDGET`; tests lower it).
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
                let known: Vec<&str> = Operation::ALL.iter().map(|o| o.name()).collect();
                Some(Operation::from_name(&r.operation).ok_or_else(|| {
                    ConfigError::invalid(
                        field("operation"),
                        format!("unknown operation {:?} (known: {}, or \"*\" for all)", r.operation, known.join(", ")),
                    )
                })?)
            };
            if r.model.is_empty() {
                return Err(ConfigError::invalid(field("model"), "empty model pattern (use \"*\" for any model)"));
            }
            let textless = operation.filter(|o| !o.answers_text());
            let no_text = |op: Operation| {
                let what = if op.embeds() { "embeddings answers are vectors" } else { "its answers carry no text" };
                format!("has no effect on {op} ({what})")
            };
            let answer = match (&r.text, r.echo, textless) {
                (Some(_), true, _) => {
                    return Err(ConfigError::invalid(
                        field("echo"),
                        "`text` and `echo` are both set; a rule answers with one of them",
                    ))
                }
                (Some(_), false, Some(op)) => return Err(ConfigError::invalid(field("text"), no_text(op))),
                (None, true, Some(op)) => return Err(ConfigError::invalid(field("echo"), no_text(op))),
                (Some(t), false, None) => Answer::Text(t.clone()),
                (None, true, None) => Answer::Echo,
                (None, false, Some(_)) => Answer::Nothing,
                (None, false, None) => {
                    let what =
                        operation.map_or("every operation but the embeddings and token-count ones", Operation::name);
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
                if operation.is_some_and(|o| !o.embeds()) {
                    return Err(ConfigError::invalid(field("dimensions"), "only applies to embeddings operations"));
                }
            }
            if let Some(l) = &r.latency {
                crate::asset::check_latency(l).map_err(|e| ConfigError::invalid(field("latency"), e))?;
            }
            out.push(Rule {
                operation,
                model: WildMatch::new(&r.model),
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

    /// First matching rule wins. Returns the plain (non-streaming) answer the live API would send,
    /// schema-correct for the operation, or `None` when no rule matches (or the answer would be too large).
    /// Never panics, whatever the request holds.
    pub fn synthesize(&self, route: &Route, request: &Value, now_secs: u64, ids: &mut Rng) -> Option<Value> {
        let rule = self.rule_for(route, request)?;
        let input = SynthInput {
            request,
            model: route.model_of(request).unwrap_or_default(),
            answer: &rule.answer,
            dimensions: rule.dimensions,
            now_secs,
            text_cap: self.text_cap(),
            answer_budget: self.answer_budget(),
        };
        route.operation.dialect().synthesize(route.operation, &input, ids)
    }

    fn rule_for(&self, route: &Route, request: &Value) -> Option<&Rule> {
        let model = route.model_of(request).unwrap_or_default();
        self.rules.iter().find(|r| r.operation.is_none_or(|o| o == route.operation) && r.model.matches(model))
    }

    /// Prices answers against `budget` instead of `limits::ANSWER_BUDGET`.
    pub fn set_answer_budget(&mut self, budget: u64) {
        self.answer_budget = Some(budget);
    }

    fn answer_budget(&self) -> u64 {
        self.answer_budget.unwrap_or(crate::limits::ANSWER_BUDGET)
    }

    /// Most answer text over all choices: [`MAX_TEXT_BYTES`], or less when the answer budget is lower (the
    /// text is copied into the answer tree before the rendered answer is priced).
    fn text_cap(&self) -> usize {
        MAX_TEXT_BYTES.min(usize::try_from(self.answer_budget() / 4).unwrap_or(usize::MAX))
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

/// `n`, clamped to 1..=[`crate::limits::MAX_N`] (the OpenAI API's own limit).
pub(crate) fn choice_count(request: &Value) -> usize {
    request.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, crate::limits::MAX_N) as usize
}

/// A dimension a request asks for, if it is a whole number in `1..=MAX_DIMENSIONS`.
pub(crate) fn requested_dimensions(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64).and_then(|d| usize::try_from(d).ok()).filter(|d| (1..=MAX_DIMENSIONS).contains(d))
}

/// The bytes a synthetic embedding is seeded from: model, kind of input (`text` or `tokens`) and input.
pub(crate) fn embedding_seed(model: &str, kind: &str, body: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(model.len() + body.len() + 32);
    b.extend_from_slice(b"understudy.embedding.v1\0");
    b.extend_from_slice(model.as_bytes());
    b.push(0);
    b.extend_from_slice(kind.as_bytes());
    b.push(0);
    b.extend_from_slice(body.as_bytes());
    b
}

/// The shortest decimal that reads back as this f32.
pub(crate) fn f32_value(x: f32) -> Value {
    serde_json::from_str::<Number>(&format!("{x:?}")).map_or(Value::Null, Value::Number)
}

/// A deterministic unit vector seeded by SHA-256 of `seed`. Components are Irwin–Hall(4) (sums of four
/// 16-bit uniforms, close to Gaussian), so the direction is close to uniform on the sphere; only integer
/// arithmetic, IEEE `+ - * /` and `sqrt` are used, so every platform computes the same bits.
pub(crate) fn embedding_vector(seed: &[u8], dims: usize) -> Vec<f32> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::dialect::classify;
    use crate::tokens::estimate_tokens;
    use base64::Engine as _;
    use serde_json::json;

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
        // The path's model wins over the body's, as in the key.
        let v =
            synth(&rules, "/openai/deployments/my-gpt-x/chat/completions", json!({"model": "gpt-5", "messages": []}))
                .unwrap();
        assert_eq!(v["model"], "my-gpt-x");
        assert!(synth(&rules, "/openai/deployments/x/chat/completions", json!({"model": "my-gpt", "messages": []}))
            .is_none());
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
        let g = WildMatch::new("a*b*c");
        assert!(g.matches("abc") && g.matches("aXbYc") && g.matches("abbc"));
        assert!(!g.matches("ac") && !g.matches("abca") && !WildMatch::new("a*a").matches("a"));
        assert!(WildMatch::new("*").matches("") && WildMatch::new("**").matches("x"));
        assert!(!WildMatch::new("exact").matches("exact2"));
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
}
