//! The verdict and summary of `understudy run`: built from Envoy's access log (one JSON line per request,
//! with Understudy's `x-understudy*` response headers), cross-checked against the filter's own counters,
//! printed for people and written as JSON (`understudy.run-summary/v1`, documented in docs/ci.md) for
//! pipelines. New fields may be added to the JSON (record modes, cost); existing ones keep their meaning.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use understudy_matcher::classify;

use crate::costs::{dollars, thousands, Reading, Row, Usd};

/// The JSON summary's format name; bumped only on incompatible changes.
pub const FORMAT: &str = "understudy.run-summary/v1";

/// Most distinct entries listed per kind (misses, passthroughs, bad requests); the counts stay exact.
pub const MAX_LISTED: usize = 1000;

/// One access log line, as `envoy::access_log` writes it. Absent headers are `null`.
#[derive(Debug, Deserialize)]
pub struct LogLine {
    outcome: Option<String>,
    key: Option<String>,
    closest: Option<String>,
    method: Option<String>,
    path: Option<String>,
    status: Option<u16>,
}

/// Requests by outcome, as the access log shows them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// LLM requests Understudy decided: the sum of the five outcomes below.
    pub requests: u64,
    pub hits: u64,
    pub synthesized: u64,
    /// Misses answered with Understudy's 404 (`on_miss: error`).
    pub misses: u64,
    /// Malformed LLM requests answered with a 400.
    pub bad_requests: u64,
    /// LLM requests forwarded to the live upstream (`on_miss: passthrough`: misses and bad requests).
    pub passthroughs: u64,
    /// Requests that reached the upstream before Understudy decided (a broken filter chain).
    pub misconfigured: u64,
    /// Other requests (not LLM calls, e.g. `GET /v1/models`): passed through untouched.
    pub untouched: u64,
}

/// The closest asset a miss was compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closest {
    pub key: String,
    /// The asset's label: its name and where it came from.
    pub asset: String,
}

/// One distinct missing request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Miss {
    pub key: String,
    pub closest: Option<Closest>,
    pub operation: String,
    pub path: String,
    pub count: u64,
}

/// Requests grouped by operation, path and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub operation: String,
    pub path: String,
    pub status: Option<u16>,
    pub count: u64,
}

/// What virtualization saved: the access log's count of virtual answers, and the filter's cost metrics
/// (`null` when Envoy's stats could not be read: never guessed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Avoided {
    /// Live LLM calls not made: hits plus synthesized answers.
    pub calls: u64,
    /// Input tokens, cached ones included.
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The part of `input_tokens` a provider's prompt cache would have served.
    pub cached_input_tokens: Option<u64>,
    /// Dollars, exact to the micro-dollar, of the priced models.
    pub usd: Option<Usd>,
    pub usd_micros: Option<u64>,
    /// Virtual answers whose model has no price (their dollars are not in `usd`).
    pub unpriced_requests: Option<u64>,
    /// Virtual answers whose tokens are estimated.
    pub estimated_requests: Option<u64>,
    /// Per provider, operation and model, most dollars first.
    pub models: Vec<Row>,
}

impl Avoided {
    /// From the access log's count and the filter's cost metrics, if they could be read.
    pub fn new(calls: u64, cost: Option<&Reading>) -> Self {
        let Some(r) = cost else {
            return Avoided {
                calls,
                input_tokens: None,
                output_tokens: None,
                cached_input_tokens: None,
                usd: None,
                usd_micros: None,
                unpriced_requests: None,
                estimated_requests: None,
                models: Vec::new(),
            };
        };
        let t = r.totals();
        let mut models: Vec<Row> = r.rows.values().cloned().collect();
        models.sort_by(|a, b| b.usd_micros.cmp(&a.usd_micros).then(b.requests.cmp(&a.requests)));
        Avoided {
            calls,
            input_tokens: Some(t.input_tokens),
            output_tokens: Some(t.output_tokens),
            cached_input_tokens: Some(t.cached_input_tokens),
            usd: Some(t.usd),
            usd_micros: Some(t.usd_micros),
            unpriced_requests: Some(t.unpriced_requests),
            estimated_requests: Some(t.estimated_requests),
            models,
        }
    }
}

