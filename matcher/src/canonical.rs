//! Canonical JSON: one byte string per JSON value, whatever its spelling.
//!
//! Object keys are sorted by their UTF-8 bytes, there is no insignificant whitespace, strings use one
//! escaping rule, and numbers are written from their exact decimal value, so `1`, `1.0`, `1e0` and `10E-1`
//! are the same bytes, as are `0.7` and `0.70`. Numbers never pass through `f64`, so no precision is lost.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where canonical text goes: a `String`, or straight into a hash ([`HashSink`]) so a big body is never
/// written out twice.
pub trait Sink {
    /// Appends text.
    fn put(&mut self, s: &str);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

/// A SHA-256 fed through a small buffer (many tiny writes are slow to hash one by one).
#[derive(Default)]
pub struct HashSink {
    hasher: Sha256,
    buf: Vec<u8>,
}

const HASH_BUF: usize = 8 << 10;

impl HashSink {
    /// The digest of everything put so far.
    pub fn finish(mut self) -> [u8; 32] {
        self.hasher.update(&self.buf);
        self.hasher.finalize().into()
    }
}

impl Sink for HashSink {
    fn put(&mut self, s: &str) {
        if self.buf.len() + s.len() > HASH_BUF {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
        if s.len() > HASH_BUF {
            self.hasher.update(s.as_bytes());
        } else {
            if self.buf.capacity() == 0 {
                self.buf.reserve(HASH_BUF);
            }
            self.buf.extend_from_slice(s.as_bytes());
        }
    }
}

/// Appends the canonical form of `v` to `out`.
pub fn write_canonical<S: Sink + ?Sized>(v: &Value, out: &mut S) {
    match v {
        Value::Null => out.put("null"),
        Value::Bool(b) => out.put(if *b { "true" } else { "false" }),
        Value::Number(n) => out.put(&canonical_number(&n.to_string())),
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.put("[");
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.put(",");
                }
                write_canonical(item, out);
            }
            out.put("]");
        }
        Value::Object(m) => {
            let mut entries: Vec<(&str, Entry<'_>)> = m.iter().map(|(k, v)| (k.as_str(), Entry::Value(v))).collect();
            write_entries(&mut entries, out);
        }
    }
}

/// A member value: a parsed one, or a string set in its place.
enum Entry<'a> {
    Value(&'a Value),
    Str(&'a str),
}

fn write_entries<S: Sink + ?Sized>(entries: &mut [(&str, Entry<'_>)], out: &mut S) {
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.put("{");
    for (i, (k, val)) in entries.iter().enumerate() {
        if i > 0 {
            out.put(",");
        }
        write_string(k, out);
        out.put(":");
        match val {
            Entry::Value(v) => write_canonical(v, out),
            Entry::Str(s) => write_string(s, out),
        }
    }
    out.put("}");
}

/// The canonical form of the object `m` as if the members for which `skip` holds were removed and, with
/// `set`, member `set.0` were (re)set to the string `set.1` — without copying `m`.
pub fn write_canonical_object_with<S: Sink + ?Sized>(
    m: &serde_json::Map<String, Value>,
    skip: impl Fn(&str, &Value) -> bool,
    set: Option<(&str, &str)>,
    out: &mut S,
) {
    let mut entries: Vec<(&str, Entry<'_>)> = m
        .iter()
        .filter(|(k, v)| !skip(k, v) && set.is_none_or(|(name, _)| name != k.as_str()))
        .map(|(k, v)| (k.as_str(), Entry::Value(v)))
        .collect();
    if let Some((name, value)) = set {
        entries.push((name, Entry::Str(value)));
    }
    write_entries(&mut entries, out);
}

/// The canonical form of `v` as a new string.
pub fn to_canonical(v: &Value) -> String {
    let mut s = String::new();
    write_canonical(v, &mut s);
    s
}

/// Writes `s` as a JSON string: runs that need no escaping go out in one piece (long prompts are most
/// of a body).
fn write_string<S: Sink + ?Sized>(s: &str, out: &mut S) {
    out.put("\"");
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        // Multi-byte UTF-8 sequences are all >= 0x80: a run boundary is always a char boundary.
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        if let Some(run) = s.get(start..i) {
            out.put(run);
        }
        start = i + 1;
        match b {
            b'"' => out.put("\\\""),
            b'\\' => out.put("\\\\"),
            b'\n' => out.put("\\n"),
            b'\r' => out.put("\\r"),
            b'\t' => out.put("\\t"),
            0x08 => out.put("\\b"),
            0x0c => out.put("\\f"),
            c => out.put(&format!("\\u{:04x}", c)),
        }
    }
    if let Some(run) = s.get(start..) {
        out.put(run);
    }
    out.put("\"");
}

/// Rewrites a JSON number literal to its canonical spelling, exactly (string arithmetic, no floats).
///
/// ```
/// use understudy_matcher::canonical::canonical_number;
/// assert_eq!(canonical_number("1.0"), "1");
/// assert_eq!(canonical_number("1e0"), "1");
/// assert_eq!(canonical_number("0.70"), "0.7");
/// assert_eq!(canonical_number("-0.0"), "0");
/// assert_eq!(canonical_number("12.5e-3"), "0.0125");
/// assert_eq!(canonical_number("1E400"), "1e400");
/// ```
pub fn canonical_number(lit: &str) -> String {
    let (neg, rest) = match lit.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, lit.strip_prefix('+').unwrap_or(lit)),
    };
    let (mantissa, exp_part) = match rest.find(['e', 'E']) {
        Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i + 1..).unwrap_or_default()),
        None => (rest, ""),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (mantissa.get(..i).unwrap_or_default(), mantissa.get(i + 1..).unwrap_or_default()),
        None => (mantissa, ""),
    };
    if !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit()) {
        // Not a number literal (cannot come from a parsed JSON document); keep it verbatim.
        return lit.to_string();
    }
    // Exponent arithmetic is exact in i128; a literal whose exponent has more than 36 digits is kept
    // verbatim (it is still canonical: the same spelling always gives the same bytes).
    let Some(exp) = parse_exp(exp_part) else { return lit.to_string() };
    let all: String = int_part.chars().chain(frac_part.chars()).collect();
    let trimmed_lead = all.trim_start_matches('0');
    let digits = trimmed_lead.trim_end_matches('0');
    if digits.is_empty() {
        return "0".to_string();
    }
    let shift = (trimmed_lead.len() - digits.len()) as i128 - frac_part.len() as i128;
    let Some(exp) = exp.checked_add(shift) else { return lit.to_string() };
    let n = digits.len() as i128;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    let Some(point) = n.checked_add(exp) else { return lit.to_string() }; // position of the decimal point from the left of `digits`
    if exp >= 0 && point <= 21 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', exp as usize));
    } else if exp < 0 && point > 0 {
        let p = point as usize;
        out.push_str(digits.get(..p).unwrap_or_default());
        out.push('.');
        out.push_str(digits.get(p..).unwrap_or_default());
    } else if exp < 0 && point > -6 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(digits);
    } else {
        let (first, tail) = digits.split_at(1);
        out.push_str(first);
        if !tail.is_empty() {
            out.push('.');
            out.push_str(tail);
        }
        out.push('e');
        out.push_str(&(point - 1).to_string());
    }
    out
}

