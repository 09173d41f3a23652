//! The plugin configuration: one model, parsed strictly and compiled once into the parts a [`Runtime`]
//! serves with. A sealed bundle is streamed, one asset at a time, straight out of the configuration text.
//!
//! [`Runtime`]: super::Runtime

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::asset::{
    check_format, from_str_strict, from_str_strict_borrowed, hash_mismatch, Bundle, BundledAsset, BundledOf,
    ContentHasher, RawAsset, RawBundle,
};
use crate::cost::{PriceOverrides, Prices};
use crate::error::ConfigError;
use crate::key::{NormalizationConfig, Normalizer};
use crate::parity::ParityConfig;
use crate::policy::{Policy, PolicyConfig};
use crate::record::{Mode, PacingConfig, RecordConfig, Recorder};
use crate::store::Store;
use crate::synth::{SynthRule, Synthesizer};

/// What to do when no asset matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMiss {
    /// Answer 404 in the API's error shape; nothing goes upstream (strict virtual mode).
    #[default]
    Error,
    /// Forward the request to the live upstream.
    Passthrough,
}

/// The filter's plugin configuration, with its bundle held as `B`. Unknown fields fail the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfigOf<B> {
    /// Miss policy; default `error`.
    #[serde(default)]
    pub on_miss: OnMiss,
    /// Normalization settings; keys in `bundle` must have been computed with the same ones.
    #[serde(default)]
    pub normalization: NormalizationConfig,
    /// The asset bundle, as written by `understudy bundle`.
    pub bundle: B,
    /// Rules that synthesize an answer for requests no asset matches (before `on_miss` applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synthesize: Vec<SynthRule>,
    /// Prices (USD per million tokens) by model name or glob, in front of the built-in table (see
    /// [`crate::cost`]).
    #[serde(default, skip_serializing_if = "PriceOverrides::is_empty")]
    pub prices: PriceOverrides,
    /// `replay` (default), `record` or `record_missing` (see [`crate::record`]).
    #[serde(default, skip_serializing_if = "Mode::is_replay")]
    pub mode: Mode,
    /// Record-mode settings: the collector's cluster, redactions, error answers.
    #[serde(default, skip_serializing_if = "RecordConfig::is_default")]
    pub record: RecordConfig,
    /// Paced replay of recorded streams through the pacer; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacing: Option<PacingConfig>,
    /// Per-environment policy (docs/policy.md): each environment's mode, `on_miss` and `live_sample`, and the
    /// per-request override. Absent: `mode` and `on_miss` apply everywhere, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
    /// How environments in parity mode compare live answers with virtual ones (docs/parity.md).
    #[serde(default, skip_serializing_if = "is_default_parity")]
    pub parity: ParityConfig,
}

fn is_default_parity(p: &ParityConfig) -> bool {
    *p == ParityConfig::default()
}

/// The plugin configuration as JSON.
pub type PluginConfig = PluginConfigOf<Bundle>;

impl PluginConfig {
    /// Strict parse; errors name the field.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        from_str_strict(text, "plugin configuration")
    }
}

const SOURCE: &str = "plugin configuration";

/// A configuration compiled for serving.
pub(crate) struct Compiled {
    pub(crate) on_miss: OnMiss,
    pub(crate) normalizer: Normalizer,
    pub(crate) store: Store,
    pub(crate) synth: Synthesizer,
    pub(crate) prices: Prices,
    pub(crate) recorder: Recorder,
    pub(crate) pacing: Option<f64>,
    pub(crate) policy: Option<Policy>,
}

/// Streams the bundle: each asset is parsed from its slice of `text`, hashed, compiled and dropped, so the
/// peak is the text plus the compiled store (a 100k-asset bundle would not fit a wasm VM twice). `sealed`
/// requires the content hash.
pub(crate) fn load(text: &str, sealed: bool) -> Result<Compiled, ConfigError> {
    let raw: PluginConfigOf<RawBundle<'_>> = from_str_strict_borrowed(text, SOURCE)?;
    if sealed && raw.bundle.sha256.is_none() {
        return Err(ConfigError::invalid(
            "bundle.sha256",
            "missing: the filter loads only sealed bundles; build the bundle with `understudy bundle` \
             (or `understudy plugin-config`)",
        ));
    }
    check_format(&raw.bundle.format)?;
    let normalizer = Normalizer::compile(&raw.normalization)?;
    let synth = Synthesizer::compile(&raw.synthesize)?;
    let prices = Prices::new(&raw.prices)?;
    let recorder = Recorder::compile(raw.mode, &raw.record, &raw.normalization)?;
    let pacing = check_pacing(raw.pacing)?;
    let policy = compile_policy(raw.policy.as_ref(), &raw.parity, raw.mode, raw.on_miss, &raw.record)?;
    let store = match raw.bundle.sha256.as_deref() {
        Some(stored) => load_sealed(&raw.bundle.assets, stored, &normalizer)?,
        None => {
            // Unsealed (tools, tests): every asset compiled now, so any problem fails the load.
            let mut store = Store::default();
            store.reserve(raw.bundle.assets.len());
            for (i, slice) in raw.bundle.assets.iter().enumerate() {
                let b: BundledAsset = from_str_strict(slice.get(), SOURCE).map_err(|e| in_asset(i, e))?;
                let label = format!("bundle.assets[{i}] from {}", b.source);
                store.add_owned(&normalizer, &label, b.asset, Some(&b.key))?;
            }
            store
        }
    };
    Ok(Compiled { on_miss: on_miss(raw.on_miss, raw.mode), normalizer, store, synth, prices, recorder, pacing, policy })
}

