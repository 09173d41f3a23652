//! Per-environment policy: one plugin configuration for a whole mesh, where each environment says what
//! Understudy does with its LLM calls — answer them virtually (`replay`), record them (`record`,
//! `record_missing`), check a sample of them against the live model (`parity`) or leave them alone (`live`) —
//! plus its miss policy and the fraction of would-be-virtual calls sent live (`live_sample`).
//!
//! A VM's environment is fixed for its life: it comes from Envoy's node metadata, read once when the VM
//! starts, in this order (the first one present wins):
//!
//! 1. `UNDERSTUDY_ENV`, Understudy's own key (`understudy up --env NAME` sets it; in Istio the proxy's
//!    `ISTIO_META_UNDERSTUDY_ENV` environment variable or `proxyMetadata` puts it there);
//! 2. the workload label named by `policy.label` (default `understudy.io/env`) in Istio's `LABELS`;
//! 3. Istio's `NAMESPACE`;
//! 4. none: the environment is `default`.
//!
//! An environment the policy does not list gets `policy.default` (itself defaulting to the top-level `mode`
//! and `on_miss`), so an unknown namespace is as safe as the default says, never live by accident.
//!
//! `live_sample` picks requests by their key ([`in_sample`]): the first 64 bits of the key (a SHA-256) against
//! the fraction, so a given request is in or out on every run, worker and Envoy, and a 2 % sample is the same
//! 2 % of the suite each time. A request header can force one request live or virtual ([`OverrideConfig`]),
//! only with the configured secret, whose SHA-256 is compared in constant time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::dialect::Route;
use crate::error::ConfigError;
use crate::parity::{Observed, Parity, ParityConfig, ParityRecord};
use crate::record::{Delivery, Mode};
use crate::{LocalResponse, OnMiss};

/// Understudy's own node metadata key naming the environment.
pub const ENV_METADATA_KEY: &str = "UNDERSTUDY_ENV";
/// Istio's node metadata map of the workload's labels.
pub const ISTIO_LABELS: &str = "LABELS";
/// Istio's node metadata key of the workload's namespace.
pub const ISTIO_NAMESPACE: &str = "NAMESPACE";
/// The workload label naming the environment, unless `policy.label` says otherwise.
pub const DEFAULT_ENV_LABEL: &str = "understudy.io/env";
/// The environment of a VM whose node metadata names none.
pub const DEFAULT_ENVIRONMENT: &str = "default";
/// Longest environment name (a Kubernetes namespace or label value has at most 63 characters).
pub const MAX_ENV_NAME: usize = 63;
/// The request header forcing one request `live` or `virtual` (with [`OVERRIDE_TOKEN_HEADER`]).
pub const OVERRIDE_HEADER: &str = "x-understudy-override";
/// The collector's path parity records are posted to.
pub const PARITY_PATH: &str = "/v1/parity";
/// The request header carrying the override's secret.
pub const OVERRIDE_TOKEN_HEADER: &str = "x-understudy-override-token";

/// What an environment does with its LLM calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// Answer from the assets; misses follow `on_miss`.
    Replay,
    /// Every call goes live and is recorded.
    Record,
    /// Hits are answered from the assets; misses go live and are recorded.
    RecordMissing,
    /// Like `record_missing`, and the sampled would-be-virtual calls go live too: the client gets the live
    /// answer, which is compared with what Understudy would have served.
    Parity,
    /// Every call goes live, untouched (nothing is buffered, decided or recorded).
    Live,
}

impl PolicyMode {
    /// The mode as the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            PolicyMode::Replay => "replay",
            PolicyMode::Record => "record",
            PolicyMode::RecordMissing => "record_missing",
            PolicyMode::Parity => "parity",
            PolicyMode::Live => "live",
        }
    }

    /// What the recorder captures in this mode: parity grows the store like `record_missing`.
    pub fn recorder_mode(self) -> Mode {
        match self {
            PolicyMode::Replay | PolicyMode::Live => Mode::Replay,
            PolicyMode::Record => Mode::Record,
            PolicyMode::RecordMissing | PolicyMode::Parity => Mode::RecordMissing,
        }
    }

    /// The sample sent live when the environment says nothing: every would-be-virtual call in parity mode
    /// (it exists to check them), none otherwise.
    fn default_sample(self) -> f64 {
        if self == PolicyMode::Parity {
            1.0
        } else {
            0.0
        }
    }

    /// The policy an environment without one of its own gets from the top-level settings.
    fn of(mode: Mode) -> PolicyMode {
        match mode {
            Mode::Replay => PolicyMode::Replay,
            Mode::Record => PolicyMode::Record,
            Mode::RecordMissing => PolicyMode::RecordMissing,
        }
    }
}

