//! Reading the cost metrics back from Envoy: its admin `/stats` in any of its forms (JSON, Prometheus, text),
//! or a saved copy, summed per provider, operation and model over one or more Envoys. `understudy report` and
//! `understudy run`'s summary both read them here.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use understudy_matcher::cost::stats::{self, Metric, Series, TokenType};

/// Seconds in a week, and weeks in a quarter (13 weeks = 91 days).
pub const WEEK_SECONDS: u64 = 7 * 24 * 3600;
/// Weeks in a quarter.
pub const QUARTER_WEEKS: u64 = 13;

/// What one provider/operation/model saved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    pub provider: String,
    pub operation: String,
    pub model: String,
    /// Virtual answers: live calls not made.
    pub requests: u64,
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The part of `input_tokens` served from a prompt cache.
    pub cached_input_tokens: u64,
    /// Dollars, exact to the micro-dollar (a JSON number with six decimals).
    pub usd: Usd,
    pub usd_micros: u64,
    /// True when every request of the row had a price.
    pub priced: bool,
    /// Requests whose model has no price (their dollars are not in `usd`).
    pub unpriced_requests: u64,
    /// Requests whose tokens are estimated (no usage in the answer, or synthesized).
    pub estimated_requests: u64,
}

/// The filter's outcome counters (`understudy.hits`, ...), summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    pub requests: u64,
    pub hits: u64,
    pub synthesized: u64,
    pub misses: u64,
    pub bad_requests: u64,
    pub over_budget: u64,
    pub passthroughs: u64,
}

/// The cost metrics of one or more Envoys.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// By (provider, operation, model).
    pub rows: BTreeMap<(String, String, String), Row>,
    pub outcomes: Outcomes,
}

/// One Envoy's stats as read.
#[derive(Debug, Clone)]
pub struct Source {
    /// Where they came from (a URL or a file).
    pub name: String,
    /// Envoy's `server.uptime`, if the stats had it.
    pub uptime_seconds: Option<u64>,
    pub reading: Reading,
}

/// Dollars held as micro-dollars, written in JSON as an exact number with six decimals (`1.234567`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Usd(pub u64);

impl Serialize for Usd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        usd(self.0).serialize(s)
    }
}

/// Dollars held as micro-dollars, written in JSON rounded to the cent (`1.23`): for projections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cents(pub u64);

impl Serialize for Cents {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        cents(self.0).serialize(s)
    }
}

/// Dollars from micro-dollars, exactly: `1234567` → `1.234567`.
pub fn usd(micros: u64) -> serde_json::Number {
    let text = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    serde_json::from_str(&text).unwrap_or_else(|_| serde_json::Number::from(micros / 1_000_000))
}

