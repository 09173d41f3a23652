//! Google's Gemini API (`generativelanguage.googleapis.com`) and Vertex AI (`aiplatform.googleapis.com`):
//! `generateContent`, `streamGenerateContent`, `embedContent`, `batchEmbedContents` and `countTokens`, and
//! the path grammar of Anthropic models on Vertex AI (`:rawPredict`, `:streamRawPredict`).
//!
//! Paths name the model and the method in their last segment, `{model}:{method}`:
//!
//! - Gemini API: `/v1beta/models/{m}:generateContent` (also `/v1/`, `/v1alpha/`), `/v1beta/tunedModels/{m}:...`;
//! - Vertex AI: `/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent` (also
//!   `v1beta1`, express mode without `projects/{p}/locations/{l}`, and `.../endpoints/{id}:...` for tuned
//!   models);
//! - Anthropic on Vertex AI: `.../publishers/anthropic/models/{m}:rawPredict` / `:streamRawPredict`, which is
//!   Anthropic's Messages API with the model in the path ([`Api::Anthropic`] serves it).
//!
//! The model is the path's (`models/` dropped, `tunedModels/{m}` and `endpoints/{id}` kept whole), and
//! project, location, API version, `?key=` and the `x-goog-api-key` header never count: one asset serves the
//! Gemini API and Vertex AI alike; only the OpenTelemetry provider differs (`gcp.gemini`, `gcp.vertex_ai`).
//! `:streamGenerateContent` streams the same answer as `:generateContent` (same key): as Server-Sent Events
//! with `?alt=sse` (what google-genai asks for), else as one JSON array whose elements arrive one by one.
//!
//! Errors are Google's `{"error": {"code", "message", "status", "details"}}`, which google-genai raises as
//! `errors.ClientError` (4xx) or `errors.ServerError` (5xx) with the HTTP status as `code`. Usage is
//! `usageMetadata`: input is `promptTokenCount` (cached content included) plus `toolUsePromptTokenCount`,
//! output is `candidatesTokenCount` plus `thoughtsTokenCount`, the cached part `cachedContentTokenCount`.

mod embed;
mod generate;

use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use super::{Api, Dialect, Framing, Operation, ParityFields, PathView, Refresh, Route, SynthInput, ToolCalls, Usage};
use crate::stream::{StreamError, StreamOptions};
use crate::template::Rng;

/// The Gemini API and Vertex AI module.
pub(crate) struct Gemini;

/// OpenTelemetry `gen_ai.provider.name` of the Gemini API.
const GEMINI: &str = "gcp.gemini";
/// OpenTelemetry `gen_ai.provider.name` of Vertex AI.
const VERTEX: &str = "gcp.vertex_ai";

/// Request fields that never change an answer: Vertex AI's billing `labels`.
const IGNORED: &[&str] = &["labels"];

/// The `content-type` of a JSON-array stream, as Google sends it.
const JSON_ARRAY_CONTENT_TYPE: &str = "application/json; charset=UTF-8";
/// The `content-type` of an SSE stream, as Google sends it.
const SSE_CONTENT_TYPE: &str = "text/event-stream";

impl Dialect for Gemini {
    fn classify(&self, path: &PathView<'_>) -> Option<Route> {
        classify(path)
    }

