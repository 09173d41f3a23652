//! Streaming forms of LLM responses: the options and errors every API's stream grammar shares, and
//! entry points that reach each operation's own grammar in its API module (`dialect/`).
//!
//! [`render_sse`] turns a recorded non-streaming response body into the SSE stream the live API sends when
//! the request says `"stream": true`, so one asset answers both kinds of client. [`assemble_sse`] does the
//! reverse for assets recorded as streams (`response.body_text` holding SSE): it yields the body the
//! non-streaming API would have returned. Both are pure and never panic; bad input is a [`StreamError`]
//! that names the field or the event.
//!
//! The grammars follow the live APIs and the official SDKs' stream accumulators, e.g.:
//!
//! - OpenAI chat completions: `data: {chat.completion.chunk}` lines, an opening delta per choice with the
//!   role, text pieces, tool-call headers then argument pieces, a closing delta with `finish_reason`, an
//!   optional usage chunk (`stream_options.include_usage`), then `data: [DONE]`.
//! - OpenAI legacy completions: `text_completion` chunks with `choices[].text` pieces, the same ending.
//! - OpenAI responses: `event: response.*` events with strictly increasing `sequence_number`, from
//!   `response.created` to `response.completed` (or `.incomplete` / `.failed`), no `[DONE]`.
//! - Anthropic messages: `message_start`, `ping`, `content_block_start` / `_delta` / `_stop` per block,
//!   `message_delta` (stop reason, cumulative usage), `message_stop`.
//! - Ollama chat and generate (not SSE): one JSON object a line, text pieces with `done: false`, then a last
//!   line with `done: true` and the counts and timings ([`render_stream`] / [`assemble_stream`]).
//!
//! - Gemini API and Vertex AI `streamGenerateContent`: every chunk a whole `GenerateContentResponse` (text
//!   in pieces, other parts whole), as `data:` events with `?alt=sse`, else as one JSON array.
//!
//! Embeddings and token counts have no streaming form: [`StreamError::NotStreamable`].
//!
//! ```
//! use serde_json::json;
//! use understudy_matcher::stream::{assemble_sse, render_sse, StreamOptions};
//! use understudy_matcher::Operation;
//!
//! let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
//!     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}]});
//! let sse = render_sse(Operation::ChatCompletions, &body, &StreamOptions::default()).unwrap();
//! assert!(sse.starts_with("data: {") && sse.ends_with("data: [DONE]\n\n"));
//! let back = assemble_sse(Operation::ChatCompletions, &sse).unwrap();
//! assert_eq!(back["choices"][0]["message"]["content"], "Paris.");
//! ```

use std::borrow::Cow;

use serde_json::Value;
use thiserror::Error;

use crate::dialect::{Operation, Route};

/// The `content-type` of a streamed response, as OpenAI and Anthropic send it.
pub const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";

/// Default target size of one streamed text piece, in chars.
pub const DEFAULT_CHUNK_CHARS: usize = 8;

/// How to render a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// OpenAI `stream_options.include_usage`: every chunk carries `"usage": null` and a last chunk with
    /// `choices: []` carries the body's usage. Ignored by the responses and Anthropic grammars, which always
    /// report usage.
    pub include_usage: bool,
    /// Target size of a text or arguments piece, in chars. Pieces end early before whitespace, so words
    /// arrive whole like tokens (`"The"`, `" capital"`); longer words are cut. `0` sends each text whole.
    pub chunk_chars: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { include_usage: false, chunk_chars: DEFAULT_CHUNK_CHARS }
    }
}

impl StreamOptions {
    /// The options a request body asks for (`stream_options.include_usage`), with the default piece size.
    pub fn from_request(request: &Value) -> Self {
        let include_usage = request
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        StreamOptions { include_usage, ..StreamOptions::default() }
    }
}

