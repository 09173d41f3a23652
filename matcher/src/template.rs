//! Dynamic data in virtual responses: a small placeholder language inside response string values.
//!
//! `{{ expr }}` anywhere in a string is replaced on every hit. A string that is exactly one placeholder
//! takes the expression's JSON type (`"created": "{{now}}"` becomes a number). Expressions:
//!
//! | expression | value |
//! |---|---|
//! | `id` | a fresh id in the operation's format (`chatcmpl-…`, `cmpl-…`, `resp_…`, `msg_01…`) |
//! | `id:PREFIX` | `PREFIX` + 24 random base62 characters, e.g. `{{id:call_}}`, `{{id:toolu_01}}` |
//! | `uuid` | a random UUID v4 |
//! | `now`, `now_ms` | Unix time in seconds / milliseconds (numbers) |
//! | `now_iso` | RFC 3339 UTC time, e.g. `2026-11-29T13:00:00Z` |
//! | `request.model` | the request's model: the path's (Azure deployment, ...) else the body's `model` |
//! | `request:/json/pointer` | that value of the request body (any JSON type) |
//! | `random:a\|b\|c` | one of the options, by the asset's seeded generator |
//! | `random_int:LO:HI` | an integer in `LO..=HI`, seeded likewise |
//! | `'text'` | the literal text (to write `{{` itself: `{{'{{'}}`) |

use serde_json::{Number, Value};

use crate::dialect::Route;

/// SplitMix64: tiny, fast, good enough for ids and seeded choices (never for secrets).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// `len` base62 characters.
    pub fn base62(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        (0..len).map(|_| ALPHABET.get(self.below(62) as usize).map_or('0', |&b| char::from(b))).collect()
    }
}

/// One parsed expression.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Id,
    IdPrefix(String),
    Uuid,
    Now,
    NowMs,
    NowIso,
    RequestModel,
    RequestPointer(String),
    Random(Vec<String>),
    RandomInt(i64, i64),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Expr(Expr),
}

/// A compiled template string.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Segment>);

/// Per-hit inputs for expansion.
pub struct Context<'a> {
    /// The request's route (for `id` and `request.model`).
    pub route: &'a Route,
    /// The parsed request body.
    pub request: &'a Value,
    /// Unix time in nanoseconds.
    pub now_nanos: u64,
    /// Source of fresh ids: seeded from time, so ids differ across hits and restarts.
    pub ids: &'a mut Rng,
    /// Source of `random:` choices: seeded from the asset's seed and call number, so runs repeat.
    pub choices: &'a mut Rng,
}

impl Template {
    /// Compiles a string; `None` if it holds no placeholder. Errors say what is wrong with which placeholder.
    pub fn compile(s: &str) -> Result<Option<Template>, String> {
        if !s.contains("{{") {
            return Ok(None);
        }
        let mut segs = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            let (before, after) = rest.split_at(start);
            if !before.is_empty() {
                segs.push(Segment::Text(before.to_string()));
            }
            let after = after.get(2..).unwrap_or_default();
            let end = find_close(after).ok_or_else(|| format!("unclosed placeholder in {s:?}"))?;
            let inner = after.get(..end).unwrap_or_default().trim();
            segs.push(Segment::Expr(parse_expr(inner)?));
            rest = after.get(end + 2..).unwrap_or_default();
        }
        if !rest.is_empty() {
            segs.push(Segment::Text(rest.to_string()));
        }
        Ok(Some(Template(segs)))
    }

    /// Expands to a JSON value: a lone placeholder keeps its type, anything else is a string.
    pub fn expand(&self, ctx: &mut Context) -> Value {
        if let [Segment::Expr(e)] = self.0.as_slice() {
            return eval(e, ctx);
        }
        let mut out = String::new();
        for seg in &self.0 {
            match seg {
                Segment::Text(t) => out.push_str(t),
                Segment::Expr(e) => match eval(e, ctx) {
                    Value::String(s) => out.push_str(&s),
                    Value::Null => {}
                    v => out.push_str(&v.to_string()),
                },
            }
        }
        Value::String(out)
    }
}

