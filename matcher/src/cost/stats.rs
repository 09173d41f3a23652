//! The cost metrics as Envoy stats: their names, how labels are written into a stat name, the
//! `stats_tags` regexes that turn them back into labels, and the parser the CLI reads them with.
//!
//! proxy-wasm counters have a name and no labels, so the labels travel inside the name in Istio's tag
//! encoding, `TAG=.=VALUE;.;`, with the metric's own name last:
//!
//! ```text
//! understudy.gen_ai_token_type=.=input;.;gen_ai_provider_name=.=openai;.;gen_ai_operation_name=.=chat;.;gen_ai_request_model=.=gpt-4.1;.;tokens_avoided_total
//! ```
//!
//! Envoy shows it in `/stats` as is (under its `wasmcustom.` namespace). A `stats_tags` entry per label,
//! `(TAG=\.=(.*?);\.;)` ([`tag_regex`], exactly what Istio generates for `extraStatTags`), removes each
//! `TAG=.=VALUE;.;` from the name and makes it a tag, so `/stats/prometheus` shows
//! `understudy_tokens_avoided_total{gen_ai_token_type="input",...,gen_ai_request_model="gpt-4.1"}`.
//!
//! Every model name comes through exactly (`.`, `:`, `/`, `@`, `=`, spaces, quotes, any Unicode), except:
//! `;` and control characters become `_` (a value may not contain `;.;`, and Envoy's regexes stop at a line
//! break), the `.` of `=.=` becomes `_` (no tag's regex may match inside a value), an empty model is `unknown`, and a name longer than [`MAX_MODEL_LABEL_BYTES`] is counted as
//! [`OTHER`] — as is every model past the first [`crate::limits::MAX_MODEL_LABELS`] an Envoy sees.

use std::borrow::Cow;

use crate::limits::MAX_MODEL_LABEL_BYTES;

/// The label value of models past the cardinality cap ([`crate::limits::MAX_MODEL_LABELS`]) or too long to be a label.
pub const OTHER: &str = "other";

/// The label value of a request without a model.
pub const UNKNOWN: &str = "unknown";

/// The first part of every stat name the filter defines.
pub const PREFIX: &str = "understudy";

/// The namespace Envoy puts wasm-defined stats under in `/stats`.
pub const ENVOY_NAMESPACE: &str = "wasmcustom";

/// OpenTelemetry `gen_ai.token.type` (`input`, `output`; `cached_input` is Understudy's).
pub const TAG_TOKEN_TYPE: &str = "gen_ai_token_type";
/// OpenTelemetry `gen_ai.provider.name`.
pub const TAG_PROVIDER: &str = "gen_ai_provider_name";
/// OpenTelemetry `gen_ai.operation.name`.
pub const TAG_OPERATION: &str = "gen_ai_operation_name";
/// OpenTelemetry `gen_ai.request.model`.
pub const TAG_MODEL: &str = "gen_ai_request_model";

/// The environment of the VM that counted (docs/policy.md): on every stat when a policy is configured, first
/// after `understudy.`. Bounded: one environment per Envoy, a name of at most 63 safe characters.
pub const TAG_ENV: &str = "understudy_env";

/// `name` (a stat name under `understudy.`) labeled with the environment `env`, when there is one.
pub fn with_env(name: &str, env: Option<&str>) -> String {
    match (env, name.strip_prefix(PREFIX).and_then(|n| n.strip_prefix('.'))) {
        (Some(env), Some(rest)) => format!("{PREFIX}.{TAG_ENV}=.={env};.;{rest}"),
        _ => name.to_string(),
    }
}

/// A stat name without its environment label (with or without `wasmcustom.` in front), and the environment.
pub fn strip_env(name: &str) -> (Cow<'_, str>, Option<&str>) {
    let tag = format!("{PREFIX}.{TAG_ENV}=.=");
    let Some(at) = name.find(&tag) else { return (Cow::Borrowed(name), None) };
    let value_at = at + tag.len();
    let Some(rest) = name.get(value_at..) else { return (Cow::Borrowed(name), None) };
    let Some((env, after)) = rest.split_once(";.;") else { return (Cow::Borrowed(name), None) };
    let head = name.get(..at).unwrap_or_default();
    (Cow::Owned(format!("{head}{PREFIX}.{after}")), Some(env))
}

/// Every label, in the order they are written into a name (the model last, so no other tag's regex can
/// match inside a model name).
pub const TAGS: [&str; 5] = [TAG_ENV, TAG_TOKEN_TYPE, TAG_PROVIDER, TAG_OPERATION, TAG_MODEL];

