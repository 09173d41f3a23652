//! InvokeModel and InvokeModelWithResponseStream: the body is the model family's own.
//!
//! - Anthropic models take Anthropic's Messages body (`anthropic_version: "bedrock-2023-05-31"`, the model
//!   in the path): the Anthropic module renders and assembles it; here its events are wrapped in `chunk`
//!   events (`{"bytes": base64(event JSON)}`) and unwrapped again. Bedrock sends no `ping`.
//! - Titan embeddings: `{"inputText", "dimensions"?, "normalize"?, "embeddingTypes"?}` →
//!   `{"embedding": [...], "inputTextTokenCount": N}` (`embeddingsByType` when types are asked for).
//! - Any other family is opaque JSON: replayed as recorded; a plain answer streams as one chunk, and a
//!   recorded stream is assembled by merging its chunks the way the SDKs accumulate deltas (strings
//!   concatenate, objects merge, later numbers win).

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::super::eventstream::write_event;
use super::super::shape::{accumulate, as_object, value_text};
use super::super::sse::{is_sse, parse_sse};
use super::{json_messages, Operation, SynthInput, Usage};
use crate::stream::{StreamError, StreamOptions};
use crate::synth::{embedding_seed, embedding_vector, f32_value, requested_dimensions, MAX_EMBEDDING_FLOATS};
use crate::tokens::estimate_tokens;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The operation an InvokeModel body of `model` is: its family, as far as the id tells.
pub(super) fn operation_of(model: &str) -> Operation {
    let lower = model.to_ascii_lowercase();
    if lower.contains("anthropic.") {
        Operation::Messages
    } else if lower.contains("titan-embed") {
        Operation::BedrockTitanEmbeddings
    } else {
        Operation::BedrockInvokeModel
    }
}

/// One `chunk` event carrying `json` (an event of the model's own stream).
fn chunk(op: Operation, out: &mut Vec<u8>, json: &[u8]) -> Result<(), StreamError> {
    let payload = json!({ "bytes": B64.encode(json) }).to_string();
    if write_event(out, "chunk", payload.as_bytes()) {
        Ok(())
    } else {
        Err(super::super::shape::bad(op, "(body)", "is too large for one event stream message"))
    }
}

/// An Anthropic message as Bedrock streams it.
pub(super) fn render_anthropic(body: &Value, opts: &StreamOptions) -> Result<Vec<u8>, StreamError> {
    chunks_of_sse(&super::super::anthropic::render(body, opts)?)
}

/// Anthropic's SSE events as `chunk` events (their JSON unchanged), dropping `ping`s.
pub(super) fn chunks_of_sse(text: &str) -> Result<Vec<u8>, StreamError> {
    let op = Operation::Messages;
    if !is_sse(text) {
        return Err(StreamError::MissingEvent { op, event: "message_start" });
    }
    let mut out = Vec::new();
    for ev in parse_sse(text) {
        if ev.name.as_deref() == Some("ping") || ev.data.trim() == "[DONE]" {
            continue;
        }
        chunk(op, &mut out, ev.data.as_bytes())?;
    }
    Ok(out)
}

