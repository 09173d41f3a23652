//! Server-Sent Events, as the SSE-speaking APIs write and read them: a writer that serializes events in the
//! live APIs' key order, and the WHATWG event-stream reader used to assemble recorded streams.

use serde_json::{Map, Value};

use crate::dialect::Operation;
use crate::stream::StreamError;

/// Keys first in this order when serializing (the live APIs' order, roughly); the rest alphabetically.
const KEY_ORDER: &[&str] = &[
    "type",
    "id",
    "object",
    "created",
    "created_at",
    "sequence_number",
    "response",
    "model",
    "role",
    "item_id",
    "index",
    "output_index",
    "content_index",
    "summary_index",
    "annotation_index",
    "status",
    "service_tier",
    "system_fingerprint",
    "choices",
    "delta",
    "message",
    "content_block",
    "part",
    "item",
    "text",
    "content",
    "refusal",
    "name",
    "call_id",
    "arguments",
    "input",
    "tool_calls",
    "function",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "stop_sequence",
    "usage",
];

/// A chat tool call (delta) reads `index, id, type, function`, unlike events where `type` leads.
const TOOL_CALL_ORDER: &[&str] = &["index", "id", "type", "function", "custom"];

fn key_rank(order: &[&str], k: &str) -> usize {
    order.iter().position(|x| *x == k).unwrap_or(order.len())
}

/// Compact JSON with [`KEY_ORDER`] key order. (serde_json's map is sorted, which reads oddly in a stream.)
pub(crate) fn write_json(out: &mut String, v: &Value) {
    write_json_in(out, v, KEY_ORDER);
}

/// Compact JSON with the keys of every object in `key_order` first (an API's own order), the rest
/// alphabetically.
pub(crate) fn write_json_in(out: &mut String, v: &Value, key_order: &[&str]) {
    match v {
        Value::Object(m) => {
            let order = if m.contains_key("index") && m.contains_key("id") { TOOL_CALL_ORDER } else { key_order };
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by_key(|(k, _)| key_rank(order, k));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_json_in(out, v, key_order);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_in(out, item, key_order);
            }
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

/// An SSE stream being written. It stops growing at [`STREAM_CAP`]; [`Sse::finish`] then reports
/// [`StreamError::TooLarge`] instead of a stream, never a trap.
#[derive(Default)]
pub(crate) struct Sse {
    out: String,
    seq: u64,
    /// The stream went over the cap and stopped growing.
    over: bool,
}

/// The longest rendered stream: a third of the answer budget (the text and the buffer it grows from).
pub(crate) const STREAM_CAP: usize = (crate::limits::ANSWER_BUDGET / 3) as usize;

impl Sse {
    /// A `data:` event.
    pub(crate) fn data(&mut self, v: &Value) {
        if self.over || self.out.len() > STREAM_CAP {
            self.over = true;
            return;
        }
        self.out.push_str("data: ");
        write_json(&mut self.out, v);
        self.out.push_str("\n\n");
    }

    /// An `event:` + `data:` event.
    pub(crate) fn named(&mut self, name: &str, v: &Value) {
        self.out.push_str("event: ");
        self.out.push_str(name);
        self.out.push('\n');
        self.data(v);
    }

    /// A responses-API event: `type` and the next `sequence_number` are added to `fields`.
    pub(crate) fn sequenced(&mut self, ty: &str, mut fields: Map<String, Value>) {
        fields.insert("type".into(), ty.into());
        fields.insert("sequence_number".into(), self.seq.into());
        self.seq = self.seq.saturating_add(1);
        self.named(ty, &Value::Object(fields));
    }

    /// Ends an OpenAI chunk stream with `data: [DONE]`.
    pub(crate) fn done(mut self, op: Operation) -> Result<String, StreamError> {
        self.out.push_str("data: [DONE]\n\n");
        self.finish(op)
    }

    /// The stream, or [`StreamError::TooLarge`] when it went over the cap.
    pub(crate) fn finish(self, op: Operation) -> Result<String, StreamError> {
        if self.over {
            return Err(StreamError::TooLarge { op, limit: STREAM_CAP });
        }
        Ok(self.out)
    }
}

/// Heuristic: does `text` look like an SSE stream? True when its first line that is neither blank nor a
/// comment is a `data:` or `event:` field.
pub fn is_sse(text: &str) -> bool {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for line in lines(text).take(256) {
        if line.trim().is_empty() || line.starts_with(':') {
            continue;
        }
        return line.starts_with("data:") || line.starts_with("event:");
    }
    false
}

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub(crate) name: Option<String>,
    pub(crate) data: String,
    pub(crate) line: usize,
}

/// Lines split on `\r\n`, `\n` or `\r`.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r'))
}

