//! The memory cost model: what a request body will cost the VM once parsed, and what an answer will cost
//! once rendered, predicted *before* the memory is spent, so that what is over [`REQUEST_BUDGET`] or
//! [`ANSWER_BUDGET`] gets a typed error instead of trapping the VM.
//!
//! # Request bodies
//!
//! [`scan`] reads the body once, without allocating: strings are skipped (escapes honoured, eight bytes at a
//! time), and every value, member, string and number is priced as serde_json (with `arbitrary_precision`,
//! no `preserve_order`) will allocate it for [`serde_json::Value`]. The sizes come from the compiling
//! target (`size_of::<Value>()` is 16 bytes on wasm32, 32 natively):
//!
//! - an array of `k` values: a `Vec<Value>` buffer of `max(4, k.next_power_of_two())` slots (it grows by
//!   doubling from 4), plus, once, the buffer it grew from (both live while it grows);
//! - an object of `m` members: `BTreeMap` nodes of 11 keys and values (a leaf: parent pointer, two `u16`,
//!   11 `String`s, 11 `Value`s; an internal node adds 12 edges); every node but the root holds at least 5
//!   entries, so at most `(m - 1) / 5 + 1` nodes, of which at most `(m - 1) / 30 + 1` internal;
//! - a string or key of `r` raw bytes: at most `r` bytes (escapes only shrink it); the longest escaped
//!   string also costs serde_json's scratch buffer, up to 3× its length while it grows;
//! - a number of `d` digits: its text, in a buffer of `max(8, d.next_power_of_two())` bytes, and up to 3×
//!   that for the longest number while it is scanned and canonicalized;
//! - every allocation rounded up as the allocator does ([`chunk`]: dlmalloc on wasm32);
//! - keying: a sort buffer of five pointers per object member, and the canonical text of a small body.
//!
//! [`request_cost`] adds the body copy, a second tree when normalization has `ignore_fields` or scrubbers
//! (they normalize a copy) and the synthesizer's copies of request text and token ids when `synthesize`
//! rules are configured. `tests/memory_budget.rs` checks that the peak memory allocated while deciding
//! generated hostile bodies stays under the prediction, natively and on wasm32.
//!
//! A body of at most [`scan_free_len`] bytes can't reach the budget whatever it holds (no byte costs more
//! than one internal map node), so it is not scanned: the hit path of ordinary requests is unchanged.
//!
//! # Answers
//!
//! [`answer_cost`] prices a built answer body: its tree (walked with the same model), its serialized
//! length, and for a streamed answer the events of the SSE grammars (one per text piece, a few per array
//! element), each carrying the envelope of the chunk, plus the intermediate trees the renderers hold. The
//! rendered text grows by doubling, so it is counted 3× (old and new buffer while it grows).

use std::mem::size_of;

use serde_json::Value;

use crate::limits::{ANSWER_BUDGET, KEEP_CANONICAL, MAX_DEPTH, REQUEST_BUDGET};
use crate::stream::StreamOptions;

const PTR: u64 = size_of::<usize>() as u64;
const VALUE: u64 = size_of::<Value>() as u64;
const STRING: u64 = size_of::<String>() as u64;
/// A `BTreeMap<String, Value>` leaf node: parent pointer, `parent_idx` and `len` (`u16`), 11 keys, 11 values.
const LEAF: u64 = round_up(PTR + 4 + 11 * STRING + 11 * VALUE, PTR);
/// An internal node: a leaf plus 12 edges.
const INTERNAL: u64 = LEAF + 12 * PTR;
/// One entry of the sort buffers of canonical JSON and miss diagnostics (a key and a value reference).
const ENTRY: u64 = 5 * PTR;

const fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// The bytes one allocation of `n` bytes takes from the heap: dlmalloc's chunk on wasm32 (a 4-byte header,
/// 8-byte granularity, 16 bytes at least), a 64-bit malloc's natively.
pub const fn chunk(n: u64) -> u64 {
    let (header, align, min) = if PTR == 4 { (4, 8, 16) } else { (8, 16, 32) };
    if n == 0 {
        return 0;
    }
    let c = round_up(n + header, align);
    if c < min {
        min
    } else {
        c
    }
}

