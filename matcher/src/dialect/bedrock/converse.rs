//! Converse (`/model/{id}/converse`) and ConverseStream (`/converse-stream`): one operation, one key.
//!
//! The answer is `{"output": {"message": {"role", "content": [blocks]}}, "stopReason", "usage", "metrics"}`
//! with `text`, `toolUse` (`toolUseId`, `name`, `input`) and `reasoningContent` blocks. The stream is
//! `messageStart`, then per block an optional `contentBlockStart` (tool use only), `contentBlockDelta`s
//! (`text`, `toolUse.input` JSON pieces, `reasoningContent` text then signature) and `contentBlockStop`,
//! then `messageStop` (`stopReason`) and `metadata` (`usage`, `metrics`). Usage: `inputTokens` excludes
//! prompt-cache reads and writes (`cacheReadInputTokens`, `cacheWriteInputTokens`); the input Understudy
//! accounts is their sum, the cached part the reads.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::super::eventstream::write_event;
use super::super::shape::{accumulate, as_object, bad, copy_keys, last_user_text, map, pieces, req_array, req_str};
use super::super::sse::write_json;
use super::{json_messages, Operation, SynthInput, Usage};
use crate::stream::{StreamError, StreamOptions};
use crate::tokens::{estimate_tokens, value_tokens};

const OP: Operation = Operation::BedrockConverse;

/// Answer fields the `metadata` event carries.
const METADATA_KEYS: &[&str] = &["usage", "metrics", "trace", "performanceConfig", "serviceTier"];

/// An event stream being written.
struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn event(&mut self, name: &str, payload: &Value) -> Result<(), StreamError> {
        let mut text = String::new();
        write_json(&mut text, payload);
        if write_event(&mut self.out, name, text.as_bytes()) {
            Ok(())
        } else {
            Err(bad(OP, "(body)", format!("holds a {name} event too large for one event stream message")))
        }
    }

    fn delta(&mut self, index: usize, delta: Value) -> Result<(), StreamError> {
        self.event("contentBlockDelta", &json!({"contentBlockIndex": index, "delta": delta}))
    }
}

/// The ConverseStream events of a Converse answer.
pub(super) fn render(body: &Value, opts: &StreamOptions) -> Result<Vec<u8>, StreamError> {
    let b = as_object(OP, body, "")?;
    let output = as_object(OP, b.get("output").unwrap_or(&Value::Null), "output")?;
    let message = as_object(OP, output.get("message").unwrap_or(&Value::Null), "output.message")?;
    let content = req_array(OP, message, "content", "output.message")?;
    let role = message.get("role").and_then(Value::as_str).unwrap_or("assistant");
    let mut w = Writer { out: Vec::new() };
    w.event("messageStart", &json!({ "role": role }))?;
    for (i, block) in content.iter().enumerate() {
        let at = format!("output.message.content[{i}]");
        let bl = as_object(OP, block, &at)?;
        if bl.contains_key("text") {
            let text = req_str(OP, bl, "text", &at)?;
            let parts = pieces(text, opts.chunk_chars);
            // An empty text block still gets one delta, so the block keeps its place.
            for p in if parts.is_empty() { vec![""] } else { parts } {
                w.delta(i, json!({ "text": p }))?;
            }
        } else if let Some(tool) = bl.get("toolUse") {
            let at = format!("{at}.toolUse");
            let tool = as_object(OP, tool, &at)?;
            let mut start = map([
                ("toolUseId", req_str(OP, tool, "toolUseId", &at)?.into()),
                ("name", req_str(OP, tool, "name", &at)?.into()),
            ]);
            copy_keys(tool, &mut start, &["type"]);
            w.event("contentBlockStart", &json!({"contentBlockIndex": i, "start": {"toolUse": start}}))?;
            let input = tool.get("input").map_or_else(|| "{}".to_string(), Value::to_string);
            for p in pieces(&input, opts.chunk_chars) {
                w.delta(i, json!({"toolUse": {"input": p}}))?;
            }
        } else if let Some(reasoning) = bl.get("reasoningContent") {
            let at = format!("{at}.reasoningContent");
            let reasoning = as_object(OP, reasoning, &at)?;
            if let Some(rt) = reasoning.get("reasoningText") {
                let at = format!("{at}.reasoningText");
                let rt = as_object(OP, rt, &at)?;
                for p in pieces(req_str(OP, rt, "text", &at)?, opts.chunk_chars) {
                    w.delta(i, json!({"reasoningContent": {"text": p}}))?;
                }
                if let Some(sig) = rt.get("signature").filter(|s| !s.is_null()) {
                    w.delta(i, json!({"reasoningContent": {"signature": sig}}))?;
                }
            }
            if let Some(redacted) = reasoning.get("redactedContent") {
                w.delta(i, json!({"reasoningContent": {"redactedContent": redacted}}))?;
            }
        } else {
            // Another kind of block (citations, images): sent whole in one delta, so the stream still
            // assembles into the same answer.
            w.delta(i, block.clone())?;
        }
        w.event("contentBlockStop", &json!({ "contentBlockIndex": i }))?;
    }
    let mut stop = map([("stopReason", b.get("stopReason").cloned().unwrap_or_else(|| "end_turn".into()))]);
    copy_keys(b, &mut stop, &["additionalModelResponseFields"]);
    w.event("messageStop", &Value::Object(stop))?;
    let mut metadata = Map::new();
    copy_keys(b, &mut metadata, METADATA_KEYS);
    w.event("metadata", &Value::Object(metadata))?;
    Ok(w.out)
}

