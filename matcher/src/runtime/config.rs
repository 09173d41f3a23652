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
use crate::store::remote::{Remote, StoreConfig};
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
    /// The asset bundle, as written by `understudy bundle`. Without one the filter serves the bundle embedded
    /// in its module (`understudy package --assets`), else only what `store` holds.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub bundle: Option<B>,
    /// A remote asset store (`understudy publish`) asked for keys the bundle lacks (docs/store.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreConfig>,
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
    #[serde(default, skip_serializing_if = "ParityConfig::is_default")]
    pub parity: ParityConfig,
}

/// Every setting at its default and no bundle (serde's defaults; a derive would require `B: Default`).
impl<B> Default for PluginConfigOf<B> {
    fn default() -> Self {
        PluginConfigOf {
            on_miss: OnMiss::default(),
            normalization: NormalizationConfig::default(),
            bundle: None,
            store: None,
            synthesize: Vec::new(),
            prices: PriceOverrides::default(),
            mode: Mode::default(),
            record: RecordConfig::default(),
            pacing: None,
            policy: None,
            parity: ParityConfig::default(),
        }
    }
}

/// `Option::None` for any `B` (serde's `default` on a generic field would require `B: Default`).
fn none<B>() -> Option<B> {
    None
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
    pub(crate) remote: Option<Remote>,
    pub(crate) source: BundleSource,
    pub(crate) policy: Option<Policy>,
}

/// Where a runtime's own assets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleSource {
    /// The plugin configuration's `bundle`.
    Inline,
    /// The bundle embedded in the filter's module (`understudy package --assets`).
    Embedded,
    /// None: only the remote store's.
    None,
}

/// The start of the marker record the filter reserves for an embedded bundle (`filter/src/embedded.rs`):
/// these 32 bytes, then the bundle's offset in linear memory and its length (little-endian `u32`s, both
/// `u32::MAX` until `understudy package --assets` patches them).
pub const EMBED_MARKER_MAGIC: [u8; 32] = *b"understudy:embedded-bundle:v1\0\0\0";

/// Version tag of what `understudy package --assets` embeds in the module.
pub const EMBEDDED_FORMAT: &str = "understudy.embedded/v1";

/// The bundle embedded in a module: its normalization settings travel with it, so a plugin configuration
/// with other settings is refused at load with a clear message instead of failing on the first key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedOf<B> {
    /// Always [`EMBEDDED_FORMAT`].
    pub format: String,
    /// The normalization settings its keys were computed with.
    #[serde(default)]
    pub normalization: NormalizationConfig,
    /// The sealed bundle.
    pub bundle: B,
}

/// Streams the bundle: each asset is parsed from its slice of `text`, hashed, compiled and dropped, so the
/// peak is the text plus the compiled store (a 100k-asset bundle would not fit a wasm VM twice). `sealed`
/// requires the content hash.
pub(crate) fn load(text: &str, sealed: bool, embedded: Option<&str>) -> Result<Compiled, ConfigError> {
    let raw: PluginConfigOf<RawBundle<'_>> = from_str_strict_borrowed(text, SOURCE)?;
    let parts = Parts::compile(&raw)?;
    let (normalizer, remote) = (&parts.normalizer, &parts.remote);
    let (store, source) = match (&raw.bundle, embedded) {
        (Some(bundle), _) => (load_bundle(bundle, sealed, normalizer)?, BundleSource::Inline),
        (None, Some(text)) => {
            let e: EmbeddedOf<RawBundle<'_>> = from_str_strict_borrowed(text, "embedded bundle")?;
            if e.format != EMBEDDED_FORMAT {
                return Err(ConfigError::invalid(
                    "embedded bundle",
                    format!("format {:?} is not {EMBEDDED_FORMAT:?}: package the module with this version", e.format),
                ));
            }
            if e.normalization != raw.normalization {
                return Err(ConfigError::invalid(
                    "normalization",
                    "differs from the normalization settings the module's embedded bundle was built with: pass the \
                     same --normalization to `understudy package --assets` and to the plugin configuration",
                ));
            }
            (load_bundle(&e.bundle, true, normalizer)?, BundleSource::Embedded)
        }
        (None, None) if remote.is_some() => (Store::default(), BundleSource::None),
        (None, None) => {
            return Err(ConfigError::invalid(
                "bundle",
                "missing: the plugin configuration needs a `bundle` (`understudy plugin-config`), a `store` \
                 (`understudy publish`), or a module with a bundle embedded in it (`understudy package --assets`)",
            ))
        }
    };
    Ok(parts.with(store, source))
}

