//! What a virtual answer saved: the tokens the live call would have used and what they would have cost.
//!
//! Prices come from a built-in, dated table (`prices.json`, its source named in it) that the plugin
//! configuration's `prices` (`understudy up --prices FILE`) overrides and extends: a JSON object from model
//! name or glob (`*` any run, `?` one character) to `{"input", "cached_input"?, "output"?,
//! "long_context"?: {"above_input_tokens", "input", "cached_input"?, "output"?}}` in USD per million
//! tokens. A model is priced by the user's entries first, then the built-in ones; within each, the most
//! specific pattern (the most literal characters) wins, so `gpt-4o-mini*` beats `gpt-4o*`. A model no
//! pattern matches is unpriced: counted as such, never guessed.
//!
//! Money is integer: a price is held in pico-dollars per token (USD per million tokens × 10⁶, so at most six
//! decimals), a cost in pico-dollars, and reported in micro-dollars.

pub mod stats;
pub mod usage;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Number;
use wildmatch::WildMatch;

use crate::dialect::Usage;
use crate::error::ConfigError;

const BUILTIN: &str = include_str!("prices.json");

/// Pico-dollars in a micro-dollar.
pub const PICOS_PER_MICRO: u128 = 1_000_000;

/// One model's prices as written: USD per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    /// Input tokens (not served from the prompt cache).
    pub input: Number,
    /// Input tokens served from the provider's prompt cache; default: `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<Number>,
    /// Output tokens; default 0 (embeddings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Number>,
    /// Other prices for requests with more input tokens than a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<TierSpec>,
}

/// Prices that apply above an input size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// The tier applies when a request has more input tokens than this.
    pub above_input_tokens: u64,
    /// See [`PriceSpec::input`].
    pub input: Number,
    /// See [`PriceSpec::cached_input`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<Number>,
    /// See [`PriceSpec::output`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Number>,
}

/// Model name or glob → prices: the `--prices` file and the plugin configuration's `prices`.
pub type PriceOverrides = BTreeMap<String, PriceSpec>;

/// Pico-dollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Per uncached input token.
    pub input: u64,
    /// Per cached input token.
    pub cached_input: u64,
    /// Per output token.
    pub output: u64,
}

/// A model's compiled prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// The standard rate.
    pub base: Rate,
    /// A rate for requests over `.0` input tokens.
    pub long_context: Option<(u64, Rate)>,
}

impl Price {
    /// What `usage` costs, in pico-dollars.
    pub fn cost_picos(&self, usage: &Usage) -> u128 {
        let rate = match self.long_context {
            Some((above, rate)) if usage.input > above => rate,
            _ => self.base,
        };
        let cached = usage.cached_input.min(usage.input);
        u128::from(usage.input - cached) * u128::from(rate.input)
            + u128::from(cached) * u128::from(rate.cached_input)
            + u128::from(usage.output) * u128::from(rate.output)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    glob: WildMatch,
    /// Literal characters of the pattern: more is more specific.
    literal: usize,
    pattern: String,
    price: Price,
}

/// The price table in force: the user's entries, then the built-in ones.
#[derive(Debug, Clone)]
pub struct Prices {
    user: Vec<Entry>,
    builtin: Vec<Entry>,
    as_of: String,
}

/// The built-in table's header.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    as_of: String,
    #[allow(dead_code)]
    source: String,
    #[allow(dead_code)]
    unit: String,
    prices: PriceOverrides,
}

impl Prices {
    /// The built-in table with `overrides` in front of it; errors name the bad entry.
    pub fn new(overrides: &PriceOverrides) -> Result<Self, ConfigError> {
        let table: Table =
            serde_json::from_str(BUILTIN).map_err(|e| ConfigError::invalid("built-in prices", e.to_string()))?;
        Ok(Prices {
            user: compile(overrides, "prices")?,
            builtin: compile(&table.prices, "built-in prices")?,
            as_of: table.as_of,
        })
    }