/// How the wrapped command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandEnd {
    /// Its exit code, if it exited.
    pub status: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Why it could not run or finish, if so.
    pub error: Option<String>,
}

/// Everything `understudy run` reports at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub format: &'static str,
    /// `passed` or `failed`.
    pub verdict: &'static str,
    /// The status `understudy run` exits with.
    pub exit_status: u8,
    pub command: CommandEnd,
    pub on_miss: &'static str,
    pub fail_on_miss: bool,
    pub duration_ms: u64,
    pub counts: Counts,
    /// The filter's own counters (`understudy.*` in Envoy's stats) at the end, if Envoy answered.
    pub stats: Option<BTreeMap<String, u64>>,
    /// Whether `counts` agree with `stats`.
    pub consistent: bool,
    pub misses: Vec<Miss>,
    pub passthroughs: Vec<Group>,
    pub bad_requests: Vec<Group>,
    pub avoided: Avoided,
    pub envoy_log: PathBuf,
    pub access_log: PathBuf,
    /// Warnings worth a look (inconsistent counts, nothing reached Understudy, ...).
    pub notes: Vec<String>,
    /// Record modes: what was recorded, deduplicated and failed (`null` in replay mode).
    pub recorded: Option<crate::launcher::RecordReport>,
}

/// What the access log says.
#[derive(Debug, Default)]
pub struct Tally {
    pub counts: Counts,
    pub misses: Vec<Miss>,
    pub passthroughs: Vec<Group>,
    pub bad_requests: Vec<Group>,
    /// Lines that did not parse (a torn last line while Envoy is still writing).
    pub unreadable: u64,
}

/// Reads the access log (a missing file is an empty log).
pub fn read_log(path: &Path) -> Tally {
    tally(&std::fs::read_to_string(path).unwrap_or_default())
}

fn tally(text: &str) -> Tally {
    let mut t = Tally::default();
    let mut misses: BTreeMap<String, Miss> = BTreeMap::new();
    let mut passthroughs: BTreeMap<(String, String, Option<u16>), u64> = BTreeMap::new();
    let mut bad: BTreeMap<(String, String, Option<u16>), u64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(l) = serde_json::from_str::<LogLine>(line) else {
            t.unreadable += 1;
            continue;
        };
        let c = &mut t.counts;
        let method = l.method.as_deref().unwrap_or_default();
        let path = l.path.clone().unwrap_or_default();
        let operation = classify(method, &path).map(|r| r.operation.name().to_string()).unwrap_or_default();
        let group = (operation.clone(), path.clone(), l.status);
        match l.outcome.as_deref() {
            Some("hit") => c.hits += 1,
            Some("synthesized") => c.synthesized += 1,
            Some("miss") => {
                c.misses += 1;
                let key = l.key.unwrap_or_default();
                misses
                    .entry(key.clone())
                    .or_insert_with(|| Miss {
                        key,
                        closest: l.closest.as_deref().and_then(closest),
                        operation,
                        path,
                        count: 0,
                    })
                    .count += 1;
            }
            Some("bad-request") => {
                c.bad_requests += 1;
                *bad.entry(group).or_default() += 1;
            }
            Some("passthrough") => {
                c.passthroughs += 1;
                *passthroughs.entry(group).or_default() += 1;
            }
            Some("misconfigured") => c.misconfigured += 1,
            _ => c.untouched += 1,
        }
    }
    let c = &mut t.counts;
    c.requests = c.hits + c.synthesized + c.misses + c.bad_requests + c.passthroughs;
    let mut misses: Vec<Miss> = misses.into_values().collect();
    misses.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    t.misses = misses.into_iter().take(MAX_LISTED).collect();
    t.passthroughs = groups(passthroughs);
    t.bad_requests = groups(bad);
    t
}

fn groups(m: BTreeMap<(String, String, Option<u16>), u64>) -> Vec<Group> {
    let mut v: Vec<Group> =
        m.into_iter().map(|((operation, path, status), count)| Group { operation, path, status, count }).collect();
    v.sort_by_key(|g| std::cmp::Reverse(g.count));
    v.truncate(MAX_LISTED);
    v
}

