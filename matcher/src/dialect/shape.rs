//! Reading and building API bodies: typed field access with errors that name the field, text pieces as a
//! stream sends them, and the SDKs' delta accumulation used to assemble recorded streams.

use serde_json::{Map, Value};

use crate::dialect::Operation;
use crate::stream::StreamError;

/// A [`StreamError::BadBody`].
pub(crate) fn bad(op: Operation, field: impl Into<String>, reason: impl Into<String>) -> StreamError {
    StreamError::BadBody { op, field: field.into(), reason: reason.into() }
}

/// `prefix.key`, or `key` at the top.
pub(crate) fn path_of(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

pub(crate) fn as_object<'a>(op: Operation, v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, StreamError> {
    v.as_object().ok_or_else(|| bad(op, if path.is_empty() { "(body)" } else { path }, "must be a JSON object"))
}

pub(crate) fn req_str<'a>(
    op: Operation,
    o: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<&'a str, StreamError> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s),
        None => Err(bad(op, path_of(at, key), "is missing")),
        Some(_) => Err(bad(op, path_of(at, key), "must be a string")),
    }
}

pub(crate) fn opt_str<'a>(
    op: Operation,
    o: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'a str>, StreamError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(op, path_of(at, key), "must be a string or null")),
    }
}

pub(crate) fn req_array<'a>(
    op: Operation,
    o: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<&'a [Value], StreamError> {
    match o.get(key) {
        Some(Value::Array(a)) => Ok(a),
        None => Err(bad(op, path_of(at, key), "is missing")),
        Some(_) => Err(bad(op, path_of(at, key), "must be an array")),
    }
}

pub(crate) fn opt_array<'a>(
    op: Operation,
    o: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<&'a [Value], StreamError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(bad(op, path_of(at, key), "must be an array or null")),
    }
}

/// Copies the `keys` present in `from` into `to`.
pub(crate) fn copy_keys(from: &Map<String, Value>, to: &mut Map<String, Value>, keys: &[&str]) {
    for k in keys {
        if let Some(v) = from.get(*k) {
            to.insert((*k).to_string(), v.clone());
        }
    }
}

pub(crate) fn map<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

pub(crate) fn obj<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(map(entries))
}

/// Splits `text` into pieces of about `max` chars, always on char boundaries. A piece also ends before
/// whitespace that follows a word, so the whitespace leads the next piece, like model tokens do.
pub(crate) fn pieces(text: &str, max: usize) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    if max == 0 {
        return vec![text];
    }
    let mut out = Vec::new();
    let (mut start, mut n, mut has_word) = (0usize, 0usize, false);
    for (i, c) in text.char_indices() {
        if i > start && (n >= max || (c.is_whitespace() && has_word)) {
            out.extend(text.get(start..i));
            start = i;
            n = 0;
            has_word = false;
        }
        n += 1;
        has_word |= !c.is_whitespace();
    }
    out.extend(text.get(start..));
    out
}

/// Choices sorted by their `index` (position when absent), with their position in the body.
pub(crate) fn sorted_choices(choices: &[Value]) -> Vec<(u64, usize, &Value)> {
    let mut v: Vec<(u64, usize, &Value)> = choices
        .iter()
        .enumerate()
        .map(|(pos, c)| (c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64), pos, c))
        .collect();
    v.sort_by_key(|(index, pos, _)| (*index, *pos));
    v
}

/// Round-robin over the per-choice entry lists, as the live APIs interleave choices when `n > 1`.
pub(crate) fn interleave(lists: Vec<Vec<Value>>) -> Vec<Value> {
    let mut iters: Vec<std::vec::IntoIter<Value>> = lists.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for it in iters.iter_mut() {
            out.extend(it.next());
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Logprob entries whose tokens concatenate exactly to `text`: then each token is one streamed piece.
pub(crate) fn aligned_tokens<'a>(text: &str, entries: &'a [Value]) -> Option<Vec<(&'a str, &'a Value)>> {
    let mut joined = String::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let t = e.get("token")?.as_str()?;
        joined.push_str(t);
        out.push((t, e));
    }
    (joined == text && !out.is_empty()).then_some(out)
}