/// Dollars for people: all six decimals under a dollar (`$0.000025`), else rounded to the cent (`$1,234.57`).
pub fn dollars(micros: u64) -> String {
    if micros < 1_000_000 {
        return format!("$0.{micros:06}");
    }
    let c = micros.saturating_add(5_000) / 10_000;
    format!("${}.{:02}", thousands(c / 100), c % 100)
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Reading {
    fn row(&mut self, provider: &str, operation: &str, model: &str) -> &mut Row {
        self.rows.entry((provider.to_string(), operation.to_string(), model.to_string())).or_insert_with(|| Row {
            provider: provider.to_string(),
            operation: operation.to_string(),
            model: model.to_string(),
            priced: true,
            ..Row::default()
        })
    }

    fn add(&mut self, s: Series, value: u64) {
        let row = self.row(&s.provider, &s.operation, &s.model);
        let slot = match s.metric {
            Metric::VirtualRequests => &mut row.requests,
            Metric::TokensAvoided(TokenType::Input) => &mut row.input_tokens,
            Metric::TokensAvoided(TokenType::Output) => &mut row.output_tokens,
            Metric::TokensAvoided(TokenType::CachedInput) => &mut row.cached_input_tokens,
            Metric::CostMicros => &mut row.usd_micros,
            Metric::Unpriced => &mut row.unpriced_requests,
            Metric::Estimated => &mut row.estimated_requests,
        };
        *slot = slot.saturating_add(value);
        row.settle();
    }

    fn outcome(&mut self, name: &str, value: u64) {
        let o = &mut self.outcomes;
        let slot = match name {
            "requests" => &mut o.requests,
            "hits" => &mut o.hits,
            "synthesized" => &mut o.synthesized,
            "misses" => &mut o.misses,
            "bad_requests" => &mut o.bad_requests,
            "over_budget" => &mut o.over_budget,
            "passthroughs" => &mut o.passthroughs,
            _ => return,
        };
        *slot = slot.saturating_add(value);
    }

    /// Adds another reading (another Envoy) to this one.
    pub fn merge(&mut self, other: &Reading) {
        for r in other.rows.values() {
            self.row(&r.provider, &r.operation, &r.model).absorb(r);
        }
        let o = &other.outcomes;
        for (name, v) in [
            ("requests", o.requests),
            ("hits", o.hits),
            ("synthesized", o.synthesized),
            ("misses", o.misses),
            ("bad_requests", o.bad_requests),
            ("over_budget", o.over_budget),
            ("passthroughs", o.passthroughs),
        ] {
            self.outcome(name, v);
        }
    }

    /// The sum of every row.
    pub fn totals(&self) -> Row {
        let mut t = Row { priced: true, ..Row::default() };
        for r in self.rows.values() {
            t.absorb(r);
        }
        t
    }
}

impl Row {
    fn absorb(&mut self, r: &Row) {
        self.requests = self.requests.saturating_add(r.requests);
        self.input_tokens = self.input_tokens.saturating_add(r.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(r.output_tokens);
        self.cached_input_tokens = self.cached_input_tokens.saturating_add(r.cached_input_tokens);
        self.usd_micros = self.usd_micros.saturating_add(r.usd_micros);
        self.unpriced_requests = self.unpriced_requests.saturating_add(r.unpriced_requests);
        self.estimated_requests = self.estimated_requests.saturating_add(r.estimated_requests);
        self.settle();
    }

    fn settle(&mut self) {
        self.priced = self.unpriced_requests == 0;
        self.usd = Usd(self.usd_micros);
    }
}

/// Parses Envoy's stats in whichever form they are: JSON (`/stats?format=json`), Prometheus
/// (`/stats/prometheus`) or text (`/stats`). `name` says where they came from, for errors.
pub fn parse(text: &str, name: &str) -> Result<Source> {
    let mut reading = Reading::default();
    let mut uptime = None;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{name}: not Envoy's JSON stats"))?;
        let Some(list) = v.get("stats").and_then(|s| s.as_array()) else {
            bail!("{name}: JSON without a \"stats\" list: not Envoy's /stats?format=json");
        };
        for s in list {
            let (Some(n), Some(value)) = (s.get("name").and_then(|n| n.as_str()), s.get("value")) else { continue };
            let Some(value) = value.as_u64().or_else(|| value.as_f64().map(|f| f as u64)) else { continue };
            named(&mut reading, &mut uptime, n, value);
        }
    } else if text.lines().any(|l| l.starts_with("# TYPE ") || l.contains("{")) {
        let mut untagged = false;
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let Some((metric, labels, value)) = prometheus_line(line) else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let value = value as u64;
            if metric == "envoy_server_uptime" {
                uptime = Some(value);
            } else if let Some(s) = stats::parse_prometheus(&metric, &labels) {
                reading.add(s, value);
            } else if let Some(bare) = metric.strip_prefix("understudy_") {
                untagged |= bare.starts_with("gen_ai_");
                reading.outcome(bare, value);
            }
        }
        if untagged {
            bail!(
                "{name}: the cost metrics are there but without labels: this Envoy has no stats_tags for them. Read \
                 its /stats?format=json instead (`--admin http://HOST:PORT` does), or add the stats_tags (docs/cost.md)"
            );
        }
    } else {
        for line in text.lines() {
            let Some((n, value)) = line.trim().rsplit_once(": ") else { continue };
            let Ok(value) = value.trim().parse::<u64>() else { continue };
            named(&mut reading, &mut uptime, n, value);
        }
    }
    Ok(Source { name: name.to_string(), uptime_seconds: uptime, reading })
}

