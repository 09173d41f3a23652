//! `understudy report`: what virtualization saved, read from one or more Envoys' stats — virtual
//! transactions, tokens and dollars per provider, operation and model, totals, and weekly and quarterly
//! projections — as text, JSON (`understudy.cost-report/v1`, docs/cost.md) or one self-contained HTML page.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::costs::{self, big, dollars, duration, thousands, Outcomes, Place, Rates, Reading, Row, Source, Usd};

/// The JSON report's format name; bumped only on incompatible changes.
pub const FORMAT: &str = "understudy.cost-report/v1";

#[derive(Args)]
pub struct ReportArgs {
    /// An Envoy admin URL: http://HOST:PORT (its /stats?format=json is read), or a /stats, /stats?format=json or
    /// /stats/prometheus URL. Repeat for several Envoys; their figures are summed.
    #[arg(long, value_name = "URL")]
    admin: Vec<String>,
    /// A saved copy of an Envoy's /stats in any of its forms (e.g. from a CI job). Repeatable.
    #[arg(long, value_name = "FILE")]
    stats: Vec<PathBuf>,
    /// Print the report as JSON (format understudy.cost-report/v1, see docs/cost.md).
    #[arg(long)]
    json: bool,
    /// Also write the report as one self-contained HTML page with charts (no network needed to view it).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Project from runs instead of the observed rate: this many test runs a week.
    #[arg(long, value_name = "N")]
    runs_per_week: Option<u64>,
    /// How many test runs the stats cover (with --runs-per-week).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "runs_per_week")]
    runs: u64,
}

/// Where a projection comes from.
#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    /// `observed_rate`: at the rate seen since the Envoys started (their `server.uptime`); `runs_per_week`:
    /// the figures per run × runs a week.
    pub basis: &'static str,
    /// With `runs_per_week`: runs a week, and how many runs the figures cover.
    pub runs_per_week: Option<u64>,
    pub runs: Option<u64>,
    /// With `observed_rate`: the seconds each Envoy had been up.
    pub observed_seconds: Vec<u64>,
    pub weekly: Rates,
    /// 13 weeks.
    pub quarterly: Rates,
}

/// The totals object of the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub usd: Usd,
    pub usd_micros: u64,
    pub unpriced_requests: u64,
    pub estimated_requests: u64,
}

impl From<&Row> for Totals {
    fn from(r: &Row) -> Self {
        Totals {
            requests: r.requests,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            usd: r.usd,
            usd_micros: r.usd_micros,
            unpriced_requests: r.unpriced_requests,
            estimated_requests: r.estimated_requests,
        }
    }
}

/// One source in the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    pub source: String,
    pub uptime_seconds: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: &'static str,
    pub sources: Vec<SourceInfo>,
    pub totals: Totals,
    /// Sorted by dollars, then requests, descending.
    pub rows: Vec<Row>,
    /// The filter's outcome counters, summed (hits and synthesized answers are the virtual requests).
    pub outcomes: Outcomes,
    /// `null` when it can't be made (an Envoy without `server.uptime` and no `--runs-per-week`).
    pub projection: Option<Projection>,
    /// Why there is no projection, or what it assumes.
    pub projection_note: String,
}

pub fn run(a: ReportArgs) -> Result<()> {
    if a.admin.is_empty() && a.stats.is_empty() {
        bail!("nothing to read: pass --admin http://HOST:PORT (an Envoy's admin) or --stats FILE, once per Envoy");
    }
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let places = a.admin.iter().map(|u| Place::Admin(u.clone())).chain(a.stats.iter().map(|p| Place::File(p.clone())));
    let sources = places.map(|p| costs::read(&p)).collect::<Result<Vec<_>>>()?;
    let report = build(&sources, a.runs_per_week, a.runs);
    if let Some(path) = &a.html {
        std::fs::write(path, html(&report)).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
        if let Some(path) = &a.html {
            println!("HTML report: {}", path.display());
        }
    }
    Ok(())
}

