//! Property tests (proptest) for keys and canonical numbers, through the public API only.
//!
//! Arbitrary JSON object request bodies (bounded depth and size) are written out as JSON text in several
//! spellings; the key must not change with object member order, insignificant whitespace or pretty printing,
//! number spelling (`n`, `n.0`, `nE0`, trailing zeros, shifted exponents), string escaping (`\uXXXX`, surrogate
//! pairs, short escapes), or the always-ignored fields (`stream`, `user`, `metadata`, ...). Normalization is
//! idempotent, swapping two distinct array elements changes the key, and `canonical_number` is idempotent and
//! exact (it preserves the value, hence the order, of numbers that fit an `f64` exactly).
//!
//! Runs natively and under wasm32-wasip1 (`scripts/test-wasm.sh`): proptest is built without its default
//! features (no fork/timeout, which need processes and threads) and failures are not persisted to files (the
//! failing input is printed instead; add it to `matcher/tests/regressions.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::cmp::Ordering;
use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;
use understudy_matcher::canonical::{canonical_number, to_canonical};
use understudy_matcher::dialect::openai::{ALWAYS_IGNORED, EMBEDDINGS_IGNORED};
use understudy_matcher::{classify, NormalizationConfig, Normalizer, Operation, Route, ScrubberConfig};

const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
];

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

// ---------------------------------------------------------------------------------------------------
// A JSON model whose text form can be spelled many ways
// ---------------------------------------------------------------------------------------------------

/// A number: `-`? `digits` × 10^`exp`. `digits` has no leading zeros (or is "0").
#[derive(Debug, Clone, PartialEq)]
struct Num {
    neg: bool,
    digits: String,
    exp: i128,
}

#[derive(Debug, Clone, PartialEq)]
enum J {
    Null,
    Bool(bool),
    Num(Num),
    Str(String),
    Arr(Vec<J>),
    /// Member names are unique.
    Obj(Vec<(String, J)>),
}

/// How to write a value: each flag turns one kind of variation on; choices come from a seeded generator.
#[derive(Debug, Clone, Copy, Default)]
struct Style {
    shuffle: bool,
    whitespace: bool,
    numbers: bool,
    escapes: bool,
    seed: u64,
}

impl Style {
    fn with_seed(self, seed: u64) -> Self {
        Style { seed, ..self }
    }

    /// SplitMix64, uniform enough in `0..n` for choosing spellings.
    fn pick(&mut self, n: usize) -> usize {
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    }

    fn ws(&mut self, out: &mut String) {
        if self.whitespace {
            out.push_str(["", " ", "\n", "\t", "\r\n  ", "  \n\t "][self.pick(6)]);
        }
    }
}

fn render(j: &J, st: &mut Style) -> String {
    let mut out = String::new();
    st.ws(&mut out);
    write_value(j, st, &mut out);
    st.ws(&mut out);
    out
}

fn write_value(j: &J, st: &mut Style, out: &mut String) {
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(&spell_number(n, st)),
        J::Str(s) => write_string(s, st, out),
        J::Arr(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    st.ws(out);
                    out.push(',');
                }
                st.ws(out);
                write_value(x, st, out);
            }
            st.ws(out);
            out.push(']');
        }
        J::Obj(members) => {
            let mut order: Vec<usize> = (0..members.len()).collect();
            if st.shuffle {
                for i in (1..order.len()).rev() {
                    let k = st.pick(i + 1);
                    order.swap(i, k);
                }
            }
            out.push('{');
            for (n, &i) in order.iter().enumerate() {
                let (k, v) = &members[i];
                if n > 0 {
                    st.ws(out);
                    out.push(',');
                }
                st.ws(out);
                write_string(k, st, out);
                st.ws(out);
                out.push(':');
                st.ws(out);
                write_value(v, st, out);
            }
            st.ws(out);
            out.push('}');
        }
    }
}