fn named(reading: &mut Reading, uptime: &mut Option<u64>, name: &str, value: u64) {
    if name == "server.uptime" {
        *uptime = Some(value);
    } else if let Some(s) = stats::parse_stat_name(name) {
        reading.add(s, value);
    } else if let Some(bare) = stats::strip_env(name).0.strip_prefix("wasmcustom.understudy.") {
        // Summed over environments, like the cost metrics.
        reading.outcome(bare, value);
    }
}

/// A Prometheus sample: metric name, labels (unescaped) and value (as written).
type Sample = (String, Vec<(String, String)>, String);

/// One sample line of the Prometheus text format.
fn prometheus_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let split = line.find(['{', ' '])?;
    let (name, mut rest) = line.split_at(split);
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i + 1,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        };
        rest = body.get(end..)?;
    }
    let value = rest.split_whitespace().next()?.to_string();
    Some((name.to_string(), labels, value))
}

/// What one `--admin` or `--stats` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// An Envoy admin URL (`http://HOST:PORT`, optionally with a `/stats...` path).
    Admin(String),
    /// A saved copy of `/stats` in any form.
    File(std::path::PathBuf),
}

/// The filter Envoy applies to `/stats` for what the report needs (cost metrics, outcomes, uptime).
pub const JSON_PATH: &str = "/stats?format=json&filter=%5E(wasmcustom%5C.understudy%5C.%7Cserver%5C.uptime%24)";

/// Fetches and parses one place's stats.
pub fn read(place: &Place) -> Result<Source> {
    match place {
        Place::File(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            parse(&text, &p.display().to_string())
        }
        Place::Admin(url) => {
            let base = url.trim_end_matches('/');
            let has_path = base.splitn(4, '/').nth(3).is_some_and(|p| !p.is_empty());
            let full = if has_path { base.to_string() } else { format!("{base}{JSON_PATH}") };
            if !full.starts_with("http://") && !full.starts_with("https://") {
                bail!("--admin {url}: an Envoy admin URL starts with http:// (e.g. http://127.0.0.1:9901)");
            }
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(std::time::Duration::from_secs(30))).build().into();
            let mut resp = agent.get(&full).call().with_context(|| format!("cannot read Envoy's stats at {full}"))?;
            let text = resp
                .body_mut()
                .with_config()
                .limit(256 << 20)
                .read_to_string()
                .with_context(|| format!("cannot read Envoy's stats at {full}"))?;
            parse(&text, url)
        }
    }
}

/// Weekly figures from what was observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rates {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    /// Dollars, rounded to the cent.
    pub usd: Cents,
    pub usd_micros: u64,
}

impl Rates {
    /// `row` × `factor`, rounded.
    pub fn scaled(row: &Row, factor: f64) -> Rates {
        let f = |n: u64| (n as f64 * factor).round() as u64;
        let micros = f(row.usd_micros);
        Rates {
            requests: f(row.requests),
            input_tokens: f(row.input_tokens),
            output_tokens: f(row.output_tokens),
            cached_input_tokens: f(row.cached_input_tokens),
            usd: Cents(micros),
            usd_micros: micros,
        }
    }

    /// The sum of several.
    pub fn sum<'a>(all: impl Iterator<Item = &'a Rates>) -> Rates {
        let mut t = Rates::default();
        for r in all {
            t.requests += r.requests;
            t.input_tokens += r.input_tokens;
            t.output_tokens += r.output_tokens;
            t.cached_input_tokens += r.cached_input_tokens;
            t.usd_micros += r.usd_micros;
        }
        t.usd = Cents(t.usd_micros);
        t
    }

    /// × `n`.
    pub fn times(&self, n: u64) -> Rates {
        let micros = self.usd_micros.saturating_mul(n);
        Rates {
            requests: self.requests.saturating_mul(n),
            input_tokens: self.input_tokens.saturating_mul(n),
            output_tokens: self.output_tokens.saturating_mul(n),
            cached_input_tokens: self.cached_input_tokens.saturating_mul(n),
            usd: Cents(micros),
            usd_micros: micros,
        }
    }
}