/// The SDKs' delta accumulation: strings concatenate, objects merge, lists of `index`ed objects merge by
/// index, other lists extend, `index`/`type` and scalars are replaced.
pub(crate) fn accumulate(acc: &mut Map<String, Value>, delta: &Map<String, Value>) {
    for (k, dv) in delta {
        let unset = acc.get(k).is_none_or(Value::is_null);
        if unset {
            let v = match dv {
                Value::Array(items) if has_indexed(items) => {
                    let mut list = Vec::new();
                    merge_indexed(&mut list, items);
                    Value::Array(list)
                }
                other => other.clone(),
            };
            acc.insert(k.clone(), v);
            continue;
        }
        let Some(av) = acc.get_mut(k) else { continue };
        if k == "index" || k == "type" {
            *av = dv.clone();
            continue;
        }
        match (av, dv) {
            (Value::String(a), Value::String(d)) => a.push_str(d),
            (Value::Object(a), Value::Object(d)) => accumulate(a, d),
            (Value::Array(a), Value::Array(d)) => {
                if has_indexed(d) {
                    merge_indexed(a, d);
                } else {
                    a.extend(d.iter().cloned());
                }
            }
            (av, dv) => {
                if !dv.is_null() {
                    *av = dv.clone();
                }
            }
        }
    }
}

fn has_indexed(items: &[Value]) -> bool {
    items.iter().any(|e| e.get("index").is_some())
}

fn merge_indexed(acc: &mut Vec<Value>, delta: &[Value]) {
    for entry in delta {
        let idx = entry.get("index").filter(|i| i.is_number());
        let existing = idx.and_then(|i| acc.iter_mut().find(|a| a.get("index") == Some(i)));
        if let (Some(Value::Object(a)), Value::Object(d)) = (existing, entry) {
            accumulate(a, d);
            continue;
        }
        acc.push(entry.clone());
    }
}

/// Appends a logprobs delta: lists extend, other fields are replaced.
pub(crate) fn merge_logprobs(acc: &mut Value, delta: &Value) {
    if delta.is_null() {
        return;
    }
    match (acc, delta) {
        (Value::Object(a), Value::Object(d)) => {
            for (k, dv) in d {
                match (a.get_mut(k), dv) {
                    (Some(Value::Array(av)), Value::Array(items)) => av.extend(items.iter().cloned()),
                    (Some(_), Value::Null) => {}
                    (_, dv) => {
                        a.insert(k.clone(), dv.clone());
                    }
                }
            }
        }
        (acc, delta) => *acc = delta.clone(),
    }
}

/// Appends `piece` to the string field `key` of `block` (creating it).
pub(crate) fn append(block: &mut Map<String, Value>, key: &str, piece: &str) {
    match block.get_mut(key) {
        Some(Value::String(s)) => s.push_str(piece),
        _ => {
            block.insert(key.into(), piece.into());
        }
    }
}

/// The request's value for `key`, or `default` when absent or null.
pub(crate) fn echoed(request: &Value, key: &str, default: Value) -> Value {
    match request.get(key) {
        Some(v) if !v.is_null() => v.clone(),
        _ => default,
    }
}

/// The text of a message `content`: a string, or its text parts joined by newlines.
pub(crate) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(m) => {
                        let ty = m.get("type").and_then(Value::as_str).unwrap_or("text");
                        if matches!(ty, "text" | "input_text" | "output_text") {
                            m.get("text").and_then(Value::as_str)
                        } else {
                            None
                        }
                    }
                    _ => None,
                })
                .collect();
            texts.join("\n")
        }
        _ => String::new(),
    }
}

/// Is this message or item from the user?
pub(crate) fn is_user(item: &Value) -> bool {
    item.get("role").and_then(Value::as_str) == Some("user")
}

/// The last user message's text of a chat-style `messages` array; empty when there is none.
pub(crate) fn last_user_text(messages: Option<&Value>) -> String {
    let Some(messages) = messages.and_then(Value::as_array) else {
        return String::new();
    };
    messages.iter().rev().find(|m| is_user(m)).map(|m| content_text(m.get("content"))).unwrap_or_default()
}

/// A scalar as text (numbers, booleans); empty for null and containers.
pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// The generated text of an answer: every string under the fields that carry model output (`choices`,
/// `message`, `content`, `text`, `output`, `arguments`, `tool_calls`, `function`, `input`), newline-joined.
pub(crate) fn generated_text(v: &Value) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(s);
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => m
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "choices"
                            | "message"
                            | "content"
                            | "text"
                            | "output"
                            | "arguments"
                            | "tool_calls"
                            | "function"
                            | "input"
                    )
                })
                .for_each(|(_, x)| walk(x, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    walk(v, &mut out);
    out
}