fn write_string(s: &str, st: &mut Style, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let u = c as u32;
        let must = c == '"' || c == '\\' || u < 0x20;
        let escape = must || (st.escapes && st.pick(3) == 0);
        if !escape {
            out.push(c);
            continue;
        }
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            _ => None,
        };
        let upper = st.escapes && st.pick(2) == 0;
        match short {
            Some(esc) if !st.escapes || st.pick(2) == 0 => out.push_str(esc),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if upper {
                        let _ = write!(out, "\\u{:04X}", unit);
                    } else {
                        let _ = write!(out, "\\u{:04x}", unit);
                    }
                }
            }
        }
    }
    out.push('"');
}

/// The plain decimal spelling: `digits` with the point placed by `exp`, no exponent.
fn plain_decimal(digits: &str, exp: i128) -> String {
    if digits == "0" {
        return "0".into();
    }
    if exp >= 0 {
        return format!("{digits}{}", "0".repeat(exp as usize));
    }
    let frac = (-exp) as usize;
    if digits.len() > frac {
        let (int, f) = digits.split_at(digits.len() - frac);
        format!("{int}.{f}")
    } else {
        format!("0.{}{digits}", "0".repeat(frac - digits.len()))
    }
}

/// One of many spellings of the same number. Only the plain one when `st.numbers` is off.
fn spell_number(n: &Num, st: &mut Style) -> String {
    let d = n.digits.as_str();
    let e = n.exp;
    let variant = if st.numbers { st.pick(8) } else { 0 };
    let zeros = "0".repeat(1 + st.pick(3));
    let e_char = if st.numbers && st.pick(2) == 0 { "E" } else { "e" };
    let plus = if st.numbers && st.pick(2) == 0 { "+" } else { "" };
    let sign_exp = |x: i128| if x >= 0 { format!("{plus}{x}") } else { x.to_string() };
    let body = match variant {
        // Plain decimal, e.g. 1.25, 300.
        0 if e.abs() <= 40 => plain_decimal(d, e),
        // Trailing zeros: 1.2500, 300.0 (the `n.0` spelling of an integer).
        1 if e.abs() <= 40 => {
            let p = plain_decimal(d, e);
            if p.contains('.') {
                format!("{p}{zeros}")
            } else {
                format!("{p}.{zeros}")
            }
        }
        // Mantissa and exponent as stored: 125e-2, 3E+2, `nE0` for integers.
        2 => format!("{d}{e_char}{}", sign_exp(e)),
        // Shifted exponent with trailing zeros in the mantissa: 12500e-4.
        3 if d != "0" => format!("{d}{zeros}{e_char}{}", sign_exp(e - zeros.len() as i128)),
        // Scientific with one integer digit: 1.25e0.
        4 => {
            let (first, rest) = d.split_at(1);
            let rest = if rest.is_empty() { "0" } else { rest };
            format!("{first}.{rest}{e_char}{}", sign_exp(e + d.len() as i128 - 1))
        }
        // A zero integer part: 0.125e1.
        5 => format!("0.{d}{e_char}{}", sign_exp(e + d.len() as i128)),
        // Plain decimal with an explicit zero exponent: 1.25e0.
        6 if e.abs() <= 40 => format!("{}{e_char}{plus}0", plain_decimal(d, e)),
        _ => format!("{d}{e_char}{}", sign_exp(e)),
    };
    if n.neg {
        format!("-{body}")
    } else {
        body
    }
}

// ---------------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------------

fn digits_strategy(max_len: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        (1u8..=9, prop::collection::vec(0u8..=9, 0..max_len)).prop_map(|(first, rest)| {
            std::iter::once(first).chain(rest).map(|d| char::from(b'0' + d)).collect::<String>()
        }),
    ]
}

fn num_strategy() -> impl Strategy<Value = Num> {
    (any::<bool>(), digits_strategy(24), exp_strategy(30)).prop_map(|(neg, digits, exp)| Num { neg, digits, exp })
}