/// One environment's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvPolicy {
    /// What it does with LLM calls.
    pub mode: PolicyMode,
    /// What a request no asset matches gets in `replay` (`record_missing` and `parity` forward misses to
    /// record them).
    #[serde(default)]
    pub on_miss: OnMiss,
    /// The fraction (0 to 1) of would-be-virtual calls (hits and synthesized answers) sent live instead,
    /// chosen by key; `replay`, `record_missing` and `parity` only. Default: 1 in parity mode, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_sample: Option<f64>,
}

/// The per-request override (off unless configured).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    /// SHA-256 (64 lower-case hex digits) of the secret a request must carry in `x-understudy-override-token`
    /// for its `x-understudy-override: live|virtual` to count. Only the hash is configured, so Envoy's
    /// configuration (readable through its admin interface) does not hold the secret.
    pub secret_sha256: String,
}

/// The plugin configuration's `policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Policies by environment name.
    #[serde(default)]
    pub environments: BTreeMap<String, EnvPolicy>,
    /// The policy of an environment not listed (and of a VM whose node metadata names none). Default: the
    /// top-level `mode` and `on_miss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<EnvPolicy>,
    /// The Istio workload label naming the environment; empty to not read labels.
    #[serde(default = "default_label")]
    pub label: String,
    /// The per-request override; none when absent.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<OverrideConfig>,
}

fn default_label() -> String {
    DEFAULT_ENV_LABEL.into()
}

/// What Envoy's node metadata says about the environment (the filter reads it; absent keys are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `UNDERSTUDY_ENV`.
    pub understudy_env: Option<String>,
    /// The environment label's value in `LABELS`.
    pub label: Option<String>,
    /// `NAMESPACE`.
    pub namespace: Option<String>,
}

/// Where a VM's environment came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    /// `UNDERSTUDY_ENV` in the node metadata.
    UnderstudyEnv,
    /// The workload label in Istio's `LABELS`.
    Label,
    /// Istio's `NAMESPACE`.
    Namespace,
    /// Nothing: the environment is [`DEFAULT_ENVIRONMENT`].
    Default,
}

impl EnvSource {
    /// For the log.
    pub fn describe(self, label: &str) -> String {
        match self {
            EnvSource::UnderstudyEnv => format!("node metadata {ENV_METADATA_KEY}"),
            EnvSource::Label => format!("workload label {label} (node metadata {ISTIO_LABELS})"),
            EnvSource::Namespace => format!("namespace (node metadata {ISTIO_NAMESPACE})"),
            EnvSource::Default => "no environment in the node metadata".into(),
        }
    }
}

/// A VM's environment and the policy that applies to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    /// The environment's name (the stats' `understudy_env` label).
    pub name: String,
    /// Where it came from.
    pub source: EnvSource,
    /// Whether the policy lists it (else `policy.default` applies).
    pub listed: bool,
    /// Its mode.
    pub mode: PolicyMode,
    /// Its miss policy.
    pub on_miss: OnMiss,
    /// The fraction of would-be-virtual calls sent live.
    pub live_sample: f64,
    /// `live_sample` as a threshold on a key's first 64 bits.
    threshold: u128,
    /// Node metadata values that could not be environment names, for the log.
    pub ignored: Vec<String>,
}

impl Active {
    /// Is the call with this key one of the sampled ones sent live?
    pub fn samples(&self, key: &str) -> bool {
        sample_point(key).is_some_and(|p| p < self.threshold)
    }
}

/// What a per-request override asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// Send this request live.
    Live,
    /// Decide this request from the assets (as in `replay`, with the environment's `on_miss`).
    Virtual,
}

/// What became of a request's override headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideCheck {
    /// The request carries none.
    Absent,
    /// The secret matched.
    Applied(Forced),
    /// Ignored, and why (never naming the secret).
    Refused(&'static str),
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    environments: BTreeMap<String, EnvPolicy>,
    default: EnvPolicy,
    label: String,
    parity: Parity,
    override_digest: Option<[u8; 32]>,
}