/// A block being assembled from its start and deltas.
#[derive(Default)]
struct Block {
    fields: Map<String, Value>,
    finished: bool,
}

impl Block {
    /// The block as a Converse answer holds it: the tool input parsed, reasoning under `reasoningText`.
    fn finish(&mut self) -> Result<(), String> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        if let Some(Value::Object(tool)) = self.fields.get_mut("toolUse") {
            let text = match tool.get("input") {
                Some(Value::String(s)) => s.clone(),
                _ => String::new(),
            };
            let input = if text.trim().is_empty() {
                Value::Object(Map::new())
            } else {
                serde_json::from_str(&text)
                    .map_err(|e| format!("the tool input (concatenated toolUse.input) is not valid JSON: {e}"))?
            };
            tool.insert("input".into(), input);
        }
        if let Some(Value::Object(r)) = self.fields.get_mut("reasoningContent") {
            let mut text = Map::new();
            for k in ["text", "signature"] {
                if let Some(v) = r.remove(k) {
                    text.insert(k.into(), v);
                }
            }
            if !text.is_empty() {
                r.insert("reasoningText".into(), Value::Object(text));
            }
        }
        Ok(())
    }
}

/// Assembles a recorded ConverseStream into the Converse answer.
pub(super) fn assemble(recorded: &[u8]) -> Result<Value, StreamError> {
    let mut role: Option<Value> = None;
    let mut blocks: BTreeMap<u64, Block> = BTreeMap::new();
    let mut out = Map::new();
    let messages = json_messages(OP, recorded)?;
    let count = messages.len();
    for (index, (m, data)) in messages.into_iter().enumerate() {
        let name = m.name();
        let fail = |reason: &str| StreamError::BadFrame {
            op: OP,
            index,
            offset: m.offset,
            reason: format!("{name}: {reason}"),
        };
        if role.is_none() && matches!(name, "contentBlockStart" | "contentBlockDelta") {
            return Err(fail("comes before messageStart"));
        }
        let block_index = || {
            data.get("contentBlockIndex")
                .and_then(Value::as_u64)
                .ok_or_else(|| fail("has no integer contentBlockIndex"))
        };
        match name {
            "messageStart" => role = Some(data.get("role").cloned().unwrap_or_else(|| "assistant".into())),
            "contentBlockStart" => {
                let Some(Value::Object(start)) = data.get("start") else {
                    return Err(fail("`start` is not an object"));
                };
                blocks.insert(block_index()?, Block { fields: start.clone(), finished: false });
            }
            "contentBlockDelta" => {
                let Some(Value::Object(delta)) = data.get("delta") else {
                    return Err(fail("`delta` is not an object"));
                };
                accumulate(&mut blocks.entry(block_index()?).or_default().fields, delta);
            }
            "contentBlockStop" => {
                if let Some(b) = blocks.get_mut(&block_index()?) {
                    b.finish().map_err(|e| fail(&e))?;
                }
            }
            // `p` is AWS's padding against length side channels, not part of the answer.
            "messageStop" | "metadata" => out.extend(data.into_iter().filter(|(k, _)| k != "p")),
            _ => {}
        }
    }
    let Some(role) = role else {
        return Err(StreamError::MissingEvent { op: OP, event: "messageStart" });
    };
    let mut content = Vec::with_capacity(blocks.len());
    for (i, mut b) in blocks {
        // A block the stream never stopped: reported against the end of the stream.
        b.finish().map_err(|reason| StreamError::BadFrame {
            op: OP,
            index: count,
            offset: recorded.len(),
            reason: format!("content block {i} never stopped and {reason}"),
        })?;
        content.push(Value::Object(b.fields));
    }
    out.insert("output".into(), json!({"message": {"role": role, "content": content}}));
    Ok(Value::Object(out))
}