    /// The date of the built-in table.
    pub fn as_of(&self) -> &str {
        &self.as_of
    }

    /// The prices of `model`, and the pattern that matched; `None` when it is unpriced.
    pub fn lookup(&self, model: &str) -> Option<(&str, &Price)> {
        [&self.user, &self.builtin]
            .into_iter()
            .find_map(|entries| entries.iter().find(|e| e.glob.matches(model)))
            .map(|e| (e.pattern.as_str(), &e.price))
    }
}

fn compile(specs: &PriceOverrides, field: &str) -> Result<Vec<Entry>, ConfigError> {
    let mut out = Vec::with_capacity(specs.len());
    for (pattern, spec) in specs {
        let at = |f: &str| format!("{field}.{pattern}{f}");
        if pattern.is_empty() {
            return Err(ConfigError::invalid(field, "an empty model pattern"));
        }
        let rate = |input: &Number, cached: &Option<Number>, output: &Option<Number>, f: &str| {
            let input = picos(input).map_err(|e| ConfigError::invalid(at(&format!("{f}.input")), e))?;
            let cached_input = match cached {
                Some(n) => picos(n).map_err(|e| ConfigError::invalid(at(&format!("{f}.cached_input")), e))?,
                None => input,
            };
            let output = match output {
                Some(n) => picos(n).map_err(|e| ConfigError::invalid(at(&format!("{f}.output")), e))?,
                None => 0,
            };
            Ok::<Rate, ConfigError>(Rate { input, cached_input, output })
        };
        let base = rate(&spec.input, &spec.cached_input, &spec.output, "")?;
        let long_context = match &spec.long_context {
            Some(t) => Some((t.above_input_tokens, rate(&t.input, &t.cached_input, &t.output, ".long_context")?)),
            None => None,
        };
        out.push(Entry {
            glob: WildMatch::new(pattern),
            literal: pattern.chars().filter(|c| *c != '*' && *c != '?').count(),
            pattern: pattern.clone(),
            price: Price { base, long_context },
        });
    }
    // Most specific first; ties in pattern order (deterministic).
    out.sort_by(|a, b| b.literal.cmp(&a.literal).then_with(|| a.pattern.cmp(&b.pattern)));
    Ok(out)
}