/// The Anthropic events inside recorded `chunk` events, as the SSE text Anthropic streams.
pub(super) fn sse_of_chunks(op: Operation, recorded: &[u8]) -> Result<String, StreamError> {
    let mut out = String::new();
    for (index, offset, json) in chunk_payloads(op, recorded)? {
        let text = String::from_utf8(json).map_err(|_| StreamError::BadFrame {
            op,
            index,
            offset,
            reason: "the chunk's bytes are not UTF-8".into(),
        })?;
        let name = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "message".into());
        // One `data:` line per line of the JSON, so a pretty-printed chunk stays one event.
        out.push_str("event: ");
        out.push_str(&name);
        out.push('\n');
        for line in text.lines() {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    Ok(out)
}

/// The decoded `bytes` of every `chunk` event (other events are skipped), with the message's position and
/// byte offset.
fn chunk_payloads(op: Operation, recorded: &[u8]) -> Result<Vec<(usize, usize, Vec<u8>)>, StreamError> {
    let mut out = Vec::new();
    for (index, (m, data)) in json_messages(op, recorded)?.into_iter().enumerate() {
        if m.name() != "chunk" {
            continue;
        }
        let fail = |reason: &str| StreamError::BadFrame { op, index, offset: m.offset, reason: reason.into() };
        let b64 = data.get("bytes").and_then(Value::as_str).ok_or_else(|| fail("the chunk has no string `bytes`"))?;
        out.push((index, m.offset, B64.decode(b64).map_err(|_| fail("the chunk's `bytes` are not base64"))?));
    }
    if out.is_empty() {
        return Err(StreamError::MissingEvent { op, event: "chunk" });
    }
    Ok(out)
}

/// A plain answer of another family, as one chunk.
pub(super) fn render_opaque(body: &Value) -> Result<Vec<u8>, StreamError> {
    // A chunk's bytes are one JSON object (what its assembly reads back).
    as_object(Operation::BedrockInvokeModel, body, "")?;
    let mut out = Vec::new();
    chunk(Operation::BedrockInvokeModel, &mut out, body.to_string().as_bytes())?;
    Ok(out)
}

/// A recorded stream of another family: its chunks merged into one answer.
pub(super) fn assemble_opaque(recorded: &[u8]) -> Result<Value, StreamError> {
    let op = Operation::BedrockInvokeModel;
    let mut acc = Map::new();
    for (index, offset, bytes) in chunk_payloads(op, recorded)? {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => accumulate(&mut acc, &m),
            _ => {
                let reason = "the chunk's bytes are not a JSON object".into();
                return Err(StreamError::BadFrame { op, index, offset, reason });
            }
        }
    }
    Ok(Value::Object(acc))
}