/// Heap bytes of a `Vec<Value>` that grew by doubling to hold `k` values.
fn vec_cost(k: u64) -> u64 {
    if k == 0 {
        0
    } else {
        chunk(k.max(4).next_power_of_two().saturating_mul(VALUE))
    }
}

/// Heap bytes of the nodes of a `BTreeMap` of `m` entries (worst case occupancy).
fn map_cost(m: u64) -> u64 {
    match m {
        0 => 0,
        1..=11 => chunk(LEAF),
        _ => {
            let nodes = (m - 1) / 5 + 1;
            let internal = (m - 1) / 30 + 1;
            nodes.saturating_mul(chunk(LEAF)).saturating_add(internal.saturating_mul(chunk(INTERNAL) - chunk(LEAF)))
        }
    }
}

/// Heap bytes of a number's text.
fn number_cost(digits: u64) -> u64 {
    chunk(digits.max(8).next_power_of_two())
}

/// What a JSON body holds, as far as its parsed cost goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Values of every kind (containers, strings, numbers, literals), not counting object keys.
    pub values: u64,
    /// Object members.
    pub members: u64,
    /// Numbers.
    pub numbers: u64,
    /// Bytes of every string and key (decoded, at most).
    pub string_bytes: u64,
    /// Heap bytes of the parsed tree, allocator overhead included.
    pub tree: u64,
    /// The largest array buffer, in bytes (its predecessor is live while it grows).
    pub largest_array: u64,
    /// Length of the longest string or key holding an escape.
    pub longest_escaped: u64,
    /// Length of the longest key.
    pub longest_key: u64,
    /// Digits of the longest number.
    pub longest_number: u64,
}

/// How a request will be processed, as far as its cost goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Processing {
    /// Normalization drops only the always-ignored top-level fields (keys are written from the tree itself);
    /// otherwise it normalizes a copy of the tree.
    pub plain: bool,
    /// `synthesize` rules are configured: they copy request text and token ids.
    pub synthesizes: bool,
}

/// One open array or object.
#[derive(Clone, Copy, Default)]
struct Frame {
    object: bool,
    /// Values (arrays) or members (objects) so far.
    count: u64,
    /// An object expects a key next.
    expect_key: bool,
}

