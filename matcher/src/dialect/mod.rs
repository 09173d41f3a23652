//! One module per LLM API. Each owns everything Understudy knows of its API: which paths it serves and the
//! model a path names, which body fields never count in a key, the stream grammar (rendered from a plain
//! answer, and assembled from a recorded stream), usage, id formats, the error shape, synthesized answers
//! and its OpenTelemetry `gen_ai.provider.name` / `gen_ai.operation.name`.
//!
//! The core (keys, store, runtime, synthesizer, templates) reaches an API only through the [`Dialect`]
//! trait. Adding an API is one module here, its [`Operation`]s and one line in [`Api::dialect`] (and in
//! [`Api::ALL`], which sets the order in which paths are tried).
//!
//! Which model a request is for, everywhere (keys, synthesized answers, `{{request.model}}`): the model
//! the path names when it names one (Azure's deployment; Gemini, Vertex AI and Bedrock model ids), else
//! the body's `model` ([`Route::model_of`]). A path model counts in the key as the body's `model`, so one
//! asset serves OpenAI and Azure OpenAI alike.

pub mod anthropic;
pub mod bedrock;
pub(crate) mod eventstream;
pub mod gemini;
pub mod ollama;
pub mod openai;
pub(crate) mod shape;
pub(crate) mod sse;

use std::borrow::Cow;
use std::fmt;

use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::stream::{StreamError, StreamOptions};
use crate::synth::Answer;
use crate::template::Rng;

/// The API a request speaks: whose paths matched, whose error shape and stream framing it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    /// OpenAI, Azure OpenAI and OpenAI-compatible services.
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini API and Vertex AI (Anthropic models on Vertex AI speak [`Api::Anthropic`]).
    Gemini,
    /// AWS Bedrock Runtime (Converse, InvokeModel).
    Bedrock,
    /// Ollama's native API (`/api/chat`, `/api/generate`, `/api/embed`).
    Ollama,
}

impl Api {
    /// Every API, in the order paths are tried: the more specific path grammars first, OpenAI's suffix
    /// rules (`.../chat/completions` under any prefix) last.
    pub const ALL: [Api; 5] = [Api::Gemini, Api::Anthropic, Api::Bedrock, Api::Ollama, Api::OpenAi];

    /// The module that implements this API (the one registration per API).
    pub(crate) fn dialect(self) -> &'static dyn Dialect {
        match self {
            Api::OpenAi => &openai::OpenAi,
            Api::Anthropic => &anthropic::Anthropic,
            Api::Gemini => &gemini::Gemini,
            Api::Bedrock => &bedrock::Bedrock,
            Api::Ollama => &ollama::Ollama,
        }
    }
}

/// An LLM operation Understudy virtualizes. Its [`Operation::name`] is part of every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// OpenAI `POST .../chat/completions`
    ChatCompletions,
    /// OpenAI `POST .../completions` (legacy)
    Completions,
    /// OpenAI `POST .../embeddings`
    Embeddings,
    /// OpenAI `POST .../responses`
    Responses,
    /// Anthropic `POST .../v1/messages` (and Vertex AI's `.../publishers/anthropic/models/{m}:rawPredict`)
    Messages,
    /// Gemini API / Vertex AI `POST .../models/{m}:generateContent` and `:streamGenerateContent`
    GenerateContent,
    /// Gemini API / Vertex AI `POST .../models/{m}:embedContent`
    EmbedContent,
    /// Gemini API / Vertex AI `POST .../models/{m}:batchEmbedContents`
    BatchEmbedContents,
    /// Gemini API / Vertex AI `POST .../models/{m}:countTokens`
    CountTokens,
    /// Bedrock `POST .../model/{modelId}/converse` and `/converse-stream`
    BedrockConverse,
    /// Bedrock `POST .../model/{modelId}/invoke` of a Titan embeddings model
    BedrockTitanEmbeddings,
    /// Bedrock `POST .../model/{modelId}/invoke` (`-with-response-stream`) of another model family: opaque JSON
    BedrockInvokeModel,
    /// Ollama `POST .../api/chat`
    OllamaChat,
    /// Ollama `POST .../api/generate`
    OllamaGenerate,
    /// Ollama `POST .../api/embed`
    OllamaEmbed,
    /// Ollama `POST .../api/embeddings` (legacy, one prompt)
    OllamaEmbeddings,
}

