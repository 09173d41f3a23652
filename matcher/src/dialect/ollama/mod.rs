//! Ollama's native API: `/api/chat`, `/api/generate`, `/api/embed` and the legacy `/api/embeddings`.
//!
//! - Streams are newline-delimited JSON (`application/x-ndjson`), and ON by default: a body streams unless it
//!   says `"stream": false`. Each line is a partial answer (`message.content` or `response` pieces,
//!   `done: false`); the last line has `done: true`, the `done_reason`, the token counts and the timings.
//! - `stream` and `keep_alive` (how long the model stays loaded) never count in a key; `options` (sampling,
//!   context size, seed...), `format`, `think`, `tools` and the rest do. A top-level `null`, `[]` or `{}` counts
//!   as an absent member: the official Python SDK always sends `"tools": []`, curl users don't.
//! - Answers have no ids; `created_at` is an RFC 3339 string, set to now on every hit.
//! - Usage is `prompt_eval_count` (input) and `eval_count` (output); durations are nanoseconds.
//! - Errors are `{"error": "message"}` with the HTTP status; the SDK raises `ResponseError` with `status_code`.
//! - OpenTelemetry: provider `ollama` (GenAI has no registered name for it); `/api/chat` is `chat`,
//!   `/api/generate` is `text_completion` (a prompt in, its continuation out, with `suffix` for fill-in-the-middle
//!   and `raw` for a template-free prompt: the legacy completions shape, not Gemini-style multimodal
//!   `generate_content`), both embeddings paths are `embeddings`.
//!
//! Ollama's OpenAI-compatible endpoints (`/v1/chat/completions`, `/v1/embeddings`, ...) are OpenAI's dialect.

mod embed;
mod ndjson;

use serde_json::{json, Map, Value};

use super::shape::{content_text, last_user_text};
use super::{Api, Dialect, Operation, ParityFields, PathView, Refresh, Route, SynthInput, ToolCalls, Usage};
use crate::stream::{StreamError, StreamOptions};
use crate::template::Rng;
use crate::tokens::{estimate_tokens, value_tokens, MEDIA_TOKENS};

/// The Ollama API module.
pub(crate) struct Ollama;

/// Top-level request fields that only say how the answer travels or how long the model stays loaded.
pub const IGNORED: &[&str] = &["stream", "keep_alive"];

/// The `content-type` of Ollama's streams.
pub const NDJSON_CONTENT_TYPE: &str = "application/x-ndjson";

impl Dialect for Ollama {
    /// `.../api/{chat,generate,embed,embeddings}`. Tried before OpenAI's suffix rules on every LLM path, so it
    /// looks at the last two segments first and allocates nothing for other paths.
    fn classify(&self, path: &PathView<'_>) -> Option<Route> {
        let operation = match path.lower.as_slice() {
            [.., api, last] if api == "api" => match last.as_str() {
                "chat" => Operation::OllamaChat,
                "generate" => Operation::OllamaGenerate,
                "embed" => Operation::OllamaEmbed,
                "embeddings" => Operation::OllamaEmbeddings,
                _ => return None,
            },
            _ => return None,
        };
        // An Azure OpenAI deployment named `api` is OpenAI's (`.../deployments/api/embeddings`).
        if path.lower.windows(2).any(|w| matches!(w, [a, b] if a == "openai" && b == "deployments")) {
            return None;
        }
        Some(Route { api: Api::Ollama, operation, model: None, provider: self.provider(), stream: None })
    }