impl Policy {
    /// Validates a policy. `mode` and `on_miss` are the top-level settings, the default environment's policy
    /// unless `policy.default` sets one (then they must be left at their defaults: two defaults would be
    /// ambiguous).
    /// `parity` is the plugin configuration's `parity` (how parity environments compare).
    pub fn compile(
        cfg: &PolicyConfig,
        parity: &ParityConfig,
        mode: Mode,
        on_miss: OnMiss,
    ) -> Result<Policy, ConfigError> {
        for (name, p) in &cfg.environments {
            valid_name(name).map_err(|why| ConfigError::invalid(format!("policy.environments.{name}"), why))?;
            check_env(p, &format!("policy.environments.{name}"))?;
        }
        let default = match &cfg.default {
            Some(p) => {
                if mode != Mode::Replay || on_miss != OnMiss::Error {
                    return Err(ConfigError::invalid(
                        "policy.default",
                        "the top-level mode and on_miss are the default environment's policy when policy.default \
                         is absent; with policy.default set, leave them out (set the default's mode and on_miss \
                         there)",
                    ));
                }
                check_env(p, "policy.default")?;
                p.clone()
            }
            None => EnvPolicy { mode: PolicyMode::of(mode), on_miss, live_sample: None },
        };
        if !cfg.label.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b)) || cfg.label.len() > 317 {
            return Err(ConfigError::invalid("policy.label", "a Kubernetes label key: letters, digits, `._/-`"));
        }
        let override_digest = match &cfg.override_ {
            None => None,
            Some(o) => Some(parse_digest(&o.secret_sha256).ok_or_else(|| {
                ConfigError::invalid(
                    "policy.override.secret_sha256",
                    "64 lower-case hex digits: the SHA-256 of the secret (`printf %s SECRET | sha256sum`)",
                )
            })?),
        };
        Ok(Policy {
            environments: cfg.environments.clone(),
            default,
            label: cfg.label.clone(),
            parity: parity.compile()?,
            override_digest,
        })
    }

    /// Does any environment (or the default) record, so the configuration needs a collector?
    pub fn records(&self) -> bool {
        self.environments.values().chain(std::iter::once(&self.default)).any(|p| p.mode.recorder_mode().records())
    }

    /// The label read from Istio's `LABELS` (empty: none).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// How parity is checked.
    pub fn parity(&self) -> &Parity {
        &self.parity
    }

    /// The environment the node metadata names, in order of precedence, and its policy.
    pub fn resolve(&self, node: &NodeInfo) -> Active {
        let mut ignored = Vec::new();
        let candidates = [
            (&node.understudy_env, EnvSource::UnderstudyEnv),
            (&node.label, EnvSource::Label),
            (&node.namespace, EnvSource::Namespace),
        ];
        let mut found = None;
        for (value, source) in candidates {
            let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) else { continue };
            match valid_name(v) {
                Ok(()) => {
                    found = Some((v.to_string(), source));
                    break;
                }
                Err(why) => ignored.push(format!("{}: {why}", source.describe(&self.label))),
            }
        }
        let (name, source) = found.unwrap_or_else(|| (DEFAULT_ENVIRONMENT.to_string(), EnvSource::Default));
        let listed = self.environments.get(&name);
        let p = listed.unwrap_or(&self.default);
        let live_sample = p.live_sample.unwrap_or_else(|| p.mode.default_sample());
        Active {
            listed: listed.is_some(),
            name,
            source,
            mode: p.mode,
            on_miss: p.on_miss,
            live_sample,
            threshold: threshold(live_sample),
            ignored,
        }
    }

    /// Checks a request's override headers against the configured secret.
    pub fn check_override(&self, value: Option<&str>, token: Option<&str>) -> OverrideCheck {
        check_override(self.override_digest.as_ref(), value, token)
    }
}

/// [`Policy::check_override`] with the configured digest, if any: without one every override is refused.
pub fn check_override(digest: Option<&[u8; 32]>, value: Option<&str>, token: Option<&str>) -> OverrideCheck {
    let Some(value) = value else {
        return if token.is_some() {
            OverrideCheck::Refused("a token without x-understudy-override")
        } else {
            OverrideCheck::Absent
        };
    };
    let Some(digest) = digest else { return OverrideCheck::Refused("no override is configured") };
    let forced = match value.trim() {
        v if v.eq_ignore_ascii_case("live") => Forced::Live,
        v if v.eq_ignore_ascii_case("virtual") => Forced::Virtual,
        _ => return OverrideCheck::Refused("the value is neither live nor virtual"),
    };
    let Some(token) = token else { return OverrideCheck::Refused("no x-understudy-override-token") };
    // The digests are compared in constant time (`subtle`); SHA-256 itself takes the same time for any
    // secret of a given length.
    let given = Sha256::digest(token.trim().as_bytes());
    if bool::from(given.as_slice().ct_eq(digest.as_slice())) {
        OverrideCheck::Applied(forced)
    } else {
        OverrideCheck::Refused("the token does not match")
    }
}

