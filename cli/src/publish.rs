//! `understudy publish DIR --to OUT`: a remote, content-addressed asset store as a static layout that any
//! HTTP server or object-store bucket serves (docs/store.md), and reading a published store's manifest back
//! (`understudy up --store URL`, `understudy plugin-config --store URL`).
//!
//! The assets are validated exactly as `understudy bundle` validates them, one at a time, so a million assets
//! never sit compiled in memory: each distinct asset's entry is spooled to disk with its leaf hash kept, then
//! the Merkle tree over the sorted keys is built and every entry file is written with its proof. The manifest
//! is written last, by rename: a layout with a manifest is complete.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use understudy_matcher::canonical::to_canonical;
use understudy_matcher::store::remote::{
    content_hash, entry_file, entry_path, leaf_hash, MerkleTree, StoreConfig, StoreManifest, MANIFEST_FILE,
    STORE_FORMAT,
};
use understudy_matcher::{BundledAsset, NormalizationConfig};

use crate::envoy::Upstream;

#[derive(Args)]
pub struct PublishArgs {
    /// Assets directory (every *.json below it, recursively).
    dir: PathBuf,
    /// Output directory for the layout (created; an existing one must hold a store layout, whose entries are
    /// replaced).
    #[arg(long)]
    to: PathBuf,
    /// Normalization settings (JSON: ignore_fields, scrubbers).
    #[arg(long)]
    normalization: Option<PathBuf>,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PublishArgs) -> Result<()> {
    let started = Instant::now();
    let norm = crate::bundle::load_normalization(a.normalization.as_deref())?;
    let (manifest, report) = publish(&a.dir, &a.to, &norm)?;
    eprintln!("{report}");
    if a.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    println!("published {} entries to {} in {:.1} s", manifest.count, a.to.display(), started.elapsed().as_secs_f64());
    println!("content hash  {}", manifest.sha256);
    println!(
        "Serve {} with any static HTTP server or bucket, then: understudy up --store http://HOST[:PORT]/PREFIX \
         (or put {{\"store\": {{\"cluster\": ..., \"sha256\": \"{}\"}}}} in your plugin configuration; docs/store.md)",
        a.to.display(),
        manifest.sha256
    );
    Ok(())
}

/// Validates `dir` and writes its layout into `out`. Returns the manifest and the bundler's report.
pub fn publish(dir: &Path, out: &Path, norm: &NormalizationConfig) -> Result<(StoreManifest, String)> {
    prepare(out)?;
    let spool = out.join(format!(".understudy-publish-{}", std::process::id()));
    let result = write_layout(dir, out, &spool, norm);
    let _ = std::fs::remove_file(&spool);
    result
}

/// `out` must be new, empty, or a store layout already (never someone's other files).
fn prepare(out: &Path) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            bail!("{} exists and is not a directory", out.display());
        }
        let empty = std::fs::read_dir(out)?.next().is_none();
        if !empty && !out.join(MANIFEST_FILE).is_file() {
            bail!(
                "{} is not empty and holds no {MANIFEST_FILE}: publish into a new or empty directory, or over a \
                 store published before",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))
}

