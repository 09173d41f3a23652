//! The one token estimator: how many tokens a text, a request or an answer would cost, without a
//! tokenizer's vocabulary. Synthesized answers' `usage`, latency per output token and cost accounting of
//! answers that report no usage all use it.
//!
//! [`estimate_tokens`] approximates OpenAI's `o200k_base` tokenizer without its 200k-entry vocabulary. It
//! splits text the way that tokenizer's pre-tokenizer does, then prices each piece:
//!
//! - a letter run (split at lower→upper case changes, so `fooBar` is two) with its optional leading space
//!   is 1 token, plus 0.04 a letter beyond 6 in English, or 0.13 a letter beyond 4 in words that are
//!   accented or non-Latin or in text whose letters are ≥ 1% accented Latin (German, French, Cyrillic…
//!   split more), plus 0.3 a letter beyond 13; ALL-CAPS runs cost 0.9 + 0.17 a letter; a run led by one
//!   punctuation mark instead of a space (`_name`, `.field`, `/path`) costs 0.05 + 0.08 a further letter
//!   more, and one with no leading character (line starts, after brackets) 0.03 a letter more;
//! - Chinese, Japanese and Korean runs cost 0.72 (Han), 0.65 (kana) or 0.5 (Hangul) a character, plus 0.5;
//! - digits: 1 token per group of up to 3; a space before a number is its own token;
//! - ASCII punctuation runs (with their trailing newlines): 1 token up to 3 characters, then 0.45 a
//!   character; other symbols (emoji, CJK punctuation) 1 each;
//! - a whitespace run that is not a word's or punctuation's leading space (newlines, indentation): 1 token.
//!
//! The weights come from piece-level statistics of separate text (manual pages in six languages, Rust and
//! Python sources); a change was kept only when it helped on both that text and the benchmark sample.
//!
//! The sum is rounded, with at least 1 token for non-empty text. Prompt tokens add, like OpenAI's own
//! accounting, 3 tokens a message plus 3 to prime the reply ([`messages_tokens`]); the role, name and every
//! other string in a message (tool calls, tool results) are estimated as text ([`value_tokens`]); an image,
//! audio or file part counts as a flat 85 tokens. Anthropic's and other vendors' tokenizers are not modeled
//! separately. `bench/tokens/` measures the error against the real `o200k_base` and `cl100k_base`
//! tokenizers (`bench/tokens/run.sh`, results in `bench/tokens/results.md`).

use serde_json::Value;

/// The flat token price of an image, audio or file part.
pub const MEDIA_TOKENS: u64 = 85;

/// Tokens of every string in a JSON value, skipping `type` tags; media parts count a flat price and their
/// (base64) data is not read.
pub fn value_tokens(v: &Value) -> u64 {
    match v {
        Value::String(s) => estimate_tokens(s),
        Value::Array(a) => a.iter().map(value_tokens).fold(0, u64::saturating_add),
        Value::Object(m) => {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
            if matches!(
                ty,
                "image" | "image_url" | "input_image" | "input_audio" | "audio" | "file" | "input_file" | "document"
            ) {
                return MEDIA_TOKENS;
            }
            m.iter().filter(|(k, _)| k.as_str() != "type").map(|(_, x)| value_tokens(x)).fold(0, u64::saturating_add)
        }
        _ => 0,
    }
}

/// A chat-style `messages` array: 3 tokens a message plus its strings, plus 3 priming the reply.
pub fn messages_tokens(messages: Option<&Value>) -> u64 {
    let per = messages
        .and_then(Value::as_array)
        .map(|ms| ms.iter().map(|m| value_tokens(m).saturating_add(3)).fold(0, u64::saturating_add))
        .unwrap_or(0);
    per.saturating_add(3)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Upper,
    /// Lowercase and caseless letters (CJK, marks).
    Lower,
    Digit,
    Newline,
    Space,
    Punct,
}

fn class(c: char) -> Class {
    if c == '\n' || c == '\r' {
        Class::Newline
    } else if c.is_whitespace() {
        Class::Space
    } else if c.is_alphabetic() {
        if c.is_uppercase() {
            Class::Upper
        } else {
            Class::Lower
        }
    } else if is_mark(c) {
        Class::Lower
    } else if c.is_numeric() {
        Class::Digit
    } else {
        Class::Punct
    }
}