/// The regex an Envoy `stats_tags` entry needs to extract `tag`: the first group is removed from the name,
/// the second is the value (Istio's `extraStatTags` form).
pub fn tag_regex(tag: &str) -> String {
    format!("({tag}=\\.=(.*?);\\.;)")
}

/// What kind of token a token counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenType {
    /// Every input token, cached ones included (OpenTelemetry's `input`).
    Input,
    /// Output tokens.
    Output,
    /// The part of `input` served from the provider's prompt cache (a subset: never add it to `input`).
    CachedInput,
}

impl TokenType {
    /// Every type.
    pub const ALL: [TokenType; 3] = [TokenType::Input, TokenType::Output, TokenType::CachedInput];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            TokenType::Input => "input",
            TokenType::Output => "output",
            TokenType::CachedInput => "cached_input",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        TokenType::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// One cost metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Virtual answers (hits and synthesized answers): live calls not made.
    VirtualRequests,
    /// Tokens those calls would have used, by type.
    TokensAvoided(TokenType),
    /// What they would have cost, in micro-dollars (priced models only).
    CostMicros,
    /// Virtual answers whose model has no price: counted, never guessed.
    Unpriced,
    /// Virtual answers whose tokens are estimated (the answer reported no usage, or was synthesized).
    Estimated,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Metric; 7] = [
        Metric::VirtualRequests,
        Metric::TokensAvoided(TokenType::Input),
        Metric::TokensAvoided(TokenType::Output),
        Metric::TokensAvoided(TokenType::CachedInput),
        Metric::CostMicros,
        Metric::Unpriced,
        Metric::Estimated,
    ];

    /// The metric's name (after `understudy_` in Prometheus).
    pub fn name(self) -> &'static str {
        match self {
            Metric::VirtualRequests => "virtual_requests_total",
            Metric::TokensAvoided(_) => "tokens_avoided_total",
            Metric::CostMicros => "cost_avoided_usd_micros_total",
            Metric::Unpriced => "unpriced_requests_total",
            Metric::Estimated => "estimated_usage_requests_total",
        }
    }

    /// The token type label, for token counters.
    pub fn token_type(self) -> Option<TokenType> {
        match self {
            Metric::TokensAvoided(t) => Some(t),
            _ => None,
        }
    }
}

/// The labels every cost metric carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels<'a> {
    /// `gen_ai_provider_name`.
    pub provider: Cow<'a, str>,
    /// `gen_ai_operation_name`.
    pub operation: Cow<'a, str>,
    /// `gen_ai_request_model`, already a label value ([`model_label`]).
    pub model: Cow<'a, str>,
}

/// The stat name the filter defines for `metric` with `labels` (Envoy adds `wasmcustom.` in front).
pub fn stat_name(metric: Metric, labels: &Labels<'_>) -> String {
    let mut out = String::with_capacity(160 + labels.model.len());
    out.push_str(PREFIX);
    out.push('.');
    let mut tag = |name: &str, value: &str| {
        out.push_str(name);
        out.push_str("=.=");
        out.push_str(value);
        out.push_str(";.;");
    };
    if let Some(t) = metric.token_type() {
        tag(TAG_TOKEN_TYPE, t.name());
    }
    tag(TAG_PROVIDER, &labels.provider);
    tag(TAG_OPERATION, &labels.operation);
    tag(TAG_MODEL, &labels.model);
    out.push_str(metric.name());
    out
}

/// A model name as a label value; `None` when it is too long to be one (count it as [`OTHER`]).
pub fn model_label(model: &str) -> Option<Cow<'_, str>> {
    if model.is_empty() {
        return Some(Cow::Borrowed(UNKNOWN));
    }
    let mut label: Cow<'_, str> = if model.chars().any(|c| c == ';' || c.is_control()) {
        Cow::Owned(model.chars().map(|c| if c == ';' || c.is_control() { '_' } else { c }).collect())
    } else {
        Cow::Borrowed(model)
    };
    // `TAG=.=` inside a value would let that tag's regex match there; `=.=.=` needs two rounds.
    while label.contains("=.=") {
        label = Cow::Owned(label.replace("=.=", "=_="));
    }
    (label.len() <= MAX_MODEL_LABEL_BYTES).then_some(label)
}

/// One counter read back from Envoy: its metric and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Series {
    /// The metric.
    pub metric: Metric,
    /// `gen_ai_provider_name`.
    pub provider: String,
    /// `gen_ai_operation_name`.
    pub operation: String,
    /// `gen_ai_request_model`.
    pub model: String,
}