/// Scans a JSON body without allocating. It does not validate: whatever serde_json would reject, it still
/// prices the prefix serde_json reads before failing (and usually more). It stops at the nesting depth where
/// serde_json fails ([`MAX_DEPTH`]).
pub fn scan(body: &[u8]) -> Shape {
    let mut s = Shape::default();
    let mut stack = [Frame::default(); MAX_DEPTH];
    let mut depth = 0usize;
    let mut i = 0usize;
    let n = body.len();
    // A value starts: counted in its parent (arrays) and as a value.
    fn value_in(stack: &mut [Frame], depth: usize, s: &mut Shape) {
        s.values += 1;
        if let Some(f) = depth.checked_sub(1).and_then(|d| stack.get_mut(d)) {
            if !f.object {
                f.count += 1;
            }
        }
    }
    fn close(f: Frame, s: &mut Shape) {
        if f.object {
            s.tree = s.tree.saturating_add(map_cost(f.count));
        } else {
            let buffer = vec_cost(f.count);
            s.tree = s.tree.saturating_add(buffer);
            s.largest_array = s.largest_array.max(buffer);
        }
    }
    while i < n {
        let Some(&b) = body.get(i) else { break };
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | b':' => i += 1,
            b',' => {
                if let Some(f) = depth.checked_sub(1).and_then(|d| stack.get_mut(d)) {
                    f.expect_key = f.object;
                }
                i += 1;
            }
            b'[' | b'{' => {
                if depth + 1 >= MAX_DEPTH {
                    // serde_json fails here ("recursion limit exceeded"): what it built so far is priced below.
                    break;
                }
                value_in(&mut stack, depth, &mut s);
                if let Some(f) = stack.get_mut(depth) {
                    *f = Frame { object: b == b'{', count: 0, expect_key: b == b'{' };
                }
                depth += 1;
                i += 1;
            }
            b']' | b'}' => {
                let Some(d) = depth.checked_sub(1) else { break };
                let Some(&f) = stack.get(d) else { break };
                if f.object != (b == b'}') {
                    break; // mismatched: serde_json fails here
                }
                close(f, &mut s);
                depth = d;
                i += 1;
            }
            b'"' => {
                let (len, escaped, next) = skip_string(body, i + 1);
                let key = depth.checked_sub(1).and_then(|d| stack.get_mut(d)).filter(|f| f.object && f.expect_key);
                match key {
                    Some(f) => {
                        f.count += 1;
                        f.expect_key = false;
                        s.members += 1;
                        s.longest_key = s.longest_key.max(len);
                    }
                    None => value_in(&mut stack, depth, &mut s),
                }
                s.string_bytes = s.string_bytes.saturating_add(len);
                s.tree = s.tree.saturating_add(chunk(len));
                if escaped {
                    s.longest_escaped = s.longest_escaped.max(len);
                }
                i = next;
            }
            _ => {
                // A number, a literal or garbage: up to the next delimiter.
                let start = i;
                while let Some(&c) = body.get(i) {
                    if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' | b'[' | b']' | b'{' | b'}' | b'"') {
                        break;
                    }
                    i += 1;
                }
                let len = (i - start) as u64;
                value_in(&mut stack, depth, &mut s);
                if !matches!(body.get(start..i), Some(b"true" | b"false" | b"null")) {
                    s.numbers += 1;
                    s.tree = s.tree.saturating_add(number_cost(len));
                    s.longest_number = s.longest_number.max(len);
                }
            }
        }
    }
    // Containers still open where the body ends or serde_json fails are built up to there.
    for f in stack.iter().take(depth) {
        close(*f, &mut s);
    }
    s
}

/// Skips a string's contents from `i` (just after the opening quote): at most how many bytes it decodes to
/// (a `\uXXXX` escape to at most 3, another escape to 1), whether it holds an escape, and the index after its
/// closing quote (or the end of the body).
fn skip_string(body: &[u8], start: usize) -> (u64, bool, usize) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has = |x: u64, byte: u8| {
        let v = x ^ (ONES * u64::from(byte));
        v.wrapping_sub(ONES) & !v & HIGHS != 0
    };
    let mut i = start;
    let mut escaped = false;
    let mut saved = 0u64;
    loop {
        // Eight bytes at a time while none is a quote or a backslash (long prompts are most of a body).
        while let Some(word) = body.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
            let x = u64::from_le_bytes(word);
            if has(x, b'"') || has(x, b'\\') {
                break;
            }
            i += 8;
        }
        match body.get(i) {
            None => return ((i - start) as u64 - saved, escaped, i),
            Some(b'"') => return ((i - start) as u64 - saved, escaped, i + 1),
            Some(b'\\') => {
                escaped = true;
                saved += if body.get(i + 1) == Some(&b'u') { 3 } else { 1 };
                i += 2;
            }
            Some(_) => i += 1,
        }
    }
}

/// Bytes for keying a small body by its canonical text (at most [`KEEP_CANONICAL`] of it, in a buffer that
/// grows by doubling), SHA-256's buffer, and slack for the fixed-size parts of deciding.
const FIXED: u64 = 2 * KEEP_CANONICAL as u64 + (64 << 10);

/// The predicted peak memory of deciding a request whose body has this shape and length: the body copy, the
/// tree (twice when normalization works on a copy), and the largest transient buffers of parsing, keying and
/// synthesizing.
pub fn request_cost(body_len: usize, s: &Shape, p: Processing) -> u64 {
    let tree = if p.plain { s.tree } else { s.tree.saturating_mul(2) };
    let parse = s.largest_array / 2
        + if s.longest_escaped > 0 { 3 * s.longest_escaped + 8 } else { 0 }
        + 3 * number_cost(s.longest_number);
    let key = s.members.saturating_mul(ENTRY) + 3 * number_cost(s.longest_number) + 3 * s.longest_key;
    // Echo text, prompts and inputs are copied; token ids become strings joined by commas.
    let synth = if p.synthesizes {
        s.string_bytes.saturating_mul(2) + s.numbers.saturating_mul(STRING + chunk(24) + 24)
    } else {
        0
    };
    (body_len as u64).saturating_add(tree).saturating_add(parse + key + synth).saturating_add(FIXED)
}