    fn provider(&self) -> &'static str {
        "ollama"
    }

    fn ignored(&self, _op: Operation, field: &str) -> bool {
        IGNORED.contains(&field)
    }

    fn ignored_member(&self, op: Operation, field: &str, value: &Value) -> bool {
        let empty = match value {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(m) => m.is_empty(),
            _ => false,
        };
        empty || self.ignored(op, field)
    }

    /// Streaming is the default: only `"stream": false` asks for one JSON answer.
    fn wants_stream(&self, _route: &Route, request: &Value) -> bool {
        request.get("stream").and_then(Value::as_bool) != Some(false)
    }

    fn otel_operation(&self, op: Operation) -> &'static str {
        match op {
            Operation::OllamaGenerate => "text_completion",
            Operation::OllamaEmbed | Operation::OllamaEmbeddings => "embeddings",
            _ => "chat",
        }
    }

    fn streams(&self, op: Operation) -> bool {
        matches!(op, Operation::OllamaChat | Operation::OllamaGenerate)
    }

    fn embeds(&self, op: Operation) -> bool {
        matches!(op, Operation::OllamaEmbed | Operation::OllamaEmbeddings)
    }

    fn render_stream(&self, route: &Route, body: &Value, opts: &StreamOptions) -> Result<Vec<u8>, StreamError> {
        let out = ndjson::render(route.operation, body, opts)?;
        // The answer was priced before rendering (runtime); this cap holds for any caller.
        let limit = super::sse::STREAM_CAP;
        if out.len() > limit {
            return Err(StreamError::TooLarge { op: route.operation, limit });
        }
        Ok(out)
    }

    fn stream_content_type(&self, _route: &Route) -> &'static str {
        NDJSON_CONTENT_TYPE
    }

    fn is_recorded_stream(&self, op: Operation, recorded: &[u8]) -> bool {
        self.streams(op) && ndjson::is_ndjson_stream(recorded)
    }

    fn assemble_stream(&self, op: Operation, recorded: &[u8]) -> Result<Value, StreamError> {
        ndjson::assemble(op, recorded)
    }

    fn usage(&self, op: Operation, body: &Value) -> Option<Usage> {
        let n = |k: &str| body.get(k).and_then(Value::as_u64);
        let (input, output) = (n("prompt_eval_count"), n("eval_count"));
        if input.is_none() && output.is_none() {
            return None;
        }
        let output = if self.embeds(op) { 0 } else { output.unwrap_or(0) };
        Some(Usage { input: input.unwrap_or(0), output, cached_input: 0 })
    }

    fn output_text(&self, op: Operation, body: &Value) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut push = |v: Option<&Value>| {
            if let Some(s) = v.and_then(Value::as_str).filter(|s| !s.is_empty()) {
                parts.push(s.to_string());
            }
        };
        match op {
            Operation::OllamaChat => {
                let msg = body.get("message");
                push(msg.and_then(|m| m.get("thinking")));
                push(msg.and_then(|m| m.get("content")));
                if let Some(calls) = msg.and_then(|m| m.get("tool_calls")).filter(|c| !c.is_null()) {
                    parts.push(calls.to_string());
                }
            }
            Operation::OllamaGenerate => {
                push(body.get("thinking"));
                push(body.get("response"));
            }
            _ => {}
        }
        parts.join("\n")
    }

    /// Ollama's answers have no ids; `{{id}}` in an Ollama asset still gets a random token.
    fn fresh_id(&self, _op: Operation, rng: &mut Rng) -> String {
        rng.base62(24)
    }

    fn refreshed(&self, _op: Operation) -> &'static [(&'static str, Refresh)] {
        &[("created_at", Refresh::IsoTime)]
    }

    fn parity_fields(&self, op: Operation) -> ParityFields {
        // Timings, and generate's `context` (token ids of the conversation, model-specific).
        const VOLATILE: &[&str] =
            &["/total_duration", "/load_duration", "/prompt_eval_duration", "/eval_duration", "/context"];
        match op {
            Operation::OllamaChat => ParityFields {
                finish: &["/done_reason"],
                tools: &[ToolCalls { calls: "/message/tool_calls/*/function", name: "/name", arguments: "/arguments" }],
                usage: "/prompt_eval_count",
                volatile: VOLATILE,
                text: "/message/content",
                ..ParityFields::default()
            },
            Operation::OllamaGenerate => ParityFields {
                finish: &["/done_reason"],
                usage: "/prompt_eval_count",
                volatile: VOLATILE,
                text: "/response",
                ..ParityFields::default()
            },
            Operation::OllamaEmbed => ParityFields {
                vectors: &["/embeddings/*"],
                usage: "/prompt_eval_count",
                volatile: VOLATILE,
                ..ParityFields::default()
            },
            _ => ParityFields { vectors: &["/embedding"], ..ParityFields::default() },
        }
    }

    fn synthesize(&self, op: Operation, input: &SynthInput<'_>, _ids: &mut Rng) -> Option<Value> {
        match op {
            Operation::OllamaChat => synthesize_chat(input),
            Operation::OllamaGenerate => synthesize_generate(input),
            Operation::OllamaEmbed => embed::synthesize_embed(input),
            Operation::OllamaEmbeddings => embed::synthesize_embeddings(input),
            _ => None,
        }
    }

    fn error_body(&self, _route: &Route, _kind: &str, message: &str, _code: Option<&str>) -> Value {
        json!({"error": message})
    }
}

