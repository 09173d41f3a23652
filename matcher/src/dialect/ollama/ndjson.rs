//! Ollama's streams: one JSON object a line. Chat lines carry `message` pieces (`thinking` first, then
//! `content`, then the tool calls whole in one line, as Ollama sends them); generate lines carry `response`
//! and `thinking` pieces at the top. Every line repeats `model` and `created_at` with `done: false`; the
//! last line has `done: true` and everything else of the answer (`done_reason`, counts, timings, `context`).
//! Assembly concatenates the text pieces, extends the lists and keeps the last value of every other field,
//! as the SDKs' users do.

use serde_json::{Map, Value};

use crate::dialect::shape::{aligned_tokens, as_object, bad, copy_keys, map, opt_array, opt_str, pieces};
use crate::dialect::sse::write_json_in;
use crate::dialect::Operation;
use crate::stream::{StreamError, StreamOptions};

/// Ollama's own key order (its Go structs' field order), so rendered lines read like live ones.
const KEY_ORDER: &[&str] = &[
    "model",
    "created_at",
    "message",
    "role",
    "content",
    "thinking",
    "response",
    "images",
    "tool_calls",
    "function",
    "index",
    "name",
    "arguments",
    "done_reason",
    "done",
    "context",
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
    "logprobs",
];

/// Where an operation's streamed text lives.
struct Grammar {
    /// The object holding the text: `message` (chat) or the answer itself (generate).
    nested: Option<&'static str>,
    /// The answer text's field.
    text: &'static str,
}

fn grammar(op: Operation) -> Result<Grammar, StreamError> {
    match op {
        Operation::OllamaChat => Ok(Grammar { nested: Some("message"), text: "content" }),
        Operation::OllamaGenerate => Ok(Grammar { nested: None, text: "response" }),
        op => Err(StreamError::NotStreamable(op)),
    }
}

/// String fields whose pieces concatenate, and list fields whose pieces extend, when assembling.
const CONCAT: &[&str] = &["content", "thinking", "response"];
const EXTEND: &[&str] = &["tool_calls", "images", "logprobs"];

/// The NDJSON stream of a plain chat or generate answer.
pub(super) fn render(op: Operation, body: &Value, opts: &StreamOptions) -> Result<Vec<u8>, StreamError> {
    let g = grammar(op)?;
    let b = as_object(op, body, "")?;
    if b.get("error").is_some_and(|e| !e.is_null()) {
        return Err(bad(op, "error", "is set: an error answer has no streaming form"));
    }
    let (holder, at) = match g.nested {
        Some(k) => (as_object(op, b.get(k).unwrap_or(&Value::Null), k)?, k),
        None => (b, ""),
    };
    let text = opt_str(op, holder, g.text, at)?;
    let thinking = opt_str(op, holder, "thinking", at)?.filter(|t| !t.is_empty());
    let calls = match g.nested {
        Some(_) => opt_array(op, holder, "tool_calls", at)?,
        None => &[],
    };
    let logprobs = opt_array(op, b, "logprobs", "")?;
    let mut head = Map::new();
    copy_keys(b, &mut head, &["model", "created_at"]);
    let role = holder.get("role").cloned().unwrap_or_else(|| "assistant".into());
    // One streamed line with `fields` in the text holder.
    let line = |fields: Map<String, Value>, extra: Option<(&str, Value)>| {
        let mut c = head.clone();
        match g.nested {
            Some(k) => {
                let mut m = map([("role", role.clone())]);
                m.extend(fields);
                c.insert(k.into(), Value::Object(m));
            }
            None => c.extend(fields),
        }
        if let Some((k, v)) = extra {
            c.insert(k.into(), v);
        }
        c.insert("done".into(), false.into());
        Value::Object(c)
    };
    // Lines before the text carry an empty text field when the answer has one, as Ollama's do.
    let empty_text = || text.map(|_| (g.text.to_string(), Value::from(""))).into_iter().collect::<Map<_, _>>();

    let mut out = String::new();
    let mut push = |v: &Value| {
        write_json_in(&mut out, v, KEY_ORDER);
        out.push('\n');
    };
    for p in thinking.map(|t| pieces(t, opts.chunk_chars)).unwrap_or_default() {
        let mut f = empty_text();
        f.insert("thinking".into(), p.into());
        push(&line(f, None));
    }
    // Logprobs whose tokens spell the text exactly stream one token a line, like Ollama's; others all
    // arrive with the last line.
    let aligned = text.filter(|_| thinking.is_none()).and_then(|t| aligned_tokens(t, logprobs));
    if let Some(tokens) = &aligned {
        for (token, entry) in tokens {
            let f = map([(g.text, (*token).into())]);
            push(&line(f, Some(("logprobs", Value::Array(vec![(*entry).clone()])))));
        }
    } else {
        for p in text.map(|t| pieces(t, opts.chunk_chars)).unwrap_or_default() {
            push(&line(map([(g.text, p.into())]), None));
        }
    }
    if !calls.is_empty() {
        let mut f = empty_text();
        f.insert("tool_calls".into(), Value::Array(calls.to_vec()));
        push(&line(f, None));
    }

    // The last line: the rest of the answer, with what was streamed taken out.
    let strip = |m: &mut Map<String, Value>| {
        if text.is_some() {
            m.insert(g.text.into(), "".into());
        }
        if thinking.is_some() {
            m.remove("thinking");
        }
        if !calls.is_empty() {
            m.remove("tool_calls");
        }
    };
    let mut last = b.clone();
    match g.nested {
        Some(k) => {
            let mut m = holder.clone();
            strip(&mut m);
            last.insert(k.into(), Value::Object(m));
        }
        None => strip(&mut last),
    }
    if aligned.is_some() {
        last.remove("logprobs");
    }
    last.insert("done".into(), true.into());
    push(&Value::Object(last));
    Ok(out.into_bytes())
}