/// USD per million tokens (a JSON number, at most six decimals) as pico-dollars per token, exactly.
fn picos(n: &Number) -> Result<u64, String> {
    let text = crate::canonical::canonical_number(&n.to_string());
    if text.starts_with('-') {
        return Err(format!("{n} is negative"));
    }
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    if !int.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{n} is not a price in USD per million tokens with at most six decimals"));
    }
    let frac = format!("{frac:0<6}");
    let whole: u64 = int.parse().map_err(|_| format!("{n} is too large"))?;
    let part: u64 = frac.parse().map_err(|_| format!("{n} is not a number"))?;
    whole.checked_mul(1_000_000).and_then(|w| w.checked_add(part)).ok_or_else(|| format!("{n} is too large"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn usage(input: u64, cached_input: u64, output: u64) -> Usage {
        Usage { input, output, cached_input }
    }

    #[test]
    fn the_builtin_table_loads_and_prices_by_the_most_specific_pattern() {
        let p = Prices::new(&PriceOverrides::new()).unwrap();
        assert!(!p.as_of().is_empty());
        let (pattern, mini) = p.lookup("gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(pattern, "gpt-4o-mini*");
        assert_eq!(mini.base, Rate { input: 150_000, cached_input: 75_000, output: 600_000 });
        assert_eq!(p.lookup("gpt-4o").unwrap().0, "gpt-4o*");
        assert_eq!(p.lookup("o3-mini").unwrap().0, "o3-mini*");
        assert_eq!(
            p.lookup("us.anthropic.claude-sonnet-4-5-20250929-v1:0").unwrap().0,
            "*anthropic.claude-sonnet-4-5*"
        );
        assert_eq!(p.lookup("claude-sonnet-4-5@20250929").unwrap().0, "claude-sonnet-4-5*");
        // Bedrock: the global endpoint at the list rate, geographic and in-region profiles 10% above it.
        let global = p.lookup("global.anthropic.claude-sonnet-4-5-20250929-v1:0").unwrap().1.base;
        let regional = p.lookup("eu.anthropic.claude-sonnet-4-5-20250929-v1:0").unwrap().1.base;
        assert_eq!((global.input * 11 / 10, global.output * 11 / 10), (regional.input, regional.output));
        // Dated snapshots price like their model; a more specific family wins.
        assert_eq!(p.lookup("gpt-5.4-2026-03-05").unwrap().0, "gpt-5.4*");
        assert_eq!(p.lookup("gpt-5.4-mini-2026-03-17").unwrap().0, "gpt-5.4-mini*");
        let (_, g) = p.lookup("gpt-5.5").unwrap();
        assert_eq!(g.long_context.map(|(above, r)| (above, r.input)), Some((272_000, 10_000_000)));
        assert!(p.lookup("my-azure-deployment").is_none(), "unpriced, never guessed");
        assert!(p.lookup("").is_none());
    }

    #[test]
    fn costs_are_exact_integers_with_cache_and_long_context_tiers() {
        let p = Prices::new(&PriceOverrides::new()).unwrap();
        let (_, gpt) = p.lookup("gpt-4o-mini").unwrap();
        // 1000 input (400 cached) at $0.15 / $0.075, 200 output at $0.60 per 1M.
        assert_eq!(gpt.cost_picos(&usage(1000, 400, 200)), 600 * 150_000 + 400 * 75_000 + 200 * 600_000);
        let (_, sonnet) = p.lookup("claude-sonnet-4-5").unwrap();
        assert_eq!(sonnet.cost_picos(&usage(200_000, 0, 0)), 200_000 * 3_000_000);
        assert_eq!(sonnet.cost_picos(&usage(200_001, 0, 10)), 200_001 * 6_000_000 + 10 * 22_500_000);
        // More cached than input can't go negative.
        assert_eq!(gpt.cost_picos(&usage(10, 50, 0)), 10 * 75_000);
    }

    #[test]
    fn user_prices_override_and_extend_and_bad_ones_name_the_entry() {
        let overrides: PriceOverrides = serde_json::from_str(
            r#"{"gpt-4o*": {"input": 1, "output": 2.000001}, "my-azure-*": {"input": 0.5, "cached_input": 0.05}}"#,
        )
        .unwrap();
        let p = Prices::new(&overrides).unwrap();
        let (pattern, price) = p.lookup("gpt-4o-mini").unwrap();
        assert_eq!(pattern, "gpt-4o*", "user entries come first");
        assert_eq!(price.base, Rate { input: 1_000_000, cached_input: 1_000_000, output: 2_000_001 });
        assert_eq!(p.lookup("my-azure-gpt").unwrap().1.base.cached_input, 50_000);
        for (bad, field) in [
            (r#"{"m": {"input": -1}}"#, "prices.m.input"),
            (r#"{"m": {"input": 0.0000001}}"#, "prices.m.input"),
            (r#"{"m": {"input": 1, "output": "x"}}"#, ""),
            (
                r#"{"m": {"input": 1, "long_context": {"above_input_tokens": 5, "input": 1e30}}}"#,
                "prices.m.long_context.input",
            ),
        ] {
            match serde_json::from_str::<PriceOverrides>(bad) {
                Ok(o) => match Prices::new(&o).unwrap_err() {
                    ConfigError::Invalid { field: f, .. } => assert_eq!(f, field, "{bad}"),
                    e => panic!("{bad}: {e:?}"),
                },
                Err(_) => assert!(field.is_empty(), "{bad} should parse"),
            }
        }
        assert_eq!(picos(&serde_json::from_str("1e-6").unwrap()), Ok(1));
        assert_eq!(picos(&serde_json::from_str("2.5").unwrap()), Ok(2_500_000));
    }
}