/// What a parity check keeps of the answer Understudy would have served, until the live answer has come.
#[derive(Debug, Clone, PartialEq)]
pub struct ParityCheck {
    route: Route,
    key: String,
    asset: Option<String>,
    model: Option<String>,
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl ParityCheck {
    /// The virtual answer `r` to a request on `route`, from the asset labeled `asset` (`None`: synthesized).
    pub fn new(route: &Route, r: LocalResponse, asset: Option<&str>) -> ParityCheck {
        let key = r.key().unwrap_or_default().to_string();
        let content_type =
            r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.clone());
        let model = r.accounting.map(|a| a.model).filter(|m| !m.is_empty());
        ParityCheck {
            route: route.clone(),
            key,
            asset: asset.map(str::to_string),
            model,
            status: r.status,
            content_type,
            body: r.body,
        }
    }

    /// The request's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The bytes it holds while it waits (charged to the record buffer).
    pub fn held_bytes(&self) -> usize {
        self.body.len() + self.key.len() + 256
    }

    /// Compares the live answer with the kept one.
    pub fn judge(&self, parity: &Parity, env: &str, live: Observed<'_>, at_ms: u64) -> ParityRecord {
        let expected = Observed { status: self.status, content_type: self.content_type.as_deref(), body: &self.body };
        let verdict = parity.compare(&self.route, expected, live);
        ParityRecord::new(&self.route, self.key.clone(), self.asset.clone(), self.model.clone(), env, at_ms, verdict)
    }
}

/// The log line of a mismatch: the key, the asset and the differing paths with their kinds (never values:
/// they are model output).
pub fn mismatch_message(r: &ParityRecord) -> String {
    let paths: Vec<String> = r
        .verdict
        .diffs
        .iter()
        .take(MAX_LOGGED_DIFFS)
        .map(|d| format!("{} ({})", if d.path.is_empty() { "/" } else { &d.path }, d.kind.name()))
        .collect();
    let more = r.verdict.diffs.len().saturating_sub(MAX_LOGGED_DIFFS);
    format!(
        "understudy: parity MISMATCH in {env}: {provider} {op} key {key} asset {asset}: {paths}{more}",
        env = r.env,
        provider = r.provider,
        op = r.operation,
        key = r.key,
        asset = r.asset.as_deref().unwrap_or("(synthesized)"),
        paths = paths.join(", "),
        more = if more > 0 { format!(" and {more} more") } else { String::new() },
    )
}

/// Differences named in one log line (all of them go to the collector).
pub const MAX_LOGGED_DIFFS: usize = 8;

/// A parity record as a delivery to the collector's [`PARITY_PATH`], under the delivery id `id`.
pub fn parity_delivery(r: &ParityRecord, id: String) -> Result<Delivery, String> {
    let body = serde_json::to_vec(r).map_err(|e| format!("parity record not serializable: {e}"))?;
    Ok(Delivery { path: PARITY_PATH, id, key: r.key.clone(), body })
}

/// Is a request with this key in a `fraction` sample? Deterministic: the key's first 64 bits (16 hex digits of a
/// SHA-256, uniformly distributed) against `fraction` × 2⁶⁴.
pub fn in_sample(key: &str, fraction: f64) -> bool {
    sample_point(key).is_some_and(|p| p < threshold(fraction))
}

fn sample_point(key: &str) -> Option<u128> {
    key.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()).map(u128::from)
}

fn threshold(fraction: f64) -> u128 {
    if fraction.is_nan() || fraction <= 0.0 {
        0
    } else if fraction >= 1.0 {
        1 << 64
    } else {
        // Exact for every fraction a configuration can spell to 1e-19; the cast saturates.
        (fraction * 18_446_744_073_709_551_616.0) as u128
    }
}

