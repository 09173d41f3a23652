//! Loading an assets directory into a validated bundle.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use understudy_matcher::store::Checked;
use understudy_matcher::{parse_asset_file, Asset, Bundle, BundledAsset, NormalizationConfig, Normalizer, Operation};

/// A built bundle plus what the bundler noticed.
pub struct Built {
    pub bundle: Bundle,
    pub files: usize,
    pub counts: Vec<(Operation, usize)>,
    pub duplicates: Vec<(String, String)>,
}

/// Every `*.json` file under `dir`, recursively (following symlinks; a symlink loop is an error naming it), in
/// a stable order; not the parity records in `dir/.parity/`.
pub fn asset_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("assets directory {} does not exist or is not a directory", dir.display());
    }
    let mut out = Vec::new();
    // Parity records (`understudy collect`) live beside the assets they were compared with, but are not assets.
    let walk = walkdir::WalkDir::new(dir).follow_links(true).sort_by_file_name();
    for entry in walk.into_iter().filter_entry(|e| e.depth() == 0 || e.file_name() != crate::collect::PARITY_DIR) {
        let entry = entry.with_context(|| format!("cannot read assets directory {}", dir.display()))?;
        if entry.file_type().is_file() && entry.path().extension().is_some_and(|x| x == "json") {
            out.push(entry.into_path());
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a normalization config file, or the defaults.
pub fn load_normalization(path: Option<&Path>) -> Result<NormalizationConfig> {
    let Some(p) = path else {
        return Ok(NormalizationConfig::default());
    };
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(understudy_matcher::asset::from_str_strict(&text, &p.display().to_string())?)
}

/// Reads a `synthesize` rules file (a JSON array of rules), or none.
pub fn load_synthesize(path: Option<&Path>) -> Result<Vec<understudy_matcher::synth::SynthRule>> {
    let Some(p) = path else { return Ok(Vec::new()) };
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(understudy_matcher::asset::from_str_strict(&text, &p.display().to_string())?)
}

/// Reads a `--prices` file (model name or glob → USD per million tokens, `understudy_matcher::cost`), checked
/// as the filter checks it: an error names the file and the entry.
pub fn load_prices(path: Option<&Path>) -> Result<understudy_matcher::cost::PriceOverrides> {
    let Some(p) = path else { return Ok(Default::default()) };
    let source = p.display().to_string();
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {source}"))?;
    let prices: understudy_matcher::cost::PriceOverrides = understudy_matcher::asset::from_str_strict(&text, &source)?;
    understudy_matcher::cost::Prices::new(&prices).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    Ok(prices)
}

/// What validating a directory found besides the assets themselves.
pub struct Validated {
    pub files: usize,
    pub counts: Vec<(Operation, usize)>,
    pub duplicates: Vec<(String, String)>,
}

/// Validates every asset under `dir` one at a time (each is keyed and compiled, then dropped, so a huge
/// directory is never held compiled), and hands each distinct one to `keep` with its key and `file#index`
/// label, in file order. Identical duplicates are skipped and reported; conflicting ones are errors. All
/// problems are reported, not just the first. What `understudy bundle` and `understudy publish` share.
pub fn validate(
    dir: &Path,
    norm: &NormalizationConfig,
    mut keep: impl FnMut(String, String, Asset) -> Result<()>,
) -> Result<Validated> {
    let normalizer = Normalizer::compile(norm)?;
    let files = asset_files(dir)?;
    let mut seen: HashMap<String, Checked> = HashMap::new();
    let mut counts: BTreeMap<Operation, usize> = BTreeMap::new();
    let mut duplicates = Vec::new();
    let mut errors = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(dir).unwrap_or(f).display().to_string();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{rel}: {e}"));
                continue;
            }
        };
        let parsed = match parse_asset_file(&text, &rel) {
            Ok(p) => p,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        for (label, asset) in parsed {
            let checked = match understudy_matcher::store::check(&normalizer, &label, &asset) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            match seen.get(&checked.key) {
                Some(prev) if prev.same_answers(&checked) => duplicates.push((prev.label.clone(), checked.label)),
                Some(prev) => errors.push(
                    understudy_matcher::ConfigError::Conflict {
                        key: checked.key.clone(),
                        first: prev.label.clone(),
                        second: checked.label,
                    }
                    .to_string(),
                ),
                None => {
                    *counts.entry(checked.operation).or_default() += 1;
                    if errors.is_empty() {
                        keep(checked.key.clone(), label, asset)?;
                    }
                    seen.insert(checked.key.clone(), checked);
                }
            }
        }
    }
    if !errors.is_empty() {
        bail!("{} problem(s) in {}:\n  {}", errors.len(), dir.display(), errors.join("\n  "));
    }
    Ok(Validated { files: files.len(), counts: counts.into_iter().collect(), duplicates })
}

/// Validates every asset under `dir` and bundles them. All problems are reported, not just the first.
pub fn build(dir: &Path, norm: &NormalizationConfig) -> Result<Built> {
    let mut assets = Vec::new();
    let v = validate(dir, norm, |key, source, asset| {
        assets.push(BundledAsset { key, source, asset });
        Ok(())
    })?;
    Ok(Built { bundle: Bundle::sealed(assets), files: v.files, counts: v.counts, duplicates: v.duplicates })
}

/// A human summary for stderr.
pub fn report(b: &Built) -> String {
    summary(b.bundle.assets.len(), b.files, &b.counts, &b.duplicates)
}

/// A human summary of `count` assets validated from `files` files.
pub fn summary(count: usize, files: usize, counts: &[(Operation, usize)], duplicates: &[(String, String)]) -> String {
    let mut s = format!("{count} assets from {files} files");
    if !counts.is_empty() {
        let parts: Vec<String> = counts.iter().map(|(op, n)| format!("{op}: {n}")).collect();
        s.push_str(&format!(" ({})", parts.join(", ")));
    }
    for (kept, dup) in duplicates {
        s.push_str(&format!("\nduplicate: {dup} is identical to {kept}; kept {kept}"));
    }
    s
}