/// The report over `sources`.
pub fn build(sources: &[Source], runs_per_week: Option<u64>, runs: u64) -> Report {
    let mut all = Reading::default();
    for s in sources {
        all.merge(&s.reading);
    }
    let totals = all.totals();
    let mut rows: Vec<Row> = all.rows.values().cloned().collect();
    rows.sort_by(|a, b| b.usd_micros.cmp(&a.usd_micros).then(b.requests.cmp(&a.requests)).then(a.model.cmp(&b.model)));
    let (projection, projection_note) = match runs_per_week {
        Some(n) => {
            let weekly = Rates::scaled(&totals, n as f64 / runs.max(1) as f64);
            let note = format!(
                "{n} run{} a week × the figures of {} (the stats cover {runs} run{})",
                plural(n),
                if runs == 1 { "this run".to_string() } else { format!("one run (1/{runs} of them)") },
                plural(runs)
            );
            let quarterly = weekly.times(costs::QUARTER_WEEKS);
            let p = Projection {
                basis: "runs_per_week",
                runs_per_week: Some(n),
                runs: Some(runs),
                observed_seconds: Vec::new(),
                weekly,
                quarterly,
            };
            (Some(p), note)
        }
        None if sources.iter().all(|s| s.uptime_seconds.is_some_and(|u| u > 0)) && !sources.is_empty() => {
            let per_source: Vec<Rates> = sources
                .iter()
                .map(|s| {
                    let up = s.uptime_seconds.unwrap_or(1).max(1);
                    Rates::scaled(&s.reading.totals(), costs::WEEK_SECONDS as f64 / up as f64)
                })
                .collect();
            let weekly = Rates::sum(per_source.iter());
            let observed: Vec<u64> = sources.iter().filter_map(|s| s.uptime_seconds).collect();
            let note = format!(
                "at the rate observed since the Envoy{} started ({} of uptime{}), idle time included",
                if sources.len() == 1 { "" } else { "s" },
                observed.iter().map(|s| duration(*s)).collect::<Vec<_>>().join(", "),
                if sources.len() == 1 { "" } else { " each" }
            );
            let quarterly = weekly.times(costs::QUARTER_WEEKS);
            let p = Projection {
                basis: "observed_rate",
                runs_per_week: None,
                runs: None,
                observed_seconds: observed,
                weekly,
                quarterly,
            };
            (Some(p), note)
        }
        None => (
            None,
            "no projection: an Envoy's stats have no server.uptime (a saved copy filtered without it?); pass \
             --runs-per-week N to project from runs"
                .to_string(),
        ),
    };
    Report {
        format: FORMAT,
        sources: sources
            .iter()
            .map(|s| SourceInfo { source: s.name.clone(), uptime_seconds: s.uptime_seconds })
            .collect(),
        totals: Totals::from(&totals),
        rows,
        outcomes: all.outcomes,
        projection,
        projection_note,
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The report for people.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Understudy cost report: {} Envoy{} ({})",
        r.sources.len(),
        if r.sources.len() == 1 { "" } else { "s" },
        r.sources
            .iter()
            .map(|s| match s.uptime_seconds {
                Some(u) => format!("{}, up {}", s.source, duration(u)),
                None => s.source.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    let t = &r.totals;
    let _ = writeln!(
        out,
        "  avoided: {} live LLM call{} (virtual transactions), {} tokens ({} input, {} of them cached; {} output), {}",
        big(t.requests),
        plural(t.requests),
        big(t.input_tokens.saturating_add(t.output_tokens)),
        thousands(t.input_tokens),
        thousands(t.cached_input_tokens),
        thousands(t.output_tokens),
        dollars(t.usd_micros)
    );
    if t.unpriced_requests > 0 {
        let unpriced: Vec<&str> = r.rows.iter().filter(|x| !x.priced).map(|x| x.model.as_str()).collect();
        let _ = writeln!(
            out,
            "  unpriced: {} request{} of {} (not in the dollars; add prices with --prices FILE on up/run)",
            thousands(t.unpriced_requests),
            plural(t.unpriced_requests),
            unpriced.join(", ")
        );
    }
    if t.estimated_requests > 0 {
        let _ = writeln!(
            out,
            "  estimated: the tokens of {} request{} are estimated (answers without usage, synthesized answers)",
            thousands(t.estimated_requests),
            plural(t.estimated_requests)
        );
    }
    let o = &r.outcomes;
    if o.requests > 0 {
        let _ = writeln!(
            out,
            "  outcomes: {} LLM requests: {} hits, {} synthesized, {} misses, {} bad requests, {} passthroughs",
            thousands(o.requests),
            thousands(o.hits),
            thousands(o.synthesized),
            thousands(o.misses),
            thousands(o.bad_requests),
            thousands(o.passthroughs)
        );
    }
    let header = ["PROVIDER", "OPERATION", "MODEL", "REQUESTS", "INPUT", "CACHED", "OUTPUT", "USD"];
    let cells: Vec<[String; 8]> = r
        .rows
        .iter()
        .map(|x| {
            [
                x.provider.clone(),
                x.operation.clone(),
                x.model.clone(),
                thousands(x.requests),
                thousands(x.input_tokens),
                thousands(x.cached_input_tokens),
                thousands(x.output_tokens),
                if x.priced { dollars(x.usd_micros) } else { format!("unpriced ({})", dollars(x.usd_micros)) },
            ]
        })
        .collect();
    let total = [
        "TOTAL".to_string(),
        String::new(),
        String::new(),
        thousands(t.requests),
        thousands(t.input_tokens),
        thousands(t.cached_input_tokens),
        thousands(t.output_tokens),
        dollars(t.usd_micros),
    ];
    let mut widths = header.map(str::len);
    for row in cells.iter().chain(std::iter::once(&total)) {
        for (w, c) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    out.push('\n');
    let line = |cols: &[String], out: &mut String| {
        let mut l = String::from("  ");
        for (i, (c, w)) in cols.iter().zip(widths.iter()).enumerate() {
            let pad = w.saturating_sub(c.chars().count());
            if i >= 3 {
                l.push_str(&" ".repeat(pad));
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(pad));
            }
            l.push_str("  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from), &mut out);
    for row in &cells {
        line(row, &mut out);
    }
    line(&total, &mut out);
    out.push('\n');
    match &r.projection {
        Some(p) => {
            let _ = writeln!(out, "  projection ({}):", r.projection_note);
            for (label, x) in [("weekly", &p.weekly), ("quarterly", &p.quarterly)] {
                let _ = writeln!(
                    out,
                    "    {label:<10} {} live calls, {} tokens, {}",
                    big(x.requests),
                    big(x.input_tokens.saturating_add(x.output_tokens)),
                    dollars(x.usd_micros)
                );
            }
        }
        None => {
            let _ = writeln!(out, "  {}", r.projection_note);
        }
    }
    out
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Colors of the charts (bars: dollars; tokens: uncached input, cached input, output).
pub const BAR: &str = "#2b6cb0";
const INPUT: &str = "#38a169";
const CACHED: &str = "#9ae6b4";
const OUTPUT: &str = "#dd6b20";

/// One bar of a chart: its label, its stacked parts (value, color) and the value written after it.
struct Bar {
    label: String,
    parts: Vec<(u64, &'static str)>,
    shown: String,
}

/// A horizontal bar chart as inline SVG: one bar (or stack) per row.
fn bars(title: &str, rows: &[Bar]) -> String {
    let label_w = 260.0;
    let bar_w = 460.0;
    let row_h = 26.0;
    let height = 40.0 + row_h * rows.len() as f64;
    let max = rows.iter().map(|b| b.parts.iter().map(|(v, _)| *v).sum::<u64>()).max().unwrap_or(0).max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" role=\"img\" aria-label=\"{t}\">\
         <text x=\"0\" y=\"18\" font-size=\"15\" font-weight=\"bold\">{t}</text>",
        w = label_w + bar_w + 140.0,
        t = esc(title)
    );
    for (i, Bar { label, parts, shown: value }) in rows.iter().enumerate() {
        let y = 32.0 + row_h * i as f64;
        let mut shown: String = label.chars().take(34).collect();
        if shown.len() < label.len() {
            shown.push('…');
        }
        let _ = write!(svg, "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>", y + 15.0, esc(&shown));
        let mut x = label_w;
        for (v, color) in parts {
            let w = bar_w * *v as f64 / max as f64;
            if w > 0.0 {
                let _ = write!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>",
                    w.max(1.0),
                    row_h - 6.0
                );
            }
            x += w;
        }
        let _ = write!(svg, "<text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{}</text>", x + 6.0, y + 15.0, esc(value));
    }
    svg.push_str("</svg>");
    svg
}

/// The report as one self-contained page: summary, charts (inline SVG, no script, no network) and the table.
pub fn html(r: &Report) -> String {
    let t = &r.totals;
    let mut page = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Understudy cost report</title>\
         <style>body{font-family:system-ui,sans-serif;margin:2em;color:#1a202c;background:#fff}\
         .cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #cbd5e0;border-radius:6px;padding:.8em 1.2em}\
         .card b{display:block;font-size:1.6em}table{border-collapse:collapse;margin-top:1em}\
         td,th{border-bottom:1px solid #e2e8f0;padding:.3em .8em;text-align:right}td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}\
         .note{color:#4a5568}</style></head><body><h1>Understudy: what virtualization saved</h1>",
    );
    let _ = write!(
        page,
        "<p class=\"note\">From {}.</p><div class=\"cards\">\
         <div class=\"card\"><b>{}</b>live LLM calls avoided</div>\
         <div class=\"card\"><b>{}</b>tokens avoided</div>\
         <div class=\"card\"><b>{}</b>avoided{}</div>",
        esc(&r.sources.iter().map(|s| s.source.clone()).collect::<Vec<_>>().join(", ")),
        esc(&big(t.requests)),
        esc(&big(t.input_tokens.saturating_add(t.output_tokens))),
        esc(&dollars(t.usd_micros)),
        if t.unpriced_requests > 0 {
            format!(" ({} unpriced requests not included)", thousands(t.unpriced_requests))
        } else {
            String::new()
        }
    );
    if let Some(p) = &r.projection {
        let _ = write!(
            page,
            "<div class=\"card\"><b>{}</b>a week</div><div class=\"card\"><b>{}</b>a quarter</div>",
            esc(&dollars(p.weekly.usd_micros)),
            esc(&dollars(p.quarterly.usd_micros))
        );
    }
    let _ = write!(page, "</div><p class=\"note\">Projection: {}.</p>", esc(&r.projection_note));
    let label = |x: &Row| format!("{} ({})", x.model, x.provider);
    let priced: Vec<Bar> = r
        .rows
        .iter()
        .filter(|x| x.usd_micros > 0)
        .map(|x| Bar { label: label(x), parts: vec![(x.usd_micros, BAR)], shown: dollars(x.usd_micros) })
        .collect();
    if priced.is_empty() {
        let calls: Vec<Bar> = r
            .rows
            .iter()
            .map(|x| Bar { label: label(x), parts: vec![(x.requests, BAR)], shown: thousands(x.requests) })
            .collect();
        page.push_str(&bars("Live calls avoided by model (no priced model)", &calls));
    } else {
        page.push_str(&bars("Dollars avoided by model", &priced));
    }
    let tokens: Vec<Bar> = r
        .rows
        .iter()
        .map(|x| {
            let cached = x.cached_input_tokens.min(x.input_tokens);
            Bar {
                label: label(x),
                parts: vec![(x.input_tokens - cached, INPUT), (cached, CACHED), (x.output_tokens, OUTPUT)],
                shown: thousands(x.input_tokens.saturating_add(x.output_tokens)),
            }
        })
        .collect();
    page.push_str("<p></p>");
    page.push_str(&bars("Tokens avoided by model: input, cached input, output", &tokens));
    let _ = write!(
        page,
        "<p class=\"note\"><span style=\"color:{INPUT}\">■</span> input (not cached) \
         <span style=\"color:{CACHED}\">■</span> cached input <span style=\"color:{OUTPUT}\">■</span> output</p>"
    );
    page.push_str(
        "<table><tr><th>provider</th><th>operation</th><th>model</th><th>requests</th><th>input tokens</th>\
         <th>cached input</th><th>output tokens</th><th>USD</th></tr>",
    );
    for x in &r.rows {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&x.provider),
            esc(&x.operation),
            esc(&x.model),
            thousands(x.requests),
            thousands(x.input_tokens),
            thousands(x.cached_input_tokens),
            thousands(x.output_tokens),
            if x.priced { dollars(x.usd_micros) } else { "unpriced".into() }
        );
    }
    let _ = write!(
        page,
        "<tr><th>total</th><th></th><th></th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></table>",
        thousands(t.requests),
        thousands(t.input_tokens),
        thousands(t.cached_input_tokens),
        thousands(t.output_tokens),
        dollars(t.usd_micros)
    );
    page.push_str(
        "<p class=\"note\">Dollars are priced by the filter with the built-in price table (or --prices), exact to the \
         micro-dollar; tokens are each answer's recorded usage, else estimated. See docs/cost.md.</p></body></html>\n",
    );
    page
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn source(name: &str, text: &str) -> Source {
        costs::parse(text, name).unwrap()
    }

    const A: &str = "wasmcustom.understudy.gen_ai_provider_name=.=openai;.;gen_ai_operation_name=.=chat;.;gen_ai_request_model=.=gpt-4o-mini;.;virtual_requests_total: 10\n\
                     wasmcustom.understudy.gen_ai_provider_name=.=openai;.;gen_ai_operation_name=.=chat;.;gen_ai_request_model=.=gpt-4o-mini;.;cost_avoided_usd_micros_total: 700000\n\
                     wasmcustom.understudy.gen_ai_token_type=.=input;.;gen_ai_provider_name=.=openai;.;gen_ai_operation_name=.=chat;.;gen_ai_request_model=.=gpt-4o-mini;.;tokens_avoided_total: 2400\n\
                     wasmcustom.understudy.gen_ai_provider_name=.=anthropic;.;gen_ai_operation_name=.=chat;.;gen_ai_request_model=.=<house>;.;virtual_requests_total: 1\n\
                     wasmcustom.understudy.gen_ai_provider_name=.=anthropic;.;gen_ai_operation_name=.=chat;.;gen_ai_request_model=.=<house>;.;unpriced_requests_total: 1\n\
                     server.uptime: 3600\n";

    #[test]
    fn projections_say_their_basis() {
        let s = [source("a", A)];
        let r = build(&s, None, 1);
        let p = r.projection.as_ref().unwrap();
        assert_eq!(p.basis, "observed_rate");
        assert_eq!(p.weekly.requests, 11 * 168);
        assert_eq!(p.weekly.usd_micros, 700_000 * 168);
        assert_eq!(p.quarterly.usd_micros, 700_000 * 168 * 13);
        assert_eq!(serde_json::to_string(&p.weekly.usd).unwrap(), "117.60");
        let r = build(&s, Some(50), 2);
        let p = r.projection.as_ref().unwrap();
        assert_eq!((p.basis, p.weekly.requests, p.weekly.usd_micros), ("runs_per_week", 275, 17_500_000));
        let no_uptime = [source("b", &A.replace("server.uptime: 3600\n", ""))];
        let r = build(&no_uptime, None, 1);
        assert!(r.projection.is_none() && r.projection_note.contains("--runs-per-week"));
    }

    #[test]
    fn text_json_and_html_carry_the_same_figures() {
        let r = build(&[source("a", A), source("b", A)], None, 1);
        assert_eq!((r.totals.requests, r.totals.usd_micros, r.totals.unpriced_requests), (22, 1_400_000, 2));
        assert_eq!(r.rows[0].model, "gpt-4o-mini", "sorted by dollars");
        let t = text(&r);
        assert!(t.contains("$1.40") && t.contains("unpriced") && t.contains("<house>"), "{t}");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["totals"]["usd"].to_string(), "1.400000");
        assert_eq!(v["rows"][1]["priced"], false);
        for k in ["requests", "input_tokens", "output_tokens", "cached_input_tokens", "usd"] {
            assert!(v["totals"].get(k).is_some() && v["rows"][0].get(k).is_some(), "{k}");
        }
        let h = html(&r);
        assert!(h.contains("<svg") && h.contains(BAR) && h.contains("&lt;house&gt;") && !h.contains("<house>"));
        assert!(!h.contains("src=") && !h.contains("<link") && !h.contains("<script"), "self-contained");
    }
}