/// The SSE event stream interpretation (WHATWG), lenient about a missing final blank line.
pub(crate) fn parse_sse(text: &str) -> Vec<RawEvent> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut events = Vec::new();
    let mut name: Option<String> = None;
    let mut data = String::new();
    let mut has_data = false;
    let mut start: Option<usize> = None;
    for (i, line) in lines(text).enumerate() {
        if line.is_empty() {
            if has_data {
                events.push(RawEvent {
                    name: name.take().filter(|n| !n.is_empty()),
                    data: std::mem::take(&mut data),
                    line: start.unwrap_or(i + 1),
                });
            }
            name = None;
            data.clear();
            has_data = false;
            start = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        start.get_or_insert(i + 1);
        match field {
            "event" => name = Some(value.to_string()),
            "data" => {
                if has_data {
                    data.push('\n');
                }
                data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    if has_data {
        events.push(RawEvent { name: name.filter(|n| !n.is_empty()), data, line: start.unwrap_or(1) });
    }
    events
}

/// An event's position, the event, and its data parsed as a JSON object.
pub(crate) type JsonEvent<'a> = (usize, &'a RawEvent, Map<String, Value>);

/// Parses each event's data as a JSON object. Stops at `[DONE]`.
pub(crate) fn json_events(op: Operation, events: &[RawEvent]) -> Result<Vec<JsonEvent<'_>>, StreamError> {
    let mut out = Vec::with_capacity(events.len());
    for (index, ev) in events.iter().enumerate() {
        if ev.data.trim() == "[DONE]" {
            break;
        }
        let fail = |reason: String| StreamError::BadEvent {
            op,
            index,
            event: ev.name.clone().unwrap_or_else(|| "message".into()),
            line: ev.line,
            reason,
        };
        match serde_json::from_str::<Value>(&ev.data) {
            Ok(Value::Object(m)) => out.push((index, ev, m)),
            Ok(_) => return Err(fail("the data is not a JSON object".into())),
            Err(e) => return Err(fail(format!("the data is not valid JSON: {e}"))),
        }
    }
    Ok(out)
}

/// A [`StreamError::BadEvent`] naming the event by its `event:` name, else its data's `type`.
pub(crate) fn event_error(
    op: Operation,
    index: usize,
    ev: &RawEvent,
    data: &Map<String, Value>,
    reason: impl Into<String>,
) -> StreamError {
    StreamError::BadEvent {
        op,
        index,
        event: ev
            .name
            .clone()
            .or_else(|| data.get("type").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "message".into()),
        line: ev.line,
        reason: reason.into(),
    }
}

/// A recorded stream as text; SSE is UTF-8.
pub(crate) fn text(op: Operation, recorded: &[u8]) -> Result<&str, StreamError> {
    std::str::from_utf8(recorded).map_err(|e| StreamError::BadEvent {
        op,
        index: 0,
        event: "stream".into(),
        line: 1,
        reason: format!("the recorded stream is not UTF-8 text: {e}"),
    })
}

/// Is the last event of an SSE stream the one named `event` (by its `event:` field or its data's `type`), or
/// `[DONE]` when `event` is `[DONE]`? For recorders: a stream cut short lacks the API's last event.
pub(crate) fn ends_with(op: Operation, recorded: &[u8], event: &'static str) -> Result<(), StreamError> {
    let events = parse_sse(text(op, recorded)?);
    let last = events.last();
    let named = last.is_some_and(|ev| {
        ev.data.trim() == event
            || ev.name.as_deref() == Some(event)
            || serde_json::from_str::<Value>(&ev.data)
                .ok()
                .is_some_and(|v| v.get("type").and_then(Value::as_str) == Some(event))
    });
    if named {
        Ok(())
    } else {
        Err(StreamError::MissingEvent { op, event })
    }
}

/// The recorded stream reports an API error.
pub(crate) fn upstream(op: Operation, error: &Value) -> StreamError {
    let message = error.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| error.to_string());
    StreamError::Upstream { op, message }
}
