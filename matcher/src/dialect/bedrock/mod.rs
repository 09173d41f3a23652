//! AWS Bedrock Runtime: Converse and ConverseStream for any model, InvokeModel and
//! InvokeModelWithResponseStream for Anthropic models (Anthropic's Messages body), Titan text embeddings
//! and, as opaque JSON, any other model family.
//!
//! Paths are `[prefix]/model/{modelId}/converse`, `/converse-stream`, `/invoke`, `/invoke-with-response-stream`.
//! The model id is the request's model: a foundation model id (`anthropic.claude-3-5-haiku-20241022-v1:0`),
//! an inference profile (`us.anthropic...`) or an ARN, percent-encoded by the SDKs (`%3A`, `%2F`). The path
//! is decoded before it is split (see [`PathView`]), so an ARN's `/` makes several segments: the model id
//! is every segment between `model` and the operation, rejoined, case kept. What an InvokeModel body
//! holds depends on the model family, known only from the id: ids naming `anthropic.` are Anthropic
//! Messages requests (operation `anthropic.messages`, so one asset serves the Anthropic API and Bedrock
//! when the model and body agree; `anthropic_version` never counts), `titan-embed` ids are
//! `bedrock.titan_embeddings`, every other id is `bedrock.invoke_model`, keyed and replayed as plain JSON.
//!
//! Streams are AWS event streams ([`eventstream`]). ConverseStream sends `messageStart`,
//! `contentBlockStart` (tool use), `contentBlockDelta`, `contentBlockStop` per block, `messageStop` and
//! `metadata`; InvokeModelWithResponseStream wraps each event of the model's own stream (Anthropic's
//! `message_start` ... `message_stop`) in a `chunk` event whose payload is `{"bytes": base64(event JSON)}`.
//! Errors are `{"message": ...}` with the exception name in `x-amzn-errortype`, which botocore raises as
//! `ClientError` with that code. SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`,
//! `x-amz-content-sha256`) are headers, so they never count in a key.

mod converse;
mod invoke;

use serde_json::{json, Value};

use super::eventstream::{self, looks_like};
use super::{Api, Dialect, Framing, Operation, ParityFields, PathView, Refresh, Route, SynthInput, ToolCalls, Usage};
use crate::stream::{StreamError, StreamOptions};
use crate::template::Rng;

/// The Bedrock Runtime API module.
pub(crate) struct Bedrock;

/// Converse request fields that don't change the model's answer: log metadata, the latency/priority tier
/// and the cost-allocation project.
const CONVERSE_IGNORED: &[&str] = &["requestMetadata", "performanceConfig", "serviceTier", "projectIdentifier"];

/// What the last path segment asks for.
enum Call {
    Converse,
    Invoke,
}

impl Dialect for Bedrock {
    fn classify(&self, path: &PathView<'_>) -> Option<Route> {
        // The lower-cased segments as they are: no per-request list, as this runs before OpenAI's rules.
        let (last, init) = path.lower.split_last()?;
        let (call, stream) = match last.as_str() {
            "converse" => (Call::Converse, None),
            "converse-stream" => (Call::Converse, Some(Framing::EventStream)),
            "invoke" => (Call::Invoke, None),
            "invoke-with-response-stream" => (Call::Invoke, Some(Framing::EventStream)),
            _ => return None,
        };
        let at = init.iter().position(|s| s == "model")?;
        let ids = path.raw.get(at + 1..init.len()).filter(|ids| !ids.is_empty())?;
        let model = ids.join("/");
        let operation = match call {
            Call::Converse => Operation::BedrockConverse,
            Call::Invoke => invoke::operation_of(&model),
        };
        Some(Route { api: Api::Bedrock, operation, model: Some(model), provider: self.provider(), stream })
    }