    fn provider(&self) -> &'static str {
        GEMINI
    }

    fn paths(&self) -> &'static [&'static str] {
        &[
            ".../models/{model}:generateContent (also :streamGenerateContent, :embedContent, :batchEmbedContents, \
             :countTokens; Vertex AI's .../publishers/google/models/{model}:...)",
            ".../publishers/anthropic/models/{model}:rawPredict (and :streamRawPredict)",
        ]
    }

    fn ignored(&self, _op: Operation, field: &str) -> bool {
        IGNORED.contains(&field)
    }

    /// Only the path asks for a stream (`:streamGenerateContent`); Gemini bodies have no `stream` flag.
    fn wants_stream(&self, route: &Route, _request: &Value) -> bool {
        route.stream.is_some()
    }

    fn otel_operation(&self, op: Operation) -> &'static str {
        match op {
            Operation::EmbedContent | Operation::BatchEmbedContents => "embeddings",
            // Not one of OpenTelemetry's well-known values: none fits counting tokens.
            Operation::CountTokens => "count_tokens",
            _ => "generate_content",
        }
    }

    fn streams(&self, op: Operation) -> bool {
        op == Operation::GenerateContent
    }

    fn embeds(&self, op: Operation) -> bool {
        matches!(op, Operation::EmbedContent | Operation::BatchEmbedContents)
    }

    fn answers_text(&self, op: Operation) -> bool {
        op == Operation::GenerateContent
    }

    fn render_stream(&self, route: &Route, body: &Value, opts: &StreamOptions) -> Result<Vec<u8>, StreamError> {
        match route.operation {
            Operation::GenerateContent => generate::render(body, framing(route), opts),
            op => Err(StreamError::NotStreamable(op)),
        }
    }

    fn stream_content_type(&self, route: &Route) -> &'static str {
        match framing(route) {
            Framing::JsonArray => JSON_ARRAY_CONTENT_TYPE,
            _ => SSE_CONTENT_TYPE,
        }
    }

    fn is_recorded_stream(&self, _op: Operation, recorded: &[u8]) -> bool {
        generate::recorded_framing(recorded).is_some()
    }

    fn assemble_stream(&self, op: Operation, recorded: &[u8]) -> Result<Value, StreamError> {
        match op {
            Operation::GenerateContent => generate::assemble(recorded),
            op => Err(StreamError::NotStreamable(op)),
        }
    }

    fn stream_complete(&self, op: Operation, recorded: &[u8]) -> Result<(), StreamError> {
        match op {
            Operation::GenerateContent => generate::complete(recorded),
            op => Err(StreamError::NotStreamable(op)),
        }
    }

    fn recorded_stream(&self, route: &Route, recorded: &[u8]) -> Vec<u8> {
        generate::reframe(recorded, framing(route)).unwrap_or_else(|| recorded.to_vec())
    }

    fn usage(&self, op: Operation, body: &Value) -> Option<Usage> {
        if op == Operation::CountTokens {
            // Counting tokens is free: a virtual answer to it avoids no billed tokens.
            return Some(Usage::default());
        }
        let u = body.get("usageMetadata")?;
        let n = |k: &str| u.get(k).and_then(Value::as_u64);
        if n("promptTokenCount").is_none() && n("candidatesTokenCount").is_none() && n("totalTokenCount").is_none() {
            return None;
        }
        let n = |k: &str| n(k).unwrap_or(0);
        Some(Usage {
            input: n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount")),
            output: n("candidatesTokenCount").saturating_add(n("thoughtsTokenCount")),
            cached_input: n("cachedContentTokenCount"),
        })
    }

    fn output_text(&self, op: Operation, body: &Value) -> String {
        match op {
            Operation::GenerateContent => generate::output_text(body),
            _ => String::new(),
        }
    }

    fn fresh_id(&self, _op: Operation, rng: &mut Rng) -> String {
        rng.base62(22)
    }

    fn refreshed(&self, op: Operation) -> &'static [(&'static str, Refresh)] {
        match op {
            Operation::GenerateContent => &[("responseId", Refresh::Id), ("createTime", Refresh::IsoTime)],
            _ => &[],
        }
    }

    fn parity_fields(&self, op: Operation) -> ParityFields {
        match op {
            Operation::GenerateContent => ParityFields {
                finish: &["/candidates/*/finishReason"],
                tools: &[ToolCalls {
                    calls: "/candidates/*/content/parts/*/functionCall",
                    name: "/name",
                    arguments: "/args",
                }],
                usage: "/usageMetadata",
                // `modelVersion` names the serving snapshot (`gemini-2.0-flash-001`), not the API's shape.
                volatile: &["/modelVersion", "/candidates/*/content/parts/*/functionCall/id"],
                text: "/candidates/0/content/parts",
                ..ParityFields::default()
            },
            Operation::EmbedContent => {
                ParityFields { vectors: &["/embedding/values"], usage: "/usageMetadata", ..ParityFields::default() }
            }
            Operation::BatchEmbedContents => {
                ParityFields { vectors: &["/embeddings/*/values"], usage: "/usageMetadata", ..ParityFields::default() }
            }
            _ => ParityFields { usage: "/usageMetadata", ..ParityFields::default() },
        }
    }

    fn synthesize(&self, op: Operation, input: &SynthInput<'_>, ids: &mut Rng) -> Option<Value> {
        match op {
            Operation::GenerateContent => generate::synthesize(input, self.fresh_id(op, ids)),
            Operation::EmbedContent => embed::embed_content(input),
            Operation::BatchEmbedContents => embed::batch_embed_contents(input),
            Operation::CountTokens => Some(embed::count_tokens(input.request)),
            _ => None,
        }
    }

    fn error_body(&self, _route: &Route, kind: &str, message: &str, code: Option<&str>) -> Value {
        let (http, status) = google_status(kind);
        let mut error = json!({"code": http, "message": message, "status": status});
        if let (Some(reason), Some(e)) = (code, error.as_object_mut()) {
            e.insert(
                "details".into(),
                json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "understudy"}]),
            );
        }
        json!({ "error": error })
    }
}