fn check_env(p: &EnvPolicy, field: &str) -> Result<(), ConfigError> {
    let Some(s) = p.live_sample else { return Ok(()) };
    if !(0.0..=1.0).contains(&s) {
        return Err(ConfigError::invalid(format!("{field}.live_sample"), format!("{s} is not a fraction from 0 to 1")));
    }
    if matches!(p.mode, PolicyMode::Record | PolicyMode::Live) {
        return Err(ConfigError::invalid(
            format!("{field}.live_sample"),
            format!(
                "{} mode sends every call live already; live_sample is for replay, record_missing and parity",
                p.mode.name()
            ),
        ));
    }
    Ok(())
}

/// An environment name: 1 to 63 letters, digits, `.`, `_` or `-` (any namespace or label value is one).
fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ENV_NAME {
        return Err(format!("an environment name has 1 to {MAX_ENV_NAME} characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err("an environment name holds letters, digits, `.`, `_` and `-` only".into());
    }
    Ok(())
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of a secret, as `policy.override.secret_sha256` holds it.
pub fn secret_sha256(secret: &str) -> String {
    crate::key::hex(&Sha256::digest(secret.trim().as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(v: serde_json::Value) -> Policy {
        let cfg: PolicyConfig = serde_json::from_value(v).unwrap();
        Policy::compile(&cfg, &ParityConfig::default(), Mode::Replay, OnMiss::Error).unwrap()
    }

    fn mesh() -> Policy {
        policy(json!({
            "environments": {
                "prod": {"mode": "live"},
                "staging": {"mode": "parity", "live_sample": 0.02},
                "ci": {"mode": "replay"},
            },
            "default": {"mode": "replay", "on_miss": "error"},
        }))
    }

    fn node(env: Option<&str>, label: Option<&str>, ns: Option<&str>) -> NodeInfo {
        NodeInfo {
            understudy_env: env.map(str::to_string),
            label: label.map(str::to_string),
            namespace: ns.map(str::to_string),
        }
    }

    #[test]
    fn the_environment_comes_from_understudys_key_then_the_label_then_the_namespace_then_the_default() {
        let p = mesh();
        let a = p.resolve(&node(Some("prod"), Some("staging"), Some("ci")));
        assert_eq!((a.name.as_str(), a.source, a.mode), ("prod", EnvSource::UnderstudyEnv, PolicyMode::Live));
        let a = p.resolve(&node(None, Some("staging"), Some("ci")));
        assert_eq!((a.name.as_str(), a.source, a.mode), ("staging", EnvSource::Label, PolicyMode::Parity));
        assert_eq!(a.live_sample, 0.02);
        let a = p.resolve(&node(None, None, Some("ci")));
        assert_eq!((a.name.as_str(), a.source, a.mode), ("ci", EnvSource::Namespace, PolicyMode::Replay));
        let a = p.resolve(&node(None, Some(" "), None));
        assert_eq!((a.name.as_str(), a.source, a.listed), ("default", EnvSource::Default, false));
        // The first one present wins even when the policy does not list it: its policy is the default.
        let a = p.resolve(&node(None, None, Some("team-a")));
        assert_eq!(
            (a.name.as_str(), a.listed, a.mode, a.on_miss),
            ("team-a", false, PolicyMode::Replay, OnMiss::Error)
        );
        // A value that can't be a name is skipped, and said so.
        let a = p.resolve(&node(Some("prod;rm -rf"), None, Some("ci")));
        assert_eq!(a.name, "ci");
        assert!(a.ignored[0].contains("UNDERSTUDY_ENV"), "{:?}", a.ignored);
    }

    #[test]
    fn the_default_policy_is_the_top_level_settings_unless_the_policy_sets_one() {
        let cfg: PolicyConfig = serde_json::from_value(json!({"environments": {"ci": {"mode": "replay"}}})).unwrap();
        let p = Policy::compile(&cfg, &ParityConfig::default(), Mode::RecordMissing, OnMiss::Passthrough).unwrap();
        let a = p.resolve(&NodeInfo::default());
        assert_eq!((a.mode, a.on_miss), (PolicyMode::RecordMissing, OnMiss::Passthrough));
        assert!(p.records());
        let cfg: PolicyConfig = serde_json::from_value(json!({"default": {"mode": "live"}})).unwrap();
        let e = Policy::compile(&cfg, &ParityConfig::default(), Mode::Record, OnMiss::Error).unwrap_err().to_string();
        assert!(e.contains("policy.default"), "{e}");
        assert!(!Policy::compile(&cfg, &ParityConfig::default(), Mode::Replay, OnMiss::Error).unwrap().records());
    }

    #[test]
    fn bad_policies_are_refused_naming_the_field() {
        for (v, field) in [
            (
                json!({"environments": {"ci": {"mode": "replay", "live_sample": 1.5}}}),
                "policy.environments.ci.live_sample",
            ),
            (
                json!({"environments": {"prod": {"mode": "live", "live_sample": 0.1}}}),
                "policy.environments.prod.live_sample",
            ),
            (json!({"environments": {"a b": {"mode": "replay"}}}), "policy.environments.a b"),
            (json!({"override": {"secret_sha256": "abc"}}), "policy.override.secret_sha256"),
            (json!({"label": "a b"}), "policy.label"),
        ] {
            let cfg: PolicyConfig = serde_json::from_value(v).unwrap();
            let e =
                Policy::compile(&cfg, &ParityConfig::default(), Mode::Replay, OnMiss::Error).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        assert!(serde_json::from_value::<PolicyConfig>(json!({"environments": {"x": {"mode": "shadow"}}})).is_err());
        assert!(serde_json::from_value::<PolicyConfig>(json!({"bogus": 1})).is_err());
    }

    fn key(i: u64) -> String {
        crate::key::hex(&Sha256::digest(i.to_le_bytes()))
    }

    #[test]
    fn a_sample_is_within_tolerance_of_its_fraction_over_thousands_of_keys() {
        let n = 20_000u64;
        for fraction in [0.02, 0.1, 0.5, 0.9] {
            let hits = (0..n).filter(|i| in_sample(&key(*i), fraction)).count() as f64;
            let mean = n as f64 * fraction;
            let sd = (n as f64 * fraction * (1.0 - fraction)).sqrt();
            // Five standard deviations: a real bias fails, chance practically never does (and the keys are fixed).
            assert!((hits - mean).abs() < 5.0 * sd, "{fraction}: {hits} of {n}, expected {mean} ± {}", 5.0 * sd);
        }
        assert!((0..1000).all(|i| in_sample(&key(i), 1.0)));
        assert!((0..1000).all(|i| !in_sample(&key(i), 0.0)));
        assert!(!in_sample("not hex", 1.0) && !in_sample("", 0.5));
    }

    #[test]
    fn a_sample_is_chosen_by_key_alone_and_nests() {
        // The same key is in or out whoever asks (every worker and run computes this), and a smaller sample is
        // a subset of a bigger one, so raising the fraction only adds requests.
        let p = mesh();
        let staging = p.resolve(&node(Some("staging"), None, None));
        for i in 0..5000 {
            let k = key(i);
            assert_eq!(staging.samples(&k), in_sample(&k, 0.02));
            if in_sample(&k, 0.02) {
                assert!(in_sample(&k, 0.05));
            }
        }
        assert_eq!(threshold(0.5), 1 << 63);
    }

    fn plugin_config(extra: serde_json::Value) -> String {
        let mut cfg = json!({"bundle": {"format": crate::BUNDLE_FORMAT, "assets": []}});
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        cfg.to_string()
    }

    #[test]
    fn a_plugin_configuration_with_a_bad_policy_fails_to_load_with_a_typed_error_naming_the_field() {
        use crate::{ConfigError, Runtime};
        let cases = [
            (json!({"policy": {"environments": {"ci": {"mode": "shadow"}}}}), "policy.environments.ci.mode"),
            (
                json!({"policy": {"environments": {"ci": {"mode": "replay", "on_miss": "maybe"}}}}),
                "policy.environments.ci.on_miss",
            ),
            (json!({"policy": {"environmnets": {}}}), "policy"),
            (
                json!({"policy": {"environments": {"ci": {"mode": "replay", "live_sample": 2}}}}),
                "policy.environments.ci.live_sample",
            ),
            (json!({"policy": {"override": {"secret_sha256": "not-a-digest"}}}), "policy.override.secret_sha256"),
            (json!({"mode": "record", "policy": {"default": {"mode": "replay"}}}), "policy.default"),
        ];
        for (extra, field) in cases {
            let e = Runtime::from_json(&plugin_config(extra.clone())).unwrap_err();
            let named = match &e {
                ConfigError::Parse { field: f, .. } | ConfigError::Invalid { field: f, .. } => f.clone(),
                other => panic!("{extra}: untyped {other:?}"),
            };
            assert!(named.starts_with(field), "{extra}: {named} ({e})");
        }
    }

    #[test]
    fn without_a_policy_nothing_changes_and_with_one_the_environment_sets_mode_and_on_miss() {
        let mut rt = crate::Runtime::from_json(&plugin_config(json!({"on_miss": "passthrough"}))).unwrap();
        assert!(rt.enter(&NodeInfo { understudy_env: Some("ci".into()), ..Default::default() }).is_none());
        assert_eq!((rt.on_miss(), rt.recorder().mode()), (OnMiss::Passthrough, Mode::Replay));
        let policy = json!({"environments": {"staging": {"mode": "parity"}, "ci": {"mode": "replay"}}});
        let text = plugin_config(json!({"policy": policy}));
        let mut rt = crate::Runtime::from_json(&text).unwrap();
        let a = rt.enter(&NodeInfo { namespace: Some("staging".into()), ..Default::default() }).unwrap();
        assert_eq!((a.mode, a.live_sample), (PolicyMode::Parity, 1.0));
        // Parity grows the store like record_missing: misses go live whatever on_miss says.
        assert_eq!((rt.on_miss(), rt.recorder().mode()), (OnMiss::Passthrough, Mode::RecordMissing));
        let mut rt = crate::Runtime::from_json(&text).unwrap();
        rt.enter(&NodeInfo { namespace: Some("ci".into()), ..Default::default() });
        assert_eq!((rt.on_miss(), rt.recorder().mode()), (OnMiss::Error, Mode::Replay));
    }

    #[test]
    fn a_mismatch_is_logged_with_key_asset_and_paths_but_no_values_and_shipped_to_the_parity_path() {
        use crate::parity::{Diff, DiffKind, Verdict};
        let route = crate::classify("POST", "/v1/chat/completions").unwrap();
        let verdict = Verdict {
            matched: false,
            diffs: vec![Diff {
                path: "/choices/0/finish_reason".into(),
                kind: DiffKind::FinishReason,
                expected: Some("stop".into()),
                live: Some("SECRET-LOOKING-OUTPUT".into()),
            }],
        };
        let r = ParityRecord::new(&route, "k".repeat(64), Some("a.json#0".into()), None, "staging", 1, verdict);
        let line = mismatch_message(&r);
        assert!(line.contains(&"k".repeat(64)) && line.contains("a.json#0") && line.contains("staging"), "{line}");
        assert!(line.contains("/choices/0/finish_reason (finish_reason)"), "{line}");
        assert!(!line.contains("SECRET-LOOKING-OUTPUT") && !line.contains("stop"), "{line}");
        let d = parity_delivery(&r, "parity-1".into()).unwrap();
        assert_eq!((d.path, d.id.as_str()), (PARITY_PATH, "parity-1"));
        assert_eq!(ParityRecord::parse(std::str::from_utf8(&d.body).unwrap()).unwrap(), r);
    }

    #[test]
    fn the_override_needs_the_secret_and_a_known_value() {
        let secret = "correct horse battery staple";
        let p = policy(json!({"override": {"secret_sha256": secret_sha256(secret)}}));
        assert_eq!(p.check_override(None, None), OverrideCheck::Absent);
        assert_eq!(p.check_override(Some("live"), Some(secret)), OverrideCheck::Applied(Forced::Live));
        assert_eq!(p.check_override(Some(" Virtual "), Some(secret)), OverrideCheck::Applied(Forced::Virtual));
        assert!(matches!(p.check_override(Some("live"), None), OverrideCheck::Refused(_)));
        assert!(matches!(
            p.check_override(Some("live"), Some("correct horse battery stapler")),
            OverrideCheck::Refused(_)
        ));
        assert!(matches!(p.check_override(Some("shadow"), Some(secret)), OverrideCheck::Refused(_)));
        assert!(matches!(p.check_override(None, Some(secret)), OverrideCheck::Refused(_)));
        // Without an override configured, nothing is accepted.
        assert!(matches!(mesh().check_override(Some("live"), Some(secret)), OverrideCheck::Refused(_)));
        assert!(matches!(check_override(None, Some("live"), Some("")), OverrideCheck::Refused(_)));
        // The refusals never carry the secret.
        if let OverrideCheck::Refused(why) = p.check_override(Some("live"), Some("nope")) {
            assert!(!why.contains("nope") && !why.contains(secret));
        }
    }
}
