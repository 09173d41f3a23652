//! The tokens an asset's calls use, read as the filter reads them when it serves the asset: each answer's
//! own usage (its API's usage fields, a recorded stream assembled first), else estimated from the request
//! and the answer's text. `understudy estimate` measures a test suite's exposure from these.

use serde_json::Value;

use crate::asset::{Asset, AssetResponse};
use crate::dialect::{classify, Route, Usage};
use crate::store::answer::output_tokens;

/// One recorded call: what it is and the tokens it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// OpenTelemetry `gen_ai.provider.name` of the asset's path.
    pub provider: &'static str,
    /// OpenTelemetry `gen_ai.operation.name`.
    pub operation: &'static str,
    /// The model ([`Route::model_of`]); empty when there is none.
    pub model: String,
    /// Tokens: the answer's usage, else estimated.
    pub usage: Usage,
    /// True when `usage` is an estimate.
    pub estimated: bool,
}

/// One sample per successful answer of `asset` (an asset with `responses` is several calls); error answers
/// use no tokens and give none. Assets that are not LLM calls give none.
pub fn asset_samples(asset: &Asset) -> Vec<Sample> {
    let Some(route) = classify(&asset.request.method, &asset.request.path) else { return Vec::new() };
    let request = &asset.request.body;
    let model = route.model_of(request).unwrap_or_default().to_string();
    let op = route.operation;
    let dialect = op.dialect();
    asset
        .all_responses()
        .into_iter()
        .filter(|r| r.status() < 400 && r.error.is_none())
        .map(|r| {
            let body = answer_json(&route, r);
            let recorded = body.as_ref().and_then(|b| dialect.usage(op, b));
            let (usage, estimated) = match recorded {
                Some(u) => (u, false),
                None => {
                    let output = body.as_ref().map_or(0, |b| output_tokens(&route, b));
                    (Usage { input: dialect.prompt_tokens(op, request), output, cached_input: 0 }, true)
                }
            };
            Sample { provider: route.provider, operation: op.otel_name(), model: model.clone(), usage, estimated }
        })
        .collect()
}

/// The answer as JSON: its `body`, or its recorded stream assembled.
fn answer_json(route: &Route, r: &AssetResponse) -> Option<Value> {
    if let Some(b) = &r.body {
        return Some(b.clone());
    }
    let op = route.operation;
    let raw = match (&r.body_text, &r.body_base64) {
        (Some(t), _) => t.as_bytes().to_vec(),
        (None, Some(b)) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(b).ok()?
        }
        (None, None) => return None,
    };
    let dialect = op.dialect();
    if op.streams() && dialect.is_recorded_stream(op, &raw) {
        return dialect.assemble_stream(op, &raw).ok();
    }
    serde_json::from_slice(&raw).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn asset(v: Value) -> Asset {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn samples_read_each_apis_usage_and_estimate_the_rest() {
        let a = asset(json!({
            "request": {"path": "/v1/messages", "body": {"model": "claude-haiku-4-5", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}},
            "responses": [
                {"body": {"content": [{"type": "text", "text": "hello"}], "usage": {"input_tokens": 10, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 5, "output_tokens": 4}}},
                {"body": {"content": [{"type": "text", "text": "hello there, a longer answer"}]}},
                {"status": 429, "error": {"type": "rate_limit_error", "message": "slow down"}},
            ],
        }));
        let s = asset_samples(&a);
        assert_eq!(s.len(), 2, "the error answer uses no tokens");
        assert_eq!((s[0].provider, s[0].operation, s[0].model.as_str()), ("anthropic", "chat", "claude-haiku-4-5"));
        assert_eq!((s[0].usage, s[0].estimated), (Usage { input: 45, output: 4, cached_input: 30 }, false));
        assert!(s[1].estimated && s[1].usage.input > 0 && s[1].usage.output > 0, "{:?}", s[1]);

        // A recorded OpenAI stream is assembled, its usage chunk read; Azure's deployment is the model.
        let sse = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}]}\n\n\
                   data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,\"total_tokens\":8}}\n\ndata: [DONE]\n\n";
        let a = asset(json!({
            "request": {"path": "/openai/deployments/my-gpt/chat/completions?api-version=1", "body": {"messages": [], "stream": true}},
            "response": {"headers": {"content-type": "text/event-stream"}, "body_text": sse},
        }));
        let s = asset_samples(&a);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].provider, s[0].model.as_str()), ("azure.ai.openai", "my-gpt"));
        assert_eq!((s[0].usage, s[0].estimated), (Usage { input: 7, output: 1, cached_input: 0 }, false));

        // Gemini's usageMetadata, the path's model.
        let a = asset(json!({
            "request": {"path": "/v1beta/models/gemini-2.5-flash:generateContent", "body": {"contents": []}},
            "response": {"body": {"candidates": [], "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3, "cachedContentTokenCount": 8, "totalTokenCount": 15}}},
        }));
        let s = asset_samples(&a);
        assert_eq!(
            (s[0].provider, s[0].operation, s[0].model.as_str()),
            ("gcp.gemini", "generate_content", "gemini-2.5-flash")
        );
        assert_eq!(s[0].usage, Usage { input: 12, output: 3, cached_input: 8 });
    }
}