/// Finds the `}}` closing a placeholder, skipping over quoted literals.
fn find_close(s: &str) -> Option<usize> {
    let mut in_quote = false;
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\'' => in_quote = !in_quote,
            b'}' if !in_quote && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_expr(e: &str) -> Result<Expr, String> {
    if let Some(lit) = e.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        return Ok(Expr::Literal(lit.to_string()));
    }
    let (name, arg) = match e.split_once(':') {
        Some((n, a)) => (n.trim(), Some(a)),
        None => (e, None),
    };
    Ok(match (name, arg) {
        ("id", None) => Expr::Id,
        ("id", Some(p)) if !p.is_empty() => Expr::IdPrefix(p.to_string()),
        ("uuid", None) => Expr::Uuid,
        ("now", None) => Expr::Now,
        ("now_ms", None) => Expr::NowMs,
        ("now_iso", None) => Expr::NowIso,
        ("request.model", None) => Expr::RequestModel,
        ("request", Some(p)) if p.is_empty() || p.starts_with('/') => Expr::RequestPointer(p.to_string()),
        ("random", Some(opts)) => Expr::Random(opts.split('|').map(str::to_string).collect()),
        ("random_int", Some(range)) => {
            let (lo, hi) = range.split_once(':').ok_or_else(|| format!("{{{{{e}}}}}: use random_int:LO:HI"))?;
            let lo: i64 = lo.trim().parse().map_err(|_| format!("{{{{{e}}}}}: {lo:?} is not an integer"))?;
            let hi: i64 = hi.trim().parse().map_err(|_| format!("{{{{{e}}}}}: {hi:?} is not an integer"))?;
            if lo > hi {
                return Err(format!("{{{{{e}}}}}: LO is greater than HI"));
            }
            Expr::RandomInt(lo, hi)
        }
        _ => {
            return Err(format!(
                "unknown placeholder {{{{{e}}}}} (known: id, id:PREFIX, uuid, now, now_ms, now_iso, request.model, \
                 request:/pointer, random:a|b, random_int:LO:HI, 'literal')"
            ))
        }
    })
}

fn eval(e: &Expr, ctx: &mut Context) -> Value {
    match e {
        Expr::Id => Value::String(ctx.route.operation.dialect().fresh_id(ctx.route.operation, ctx.ids)),
        Expr::IdPrefix(p) => Value::String(format!("{p}{}", ctx.ids.base62(24))),
        Expr::Uuid => Value::String(uuid_v4(ctx.ids)),
        Expr::Now => Value::Number(Number::from(ctx.now_nanos / 1_000_000_000)),
        Expr::NowMs => Value::Number(Number::from(ctx.now_nanos / 1_000_000)),
        Expr::NowIso => Value::String(iso8601(ctx.now_nanos / 1_000_000_000)),
        Expr::RequestModel => ctx.route.model_of(ctx.request).map_or(Value::Null, |m| Value::String(m.to_string())),
        Expr::RequestPointer(p) => ctx.request.pointer(p).cloned().unwrap_or(Value::Null),
        Expr::Random(opts) => {
            let i = ctx.choices.below(opts.len() as u64) as usize;
            Value::String(opts.get(i).cloned().unwrap_or_default())
        }
        Expr::RandomInt(lo, hi) => {
            let span = hi.abs_diff(*lo).saturating_add(1);
            let v = lo.wrapping_add(ctx.choices.below(span) as i64);
            Value::Number(Number::from(v))
        }
        Expr::Literal(s) => Value::String(s.clone()),
    }
}

/// Same shape as `old` (prefix up to the first `-`/`_` and any lower-case word marker after it, as in
/// `msg_vrtx_01…` of Anthropic on Vertex AI; same length), fresh random characters.
pub fn refresh_id(old: &str, rng: &mut Rng) -> String {
    let mut cut = old.find(['-', '_']).map(|i| i + 1).unwrap_or(0);
    while cut > 0 {
        let rest = old.get(cut..).unwrap_or_default();
        match rest.find(['-', '_']) {
            Some(i) if i > 0 && rest.get(..i).is_some_and(|w| w.bytes().all(|b| b.is_ascii_lowercase())) => {
                cut += i + 1;
            }
            _ => break,
        }
    }
    let (prefix, body) = old.split_at(cut);
    // Keep Anthropic's "01" version marker after "msg_"/"toolu_".
    let (prefix, body) = match body.strip_prefix("01") {
        Some(b) if prefix.ends_with('_') => (format!("{prefix}01"), b),
        _ => (prefix.to_string(), body),
    };
    let hexy = !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut draw = || -> String {
        if hexy {
            (0..body.len()).map(|_| char::from_digit(rng.below(16) as u32, 16).unwrap_or('0')).collect()
        } else {
            rng.base62(body.chars().count().max(8))
        }
    };
    // A short id can come out unchanged by chance (1 in 16 for one hex digit): a refreshed id never equals the old.
    let mut fresh = draw();
    for _ in 0..8 {
        if fresh != body {
            break;
        }
        fresh = draw();
    }
    if fresh == body {
        let first = if fresh.starts_with('0') { "1" } else { "0" };
        fresh = format!("{first}{}", fresh.get(1..).unwrap_or_default());
    }
    format!("{prefix}{fresh}")
}

