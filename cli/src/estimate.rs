//! `understudy estimate`: the exposure a test suite would have against live models,
//! (average tokens per call) × (calls per test run) × (runs per week) × (environments), weekly and
//! quarterly, in tokens and dollars — from flags, or measured from an assets directory (each recorded
//! answer's usage as the filter reads it, else estimated), priced with the built-in table and `--prices`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use understudy_matcher::cost::usage::asset_samples;
use understudy_matcher::cost::{Prices, PICOS_PER_MICRO};
use understudy_matcher::Usage;

use crate::costs::{big, dollars, usd, QUARTER_WEEKS};

/// The JSON estimate's format name.
pub const FORMAT: &str = "understudy.estimate/v1";

#[derive(Args)]
pub struct EstimateArgs {
    /// Measure tokens per call, per model, from this assets directory (each answer's usage, else estimated).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tokens_per_call", "model"])]
    assets: Option<PathBuf>,
    /// Average tokens per call, input and output together (instead of --assets).
    #[arg(long, value_name = "N", requires = "calls_per_run")]
    tokens_per_call: Option<u64>,
    /// How many of --tokens-per-call are output tokens (priced at the output rate; the rest at the input rate).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "tokens_per_call")]
    output_tokens_per_call: u64,
    /// The model the calls go to (prices them; without it, tokens only).
    #[arg(long, requires = "tokens_per_call")]
    model: Option<String>,
    /// LLM calls per test run [default with --assets: one per recorded answer].
    #[arg(long, value_name = "N")]
    calls_per_run: Option<u64>,
    /// Test runs per week, per environment.
    #[arg(long, value_name = "N")]
    runs_per_week: u64,
    /// Environments (pipelines, branches, teams) running the suite.
    #[arg(long, value_name = "N", default_value_t = 1)]
    environments: u64,
    /// Prices (JSON: model name or glob → USD per million tokens) in front of the built-in table.
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
    /// Print JSON (format understudy.estimate/v1, see docs/cost.md).
    #[arg(long)]
    json: bool,
}

/// One model's exposure.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub provider: String,
    pub operation: String,
    pub model: String,
    /// The price table entry that priced it; `null` when unpriced.
    pub priced_by: Option<String>,
    /// Average tokens per call.
    pub input_tokens_per_call: f64,
    pub output_tokens_per_call: f64,
    pub cached_input_tokens_per_call: f64,
    pub calls_per_run: f64,
    /// Calls whose tokens are estimated (no usage in the recorded answer).
    pub estimated_calls: u64,
    pub weekly_tokens: u64,
    /// Dollars (six decimals); `null` when unpriced.
    pub weekly_usd: Option<serde_json::Number>,
    pub weekly_usd_micros: Option<u64>,
    pub quarterly_tokens: u64,
    pub quarterly_usd: Option<serde_json::Number>,
}

/// The whole estimate.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub format: &'static str,
    /// `flags` or `assets`.
    pub basis: &'static str,
    pub runs_per_week: u64,
    pub environments: u64,
    pub calls_per_run: f64,
    pub lines: Vec<Line>,
    pub weekly_tokens: u64,
    pub weekly_usd: serde_json::Number,
    pub weekly_usd_micros: u64,
    pub quarterly_tokens: u64,
    pub quarterly_usd: serde_json::Number,
    /// Models without a price: their tokens count, their dollars don't.
    pub unpriced_models: Vec<String>,
    pub prices_as_of: String,
}

/// Calls of one model in one run, and what they cost.
#[derive(Default)]
struct Group {
    calls: u64,
    usage: Usage,
    estimated: u64,
    picos: u128,
}

pub fn run(a: EstimateArgs) -> Result<()> {
    let e = estimate(&a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", text(&e));
    }
    Ok(())
}