fn n(u: &Value, key: &str) -> u64 {
    u.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Input (cache reads and writes included), output and cache-read tokens of an answer.
pub(super) fn usage(body: &Value) -> Option<Usage> {
    let u = body.get("usage")?;
    if u.get("inputTokens").is_none() && u.get("outputTokens").is_none() {
        return None;
    }
    let cached = n(u, "cacheReadInputTokens");
    Some(Usage {
        input: n(u, "inputTokens").saturating_add(cached).saturating_add(n(u, "cacheWriteInputTokens")),
        output: n(u, "outputTokens"),
        cached_input: cached,
    })
}

/// Flat token price of an image, document, video or audio block (as [`value_tokens`] prices media).
const MEDIA_TOKENS: u64 = 85;

/// Estimated tokens of Converse content blocks: text as text, media at a flat price (their bytes are not
/// read), everything else (tool use and results) by its strings.
fn blocks_tokens(content: Option<&Value>) -> u64 {
    let Some(Value::Array(blocks)) = content else {
        return content.map_or(0, value_tokens);
    };
    blocks
        .iter()
        .map(|b| match b {
            Value::Object(m) if ["image", "document", "video", "audio"].iter().any(|k| m.contains_key(*k)) => {
                MEDIA_TOKENS
            }
            other => value_tokens(other),
        })
        .fold(0, u64::saturating_add)
}

/// Estimated input tokens: system blocks, tool specs and messages (3 a message, 3 priming the reply).
fn prompt_tokens(request: &Value) -> u64 {
    let messages = request.get("messages").and_then(Value::as_array).map_or(0, |ms| {
        ms.iter().map(|m| blocks_tokens(m.get("content")).saturating_add(4)).fold(0, u64::saturating_add)
    });
    let system = blocks_tokens(request.get("system"));
    let tools = request.get("toolConfig").map_or(0, value_tokens);
    messages.saturating_add(system).saturating_add(tools).saturating_add(3)
}

/// A Converse answer with the rule's text (or the last user text, echoed) and estimated usage.
pub(super) fn synthesize(input: &SynthInput<'_>) -> Option<Value> {
    let request = input.request;
    let text = input.answer.text(|| last_user_text(request.get("messages")));
    if text.len() > input.text_cap {
        return None;
    }
    let (tokens_in, tokens_out) = (prompt_tokens(request), estimate_tokens(&text));
    Some(json!({
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": tokens_in, "outputTokens": tokens_out, "totalTokens": tokens_in.saturating_add(tokens_out)},
        "metrics": {"latencyMs": 0},
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::dialect::eventstream::{decode, summary, write_message};
    use crate::synth::Answer;

    fn answer() -> Value {
        json!({
            "output": {"message": {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "The user wants Oslo's weather; call the tool.", "signature": "EqoBCkgIARABGAIiQL"}}},
                {"text": "Let me check the weather in Oslo — ☀️ or 🌧? 東京 too."},
                {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather", "input": {"city": "Oslo", "days": [1, 2.5], "deep": {"x": null}}}},
                {"toolUse": {"toolUseId": "tooluse_2", "name": "noop", "input": {}}},
                {"text": ""},
                {"reasoningContent": {"redactedContent": "c2VjcmV0"}},
                {"citationsContent": {"content": [{"text": "cited"}], "citations": [{"title": "t"}]}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 412, "outputTokens": 57, "totalTokens": 519, "cacheReadInputTokens": 50, "cacheWriteInputTokens": 0},
            "metrics": {"latencyMs": 1204},
            "additionalModelResponseFields": {"stop_sequence": null}
        })
    }

    #[test]
    fn streams_round_trip_with_tool_use_and_reasoning() {
        for chunk_chars in [0, 1, 3, 8, 1000] {
            let framed = render(&answer(), &StreamOptions { chunk_chars, ..StreamOptions::default() }).unwrap();
            assert_eq!(assemble(&framed).unwrap(), answer(), "chunk_chars {chunk_chars}");
        }
    }

    #[test]
    fn the_stream_has_awss_event_grammar() {
        let framed = render(&answer(), &StreamOptions::default()).unwrap();
        let msgs = decode(&framed).unwrap();
        let names: Vec<&str> = msgs.iter().map(|m| m.name()).collect();
        assert_eq!(names.first(), Some(&"messageStart"));
        assert_eq!(&names[names.len() - 2..], ["messageStop", "metadata"], "{}", summary(&msgs));
        // Tool use blocks (only) start with contentBlockStart naming the tool.
        let starts: Vec<Value> = msgs
            .iter()
            .filter(|m| m.name() == "contentBlockStart")
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect();
        assert_eq!(starts.len(), 2);
        assert_eq!(
            starts[0],
            json!({"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather"}}})
        );
        for m in &msgs {
            assert_eq!(m.header(":message-type"), Some("event"));
            assert_eq!(m.header(":content-type"), Some("application/json"));
        }
        let stop: Value = serde_json::from_slice(&msgs[msgs.len() - 2].payload).unwrap();
        assert_eq!(stop["stopReason"], "tool_use");
        let meta: Value = serde_json::from_slice(&msgs[msgs.len() - 1].payload).unwrap();
        assert_eq!(meta["usage"]["inputTokens"], 412);
        assert_eq!(meta["metrics"]["latencyMs"], 1204);
        let text: String = msgs
            .iter()
            .filter(|m| m.name() == "contentBlockDelta")
            .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
            .filter(|d| d["contentBlockIndex"] == 1)
            .map(|d| d["delta"]["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(text, answer()["output"]["message"]["content"][1]["text"]);
    }

    #[test]
    fn bad_bodies_and_streams_are_named() {
        let e = render(&json!({"output": {}}), &StreamOptions::default()).unwrap_err().to_string();
        assert!(e.contains("output.message"), "{e}");
        let e = render(
            &json!({"output": {"message": {"content": [{"toolUse": {"name": "x"}}]}}}),
            &StreamOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("content[0].toolUse.toolUseId"), "{e}");
        let mut bad_json = Vec::new();
        write_event(&mut bad_json, "messageStart", br#"{"role":"assistant"}"#);
        write_event(
            &mut bad_json,
            "contentBlockStart",
            br#"{"contentBlockIndex":0,"start":{"toolUse":{"toolUseId":"t","name":"n"}}}"#,
        );
        write_event(
            &mut bad_json,
            "contentBlockDelta",
            br#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"{\"a\":"}}}"#,
        );
        write_event(&mut bad_json, "contentBlockStop", br#"{"contentBlockIndex":0}"#);
        let e = assemble(&bad_json).unwrap_err().to_string();
        assert!(e.contains("not valid JSON") && e.contains("#3"), "{e}");
        let unstopped = &bad_json[..decode(&bad_json).unwrap()[3].offset];
        let e = assemble(unstopped).unwrap_err().to_string();
        assert!(e.contains("content block 0 never stopped") && e.contains("#3"), "{e}");
        let mut early = Vec::new();
        write_event(&mut early, "contentBlockDelta", br#"{"contentBlockIndex":0,"delta":{"text":"x"}}"#);
        assert!(assemble(&early).unwrap_err().to_string().contains("before messageStart"));
        assert!(matches!(assemble(&[]).unwrap_err(), StreamError::MissingEvent { .. }));
        let mut exc = Vec::new();
        write_message(
            &mut exc,
            &[(":message-type", "exception"), (":exception-type", "throttlingException")],
            br#"{"message":"slow"}"#,
        );
        assert!(matches!(assemble(&exc).unwrap_err(), StreamError::Upstream { .. }));
    }

    #[test]
    fn usage_counts_cache_reads_and_writes_as_input() {
        assert_eq!(usage(&answer()), Some(Usage { input: 462, output: 57, cached_input: 50 }));
        assert_eq!(usage(&json!({"output": {}})), None);
    }

    #[test]
    fn synthesized_answers_echo_or_say_the_rules_text() {
        let request = json!({
            "system": [{"text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"text": "Say hi"}, {"image": {"format": "png", "source": {"bytes": "A".repeat(100_000)}}}]}],
        });
        let answer = Answer::Echo;
        let input = SynthInput {
            request: &request,
            model: "m",
            answer: &answer,
            dimensions: None,
            now_secs: 0,
            text_cap: crate::limits::MAX_TEXT_BYTES,
            answer_budget: crate::limits::ANSWER_BUDGET,
        };
        let v = synthesize(&input).unwrap();
        assert_eq!(v["output"]["message"]["content"][0]["text"], "Say hi");
        assert_eq!(v["stopReason"], "end_turn");
        let u = usage(&v).unwrap();
        assert!(u.input > 85 && u.input < 120, "an image is a flat price, not its bytes: {u:?}");
        assert_eq!(v["usage"]["totalTokens"], u.input + u.output);
        let framed = render(&v, &StreamOptions::default()).unwrap();
        assert_eq!(assemble(&framed).unwrap(), v);
    }
}