fn uuid_v4(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    let hi = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let lo = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

/// RFC 3339 UTC from Unix seconds (civil-from-days, no time crate needed).
pub fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem / 60) % 60, rem % 60)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    static CHAT: std::sync::LazyLock<Route> =
        std::sync::LazyLock::new(|| Route::of(crate::dialect::Operation::ChatCompletions));

    fn ctx<'a>(req: &'a Value, ids: &'a mut Rng, choices: &'a mut Rng) -> Context<'a> {
        Context { route: &CHAT, request: req, now_nanos: 1_764_403_200_123_456_789, ids, choices }
    }

    #[test]
    fn placeholders_expand_with_types() {
        let req = json!({"model": "gpt-4o", "messages": [{"content": "hello"}], "n": 2});
        let (mut a, mut b) = (Rng::new(1), Rng::new(2));
        let mut c = ctx(&req, &mut a, &mut b);
        let t = |s: &str| Template::compile(s).unwrap().unwrap();
        assert_eq!(t("{{now}}").expand(&mut c), json!(1_764_403_200u64));
        assert_eq!(t("{{ now_ms }}").expand(&mut c), json!(1_764_403_200_123u64));
        assert_eq!(t("{{now_iso}}").expand(&mut c), json!("2025-11-29T08:00:00Z"));
        assert_eq!(t("{{request.model}}").expand(&mut c), json!("gpt-4o"));
        assert_eq!(t("{{request:/n}}").expand(&mut c), json!(2));
        assert_eq!(t("you said: {{request:/messages/0/content}}!").expand(&mut c), json!("you said: hello!"));
        assert_eq!(t("{{'{{'}}x}}").expand(&mut c), json!("{{x}}"));
        let id = t("{{id}}").expand(&mut c);
        let id = id.as_str().unwrap();
        assert!(id.starts_with("chatcmpl-") && id.len() == 38, "{id}");
        let call = t("{{id:call_}}").expand(&mut c);
        assert_eq!(call.as_str().unwrap().len(), 29);
        let u = t("{{uuid}}").expand(&mut c);
        let u = u.as_str().unwrap();
        assert_eq!((u.len(), &u[14..15]), (36, "4"));
    }

    #[test]
    fn seeded_choices_repeat_and_cover_the_options() {
        let req = json!({});
        let t = Template::compile("{{random:red|green|blue}}").unwrap().unwrap();
        let run = |seed| {
            let (mut a, mut b) = (Rng::new(0), Rng::new(seed));
            let mut c = ctx(&req, &mut a, &mut b);
            (0..30).map(|_| t.expand(&mut c).as_str().unwrap().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        for colour in ["red", "green", "blue"] {
            assert!(run(7).iter().any(|c| c == colour), "{colour} never chosen");
        }
        let r = Template::compile("{{random_int:5:7}}").unwrap().unwrap();
        let (mut a, mut b) = (Rng::new(0), Rng::new(3));
        let mut c = ctx(&req, &mut a, &mut b);
        let vals: Vec<i64> = (0..50).map(|_| r.expand(&mut c).as_i64().unwrap()).collect();
        assert!(vals.iter().all(|v| (5..=7).contains(v)));
        assert!(vals.contains(&5) && vals.contains(&7));
    }

    #[test]
    fn bad_placeholders_are_errors_not_panics() {
        for bad in ["{{nope}}", "{{now", "{{random_int:3}}", "{{random_int:9:1}}", "{{request:x}}", "{{id:}}"] {
            assert!(Template::compile(bad).is_err(), "{bad}");
        }
        assert_eq!(Template::compile("plain").unwrap(), None);
    }

    #[test]
    fn refreshed_ids_keep_their_format() {
        let mut r = Rng::new(9);
        for seed in 0..200 {
            for old in ["chatcmpl-1", "x_0", "id-00", "a-f"] {
                assert_ne!(refresh_id(old, &mut Rng::new(seed)), old, "seed {seed}");
            }
        }
        let a = refresh_id("chatcmpl-BVx2M9rJ7tZ1kq0aLw3yF8eHn4cUd", &mut r);
        assert!(a.starts_with("chatcmpl-") && a.len() == 38 && a != "chatcmpl-BVx2M9rJ7tZ1kq0aLw3yF8eHn4cUd");
        let m = refresh_id("msg_01XFDUDYJgAACzvnptvVoYEL", &mut r);
        assert!(m.starts_with("msg_01") && m.len() == 28, "{m}");
        let v = refresh_id("msg_vrtx_01Pq3sVx8TkWm2bNc5rLd7Gh", &mut r);
        assert!(v.starts_with("msg_vrtx_01") && v.len() == 33 && v != "msg_vrtx_01Pq3sVx8TkWm2bNc5rLd7Gh", "{v}");
        let g = refresh_id("Gx7WaJ2uDdKrnvgP8OHs2Qs", &mut r);
        assert!(g.len() == 23 && g.bytes().all(|b| b.is_ascii_alphanumeric()) && g != "Gx7WaJ2uDdKrnvgP8OHs2Qs", "{g}");
        let h = refresh_id("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b", &mut r);
        assert!(h.starts_with("resp_") && h[5..].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn iso_dates_are_right() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