/// Mostly small exponents, sometimes huge ones (far beyond `i64`, below the 36 digits `canonical_number`
/// computes with; longer exponents are kept verbatim).
fn exp_strategy(small: i128) -> impl Strategy<Value = i128> {
    const HUGE: i128 = 10i128.pow(34);
    prop_oneof![8 => -small..=small, 1 => -HUGE..=HUGE, 1 => (i128::from(i64::MAX) / 4 - 50)..=(i128::from(i64::MAX) / 4 + 50)]
}

fn char_strategy() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => prop::sample::select(vec!['"', '\\', '/', '\n', '\t', '\r', '\u{8}', '\u{c}', '\u{0}', '\u{1f}', ' ']),
        1 => prop::sample::select(vec!['é', 'ß', '€', '\u{2028}', '\u{feff}', '😀', '𝄞', '\u{10ffff}']),
        1 => any::<char>(),
    ]
}

fn string_strategy(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(char_strategy(), 0..max).prop_map(String::from_iter)
}

fn dedup(members: Vec<(String, J)>) -> Vec<(String, J)> {
    let mut out: Vec<(String, J)> = Vec::with_capacity(members.len());
    for (k, v) in members {
        if !out.iter().any(|(o, _)| *o == k) {
            out.push((k, v));
        }
    }
    out
}

fn json_strategy() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        num_strategy().prop_map(J::Num),
        string_strategy(8).prop_map(J::Str),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            prop::collection::vec((string_strategy(4), inner), 0..4).prop_map(|m| J::Obj(dedup(m))),
        ]
    })
}

/// A request body: an object with an optional model string and up to 5 arbitrary members.
fn body_strategy() -> impl Strategy<Value = Vec<(String, J)>> {
    (prop::option::of(string_strategy(6)), prop::collection::vec((string_strategy(5), json_strategy()), 0..5)).prop_map(
        |(model, members)| {
            let mut all: Vec<(String, J)> = model.map(|m| ("model".to_string(), J::Str(m))).into_iter().collect();
            all.extend(members);
            // Generated names never collide with the ignored ones (the prop that adds those does so itself).
            all.retain(|(k, _)| !ALWAYS_IGNORED.contains(&k.as_str()) && !EMBEDDINGS_IGNORED.contains(&k.as_str()));
            dedup(all)
        },
    )
}

fn route_strategy() -> impl Strategy<Value = Route> {
    (0..PATHS.len()).prop_map(|i| classify("POST", PATHS[i]).unwrap())
}

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

fn normalizers() -> [Normalizer; 2] {
    let configured = NormalizationConfig {
        ignore_fields: vec!["/messages/*/name".into(), "/a/*".into(), "/b/0/c".into()],
        scrubbers: vec![
            ScrubberConfig { pattern: "[0-9]{3,}".into(), placeholder: "<n>".into() },
            ScrubberConfig { pattern: "ab+".into(), placeholder: "<AB>".into() },
        ],
    };
    [Normalizer::compile(&NormalizationConfig::default()).unwrap(), Normalizer::compile(&configured).unwrap()]
}

fn key(n: &Normalizer, route: &Route, text: &str) -> String {
    match n.key(route, text.as_bytes()) {
        Ok((k, _)) => {
            // The filter's path (no normalized copy when the normalization is plain) must agree.
            let parsed = understudy_matcher::parse_body(text.as_bytes()).unwrap();
            assert_eq!(n.key_of_request(route, &parsed).unwrap(), k, "key_of_request differs\n{text}");
            let canonical = n.canonical_of_request(route, &parsed, usize::MAX).unwrap().unwrap();
            assert_eq!(Normalizer::key_of_canonical(route.operation, &canonical), k, "canonical path differs\n{text}");
            k
        }
        Err(e) => panic!("generated body does not key: {e}\n{text}"),
    }
}

fn plain(body: &[(String, J)]) -> String {
    render(&J::Obj(body.to_vec()), &mut Style::default())
}

/// `(exact value ordering)` of k1/2^j1 and k2/2^j2.
fn cmp_dyadic(a: (i64, u32), b: (i64, u32)) -> Ordering {
    (i128::from(a.0) << b.1).cmp(&(i128::from(b.0) << a.1))
}