/// How a route streams: its path's framing, else SSE.
fn framing(route: &Route) -> Framing {
    route.stream.unwrap_or(Framing::Sse)
}

/// The HTTP status and `google.rpc.Code` name of an error type: Understudy's own types (the other APIs'
/// names) and Google's code names, as an asset's `error.type` may use either.
fn google_status(kind: &str) -> (u16, &'static str) {
    match kind {
        "invalid_request_error" | "INVALID_ARGUMENT" => (400, "INVALID_ARGUMENT"),
        "FAILED_PRECONDITION" => (400, "FAILED_PRECONDITION"),
        "OUT_OF_RANGE" => (400, "OUT_OF_RANGE"),
        "authentication_error" | "UNAUTHENTICATED" => (401, "UNAUTHENTICATED"),
        "permission_error" | "PERMISSION_DENIED" => (403, "PERMISSION_DENIED"),
        "not_found_error" | "NOT_FOUND" => (404, "NOT_FOUND"),
        "ALREADY_EXISTS" => (409, "ALREADY_EXISTS"),
        "ABORTED" => (409, "ABORTED"),
        "request_too_large" => (413, "INVALID_ARGUMENT"),
        "rate_limit_error" | "insufficient_quota" | "RESOURCE_EXHAUSTED" => (429, "RESOURCE_EXHAUSTED"),
        "CANCELLED" => (499, "CANCELLED"),
        "UNIMPLEMENTED" => (501, "UNIMPLEMENTED"),
        "overloaded_error" | "UNAVAILABLE" => (503, "UNAVAILABLE"),
        "timeout_error" | "DEADLINE_EXCEEDED" => (504, "DEADLINE_EXCEEDED"),
        _ => (500, "INTERNAL"),
    }
}

/// Recognizes `.../{collection}/{model}:{method}` paths of the Gemini API and Vertex AI.
fn classify(path: &PathView<'_>) -> Option<Route> {
    let (last, parents) = path.raw.split_last()?;
    let (model, method) = last.rsplit_once(':')?;
    if model.is_empty() {
        return None;
    }
    let lower: Vec<&str> = path.lower.iter().take(parents.len()).map(String::as_str).collect();
    let vertex_scope = lower.contains(&"locations");
    let method = method.to_ascii_lowercase();
    let (model, publisher, vertex) = match lower.as_slice() {
        [.., "publishers", publisher, "models"] => (model.to_string(), Some(*publisher), true),
        [.., "tunedmodels"] => (format!("tunedModels/{model}"), None, false),
        [.., "endpoints"] if vertex_scope => (format!("endpoints/{model}"), None, true),
        [.., "models"] => (model.to_string(), None, vertex_scope),
        _ => return None,
    };
    let provider = if vertex { VERTEX } else { GEMINI };
    if publisher == Some("anthropic") {
        // Anthropic's Messages API on Vertex AI; `count-tokens:rawPredict` is its token counter, which
        // Understudy passes through like Anthropic's own `/v1/messages/count_tokens`.
        let stream = match method.as_str() {
            "rawpredict" => None,
            "streamrawpredict" => Some(Framing::Sse),
            _ => return None,
        };
        if model == "count-tokens" {
            return None;
        }
        return Some(Route {
            api: Api::Anthropic,
            operation: Operation::Messages,
            model: Some(model),
            provider,
            stream,
        });
    }
    if publisher.is_some_and(|p| p != "google") {
        return None;
    }
    let (operation, stream) = match method.as_str() {
        "generatecontent" => (Operation::GenerateContent, None),
        "streamgeneratecontent" => (Operation::GenerateContent, Some(stream_framing(path.query))),
        "embedcontent" => (Operation::EmbedContent, None),
        "batchembedcontents" => (Operation::BatchEmbedContents, None),
        "counttokens" => (Operation::CountTokens, None),
        _ => return None,
    };
    Some(Route { api: Api::Gemini, operation, model: Some(model), provider, stream })
}