/// Micro-dollars as dollars rounded to the cent (a JSON number).
pub fn cents(micros: u64) -> serde_json::Number {
    let c = (micros + 5_000) / 10_000;
    serde_json::from_str(&format!("{}.{:02}", c / 100, c % 100)).unwrap_or_else(|_| serde_json::Number::from(c / 100))
}

/// `3725` → `1 h 02 min`.
pub fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    let mut out = String::new();
    if d > 0 {
        let _ = write!(out, "{d} d {h} h");
    } else if h > 0 {
        let _ = write!(out, "{h} h {m:02} min");
    } else if m > 0 {
        let _ = write!(out, "{m} min {s:02} s");
    } else {
        let _ = write!(out, "{s} s");
    }
    out
}

/// Large counts for people: `34.2 million`, `1.5 billion`, else with thousands separators.
pub fn big(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} billion", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} million", n as f64 / 1e6),
        n => thousands(n),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use understudy_matcher::cost::stats::{stat_name, Labels};

    fn name(metric: Metric, model: &str) -> String {
        let labels = Labels { provider: "openai".into(), operation: "chat".into(), model: model.into() };
        format!("wasmcustom.{}", stat_name(metric, &labels))
    }

    #[test]
    fn the_three_forms_of_envoys_stats_read_the_same() {
        let model = "ft:gpt-4o:org \"x\", y\\z";
        let pairs = [
            (name(Metric::VirtualRequests, model), 3),
            (name(Metric::TokensAvoided(TokenType::Input), model), 72),
            (name(Metric::TokensAvoided(TokenType::CachedInput), model), 10),
            (name(Metric::CostMicros, model), 25),
            (name(Metric::VirtualRequests, "house"), 2),
            (name(Metric::Unpriced, "house"), 2),
            ("wasmcustom.understudy.hits".to_string(), 4),
            ("wasmcustom.understudy.synthesized".to_string(), 1),
            ("server.uptime".to_string(), 60),
            ("cluster.x.upstream_rq_total".to_string(), 9),
        ];
        let json = serde_json::json!({"stats": pairs.iter().map(|(n, v)| serde_json::json!({"name": n, "value": v})).collect::<Vec<_>>()});
        let text: String = pairs.iter().map(|(n, v)| format!("{n}: {v}\n")).collect();
        let esc = model.replace('\\', "\\\\").replace('"', "\\\"");
        let prom = format!(
            "# TYPE understudy_virtual_requests_total counter\n\
             understudy_virtual_requests_total{{gen_ai_provider_name=\"openai\",gen_ai_operation_name=\"chat\",gen_ai_request_model=\"{esc}\"}} 3\n\
             understudy_virtual_requests_total{{gen_ai_provider_name=\"openai\",gen_ai_operation_name=\"chat\",gen_ai_request_model=\"house\"}} 2\n\
             understudy_tokens_avoided_total{{gen_ai_token_type=\"input\",gen_ai_provider_name=\"openai\",gen_ai_operation_name=\"chat\",gen_ai_request_model=\"{esc}\"}} 72\n\
             understudy_tokens_avoided_total{{gen_ai_token_type=\"cached_input\",gen_ai_provider_name=\"openai\",gen_ai_operation_name=\"chat\",gen_ai_request_model=\"{esc}\"}} 10\n\
             understudy_cost_avoided_usd_micros_total{{gen_ai_provider_name=\"openai\",gen_ai_operation_name=\"chat\",gen_ai_request_model=\"{esc}\"}} 25\n\
             understudy_unpriced_requests_total{{gen_ai_provider_name=\"openai\",gen_ai_operation_name=\"chat\",gen_ai_request_model=\"house\"}} 2\n\
             understudy_hits{{}} 4\nunderstudy_synthesized{{}} 1\nenvoy_server_uptime{{}} 60\n"
        );
        let mut seen = Vec::new();
        for (form, t) in [("json", json.to_string()), ("text", text), ("prometheus", prom)] {
            let s = parse(&t, form).unwrap();
            assert_eq!(s.uptime_seconds, Some(60), "{form}");
            let r = &s.reading;
            let row = &r.rows[&("openai".into(), "chat".into(), model.into())];
            assert_eq!(
                (row.requests, row.input_tokens, row.cached_input_tokens, row.usd_micros),
                (3, 72, 10, 25),
                "{form}"
            );
            assert!(row.priced);
            assert_eq!(serde_json::to_string(&row.usd).unwrap(), "0.000025");
            let house = &r.rows[&("openai".into(), "chat".into(), "house".into())];
            assert!(!house.priced && house.unpriced_requests == 2, "{form}");
            assert_eq!((r.outcomes.hits, r.outcomes.synthesized), (4, 1), "{form}");
            seen.push(r.rows.clone());
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn stats_labeled_with_an_environment_read_the_same() {
        let plain = format!("{}: 3\nwasmcustom.understudy.hits: 4\n", name(Metric::VirtualRequests, "gpt-4o"));
        let env = |n: &str| {
            let bare = n.strip_prefix("wasmcustom.").unwrap();
            format!("wasmcustom.{}", understudy_matcher::cost::stats::with_env(bare, Some("staging")))
        };
        let tagged =
            format!("{}: 3\n{}: 4\n", env(&name(Metric::VirtualRequests, "gpt-4o")), env("wasmcustom.understudy.hits"));
        assert!(tagged.contains("understudy_env=.=staging"), "{tagged}");
        let prom = "understudy_virtual_requests_total{understudy_env=\"staging\",gen_ai_provider_name=\"openai\",\
                    gen_ai_operation_name=\"chat\",gen_ai_request_model=\"gpt-4o\"} 3\n\
                    understudy_hits{understudy_env=\"staging\"} 4\n";
        let want = parse(&plain, "plain").unwrap().reading;
        for (form, t) in [("tagged", tagged), ("prometheus", prom.to_string())] {
            let r = parse(&t, form).unwrap().reading;
            assert_eq!((&r.rows, r.outcomes.hits), (&want.rows, 4), "{form}");
        }
    }

    #[test]
    fn prometheus_without_stats_tags_is_explained() {
        let t = "# TYPE understudy_gen_ai_provider_name___openai___virtual_requests_total counter\n\
                 understudy_gen_ai_provider_name___openai___virtual_requests_total{} 3\n";
        let e = parse(t, "x").unwrap_err().to_string();
        assert!(e.contains("stats_tags") && e.contains("format=json"), "{e}");
    }

    #[test]
    fn readings_merge_by_label_set() {
        let a =
            parse(&format!("{}: 2\n{}: 7\n", name(Metric::VirtualRequests, "m"), name(Metric::CostMicros, "m")), "a")
                .unwrap();
        let b = parse(
            &format!(
                "{}: 1\n{}: 5\nwasmcustom.understudy.hits: 1\n",
                name(Metric::VirtualRequests, "m"),
                name(Metric::VirtualRequests, "n")
            ),
            "b",
        )
        .unwrap();
        let mut r = a.reading.clone();
        r.merge(&b.reading);
        assert_eq!(r.rows.len(), 2);
        let m = &r.rows[&("openai".into(), "chat".into(), "m".into())];
        assert_eq!((m.requests, m.usd_micros), (3, 7));
        assert_eq!(r.totals().requests, 8);
        assert_eq!(r.outcomes.hits, 1);
    }

    #[test]
    fn money_and_numbers_read_well() {
        assert_eq!(usd(1_234_567).to_string(), "1.234567");
        assert_eq!(usd(5).to_string(), "0.000005");
        assert_eq!(dollars(25), "$0.000025");
        assert_eq!(dollars(1_234_567_890_000), "$1,234,567.89");
        assert_eq!(dollars(108_527_760), "$108.53");
        assert_eq!(dollars(999_999), "$0.999999");
        assert_eq!(dollars(1_999_995), "$2.00");
        assert_eq!(cents(1_234_567).to_string(), "1.23");
        assert_eq!(cents(4_999).to_string(), "0.00");
        assert_eq!(big(34_210_000), "34.2 million");
        assert_eq!(duration(3725), "1 h 02 min");
    }
}
