//! OpenAI, Azure OpenAI and OpenAI-compatible services (vLLM, Groq under `/openai/v1`, OpenRouter under
//! `/api/v1`, Mistral, DeepSeek, Together, Fireworks): chat completions, legacy completions, the Responses
//! API and embeddings.
//!
//! Paths: any prefix, then `chat/completions`, `completions`, `embeddings` or `responses`. Azure OpenAI's
//! `.../openai/deployments/{deployment}/<operation>` names the model in the path (the deployment), so its
//! requests key like OpenAI's with that model, and `api-version` (a query parameter) never counts.
//! Errors are `{"error": {"message", "type", "param", "code"}}`, which the SDKs raise by status.

mod chat;
mod completions;
mod embeddings;
mod responses;

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::sse::{event_error, json_events, parse_sse, upstream};
use super::{Api, Dialect, EmbeddingEncoding, Operation, ParityFields, PathView, Route, SynthInput, ToolCalls, Usage};
use crate::stream::{StreamError, StreamOptions};
use crate::template::Rng;

/// The OpenAI API module.
pub(crate) struct OpenAi;

/// Top-level request fields that don't change the model's answer, for every OpenAI operation (and, for
/// keys made before APIs had modules of their own, for Anthropic too).
pub const ALWAYS_IGNORED: &[&str] =
    &["stream", "stream_options", "user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"];

/// Also ignored for embeddings: the filter converts between float and base64 itself.
pub const EMBEDDINGS_IGNORED: &[&str] = &["encoding_format"];

impl Dialect for OpenAi {
    fn classify(&self, path: &PathView<'_>) -> Option<Route> {
        let segs = path.segs();
        // Azure OpenAI first: .../openai/deployments/{deployment}/<operation>, so a deployment named like an
        // operation segment ("chat") can't be mistaken for one.
        let azure = segs.windows(2).position(|w| w == ["openai", "deployments"]);
        let (deployment, op_segs) = match azure.and_then(|i| segs.get(i + 2..).map(|rest| (i, rest))) {
            Some((i, [_, rest @ ..])) if !rest.is_empty() => (path.raw.get(i + 2).cloned(), rest),
            _ => (None, segs.as_slice()),
        };
        let operation = match op_segs {
            [.., "chat", "completions"] => Operation::ChatCompletions,
            [.., "completions"] => Operation::Completions,
            [.., "embeddings"] => Operation::Embeddings,
            [.., "responses"] => Operation::Responses,
            _ => return None,
        };
        let provider = if deployment.is_some() { "azure.ai.openai" } else { "openai" };
        Some(Route { api: Api::OpenAi, operation, model: deployment, provider, stream: None })
    }