/// The exact decimal literal of k/2^j (= k·5^j / 10^j).
fn dyadic_literal(k: i64, j: u32) -> Num {
    let m = i128::from(k).unsigned_abs() * 5u128.pow(j);
    Num { neg: k < 0, digits: m.to_string(), exp: -i128::from(j) }
}

fn dyadic_strategy() -> impl Strategy<Value = (i64, u32)> {
    const MAX: i64 = 1 << 53;
    (prop_oneof![-MAX..=MAX, -1000i64..=1000, Just(0i64), Just(MAX), Just(-MAX), Just(1i64), Just(-1i64)], 0u32..=20)
}

// ---------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn key_ignores_member_order(body in body_strategy(), route in route_strategy(), seed in any::<u64>()) {
        let text = render(&J::Obj(body.clone()), &mut Style { shuffle: true, ..Style::default() }.with_seed(seed));
        for n in &normalizers() {
            prop_assert_eq!(key(n, &route, &plain(&body)), key(n, &route, &text), "{}", text);
        }
    }

    #[test]
    fn key_ignores_whitespace_and_pretty_printing(body in body_strategy(), route in route_strategy(),
                                                  seed in any::<u64>()) {
        let n = Normalizer::compile(&NormalizationConfig::default()).unwrap();
        let base = plain(&body);
        let spaced = render(&J::Obj(body.clone()), &mut Style { whitespace: true, ..Style::default() }.with_seed(seed));
        let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(&base).unwrap()).unwrap();
        let k = key(&n, &route, &base);
        prop_assert_eq!(&k, &key(&n, &route, &spaced), "{}", spaced);
        prop_assert_eq!(&k, &key(&n, &route, &pretty), "{}", pretty);
    }

    #[test]
    fn key_ignores_number_spelling(body in body_strategy(), route in route_strategy(), seed in any::<u64>()) {
        let text = render(&J::Obj(body.clone()), &mut Style { numbers: true, ..Style::default() }.with_seed(seed));
        for n in &normalizers() {
            prop_assert_eq!(key(n, &route, &plain(&body)), key(n, &route, &text), "{}", text);
        }
    }

    #[test]
    fn key_ignores_string_escaping(body in body_strategy(), route in route_strategy(), seed in any::<u64>()) {
        let text = render(&J::Obj(body.clone()), &mut Style { escapes: true, ..Style::default() }.with_seed(seed));
        for n in &normalizers() {
            prop_assert_eq!(key(n, &route, &plain(&body)), key(n, &route, &text), "{}", text);
        }
    }

    #[test]
    fn key_ignores_always_ignored_fields(
        body in body_strategy(),
        route in route_strategy(),
        extra in prop::collection::vec((0..ALWAYS_IGNORED.len() + EMBEDDINGS_IGNORED.len(), json_strategy()), 1..4),
        seed in any::<u64>(),
    ) {
        let mut st = Style::default().with_seed(seed);
        let mut with = body.clone();
        for (i, v) in extra {
            let name = match ALWAYS_IGNORED.get(i) {
                Some(f) => *f,
                // Embeddings-only fields are ignored for embeddings only.
                None if route.operation == Operation::Embeddings => EMBEDDINGS_IGNORED[i - ALWAYS_IGNORED.len()],
                None => continue,
            };
            let at = st.pick(with.len() + 1);
            with.insert(at, (name.to_string(), v));
        }
        // Repeated names are duplicate members in the text; the last one wins and is ignored anyway.
        let text = render(&J::Obj(with), &mut Style::default());
        for n in &normalizers() {
            prop_assert_eq!(key(n, &route, &plain(&body)), key(n, &route, &text), "{}", text);
        }
    }

    #[test]
    fn key_ignores_every_variation_at_once(body in body_strategy(), route in route_strategy(), seed in any::<u64>()) {
        let mut all = Style { shuffle: true, whitespace: true, numbers: true, escapes: true, seed };
        let text = render(&J::Obj(body.clone()), &mut all);
        for n in &normalizers() {
            prop_assert_eq!(key(n, &route, &plain(&body)), key(n, &route, &text), "{}", text);
        }
    }

    #[test]
    fn normalization_is_idempotent(body in body_strategy(), route in route_strategy(), seed in any::<u64>()) {
        let mut all = Style { shuffle: true, whitespace: true, numbers: true, escapes: true, seed };
        let text = render(&J::Obj(body), &mut all);
        for n in &normalizers() {
            let (k, once) = n.key(&route, text.as_bytes()).unwrap();
            let mut twice = once.clone();
            n.normalize(&route, &mut twice).unwrap();
            prop_assert_eq!(&twice, &once);
            prop_assert_eq!(Normalizer::key_of_normalized(route.operation, &twice), k.clone());
            // What `understudy key FILE` does: key the re-serialized body.
            let (again, _) = n.key(&route, serde_json::to_string(&once).unwrap().as_bytes()).unwrap();
            prop_assert_eq!(again, k);
        }
    }

    #[test]
    fn array_order_changes_the_key(
        body in body_strategy(),
        route in route_strategy(),
        a in json_strategy(),
        b in json_strategy(),
        nested in any::<bool>(),
    ) {
        let (ca, cb) = (to_canonical(&serde_json::from_str(&render(&a, &mut Style::default())).unwrap()),
                        to_canonical(&serde_json::from_str(&render(&b, &mut Style::default())).unwrap()));
        prop_assume!(ca != cb);
        let n = Normalizer::compile(&NormalizationConfig::default()).unwrap();
        let with = |first: &J, second: &J| {
            let arr = J::Arr(vec![first.clone(), second.clone()]);
            let field = if nested { J::Arr(vec![J::Obj(vec![("content".into(), arr)])]) } else { arr };
            let mut m = body.clone();
            m.retain(|(k, _)| k != "messages");
            m.push(("messages".into(), field));
            plain(&m)
        };
        let (ab, ba) = (with(&a, &b), with(&b, &a));
        prop_assert_ne!(key(&n, &route, &ab), key(&n, &route, &ba), "{} vs {}", ab, ba);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn canonical_number_is_idempotent_and_spelling_blind(
        neg in any::<bool>(),
        digits in digits_strategy(40),
        exp in exp_strategy(400),
        seed in any::<u64>(),
    ) {
        let n = Num { neg, digits, exp };
        let base = canonical_number(&spell_number(&n, &mut Style::default()));
        prop_assert_eq!(canonical_number(&base), base.clone());
        let mut st = Style { numbers: true, ..Style::default() }.with_seed(seed);
        for _ in 0..4 {
            let lit = spell_number(&n, &mut st);
            prop_assert!(serde_json::from_str::<Value>(&lit).is_ok(), "not a JSON number: {}", lit);
            prop_assert_eq!(canonical_number(&lit), base.clone(), "{}", lit);
        }
    }

    #[test]
    fn canonical_number_keeps_exact_f64_values_and_order(a in dyadic_strategy(), b in dyadic_strategy(),
                                                         seed in any::<u64>()) {
        let mut st = Style { numbers: true, ..Style::default() }.with_seed(seed);
        let value = |(k, j): (i64, u32)| k as f64 / f64::from(1u32 << j);
        let ca = canonical_number(&spell_number(&dyadic_literal(a.0, a.1), &mut st));
        let cb = canonical_number(&spell_number(&dyadic_literal(b.0, b.1), &mut st));
        prop_assert_eq!(canonical_number(&ca), ca.clone());
        let (fa, fb) = (ca.parse::<f64>().unwrap(), cb.parse::<f64>().unwrap());
        prop_assert_eq!(fa, value(a), "{} from {:?}", ca, a);
        prop_assert_eq!(fb, value(b), "{} from {:?}", cb, b);
        let exact = cmp_dyadic(a, b);
        prop_assert_eq!(fa.partial_cmp(&fb), Some(exact));
        prop_assert_eq!(ca == cb, exact == Ordering::Equal, "{} vs {}", ca, cb);
    }
}