/// The most a body of `len` bytes can cost, whatever it holds: no body byte costs more than one internal map
/// node (the worst, `{"":{"":…}}`, spends about a fifth of a node per byte, twice with a copy for
/// normalization; a number's or string's transients are a few bytes per byte).
pub fn worst_case_cost(len: usize) -> u64 {
    (len as u64).saturating_mul(chunk(INTERNAL)).saturating_add(FIXED)
}

/// Bodies up to this length can't cost more than `budget` whatever they hold ([`worst_case_cost`]), so they
/// need no scan.
pub fn scan_free_len(budget: u64) -> usize {
    usize::try_from(budget.saturating_sub(FIXED) / chunk(INTERNAL)).unwrap_or(usize::MAX)
}

/// The verdict on a request body: `Ok` with its predicted cost (0 when too small to need a scan), or
/// `Err((cost, shape))` when it is over `budget`.
pub fn check_request(body: &[u8], p: Processing, budget: u64) -> Result<u64, (u64, Shape)> {
    if body.len() <= scan_free_len(budget) {
        return Ok(0);
    }
    let shape = scan(body);
    let cost = request_cost(body.len(), &shape, p);
    if cost > budget {
        Err((cost, shape))
    } else {
        Ok(cost)
    }
}

/// The message of a request over budget (part of a 413 in the API's shape).
pub fn request_over_budget_message(body_len: usize, cost: u64, s: &Shape, budget: u64) -> String {
    format!(
        "the request body is too costly to read: its {body_len} bytes hold {} JSON values and {} object \
         members, which would take about {} MiB of the filter's memory once parsed, over the request budget of \
         {} MiB (REQUEST_BUDGET, see docs/limits.md); send fewer, larger values (e.g. long strings), or split \
         the request",
        s.values,
        s.members,
        cost.div_ceil(1 << 20),
        budget >> 20
    )
}

// ---------------------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------------------

/// Heap bytes of a built [`Value`] tree under the same model as [`scan`] (buffers built by `collect` are
/// exact, so this is an upper bound).
pub fn tree_cost(v: &Value) -> u64 {
    match v {
        Value::Null | Value::Bool(_) => 0,
        Value::Number(n) => number_cost(number_len(n)),
        Value::String(s) => chunk(s.len() as u64),
        Value::Array(a) => a.iter().map(tree_cost).fold(vec_cost(a.len() as u64), u64::saturating_add),
        Value::Object(m) => m
            .iter()
            .map(|(k, x)| chunk(k.len() as u64).saturating_add(tree_cost(x)))
            .fold(map_cost(m.len() as u64), u64::saturating_add),
    }
}

/// Length of a string as a JSON string literal.
fn json_str_len(s: &str) -> u64 {
    let escapes: u64 = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    s.len() as u64 + escapes + 2
}

/// Length of a number's text, without writing it out.
fn number_len(n: &serde_json::Number) -> u64 {
    struct Count(u64);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len() as u64;
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = std::fmt::write(&mut c, format_args!("{n}"));
    c.0
}

/// Length of `v` serialized as compact JSON, without serializing it.
pub fn json_len(v: &Value) -> u64 {
    match v {
        Value::Null => 4,
        Value::Bool(b) => 4 + u64::from(!*b),
        Value::Number(n) => number_len(n),
        Value::String(s) => json_str_len(s),
        Value::Array(a) => a.iter().map(|x| json_len(x) + 1).sum::<u64>().max(1) + 1,
        Value::Object(m) => m.iter().map(|(k, x)| json_str_len(k) + 1 + json_len(x) + 1).sum::<u64>().max(1) + 1,
    }
}