    fn provider(&self) -> &'static str {
        "aws.bedrock"
    }

    fn ignored(&self, op: Operation, field: &str) -> bool {
        op == Operation::BedrockConverse && CONVERSE_IGNORED.contains(&field)
    }

    /// Only the path asks for a stream (a Bedrock body has no `stream` field).
    fn wants_stream(&self, route: &Route, _request: &Value) -> bool {
        route.stream.is_some()
    }

    fn otel_operation(&self, op: Operation) -> &'static str {
        match op {
            Operation::BedrockTitanEmbeddings => "embeddings",
            Operation::BedrockInvokeModel => "generate_content",
            _ => "chat",
        }
    }

    fn streams(&self, op: Operation) -> bool {
        op != Operation::BedrockTitanEmbeddings
    }

    fn embeds(&self, op: Operation) -> bool {
        op == Operation::BedrockTitanEmbeddings
    }

    fn render_stream(&self, route: &Route, body: &Value, opts: &StreamOptions) -> Result<Vec<u8>, StreamError> {
        let out = match route.operation {
            Operation::BedrockConverse => converse::render(body, opts),
            Operation::Messages => invoke::render_anthropic(body, opts),
            Operation::BedrockInvokeModel => invoke::render_opaque(body),
            op => Err(StreamError::NotStreamable(op)),
        }?;
        // The answer was priced before rendering (runtime); this cap holds for any caller.
        let limit = super::sse::STREAM_CAP;
        if out.len() > limit {
            return Err(StreamError::TooLarge { op: route.operation, limit });
        }
        Ok(out)
    }

    fn stream_content_type(&self, _route: &Route) -> &'static str {
        eventstream::CONTENT_TYPE
    }

    fn is_recorded_stream(&self, _op: Operation, recorded: &[u8]) -> bool {
        looks_like(recorded)
    }

    fn assemble_stream(&self, op: Operation, recorded: &[u8]) -> Result<Value, StreamError> {
        match op {
            Operation::BedrockConverse => converse::assemble(recorded),
            Operation::BedrockInvokeModel => invoke::assemble_opaque(recorded),
            op => Err(StreamError::NotStreamable(op)),
        }
    }

    /// An Anthropic stream recorded as SSE (on the Anthropic API) is re-framed into `chunk` events.
    fn recorded_stream(&self, route: &Route, recorded: &[u8]) -> Vec<u8> {
        if route.operation == Operation::Messages && !looks_like(recorded) {
            if let Some(framed) = std::str::from_utf8(recorded).ok().and_then(|t| invoke::chunks_of_sse(t).ok()) {
                return framed;
            }
        }
        recorded.to_vec()
    }

    fn unwrap_recorded(&self, route: &Route, recorded: &[u8]) -> Option<Result<Vec<u8>, StreamError>> {
        (route.operation == Operation::Messages && looks_like(recorded))
            .then(|| invoke::sse_of_chunks(route.operation, recorded).map(String::into_bytes))
    }

    fn usage(&self, op: Operation, body: &Value) -> Option<Usage> {
        match op {
            Operation::BedrockConverse => converse::usage(body),
            Operation::BedrockTitanEmbeddings => invoke::titan_usage(body),
            _ => invoke::opaque_usage(body),
        }
    }

    fn output_text(&self, _op: Operation, body: &Value) -> String {
        super::shape::generated_text(body)
    }

    /// Converse answers have no id of their own; `{{id}}` gives a tool-use id, as their blocks carry.
    fn fresh_id(&self, op: Operation, rng: &mut Rng) -> String {
        match op {
            Operation::BedrockConverse => format!("tooluse_{}", rng.base62(22)),
            _ => rng.base62(24),
        }
    }

    /// Converse and Titan answers carry no id or timestamp; other families' bodies may (`id`, `created`).
    fn refreshed(&self, op: Operation) -> &'static [(&'static str, Refresh)] {
        match op {
            Operation::BedrockInvokeModel => &[("id", Refresh::Id), ("created", Refresh::UnixSeconds)],
            _ => &[],
        }
    }

    fn parity_fields(&self, op: Operation) -> ParityFields {
        match op {
            Operation::BedrockConverse => ParityFields {
                finish: &["/stopReason"],
                tools: &[ToolCalls { calls: "/output/message/content/*/toolUse", name: "/name", arguments: "/input" }],
                usage: "/usage",
                // `metrics.latencyMs` is a timing.
                volatile: &["/metrics", "/output/message/content/*/toolUse/toolUseId"],
                text: "/output/message/content",
                ..ParityFields::default()
            },
            Operation::BedrockTitanEmbeddings => {
                ParityFields { vectors: &["/embedding"], usage: "/inputTextTokenCount", ..ParityFields::default() }
            }
            // Other model families: the stop fields Llama, Mistral, Cohere and OpenAI-style bodies use.
            _ => ParityFields {
                finish: &["/stop_reason", "/outputs/*/stop_reason", "/choices/*/finish_reason", "/finish_reason"],
                usage: "/usage",
                volatile: &[
                    "/amazon-bedrock-invocationMetrics/invocationLatency",
                    "/amazon-bedrock-invocationMetrics/firstByteLatency",
                ],
                ..ParityFields::default()
            },
        }
    }

    fn synthesize(&self, op: Operation, input: &SynthInput<'_>, _ids: &mut Rng) -> Option<Value> {
        match op {
            Operation::BedrockConverse => converse::synthesize(input),
            Operation::BedrockTitanEmbeddings => invoke::synthesize_titan(input),
            _ => None,
        }
    }

    fn error_body(&self, _route: &Route, _kind: &str, message: &str, _code: Option<&str>) -> Value {
        json!({ "message": message })
    }

    fn error_headers(&self, _route: &Route, kind: &str) -> Vec<(String, String)> {
        vec![("x-amzn-errortype".into(), exception_of(kind).into())]
    }
}