/// `x-understudy-closest: <key> <label>`, the label percent-encoded outside printable ASCII.
fn closest(header: &str) -> Option<Closest> {
    let (key, label) = header.split_once(' ')?;
    Some(Closest { key: key.to_string(), asset: percent_decode(label) })
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = bytes.clone().take(2).collect::<Vec<u8>>();
            let value =
                std::str::from_utf8(&hex).ok().filter(|h| h.len() == 2 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if let Some(v) = value.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                bytes.nth(1);
                continue;
            }
        }
        out.push(b);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the access log accounts for every decision the filter counted. Under `on_miss: passthrough` the
/// filter counts a forwarded miss as both a miss and a passthrough; the log only sees the passthrough.
pub fn agrees(c: &Counts, stats: &BTreeMap<String, u64>) -> bool {
    let s = |name: &str| stats.get(name).copied().unwrap_or(0);
    c.requests == s("requests")
        && c.hits == s("hits")
        && c.synthesized == s("synthesized")
        && c.passthroughs == s("passthroughs")
        && c.misses + c.bad_requests + c.passthroughs == s("misses") + s("bad_requests")
}

/// Requests no asset (nor synthesize rule) answered, whether they got the 404 or were forwarded: the
/// filter's counter when Envoy answered, never less than the log shows.
pub fn missed(c: &Counts, stats: Option<&BTreeMap<String, u64>>) -> u64 {
    stats.and_then(|s| s.get("misses").copied()).unwrap_or(0).max(c.misses)
}