/// Common combining-mark blocks (letters for the tokenizer).
fn is_mark(c: char) -> bool {
    matches!(u32::from(c), 0x300..=0x36F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

fn is_letter(c: Option<Class>) -> bool {
    matches!(c, Some(Class::Upper | Class::Lower))
}

/// Accented Latin letters (Latin-1 Supplement to Latin Extended-B, Latin Extended Additional).
fn is_accented_latin(c: char) -> bool {
    matches!(u32::from(c), 0xC0..=0x24F | 0x1E00..=0x1EFF) && c.is_alphabetic()
}

/// Per-character price of a CJK letter, `None` for other letters.
fn cjk_price(c: char) -> Option<f64> {
    match u32::from(c) {
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FFFF => Some(0.72),
        0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => Some(0.65),
        0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => Some(0.5),
        _ => None,
    }
}

/// Estimated number of tokens of `text` for OpenAI's `o200k_base` tokenizer; see the module doc for the
/// method and `bench/tokens/results.md` for its measured error. Linear time, no allocation per piece.
pub fn estimate_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let chars: Vec<char> = text.chars().collect();
    let letters = chars.iter().filter(|c| c.is_alphabetic()).count();
    let accented = chars.iter().filter(|c| is_accented_latin(**c)).count();
    // Text whose letters are ≥ 1% accented is not English: its words split more.
    let foreign = accented * 100 >= letters.max(1);
    let at = |k: usize| chars.get(k).copied().map(class);
    let mut cost = 0.0f64;
    let mut i = 0;
    while let Some(c) = chars.get(i).copied() {
        let cls = class(c);
        // A letter run with an optional leading space or single punctuation mark.
        let prefixed = matches!(cls, Class::Space | Class::Punct) && is_letter(at(i + 1));
        if prefixed || is_letter(Some(cls)) {
            let start = if prefixed { i + 1 } else { i };
            let mut k = start;
            while at(k) == Some(Class::Upper) {
                k += 1;
            }
            while at(k) == Some(Class::Lower) {
                k += 1;
            }
            let word = chars.get(start..k).unwrap_or_default();
            let prefix = if prefixed { Some(c) } else { None };
            cost += word_cost(word, prefix, foreign);
            i = k + contraction_len(&chars, k);
            continue;
        }
        match cls {
            Class::Digit => {
                let mut k = i;
                while k < i + 3 && at(k) == Some(Class::Digit) {
                    k += 1;
                }
                cost += 1.0;
                i = k;
            }
            Class::Punct | Class::Space if c == ' ' && at(i + 1) == Some(Class::Punct) || cls == Class::Punct => {
                let mut k = if cls == Class::Space { i + 1 } else { i };
                let run_start = k;
                let mut non_ascii = 0usize;
                while at(k) == Some(Class::Punct) {
                    if chars.get(k).is_some_and(|c| !c.is_ascii()) {
                        non_ascii += 1;
                    }
                    k += 1;
                }
                let run = k - run_start;
                let ascii = run - non_ascii;
                let mut trailing = 0usize;
                while chars.get(k).is_some_and(|c| matches!(c, '\r' | '\n' | '/')) {
                    k += 1;
                    trailing += 1;
                }
                cost += punct_cost(ascii) + non_ascii as f64 + if ascii == 0 && trailing > 0 { 1.0 } else { 0.0 };
                i = k;
            }
            _ => {
                // Whitespace (a lone space before a letter or punctuation was taken above).
                let mut e = i;
                let mut last_newline = None;
                while matches!(at(e), Some(Class::Space | Class::Newline)) {
                    if at(e) == Some(Class::Newline) {
                        last_newline = Some(e);
                    }
                    e += 1;
                }
                i = match last_newline {
                    Some(nl) => nl + 1,
                    None if e >= chars.len() || e - i == 1 => e.max(i + 1),
                    // Leave the last space to the next word.
                    None => e - 1,
                };
                cost += 1.0;
            }
        }
    }
    (cost.round() as u64).max(1)
}

/// `'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d` after a word (any case) belong to it.
fn contraction_len(chars: &[char], k: usize) -> usize {
    if chars.get(k) != Some(&'\'') {
        return 0;
    }
    let lower = |j: usize| chars.get(k + j).map(|c| c.to_ascii_lowercase());
    match (lower(1), lower(2)) {
        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
        (Some('s' | 't' | 'm' | 'd'), _) => 2,
        _ => 0,
    }
}

fn punct_cost(ascii_run: usize) -> f64 {
    match ascii_run {
        0 => 0.0,
        1..=3 => 1.0,
        n => 1.0 + 0.45 * (n - 3) as f64,
    }
}

fn word_cost(word: &[char], prefix: Option<char>, foreign_text: bool) -> f64 {
    let n = word.len();
    if n == 0 {
        return 0.0;
    }
    let cjk_chars = word.iter().filter(|c| cjk_price(**c).is_some()).count();
    if cjk_chars > 0 {
        // Mixed runs: CJK characters at their price, the rest like foreign letters.
        let cjk_part: f64 = word.iter().filter_map(|c| cjk_price(*c)).sum();
        let rest = (n - cjk_chars) as f64 * 0.35;
        let punct_prefix = if prefix.is_some_and(|p| p != ' ') { 0.5 } else { 0.0 };
        return 0.5 + cjk_part + rest + punct_prefix;
    }
    let nf = n as f64;
    let upper = word.iter().filter(|c| c.is_uppercase()).count();
    let non_latin = word.iter().any(|c| !c.is_ascii() && !is_accented_latin(*c) && !is_mark(*c));
    let foreign = foreign_text || non_latin || word.iter().any(|c| is_accented_latin(*c));
    let mut cost = if upper == n && n > 2 {
        // ALL CAPS: about a token per 3 letters.
        0.9 + 0.17 * nf
    } else if foreign {
        1.0 + 0.13 * (nf - 4.0).max(0.0) + if upper > 0 { 0.15 } else { 0.0 }
    } else {
        1.0 + 0.04 * (nf - 6.0).max(0.0) + if upper > 0 { 0.05 } else { 0.0 }
    };
    cost += 0.3 * (nf - 13.0).max(0.0);
    match prefix {
        // Line starts, after brackets: slightly rarer forms.
        None if n >= 3 => cost += 0.03 * nf.min(12.0),
        // `_name`, `.field`, `/path`: much rarer forms than ` word`.
        Some(p) if p != ' ' => cost += 0.05 + 0.08 * (nf - 1.0).min(12.0),
        _ => {}
    }
    cost
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    #[test]
    fn token_estimates_are_sane() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("a"), 1);
        assert_eq!(estimate_tokens("The quick brown fox jumps over the lazy dog."), 10);
        assert!((4..=5).contains(&estimate_tokens("Hello, world!")));
        let long = "word ".repeat(1000);
        assert!((900..=1100).contains(&estimate_tokens(&long)));
        assert!((3..=8).contains(&estimate_tokens("你好，世界")));
        assert!(estimate_tokens("12, 345, 6789") >= 7);
        // Odd input: only whitespace, only marks, lone surrogates can't occur in &str.
        assert_eq!(estimate_tokens("   "), 1);
        assert!(estimate_tokens("\u{301}\u{301}") >= 1);
        assert!(estimate_tokens("🙂🙂🙂") >= 3);
    }

    /// Writes estimates for a benchmark sample: `UNDERSTUDY_TOKEN_SAMPLE=bench/tokens/sample.jsonl` (lines of
    /// `{"id", "text"}`) writes `{"<id>": estimate, ...}` to `$UNDERSTUDY_TOKEN_ESTIMATES`, default
    /// `<sample>.estimates.json`. Does nothing without the variable. See `bench/tokens/run.sh`.
    #[test]
    fn token_sample_estimates() {
        let Ok(sample) = std::env::var("UNDERSTUDY_TOKEN_SAMPLE") else {
            return;
        };
        let out = std::env::var("UNDERSTUDY_TOKEN_ESTIMATES").unwrap_or_else(|_| format!("{sample}.estimates.json"));
        let text = std::fs::read_to_string(&sample).unwrap();
        let mut estimates = Map::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let item: Value = serde_json::from_str(line).unwrap();
            let id = item["id"].to_string();
            estimates.insert(id, json!(estimate_tokens(item["text"].as_str().unwrap())));
        }
        std::fs::write(&out, serde_json::to_string_pretty(&Value::Object(estimates)).unwrap()).unwrap();
    }
}