/// Does `recorded` look like an Ollama stream: its first line a JSON object with a boolean `done`, and
/// either more lines or `done: false`? (One complete answer on one line is a plain body.)
pub(super) fn is_ndjson_stream(recorded: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(recorded) else { return false };
    let mut lines = json_lines(text);
    let Some((_, first)) = lines.next() else { return false };
    let Ok(Value::Object(first)) = serde_json::from_str::<Value>(first) else { return false };
    match first.get("done") {
        Some(Value::Bool(false)) => true,
        Some(Value::Bool(true)) => lines.next().is_some(),
        _ => false,
    }
}

/// Non-blank lines with their 1-based line numbers (`\n` or `\r\n` ends, a leading BOM dropped).
fn json_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// Assembles a recorded stream into the answer a `"stream": false` request gets.
pub(super) fn assemble(op: Operation, recorded: &[u8]) -> Result<Value, StreamError> {
    let g = grammar(op)?;
    let text = crate::dialect::sse::text(op, recorded)?;
    let mut acc = Map::new();
    for (index, (line, raw)) in json_lines(text).enumerate() {
        let fail = |reason: String| StreamError::BadEvent { op, index, event: "line".into(), line, reason };
        let chunk = match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(fail("the line is not a JSON object".into())),
            Err(e) => return Err(fail(format!("the line is not valid JSON: {e}"))),
        };
        if let Some(e) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = e.as_str().map_or_else(|| e.to_string(), str::to_string);
            return Err(StreamError::Upstream { op, message });
        }
        if let Some(k) = g.nested {
            if chunk.get(k).is_some_and(|m| !m.is_object() && !m.is_null()) {
                return Err(fail(format!("`{k}` is not an object")));
            }
        }
        fold(&mut acc, &chunk, g.nested);
        if chunk.get("done") == Some(&Value::Bool(true)) {
            return Ok(Value::Object(acc));
        }
    }
    Err(StreamError::MissingEvent { op, event: "\"done\": true" })
}

