//! `generateContent` and `streamGenerateContent`: the chunk stream (SSE or one JSON array), its assembly,
//! and synthesized answers.
//!
//! Every chunk of a stream is a whole `GenerateContentResponse`: a candidate's text arrives as text parts
//! in word-sized pieces (a thought's pieces keep `"thought": true`), any other part (a `functionCall`,
//! inline data, code) whole in one chunk, and the candidate's own fields (`finishReason`,
//! `safetyRatings`, `citationMetadata`, ...) with its last piece. Every chunk repeats `modelVersion`,
//! `responseId` (and Vertex AI's `createTime`); the first carries `promptFeedback`, the last
//! `usageMetadata`. Assembling does what a client concatenating `response.text` does: a text piece
//! continues the previous chunk's text part of the same kind (thought or not) until a part carries more
//! than its text (a `thoughtSignature`, ...), so adjacent text parts of an answer come back as one.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::dialect::shape::{as_object, bad, interleave, opt_array, path_of, pieces};
use crate::dialect::sse::{is_sse, json_events, parse_sse, upstream};
use crate::dialect::{Framing, Operation, SynthInput};
use crate::stream::{StreamError, StreamOptions};
use crate::tokens::{estimate_tokens, value_tokens, MEDIA_TOKENS};

const OP: Operation = Operation::GenerateContent;

/// Top-level fields every chunk repeats (when short); the others are sent once, so a chunk costs the same
/// whatever else a body holds.
const REPEATED: &[&str] = &["modelVersion", "responseId", "createTime"];

/// Longest value a chunk repeats; a longer one is sent once, with the last chunk.
const MAX_REPEATED_CHARS: usize = 256;

fn repeated(k: &str, v: &Value) -> bool {
    REPEATED.contains(&k) && v.as_str().is_some_and(|s| s.len() <= MAX_REPEATED_CHARS)
}

/// The stream of a `GenerateContentResponse` in `framing`.
pub(super) fn render(body: &Value, framing: Framing, opts: &StreamOptions) -> Result<Vec<u8>, StreamError> {
    let out = frame(chunks(body, opts)?.iter(), framing);
    // The answer was priced before rendering (runtime); this cap holds for any caller.
    if out.len() > crate::dialect::sse::STREAM_CAP {
        return Err(StreamError::TooLarge { op: OP, limit: crate::dialect::sse::STREAM_CAP });
    }
    Ok(out)
}

/// Writes chunks as Server-Sent Events (`data: {...}` and a blank line, CRLF as Google writes them) or as
/// one JSON array.
fn frame<'a>(chunks: impl Iterator<Item = &'a Map<String, Value>>, framing: Framing) -> Vec<u8> {
    let mut out = Vec::new();
    let json = |out: &mut Vec<u8>, c: &Map<String, Value>| {
        // Serializing a map of JSON values can't fail; an empty object stands in if it ever did.
        if serde_json::to_writer(&mut *out, c).is_err() {
            out.extend_from_slice(b"{}");
        }
    };
    match framing {
        Framing::JsonArray => {
            out.push(b'[');
            for (i, c) in chunks.enumerate() {
                if i > 0 {
                    out.extend_from_slice(b",\r\n");
                }
                json(&mut out, c);
            }
            out.push(b']');
        }
        _ => {
            for c in chunks {
                out.extend_from_slice(b"data: ");
                json(&mut out, c);
                out.extend_from_slice(b"\r\n\r\n");
            }
        }
    }
    out
}