impl Summary {
    /// The summary for people: a few lines, every miss with its key and closest asset.
    pub fn text(&self, program: &str) -> String {
        let c = &self.counts;
        let mut out = String::from("understudy run: summary\n");
        let ended = match (&self.command.error, self.command.status, self.command.signal) {
            (Some(e), _, _) => e.clone(),
            (None, Some(code), _) => format!("exited with status {code}"),
            (None, None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended".into(),
        };
        let _ = writeln!(out, "  command       {program} {ended} after {:.1} s", self.duration_ms as f64 / 1000.0);
        let _ = writeln!(
            out,
            "  LLM requests  {}: {} hit{}, {} synthesized, {} miss{}, {} bad request{}, {} passthrough{}",
            c.requests,
            c.hits,
            plural(c.hits),
            c.synthesized,
            c.misses,
            if c.misses == 1 { "" } else { "es" },
            c.bad_requests,
            plural(c.bad_requests),
            c.passthroughs,
            plural(c.passthroughs)
        );
        if let Some(r) = &self.recorded {
            let _ = writeln!(out, "  recorded      {}", r.text());
        }
        if c.untouched > 0 {
            let _ = writeln!(
                out,
                "  other         {} request{} passed through untouched",
                c.untouched,
                plural(c.untouched)
            );
        }
        let a = &self.avoided;
        match (a.input_tokens, a.output_tokens, a.usd_micros) {
            (Some(input), Some(output), Some(micros)) => {
                let _ = writeln!(
                    out,
                    "  saved         {} live LLM call{}: {} tokens ({} input, {} of them cached; {} output), {}",
                    a.calls,
                    plural(a.calls),
                    thousands(input.saturating_add(output)),
                    thousands(input),
                    thousands(a.cached_input_tokens.unwrap_or(0)),
                    thousands(output),
                    dollars(micros)
                );
                for m in &a.models {
                    let _ = writeln!(
                        out,
                        "    {} ({} {}): {} call{}, {} tokens, {}",
                        m.model,
                        m.provider,
                        m.operation,
                        m.requests,
                        plural(m.requests),
                        thousands(m.input_tokens.saturating_add(m.output_tokens)),
                        if m.priced { dollars(m.usd_micros) } else { "unpriced (add it with --prices FILE)".into() }
                    );
                }
            }
            _ => {
                let _ = writeln!(
                    out,
                    "  saved         {} live LLM call{} (tokens and dollars: Envoy's stats could not be read)",
                    a.calls,
                    plural(a.calls)
                );
            }
        }
        if !self.misses.is_empty() {
            let _ = writeln!(
                out,
                "  misses        {} distinct request{}:",
                self.misses.len(),
                plural(self.misses.len() as u64)
            );
            for m in &self.misses {
                let _ = writeln!(out, "    {} {} ({}) x{}", m.key, m.path, m.operation, m.count);
                match &m.closest {
                    Some(cl) => {
                        let _ = writeln!(out, "      closest asset: {}, key {}", cl.asset, cl.key);
                    }
                    None => {
                        let _ = writeln!(out, "      closest asset: none loaded for this operation");
                    }
                }
            }
            out.push_str("    add an asset for each (`understudy key FILE` prints an asset's key to compare)\n");
        }
        for (title, list) in [("passthroughs", &self.passthroughs), ("bad requests", &self.bad_requests)] {
            if list.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  {title:<13} by path:");
            for g in list {
                let status = g.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                let _ = writeln!(out, "    {} ({}) status {status} x{}", g.path, g.operation, g.count);
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note          {n}");
        }
        let _ = writeln!(out, "  verdict       {}: exit status {}", self.verdict.to_uppercase(), self.exit_status);
        let _ = writeln!(out, "  Envoy log     {}", self.envoy_log.display());
        out
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const KEY_A: &str = "aaaa";
    fn line(outcome: &str, key: &str, closest: &str, path: &str, status: u16) -> String {
        let o = if outcome.is_empty() { "null".to_string() } else { format!("{outcome:?}") };
        let c = if closest.is_empty() { "null".to_string() } else { format!("{closest:?}") };
        format!(r#"{{"outcome":{o},"key":{key:?},"closest":{c},"method":"POST","path":{path:?},"status":{status}}}"#)
    }

    #[test]
    fn the_log_is_counted_and_misses_grouped_by_key() {
        let text = [
            line("hit", "k1", "", "/v1/chat/completions", 200),
            line("miss", KEY_A, "cccc %22x%22 (a.json#0)%E2%9C%93", "/v1/chat/completions", 404),
            line("miss", KEY_A, "cccc %22x%22 (a.json#0)%E2%9C%93", "/v1/chat/completions", 404),
            line("miss", "bbbb", "", "/v1/embeddings", 404),
            line("bad-request", "", "", "/v1/messages", 400),
            line("passthrough", "", "", "/v1/responses", 200),
            line("synthesized", "k2", "", "/v1/embeddings", 200),
            line("", "", "", "/v1/models", 200),
            "{\"outcome\": \"hi".to_string(),
        ]
        .join("\n");
        let t = tally(&text);
        let c = &t.counts;
        assert_eq!((c.requests, c.hits, c.synthesized, c.misses), (7, 1, 1, 3));
        assert_eq!((c.bad_requests, c.passthroughs, c.untouched, t.unreadable), (1, 1, 1, 1));
        assert_eq!(t.misses.len(), 2);
        let a = &t.misses[0];
        assert_eq!((a.key.as_str(), a.count, a.operation.as_str()), (KEY_A, 2, "openai.chat_completions"));
        assert_eq!(a.closest, Some(Closest { key: "cccc".into(), asset: "\"x\" (a.json#0)\u{2713}".into() }));
        assert_eq!(t.misses[1].closest, None);
        assert_eq!(t.bad_requests[0].operation, "anthropic.messages");
        assert_eq!(t.passthroughs[0].path, "/v1/responses");
    }

    #[test]
    fn counts_are_checked_against_the_filter_counters() {
        let c = Counts { requests: 4, hits: 2, misses: 1, passthroughs: 1, ..Counts::default() };
        let mut s: BTreeMap<String, u64> =
            [("requests", 4), ("hits", 2), ("misses", 2), ("passthroughs", 1), ("bad_requests", 0), ("synthesized", 0)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert!(agrees(&c, &s), "a forwarded miss is a miss and a passthrough to the filter");
        assert_eq!(missed(&c, Some(&s)), 2);
        s.insert("hits".into(), 3);
        assert!(!agrees(&c, &s));
        assert_eq!(missed(&c, None), 1);
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%25b%zz%+1%4"), "a%b%zz%+1%4");
    }
}