/// Estimated prompt tokens of a chat request: the messages (images at a flat price) and the tools.
fn chat_prompt_tokens(request: &Value) -> u64 {
    let messages = request.get("messages").and_then(Value::as_array).map_or(0, |ms| {
        ms.iter()
            .map(|m| {
                let text: u64 = ["role", "content", "thinking", "tool_name"]
                    .iter()
                    .filter_map(|k| m.get(*k))
                    .map(value_tokens)
                    .fold(0, u64::saturating_add);
                let calls = m.get("tool_calls").map_or(0, value_tokens);
                text.saturating_add(calls).saturating_add(images_tokens(m)).saturating_add(3)
            })
            .fold(0, u64::saturating_add)
    });
    let tools = request.get("tools").map_or(0, value_tokens);
    messages.saturating_add(tools).saturating_add(3)
}

/// A flat price per attached image (base64 strings are never read as text).
fn images_tokens(v: &Value) -> u64 {
    v.get("images").and_then(Value::as_array).map_or(0, |a| MEDIA_TOKENS.saturating_mul(a.len() as u64))
}

/// Estimated prompt tokens of a generate request: system prompt, prompt, suffix and images.
fn generate_prompt_tokens(request: &Value) -> u64 {
    let text: u64 = ["system", "prompt", "suffix"]
        .iter()
        .filter_map(|k| request.get(*k).and_then(Value::as_str))
        .map(estimate_tokens)
        .fold(0, u64::saturating_add);
    text.saturating_add(images_tokens(request))
}

/// Plausible timings (nanoseconds) of a warm local model: a few ms to find the loaded model, prompt
/// evaluation at ~1,000 tokens/s, generation at ~50 tokens/s, and a little overhead.
pub(crate) fn timings(prompt_tokens: u64, output_tokens: u64) -> Map<String, Value> {
    const LOAD_NS: u64 = 12_500_000;
    const PROMPT_NS_PER_TOKEN: u64 = 1_000_000;
    const EVAL_NS_PER_TOKEN: u64 = 20_000_000;
    const OVERHEAD_NS: u64 = 1_800_000;
    let prompt_ns = prompt_tokens.saturating_mul(PROMPT_NS_PER_TOKEN);
    let eval_ns = output_tokens.saturating_mul(EVAL_NS_PER_TOKEN);
    let total = LOAD_NS.saturating_add(prompt_ns).saturating_add(eval_ns).saturating_add(OVERHEAD_NS);
    let mut m = Map::new();
    m.insert("total_duration".into(), total.into());
    m.insert("load_duration".into(), LOAD_NS.into());
    m.insert("prompt_eval_count".into(), prompt_tokens.into());
    m.insert("prompt_eval_duration".into(), prompt_ns.into());
    if output_tokens > 0 {
        m.insert("eval_count".into(), output_tokens.into());
        m.insert("eval_duration".into(), eval_ns.into());
    }
    m
}

/// `created_at` of a synthesized answer: now, RFC 3339 UTC.
fn created_at(input: &SynthInput<'_>) -> Value {
    Value::String(crate::template::iso8601(input.now_secs))
}