/// `?alt=sse` asks for Server-Sent Events; without it the stream is one JSON array.
fn stream_framing(query: &str) -> Framing {
    let sse = query.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode_str(k).decode_utf8_lossy();
        let v = percent_decode_str(v).decode_utf8_lossy();
        k.trim() == "alt" && v.trim().eq_ignore_ascii_case("sse")
    });
    if sse {
        Framing::Sse
    } else {
        Framing::JsonArray
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::dialect::classify as classify_path;

    #[test]
    fn gemini_and_vertex_paths_name_the_model_and_provider() {
        let cases: &[(&str, Operation, &str, &str, Option<Framing>)] = &[
            ("/v1beta/models/gemini-2.0-flash:generateContent", Operation::GenerateContent, "gemini-2.0-flash", GEMINI, None),
            ("/v1/models/gemini-2.0-flash:generateContent?key=AIzaSyX", Operation::GenerateContent, "gemini-2.0-flash", GEMINI, None),
            ("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", Operation::GenerateContent, "gemini-2.5-pro", GEMINI, Some(Framing::Sse)),
            ("/v1beta/models/gemini-2.5-pro:streamGenerateContent?key=k&alt=SSE", Operation::GenerateContent, "gemini-2.5-pro", GEMINI, Some(Framing::Sse)),
            ("/v1beta/models/gemini-2.5-pro:streamGenerateContent", Operation::GenerateContent, "gemini-2.5-pro", GEMINI, Some(Framing::JsonArray)),
            ("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=json", Operation::GenerateContent, "gemini-2.5-pro", GEMINI, Some(Framing::JsonArray)),
            ("/v1beta/models/text-embedding-004:embedContent", Operation::EmbedContent, "text-embedding-004", GEMINI, None),
            ("/v1beta/models/gemini-embedding-001:batchEmbedContents", Operation::BatchEmbedContents, "gemini-embedding-001", GEMINI, None),
            ("/v1beta/models/gemini-2.0-flash:countTokens", Operation::CountTokens, "gemini-2.0-flash", GEMINI, None),
            ("/v1beta/tunedModels/my-tuned-7:generateContent", Operation::GenerateContent, "tunedModels/my-tuned-7", GEMINI, None),
            ("/gateway/google/v1beta/models/gemini-2.0-flash%3AgenerateContent", Operation::GenerateContent, "gemini-2.0-flash", GEMINI, None),
            ("/V1BETA/Models/Gemini-2.0-Flash:GENERATECONTENT", Operation::GenerateContent, "Gemini-2.0-Flash", GEMINI, None),
            (
                "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent",
                Operation::GenerateContent, "gemini-2.0-flash", VERTEX, None,
            ),
            (
                "/v1beta1/projects/p/locations/global/publishers/google/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
                Operation::GenerateContent, "gemini-2.0-flash", VERTEX, Some(Framing::Sse),
            ),
            ("/v1/publishers/google/models/gemini-2.0-flash:generateContent", Operation::GenerateContent, "gemini-2.0-flash", VERTEX, None),
            (
                "/v1/projects/p/locations/europe-west4/endpoints/1234567890:generateContent",
                Operation::GenerateContent, "endpoints/1234567890", VERTEX, None,
            ),
            (
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-embedding-001:embedContent",
                Operation::EmbedContent, "gemini-embedding-001", VERTEX, None,
            ),
            (
                "/v1beta1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:countTokens",
                Operation::CountTokens, "gemini-2.0-flash", VERTEX, None,
            ),
        ];
        for (p, op, model, provider, stream) in cases {
            let r = classify_path("POST", p).unwrap_or_else(|| panic!("{p} not classified"));
            assert_eq!(r.api, Api::Gemini, "{p}");
            assert_eq!(r.operation, *op, "{p}");
            assert_eq!(r.model.as_deref(), Some(*model), "{p}");
            assert_eq!(r.provider, *provider, "{p}");
            assert_eq!(r.stream, *stream, "{p}");
        }
    }

    #[test]
    fn anthropic_on_vertex_speaks_anthropic_with_the_path_model() {
        let base = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929";
        let r = classify_path("POST", &format!("{base}:rawPredict")).unwrap();
        assert_eq!((r.api, r.operation, r.provider, r.stream), (Api::Anthropic, Operation::Messages, VERTEX, None));
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5@20250929"));
        let r = classify_path("POST", &format!("{base}:streamRawPredict")).unwrap();
        assert_eq!((r.api, r.stream), (Api::Anthropic, Some(Framing::Sse)));
        // The body's `"stream": true` also streams a rawPredict, as the Anthropic dialect reads it.
        assert!(r.dialect().wants_stream(&r, &json!({})));
    }

    #[test]
    fn other_paths_are_not_gemini() {
        for p in [
            "/v1beta/models/gemini-2.0-flash",
            "/v1beta/models/:generateContent",
            "/v1beta/models/gemini-2.0-flash:predict",
            "/v1beta/models/gemini-2.0-flash:generateImages",
            "/v1/projects/p/locations/l/publishers/google/models/imagen-3.0:predict",
            "/v1/projects/p/locations/l/publishers/anthropic/models/count-tokens:rawPredict",
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude:generateContent",
            "/v1/projects/p/locations/l/publishers/meta/models/llama:generateContent",
            "/v1/files:upload",
            "/v1beta/cachedContents:create",
        ] {
            assert!(classify_path("POST", p).is_none(), "{p}");
        }
        assert!(classify_path("GET", "/v1beta/models/gemini-2.0-flash:generateContent").is_none());
        // OpenAI-compatible Gemini and Vertex endpoints are OpenAI's.
        let r = classify_path("POST", "/v1beta/openai/chat/completions").unwrap();
        assert_eq!(r.api, Api::OpenAi);
        let r = classify_path("POST", "/v1/projects/p/locations/l/endpoints/openapi/chat/completions").unwrap();
        assert_eq!(r.api, Api::OpenAi);
    }

    #[test]
    fn usage_counts_tool_prompts_as_input_and_thoughts_as_output() {
        let body = json!({"usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20, "cachedContentTokenCount": 60,
            "thoughtsTokenCount": 7, "toolUsePromptTokenCount": 3, "totalTokenCount": 130}});
        let u = Gemini.usage(Operation::GenerateContent, &body);
        assert_eq!(u, Some(Usage { input: 103, output: 27, cached_input: 60 }));
        let emb =
            json!({"embedding": {"values": [0.1]}, "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}});
        assert_eq!(Gemini.usage(Operation::EmbedContent, &emb), Some(Usage { input: 4, output: 0, cached_input: 0 }));
        assert_eq!(Gemini.usage(Operation::GenerateContent, &json!({"candidates": []})), None);
        assert_eq!(
            Gemini.usage(Operation::CountTokens, &json!({"totalTokens": 3, "usageMetadata": {"promptTokenCount": 3}})),
            Some(Usage::default()),
            "countTokens is free"
        );
    }

    #[test]
    fn errors_have_googles_shape() {
        let route = classify_path("POST", "/v1beta/models/m:generateContent").unwrap();
        let e = Gemini.error_body(&route, "not_found_error", "no asset", Some("understudy_no_matching_asset"));
        assert_eq!(e["error"]["code"], 404);
        assert_eq!(e["error"]["status"], "NOT_FOUND");
        assert_eq!(e["error"]["message"], "no asset");
        assert_eq!(e["error"]["details"][0]["reason"], "understudy_no_matching_asset");
        let e = Gemini.error_body(&route, "RESOURCE_EXHAUSTED", "quota", None);
        assert_eq!((e["error"]["code"].as_u64(), e["error"].get("details")), (Some(429), None));
        assert_eq!(google_status("invalid_request_error"), (400, "INVALID_ARGUMENT"));
        assert_eq!(google_status("api_error"), (500, "INTERNAL"));
    }

    #[test]
    fn streams_are_sse_or_a_json_array_by_path() {
        let sse = classify_path("POST", "/v1beta/models/m:streamGenerateContent?alt=sse").unwrap();
        let arr = classify_path("POST", "/v1beta/models/m:streamGenerateContent").unwrap();
        let plain = classify_path("POST", "/v1beta/models/m:generateContent").unwrap();
        assert_eq!(Gemini.stream_content_type(&sse), SSE_CONTENT_TYPE);
        assert_eq!(Gemini.stream_content_type(&arr), JSON_ARRAY_CONTENT_TYPE);
        assert!(Gemini.wants_stream(&sse, &json!({})) && Gemini.wants_stream(&arr, &json!({})));
        assert!(!Gemini.wants_stream(&plain, &json!({"stream": true})));
    }
}

#[cfg(test)]
mod serve_tests;