fn n(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// Titan embeddings report input tokens only.
pub(super) fn titan_usage(body: &Value) -> Option<Usage> {
    n(body, "inputTextTokenCount").map(|input| Usage { input, output: 0, cached_input: 0 })
}

/// Usage of another family's answer, from the fields the families use: Bedrock's
/// `amazon-bedrock-invocationMetrics`, Llama's and Mistral's token counts, OpenAI- or Anthropic-style
/// `usage`.
pub(super) fn opaque_usage(body: &Value) -> Option<Usage> {
    let (input, output) = if let Some(m) = body.get("amazon-bedrock-invocationMetrics") {
        (n(m, "inputTokenCount"), n(m, "outputTokenCount"))
    } else if body.get("generation_token_count").is_some() || body.get("prompt_token_count").is_some() {
        (n(body, "prompt_token_count"), n(body, "generation_token_count"))
    } else if let Some(u) = body.get("usage") {
        (
            n(u, "input_tokens").or_else(|| n(u, "prompt_tokens")),
            n(u, "output_tokens").or_else(|| n(u, "completion_tokens")),
        )
    } else {
        (None, None)
    };
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(Usage { input: input.unwrap_or(0), output: output.unwrap_or(0), cached_input: 0 })
}

/// A Titan model's native dimension: v2 1024 (256 and 512 on request), v1 1536, multimodal 1024.
fn titan_dimensions(model: &str) -> usize {
    let lower = model.to_ascii_lowercase();
    if lower.contains("titan-embed-text-v1") || lower.contains("titan-embed-g1-text") {
        1536
    } else {
        1024
    }
}

/// A synthesized Titan embedding of `inputText` (or of the image, for the multimodal model): the request's
/// `dimensions` (or `embeddingConfig.outputEmbeddingLength`), else the rule's, else the model's. Vectors
/// are unit length whatever `normalize` says; `embeddingTypes: ["binary"]` adds the sign bits.
pub(super) fn synthesize_titan(input: &SynthInput<'_>) -> Option<Value> {
    let (request, model) = (input.request, input.model);
    let asked = request.get("dimensions").or_else(|| request.get("embeddingConfig")?.get("outputEmbeddingLength"));
    let dims = requested_dimensions(asked).or(input.dimensions).unwrap_or_else(|| titan_dimensions(model));
    if dims > MAX_EMBEDDING_FLOATS || crate::budget::embeddings_over_budget(dims, dims, false, input.answer_budget) {
        return None;
    }
    let text = request.get("inputText").map(value_text).unwrap_or_default();
    let seed = match request.get("inputImage").and_then(Value::as_str) {
        Some(image) => embedding_seed(model, "image", &format!("{text}\0{image}")),
        None => embedding_seed(model, "text", &text),
    };
    let v = embedding_vector(&seed, dims);
    let floats = Value::Array(v.iter().map(|x| f32_value(*x)).collect());
    let mut body = Map::new();
    body.insert("embedding".into(), floats.clone());
    if let Some(Value::Array(types)) = request.get("embeddingTypes") {
        let mut by_type = Map::new();
        for t in types.iter().filter_map(Value::as_str) {
            match t {
                "float" => {
                    by_type.insert("float".into(), floats.clone());
                }
                "binary" => {
                    let bits = v.iter().map(|x| Value::from(u8::from(*x > 0.0))).collect();
                    by_type.insert("binary".into(), Value::Array(bits));
                }
                _ => {}
            }
        }
        body.insert("embeddingsByType".into(), Value::Object(by_type));
    }
    body.insert("inputTextTokenCount".into(), estimate_tokens(&text).into());
    Some(Value::Object(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::dialect::eventstream::{decode, write_message};
    use crate::synth::Answer;

    fn message() -> Value {
        json!({
            "id": "msg_bdrk_01Hd7kBcqwqS8XbvYyfjNFRt", "type": "message", "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": [
                {"type": "text", "text": "I'll check the weather in Oslo — ☀️ or 🌧?"},
                {"type": "tool_use", "id": "toolu_bdrk_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Oslo", "units": ["c", 1.5]}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 412, "output_tokens": 57, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
        })
    }

    #[test]
    fn anthropic_streams_round_trip_through_chunks() {
        for chunk_chars in [0, 1, 8] {
            let opts = StreamOptions { chunk_chars, ..StreamOptions::default() };
            let framed = render_anthropic(&message(), &opts).unwrap();
            let msgs = decode(&framed).unwrap();
            assert!(msgs.iter().all(|m| m.name() == "chunk" && m.header(":message-type") == Some("event")));
            let first: Value = serde_json::from_slice(&msgs[0].payload).unwrap();
            let event: Value = serde_json::from_slice(&B64.decode(first["bytes"].as_str().unwrap()).unwrap()).unwrap();
            assert_eq!(event["type"], "message_start");
            let sse = sse_of_chunks(Operation::Messages, &framed).unwrap();
            assert!(!sse.contains("ping"));
            let back = super::super::super::anthropic::assemble(&sse).unwrap();
            assert_eq!(back, message(), "chunk_chars {chunk_chars}");
        }
    }

    #[test]
    fn a_recorded_anthropic_sse_stream_is_reframed() {
        let sse = super::super::super::anthropic::render(&message(), &StreamOptions::default()).unwrap();
        let framed = chunks_of_sse(&sse).unwrap();
        let back = super::super::super::anthropic::assemble(&sse_of_chunks(Operation::Messages, &framed).unwrap());
        assert_eq!(back.unwrap(), message());
        assert!(chunks_of_sse("not a stream").is_err());
    }

    #[test]
    fn chunks_that_are_not_base64_json_are_named() {
        let mut out = Vec::new();
        write_event(&mut out, "chunk", br#"{"bytes":"!!"}"#);
        let e = sse_of_chunks(Operation::Messages, &out).unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        let mut out = Vec::new();
        write_event(&mut out, "chunk", br#"{"nobytes":1}"#);
        assert!(assemble_opaque(&out).unwrap_err().to_string().contains("no string `bytes`"));
        let mut out = Vec::new();
        write_message(
            &mut out,
            &[(":exception-type", "modelStreamErrorException"), (":message-type", "exception")],
            br#"{"message":"model failed"}"#,
        );
        let e = assemble_opaque(&out).unwrap_err();
        assert!(matches!(e, StreamError::Upstream { .. }) && e.to_string().contains("model failed"), "{e}");
        assert!(matches!(assemble_opaque(&[]).unwrap_err(), StreamError::MissingEvent { .. }));
    }

    #[test]
    fn other_families_stream_as_one_chunk_and_recorded_chunks_merge() {
        let body = json!({"generation": "Hello there", "prompt_token_count": 9, "generation_token_count": 3, "stop_reason": "stop"});
        assert_eq!(assemble_opaque(&render_opaque(&body).unwrap()).unwrap(), body);
        let mut out = Vec::new();
        for piece in [
            json!({"generation": "Hel", "prompt_token_count": 9, "generation_token_count": 1, "stop_reason": null}),
            json!({"generation": "lo", "prompt_token_count": null, "generation_token_count": 2, "stop_reason": null}),
            json!({"generation": "", "generation_token_count": 3, "stop_reason": "stop",
                   "amazon-bedrock-invocationMetrics": {"inputTokenCount": 9, "outputTokenCount": 3}}),
        ] {
            chunk(Operation::BedrockInvokeModel, &mut out, piece.to_string().as_bytes()).unwrap();
        }
        let merged = assemble_opaque(&out).unwrap();
        assert_eq!(merged["generation"], "Hello");
        assert_eq!(merged["generation_token_count"], 3);
        assert_eq!(merged["stop_reason"], "stop");
        assert_eq!(opaque_usage(&merged), Some(Usage { input: 9, output: 3, cached_input: 0 }));
        assert_eq!(opaque_usage(&body), Some(Usage { input: 9, output: 3, cached_input: 0 }));
        assert_eq!(
            opaque_usage(&json!({"usage": {"prompt_tokens": 4}})),
            Some(Usage { input: 4, output: 0, cached_input: 0 })
        );
        assert_eq!(opaque_usage(&json!({"outputs": []})), None);
    }

    fn titan(request: Value, dimensions: Option<usize>) -> Value {
        let answer = Answer::Nothing;
        let input = SynthInput {
            request: &request,
            model: "amazon.titan-embed-text-v2:0",
            answer: &answer,
            dimensions,
            now_secs: 0,
            text_cap: crate::limits::MAX_TEXT_BYTES,
            answer_budget: crate::limits::ANSWER_BUDGET,
        };
        synthesize_titan(&input).unwrap()
    }

    #[test]
    fn titan_embeddings_are_stable_unit_vectors_of_the_asked_size() {
        let a = titan(json!({"inputText": "The quick brown fox"}), None);
        assert_eq!(a["embedding"].as_array().unwrap().len(), 1024);
        let norm: f64 = a["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_eq!(titan(json!({"inputText": "The quick brown fox"}), None), a);
        assert_ne!(titan(json!({"inputText": "Another text"}), None)["embedding"], a["embedding"]);
        assert_eq!(titan_usage(&a).unwrap().input, estimate_tokens("The quick brown fox"));
        let b = titan(json!({"inputText": "x", "dimensions": 256, "embeddingTypes": ["float", "binary"]}), Some(512));
        assert_eq!(b["embedding"].as_array().unwrap().len(), 256);
        assert_eq!(b["embeddingsByType"]["float"], b["embedding"]);
        let bits = b["embeddingsByType"]["binary"].as_array().unwrap();
        assert_eq!(bits.len(), 256);
        assert!(bits.iter().all(|x| x == 0 || x == 1));
        assert_eq!(titan(json!({"inputText": "x"}), Some(512))["embedding"].as_array().unwrap().len(), 512);
        assert_eq!(titan_dimensions("amazon.titan-embed-text-v1"), 1536);
    }
}