    fn provider(&self) -> &'static str {
        "openai"
    }

    fn paths(&self) -> &'static [&'static str] {
        &[".../chat/completions", ".../completions", ".../embeddings", ".../responses"]
    }

    fn ignored(&self, op: Operation, field: &str) -> bool {
        ALWAYS_IGNORED.contains(&field) || (op == Operation::Embeddings && EMBEDDINGS_IGNORED.contains(&field))
    }

    fn requested_encoding(&self, op: Operation, request: &Value) -> EmbeddingEncoding {
        match op {
            Operation::Embeddings => embeddings::requested(request),
            _ => EmbeddingEncoding::Float,
        }
    }

    fn otel_operation(&self, op: Operation) -> &'static str {
        match op {
            Operation::Completions => "text_completion",
            Operation::Embeddings => "embeddings",
            _ => "chat",
        }
    }

    fn streams(&self, op: Operation) -> bool {
        op != Operation::Embeddings
    }

    fn embeds(&self, op: Operation) -> bool {
        op == Operation::Embeddings
    }

    fn render_stream(&self, route: &Route, body: &Value, opts: &StreamOptions) -> Result<Vec<u8>, StreamError> {
        let text = match route.operation {
            Operation::ChatCompletions => chat::render(body, opts),
            Operation::Completions => completions::render(body, opts),
            Operation::Responses => responses::render(body, opts),
            op => Err(StreamError::NotStreamable(op)),
        };
        text.map(String::into_bytes)
    }

    fn assemble_stream(&self, op: Operation, recorded: &[u8]) -> Result<Value, StreamError> {
        let text = super::sse::text(op, recorded)?;
        match op {
            Operation::ChatCompletions => chat::assemble(text),
            Operation::Completions => completions::assemble(text),
            Operation::Responses => responses::assemble(text),
            op => Err(StreamError::NotStreamable(op)),
        }
    }

    fn stream_complete(&self, op: Operation, recorded: &[u8]) -> Result<(), StreamError> {
        self.assemble_stream(op, recorded)?;
        match op {
            // The responses grammar's assembler already requires `response.completed` (or its kin).
            Operation::Responses => Ok(()),
            _ => super::sse::ends_with(op, recorded, "[DONE]"),
        }
    }

    fn usage(&self, op: Operation, body: &Value) -> Option<Usage> {
        let u = body.get("usage")?;
        let n = |v: Option<&Value>| v.and_then(Value::as_u64);
        let (input, output, details) = match op {
            Operation::Responses => (u.get("input_tokens"), u.get("output_tokens"), u.get("input_tokens_details")),
            _ => (u.get("prompt_tokens"), u.get("completion_tokens"), u.get("prompt_tokens_details")),
        };
        if n(input).is_none() && n(output).is_none() {
            return None;
        }
        Some(Usage {
            input: n(input).unwrap_or(0),
            output: n(output).unwrap_or(0),
            cached_input: n(details.and_then(|d| d.get("cached_tokens"))).unwrap_or(0),
        })
    }

    fn output_text(&self, _op: Operation, body: &Value) -> String {
        super::shape::generated_text(body)
    }

    fn prompt_tokens(&self, op: Operation, request: &Value) -> u64 {
        match op {
            Operation::ChatCompletions => chat::prompt_tokens(request),
            Operation::Responses => responses::prompt_tokens(request),
            _ => crate::tokens::value_tokens(request.get("prompt").or(request.get("input")).unwrap_or(request)),
        }
    }

    fn fresh_id(&self, op: Operation, rng: &mut Rng) -> String {
        fresh_id(op, rng)
    }

    fn embedding_encoding(&self, op: Operation, body: &Value) -> Option<EmbeddingEncoding> {
        (op == Operation::Embeddings).then(|| embeddings::encoding_of(body)).flatten()
    }

    fn convert_embeddings(&self, op: Operation, body: &mut Value, want: EmbeddingEncoding) -> bool {
        op != Operation::Embeddings || embeddings::convert(body, want)
    }

    fn parity_fields(&self, op: Operation) -> ParityFields {
        // Ids of tool calls and output items are fresh on every call; `system_fingerprint` names the backend.
        const VOLATILE: &[&str] = &[
            "/system_fingerprint",
            "/choices/*/message/tool_calls/*/id",
            "/output/*/id",
            "/output/*/call_id",
            "/completed_at",
        ];
        match op {
            Operation::ChatCompletions => ParityFields {
                finish: &["/choices/*/finish_reason"],
                tools: &[
                    ToolCalls {
                        calls: "/choices/*/message/tool_calls/*",
                        name: "/function/name",
                        arguments: "/function/arguments",
                    },
                    ToolCalls { calls: "/choices/*/message/function_call", name: "/name", arguments: "/arguments" },
                ],
                usage: "/usage",
                volatile: VOLATILE,
                text: "/choices/0/message/content",
                ..ParityFields::default()
            },
            Operation::Completions => ParityFields {
                finish: &["/choices/*/finish_reason"],
                usage: "/usage",
                volatile: VOLATILE,
                text: "/choices/0/text",
                ..ParityFields::default()
            },
            Operation::Responses => ParityFields {
                finish: &["/status", "/incomplete_details/reason"],
                tools: &[ToolCalls { calls: "/output/*", name: "/name", arguments: "/arguments" }],
                usage: "/usage",
                volatile: VOLATILE,
                text: "/output",
                ..ParityFields::default()
            },
            _ => ParityFields { vectors: &["/data/*/embedding"], usage: "/usage", ..ParityFields::default() },
        }
    }

    fn synthesize(&self, op: Operation, input: &SynthInput<'_>, ids: &mut Rng) -> Option<Value> {
        match op {
            Operation::ChatCompletions => chat::synthesize(input, ids),
            Operation::Completions => completions::synthesize(input, ids),
            Operation::Responses => responses::synthesize(input, ids),
            Operation::Embeddings => embeddings::synthesize(input),
            _ => None,
        }
    }

    fn error_body(&self, _route: &Route, kind: &str, message: &str, code: Option<&str>) -> Value {
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    }
}