fn estimate(a: &EstimateArgs) -> Result<Estimate> {
    let prices = Prices::new(&crate::bundle::load_prices(a.prices.as_deref())?)?;
    // (provider, operation, model) → one run's calls.
    let mut groups: BTreeMap<(String, String, String), Group> = BTreeMap::new();
    let basis = match (&a.assets, a.tokens_per_call) {
        (Some(dir), None) => {
            let built = crate::bundle::build(dir, &Default::default())?;
            for b in &built.bundle.assets {
                for s in asset_samples(&b.asset) {
                    let g = groups.entry((s.provider.into(), s.operation.into(), s.model.clone())).or_default();
                    g.calls += 1;
                    g.usage.input += s.usage.input;
                    g.usage.output += s.usage.output;
                    g.usage.cached_input += s.usage.cached_input.min(s.usage.input);
                    g.estimated += u64::from(s.estimated);
                    if let Some((_, p)) = prices.lookup(&s.model) {
                        g.picos += p.cost_picos(&s.usage);
                    }
                }
            }
            if groups.is_empty() {
                bail!("{}: no successful answer to measure (error answers use no tokens)", dir.display());
            }
            "assets"
        }
        (None, Some(tokens)) => {
            if a.output_tokens_per_call > tokens {
                bail!("--output-tokens-per-call {} is more than --tokens-per-call {tokens}", a.output_tokens_per_call);
            }
            let usage =
                Usage { input: tokens - a.output_tokens_per_call, output: a.output_tokens_per_call, cached_input: 0 };
            let model = a.model.clone().unwrap_or_default();
            let picos = prices.lookup(&model).map_or(0, |(_, p)| p.cost_picos(&usage));
            groups.insert(("-".into(), "-".into(), model), Group { calls: 1, usage, estimated: 0, picos });
            "flags"
        }
        _ => bail!("say what the calls are: --assets DIR, or --tokens-per-call N --calls-per-run N [--model M]"),
    };
    let recorded: u64 = groups.values().map(|g| g.calls).sum();
    // Calls per run: as flagged (spread over the models in their recorded proportions), else one per answer.
    let per_run = a.calls_per_run.map_or(recorded as f64, |c| c as f64);
    let scale = per_run / recorded.max(1) as f64;
    let weeks = a.runs_per_week.saturating_mul(a.environments);
    let mut lines = Vec::new();
    let (mut weekly_tokens, mut weekly_micros) = (0u64, 0u64);
    let mut unpriced = Vec::new();
    for ((provider, operation, model), g) in &groups {
        let n = g.calls.max(1) as f64;
        let priced_by = prices.lookup(model).map(|(pattern, _)| pattern.to_string());
        let tokens_run = (g.usage.input + g.usage.output) as f64 * scale;
        let wt = (tokens_run * weeks as f64).round() as u64;
        let micros = (g.picos as f64 * scale * weeks as f64 / PICOS_PER_MICRO as f64).round() as u64;
        weekly_tokens = weekly_tokens.saturating_add(wt);
        if priced_by.is_some() {
            weekly_micros = weekly_micros.saturating_add(micros);
        } else {
            unpriced.push(if model.is_empty() { "(no model)".to_string() } else { model.clone() });
        }
        lines.push(Line {
            provider: provider.clone(),
            operation: operation.clone(),
            model: model.clone(),
            input_tokens_per_call: round1(g.usage.input as f64 / n),
            output_tokens_per_call: round1(g.usage.output as f64 / n),
            cached_input_tokens_per_call: round1(g.usage.cached_input as f64 / n),
            calls_per_run: round1(g.calls as f64 * scale),
            estimated_calls: g.estimated,
            weekly_tokens: wt,
            weekly_usd: priced_by.as_ref().map(|_| usd(micros)),
            weekly_usd_micros: priced_by.as_ref().map(|_| micros),
            quarterly_tokens: wt.saturating_mul(QUARTER_WEEKS),
            quarterly_usd: priced_by.as_ref().map(|_| usd(micros.saturating_mul(QUARTER_WEEKS))),
            priced_by,
        });
    }
    Ok(Estimate {
        format: FORMAT,
        basis,
        runs_per_week: a.runs_per_week,
        environments: a.environments,
        calls_per_run: round1(per_run),
        lines,
        weekly_tokens,
        weekly_usd: usd(weekly_micros),
        weekly_usd_micros: weekly_micros,
        quarterly_tokens: weekly_tokens.saturating_mul(QUARTER_WEEKS),
        quarterly_usd: usd(weekly_micros.saturating_mul(QUARTER_WEEKS)),
        unpriced_models: unpriced,
        prices_as_of: prices.as_of().to_string(),
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn text(e: &Estimate) -> String {
    let mut out = String::from(
        "Understudy exposure estimate: (average tokens per call) × (calls per test run) × (runs per week) × (environments)\n",
    );
    let _ = writeln!(
        out,
        "  {} calls per run × {} runs a week × {} environment{} ({})",
        e.calls_per_run,
        e.runs_per_week,
        e.environments,
        if e.environments == 1 { "" } else { "s" },
        if e.basis == "assets" { "tokens per call measured from the assets" } else { "tokens per call as given" }
    );
    for l in &e.lines {
        let model = if l.model.is_empty() { "(no model)" } else { &l.model };
        let name =
            if e.basis == "assets" { format!("{model} ({} {})", l.provider, l.operation) } else { model.to_string() };
        let price = match (&l.priced_by, l.weekly_usd_micros) {
            (Some(p), Some(w)) => format!("{} a week (priced as {p})", dollars(w)),
            _ => "unpriced".to_string(),
        };
        let _ = writeln!(
            out,
            "  {name}: {} input + {} output tokens per call{}, {} call{} per run → {} tokens a week, {price}{}",
            l.input_tokens_per_call,
            l.output_tokens_per_call,
            if l.cached_input_tokens_per_call > 0.0 {
                format!(" ({} input cached)", l.cached_input_tokens_per_call)
            } else {
                String::new()
            },
            l.calls_per_run,
            if l.calls_per_run == 1.0 { "" } else { "s" },
            big(l.weekly_tokens),
            if l.estimated_calls > 0 { format!("; {} call(s) estimated", l.estimated_calls) } else { String::new() }
        );
    }
    let _ = writeln!(
        out,
        "  weekly exposure:    {} tokens, {}\n  quarterly exposure: {} tokens, {}",
        big(e.weekly_tokens),
        dollars(e.weekly_usd_micros),
        big(e.quarterly_tokens),
        dollars(e.weekly_usd_micros.saturating_mul(QUARTER_WEEKS))
    );
    if !e.unpriced_models.is_empty() {
        let _ = writeln!(
            out,
            "  unpriced (tokens counted, dollars not): {}; add them with --prices FILE",
            e.unpriced_models.join(", ")
        );
    }
    let _ = writeln!(out, "  prices: the built-in table of {} and --prices (docs/cost.md)", e.prices_as_of);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn args(assets: Option<PathBuf>, tokens: Option<u64>, model: Option<&str>) -> EstimateArgs {
        EstimateArgs {
            assets,
            tokens_per_call: tokens,
            output_tokens_per_call: 0,
            model: model.map(str::to_string),
            calls_per_run: None,
            runs_per_week: 10,
            environments: 3,
            prices: None,
            json: false,
        }
    }

    #[test]
    fn flags_multiply_out_and_price_with_the_table() {
        let mut a = args(None, Some(1000), Some("gpt-4o-mini"));
        a.output_tokens_per_call = 250;
        a.calls_per_run = Some(200);
        let e = estimate(&a).unwrap();
        // 1000 × 200 × 10 × 3
        assert_eq!(e.weekly_tokens, 6_000_000);
        assert_eq!(e.quarterly_tokens, 78_000_000);
        // (750 × 0.15 + 250 × 0.60) / 1M × 6000 calls = $1.575 a week
        assert_eq!(e.weekly_usd.to_string(), "1.575000");
        assert_eq!(e.lines[0].priced_by.as_deref(), Some("gpt-4o-mini*"));
        let e = estimate(&args(None, Some(10), Some("house-model")).with_calls(5)).unwrap();
        assert_eq!((e.weekly_tokens, e.weekly_usd.to_string()), (1500, "0.000000".to_string()));
        assert_eq!(e.unpriced_models, ["house-model"]);
    }

    impl EstimateArgs {
        fn with_calls(mut self, n: u64) -> Self {
            self.calls_per_run = Some(n);
            self
        }
    }

    #[test]
    fn assets_are_measured_per_model() {
        let dir = std::env::temp_dir().join(format!("understudy-estimate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = serde_json::json!([
            {"request": {"path": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a"}]}},
             "response": {"body": {"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 20}}}},
            {"request": {"path": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "b"}]}},
             "response": {"body": {"choices": [], "usage": {"prompt_tokens": 300, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 100}}}}},
        ]);
        std::fs::write(dir.join("a.json"), a.to_string()).unwrap();
        let e = estimate(&args(Some(dir.clone()), None, None)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let l = &e.lines[0];
        assert_eq!((l.input_tokens_per_call, l.output_tokens_per_call, l.calls_per_run), (200.0, 30.0, 2.0));
        assert_eq!(e.weekly_tokens, 460 * 30);
        // Per run: (100×0.15 + 20×0.6) + (200×0.15 + 100×0.075 + 40×0.6) = 27 + 61.5 = 88.5 micro-dollars,
        // × 10 runs × 3 environments.
        assert_eq!(e.weekly_usd_micros, 2655);
        assert_eq!(e.lines[0].weekly_usd.as_ref().unwrap().to_string(), "0.002655");
        assert_eq!(e.quarterly_usd.to_string(), "0.034515");
    }
}