fn write_layout(dir: &Path, out: &Path, spool: &Path, norm: &NormalizationConfig) -> Result<(StoreManifest, String)> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    // Pass 1: validate; append each distinct entry's canonical text to one spool file, keep its key, leaf
    // hash and place (a file per entry would cost a million creates and unlinks more).
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(spool)
        .with_context(|| format!("cannot write {}", spool.display()))?;
    let mut writer = std::io::BufWriter::new(&mut file);
    let mut entries: Vec<(String, [u8; 32], u64, usize)> = Vec::new();
    let mut offset = 0u64;
    let validated = crate::bundle::validate(dir, norm, |key, source, asset| {
        let entry = BundledAsset { key, source, asset };
        let text = to_canonical(&serde_json::to_value(&entry)?);
        writer.write_all(text.as_bytes()).context("writing the spool")?;
        entries.push((entry.key, leaf_hash(text.as_bytes()), offset, text.len()));
        offset += text.len() as u64;
        Ok(())
    })?;
    writer.flush().context("writing the spool")?;
    drop(writer);
    // Pass 2: the tree over the sorted keys, then every entry file with its proof.
    entries.sort();
    let count = entries.len();
    let tree = MerkleTree::new(entries.iter().map(|e| e.1).collect());
    let sha256 = content_hash(norm, count as u64, &tree.root());
    let mut made = HashSet::new();
    for (index, (key, _, at, len)) in entries.iter().enumerate() {
        let mut text = vec![0; *len];
        file.read_exact_at(&mut text, *at).context("reading the spooled entries back")?;
        let text = String::from_utf8(text).context("reading the spooled entries back")?;
        let path = out.join(entry_path(key));
        if let Some(parent) = path.parent().filter(|p| made.insert(p.to_path_buf())) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let bytes = entry_file(&text, index, &tree, count);
        // A fresh file can be written in place (the manifest, written last, says the layout is complete); an
        // existing one is replaced by rename, so a server never serves half of it.
        if path.exists() {
            write_atomic(&path, bytes.as_bytes())?;
        } else {
            std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    remove_stale_entries(out, &entries.iter().map(|e| e.0.as_str()).collect())?;
    let manifest = StoreManifest {
        format: STORE_FORMAT.into(),
        sha256,
        root: tree.root().iter().map(|b| format!("{b:02x}")).collect(),
        count: count as u64,
        normalization: norm.clone(),
        operations: validated.counts.iter().map(|(op, n)| (op.name().to_string(), *n as u64)).collect(),
        published_by: format!("understudy {}", env!("CARGO_PKG_VERSION")),
    };
    write_atomic(&out.join(MANIFEST_FILE), format!("{}\n", serde_json::to_string_pretty(&manifest)?).as_bytes())?;
    let v = validated;
    Ok((manifest, crate::bundle::summary(count, v.files, &v.counts, &v.duplicates)))
}

/// Entry files of an earlier publish whose keys are gone: they would fail verification against the new
/// content hash (a store error) instead of answering 404 (a miss).
fn remove_stale_entries(out: &Path, keep: &HashSet<&str>) -> Result<()> {
    for shard in std::fs::read_dir(out)? {
        let shard = shard?.path();
        let name = shard.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if !shard.is_dir() || name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        for f in std::fs::read_dir(&shard)? {
            let f = f?.path();
            let Some(key) = f.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if key.len() == 64 && !keep.contains(key) {
                std::fs::remove_file(&f).with_context(|| format!("cannot remove {}", f.display()))?;
            }
        }
    }
    Ok(())
}

/// Writes a file by rename, so a server never serves half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))
}

/// Where a published store is served: `http(s)://host[:port][/prefix]`.
pub struct StoreLocation {
    pub url: String,
    pub upstream: Upstream,
}

impl StoreLocation {
    pub fn parse(url: &str) -> Result<Self> {
        let upstream = Upstream::parse(url).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
        Ok(StoreLocation { url: url.trim_end_matches('/').to_string(), upstream })
    }

    /// The `:authority` of fetches: the host, with the port when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let u = &self.upstream;
        let default = if u.tls { 443 } else { 80 };
        let host = if u.host.contains(':') { format!("[{}]", u.host) } else { u.host.clone() };
        if u.port == default {
            host
        } else {
            format!("{host}:{}", u.port)
        }
    }

    /// Reads the manifest over HTTP (a store must be served before a configuration points at it).
    pub fn manifest(&self) -> Result<StoreManifest> {
        let url = format!("{}/{MANIFEST_FILE}", self.url);
        let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().new_agent();
        let mut resp = agent.get(&url).call().with_context(|| format!("cannot read the store's manifest at {url}"))?;
        let mut text = String::new();
        resp.body_mut().as_reader().take(1 << 20).read_to_string(&mut text)?;
        parse_manifest(&text, &url)
    }

    /// The plugin configuration's `store` section for this location through Envoy cluster `cluster`.
    pub fn section(&self, cluster: &str, manifest: &StoreManifest, tuning: &StoreTuning) -> StoreConfig {
        StoreConfig {
            cluster: cluster.to_string(),
            authority: self.authority(),
            prefix: self.upstream.prefix.clone(),
            sha256: manifest.sha256.clone(),
            timeout_ms: tuning.timeout_ms,
            cache_entries: tuning.cache_entries,
            cache_bytes: tuning.cache_bytes,
        }
    }
}

/// The store's bounds a command line may set.
#[derive(Args, Clone)]
pub struct StoreTuning {
    /// How long the filter waits for the store per fetch, in milliseconds.
    #[arg(long = "store-timeout-ms", default_value_t = understudy_matcher::limits::STORE_TIMEOUT_MS)]
    pub timeout_ms: u64,
    /// Most store entries each Envoy worker caches.
    #[arg(long = "store-cache-entries", default_value_t = understudy_matcher::limits::STORE_CACHE_ENTRIES)]
    pub cache_entries: usize,
    /// Most bytes of store entries each Envoy worker caches.
    #[arg(long = "store-cache-bytes", default_value_t = understudy_matcher::limits::STORE_CACHE_BYTES)]
    pub cache_bytes: usize,
}