/// A fresh answer id in the operation's own format.
fn fresh_id(op: Operation, rng: &mut Rng) -> String {
    match op {
        Operation::Completions => format!("cmpl-{}", rng.base62(29)),
        Operation::Responses => {
            let hex: String = (0..48).map(|_| char::from_digit(rng.below(16) as u32, 16).unwrap_or('0')).collect();
            format!("resp_{hex}")
        }
        Operation::Embeddings => format!("emb-{}", rng.base62(24)),
        _ => format!("chatcmpl-{}", rng.base62(29)),
    }
}

/// Chunk-level fields of the two chunk grammars: the first id/created/model, the last non-null others.
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

    /// The assembled body: `object`, the choices, and the chunk-level fields.
    fn body(self, object: &str, choices: Vec<Value>) -> Value {
        let mut out = self.head;
        out.insert("object".into(), object.into());
        out.insert("choices".into(), Value::Array(choices));
        out.extend(self.tail);
        Value::Object(out)
    }
}

/// One choice being assembled: what its deltas add up to, its logprobs and finish reason.
#[derive(Default)]
struct ChoiceAcc<T> {
    body: T,
    logprobs: Value,
    finish_reason: Value,
}

/// Assembles a chunk stream (chat completions, legacy completions) by choice `index`. Chunks whose `object`
/// is not `object` are skipped when `skip_foreign` (Azure's content-filter chunks, as the SDK does); `fold`
/// adds one `choices[]` entry to its choice.
fn assemble_chunks<T: Default>(
    op: Operation,
    text: &str,
    object: &'static str,
    skip_foreign: bool,
    mut fold: impl FnMut(&mut T, &Value) -> Result<(), &'static str>,
) -> Result<(ChunkMeta, BTreeMap<u64, ChoiceAcc<T>>), StreamError> {
    let events = parse_sse(text);
    let mut meta = ChunkMeta::default();
    let mut choices: BTreeMap<u64, ChoiceAcc<T>> = BTreeMap::new();
    let mut seen = false;
    for (index, ev, chunk) in json_events(op, &events)? {
        if let Some(e) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(upstream(op, e));
        }
        if skip_foreign && chunk.get("object").and_then(Value::as_str).is_some_and(|o| o != object) {
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
            fold(&mut acc.body, choice).map_err(|reason| event_error(op, index, ev, &chunk, reason))?;
            if let Some(f) = choice.get("finish_reason").filter(|f| !f.is_null()) {
                acc.finish_reason = f.clone();
            }
            if let Some(lp) = choice.get("logprobs") {
                super::shape::merge_logprobs(&mut acc.logprobs, lp);
            }
        }
    }
    if !seen {
        return Err(StreamError::MissingEvent { op, event: object });
    }
    Ok((meta, choices))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_each_operations_fields() {
        let chat = json!({"usage": {"prompt_tokens": 12, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}});
        assert_eq!(
            OpenAi.usage(Operation::ChatCompletions, &chat),
            Some(Usage { input: 12, output: 5, cached_input: 4 })
        );
        let resp =
            json!({"usage": {"input_tokens": 7, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 1}}});
        assert_eq!(OpenAi.usage(Operation::Responses, &resp), Some(Usage { input: 7, output: 3, cached_input: 1 }));
        let emb = json!({"usage": {"prompt_tokens": 9, "total_tokens": 9}});
        assert_eq!(OpenAi.usage(Operation::Embeddings, &emb), Some(Usage { input: 9, output: 0, cached_input: 0 }));
        assert_eq!(OpenAi.usage(Operation::ChatCompletions, &json!({"choices": []})), None);
    }

    #[test]
    fn error_bodies_have_openais_shape() {
        let o = OpenAi.error_body(&Route::of(Operation::ChatCompletions), "not_found_error", "m", Some("c"));
        assert_eq!(o["error"]["message"], "m");
        assert_eq!(o["error"]["code"], "c");
        assert!(o["error"]["param"].is_null());
    }
}