/// A bundle's assets, streamed out of the text they are slices of.
fn load_bundle(bundle: &RawBundle<'_>, sealed: bool, normalizer: &Normalizer) -> Result<Store, ConfigError> {
    if sealed && bundle.sha256.is_none() {
        return Err(ConfigError::invalid(
            "bundle.sha256",
            "missing: the filter loads only sealed bundles; build the bundle with `understudy bundle` \
             (or `understudy plugin-config`)",
        ));
    }
    check_format(&bundle.format)?;
    match bundle.sha256.as_deref() {
        Some(stored) => load_sealed(&bundle.assets, stored, normalizer),
        None => {
            // Unsealed (tools, tests): every asset compiled now, so any problem fails the load.
            let mut store = Store::default();
            store.reserve(bundle.assets.len());
            for (i, slice) in bundle.assets.iter().enumerate() {
                let b: BundledAsset = from_str_strict(slice.get(), SOURCE).map_err(|e| in_asset(i, e))?;
                let label = format!("bundle.assets[{i}] from {}", b.source);
                store.add_owned(normalizer, &label, b.asset, Some(&b.key))?;
            }
            Ok(store)
        }
    }
}

/// Compiles a parsed configuration.
pub(crate) fn compile(cfg: PluginConfig) -> Result<Compiled, ConfigError> {
    let parts = Parts::compile(&cfg)?;
    let normalizer = &parts.normalizer;
    let mut store = Store::default();
    let source = match cfg.bundle {
        Some(bundle) => {
            check_format(&bundle.format)?;
            bundle.verify()?;
            for (i, b) in bundle.assets.into_iter().enumerate() {
                let label = format!("bundle.assets[{i}] from {}", b.source);
                store.add_owned(normalizer, &label, b.asset, Some(&b.key))?;
            }
            BundleSource::Inline
        }
        None if parts.remote.is_some() => BundleSource::None,
        None => return Err(ConfigError::invalid("bundle", "missing: needs a `bundle` or a `store`")),
    };
    Ok(parts.with(store, source))
}

/// Everything a configuration compiles to besides its assets, whichever way the bundle arrives.
struct Parts {
    on_miss: OnMiss,
    normalizer: Normalizer,
    synth: Synthesizer,
    prices: Prices,
    recorder: Recorder,
    pacing: Option<f64>,
    remote: Option<Remote>,
    policy: Option<Policy>,
}

impl Parts {
    fn compile<B>(cfg: &PluginConfigOf<B>) -> Result<Parts, ConfigError> {
        Ok(Parts {
            on_miss: on_miss(cfg.on_miss, cfg.mode),
            normalizer: Normalizer::compile(&cfg.normalization)?,
            synth: Synthesizer::compile(&cfg.synthesize)?,
            prices: Prices::new(&cfg.prices)?,
            recorder: Recorder::compile(cfg.mode, &cfg.record, &cfg.normalization)?,
            pacing: check_pacing(cfg.pacing)?,
            remote: cfg.store.clone().map(|s| Remote::new(s, &cfg.normalization)).transpose()?,
            policy: compile_policy(cfg.policy.as_ref(), &cfg.parity, cfg.mode, cfg.on_miss, &cfg.record)?,
        })
    }

    fn with(self, store: Store, source: BundleSource) -> Compiled {
        let Parts { on_miss, normalizer, synth, prices, recorder, pacing, remote, policy } = self;
        Compiled { on_miss, normalizer, store, synth, prices, recorder, pacing, remote, source, policy }
    }
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