/// Does this request body ask for a streamed response (`"stream": true`)?
pub fn wants_stream(request: &Value) -> bool {
    request.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// Why a body could not be rendered as a stream, or a stream could not be assembled into a body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StreamError {
    /// The operation has no streaming form (embeddings).
    #[error("{0} responses have no streaming form")]
    NotStreamable(Operation),
    /// The response body lacks a field the stream needs, or holds one of the wrong type.
    #[error("{op}: cannot stream this response body: `{field}` {reason}")]
    BadBody {
        /// The operation.
        op: Operation,
        /// Path of the field in the body, e.g. `choices[0].message.tool_calls[1].function.arguments`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An event of the stream can't be used.
    #[error("{op}: stream event #{index} ({event}, line {line}): {reason}")]
    BadEvent {
        /// The operation.
        op: Operation,
        /// 0-based position of the event in the stream.
        index: usize,
        /// Its `event:` name, or the `type` of its data, or `message`.
        event: String,
        /// 1-based line where the event starts.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The stream ended without an event it needs.
    #[error("{op}: the stream has no `{event}` event")]
    MissingEvent {
        /// The operation.
        op: Operation,
        /// The missing event.
        event: &'static str,
    },
    /// The rendered stream would be longer than an answer may be (a third of `limits::ANSWER_BUDGET`, so that
    /// the text and the buffer it grows from fit the budget).
    #[error("{op}: the rendered stream would be longer than {limit} bytes (ANSWER_BUDGET, see docs/limits.md)")]
    TooLarge {
        /// The operation.
        op: Operation,
        /// The cap in bytes.
        limit: usize,
    },
    /// A message of a binary stream framing (AWS's event stream) can't be used.
    #[error("{op}: stream message #{index} (at byte {offset}): {reason}")]
    BadFrame {
        /// The operation.
        op: Operation,
        /// 0-based position of the message in the stream.
        index: usize,
        /// Byte offset of the message.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The recorded stream itself carries an API error.
    #[error("{op}: the recorded stream reports an error: {message}")]
    Upstream {
        /// The operation.
        op: Operation,
        /// The API's message (or the whole error object).
        message: String,
    },
}

/// Renders a plain response `body` of `route.operation` as the stream the client of `route` gets.
pub fn render_stream(route: &Route, body: &Value, opts: &StreamOptions) -> Result<Vec<u8>, StreamError> {
    route.dialect().render_stream(route, body, opts)
}

/// Assembles a recorded stream of `op` (any of its API's framings) into the plain body.
pub fn assemble_stream(op: Operation, recorded: &[u8]) -> Result<Value, StreamError> {
    op.dialect().assemble_stream(op, recorded)
}

/// A stream recorded on `route`, in the framing its operation's module reads: unwrapped from the route's
/// API's framing when that API wraps another API's events (Bedrock's `chunk` events around Anthropic's),
/// else as recorded.
pub(crate) fn readable<'a>(route: &Route, recorded: &'a [u8]) -> Result<Cow<'a, [u8]>, StreamError> {
    match route.dialect().unwrap_recorded(route, recorded) {
        Some(unwrapped) => unwrapped.map(Cow::Owned),
        None => Ok(Cow::Borrowed(recorded)),
    }
}

/// Assembles a stream recorded on `route` (in any framing the route's API sends) into the plain body.
pub fn assemble_recorded(route: &Route, recorded: &[u8]) -> Result<Value, StreamError> {
    assemble_stream(route.operation, &readable(route, recorded)?)
}

/// [`render_stream`] for an operation whose API streams Server-Sent Events, on its own API's route.
pub fn render_sse(op: Operation, body: &Value, opts: &StreamOptions) -> Result<String, StreamError> {
    let bytes = render_stream(&Route::of(op), body, opts)?;
    String::from_utf8(bytes)
        .map_err(|e| crate::dialect::sse::text(op, e.as_bytes()).err().unwrap_or(StreamError::NotStreamable(op)))
}

/// [`assemble_stream`] of SSE text. SSE streams may use `\r\n` / `\r` line ends, comments, multi-line
/// `data:` fields and omit the final blank line.
pub fn assemble_sse(op: Operation, sse: &str) -> Result<Value, StreamError> {
    assemble_stream(op, sse.as_bytes())
}

pub use crate::dialect::sse::is_sse;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::dialect::shape::pieces;
    use crate::dialect::sse::parse_sse;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn opts(include_usage: bool, chunk_chars: usize) -> StreamOptions {
        StreamOptions { include_usage, chunk_chars }
    }

    const SIZES: [usize; 5] = [0, 1, 3, DEFAULT_CHUNK_CHARS, 1000];

    /// Data payloads of a stream, in order.
    fn datas(sse: &str) -> Vec<String> {
        parse_sse(sse).into_iter().map(|e| e.data).collect()
    }

    fn chunks(sse: &str) -> Vec<Value> {
        datas(sse).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect()
    }

    fn chat_body(choices: Value) -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1764403200, "model": "gpt-4o-mini-2024-07-18",
            "choices": choices,
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            "service_tier": "default", "system_fingerprint": "fp_1"
        })
    }

    fn text_choice(index: u64, content: Value) -> Value {
        json!({"index": index, "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
               "logprobs": null, "finish_reason": "stop"})
    }

    const MULTIBYTE: &str = "Grüße aus Zürich — 東京タワー 🚀🇳🇴 naïve café, ﬁn. 👩‍👩‍👧 e\u{301}";

    fn weather_calls() -> Value {
        json!([
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"unit\":\"°C\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"Europe/Oslo\"}"}},
            {"id": "call_c", "type": "function", "function": {"name": "noop", "arguments": "{}"}}
        ])
    }

    fn assert_chat_round_trip(body: &Value) {
        for size in SIZES {
            for usage in [false, true] {
                let sse = render_sse(Operation::ChatCompletions, body, &opts(usage, size)).unwrap();
                let back = assemble_sse(Operation::ChatCompletions, &sse).unwrap();
                let want = body["choices"].as_array().unwrap();
                assert_eq!(back["choices"].as_array().unwrap().len(), want.len());
                for w in want {
                    let i = w["index"].as_u64().unwrap() as usize;
                    let got = &back["choices"][i];
                    for k in ["content", "refusal", "tool_calls", "role", "function_call"] {
                        assert_eq!(got["message"][k], w["message"][k], "{k} size {size}: {sse}");
                    }
                    assert_eq!(got["finish_reason"], w["finish_reason"]);
                    assert_eq!(got["logprobs"], w["logprobs"]);
                }
                for k in ["id", "created", "model", "service_tier", "system_fingerprint"] {
                    assert_eq!(back[k], body[k], "{k}");
                }
                assert_eq!(back["object"], "chat.completion");
                if usage {
                    assert_eq!(back["usage"], body["usage"]);
                } else {
                    assert!(back.get("usage").is_none());
                }
            }
        }
    }

    #[test]
    fn pieces_split_on_char_boundaries_and_rejoin() {
        for text in
            ["", "a", "The capital of France is Paris.", MULTIBYTE, "  lead\n\nand trail  ", "xxxxxxxxxxxxxxxxxxxxxx"]
        {
            for size in SIZES {
                let p = pieces(text, size);
                assert_eq!(p.concat(), text);
                assert!(p.iter().all(|s| !s.is_empty()));
                if size > 0 {
                    assert!(p.iter().all(|s| s.chars().count() <= size), "{p:?}");
                }
            }
        }
        assert_eq!(
            pieces("The capital of France is Paris.", 8),
            ["The", " capital", " of", " France", " is", " Paris."]
        );
        assert!(pieces(MULTIBYTE, 3).len() > 10);
    }

    #[test]
    fn chat_text_round_trips() {
        assert_chat_round_trip(&chat_body(json!([text_choice(0, json!("The capital of France is Paris."))])));
        assert_chat_round_trip(&chat_body(json!([text_choice(0, json!(MULTIBYTE))])));
        assert_chat_round_trip(&chat_body(json!([text_choice(0, json!(""))])));
    }

    #[test]
    fn chat_tool_calls_round_trip() {
        let only_calls = json!([{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": weather_calls(), "refusal": null},
                                 "logprobs": null, "finish_reason": "tool_calls"}]);
        assert_chat_round_trip(&chat_body(only_calls));
        let text_and_calls = json!([{"index": 0, "message": {"role": "assistant", "content": "Checking…", "tool_calls": weather_calls()},
                                     "logprobs": null, "finish_reason": "tool_calls"}]);
        assert_chat_round_trip(&chat_body(text_and_calls));
    }

    #[test]
    fn chat_n2_refusal_and_empty_round_trip() {
        let body = chat_body(json!([
            text_choice(0, json!(MULTIBYTE)),
            {"index": 1, "message": {"role": "assistant", "content": null, "refusal": "I can’t help with that.", "annotations": []},
             "logprobs": null, "finish_reason": "stop"},
            {"index": 2, "message": {"role": "assistant", "content": null, "tool_calls": weather_calls()}, "logprobs": null, "finish_reason": "tool_calls"},
            text_choice(3, json!("")),
        ]));
        assert_chat_round_trip(&body);
        // Choices are interleaved and each chunk carries one.
        let sse = render_sse(Operation::ChatCompletions, &body, &opts(false, 4)).unwrap();
        let order: Vec<u64> = chunks(&sse).iter().map(|c| c["choices"][0]["index"].as_u64().unwrap()).collect();
        assert_eq!(&order[..4], &[0, 1, 2, 3]);
    }

    #[test]
    fn chat_logprobs_follow_tokens() {
        let lp = |t: &str| json!({"token": t, "logprob": -0.5, "bytes": t.as_bytes(), "top_logprobs": []});
        let mut choice = text_choice(0, json!("Hi there"));
        choice["logprobs"] = json!({"content": [lp("Hi"), lp(" there")], "refusal": null});
        let body = chat_body(json!([choice]));
        assert_chat_round_trip(&body);
        let sse = render_sse(Operation::ChatCompletions, &body, &opts(false, 1)).unwrap();
        let c = chunks(&sse);
        assert_eq!(c[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(c[1]["choices"][0]["logprobs"]["content"][0]["token"], "Hi");
        // Not aligned with the text: sent whole on the first text chunk.
        let mut choice = text_choice(0, json!("Hello"));
        choice["logprobs"] = json!({"content": [lp("Bye")], "refusal": null});
        assert_chat_round_trip(&chat_body(json!([choice])));
    }

    #[test]
    fn chat_grammar() {
        let body = chat_body(
            json!([{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": weather_calls()},
                                    "logprobs": null, "finish_reason": "tool_calls"}]),
        );
        for usage in [false, true] {
            let sse = render_sse(Operation::ChatCompletions, &body, &opts(usage, 4)).unwrap();
            assert!(sse.ends_with("data: [DONE]\n\n"));
            assert!(sse.lines().all(|l| l.is_empty() || l.starts_with("data: ")));
            let c = chunks(&sse);
            for chunk in &c {
                assert_eq!(chunk["object"], "chat.completion.chunk");
                assert_eq!(chunk["id"], "chatcmpl-1");
                assert_eq!(chunk["created"], 1764403200);
                assert_eq!(chunk["system_fingerprint"], "fp_1");
                assert_eq!(chunk.get("usage").is_some(), usage);
            }
            let first = &c[0]["choices"][0]["delta"];
            assert_eq!(first["role"], "assistant");
            assert_eq!(first["content"], Value::Null);
            assert_eq!(first["tool_calls"][0]["id"], "call_a");
            assert_eq!(first["tool_calls"][0]["function"]["arguments"], "");
            // Argument pieces carry only index + function.arguments.
            let piece = &c[1]["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(piece.as_object().unwrap().keys().collect::<Vec<_>>(), ["function", "index"]);
            assert_eq!(piece["function"].as_object().unwrap().keys().collect::<Vec<_>>(), ["arguments"]);
            let last_choice = if usage {
                assert_eq!(c.last().unwrap()["choices"], json!([]));
                assert_eq!(c.last().unwrap()["usage"], body["usage"]);
                assert!(c[..c.len() - 1].iter().all(|ch| ch["usage"].is_null()));
                &c[c.len() - 2]
            } else {
                &c[c.len() - 1]
            };
            assert_eq!(last_choice["choices"][0]["delta"], json!({}));
            assert_eq!(last_choice["choices"][0]["finish_reason"], "tool_calls");
            let finishes = c.iter().filter(|ch| !ch["choices"][0]["finish_reason"].is_null()).count();
            assert_eq!(finishes, 1);
        }
        // Text: the opening delta has role, empty content and refusal null, and the live key order.
        let sse = render_sse(
            Operation::ChatCompletions,
            &chat_body(json!([text_choice(0, json!("Paris."))])),
            &opts(true, 8),
        )
        .unwrap();
        let first = sse.lines().next().unwrap();
        assert!(first
            .starts_with(r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764403200,"model":"#));
        assert!(first.contains(r#""delta":{"role":"assistant","content":"","refusal":null}"#), "{first}");
    }

    #[test]
    fn completions_round_trip_and_grammar() {
        let body = json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
            "choices": [{"text": MULTIBYTE, "index": 0, "logprobs": null, "finish_reason": "length"},
                        {"text": "", "index": 1, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}});
        for size in SIZES {
            for usage in [false, true] {
                let sse = render_sse(Operation::Completions, &body, &opts(usage, size)).unwrap();
                assert!(sse.ends_with("data: [DONE]\n\n"));
                let c = chunks(&sse);
                assert!(c.iter().all(|ch| ch["object"] == "text_completion"));
                assert_eq!(c.iter().any(|ch| ch["choices"] == json!([])), usage);
                let back = assemble_sse(Operation::Completions, &sse).unwrap();
                assert_eq!(back["choices"], body["choices"]);
                assert_eq!(back.get("usage").is_some(), usage);
            }
        }
    }

    fn responses_body() -> Value {
        json!({
            "id": "resp_1", "object": "response", "created_at": 1764403200, "status": "completed", "error": null,
            "incomplete_details": null, "model": "gpt-4.1-2025-04-14", "parallel_tool_calls": true, "tools": [],
            "output": [
                {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Thinking about Oslo…"}]},
                {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant", "content": [
                    {"type": "output_text", "text": MULTIBYTE, "annotations": [], "logprobs": []},
                    {"type": "refusal", "refusal": "No."}
                ]},
                {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"id": "fc_2", "type": "function_call", "status": "completed", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
                {"id": "ws_1", "type": "web_search_call", "status": "completed"}
            ],
            "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}
        })
    }

    /// Reassembles text and arguments from the delta events alone (not from response.completed).
    fn response_deltas(sse: &str) -> BTreeMap<(u64, u64), String> {
        let mut out: BTreeMap<(u64, u64), String> = BTreeMap::new();
        for e in chunks(sse) {
            let key = (e["output_index"].as_u64().unwrap_or(0), e["content_index"].as_u64().unwrap_or(99));
            match e["type"].as_str().unwrap() {
                "response.output_text.delta" | "response.refusal.delta" | "response.function_call_arguments.delta" => {
                    out.entry(key).or_default().push_str(e["delta"].as_str().unwrap())
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn responses_round_trip_and_grammar() {
        let body = responses_body();
        for size in SIZES {
            let sse = render_sse(Operation::Responses, &body, &opts(false, size)).unwrap();
            assert_eq!(assemble_sse(Operation::Responses, &sse).unwrap(), body);
            let d = response_deltas(&sse);
            assert_eq!(d.get(&(1, 0)).map(String::as_str).unwrap_or(""), MULTIBYTE);
            assert_eq!(d.get(&(1, 1)).map(String::as_str).unwrap_or(""), "No.");
            assert_eq!(d.get(&(2, 99)).map(String::as_str).unwrap_or(""), "{\"city\":\"Oslo\"}");
            assert_eq!(d.get(&(3, 99)).map(String::as_str).unwrap_or(""), "{}");

            let events = parse_sse(&sse);
            assert!(!sse.contains("[DONE]"));
            let c = chunks(&sse);
            for (i, (ev, data)) in events.iter().zip(&c).enumerate() {
                assert_eq!(ev.name.as_deref(), data["type"].as_str());
                assert_eq!(data["sequence_number"], i as u64);
            }
            let types: Vec<&str> = c.iter().map(|e| e["type"].as_str().unwrap()).collect();
            assert_eq!(&types[..3], &["response.created", "response.in_progress", "response.output_item.added"]);
            assert_eq!(*types.last().unwrap(), "response.completed");
            assert_eq!(c[0]["response"]["status"], "in_progress");
            assert_eq!(c[0]["response"]["output"], json!([]));
            assert_eq!(c[0]["response"]["usage"], Value::Null);
            for e in &c {
                if e["type"] == "response.output_text.delta" {
                    assert_eq!(e["item_id"], "msg_1");
                    assert_eq!(e["logprobs"], json!([]));
                }
            }
            let added = c.iter().filter(|e| e["type"] == "response.output_item.added").count();
            let done = c.iter().filter(|e| e["type"] == "response.output_item.done").count();
            assert_eq!((added, done), (5, 5));
        }
        let mut incomplete = body.clone();
        incomplete["status"] = "incomplete".into();
        let sse = render_sse(Operation::Responses, &incomplete, &opts(false, 8)).unwrap();
        assert!(sse.contains("event: response.incomplete\n"));
        assert_eq!(assemble_sse(Operation::Responses, &sse).unwrap(), incomplete);
    }

    fn anthropic_body() -> Value {
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "The user wants Oslo’s weather.", "signature": "EqQBCgIYAhIM"},
                {"type": "text", "text": MULTIBYTE},
                {"type": "text", "text": ""},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "days": [1, 2.50, 1e3], "opts": {"unit": "°C", "x": null}}},
                {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}},
                {"type": "redacted_thinking", "data": "abc"}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 384, "output_tokens": 62, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "service_tier": "standard"}
        })
    }

    #[test]
    fn anthropic_round_trip_is_exact() {
        let body = anthropic_body();
        for size in SIZES {
            let sse = render_sse(Operation::Messages, &body, &opts(false, size)).unwrap();
            assert_eq!(assemble_sse(Operation::Messages, &sse).unwrap(), body, "{sse}");
        }
    }

    #[test]
    fn anthropic_grammar() {
        let sse = render_sse(Operation::Messages, &anthropic_body(), &opts(false, 8)).unwrap();
        let events = parse_sse(&sse);
        let c = chunks(&sse);
        for (ev, data) in events.iter().zip(&c) {
            assert_eq!(ev.name.as_deref(), data["type"].as_str());
        }
        let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
        assert_eq!(&names[..3], &["message_start", "ping", "content_block_start"]);
        assert_eq!(&names[names.len() - 2..], &["message_delta", "message_stop"]);
        // Per block: start, deltas, stop, with the block's index, in order.
        let mut open: Option<u64> = None;
        let mut next = 0u64;
        for d in &c[2..c.len() - 2] {
            let i = d["index"].as_u64().unwrap();
            match d["type"].as_str().unwrap() {
                "content_block_start" => {
                    assert_eq!((open, i), (None, next));
                    open = Some(i);
                }
                "content_block_delta" => assert_eq!(open, Some(i)),
                "content_block_stop" => {
                    assert_eq!(open, Some(i));
                    open = None;
                    next += 1;
                }
                t => panic!("unexpected {t}"),
            }
        }
        assert_eq!(next, 6);
        let start = &c[0]["message"];
        assert_eq!(start["content"], json!([]));
        assert_eq!(start["stop_reason"], Value::Null);
        assert_eq!(start["usage"]["input_tokens"], 384);
        assert_eq!(start["usage"]["output_tokens"], 1);
        assert_eq!(c[2]["content_block"], json!({"type": "thinking", "thinking": "", "signature": ""}));
        let tool_start = c.iter().find(|d| d["content_block"]["type"] == "tool_use").unwrap();
        assert_eq!(tool_start["content_block"]["input"], json!({}));
        let md = &c[c.len() - 2];
        assert_eq!(md["delta"], json!({"stop_reason": "tool_use", "stop_sequence": null}));
        assert_eq!(md["usage"]["output_tokens"], 62);
        assert!(c.iter().any(|d| d["delta"]["type"] == "signature_delta"));
        assert!(c.iter().any(|d| d["delta"]["type"] == "input_json_delta" && d["delta"]["partial_json"] != ""));
    }

    #[test]
    fn embeddings_do_not_stream() {
        let body = json!({"object": "list", "data": []});
        assert_eq!(
            render_sse(Operation::Embeddings, &body, &StreamOptions::default()),
            Err(StreamError::NotStreamable(Operation::Embeddings))
        );
        assert!(assemble_sse(Operation::Embeddings, "data: {}\n\n").is_err());
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let field_of = |op, body: Value| match render_sse(op, &body, &StreamOptions::default()) {
            Err(StreamError::BadBody { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(Operation::ChatCompletions, json!([])), "(body)");
        assert_eq!(field_of(Operation::ChatCompletions, json!({})), "choices");
        assert_eq!(field_of(Operation::ChatCompletions, json!({"choices": [{}]})), "choices[0].message");
        assert_eq!(
            field_of(Operation::ChatCompletions, json!({"choices": [{"message": {"content": 3}}]})),
            "choices[0].message.content"
        );
        assert_eq!(
            field_of(
                Operation::ChatCompletions,
                json!({"choices": [{"message": {"content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]}}]})
            ),
            "choices[0].message.tool_calls[0].function.arguments"
        );
        assert_eq!(field_of(Operation::Completions, json!({"choices": [{"index": 0}]})), "choices[0].text");
        assert_eq!(
            field_of(Operation::Responses, json!({"output": [{"type": "message", "content": []}]})),
            "output[0].id"
        );
        assert_eq!(
            field_of(Operation::Responses, json!({"output": [{"type": "function_call", "id": "fc"}]})),
            "output[0].arguments"
        );
        assert_eq!(field_of(Operation::Messages, json!({"content": [{"type": "text"}]})), "content[0].text");
        assert_eq!(field_of(Operation::Messages, json!({"content": [{"type": "tool_use"}]})), "content[0].input");
        let e = render_sse(Operation::Messages, &json!({"content": "x"}), &StreamOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "anthropic.messages: cannot stream this response body: `content` must be an array");
    }

    #[test]
    fn parser_tolerates_crlf_comments_and_multiline_data() {
        let sse = ": keep-alive\r\nevent: message_start\r\ndata: {\"type\":\"message_start\",\r\ndata: \"message\":{\"id\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\r\n\r\n\
                   :comment\rdata:{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\r\
                   data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hé\"}}\n\n\
                   event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n\
                   event: message_stop\ndata: {\"type\":\"message_stop\"}";
        let m = assemble_sse(Operation::Messages, sse).unwrap();
        assert_eq!(m["content"], json!([{"type": "text", "text": "Hé"}]));
        assert_eq!(m["stop_reason"], "end_turn");
        assert_eq!(m["usage"], json!({"input_tokens": 1, "output_tokens": 5}));
        let ev = parse_sse("data: a\ndata:b\ndata\n\nid: 1\nretry: 5\n\n");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "a\nb\n");
    }

    #[test]
    fn assembles_live_like_openai_stream() {
        // Azure filter chunk first, obfuscation padding, usage chunk, keep-alive comment.
        let sse = concat!(
            "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[]}\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"system_fingerprint\":\"fp\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}],\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"ab\"}\n\n",
            ": ping\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
            "data: garbage after done is ignored\n\n"
        );
        let b = assemble_sse(Operation::ChatCompletions, sse).unwrap();
        assert_eq!(
            b,
            json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 7, "model": "gpt-4o", "system_fingerprint": "fp",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null, "annotations": [],
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                    "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
        );
    }

    #[test]
    fn malformed_streams_are_typed_errors() {
        let op = Operation::ChatCompletions;
        assert!(matches!(assemble_sse(op, ""), Err(StreamError::MissingEvent { .. })));
        assert!(matches!(assemble_sse(op, "data: [DONE]\n\n"), Err(StreamError::MissingEvent { .. })));
        match assemble_sse(op, "data: {\"choices\":[]}\n\ndata: {nope\n\n") {
            Err(StreamError::BadEvent { index, line, .. }) => assert_eq!((index, line), (1, 3)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(assemble_sse(op, "data: [1]\n\n"), Err(StreamError::BadEvent { .. })));
        assert!(matches!(
            assemble_sse(op, "data: {\"choices\":[{\"delta\":{}}]}\n\n"),
            Err(StreamError::BadEvent { .. })
        ));
        assert!(matches!(
            assemble_sse(op, "data: {\"error\":{\"message\":\"boom\"}}\n\n"),
            Err(StreamError::Upstream { message, .. }) if message == "boom"
        ));
        let m = Operation::Messages;
        assert!(matches!(
            assemble_sse(m, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"),
            Err(StreamError::BadEvent { .. })
        ));
        assert!(matches!(
            assemble_sse(m, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"),
            Err(StreamError::Upstream { message, .. }) if message == "Overloaded"
        ));
        let bad_input = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"content\":[]}}\n\n\
                         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"input\":{}}}\n\n\
                         event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\n\
                         event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
        match assemble_sse(m, bad_input) {
            Err(e @ StreamError::BadEvent { .. }) => assert!(e.to_string().contains("partial_json"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            assemble_sse(
                Operation::Responses,
                "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{}}\n\n"
            ),
            Err(StreamError::MissingEvent { event: "response.completed", .. })
        ));
        assert!(matches!(assemble_sse(m, "data: {}"), Err(StreamError::MissingEvent { .. })));
    }

    /// Tiny deterministic PRNG (no extra test dependencies).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> usize {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) as usize
        }
    }

    #[test]
    fn truncated_and_mutated_streams_never_panic() {
        let cases = [
            (Operation::ChatCompletions, chat_body(json!([text_choice(0, json!(MULTIBYTE))]))),
            (
                Operation::ChatCompletions,
                chat_body(
                    json!([{"index": 0, "message": {"content": null, "tool_calls": weather_calls()}, "finish_reason": "tool_calls"}]),
                ),
            ),
            (Operation::Responses, responses_body()),
            (Operation::Messages, anthropic_body()),
        ];
        let junk =
            ["\n", "\r", ":", "data: ", "{", "}", "\"", "[DONE]", "event: error\n", "é", "\u{feff}", "0", "null"];
        let mut rng = Lcg(7);
        for (op, body) in cases {
            let sse = render_sse(op, &body, &opts(true, 5)).unwrap();
            let bounds: Vec<usize> = sse.char_indices().map(|(i, _)| i).collect();
            for &cut in bounds.iter().step_by(7) {
                let _ = assemble_sse(op, &sse[..cut]);
                let _ = is_sse(&sse[..cut]);
            }
            for _ in 0..300 {
                let mut s = sse.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let here: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
                    let at = here[rng.next() % here.len()];
                    if rng.next() % 2 == 0 {
                        s.insert_str(at, junk[rng.next() % junk.len()]);
                    } else if let Some((i, c)) = s.char_indices().nth(rng.next() % s.chars().count().max(1)) {
                        s.replace_range(i..i + c.len_utf8(), "");
                    }
                }
                for o in Operation::ALL {
                    let _ = assemble_sse(o, &s);
                }
            }
        }
    }

    #[test]
    fn odd_bodies_never_panic() {
        let values = [
            json!(null),
            json!(1),
            json!("x"),
            json!({"choices": null}),
            json!({"choices": [null, 1, "x", {"message": null}, {"index": -1, "message": {}}]}),
            json!({"choices": [{"index": 18446744073709551615u64, "message": {"content": "a", "tool_calls": [null, {"type": 1}, {"type": "x"}]}}]}),
            json!({"output": [null, {"type": 1}, {"type": "message", "id": "m", "content": [null, {"type": "output_text"}]}]}),
            json!({"output": [{"type": "reasoning", "id": "r", "summary": [1]}]}),
            json!({"content": [null, {"type": "thinking"}, {"type": "text", "text": "a", "citations": null}], "usage": 3}),
        ];
        for v in values {
            for op in Operation::ALL {
                for size in SIZES {
                    let _ = render_sse(op, &v, &opts(true, size));
                }
            }
        }
        // Minimal bodies render and round-trip.
        let m = json!({"choices": [{"message": {"content": "hi"}}]});
        let sse = render_sse(Operation::ChatCompletions, &m, &StreamOptions::default()).unwrap();
        assert_eq!(assemble_sse(Operation::ChatCompletions, &sse).unwrap()["choices"][0]["message"]["content"], "hi");
    }

    #[test]
    fn sse_is_recognized() {
        assert!(is_sse("data: {}\n\n"));
        assert!(is_sse("\u{feff}\r\n: hi\r\nevent: message_start\r\ndata: {}\r\n\r\n"));
        assert!(is_sse("data:[DONE]"));
        assert!(!is_sse("{\"data\": 1}"));
        assert!(!is_sse(""));
        assert!(!is_sse("  \n\n"));
        assert!(!is_sse("hello\ndata: x"));
        assert!(!is_sse("database: x"));
        for op in [Operation::ChatCompletions, Operation::Completions, Operation::Responses, Operation::Messages] {
            let body = match op {
                Operation::Responses => responses_body(),
                Operation::Messages => anthropic_body(),
                Operation::Completions => json!({"choices": [{"text": "x", "index": 0}]}),
                _ => chat_body(json!([text_choice(0, json!("x"))])),
            };
            assert!(is_sse(&render_sse(op, &body, &StreamOptions::default()).unwrap()));
        }
    }

    #[test]
    fn options_from_request() {
        let r = json!({"stream": true, "stream_options": {"include_usage": true}});
        assert!(wants_stream(&r));
        assert!(StreamOptions::from_request(&r).include_usage);
        assert!(!wants_stream(&json!({"stream": "yes"})));
        assert_eq!(StreamOptions::from_request(&json!({})), StreamOptions::default());
    }

    /// Writes rendered streams of every example asset and `tests/stream_sdk/fixtures` asset to the
    /// directory in `UNDERSTUDY_SSE_OUT`, for `tests/stream_sdk/check.py` to feed to the official SDKs (SSE,
    /// and Ollama's NDJSON with its `content_type`).
    /// A no-op without the variable.
    #[test]
    fn stream_fixtures_for_sdk_check() {
        let Ok(out) = std::env::var("UNDERSTUDY_SSE_OUT") else {
            return;
        };
        let out = std::path::PathBuf::from(out);
        std::fs::create_dir_all(&out).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in [root.join("../examples/assets"), root.join("tests/stream_sdk/fixtures")] {
            collect_json(&dir, &mut files);
        }
        files.sort();
        assert!(!files.is_empty());
        let mut manifest = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let doc: Value = serde_json::from_str(&text).unwrap();
            let assets = match doc {
                Value::Array(a) => a,
                v => vec![v],
            };
            let stem = file.file_stem().unwrap().to_string_lossy().to_string();
            for (i, asset) in assets.iter().enumerate() {
                let method = asset["request"]["method"].as_str().unwrap_or("POST");
                let route = crate::classify(method, asset["request"]["path"].as_str().unwrap()).unwrap();
                let Some(body) = asset["response"].get("body") else {
                    continue;
                };
                if !route.operation.streams() {
                    assert!(render_sse(route.operation, body, &StreamOptions::default()).is_err());
                    continue;
                }
                // The path's model (Vertex AI, Gemini) as the body's, so the SDK check can name it.
                let mut request = asset["request"]["body"].clone();
                if let (Some(m), Some(o)) = (&route.model, request.as_object_mut()) {
                    o.entry("model").or_insert_with(|| Value::String(m.clone()));
                }
                let content_type = route.dialect().stream_content_type(&route);
                // Binary framings (AWS's event stream) are checked with their SDK end to end (e2e), not here.
                if content_type == "application/vnd.amazon.eventstream" {
                    continue;
                }
                let ext = if content_type.starts_with("text/event-stream") { "sse" } else { "stream" };
                for (variant, o) in
                    [("plain", opts(false, DEFAULT_CHUNK_CHARS)), ("usage-1", opts(true, 1)), ("whole", opts(true, 0))]
                {
                    let sse = render_stream(&route, body, &o).unwrap();
                    let back = assemble_stream(route.operation, &sse).unwrap();
                    let name = format!("{stem}-{i}-{variant}");
                    std::fs::write(out.join(format!("{name}.{ext}")), &sse).unwrap();
                    manifest.push(json!({
                        "name": name,
                        "label": asset.get("name").cloned().unwrap_or(Value::Null),
                        "source": file.strip_prefix(root).unwrap_or(&file).to_string_lossy(),
                        "operation": route.operation.name(),
                        "include_usage": o.include_usage,
                        "chunk_chars": o.chunk_chars,
                        "sse": format!("{name}.{ext}"),
                        "content_type": content_type,
                        "path": asset["request"]["path"],
                        "request": request,
                        "expected": body,
                        "assembled": back,
                    }));
                }
            }
        }
        let text = serde_json::to_string_pretty(&manifest).unwrap();
        std::fs::write(out.join("manifest.json"), text).unwrap();
        eprintln!("wrote {} streams to {}", manifest.len(), out.display());
    }

    fn collect_json(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for entry in rd {
            let p = entry.unwrap().path();
            if p.is_dir() {
                collect_json(&p, out);
            } else if p.extension().is_some_and(|e| e == "json") {
                out.push(p);
            }
        }
    }
}