impl Operation {
    /// Every operation, for docs, diagnostics and rule validation.
    pub const ALL: [Operation; 16] = [
        Operation::ChatCompletions,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Responses,
        Operation::Messages,
        Operation::GenerateContent,
        Operation::EmbedContent,
        Operation::BatchEmbedContents,
        Operation::CountTokens,
        Operation::BedrockConverse,
        Operation::BedrockTitanEmbeddings,
        Operation::BedrockInvokeModel,
        Operation::OllamaChat,
        Operation::OllamaGenerate,
        Operation::OllamaEmbed,
        Operation::OllamaEmbeddings,
    ];

    /// Stable name, part of the key's preimage: never change an existing one.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "openai.chat_completions",
            Operation::Completions => "openai.completions",
            Operation::Embeddings => "openai.embeddings",
            Operation::Responses => "openai.responses",
            Operation::Messages => "anthropic.messages",
            Operation::GenerateContent => "gemini.generate_content",
            Operation::EmbedContent => "gemini.embed_content",
            Operation::BatchEmbedContents => "gemini.batch_embed_contents",
            Operation::CountTokens => "gemini.count_tokens",
            Operation::BedrockConverse => "bedrock.converse",
            Operation::BedrockTitanEmbeddings => "bedrock.titan_embeddings",
            Operation::BedrockInvokeModel => "bedrock.invoke_model",
            Operation::OllamaChat => "ollama.chat",
            Operation::OllamaGenerate => "ollama.generate",
            Operation::OllamaEmbed => "ollama.embed",
            Operation::OllamaEmbeddings => "ollama.embeddings",
        }
    }

    /// The API whose module owns this operation's request and answer shapes.
    pub fn api(self) -> Api {
        match self {
            Operation::ChatCompletions | Operation::Completions | Operation::Embeddings | Operation::Responses => {
                Api::OpenAi
            }
            Operation::Messages => Api::Anthropic,
            Operation::GenerateContent
            | Operation::EmbedContent
            | Operation::BatchEmbedContents
            | Operation::CountTokens => Api::Gemini,
            Operation::BedrockConverse | Operation::BedrockTitanEmbeddings | Operation::BedrockInvokeModel => {
                Api::Bedrock
            }
            Operation::OllamaChat
            | Operation::OllamaGenerate
            | Operation::OllamaEmbed
            | Operation::OllamaEmbeddings => Api::Ollama,
        }
    }

    /// The owning module.
    pub(crate) fn dialect(self) -> &'static dyn Dialect {
        self.api().dialect()
    }

    /// OpenTelemetry `gen_ai.operation.name` (`chat`, `text_completion`, `embeddings`, ...).
    pub fn otel_name(self) -> &'static str {
        self.dialect().otel_operation(self)
    }

    /// Does this operation's answer have a streaming form?
    pub fn streams(self) -> bool {
        self.dialect().streams(self)
    }

    /// Is this an embeddings operation (answers are vectors, not text)?
    pub fn embeds(self) -> bool {
        self.dialect().embeds(self)
    }

    /// Does a synthesized answer of this operation carry text (a `synthesize` rule's `text` or `echo`)?
    pub fn answers_text(self) -> bool {
        self.dialect().answers_text(self)
    }

    /// The operation named `name` (as in [`Operation::name`]).
    pub fn from_name(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|o| o.name() == name)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an API frames a streamed answer on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// Server-Sent Events (`text/event-stream`).
    Sse,
    /// One JSON array whose elements arrive one by one (Gemini without `alt=sse`).
    JsonArray,
    /// Newline-delimited JSON objects (Ollama).
    Ndjson,
    /// AWS's binary `application/vnd.amazon.eventstream` messages (Bedrock).
    EventStream,
}

/// A classified LLM request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The API the client speaks (error shape, stream framing).
    pub api: Api,
    /// The operation (key and answer shapes).
    pub operation: Operation,
    /// The model the path names (Azure OpenAI's deployment), which is the request's model.
    pub model: Option<String>,
    /// OpenTelemetry `gen_ai.provider.name` of the service the path belongs to (`openai`,
    /// `azure.ai.openai`, `anthropic`, ...).
    pub provider: &'static str,
    /// Set when the path itself asks for a streamed answer (Gemini's `:streamGenerateContent`, Bedrock's
    /// `converse-stream`), in this framing.
    pub stream: Option<Framing>,
}

impl Route {
    /// A route of `operation` on its own API with no path model (what tests and tools mostly need).
    pub fn of(operation: Operation) -> Route {
        let api = operation.api();
        Route { api, operation, model: None, provider: api.dialect().provider(), stream: None }
    }