/// The exponent's value, or `None` when it has more than 36 significant digits.
fn parse_exp(s: &str) -> Option<i128> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let digits = digits.trim_start_matches('0');
    if digits.len() > 36 {
        return None;
    }
    let mut v: i128 = 0;
    for b in digits.bytes() {
        v = v * 10 + i128::from(b.wrapping_sub(b'0'));
    }
    Some(if neg { -v } else { v })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn equal_numbers_share_one_spelling() {
        let groups: &[&[&str]] = &[
            &["1", "1.0", "1e0", "1E+0", "10e-1", "0.1e1", "1.000"],
            &["0.7", "0.70", "7e-1", "70E-2"],
            &["0", "-0", "0.0", "0e10", "-0.0e-5"],
            &["100", "1e2", "1.00e2", "1000e-1"],
            &["-2.5", "-25e-1", "-0.25E1"],
            &["123456789012345678901234567890", "1.2345678901234567890123456789e29"],
        ];
        for g in groups {
            let want = canonical_number(g[0]);
            for lit in g.iter() {
                assert_eq!(canonical_number(lit), want, "{lit} vs {}", g[0]);
            }
        }
    }

    #[test]
    fn different_numbers_stay_different() {
        let lits =
            ["1", "1.1", "0.1", "0.01", "10", "-1", "1e21", "1e22", "1e-7", "1e-6", "0.30000000000000004", "0.3"];
        let mut seen = std::collections::HashSet::new();
        for l in lits {
            assert!(seen.insert(canonical_number(l)), "{l} collided");
        }
    }

    #[test]
    fn spellings_are_exact() {
        assert_eq!(canonical_number("1e20"), "100000000000000000000");
        assert_eq!(canonical_number("1e21"), "1e21");
        assert_eq!(canonical_number("1.5e-7"), "1.5e-7");
        assert_eq!(canonical_number("0.000001"), "0.000001");
        assert_eq!(canonical_number("-123.4500"), "-123.45");
    }

    #[test]
    fn objects_are_sorted_and_strings_escaped_one_way() {
        let a: Value = serde_json::from_str(r#"{"b": [1.0, "\u00e9\n"], "a": {"y": true, "x": null}}"#).unwrap();
        let b: Value = serde_json::from_str("{\"a\":{\"x\":null,\"y\":true},\"b\":[1,\"é\\u000a\"]}").unwrap();
        assert_eq!(to_canonical(&a), to_canonical(&b));
        assert_eq!(to_canonical(&a), "{\"a\":{\"x\":null,\"y\":true},\"b\":[1,\"é\\n\"]}");
    }
}