/// A synthesized `/api/chat` answer: one assistant message with the rule's text.
fn synthesize_chat(input: &SynthInput<'_>) -> Option<Value> {
    let request = input.request;
    let text = input.answer.text(|| last_user_text(request.get("messages")));
    if text.len() > input.text_cap {
        return None;
    }
    let mut body = Map::new();
    body.insert("model".into(), input.model.into());
    body.insert("created_at".into(), created_at(input));
    body.insert("message".into(), json!({"role": "assistant", "content": text}));
    body.insert("done_reason".into(), "stop".into());
    body.insert("done".into(), true.into());
    body.extend(timings(chat_prompt_tokens(request), estimate_tokens(&text).max(1)));
    Some(Value::Object(body))
}

/// A synthesized `/api/generate` answer: the rule's text as `response` (the prompt itself when echoing).
fn synthesize_generate(input: &SynthInput<'_>) -> Option<Value> {
    let request = input.request;
    let text = input.answer.text(|| content_text(request.get("prompt")));
    if text.len() > input.text_cap {
        return None;
    }
    let mut body = Map::new();
    body.insert("model".into(), input.model.into());
    body.insert("created_at".into(), created_at(input));
    body.insert("response".into(), text.as_str().into());
    body.insert("done".into(), true.into());
    body.insert("done_reason".into(), "stop".into());
    body.extend(timings(generate_prompt_tokens(request), estimate_tokens(&text).max(1)));
    Some(Value::Object(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::dialect::classify;
    use crate::synth::{SynthRule, Synthesizer};

    #[test]
    fn classifies_ollama_paths_and_leaves_openai_compatible_ones_to_openai() {
        for (p, op) in [
            ("/api/chat", Operation::OllamaChat),
            ("/api/generate", Operation::OllamaGenerate),
            ("/api/embed", Operation::OllamaEmbed),
            ("/api/embeddings", Operation::OllamaEmbeddings),
            ("/ollama/api/chat", Operation::OllamaChat),
            ("/API/Chat/", Operation::OllamaChat),
            ("/api%2Fgenerate", Operation::OllamaGenerate),
        ] {
            let r = classify("POST", p).unwrap_or_else(|| panic!("{p} not classified"));
            assert_eq!(
                (r.api, r.operation, r.provider, r.model.clone(), r.stream),
                (Api::Ollama, op, "ollama", None, None),
                "{p}"
            );
        }
        // OpenRouter (`/api/v1`), Ollama's own OpenAI-compatible API (`/v1`), an Azure deployment named `api`.
        for (p, op) in [
            ("/api/v1/chat/completions", Operation::ChatCompletions),
            ("/api/v1/embeddings", Operation::Embeddings),
            ("/v1/chat/completions", Operation::ChatCompletions),
            ("/v1/embeddings", Operation::Embeddings),
            ("/openai/deployments/api/embeddings", Operation::Embeddings),
            ("/api/chat/completions", Operation::ChatCompletions),
        ] {
            let r = classify("POST", p).unwrap_or_else(|| panic!("{p} not classified"));
            assert_eq!((r.api, r.operation), (Api::OpenAi, op), "{p}");
        }
        for p in ["/api/tags", "/api/show", "/api/pull", "/api"] {
            assert!(classify("POST", p).is_none(), "{p}");
        }
        assert!(classify("GET", "/api/chat").is_none());
    }

    #[test]
    fn streaming_is_on_unless_the_body_says_false() {
        let r = Route::of(Operation::OllamaChat);
        assert!(Ollama.wants_stream(&r, &json!({"model": "m"})));
        assert!(Ollama.wants_stream(&r, &json!({"model": "m", "stream": true})));
        assert!(Ollama.wants_stream(&r, &json!({"model": "m", "stream": null})));
        assert!(!Ollama.wants_stream(&r, &json!({"model": "m", "stream": false})));
    }

    #[test]
    fn transport_fields_and_empty_members_do_not_count() {
        let op = Operation::OllamaChat;
        assert!(Ollama.ignored_member(op, "stream", &json!(false)));
        assert!(Ollama.ignored_member(op, "keep_alive", &json!("5m")));
        assert!(Ollama.ignored_member(op, "tools", &json!([])));
        assert!(Ollama.ignored_member(op, "options", &json!({})));
        assert!(Ollama.ignored_member(op, "format", &Value::Null));
        assert!(!Ollama.ignored_member(op, "options", &json!({"temperature": 0})));
        assert!(!Ollama.ignored_member(op, "think", &json!(false)));
        assert!(!Ollama.ignored_member(op, "format", &json!("json")));
    }

    #[test]
    fn usage_reads_the_eval_counts() {
        let body = json!({"prompt_eval_count": 26, "eval_count": 290});
        assert_eq!(Ollama.usage(Operation::OllamaChat, &body), Some(Usage { input: 26, output: 290, cached_input: 0 }));
        let emb = json!({"embeddings": [[0.1]], "prompt_eval_count": 8});
        assert_eq!(Ollama.usage(Operation::OllamaEmbed, &emb), Some(Usage { input: 8, output: 0, cached_input: 0 }));
        assert_eq!(Ollama.usage(Operation::OllamaEmbeddings, &json!({"embedding": [0.1]})), None);
    }

    #[test]
    fn errors_are_a_bare_message() {
        let e = Ollama.error_body(&Route::of(Operation::OllamaChat), "not_found_error", "no asset", Some("c"));
        assert_eq!(e, json!({"error": "no asset"}));
        assert!(Ollama.error_headers(&Route::of(Operation::OllamaChat), "not_found_error").is_empty());
    }

    #[test]
    fn output_text_is_what_the_model_wrote() {
        let chat = json!({"message": {"role": "assistant", "content": "Hi", "thinking": "hmm",
            "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}});
        let t = Ollama.output_text(Operation::OllamaChat, &chat);
        assert!(t.contains("hmm") && t.contains("Hi") && t.contains("\"a\":1") && !t.contains("assistant"), "{t}");
        assert_eq!(Ollama.output_text(Operation::OllamaGenerate, &json!({"response": "blue", "context": [1]})), "blue");
    }

    fn synth(op: &str, path: &str, rule: SynthRule, request: Value) -> Value {
        let s = Synthesizer::compile(&[SynthRule { operation: op.into(), ..rule }]).unwrap();
        let route = classify("POST", path).unwrap();
        s.synthesize(&route, &request, 1_764_403_200, &mut Rng::new(1)).unwrap()
    }

    fn text_rule(text: Option<&str>) -> SynthRule {
        SynthRule {
            operation: "*".into(),
            model: "*".into(),
            text: text.map(str::to_string),
            echo: text.is_none(),
            dimensions: None,
            latency: None,
        }
    }

    #[test]
    fn synthesized_chat_and_generate_have_ollamas_shape_and_plausible_timings() {
        let req = json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?",
            "images": ["iVBORw0KGgo".repeat(1000)]}]});
        let v = synth("ollama.chat", "/api/chat", text_rule(Some("Rayleigh scattering.")), req);
        assert_eq!(v["model"], "llama3.2");
        assert_eq!(v["created_at"], "2025-11-29T08:00:00Z");
        assert_eq!(v["message"], json!({"role": "assistant", "content": "Rayleigh scattering."}));
        assert_eq!((v["done"].clone(), v["done_reason"].clone()), (json!(true), json!("stop")));
        let n = |k: &str| v[k].as_u64().unwrap();
        assert!(n("prompt_eval_count") > 85 && n("prompt_eval_count") < 120, "an image at a flat price: {v}");
        assert!(n("eval_count") >= 3);
        assert_eq!(
            n("total_duration"),
            n("load_duration") + n("prompt_eval_duration") + n("eval_duration") + 1_800_000
        );
        // Generating a token takes longer than reading one, as on a real model.
        assert!(n("eval_duration") / n("eval_count") > n("prompt_eval_duration") / n("prompt_eval_count"));

        let req = json!({"model": "llama3.2", "prompt": "Echo me", "system": "Be brief."});
        let v = synth("ollama.generate", "/api/generate", text_rule(None), req);
        assert_eq!(v["response"], "Echo me");
        assert!(v.get("message").is_none());
        assert_eq!(Ollama.usage(Operation::OllamaGenerate, &v).map(|u| u.output), Some(estimate_tokens("Echo me")));
    }
}