/// Reads a stat name as `/stats` shows it (with or without `wasmcustom.`) back into its metric and labels;
/// `None` for any other stat.
pub fn parse_stat_name(name: &str) -> Option<Series> {
    // Summed over environments: `understudy report` answers for the whole Envoy.
    let (name, _env) = strip_env(name);
    let name = name.as_ref();
    let name = name.strip_prefix(ENVOY_NAMESPACE).and_then(|n| n.strip_prefix('.')).unwrap_or(name);
    let mut rest = name.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (mut token_type, mut provider, mut operation, mut model) = (None, None, None, None);
    while let Some((tag, after)) = rest.split_once("=.=") {
        let (value, after) = after.split_once(";.;")?;
        match tag {
            TAG_TOKEN_TYPE => token_type = Some(TokenType::from_name(value)?),
            TAG_PROVIDER => provider = Some(value),
            TAG_OPERATION => operation = Some(value),
            TAG_MODEL => model = Some(value),
            _ => return None,
        }
        rest = after;
    }
    let metric = match (rest, token_type) {
        ("tokens_avoided_total", Some(t)) => Metric::TokensAvoided(t),
        (other, None) => Metric::ALL.into_iter().find(|m| m.token_type().is_none() && m.name() == other)?,
        _ => return None,
    };
    Some(Series {
        metric,
        provider: provider?.to_string(),
        operation: operation?.to_string(),
        model: model?.to_string(),
    })
}

/// The Prometheus metric name of `metric` when Envoy extracts the tags (`understudy_<name>`).
pub fn prometheus_name(metric: Metric) -> String {
    format!("{PREFIX}_{}", metric.name())
}

/// Reads a Prometheus sample (`understudy_<name>` and its labels) back into a series; `None` for others.
pub fn parse_prometheus(name: &str, labels: &[(String, String)]) -> Option<Series> {
    let bare = name.strip_prefix(PREFIX)?.strip_prefix('_')?;
    let label = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let metric = match bare {
        "tokens_avoided_total" => Metric::TokensAvoided(TokenType::from_name(&label(TAG_TOKEN_TYPE)?)?),
        other => Metric::ALL.into_iter().find(|m| m.token_type().is_none() && m.name() == other)?,
    };
    Some(Series { metric, provider: label(TAG_PROVIDER)?, operation: label(TAG_OPERATION)?, model: label(TAG_MODEL)? })
}