/// A manifest, strictly (an unknown format is refused).
pub fn parse_manifest(text: &str, source: &str) -> Result<StoreManifest> {
    let m: StoreManifest = understudy_matcher::asset::from_str_strict(text, source)?;
    if m.format != STORE_FORMAT {
        bail!("{source}: format {:?} is not {STORE_FORMAT:?}: publish the store again with this version", m.format);
    }
    Ok(m)
}

/// The per-operation counts of a manifest, for messages.
pub fn describe(m: &StoreManifest) -> String {
    let ops: BTreeMap<&String, &u64> = m.operations.iter().collect();
    let parts: Vec<String> = ops.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{} assets ({}), content hash {}", m.count, parts.join(", "), m.sha256.get(..16).unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use understudy_matcher::{classify, Decision, Runtime, StoreAnswer};

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("understudy-publish-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_published_layout_serves_every_asset_through_the_runtime() {
        let examples = crate::launcher::project_root().join("examples/assets");
        let out = temp("examples");
        let norm = NormalizationConfig::default();
        let (m, _) = publish(&examples, &out, &norm).unwrap();
        let built = crate::bundle::build(&examples, &norm).unwrap();
        assert_eq!(m.count as usize, built.bundle.assets.len());
        assert_eq!(parse_manifest(&std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap(), "m").unwrap(), m);
        let cfg = serde_json::json!({"store": {"cluster": "s", "sha256": m.sha256}}).to_string();
        let rt = Runtime::from_json_sealed(&cfg).unwrap();
        for b in &built.bundle.assets {
            let route = classify(&b.asset.request.method, &b.asset.request.path).unwrap();
            let body = serde_json::to_vec(&b.asset.request.body).unwrap();
            let Decision::Fetch(f) = rt.decide_at(&route, &body, 0) else { panic!("{}: no fetch", b.source) };
            assert_eq!(f.path, format!("/{}", entry_path(&b.key)));
            let text = std::fs::read(out.join(entry_path(&b.key))).unwrap();
            let fetched = rt.take_fetched(&f.key, StoreAnswer::Status(200, &text));
            assert_eq!(fetched.error(), None, "{}", b.source);
            let Decision::Respond(r) = rt.decide_fetched(&route, &body, 0, &fetched) else { panic!() };
            assert_eq!(r.headers.iter().find(|(k, _)| k == "x-understudy").unwrap().1, "hit", "{}", b.source);
        }
        // Publishing a subset over it removes the entries that are gone.
        let subset = temp("subset");
        std::fs::create_dir_all(&subset).unwrap();
        std::fs::copy(examples.join("openai/chat-capital.json"), subset.join("a.json")).unwrap();
        let (m2, _) = publish(&subset, &out, &norm).unwrap();
        assert_eq!(m2.count, 1);
        let files = walkdir::WalkDir::new(&out).into_iter().filter_map(|e| e.ok()).filter(|e| e.file_type().is_file());
        assert_eq!(files.count(), 2, "the manifest and one entry");
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_dir_all(&subset).unwrap();
    }

    #[test]
    fn publish_refuses_a_directory_that_is_not_a_store_and_reports_bad_assets() {
        let out = temp("busy");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("precious.txt"), "x").unwrap();
        let examples = crate::launcher::project_root().join("examples/assets");
        let e = publish(&examples, &out, &NormalizationConfig::default()).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        let bad = temp("bad");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("x.json"), r#"{"request": {"path": "/v1/chat/completions", "body": {}}, "bogus": 1}"#)
            .unwrap();
        let fresh = temp("fresh");
        let e = publish(&bad, &fresh, &NormalizationConfig::default()).unwrap_err().to_string();
        assert!(e.contains("x.json") && e.contains("bogus"), "{e}");
        assert!(!fresh.join(MANIFEST_FILE).exists());
        for d in [out, bad, fresh] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn store_urls_give_the_authority_and_prefix_of_fetches() {
        let s = StoreLocation::parse("http://127.0.0.1:8080/stores/ci/").unwrap();
        assert_eq!((s.authority(), s.upstream.prefix.as_str()), ("127.0.0.1:8080".to_string(), "/stores/ci"));
        assert_eq!(StoreLocation::parse("https://bucket.example").unwrap().authority(), "bucket.example");
        assert!(StoreLocation::parse("s3://bucket").is_err());
    }
}