/// Compiles a parsed configuration.
pub(crate) fn compile(cfg: PluginConfig) -> Result<Compiled, ConfigError> {
    check_format(&cfg.bundle.format)?;
    cfg.bundle.verify()?;
    let normalizer = Normalizer::compile(&cfg.normalization)?;
    let synth = Synthesizer::compile(&cfg.synthesize)?;
    let prices = Prices::new(&cfg.prices)?;
    let recorder = Recorder::compile(cfg.mode, &cfg.record, &cfg.normalization)?;
    let pacing = check_pacing(cfg.pacing)?;
    let policy = compile_policy(cfg.policy.as_ref(), &cfg.parity, cfg.mode, cfg.on_miss, &cfg.record)?;
    let mut store = Store::default();
    for (i, b) in cfg.bundle.assets.into_iter().enumerate() {
        let label = format!("bundle.assets[{i}] from {}", b.source);
        store.add_owned(&normalizer, &label, b.asset, Some(&b.key))?;
    }
    Ok(Compiled { on_miss: on_miss(cfg.on_miss, cfg.mode), normalizer, store, synth, prices, recorder, pacing, policy })
}

/// The policy, compiled; an environment that records needs the collector's cluster.
fn compile_policy(
    policy: Option<&PolicyConfig>,
    parity: &ParityConfig,
    mode: Mode,
    on_miss: OnMiss,
    record: &RecordConfig,
) -> Result<Option<Policy>, ConfigError> {
    let Some(cfg) = policy else {
        // Checked even without a policy: a bad `parity` is a bad configuration.
        parity.compile()?;
        return Ok(None);
    };
    let p = Policy::compile(cfg, parity, mode, on_miss)?;
    if p.records() && record.collector.trim().is_empty() {
        return Err(ConfigError::invalid("record.collector", "names no Envoy cluster, and an environment records"));
    }
    Ok(Some(p))
}

/// `record_missing` forwards misses (to record them) whatever `on_miss` says.
pub(crate) fn on_miss(on_miss: OnMiss, mode: Mode) -> OnMiss {
    if mode == Mode::RecordMissing {
        OnMiss::Passthrough
    } else {
        on_miss
    }
}

/// The replay speed, checked: a positive finite number, at most 1000.
fn check_pacing(p: Option<PacingConfig>) -> Result<Option<f64>, ConfigError> {
    match p {
        None => Ok(None),
        Some(PacingConfig { speed }) if speed.is_finite() && speed > 0.0 && speed <= 1000.0 => Ok(Some(speed)),
        Some(PacingConfig { speed }) => {
            Err(ConfigError::invalid("pacing.speed", format!("{speed} is not a speed between 0 (excluded) and 1000")))
        }
    }
}

/// A sealed bundle's assets, answers deferred. The content hash is first taken over the assets' text as it
/// is — `understudy plugin-config` writes canonical JSON, so that is the hash — and only if that differs (a
/// bundle re-formatted, e.g. pretty-printed) over their canonical form; a real mismatch is reported before
/// any other problem, since an edited bundle explains it.
fn load_sealed(slices: &[&RawValue], stored: &str, normalizer: &Normalizer) -> Result<Store, ConfigError> {
    let mut as_is = ContentHasher::default();
    let mut store = Store::default();
    store.reserve(slices.len());
    let mut failure = None;
    for (i, slice) in slices.iter().enumerate() {
        as_is.add_text(slice.get());
        if failure.is_some() {
            continue;
        }
        let added = match serde_json::from_str::<BundledOf<RawAsset<'_>>>(slice.get()) {
            Ok(b) => {
                let label = format!("bundle.assets[{i}] from {}", b.source);
                store.add_raw(normalizer, &label, b.asset, &b.key)
            }
            // Parse again, strictly and fully, for an error that names the field.
            Err(e) => Err(in_asset(
                i,
                from_str_strict::<BundledAsset>(slice.get(), SOURCE)
                    .err()
                    .unwrap_or_else(|| ConfigError::invalid(format!("bundle.assets[{i}]"), e.to_string())),
            )),
        };
        if let Err(e) = added {
            failure = Some(e);
        }
    }
    if as_is.finish() != stored {
        let mut canonical = ContentHasher::default();
        for (i, slice) in slices.iter().enumerate() {
            let tree: Value = serde_json::from_str(slice.get()).map_err(|e| ConfigError::Parse {
                source_name: SOURCE.into(),
                field: format!("bundle.assets[{i}]"),
                reason: e.to_string(),
            })?;
            canonical.add_value(&tree);
        }
        let computed = canonical.finish();
        if computed != stored {
            return Err(hash_mismatch(stored, &computed));
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(store),
    }
}

/// A parse error inside `bundle.assets[i]`, its field path made relative to the whole configuration.
fn in_asset(i: usize, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Parse { source_name, field, reason } => {
            let field = if field == "." { String::new() } else { format!(".{field}") };
            ConfigError::Parse { source_name, field: format!("bundle.assets[{i}]{field}"), reason }
        }
        other => other,
    }
}
