//! The bundle: what `understudy bundle` writes and the filter loads, validated assets with their keys and a
//! content hash over them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::Asset;
use crate::error::ConfigError;

/// Version tag of the bundle format. v2 nests each asset as written (`{"key", "source", "asset"}`); a v1
/// bundle is refused with a request to rebuild it.
pub const BUNDLE_FORMAT: &str = "understudy.bundle/v2";

/// A bundle whose entries are `E`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleOf<E> {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// SHA-256 of the canonical JSON of `assets`, written by `understudy bundle` and verified by the filter,
    /// so a bundle edited or truncated after it was validated fails the load instead of serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The assets, in a stable order.
    pub assets: Vec<E>,
}

/// A bundle of typed assets.
pub type Bundle = BundleOf<BundledAsset>;

/// A bundle whose assets are still raw JSON slices of the configuration text: the filter parses, checks and
/// indexes them one at a time, so loading needs memory for the text and the compiled store only.
pub(crate) type RawBundle<'a> = BundleOf<&'a RawValue>;

/// An asset inside a bundle: the asset as written, where it came from and the key the bundler computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundledOf<A> {
    /// Key computed by the bundler; the filter recomputes and compares it.
    pub key: String,
    /// `file#index` it came from.
    pub source: String,
    /// The asset.
    pub asset: A,
}

/// A bundled typed asset.
pub type BundledAsset = BundledOf<Asset>;

impl Bundle {
    /// A sealed bundle: `assets` plus their content hash.
    pub fn sealed(assets: Vec<BundledAsset>) -> Self {
        let mut b = Bundle { format: BUNDLE_FORMAT.to_string(), sha256: None, assets };
        b.sha256 = Some(b.content_hash());
        b
    }

    /// SHA-256 (hex) of the canonical JSON of the assets.
    pub fn content_hash(&self) -> String {
        let mut h = ContentHasher::default();
        self.assets.iter().for_each(|a| h.add_value(&serde_json::to_value(a).unwrap_or(Value::Null)));
        h.finish()
    }

    /// Checks the stored content hash, if any.
    pub fn verify(&self) -> Result<(), ConfigError> {
        match &self.sha256 {
            Some(stored) => {
                let computed = self.content_hash();
                if *stored == computed {
                    Ok(())
                } else {
                    Err(hash_mismatch(stored, &computed))
                }
            }
            None => Ok(()),
        }
    }
}

/// Checks a bundle's format tag.
pub(crate) fn check_format(format: &str) -> Result<(), ConfigError> {
    if format == BUNDLE_FORMAT {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "bundle.format",
        format!(
            "{format:?} is not supported by this filter (expected {BUNDLE_FORMAT:?}); rebuild the bundle with this \
             version's `understudy bundle` (or `understudy plugin-config`)"
        ),
    ))
}

pub(crate) fn hash_mismatch(stored: &str, computed: &str) -> ConfigError {
    ConfigError::invalid(
        "bundle.sha256",
        format!(
            "the assets do not match the bundle's content hash {stored} (computed {computed}): the bundle was \
             changed after `understudy bundle` validated it; rebuild it"
        ),
    )
}

/// Writes a sealed bundle's canonical JSON one asset at a time, from each asset's canonical JSON (what
/// [`Bundle::sealed`] serialized canonically would be, without holding the typed assets): for tools that build
/// big bundles and must stop at a size.
#[derive(Default)]
pub struct CanonicalBundleWriter {
    assets: String,
    hasher: ContentHasher,
}

impl CanonicalBundleWriter {
    /// Adds an asset (`{"key", "source", "asset"}` as canonical JSON).
    pub fn push(&mut self, canonical_asset: &str) {
        if !self.assets.is_empty() {
            self.assets.push(',');
        }
        self.assets.push_str(canonical_asset);
        self.hasher.add_text(canonical_asset);
    }

    /// Bytes of the assets so far.
    pub fn len(&self) -> usize {
        self.assets.len()
    }

    /// No asset yet.
    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }

    /// The sealed bundle's canonical JSON (keys in byte order: `assets`, `format`, `sha256`).
    pub fn finish(self) -> String {
        let sha = self.hasher.finish();
        format!("{{\"assets\":[{}],\"format\":\"{BUNDLE_FORMAT}\",\"sha256\":\"{sha}\"}}", self.assets)
    }
}

/// Computes [`Bundle::content_hash`] one asset at a time, so a huge bundle is never held twice in memory:
/// the digest is that of the canonical JSON array `[a0,a1,...]`.
#[derive(Default)]
pub(crate) struct ContentHasher {
    sink: crate::canonical::HashSink,
    count: usize,
}

impl ContentHasher {
    /// Adds an asset as parsed JSON. For a bundle written by `understudy bundle` this equals the typed asset;
    /// a bundle edited by hand afterwards (even to spell out a default) no longer verifies.
    pub(crate) fn add_value(&mut self, v: &Value) {
        self.add_canonical(|sink| crate::canonical::write_canonical(v, sink));
    }

    /// Adds an asset given as canonical JSON text (what `understudy plugin-config` writes).
    pub(crate) fn add_text(&mut self, canonical: &str) {
        use crate::canonical::Sink;
        self.add_canonical(|sink| sink.put(canonical));
    }

    fn add_canonical(&mut self, write: impl FnOnce(&mut crate::canonical::HashSink)) {
        use crate::canonical::Sink;
        self.sink.put(if self.count == 0 { "[" } else { "," });
        write(&mut self.sink);
        self.count += 1;
    }

    pub(crate) fn finish(mut self) -> String {
        use crate::canonical::Sink;
        self.sink.put(if self.count == 0 { "[]" } else { "]" });
        crate::key::hex(&self.sink.finish())
    }
}