    /// The model this request is for: the path's model, else the body's `model` string.
    pub fn model_of<'a>(&'a self, request: &'a Value) -> Option<&'a str> {
        self.model.as_deref().or_else(|| request.get("model").and_then(Value::as_str))
    }

    /// The API module serving this route.
    pub(crate) fn dialect(&self) -> &'static dyn Dialect {
        self.api.dialect()
    }
}

/// A request path, decoded and split once for every API's recognizer.
///
/// Paths are matched as a lenient upstream would route them, so no spelling of an LLM path slips past strict
/// mode: percent-escapes (also `%2F`) are decoded, `;params`, dot segments, empty segments and stray control
/// characters are dropped, and matching is case-insensitive (`lower`); `raw` keeps each segment's case for
/// model names.
#[derive(Debug)]
pub struct PathView<'a> {
    /// Decoded segments, case kept.
    pub raw: Vec<String>,
    /// The same segments, lower-cased.
    pub lower: Vec<String>,
    /// The query string (after `?`), undecoded.
    pub query: &'a str,
}

impl<'a> PathView<'a> {
    /// Splits and normalizes `path` (query string allowed).
    pub fn new(path: &'a str) -> Self {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, q.split('#').next().unwrap_or_default()),
            None => (path.split('#').next().unwrap_or_default(), ""),
        };
        let decoded: Cow<'_, str> = percent_decode_str(path).decode_utf8_lossy();
        let mut raw: Vec<String> = Vec::new();
        for seg in decoded.split('/') {
            let seg = seg.split(';').next().unwrap_or_default();
            let seg = seg.trim_matches(|c: char| c.is_control() || c.is_whitespace());
            match seg {
                "" | "." => {}
                ".." => {
                    raw.pop();
                }
                s => raw.push(s.to_string()),
            }
        }
        let lower = raw.iter().map(|s| s.to_ascii_lowercase()).collect();
        PathView { raw, lower, query }
    }

    /// The lower-cased segments as `&str`s, for slice patterns.
    pub fn segs(&self) -> Vec<&str> {
        self.lower.iter().map(String::as_str).collect()
    }
}

/// Classifies `method` + `path` (query string allowed). `None` means "not an LLM call": pass it through.
///
/// ```
/// use understudy_matcher::{classify, Operation};
/// let r = classify("POST", "/gateway/openai/v1/chat/completions?x=1").unwrap();
/// assert_eq!(r.operation, Operation::ChatCompletions);
/// let az = classify("POST", "/openai/deployments/gpt4o/embeddings?api-version=2024-10-21").unwrap();
/// assert_eq!((az.operation, az.model.as_deref()), (Operation::Embeddings, Some("gpt4o")));
/// assert_eq!(az.provider, "azure.ai.openai");
/// assert!(classify("GET", "/v1/chat/completions").is_none());
/// assert!(classify("POST", "/v1/files").is_none());
/// ```
pub fn classify(method: &str, path: &str) -> Option<Route> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let view = PathView::new(path);
    Api::ALL.iter().find_map(|api| api.dialect().classify(&view))
}

/// The path forms every API serves, for messages that say what Understudy recognizes.
pub fn known_paths() -> String {
    Api::ALL.iter().flat_map(|a| a.dialect().paths().iter().copied()).collect::<Vec<_>>().join(", ")
}

/// Tokens a call used or would use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input (prompt) tokens, cached ones included.
    pub input: u64,
    /// Output (completion) tokens.
    pub output: u64,
    /// The part of `input` served from the provider's prompt cache.
    pub cached_input: u64,
}

/// How a client wants embedding vectors encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingEncoding {
    /// JSON arrays of numbers.
    Float,
    /// Base64 of little-endian f32 (what the official OpenAI Python SDK asks for).
    Base64,
}

/// A top-level answer field rewritten on every hit (unless the asset says `"refresh": false`), so clients
/// that dedupe by id or check timestamps behave as in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// A string id: a fresh one of the same shape.
    Id,
    /// A number of Unix seconds: now.
    UnixSeconds,
    /// An RFC 3339 time string: now, with the same fractional digits.
    IsoTime,
}