/// At most how many pieces a text is streamed in: a piece ends after `chunk_chars` chars or before
/// whitespace that follows a word (`dialect::shape::pieces`), so at most one per word end plus one per
/// `chunk_chars` chars.
fn piece_bound(text: &str, chunk_chars: usize) -> u64 {
    let mut word_ends = 0u64;
    let mut prev_word = false;
    let mut chars = 0u64;
    for c in text.chars() {
        chars += 1;
        let ws = c.is_whitespace();
        if ws && prev_word {
            word_ends += 1;
        }
        prev_word = !ws;
    }
    let by_size = if chunk_chars == 0 { 1 } else { chars / chunk_chars as u64 };
    1 + word_ends + by_size
}

/// Fields whose text a stream sends piece by piece (below the top level of the body).
const STREAMED: &[&str] = &["content", "refusal", "text", "arguments", "input", "thinking", "partial_json"];

/// Events of a streamed rendering, bounded: one per text piece, six per array element (items, parts, tool
/// calls, annotations, logprobs), plus the fixed ones.
fn stream_events(v: &Value, key: Option<&str>, depth: usize, chunk_chars: usize) -> u64 {
    let streamed = depth >= 2 && key.is_some_and(|k| STREAMED.contains(&k));
    match v {
        Value::String(s) if streamed => piece_bound(s, chunk_chars),
        // A tool's `input` object is streamed as its JSON text.
        Value::Object(_) if streamed && key == Some("input") => json_len(v),
        Value::Array(a) => a.iter().map(|x| 6 + stream_events(x, key, depth + 1, chunk_chars)).sum(),
        Value::Object(m) => m.iter().map(|(k, x)| stream_events(x, Some(k), depth + 1, chunk_chars)).sum(),
        _ => 0,
    }
}

/// What every event of a stream repeats from the body: the top-level scalars (chat and completions chunks
/// carry `id`, `model`, `created`, …) and an item id (responses events carry `item_id`).
fn envelope_fields(v: &Value) -> u64 {
    let Some(m) = v.as_object() else { return 0 };
    let top: u64 = m.values().filter(|x| !x.is_array() && !x.is_object()).map(json_len).sum();
    let item_ids =
        m.values().filter_map(Value::as_array).flatten().filter_map(|x| x.get("id")).map(json_len).max().unwrap_or(0);
    top + item_ids
}

/// Bytes of an event besides its payload and the repeated fields (`data: {"type":"response.output_text.
/// delta","sequence_number":…,"output_index":…,"content_index":…,"logprobs":[]}` and the like).
const EVENT_ENVELOPE: u64 = 256;
/// Heap bytes the renderers hold per event before writing it (a chat choice's chunk entries are all built
/// first: two small maps, their keys, the piece and the index).
const EVENT_TREE: u64 = 2 * LEAF + 10 * 24 + 8 * VALUE;
/// Copies of the body a stream carries (responses: `response.created`, `.in_progress`, `.completed`, item,
/// part and text `done` events) and trees the renderers clone.
const STREAM_TEXT_COPIES: u64 = 6;
const STREAM_TREE_COPIES: u64 = 3;

/// The predicted peak memory of rendering `body` as an answer: its tree plus, streamed (`Some(options)`),
/// the events and intermediate trees and the stream text (which grows by doubling: 3×), else its serialized
/// bytes (written into a buffer of the exact size, [`to_vec_exact`]).
pub fn answer_cost(body: &Value, stream: Option<&StreamOptions>) -> u64 {
    let tree = tree_cost(body);
    let len = json_len(body);
    match stream {
        None => tree.saturating_add(len),
        Some(opts) => {
            let events = stream_events(body, None, 0, opts.chunk_chars).saturating_add(16);
            let per_event = EVENT_ENVELOPE + envelope_fields(body);
            let text = len.saturating_mul(STREAM_TEXT_COPIES).saturating_add(events.saturating_mul(per_event));
            tree.saturating_mul(1 + STREAM_TREE_COPIES)
                .saturating_add(events.saturating_mul(EVENT_TREE))
                .saturating_add(text.saturating_mul(3))
        }
    }
}