/// Whether a stat name carries labels in this encoding (an Envoy without the `stats_tags` shows such names
/// sanitized in Prometheus, where they can't be read back).
pub fn is_labeled(name: &str) -> bool {
    name.contains("=.=")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use regex::Regex;

    fn labels<'a>(provider: &'a str, operation: &'a str, model: &'a str) -> Labels<'a> {
        Labels { provider: provider.into(), operation: operation.into(), model: model.into() }
    }

    /// Envoy's tag extraction, as its RE2 extractor does it: every regex on the whole name, the first
    /// group removed, the second the value.
    fn envoy_extract(name: &str) -> (String, Vec<(String, String)>) {
        let mut remove = Vec::new();
        let mut tags = Vec::new();
        for tag in TAGS {
            let re = Regex::new(&tag_regex(tag)).unwrap();
            if let Some(c) = re.captures(name) {
                let all = c.get(1).unwrap();
                remove.push(all.range());
                tags.push((tag.to_string(), c.get(2).unwrap().as_str().to_string()));
            }
        }
        let kept: String =
            name.char_indices().filter(|(i, _)| !remove.iter().any(|r| r.contains(i))).map(|(_, c)| c).collect();
        (kept, tags)
    }

    #[test]
    fn the_environment_label_is_extracted_by_envoy_and_ignored_by_the_parser() {
        let name = stat_name(Metric::VirtualRequests, &labels("openai", "chat", "gpt-4.1"));
        let tagged = with_env(&name, Some("staging"));
        assert!(tagged.starts_with("understudy.understudy_env=.=staging;.;gen_ai_provider_name"), "{tagged}");
        let (kept, tags) = envoy_extract(&format!("wasmcustom.{tagged}"));
        assert_eq!(kept, "wasmcustom.understudy.virtual_requests_total");
        assert!(tags.contains(&(TAG_ENV.to_string(), "staging".to_string())));
        assert_eq!(parse_stat_name(&tagged), parse_stat_name(&name));
        assert!(parse_stat_name(&name).is_some());
        let counter = with_env("understudy.hits", Some("ci"));
        assert_eq!(counter, "understudy.understudy_env=.=ci;.;hits");
        assert_eq!(strip_env(&format!("wasmcustom.{counter}")), ("wasmcustom.understudy.hits".into(), Some("ci")));
        assert_eq!(strip_env("wasmcustom.understudy.hits"), ("wasmcustom.understudy.hits".into(), None));
        assert_eq!(with_env("understudy.hits", None), "understudy.hits");
        let (kept, _) = envoy_extract(&format!("wasmcustom.{counter}"));
        assert_eq!(kept, "wasmcustom.understudy.hits");
    }

    #[test]
    fn names_round_trip_through_envoys_tag_extraction_and_our_parser() {
        let models = [
            "gpt-4.1",
            "gpt-4o-mini-2024-07-18",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123",
            "claude-opus-4-1@20250805",
            "publishers/google/models/gemini-2.5-pro",
            "a=b =. .= \"quoted\" \\ é 模型 {x}",
            OTHER,
        ];
        for model in models {
            let label = model_label(model).unwrap();
            assert_eq!(label, model, "{model} needs no sanitizing");
            for metric in Metric::ALL {
                let name = stat_name(metric, &labels("aws.bedrock", "chat", &label));
                let (kept, tags) = envoy_extract(&format!("wasmcustom.{name}"));
                assert_eq!(kept, format!("wasmcustom.understudy.{}", metric.name()), "{name}");
                let get = |t: &str| tags.iter().find(|(k, _)| k == t).map(|(_, v)| v.as_str());
                assert_eq!(get(TAG_MODEL), Some(model), "{name}");
                assert_eq!(get(TAG_PROVIDER), Some("aws.bedrock"));
                assert_eq!(get(TAG_OPERATION), Some("chat"));
                assert_eq!(get(TAG_TOKEN_TYPE), metric.token_type().map(TokenType::name));
                let s = parse_stat_name(&format!("wasmcustom.{name}")).unwrap();
                assert_eq!((s.metric, s.model.as_str(), s.provider.as_str()), (metric, model, "aws.bedrock"));
                assert_eq!(parse_stat_name(&name), Some(s.clone()));
                let prom: Vec<(String, String)> = tags.clone();
                assert_eq!(parse_prometheus(&prometheus_name(metric), &prom), Some(s));
            }
        }
    }

    #[test]
    fn what_cannot_be_a_label_is_sanitized_or_counted_as_other() {
        assert_eq!(model_label("a;.;b\nc\td").unwrap(), "a_._b_c_d");
        assert_eq!(
            model_label("x gen_ai_token_type=.=output =.=.= y").unwrap(),
            "x gen_ai_token_type=_=output =_=_= y"
        );
        for metric in Metric::ALL {
            let label = model_label("m gen_ai_token_type=.=output;.;gen_ai_provider_name=.=evil;.;").unwrap();
            let name = stat_name(metric, &labels("openai", "chat", &label));
            let (kept, tags) = envoy_extract(&name);
            assert_eq!(kept, format!("understudy.{}", metric.name()), "{name}");
            assert!(tags.contains(&(TAG_PROVIDER.to_string(), "openai".to_string())), "{tags:?}");
            assert!(tags.contains(&(TAG_MODEL.to_string(), label.to_string())), "{tags:?}");
            assert_eq!(parse_stat_name(&name).unwrap().model, label);
        }
        assert_eq!(model_label("").unwrap(), UNKNOWN);
        let long = "m".repeat(MAX_MODEL_LABEL_BYTES);
        assert_eq!(model_label(&long).unwrap(), long);
        assert_eq!(model_label(&format!("{long}x")), None);
        // A sanitized name still round-trips as its label.
        let name = stat_name(Metric::VirtualRequests, &labels("openai", "chat", &model_label("x;.;y").unwrap()));
        assert_eq!(envoy_extract(&name).0, "understudy.virtual_requests_total");
    }

    #[test]
    fn other_stats_are_not_read_as_cost_metrics() {
        for name in [
            "wasmcustom.understudy.hits",
            "understudy.requests",
            "cluster.x.upstream_rq_total",
            "understudy.gen_ai_provider_name=.=openai;.;tokens_avoided_total",
            "understudy.gen_ai_token_type=.=bogus;.;gen_ai_provider_name=.=o;.;gen_ai_operation_name=.=c;.;gen_ai_request_model=.=m;.;tokens_avoided_total",
            "understudy.x=.=y;.;gen_ai_provider_name=.=o;.;gen_ai_operation_name=.=c;.;gen_ai_request_model=.=m;.;virtual_requests_total",
            "understudy.gen_ai_provider_name=.=o;.;gen_ai_operation_name=.=c;.;gen_ai_request_model=.=m;.;bogus_total",
        ] {
            assert_eq!(parse_stat_name(name), None, "{name}");
        }
        assert_eq!(parse_prometheus("understudy_hits", &[]), None);
        assert!(is_labeled(&stat_name(Metric::Unpriced, &labels("a", "b", "c"))));
        assert!(!is_labeled("wasmcustom.understudy.hits"));
    }
}