/// Where parity ([`crate::parity`]) finds, in a plain answer of one operation, what tests rely on besides
/// the answer's JSON shape. Every path is a JSON Pointer in which `*` stands for any array index.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ParityFields {
    /// Finish / stop reasons (`finish_reason`, `stop_reason`, `finishReason`, `stopReason`, ...).
    pub finish: &'static [&'static str],
    /// Tool calls.
    pub tools: &'static [ToolCalls],
    /// Embedding vectors: arrays of numbers, or base64 of little-endian f32 (OpenAI's `encoding_format`).
    pub vectors: &'static [&'static str],
    /// Where usage is reported (where a usage present on one side only is reported; presence itself is
    /// [`Dialect::usage`]).
    pub usage: &'static str,
    /// Fields that differ on every call (ids, timestamps, fingerprints, timings) besides the top-level
    /// [`Dialect::refreshed`] ones: neither their presence nor their values count.
    pub volatile: &'static [&'static str],
    /// Where the generated text is (where a text difference is reported; the text is [`Dialect::output_text`]).
    pub text: &'static str,
}

/// Where an answer holds tool calls: every value `calls` selects that has a string at `name` is one call,
/// whose argument keys are the keys of the object at `arguments` (or of the JSON object that string holds,
/// as OpenAI sends them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ToolCalls {
    /// The calls (a pattern with `*`).
    pub calls: &'static str,
    /// The tool's name, relative to a call.
    pub name: &'static str,
    /// Its arguments, relative to a call.
    pub arguments: &'static str,
}

/// What a `synthesize` rule asks of an API module for one request.
pub(crate) struct SynthInput<'a> {
    /// The request body.
    pub request: &'a Value,
    /// The request's model ([`Route::model_of`]), empty when it has none.
    pub model: &'a str,
    /// The rule's answer.
    pub answer: &'a Answer,
    /// The rule's embeddings dimension, if set.
    pub dimensions: Option<usize>,
    /// Unix seconds.
    pub now_secs: u64,
    /// Most answer text over all choices ([`crate::limits::MAX_TEXT_BYTES`] or less); over it: `None`.
    pub text_cap: usize,
    /// The answer budget vectors are priced against before they are built ([`crate::budget`]).
    pub answer_budget: u64,
}

/// Everything the core needs of one API. Methods taking an [`Operation`] are called on the operation's
/// owning module ([`Operation::dialect`]); methods taking a [`Route`] on the module of the API the client
/// speaks ([`Route::dialect`]), which may serve another module's operation in its own framing.
pub(crate) trait Dialect: Sync {
    // --- paths ---

    /// The route for a path of this API, if it is one.
    fn classify(&self, path: &PathView<'_>) -> Option<Route>;

    /// OpenTelemetry `gen_ai.provider.name` of this API's own service.
    fn provider(&self) -> &'static str;

    /// The path forms this API serves, as a user would recognize them (`.../chat/completions`).
    fn paths(&self) -> &'static [&'static str] {
        &[]
    }

    // --- keys ---

    /// Does the top-level body field `field` never count in `op`'s key?
    fn ignored(&self, op: Operation, field: &str) -> bool;

    /// Does the top-level member `field: value` not count in `op`'s key? By default: when [`Dialect::ignored`]
    /// says so. An API overrides it where some values mean the same as no member at all (Ollama's `tools: []`,
    /// which its SDK always sends).
    fn ignored_member(&self, op: Operation, field: &str, _value: &Value) -> bool {
        self.ignored(op, field)
    }

    // --- requests ---

    /// Does this request ask for a streamed answer? By default: its path does, or its body says
    /// `"stream": true`.
    fn wants_stream(&self, route: &Route, request: &Value) -> bool {
        route.stream.is_some() || request.get("stream").and_then(Value::as_bool).unwrap_or(false)
    }

    /// How this request wants a stream rendered.
    fn stream_options(&self, _route: &Route, request: &Value) -> StreamOptions {
        StreamOptions::from_request(request)
    }

    /// How this request wants embedding vectors encoded.
    fn requested_encoding(&self, _op: Operation, _request: &Value) -> EmbeddingEncoding {
        EmbeddingEncoding::Float
    }

    // --- answers ---

    /// OpenTelemetry `gen_ai.operation.name` of `op`.
    fn otel_operation(&self, op: Operation) -> &'static str;

    /// Does `op`'s answer have a streaming form?
    fn streams(&self, op: Operation) -> bool;

    /// Is `op` an embeddings operation (answers are vectors, not text)?
    fn embeds(&self, _op: Operation) -> bool {
        false
    }