/// Adds one line to the answer so far: text pieces concatenate, lists extend, the `nested` text holder
/// folds the same way, every other field takes the line's value (`null` never overwrites).
fn fold(acc: &mut Map<String, Value>, chunk: &Map<String, Value>, nested: Option<&str>) {
    for (k, v) in chunk {
        let key = k.as_str();
        match (acc.get_mut(key), v) {
            (Some(Value::String(a)), Value::String(d)) if CONCAT.contains(&key) => a.push_str(d),
            (Some(Value::Array(a)), Value::Array(d)) if EXTEND.contains(&key) => a.extend(d.iter().cloned()),
            (Some(Value::Object(a)), Value::Object(d)) if nested == Some(key) => fold(a, d, None),
            (Some(_), Value::Null) => {}
            _ => {
                acc.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    const SIZES: [usize; 4] = [0, 1, 3, 8];

    fn opts(chunk_chars: usize) -> StreamOptions {
        StreamOptions { include_usage: false, chunk_chars }
    }

    fn lines(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn chat(message: Value) -> Value {
        json!({
            "model": "llama3.2", "created_at": "2025-11-29T08:00:00.123456789Z", "message": message,
            "done_reason": "stop", "done": true, "total_duration": 4883583458u64, "load_duration": 1334875,
            "prompt_eval_count": 26, "prompt_eval_duration": 342546000, "eval_count": 282, "eval_duration": 4535599000u64
        })
    }

    fn round_trip(op: Operation, body: &Value) {
        for size in SIZES {
            let stream = render(op, body, &opts(size)).unwrap();
            assert!(is_ndjson_stream(&stream) || lines(&stream).len() == 1);
            assert_eq!(&assemble(op, &stream).unwrap(), body, "size {size}:\n{}", String::from_utf8_lossy(&stream));
        }
    }

    #[test]
    fn chat_streams_round_trip_text_thinking_and_tool_calls() {
        round_trip(
            Operation::OllamaChat,
            &chat(
                json!({"role": "assistant", "content": "The sky is blue because of Rayleigh scattering. — ça va 🌈"}),
            ),
        );
        round_trip(
            Operation::OllamaChat,
            &chat(
                json!({"role": "assistant", "content": "Let me check both cities.", "thinking": "The user wants weather in two cities.",
                "tool_calls": [
                    {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}},
                    {"function": {"index": 1, "name": "get_weather", "arguments": {"city": "Tokyo"}}}
                ]}),
            ),
        );
        round_trip(Operation::OllamaChat, &chat(json!({"role": "assistant", "content": ""})));
        round_trip(
            Operation::OllamaChat,
            &chat(json!({"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "noop", "arguments": {}}}]})),
        );
    }

    #[test]
    fn chat_lines_look_like_ollamas() {
        let body = chat(json!({"role": "assistant", "content": "Hello there", "thinking": "hm",
            "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}));
        let stream = render(Operation::OllamaChat, &body, &opts(8)).unwrap();
        let text = String::from_utf8(stream.clone()).unwrap();
        assert!(text.starts_with(r#"{"model":"llama3.2","created_at":"2025-11-29T08:00:00.123456789Z","message":{"role":"assistant","content":"","thinking":"hm"},"done":false}"#), "{text}");
        let ls = lines(&stream);
        assert_eq!(ls.len(), 5, "{text}");
        assert_eq!(ls[1]["message"], json!({"role": "assistant", "content": "Hello"}));
        assert_eq!(ls[2]["message"]["content"], " there");
        assert_eq!(ls[3]["message"]["tool_calls"][0]["function"]["name"], "f");
        let last = &ls[4];
        assert_eq!(last["message"], json!({"role": "assistant", "content": ""}));
        assert_eq!((last["done"].clone(), last["eval_count"].clone()), (json!(true), json!(282)));
        assert!(ls[..4].iter().all(|l| l["done"] == false && l.get("eval_count").is_none()));
        assert!(text.ends_with("\"eval_duration\":4535599000}\n"), "{text}");
    }

    #[test]
    fn generate_streams_round_trip_with_context_and_aligned_logprobs() {
        let body = json!({"model": "llama3.2", "created_at": "2023-08-04T19:22:45.499127Z", "response": "The sky is blue.",
            "done": true, "done_reason": "stop", "context": [1, 2, 3], "total_duration": 5043500667u64,
            "prompt_eval_count": 26, "eval_count": 5});
        round_trip(Operation::OllamaGenerate, &body);
        let mut with_lp = body.clone();
        with_lp["response"] = json!("Blue sky");
        with_lp["logprobs"] =
            json!([{"token": "Blue", "logprob": -0.1}, {"token": " sky", "logprob": -0.2, "top_logprobs": []}]);
        round_trip(Operation::OllamaGenerate, &with_lp);
        let ls = lines(&render(Operation::OllamaGenerate, &with_lp, &opts(8)).unwrap());
        assert_eq!(ls.len(), 3);
        assert_eq!((ls[0]["response"].clone(), ls[0]["logprobs"][0]["token"].clone()), (json!("Blue"), json!("Blue")));
        assert!(ls[2].get("logprobs").is_none());
        // Not aligned: all logprobs ride on the last line.
        let mut loose = with_lp.clone();
        loose["logprobs"] = json!([{"token": "x", "logprob": -1.0}]);
        round_trip(Operation::OllamaGenerate, &loose);
        let mut thinking = body.clone();
        thinking["thinking"] = json!("Light scatters.");
        round_trip(Operation::OllamaGenerate, &thinking);
    }

    #[test]
    fn a_recorded_stream_is_recognized_and_assembled() {
        let rec = "{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.385406455-07:00\",\"message\":{\"role\":\"assistant\",\"content\":\"The\",\"images\":null},\"done\":false}\r\n\
                   {\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.4Z\",\"message\":{\"role\":\"assistant\",\"content\":\" sky\",\"images\":null},\"done\":false}\n\n\
                   {\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T19:22:45.499127Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done_reason\":\"stop\",\"done\":true,\"eval_count\":2}\n";
        assert!(is_ndjson_stream(rec.as_bytes()));
        let v = assemble(Operation::OllamaChat, rec.as_bytes()).unwrap();
        assert_eq!(v["message"], json!({"role": "assistant", "content": "The sky", "images": null}));
        assert_eq!(
            (v["created_at"].clone(), v["eval_count"].clone()),
            (json!("2023-08-04T19:22:45.499127Z"), json!(2))
        );
        // A plain body on one line, SSE and binary are not Ollama streams.
        assert!(!is_ndjson_stream(br#"{"model":"m","response":"x","done":true}"#));
        assert!(!is_ndjson_stream(b"data: {\"done\":false}\n\n"));
        assert!(!is_ndjson_stream(b"\xff\xfe"));
        assert!(!is_ndjson_stream(b""));
    }

    #[test]
    fn broken_recordings_are_named_errors() {
        let op = Operation::OllamaGenerate;
        let e = assemble(op, b"{\"response\":\"a\",\"done\":false}\n{\"response\":").unwrap_err();
        assert!(matches!(e, StreamError::BadEvent { index: 1, line: 2, .. }), "{e}");
        let e = assemble(op, b"{\"response\":\"a\",\"done\":false}\n").unwrap_err();
        assert!(e.to_string().contains("\"done\": true"), "{e}");
        let e = assemble(op, b"{\"response\":\"a\",\"done\":false}\n{\"error\":\"model ran out of memory\"}\n")
            .unwrap_err();
        assert_eq!(e, StreamError::Upstream { op, message: "model ran out of memory".into() });
        assert!(assemble(Operation::OllamaChat, b"{\"message\":\"x\",\"done\":true}").is_err());
        assert!(matches!(assemble(Operation::OllamaEmbed, b"{}"), Err(StreamError::NotStreamable(_))));
        assert!(matches!(render(Operation::OllamaEmbed, &json!({}), &opts(8)), Err(StreamError::NotStreamable(_))));
        assert!(render(Operation::OllamaChat, &json!({"message": {"content": 3}}), &opts(8)).is_err());
    }
}