/// The chunks of a plain answer.
fn chunks(body: &Value, opts: &StreamOptions) -> Result<Vec<Map<String, Value>>, StreamError> {
    let b = as_object(OP, body, "")?;
    let candidates = opt_array(OP, b, "candidates", "")?;
    let base: Map<String, Value> =
        b.iter().filter(|(k, v)| repeated(k, v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let many = candidates.len() > 1;
    let per_candidate = candidates
        .iter()
        .enumerate()
        .map(|(pos, c)| candidate_entries(pos, c, many, opts))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: Vec<Map<String, Value>> = interleave(per_candidate)
        .into_iter()
        .map(|entry| {
            let mut chunk = base.clone();
            chunk.insert("candidates".into(), Value::Array(vec![entry]));
            chunk
        })
        .collect();
    if out.is_empty() {
        // No candidate (a blocked prompt): one chunk with everything else.
        let mut chunk = base;
        if let Some(c @ Value::Array(_)) = b.get("candidates") {
            chunk.insert("candidates".into(), c.clone());
        }
        out.push(chunk);
    }
    if let (Some(pf), Some(first)) = (b.get("promptFeedback"), out.first_mut()) {
        first.insert("promptFeedback".into(), pf.clone());
    }
    if let Some(last) = out.last_mut() {
        for (k, v) in
            b.iter().filter(|(k, v)| !repeated(k, v) && !matches!(k.as_str(), "candidates" | "promptFeedback"))
        {
            last.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// The `candidates[]` entries (one per chunk) that stream one candidate.
fn candidate_entries(pos: usize, c: &Value, many: bool, opts: &StreamOptions) -> Result<Vec<Value>, StreamError> {
    let at = format!("candidates[{pos}]");
    let cand = as_object(OP, c, &at)?;
    // Several candidates need their index to be told apart; a lone one keeps the body's spelling.
    let index = match cand.get("index") {
        Some(i) => Some(i.clone()),
        None if many => Some(pos.into()),
        None => None,
    };
    let entry = |content: Option<Value>| {
        let mut m = Map::new();
        if let Some(i) = &index {
            m.insert("index".into(), i.clone());
        }
        if let Some(c) = content {
            m.insert("content".into(), c);
        }
        m
    };
    let mut entries: Vec<Map<String, Value>> = Vec::new();
    match cand.get("content") {
        None | Some(Value::Null) => entries.push(entry(None)),
        Some(content) => {
            let c_at = path_of(&at, "content");
            let content = as_object(OP, content, &c_at)?;
            let parts = opt_array(OP, content, "parts", &c_at)?;
            // Every piece names the role; the content's other fields come once, with the last piece.
            let role: Map<String, Value> =
                content.iter().filter(|(k, _)| *k == "role").map(|(k, v)| (k.clone(), v.clone())).collect();
            for (j, part) in parts.iter().enumerate() {
                for piece in part_pieces(part, &format!("{c_at}.parts[{j}]"), opts)? {
                    let mut c = role.clone();
                    c.insert("parts".into(), Value::Array(vec![piece]));
                    entries.push(entry(Some(Value::Object(c))));
                }
            }
            match entries.last_mut().and_then(|e| e.get_mut("content")).and_then(Value::as_object_mut) {
                Some(last) => {
                    for (k, v) in content.iter().filter(|(k, _)| *k != "parts" && *k != "role") {
                        last.insert(k.clone(), v.clone());
                    }
                }
                None => entries.push(entry(Some(Value::Object(content.clone())))),
            }
        }
    }
    if let Some(last) = entries.last_mut() {
        for (k, v) in cand.iter().filter(|(k, _)| *k != "content" && *k != "index") {
            last.insert(k.clone(), v.clone());
        }
    }
    Ok(entries.into_iter().map(Value::Object).collect())
}

/// A part as it streams: a text part in pieces (the last one carries the part's other fields), any other
/// part whole.
fn part_pieces(part: &Value, at: &str, opts: &StreamOptions) -> Result<Vec<Value>, StreamError> {
    let p = as_object(OP, part, at)?;
    let text = match p.get("text") {
        None | Some(Value::Null) => return Ok(vec![part.clone()]),
        Some(Value::String(t)) => t,
        Some(_) => return Err(bad(OP, path_of(at, "text"), "must be a string")),
    };
    let ps = pieces(text, opts.chunk_chars);
    if ps.len() <= 1 {
        return Ok(vec![part.clone()]);
    }
    let last = ps.len() - 1;
    Ok(ps
        .into_iter()
        .enumerate()
        .map(|(k, piece)| {
            let mut m = if k == last {
                p.clone()
            } else {
                p.iter().filter(|(k, _)| *k == "thought").map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            m.insert("text".into(), piece.into());
            Value::Object(m)
        })
        .collect())
}

/// How a recorded stream is framed: a JSON array, Server-Sent Events, or neither (`None`).
pub(super) fn recorded_framing(recorded: &[u8]) -> Option<Framing> {
    let text = std::str::from_utf8(recorded).ok()?;
    if text.trim_start_matches(|c: char| c == '\u{feff}' || c.is_whitespace()).starts_with('[') {
        Some(Framing::JsonArray)
    } else if is_sse(text) {
        Some(Framing::Sse)
    } else {
        None
    }
}

/// A whole recorded stream: it assembles, a JSON array is closed, and the last chunk finishes a candidate
/// (`finishReason`), as the live API's last chunk does.
pub(super) fn complete(recorded: &[u8]) -> Result<(), StreamError> {
    assemble(recorded)?;
    let missing = Err(StreamError::MissingEvent { op: OP, event: "finishReason" });
    if recorded_framing(recorded) == Some(Framing::JsonArray)
        && !std::str::from_utf8(recorded).is_ok_and(|t| t.trim_end().ends_with(']'))
    {
        return Err(StreamError::MissingEvent { op: OP, event: "]" });
    }
    let chunks = recorded_chunks(recorded)?;
    let Some(last) = chunks.last() else { return missing };
    let finished = last
        .data
        .get("candidates")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c.get("finishReason").is_some()));
    if finished {
        Ok(())
    } else {
        missing
    }
}

/// A recorded stream in the other framing, when it is not already in `want`'s (`None`: send it verbatim).
pub(super) fn reframe(recorded: &[u8], want: Framing) -> Option<Vec<u8>> {
    if recorded_framing(recorded)? == want {
        return None;
    }
    let chunks = recorded_chunks(recorded).ok()?;
    Some(frame(chunks.iter().map(|c| &c.data), want))
}

/// One chunk of a recorded stream and where it was.
struct Chunk {
    index: usize,
    line: usize,
    data: Map<String, Value>,
}

fn bad_chunk(index: usize, line: usize, reason: impl Into<String>) -> StreamError {
    StreamError::BadEvent { op: OP, index, event: "GenerateContentResponse".into(), line, reason: reason.into() }
}

/// The chunks of a recorded stream, either framing.
fn recorded_chunks(recorded: &[u8]) -> Result<Vec<Chunk>, StreamError> {
    let text = crate::dialect::sse::text(OP, recorded)?;
    if recorded_framing(recorded) == Some(Framing::JsonArray) {
        let text = text.trim_start_matches('\u{feff}');
        let items: Vec<Value> = serde_json::from_str(text)
            .map_err(|e| bad_chunk(0, e.line(), format!("the JSON-array stream is not a valid JSON array: {e}")))?;
        return items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::Object(data) => Ok(Chunk { index, line: 1, data }),
                _ => Err(bad_chunk(index, 1, "the element is not a JSON object")),
            })
            .collect();
    }
    let events = parse_sse(text);
    Ok(json_events(OP, &events)?.into_iter().map(|(index, ev, data)| Chunk { index, line: ev.line, data }).collect())
}

/// One candidate being assembled.
#[derive(Default)]
struct CandidateAcc {
    /// Candidate-level fields (`finishReason`, `index`, ...).
    fields: Map<String, Value>,
    /// `content` without its parts (`role`), once a chunk had content.
    content: Option<Map<String, Value>>,
    /// Some chunk's content had a `parts` array.
    has_parts: bool,
    parts: Vec<Value>,
    /// The chunk whose bare text piece (text and `thought` only) ends `parts`: the next chunk's text
    /// continues it.
    open: Option<usize>,
}

impl CandidateAcc {
    fn fold(&mut self, chunk: &Chunk, cand: &Map<String, Value>) -> Result<(), StreamError> {
        let fail = |reason: &str| bad_chunk(chunk.index, chunk.line, reason);
        for (k, v) in cand {
            match (k.as_str(), v) {
                ("content", Value::Object(c)) => {
                    let content = self.content.get_or_insert_with(Map::new);
                    for (ck, cv) in c.iter().filter(|(ck, cv)| *ck != "parts" && !cv.is_null()) {
                        content.entry(ck.clone()).or_insert_with(|| cv.clone());
                    }
                    match c.get("parts") {
                        None | Some(Value::Null) => {}
                        Some(Value::Array(parts)) => {
                            self.has_parts = true;
                            for (j, part) in parts.iter().enumerate() {
                                self.add_part(chunk.index, j == 0, part);
                            }
                        }
                        Some(_) => return Err(fail("a candidate's `content.parts` is not an array")),
                    }
                }
                ("content", Value::Null) => {}
                ("content", _) => return Err(fail("a candidate's `content` is not an object")),
                ("citationMetadata", Value::Object(c)) => merge_citations(&mut self.fields, c),
                (_, Value::Null) => {}
                (k, v) => {
                    self.fields.insert(k.to_string(), v.clone());
                }
            }
        }
        Ok(())
    }

    fn add_part(&mut self, chunk: usize, first_in_chunk: bool, part: &Value) {
        let continues = first_in_chunk && self.open.is_some_and(|c| c < chunk);
        let merged = match (self.parts.last_mut(), part) {
            (Some(Value::Object(prev)), Value::Object(new)) if continues && thought(prev) == thought(new) => {
                match (prev.get_mut("text"), new.get("text")) {
                    (Some(Value::String(acc)), Some(Value::String(piece))) => {
                        acc.push_str(piece);
                        for (k, v) in new.iter().filter(|(k, _)| *k != "text") {
                            prev.insert(k.clone(), v.clone());
                        }
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !merged {
            self.parts.push(part.clone());
        }
        let bare = self.parts.last().and_then(Value::as_object).is_some_and(|p| {
            p.get("text").is_some_and(Value::is_string) && p.keys().all(|k| k == "text" || k == "thought")
        });
        self.open = bare.then_some(chunk);
    }

    fn into_value(self) -> Value {
        let mut m = self.fields;
        if let Some(mut content) = self.content {
            if self.has_parts {
                content.insert("parts".into(), Value::Array(self.parts));
            }
            m.insert("content".into(), Value::Object(content));
        }
        Value::Object(m)
    }
}

fn thought(part: &Map<String, Value>) -> bool {
    part.get("thought").and_then(Value::as_bool).unwrap_or(false)
}

/// Citations of later chunks add to the earlier ones (`citationSources` on the Gemini API, `citations` on
/// Vertex AI).
fn merge_citations(fields: &mut Map<String, Value>, add: &Map<String, Value>) {
    let slot = fields.entry("citationMetadata").or_insert_with(|| Value::Object(Map::new()));
    let Some(have) = slot.as_object_mut() else {
        *slot = Value::Object(add.clone());
        return;
    };
    for (k, v) in add {
        match (have.get_mut(k), v) {
            (Some(Value::Array(list)), Value::Array(more)) => list.extend(more.iter().cloned()),
            (_, v) => {
                have.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Assembles a recorded stream (either framing) into the plain `GenerateContentResponse`.
pub(super) fn assemble(recorded: &[u8]) -> Result<Value, StreamError> {
    let chunks = recorded_chunks(recorded)?;
    if chunks.is_empty() {
        return Err(StreamError::MissingEvent { op: OP, event: "GenerateContentResponse" });
    }
    let mut out = Map::new();
    let mut candidates: BTreeMap<u64, CandidateAcc> = BTreeMap::new();
    let mut saw_candidates = false;
    for chunk in &chunks {
        if let Some(e) = chunk.data.get("error").filter(|e| !e.is_null()) {
            return Err(upstream(OP, e));
        }
        for (k, v) in chunk.data.iter().filter(|(k, _)| *k != "candidates") {
            if !v.is_null() || !out.contains_key(k) {
                out.insert(k.clone(), v.clone());
            }
        }
        let list = match chunk.data.get("candidates") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(list)) => list,
            Some(_) => return Err(bad_chunk(chunk.index, chunk.line, "`candidates` is not an array")),
        };
        saw_candidates = true;
        for (pos, c) in list.iter().enumerate() {
            let Value::Object(cand) = c else {
                return Err(bad_chunk(chunk.index, chunk.line, "a candidate is not an object"));
            };
            let index = cand.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
            candidates.entry(index).or_default().fold(chunk, cand)?;
        }
    }
    if saw_candidates {
        out.insert("candidates".into(), Value::Array(candidates.into_values().map(CandidateAcc::into_value).collect()));
    }
    Ok(Value::Object(out))
}

/// The generated text of an answer: its parts' text and function calls.
pub(super) fn output_text(body: &Value) -> String {
    let mut out: Vec<String> = Vec::new();
    for cand in body.get("candidates").and_then(Value::as_array).into_iter().flatten() {
        let parts = cand.get("content").and_then(|c| c.get("parts")).and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                out.push(t.to_string());
            } else if let Some(call) = part.get("functionCall") {
                out.push(call.to_string());
            }
        }
    }
    out.join("\n")
}

/// The text of the last user turn of `contents` (its text parts, newline-joined); empty when there is none.
pub(super) fn last_user_text(contents: Option<&Value>) -> String {
    match contents {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(list)) => list
            .iter()
            .rev()
            .find(|c| c.get("role").and_then(Value::as_str).is_none_or(|r| r == "user"))
            .map(content_text)
            .unwrap_or_default(),
        Some(c @ Value::Object(_)) => content_text(c),
        _ => String::new(),
    }
}

/// The text parts of one `Content`, newline-joined.
pub(super) fn content_text(content: &Value) -> String {
    let parts = content.get("parts").and_then(Value::as_array);
    let texts: Vec<&str> = parts.into_iter().flatten().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
    texts.join("\n")
}

/// Estimated tokens of a list of `Content`s (or one): text and other fields as text, media parts
/// (`inlineData`, `fileData`) at the estimator's flat media price without reading their data.
pub(super) fn contents_tokens(contents: Option<&Value>) -> u64 {
    fn part_tokens(part: &Value) -> u64 {
        if part.get("inlineData").is_some() || part.get("fileData").is_some() {
            MEDIA_TOKENS
        } else {
            value_tokens(part)
        }
    }
    fn content_tokens(c: &Value) -> u64 {
        match c.get("parts") {
            Some(Value::Array(parts)) => parts.iter().map(part_tokens).fold(0, u64::saturating_add),
            _ => value_tokens(c),
        }
    }
    match contents {
        Some(Value::Array(list)) => list.iter().map(content_tokens).fold(0, u64::saturating_add),
        Some(c) => content_tokens(c),
        None => 0,
    }
}

/// Estimated prompt tokens of a `generateContent` request: contents, system instruction and tools.
pub(super) fn prompt_tokens(request: &Value) -> u64 {
    contents_tokens(request.get("contents"))
        .saturating_add(contents_tokens(request.get("systemInstruction")))
        .saturating_add(request.get("tools").map_or(0, value_tokens))
}

/// `generationConfig.candidateCount`, clamped to 1..=8 (the API's own range).
fn candidate_count(request: &Value) -> usize {
    let n = request.get("generationConfig").and_then(|g| g.get("candidateCount")).and_then(Value::as_u64);
    n.unwrap_or(1).clamp(1, 8) as usize
}

/// A synthesized `GenerateContentResponse`: `candidateCount` candidates of the rule's text.
pub(super) fn synthesize(input: &SynthInput<'_>, response_id: String) -> Option<Value> {
    let request = input.request;
    let text = input.answer.text(|| last_user_text(request.get("contents")));
    let n = candidate_count(request);
    if text.len().saturating_mul(n) > input.text_cap {
        return None;
    }
    let prompt = prompt_tokens(request);
    let output = estimate_tokens(&text).saturating_mul(n as u64);
    let candidates: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
                "index": i,
            })
        })
        .collect();
    Some(json!({
        "candidates": candidates,
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt.saturating_add(output),
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        },
        "modelVersion": input.model,
        "responseId": response_id,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::synth::Answer;

    const SIZES: [usize; 4] = [0, 1, 3, 8];
    const MULTIBYTE: &str = "Grüße aus Zürich — 東京タワー 🚀🇳🇴 naïve café 👩‍👩‍👧 e\u{301}";

    fn opts(chunk_chars: usize) -> StreamOptions {
        StreamOptions { include_usage: false, chunk_chars }
    }

    fn body(candidates: Value) -> Value {
        json!({
            "candidates": candidates,
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 30, "totalTokenCount": 60,
                "thoughtsTokenCount": 18, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}]},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "Gx7WaJ2uDdKrnvgP8OHs2Qs",
        })
    }

    fn weather_call() -> Value {
        json!({"functionCall": {"name": "get_weather", "args": {"city": "Oslo", "unit": "°C"}}, "thoughtSignature": "CiQB0e2Kb"})
    }

    fn thinking_answer() -> Value {
        body(json!([{
            "content": {"parts": [
                {"text": "The user wants the weather, so I call the tool.", "thought": true},
                {"text": MULTIBYTE},
                weather_call(),
                {"functionCall": {"name": "get_time", "args": {"tz": "Europe/Oslo"}}},
            ], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}],
            "citationMetadata": {"citationSources": [{"startIndex": 1, "endIndex": 9, "uri": "https://example.com"}]},
        }]))
    }

    fn chunks_of(bytes: &[u8]) -> Vec<Value> {
        recorded_chunks(bytes).unwrap().into_iter().map(|c| Value::Object(c.data)).collect()
    }

    fn assert_round_trip(b: &Value) {
        for size in SIZES {
            for framing in [Framing::Sse, Framing::JsonArray] {
                let bytes = render(b, framing, &opts(size)).unwrap();
                assert_eq!(recorded_framing(&bytes), Some(framing));
                let back = assemble(&bytes).unwrap();
                assert_eq!(&back, b, "size {size} {framing:?}: {}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn text_thoughts_and_function_calls_round_trip_in_both_framings() {
        assert_round_trip(&thinking_answer());
        assert_round_trip(&body(
            json!([{"content": {"parts": [{"text": "The capital of France is Paris."}], "role": "model"}, "finishReason": "STOP", "avgLogprobs": -0.05}]),
        ));
        assert_round_trip(&body(
            json!([{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "MAX_TOKENS"}]),
        ));
        // A thought signature on a text part arrives with its last piece.
        assert_round_trip(&body(
            json!([{"content": {"parts": [{"text": "Signed answer text here.", "thoughtSignature": "sig=="}], "role": "model"}}]),
        ));
        // Vertex AI's `createTime`, a blocked prompt with no candidates, a candidate without content.
        let mut vertex = thinking_answer();
        vertex["createTime"] = json!("2025-11-29T09:00:00.123456Z");
        assert_round_trip(&vertex);
        assert_round_trip(
            &json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}, "modelVersion": "m", "responseId": "r"}),
        );
        assert_round_trip(&json!({"candidates": [], "modelVersion": "m"}));
        assert_round_trip(&body(json!([{"finishReason": "SAFETY", "index": 0}])));
        assert_round_trip(&body(json!([{"content": {"role": "model"}, "finishReason": "STOP"}])));
    }

    #[test]
    fn several_candidates_interleave_and_round_trip() {
        let b = body(json!([
            {"content": {"parts": [{"text": "First answer, in words."}], "role": "model"}, "finishReason": "STOP", "index": 0},
            {"content": {"parts": [weather_call()], "role": "model"}, "finishReason": "STOP", "index": 1},
            {"content": {"parts": [{"text": MULTIBYTE}], "role": "model"}, "finishReason": "STOP", "index": 2},
        ]));
        assert_round_trip(&b);
        let chunks = chunks_of(&render(&b, Framing::Sse, &opts(4)).unwrap());
        let order: Vec<u64> = chunks.iter().map(|c| c["candidates"][0]["index"].as_u64().unwrap()).collect();
        assert_eq!(&order[..3], &[0, 1, 2]);
        // Without indices they are numbered by position so they stay apart.
        let mut plain = b.clone();
        for c in plain["candidates"].as_array_mut().unwrap() {
            c.as_object_mut().unwrap().remove("index");
        }
        let back = assemble(&render(&plain, Framing::JsonArray, &opts(3)).unwrap()).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn grammar_of_each_chunk() {
        let b = thinking_answer();
        let sse = render(&b, Framing::Sse, &opts(8)).unwrap();
        let text = String::from_utf8(sse.clone()).unwrap();
        assert!(text.starts_with("data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"The\",\"thought\":true}],\"role\":\"model\"},\"index\":0}]"), "{text}");
        assert!(text.ends_with("}\r\n\r\n") && !text.contains("[DONE]"));
        let chunks = chunks_of(&sse);
        for c in &chunks {
            assert_eq!(c["modelVersion"], "gemini-2.5-flash");
            assert_eq!(c["responseId"], b["responseId"]);
            assert_eq!(c["candidates"].as_array().unwrap().len(), 1);
            assert_eq!(c["candidates"][0]["content"]["parts"].as_array().unwrap().len(), 1);
        }
        let last = chunks.last().unwrap();
        assert_eq!(last["usageMetadata"], b["usageMetadata"]);
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(last["candidates"][0]["content"]["parts"][0]["functionCall"]["name"], "get_time");
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.get("usageMetadata").is_none() && c["candidates"][0].get("finishReason").is_none()));
        // A function call arrives whole, with its signature.
        assert!(chunks.iter().any(|c| c["candidates"][0]["content"]["parts"][0] == weather_call()));
        let array = String::from_utf8(render(&b, Framing::JsonArray, &opts(8)).unwrap()).unwrap();
        assert!(array.starts_with("[{") && array.ends_with("}]") && array.contains("},\r\n{"));
        let parsed: Vec<Value> = serde_json::from_str(&array).unwrap();
        assert_eq!(parsed, chunks);
    }

    #[test]
    fn big_fields_are_sent_once_whatever_the_number_of_chunks() {
        let big = "x".repeat(10_000);
        let mut b = body(json!([{"content": {"parts": [{"text": "word ".repeat(200)}], "role": "model", "extra": big},
            "finishReason": "STOP", "groundingMetadata": {"webSearchQueries": [big]}}]));
        b["serverSideField"] = json!(big);
        b["modelVersion"] = json!(big);
        let sse = render(&b, Framing::Sse, &opts(8)).unwrap();
        assert!(chunks_of(&sse).len() > 100);
        assert_eq!(String::from_utf8(sse.clone()).unwrap().matches(&big).count(), 4);
        assert_eq!(assemble(&sse).unwrap(), b);
    }

    #[test]
    fn recordings_are_reframed_only_when_the_client_asks_for_the_other_framing() {
        let b = thinking_answer();
        let sse = render(&b, Framing::Sse, &opts(5)).unwrap();
        let array = render(&b, Framing::JsonArray, &opts(5)).unwrap();
        assert_eq!(reframe(&sse, Framing::Sse), None);
        assert_eq!(reframe(&array, Framing::JsonArray), None);
        assert_eq!(reframe(&sse, Framing::JsonArray).unwrap(), array);
        assert_eq!(reframe(&array, Framing::Sse).unwrap(), sse);
        assert_eq!(reframe(b"not a stream", Framing::Sse), None);
    }

    #[test]
    fn assembles_live_like_recordings() {
        // Google's JSON-array framing: pretty-printed elements, every chunk with running usage.
        let array = "[{\n  \"candidates\": [\n    {\n      \"content\": {\n        \"parts\": [\n          {\n            \"text\": \"The capital\"\n          }\n        ],\n        \"role\": \"model\"\n      }\n    }\n  ],\n  \"usageMetadata\": {\n    \"promptTokenCount\": 8,\n    \"totalTokenCount\": 8\n  },\n  \"modelVersion\": \"gemini-2.0-flash\",\n  \"responseId\": \"abc\"\n}\n,\r\n{\n  \"candidates\": [\n    {\n      \"content\": {\n        \"parts\": [\n          {\n            \"text\": \" of France is Paris.\"\n          }\n        ],\n        \"role\": \"model\"\n      },\n      \"finishReason\": \"STOP\"\n    }\n  ],\n  \"usageMetadata\": {\n    \"promptTokenCount\": 8,\n    \"candidatesTokenCount\": 7,\n    \"totalTokenCount\": 15\n  },\n  \"modelVersion\": \"gemini-2.0-flash\",\n  \"responseId\": \"abc\"\n}\n]";
        let want = json!({
            "candidates": [{"content": {"parts": [{"text": "The capital of France is Paris."}], "role": "model"}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 7, "totalTokenCount": 15},
            "modelVersion": "gemini-2.0-flash",
            "responseId": "abc",
        });
        assert_eq!(assemble(array.as_bytes()).unwrap(), want);
        // The same as SSE, CRLF-separated, and as LF-separated SSE.
        let sse: String = chunks_of(array.as_bytes()).iter().map(|c| format!("data: {c}\r\n\r\n")).collect();
        assert_eq!(assemble(sse.as_bytes()).unwrap(), want);
        assert_eq!(assemble(sse.replace("\r\n", "\n").as_bytes()).unwrap(), want);
        // Two text parts in one chunk stay two parts; a signature closes a text part.
        let two = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"},{\"text\":\"b\"}],\"role\":\"model\"}}]}\n\n\
                   data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"c\",\"thoughtSignature\":\"s\"}],\"role\":\"model\"}}]}\n\n\
                   data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"d\"}],\"role\":\"model\"}}]}\n\n";
        let got = assemble(two.as_bytes()).unwrap();
        assert_eq!(
            got["candidates"][0]["content"]["parts"],
            json!([{"text": "a"}, {"text": "bc", "thoughtSignature": "s"}, {"text": "d"}])
        );
    }

    #[test]
    fn bad_recordings_are_typed_errors() {
        assert!(matches!(assemble(b""), Err(StreamError::MissingEvent { .. })));
        assert!(matches!(assemble(b"[]"), Err(StreamError::MissingEvent { .. })));
        assert!(matches!(assemble(b"[{\"candidates\": [] }, 1]"), Err(StreamError::BadEvent { index: 1, .. })));
        assert!(matches!(assemble(b"[{\"candidates\": [] }"), Err(StreamError::BadEvent { .. })));
        assert!(matches!(assemble(b"data: {\"candidates\": 3}\n\n"), Err(StreamError::BadEvent { .. })));
        assert!(matches!(
            assemble(b"data: {\"candidates\": [{\"content\": []}]}\n\n"),
            Err(StreamError::BadEvent { .. })
        ));
        let err = assemble(b"data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}\n\n");
        assert!(matches!(err, Err(StreamError::Upstream { message, .. }) if message == "The model is overloaded."));
        assert!(matches!(assemble(&[0xff, 0xfe]), Err(StreamError::BadEvent { .. })));
        let e = render(&json!({"candidates": [{"content": {"parts": [{"text": 3}]}}]}), Framing::Sse, &opts(8))
            .unwrap_err();
        assert_eq!(e.to_string(), "gemini.generate_content: cannot stream this response body: `candidates[0].content.parts[0].text` must be a string");
        assert!(render(&json!([1]), Framing::Sse, &opts(8)).is_err());
    }

    #[test]
    fn mutated_streams_never_panic() {
        let b = thinking_answer();
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let junk = ["\n", "\r", "[", "]", "{", "}", ",", "\"", "data: ", "null", "é", "\u{feff}"];
        for framing in [Framing::Sse, Framing::JsonArray] {
            let text = String::from_utf8(render(&b, framing, &opts(4)).unwrap()).unwrap();
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            for &cut in bounds.iter().step_by(5) {
                let _ = assemble(&text.as_bytes()[..cut]);
                let _ = reframe(&text.as_bytes()[..cut], Framing::Sse);
            }
            for _ in 0..300 {
                let mut s = text.clone();
                let here: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
                let at = here[next() % here.len()];
                s.insert_str(at, junk[next() % junk.len()]);
                let _ = assemble(s.as_bytes());
                let _ = reframe(s.as_bytes(), Framing::JsonArray);
            }
        }
    }

    #[test]
    fn synthesized_answers_have_the_live_shape() {
        let request = json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Earlier question"}]},
                {"role": "model", "parts": [{"text": "Earlier answer"}]},
                {"role": "user", "parts": [{"text": "What is the capital of France?"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]},
            ],
            "systemInstruction": {"parts": [{"text": "Be terse."}]},
            "generationConfig": {"candidateCount": 2},
        });
        let echo = Answer::Echo;
        let input = SynthInput {
            request: &request,
            model: "gemini-2.0-flash",
            answer: &echo,
            dimensions: None,
            now_secs: 0,
            text_cap: crate::limits::MAX_TEXT_BYTES,
            answer_budget: crate::limits::ANSWER_BUDGET,
        };
        let out = synthesize(&input, "r1".into()).unwrap();
        assert_eq!(out["candidates"].as_array().unwrap().len(), 2);
        assert_eq!(
            out["candidates"][1]["content"],
            json!({"parts": [{"text": "What is the capital of France?"}], "role": "model"})
        );
        assert_eq!(out["candidates"][1]["index"], 1);
        assert_eq!(out["candidates"][0]["finishReason"], "STOP");
        assert_eq!((out["modelVersion"].as_str(), out["responseId"].as_str()), (Some("gemini-2.0-flash"), Some("r1")));
        let u = &out["usageMetadata"];
        let (p, c) = (u["promptTokenCount"].as_u64().unwrap(), u["candidatesTokenCount"].as_u64().unwrap());
        assert!(p > MEDIA_TOKENS && c > 0);
        assert_eq!(u["totalTokenCount"].as_u64().unwrap(), p + c);
        // It streams and assembles back like any answer.
        assert_eq!(assemble(&render(&out, Framing::Sse, &opts(3)).unwrap()).unwrap(), out);
        assert_eq!(output_text(&out), "What is the capital of France?\nWhat is the capital of France?");
    }
}