/// Heap bytes per synthesized embedding float: a JSON float is a `Value` and its text (up to 16 bytes) in
/// the tree, and up to 14 bytes rendered; base64 is 16/3 bytes in the tree and as many rendered (the
/// generator's `f64`s and bytes before encoding are one input's at a time, 16 bytes a dimension).
pub const fn embedding_float_cost(base64: bool) -> u64 {
    if base64 {
        6 + 6
    } else {
        VALUE + chunk(16) + 14
    }
}

/// `v` serialized into a buffer of exactly its length (serializing into a growing buffer can take 3× that).
pub fn to_vec_exact(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(usize::try_from(json_len(v)).unwrap_or(0));
    let _ = serde_json::to_writer(&mut out, v);
    out
}

/// Is an embeddings answer of `floats` floats over the answer budget? (`dims`: one input's transients.)
pub fn embeddings_over_budget(floats: usize, dims: usize, base64: bool, budget: u64) -> bool {
    (floats as u64).saturating_mul(embedding_float_cost(base64)).saturating_add(16 * dims as u64) > budget
}

/// Why an answer is over a limit, and the status it is answered with: a 413 for a synthesized answer, a 500
/// naming the asset for an asset's (`asset` is its label). `cost` is the predicted cost when the answer
/// budget was the limit (else one of the synthesis limits was).
pub(crate) fn answer_over_budget(asset: Option<&str>, cost: Option<u64>, budget: u64) -> (u16, String) {
    use crate::limits::{MAX_CHOICES, MAX_EMBEDDING_FLOATS, MAX_TEXT_BYTES};
    let what = match asset {
        Some(label) => format!("the answer of asset {label}"),
        None => "the synthesized answer to this request".to_string(),
    };
    let why = match cost {
        Some(cost) => format!(
            "would take about {} MiB of the filter's memory to build and render, over the answer budget of {} MiB \
             (ANSWER_BUDGET)",
            cost.div_ceil(1 << 20),
            budget >> 20
        ),
        None => format!(
            "would be over a synthesis limit: at most {} MiB of text over all choices (MAX_TEXT_BYTES), {MAX_CHOICES} \
             choices (MAX_CHOICES), {MAX_EMBEDDING_FLOATS} embedding floats (MAX_EMBEDDING_FLOATS) and the answer \
             budget of {} MiB (ANSWER_BUDGET)",
            MAX_TEXT_BYTES >> 20,
            budget >> 20
        ),
    };
    let hint = match asset {
        Some(_) => "make the asset's answer smaller",
        None => "ask for fewer choices (`n`), inputs or dimensions, a shorter echo, or no streaming",
    };
    let status = if asset.is_some() { 500 } else { 413 };
    (status, format!("Understudy: {what} {why}; see docs/limits.md. To fix: {hint}."))
}