    /// Does a synthesized answer of `op` carry text? By default every operation but the embeddings ones;
    /// a token count has none either.
    fn answers_text(&self, op: Operation) -> bool {
        !self.embeds(op)
    }

    /// Renders `body`, a plain answer of `route.operation`, as the stream this API sends.
    fn render_stream(&self, route: &Route, body: &Value, opts: &StreamOptions) -> Result<Vec<u8>, StreamError>;

    /// The `content-type` of a stream sent on `route`.
    fn stream_content_type(&self, _route: &Route) -> &'static str {
        crate::stream::SSE_CONTENT_TYPE
    }

    /// Does `recorded` (an asset's `body_text` or `body_base64`) look like a recorded stream of `op`?
    fn is_recorded_stream(&self, _op: Operation, recorded: &[u8]) -> bool {
        std::str::from_utf8(recorded).is_ok_and(sse::is_sse)
    }

    /// Assembles a recorded stream of `op` into the plain answer.
    fn assemble_stream(&self, op: Operation, recorded: &[u8]) -> Result<Value, StreamError>;

    /// Is `recorded`, a stream of `op` as the live API sent it, whole: it assembles and ends with the API's
    /// last event? The recorder stores only whole streams (a cut one would replay as a truncated answer).
    /// By default: it assembles.
    fn stream_complete(&self, op: Operation, recorded: &[u8]) -> Result<(), StreamError> {
        self.assemble_stream(op, recorded).map(|_| ())
    }

    /// A recorded stream as sent on `route`: verbatim, unless the route asks for another framing than the
    /// recording's (then re-framed).
    fn recorded_stream(&self, _route: &Route, recorded: &[u8]) -> Vec<u8> {
        recorded.to_vec()
    }

    /// A stream recorded on `route`, of another API's operation, in this API's own framing (Bedrock's event
    /// stream around Anthropic's events), unwrapped into the operation's own framing so the operation's
    /// module can assemble it. `None` when `recorded` is not in such a framing (the default).
    fn unwrap_recorded(&self, _route: &Route, _recorded: &[u8]) -> Option<Result<Vec<u8>, StreamError>> {
        None
    }

    /// Token usage an answer of `op` reports, if it does.
    fn usage(&self, op: Operation, body: &Value) -> Option<Usage>;

    /// The generated text of an answer (what output tokens are estimated from when it reports no usage).
    fn output_text(&self, op: Operation, body: &Value) -> String;

    /// Estimated input tokens of a request (when its answer reports no usage).
    fn prompt_tokens(&self, _op: Operation, request: &Value) -> u64 {
        crate::tokens::value_tokens(request)
    }

    /// A fresh answer id in `op`'s own format.
    fn fresh_id(&self, op: Operation, rng: &mut Rng) -> String;

    /// The top-level fields of `op`'s answers refreshed on every hit.
    fn refreshed(&self, _op: Operation) -> &'static [(&'static str, Refresh)] {
        &[("id", Refresh::Id), ("created", Refresh::UnixSeconds), ("created_at", Refresh::UnixSeconds)]
    }

    /// The encoding of an embeddings answer's vectors, if `op` has them.
    fn embedding_encoding(&self, _op: Operation, _body: &Value) -> Option<EmbeddingEncoding> {
        None
    }

    /// Rewrites an embeddings answer's vectors to `want`; false when one could not be converted.
    fn convert_embeddings(&self, _op: Operation, _body: &mut Value, _want: EmbeddingEncoding) -> bool {
        true
    }

    /// Where parity finds `op`'s finish reasons, tool calls, vectors, usage and volatile fields. By default:
    /// nowhere (only the answer's shape, usage presence and status class are compared).
    fn parity_fields(&self, _op: Operation) -> ParityFields {
        ParityFields::default()
    }

    /// A schema-correct plain answer to a request no asset matches; `None` if it can't be made.
    fn synthesize(&self, op: Operation, input: &SynthInput<'_>, ids: &mut Rng) -> Option<Value>;

    // --- errors ---

    /// An error body of type `kind` in the shape this API's SDKs parse.
    fn error_body(&self, route: &Route, kind: &str, message: &str, code: Option<&str>) -> Value;

    /// Headers an error answer of type `kind` carries besides `content-type` (e.g. AWS's `x-amzn-errortype`).
    fn error_headers(&self, _route: &Route, _kind: &str) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The error type a local error answer with this HTTP status has (each API renders it in its own shape).
pub fn error_kind(status: u16) -> &'static str {
    match status {
        404 => "not_found_error",
        500 => "api_error",
        _ => "invalid_request_error",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_dialect_and_ignores_prefixes() {
        let cases = [
            ("/v1/chat/completions", Operation::ChatCompletions),
            ("/chat/completions", Operation::ChatCompletions),
            ("/api/proxy/openai/v1/chat/completions", Operation::ChatCompletions),
            ("/v1/completions", Operation::Completions),
            ("/v1/embeddings", Operation::Embeddings),
            ("/v1/responses", Operation::Responses),
            ("/v1/messages", Operation::Messages),
            ("/anthropic/v1/messages?beta=true", Operation::Messages),
        ];
        for (p, op) in cases {
            let r = classify("POST", p).unwrap_or_else(|| panic!("{p} not classified"));
            assert_eq!(r.operation, op, "{p}");
            assert_eq!(r.model, None, "{p}");
            assert_eq!(r.api, op.api(), "{p}");
        }
    }

    #[test]
    fn openai_compatible_services_use_the_openai_dialect() {
        // Groq (`/openai/v1`), OpenRouter (`/api/v1`), Fireworks (`/inference/v1`), DeepSeek (no `/v1`).
        for p in [
            "/openai/v1/chat/completions",
            "/api/v1/chat/completions",
            "/inference/v1/chat/completions",
            "/chat/completions",
        ] {
            let r = classify("POST", p).unwrap_or_else(|| panic!("{p} not classified"));
            assert_eq!((r.api, r.operation, r.provider), (Api::OpenAi, Operation::ChatCompletions, "openai"), "{p}");
        }
    }

    #[test]
    fn azure_deployment_is_the_path_model() {
        let r = classify("post", "/openai/deployments/my%2Dgpt/chat/completions?api-version=2024-06-01").unwrap();
        assert_eq!(r.operation, Operation::ChatCompletions);
        assert_eq!(r.model.as_deref(), Some("my-gpt"));
        assert_eq!(r.provider, "azure.ai.openai");
        let body = serde_json::json!({"model": "ignored"});
        assert_eq!(r.model_of(&body), Some("my-gpt"));
        assert_eq!(Route::of(Operation::ChatCompletions).model_of(&body), Some("ignored"));
    }

    #[test]
    fn azure_deployment_named_like_an_operation() {
        let r = classify("POST", "/openai/deployments/chat/completions?api-version=2024-06-01").unwrap();
        assert_eq!((r.operation, r.model.as_deref()), (Operation::Completions, Some("chat")));
        let r = classify("POST", "/openai/deployments/embeddings/embeddings").unwrap();
        assert_eq!((r.operation, r.model.as_deref()), (Operation::Embeddings, Some("embeddings")));
    }

    #[test]
    fn every_spelling_of_an_llm_path_is_classified() {
        for p in [
            "/v1/chat/%63ompletions",
            "/V1/Chat/Completions",
            "/v1/chat/completions;x=1",
            "/v1%2Fchat%2Fcompletions",
            "/v1/chat/completions%00",
            "//v1//chat/./completions",
            "/v1/embeddings/../chat/completions",
            "/v1/chat/completions/",
        ] {
            let r = classify("POST", p).unwrap_or_else(|| panic!("{p} not classified"));
            assert_eq!(r.operation, Operation::ChatCompletions, "{p}");
        }
        let az = classify("POST", "/OpenAI/Deployments/My-GPT/Chat/Completions").unwrap();
        assert_eq!(az.model.as_deref(), Some("My-GPT"));
    }

    #[test]
    fn non_llm_requests_are_not_classified() {
        for (m, p) in [
            ("GET", "/v1/models"),
            ("POST", "/v1/files"),
            ("POST", "/v1/messages/count_tokens"),
            ("PUT", "/v1/embeddings"),
            ("POST", "/"),
        ] {
            assert!(classify(m, p).is_none(), "{m} {p}");
        }
    }

    #[test]
    fn unknown_paths_are_explained_with_every_apis_paths() {
        let known = known_paths();
        for p in [".../chat/completions", ".../v1/messages", ":generateContent", ":rawPredict"] {
            assert!(known.contains(p), "{known}");
        }
    }

    #[test]
    fn every_operation_belongs_to_a_registered_api_that_names_it() {
        for op in Operation::ALL {
            assert!(Api::ALL.contains(&op.api()), "{op}");
            assert_eq!(Operation::from_name(op.name()), Some(op));
            assert!(!op.otel_name().is_empty());
        }
    }
}