/// The Bedrock exception for an error type: Understudy's and the asset format's types map to the exception
/// Bedrock answers with; a type already spelled as an AWS exception (`ModelNotReadyException`) is kept.
fn exception_of(kind: &str) -> &str {
    match kind {
        "not_found_error" => "ResourceNotFoundException",
        "invalid_request_error" | "request_too_large" => "ValidationException",
        "rate_limit_error" => "ThrottlingException",
        "insufficient_quota" => "ServiceQuotaExceededException",
        "authentication_error" => "UnrecognizedClientException",
        "permission_error" => "AccessDeniedException",
        "overloaded_error" => "ServiceUnavailableException",
        "timeout_error" => "ModelTimeoutException",
        k if k.ends_with("Exception") && k.bytes().all(|b| b.is_ascii_alphanumeric()) => k,
        _ => "InternalServerException",
    }
}

/// A [`StreamError`] for bytes that are not a well-formed event stream.
fn frame_error(op: Operation, e: eventstream::FrameError) -> StreamError {
    StreamError::BadFrame { op, index: e.index, offset: e.offset, reason: e.reason }
}

/// An event stream message and its payload, parsed as a JSON object.
type JsonMessage = (eventstream::Message, serde_json::Map<String, Value>);

/// Each event of a recorded event stream with its payload parsed as a JSON object; an exception or error
/// message is the stream's [`StreamError::Upstream`].
fn json_messages(op: Operation, recorded: &[u8]) -> Result<Vec<JsonMessage>, StreamError> {
    let messages = eventstream::decode(recorded).map_err(|e| frame_error(op, e))?;
    let mut out = Vec::with_capacity(messages.len());
    for (index, m) in messages.into_iter().enumerate() {
        if let Some(message) = m.error() {
            return Err(StreamError::Upstream { op, message });
        }
        let fail = |reason: String| StreamError::BadFrame { op, index, offset: m.offset, reason };
        match serde_json::from_slice::<Value>(&m.payload) {
            Ok(Value::Object(data)) => out.push((m, data)),
            Ok(_) => return Err(fail(format!("the {} payload is not a JSON object", m.name()))),
            Err(e) => return Err(fail(format!("the {} payload is not valid JSON: {e}", m.name()))),
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::dialect::classify;

    const HAIKU: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
    const PROFILE_ARN: &str =
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0";

    fn route(path: &str) -> Route {
        classify("POST", path).unwrap_or_else(|| panic!("{path} not classified"))
    }

    #[test]
    fn converse_paths_name_the_model_and_the_stream() {
        for (path, stream) in [
            ("/model/anthropic.claude-3-5-haiku-20241022-v1:0/converse", None),
            ("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse", None),
            ("/model/anthropic.claude-3-5-haiku-20241022-v1%3a0/converse-stream", Some(Framing::EventStream)),
            ("/gateway/bedrock/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/Converse?x=1", None),
        ] {
            let r = route(path);
            assert_eq!((r.api, r.operation, r.provider), (Api::Bedrock, Operation::BedrockConverse, "aws.bedrock"));
            assert_eq!(r.model.as_deref(), Some(HAIKU), "{path}");
            assert_eq!(r.stream, stream, "{path}");
        }
    }

    #[test]
    fn arns_with_encoded_slashes_are_rejoined_with_their_case() {
        let encoded = PROFILE_ARN.replace(':', "%3A").replace('/', "%2F");
        for path in [format!("/model/{encoded}/converse"), format!("/model/{PROFILE_ARN}/converse")] {
            let r = route(&path);
            assert_eq!(r.model.as_deref(), Some(PROFILE_ARN), "{path}");
        }
        let r = route(&format!("/model/{}/invoke", encoded.replace("anthropic", "Anthropic")));
        assert_eq!(r.model.as_deref(), Some(PROFILE_ARN.replace("anthropic", "Anthropic").as_str()));
        assert_eq!(r.operation, Operation::Messages, "an Anthropic inference profile takes Messages bodies");
        let custom = "arn:aws:bedrock:us-west-2:123456789012:custom-model/amazon.titan-text/abc123";
        let r = route(&format!("/model/{}/invoke", custom.replace('/', "%2F")));
        assert_eq!((r.operation, r.model.as_deref()), (Operation::BedrockInvokeModel, Some(custom)));
    }

    #[test]
    fn invoke_operations_follow_the_model_family() {
        for (model, op) in [
            (HAIKU, Operation::Messages),
            ("us.anthropic.claude-sonnet-4-20250514-v1:0", Operation::Messages),
            ("amazon.titan-embed-text-v2:0", Operation::BedrockTitanEmbeddings),
            ("amazon.titan-embed-image-v1", Operation::BedrockTitanEmbeddings),
            ("meta.llama3-8b-instruct-v1:0", Operation::BedrockInvokeModel),
            ("cohere.embed-english-v3", Operation::BedrockInvokeModel),
        ] {
            for suffix in ["invoke", "invoke-with-response-stream"] {
                let r = route(&format!("/model/{}/{suffix}", model.replace(':', "%3A")));
                assert_eq!((r.api, r.operation, r.model.as_deref()), (Api::Bedrock, op, Some(model)), "{model}");
                assert_eq!(r.stream.is_some(), suffix != "invoke");
                assert_eq!(r.provider, "aws.bedrock");
            }
        }
    }

    #[test]
    fn other_paths_are_not_bedrocks() {
        for p in [
            "/model/converse",
            "/model//converse",
            "/model/x/count-tokens",
            "/models/x/converse",
            "/guardrail/g/version/1/apply",
            "/model/x/invoke-with-bidirectional-stream",
        ] {
            assert!(classify("POST", p).is_none_or(|r| r.api != Api::Bedrock), "{p}");
        }
        assert!(classify("GET", "/model/x/converse").is_none());
    }

    #[test]
    fn errors_have_bedrocks_shape_and_exception_header() {
        let r = route("/model/m/converse");
        assert_eq!(Bedrock.error_body(&r, "not_found_error", "no asset", Some("c")), json!({"message": "no asset"}));
        for (kind, exception) in [
            ("not_found_error", "ResourceNotFoundException"),
            ("invalid_request_error", "ValidationException"),
            ("request_too_large", "ValidationException"),
            ("rate_limit_error", "ThrottlingException"),
            ("api_error", "InternalServerException"),
            ("ModelNotReadyException", "ModelNotReadyException"),
            ("Bad Exception", "InternalServerException"),
        ] {
            assert_eq!(Bedrock.error_headers(&r, kind), vec![("x-amzn-errortype".to_string(), exception.to_string())]);
        }
    }

    #[test]
    fn only_the_path_asks_for_a_stream() {
        let body = json!({"stream": true});
        assert!(!Bedrock.wants_stream(&route("/model/m/converse"), &body));
        assert!(Bedrock.wants_stream(&route("/model/m/converse-stream"), &json!({})));
    }
}