/// The budgets in force; tests lower them to exercise the checks on small bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// See [`REQUEST_BUDGET`].
    pub request: u64,
    /// See [`ANSWER_BUDGET`].
    pub answer: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets { request: REQUEST_BUDGET, answer: ANSWER_BUDGET }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn node_sizes_match_the_target() {
        // Measured with a counting allocator: one `{"a":0}` object costs a leaf node (316 bytes on wasm32, 632
        // on 64-bit).
        if PTR == 4 {
            assert_eq!((VALUE, STRING, LEAF), (16, 12, 316));
        } else {
            assert_eq!((VALUE, STRING, LEAF), (32, 24, 632));
        }
    }

    #[test]
    fn the_scan_counts_what_serde_json_builds() {
        let s = scan(br#"{"a": [1, 2.5e3, "x\"y", {"k": null, "l": true}, []], "b\n": "", "c": {}}"#);
        assert_eq!(s.members, 5);
        assert_eq!(s.values, 11, "{s:?}");
        assert_eq!(s.numbers, 2);
        assert_eq!(s.longest_escaped, 3);
        assert_eq!(s.longest_number, 5);
        assert_eq!(s.string_bytes, 1 + 1 + 1 + 3 + 2 + 1);
    }

    #[test]
    fn the_scan_stops_where_serde_json_does() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(serde_json::from_str::<Value>(&deep(MAX_DEPTH - 1)).is_ok());
        assert!(serde_json::from_str::<Value>(&deep(MAX_DEPTH)).is_err());
        assert_eq!(scan(deep(MAX_DEPTH - 1).as_bytes()).values, MAX_DEPTH as u64 - 1);
        assert_eq!(scan(deep(10_000).as_bytes()).values, MAX_DEPTH as u64 - 1);
        // Unterminated and mismatched bodies are priced up to where they break, open containers included.
        let s = scan(b"[0,0,0,\"abc");
        assert_eq!((s.values, s.numbers, s.string_bytes), (5, 3, 3));
        assert!(s.tree >= vec_cost(4));
        assert_eq!(scan(b"[0}").values, 2);
    }

    #[test]
    fn strings_are_skipped_with_escapes_honoured() {
        for (text, len, escaped) in [
            (r#""plain text that is longer than eight bytes""#, 42, false),
            (r#""a\"b\\""#, 4, true),
            (r#""\\""#, 1, true),
            (r#""0123456\"89abcdef\\""#, 17, true),
            (r#""\u00e9\ud83d\ude00x""#, 3 + 3 + 3 + 1, true),
            (r#""unterminated"#, 12, false),
        ] {
            let (l, e, _) = skip_string(text.as_bytes(), 1);
            assert_eq!((l, e), (len, escaped), "{text}");
        }
    }

    #[test]
    fn small_bodies_need_no_scan_and_tiny_values_are_priced_above_their_bytes() {
        // About 1 MiB on wasm32, 512 KiB natively (nodes are twice as big).
        assert!(scan_free_len(REQUEST_BUDGET) >= 512 << 10, "{}", scan_free_len(REQUEST_BUDGET));
        let zeros = format!("[{}0]", "0,".repeat(1 << 20));
        let s = scan(zeros.as_bytes());
        let cost = request_cost(zeros.len(), &s, Processing { plain: true, synthesizes: false });
        assert!(cost > 20 * zeros.len() as u64, "{cost}");
        // The cheapest-to-predict-expensive body: one node per five bytes of `{"":{"":…}}`.
        let nested = format!("[{}]", vec![format!("{}0{}", "{\"\":".repeat(100), "}".repeat(100)); 100].join(","));
        let s = scan(nested.as_bytes());
        let cost = request_cost(nested.len(), &s, Processing { plain: false, synthesizes: true });
        assert!(cost - FIXED <= nested.len() as u64 * chunk(INTERNAL), "{cost} for {} bytes", nested.len());
    }

    #[test]
    fn json_len_is_the_serialized_length() {
        let v: Value = serde_json::from_str(
            r#"{"a": [1, -2.50, "x\"y\u0001\n", {"k": null, "l": true, "m": false}, []], "é": "", "c": {}}"#,
        )
        .unwrap();
        assert_eq!(json_len(&v), serde_json::to_string(&v).unwrap().len() as u64);
    }

    #[test]
    fn piece_bound_bounds_the_pieces() {
        for text in ["", "a", "a a a a a a", "word", "aaaaaaaaaaaaaaaaaaaa b", "  x  y  ", "Grüße aus 東京タワー 🚀 ok"]
        {
            for size in [0, 1, 3, 8] {
                let body = serde_json::json!({"id": "x", "choices": [{"index": 0, "message": {"content": text}}]});
                let sse = crate::stream::render_sse(
                    crate::Operation::ChatCompletions,
                    &body,
                    &StreamOptions { include_usage: false, chunk_chars: size },
                )
                .unwrap();
                let chunks = sse.matches("\"content\":").count() as u64;
                // The opening chunk has `"content":""`; the closing one has no content.
                assert!(chunks <= piece_bound(text, size) + 1, "{text:?} size {size}: {chunks}");
            }
        }
    }
}
