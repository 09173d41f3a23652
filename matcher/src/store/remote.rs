//! A remote, content-addressed asset store: what `understudy publish` writes, what the filter fetches by key
//! when its own index has no asset for a request, and the per-VM cache of what it fetched.
//!
//! Layout (served by any static HTTP server or object-store bucket):
//!
//! ```text
//! OUT/understudy-store.json     the manifest: format, content hash, count, normalization, operations
//! OUT/<k0k1>/<key>.json         one entry per key: {format, count, index, proof, entry}
//! ```
//!
//! `entry` is the asset as a bundle holds it (`{"key", "source", "asset"}`, canonical JSON). The entries,
//! sorted by key, are the leaves of a Merkle tree; the store's **content hash** binds its root to the
//! normalization settings and the entry count. The plugin configuration pins that hash, and each entry file
//! carries its leaf's index and the sibling hashes up to the root, so the filter verifies every fetched entry
//! on its own (about 20 SHA-256 blocks for a million assets) against the pinned hash: an entry edited,
//! swapped, taken from another publish or built with other normalization settings is refused, which a key
//! check alone would not catch for an edited answer. Then the key is recomputed from the entry's request as
//! for a bundle. Absence is not proven: a store that answers 404 turns a hit into a miss, never into a wrong
//! answer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{build_raw, Compiled};
use crate::asset::{BundledOf, RawAsset};
use crate::error::ConfigError;
use crate::key::{hex, NormalizationConfig, Normalizer};
use crate::limits::{
    MAX_STORE_TIMEOUT_MS, REQUEST_BUDGET, STORE_CACHE_BYTES, STORE_CACHE_ENTRIES, STORE_ENTRY_BYTES, STORE_ENTRY_COST,
    STORE_ENTRY_OVERHEAD, STORE_TIMEOUT_MS,
};

/// Version tag of the manifest and of the content hash.
pub const STORE_FORMAT: &str = "understudy.store/v1";
/// Version tag of an entry file.
pub const ENTRY_FORMAT: &str = "understudy.store-entry/v1";
/// The manifest's file name, at the root of the layout.
pub const MANIFEST_FILE: &str = "understudy-store.json";
/// Longest Merkle proof an entry may carry (a tree of 2^64 leaves).
const MAX_PROOF: usize = 64;

/// Where a key's entry lives, relative to the layout's root: `<first two hex digits>/<key>.json` (256
/// directories, so no directory of a million-asset store holds more than a few thousand files).
pub fn entry_path(key: &str) -> String {
    format!("{}/{key}.json", key.get(..2).unwrap_or("00"))
}

/// A 32-byte SHA-256 digest.
pub type Digest32 = [u8; 32];

/// The leaf of one entry: SHA-256 of `0x00` and the entry's text exactly as the file holds it.
pub fn leaf_hash(entry_text: &[u8]) -> Digest32 {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry_text);
    h.finalize().into()
}

/// An inner node: SHA-256 of `0x01`, the left and the right child (RFC 6962's domain separation, so a leaf
/// can never pass for a node).
fn node_hash(left: &Digest32, right: &Digest32) -> Digest32 {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The Merkle tree over a store's leaves, sorted by key: each level pairs neighbours; an odd one out at the
/// end of a level moves up unchanged.
pub struct MerkleTree {
    levels: Vec<Vec<Digest32>>,
}

impl MerkleTree {
    /// Builds every level (twice the leaves in memory: 64 MiB for a million assets).
    pub fn new(leaves: Vec<Digest32>) -> Self {
        let mut levels = vec![leaves];
        while let Some(last) = levels.last().filter(|l| l.len() > 1) {
            let next = last
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [one] => *one,
                    _ => [0; 32],
                })
                .collect();
            levels.push(next);
        }
        MerkleTree { levels }
    }

    /// The root (the SHA-256 of nothing for an empty store).
    pub fn root(&self) -> Digest32 {
        match self.levels.last().and_then(|l| l.first()) {
            Some(r) => *r,
            None => Sha256::digest([]).into(),
        }
    }

    /// The sibling hashes from leaf `index` up to the root (levels where it is the odd one out add none).
    pub fn proof(&self, mut index: usize) -> Vec<Digest32> {
        let mut out = Vec::new();
        for level in self.levels.iter().take(self.levels.len().saturating_sub(1)) {
            let sibling = if index % 2 == 1 { index.checked_sub(1) } else { Some(index + 1) };
            if let Some(h) = sibling.and_then(|s| level.get(s)) {
                out.push(*h);
            }
            index /= 2;
        }
        out
    }
}

/// The root a leaf and its proof lead to, for a tree of `count` leaves; `None` when the proof has the wrong
/// length for that position.
pub fn root_from_proof(leaf: Digest32, mut index: u64, mut count: u64, proof: &[Digest32]) -> Option<Digest32> {
    if index >= count {
        return None;
    }
    let mut siblings = proof.iter();
    let mut acc = leaf;
    while count > 1 {
        if index % 2 == 1 {
            acc = node_hash(siblings.next()?, &acc);
        } else if index + 1 < count {
            acc = node_hash(&acc, siblings.next()?);
        }
        index /= 2;
        count = count.div_ceil(2);
    }
    siblings.next().is_none().then_some(acc)
}

/// The store's content hash (hex): SHA-256 over the format tag, the canonical JSON of the normalization
/// settings, the entry count and the Merkle root. What the plugin configuration pins.
pub fn content_hash(normalization: &NormalizationConfig, count: u64, root: &Digest32) -> String {
    content_hash_canonical(&canonical_normalization(normalization), count, root)
}

fn canonical_normalization(n: &NormalizationConfig) -> String {
    crate::canonical::to_canonical(&serde_json::to_value(n).unwrap_or(serde_json::Value::Null))
}

fn content_hash_canonical(normalization: &str, count: u64, root: &Digest32) -> String {
    let mut h = Sha256::new();
    h.update(format!("{STORE_FORMAT}\n{normalization}\n{count}\n{}", hex(root)).as_bytes());
    hex(&h.finalize())
}

/// `understudy-store.json`: what a layout holds. Informational except `sha256`, which the plugin
/// configuration pins (`understudy plugin-config --store` and `understudy up --store` copy it from here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreManifest {
    /// Always [`STORE_FORMAT`].
    pub format: String,
    /// The content hash ([`content_hash`]).
    pub sha256: String,
    /// The Merkle root over the entries (hex).
    pub root: String,
    /// How many entries (distinct keys).
    pub count: u64,
    /// The normalization settings every key was computed with.
    pub normalization: NormalizationConfig,
    /// Entries per operation.
    pub operations: std::collections::BTreeMap<String, u64>,
    /// The `understudy` version that published it.
    pub published_by: String,
}

/// One entry file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryFileOf<E> {
    /// Always [`ENTRY_FORMAT`].
    pub format: String,
    /// Entries in the store (the tree's shape).
    pub count: u64,
    /// This entry's position among them, sorted by key.
    pub index: u64,
    /// Sibling hashes (hex) from the leaf up to the root.
    pub proof: Vec<String>,
    /// The bundled asset (`{"key", "source", "asset"}`), canonical JSON.
    pub entry: E,
}

/// The plugin configuration's `store` section: where the filter fetches what its own index lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The Envoy cluster serving the layout (`dispatch_http_call` goes through it).
    pub cluster: String,
    /// The `:authority` (Host) of the fetches [default: the cluster name].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
    /// The layout's path prefix on that server, e.g. `/stores/ci` (empty: the root).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// The store's content hash (`sha256` of its manifest): every fetched entry must verify against it.
    pub sha256: String,
    /// How long to wait for one fetch, in milliseconds (at most `MAX_STORE_TIMEOUT_MS`).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Most entries cached per VM (at most `STORE_CACHE_ENTRIES`, the default).
    #[serde(default = "default_entries")]
    pub cache_entries: usize,
    /// Most bytes cached per VM (at most `STORE_CACHE_BYTES`, the default).
    #[serde(default = "default_bytes")]
    pub cache_bytes: usize,
}

fn default_timeout() -> u64 {
    STORE_TIMEOUT_MS
}
fn default_entries() -> usize {
    STORE_CACHE_ENTRIES
}
fn default_bytes() -> usize {
    STORE_CACHE_BYTES
}

impl StoreConfig {
    /// Checks every field; errors name it (`store.cache_bytes`, ...).
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |f: &str, why: String| Err(ConfigError::invalid(format!("store.{f}"), why));
        if self.cluster.trim().is_empty() {
            return bad("cluster", "must name the Envoy cluster that serves the store".into());
        }
        if !self.prefix.is_empty() && (!self.prefix.starts_with('/') || self.prefix.ends_with('/')) {
            return bad("prefix", format!("{:?}: must start with '/' and not end with one", self.prefix));
        }
        if self.prefix.contains(['?', '#']) || self.prefix.contains("/../") || self.prefix.ends_with("/..") {
            return bad("prefix", format!("{:?}: a plain path (no query, fragment or '..')", self.prefix));
        }
        if !is_hex64(&self.sha256) {
            return bad("sha256", format!("{:?}: 64 lower-case hex digits (the manifest's sha256)", self.sha256));
        }
        if !(1..=MAX_STORE_TIMEOUT_MS).contains(&self.timeout_ms) {
            return bad("timeout_ms", format!("{} is not within 1..={MAX_STORE_TIMEOUT_MS}", self.timeout_ms));
        }
        if !(1..=STORE_CACHE_ENTRIES).contains(&self.cache_entries) {
            return bad("cache_entries", format!("{} is not within 1..={STORE_CACHE_ENTRIES}", self.cache_entries));
        }
        if !(1..=STORE_CACHE_BYTES).contains(&self.cache_bytes) {
            return bad("cache_bytes", format!("{} is not within 1..={STORE_CACHE_BYTES}", self.cache_bytes));
        }
        Ok(())
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unhex32(s: &str) -> Option<Digest32> {
    if !is_hex64(s) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A GET the filter makes to the store for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The key asked for.
    pub key: String,
    /// The Envoy cluster.
    pub cluster: String,
    /// The `:authority` header.
    pub authority: String,
    /// The `:path`: `<prefix>/<k0k1>/<key>.json`.
    pub path: String,
    /// How long Envoy may take, in milliseconds.
    pub timeout_ms: u64,
}

/// What the store answered for one fetch, as the filter saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreAnswer<'a> {
    /// An HTTP answer: its status and body (the filter never reads a body over `STORE_ENTRY_BYTES`).
    Status(u16, &'a [u8]),
    /// No answer: the cluster refused the call, the connection failed, the timeout passed, or the body was
    /// too big to read. Says why.
    Failed(&'a str),
}

/// The verified outcome of one fetch, for [`crate::Runtime::decide_fetched`].
#[derive(Debug, Clone)]
pub struct Fetched {
    pub(crate) kind: FetchedKind,
}

#[derive(Debug, Clone)]
pub(crate) enum FetchedKind {
    Entry(Rc<Compiled>),
    NotFound,
    Failed(String),
}

impl Fetched {
    /// Why the store could not answer (a store error, counted by the filter), if it could not.
    pub fn error(&self) -> Option<&str> {
        match &self.kind {
            FetchedKind::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The store had no entry for the key.
    pub fn not_found(&self) -> bool {
        matches!(self.kind, FetchedKind::NotFound)
    }
}

/// A cached key.
enum Slot {
    /// The entry, and what it is counted as.
    Present(Rc<Compiled>, usize),
    /// The store answered 404 (remembered: a published store never changes under its content hash).
    Absent(usize),
}

impl Slot {
    fn cost(&self) -> usize {
        match self {
            Slot::Present(_, c) | Slot::Absent(c) => *c,
        }
    }
}

/// What the cache knows of a key.
pub(crate) enum Lookup {
    Present(Rc<Compiled>),
    Absent,
    Unknown,
}

/// The store a runtime fetches from, and its cache (one per VM, bounded in entries and bytes, LRU).
pub(crate) struct Remote {
    pub(crate) config: StoreConfig,
    /// Canonical JSON of the configuration's normalization settings (part of the content hash).
    normalization: String,
    cache: RefCell<lru::LruCache<Box<str>, Slot>>,
    bytes: Cell<usize>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("config", &self.config).field("bytes", &self.bytes.get()).finish()
    }
}

/// What a key that the store answered 404 for costs the cache.
const ABSENT_COST: usize = 128;

impl Remote {
    /// A checked `store` section with the configuration's normalization settings.
    pub(crate) fn new(config: StoreConfig, normalization: &NormalizationConfig) -> Result<Self, ConfigError> {
        config.check()?;
        Ok(Remote {
            config,
            normalization: canonical_normalization(normalization),
            cache: RefCell::new(lru::LruCache::unbounded()),
            bytes: Cell::new(0),
        })
    }

    /// The short form of the content hash, for messages.
    pub(crate) fn short_hash(&self) -> &str {
        self.config.sha256.get(..12).unwrap_or(&self.config.sha256)
    }

    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        match self.cache.borrow_mut().get(key) {
            Some(Slot::Present(c, _)) => Lookup::Present(c.clone()),
            Some(Slot::Absent(_)) => Lookup::Absent,
            None => Lookup::Unknown,
        }
    }

    pub(crate) fn fetch(&self, key: String) -> Fetch {
        let c = &self.config;
        let authority = if c.authority.is_empty() { c.cluster.clone() } else { c.authority.clone() };
        Fetch {
            path: format!("{}/{}", c.prefix, entry_path(&key)),
            key,
            cluster: c.cluster.clone(),
            authority,
            timeout_ms: c.timeout_ms,
        }
    }

    /// Turns the store's answer for `key` into a verified entry (cached), a remembered absence, or an error.
    pub(crate) fn take(&self, normalizer: &Normalizer, key: &str, answer: StoreAnswer<'_>) -> Fetched {
        let kind = match answer {
            StoreAnswer::Status(200, body) => match self.verify(normalizer, key, body) {
                Ok(entry) => {
                    let cost = body.len().saturating_mul(STORE_ENTRY_COST).saturating_add(STORE_ENTRY_OVERHEAD);
                    self.put(key, Slot::Present(entry.clone(), cost));
                    FetchedKind::Entry(entry)
                }
                Err(e) => FetchedKind::Failed(format!("its entry for key {key} was refused: {e}")),
            },
            StoreAnswer::Status(404, _) => {
                self.put(key, Slot::Absent(ABSENT_COST + key.len()));
                FetchedKind::NotFound
            }
            StoreAnswer::Status(status, _) => FetchedKind::Failed(format!("it answered HTTP {status} for key {key}")),
            StoreAnswer::Failed(why) => FetchedKind::Failed(format!("no answer for key {key}: {why}")),
        };
        Fetched { kind }
    }

    /// Caches a slot, evicting the least recently used ones past the bounds. A slot bigger than the whole
    /// cache is served once and not kept.
    fn put(&self, key: &str, slot: Slot) {
        let cost = slot.cost();
        if cost > self.config.cache_bytes {
            return;
        }
        let mut cache = self.cache.borrow_mut();
        let mut bytes = self.bytes.get().saturating_add(cost);
        if let Some(old) = cache.put(key.into(), slot) {
            bytes = bytes.saturating_sub(old.cost());
        }
        while cache.len() > self.config.cache_entries || bytes > self.config.cache_bytes {
            match cache.pop_lru() {
                Some((_, old)) => bytes = bytes.saturating_sub(old.cost()),
                None => break,
            }
        }
        self.bytes.set(bytes);
    }

    /// Verifies an entry file against the pinned content hash, then compiles it (its key recomputed).
    fn verify(&self, normalizer: &Normalizer, key: &str, body: &[u8]) -> Result<Rc<Compiled>, String> {
        if body.len() > STORE_ENTRY_BYTES {
            return Err(format!("{} bytes is over STORE_ENTRY_BYTES ({STORE_ENTRY_BYTES})", body.len()));
        }
        let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
        let file: EntryFileOf<&RawValue> =
            serde_json::from_str(text).map_err(|e| format!("not a store entry file: {e}"))?;
        if file.format != ENTRY_FORMAT {
            return Err(format!("format {:?} is not {ENTRY_FORMAT:?}", file.format));
        }
        if file.proof.len() > MAX_PROOF {
            return Err(format!("a proof of {} hashes is too long", file.proof.len()));
        }
        let proof: Option<Vec<Digest32>> = file.proof.iter().map(|h| unhex32(h)).collect();
        let proof = proof.ok_or("its proof holds something other than 64-hex-digit hashes")?;
        let root = root_from_proof(leaf_hash(file.entry.get().as_bytes()), file.index, file.count, &proof)
            .ok_or("its proof does not fit its index and count")?;
        let computed = content_hash_canonical(&self.normalization, file.count, &root);
        if computed != self.config.sha256 {
            return Err(format!(
                "it does not verify against the store's content hash {} (it leads to {}): the entry was changed \
                 after `understudy publish`, comes from another publish, or the store was published with other \
                 normalization settings than this configuration's",
                self.config.sha256, computed
            ));
        }
        // Verified: what `understudy publish` validated. Parsing it (its request becomes a tree, normalized and
        // keyed) is priced like a request body first, so it fits the budget a request has.
        let processing = crate::budget::Processing { plain: normalizer.is_plain(), synthesizes: false };
        if let Err((cost, _)) = crate::budget::check_request(file.entry.get().as_bytes(), processing, REQUEST_BUDGET) {
            return Err(format!("reading it would cost {cost} bytes, over REQUEST_BUDGET ({REQUEST_BUDGET})"));
        }
        let bundled: BundledOf<RawAsset<'_>> =
            serde_json::from_str(file.entry.get()).map_err(|e| format!("entry: {e}"))?;
        if bundled.key != key {
            return Err(format!("the file holds the entry of key {}", bundled.key));
        }
        let label = format!("store entry {} from {}", entry_path(key), bundled.source);
        let compiled = build_raw(normalizer, &label, bundled.asset, key).map_err(|e| e.to_string())?;
        Ok(Rc::new(compiled))
    }

    /// Cached keys and the bytes they are counted as (tests, stats).
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        (self.cache.borrow().len(), self.bytes.get())
    }
}

/// What an entry file for `entry` (the bundled asset's canonical JSON) holds at `index` of `tree`.
pub fn entry_file(entry_text: &str, index: usize, tree: &MerkleTree, count: usize) -> String {
    let proof: Vec<String> = tree.proof(index).iter().map(|h| hex(h)).collect();
    // The entry is spliced in as it is: its leaf hash is over exactly these bytes.
    let head = serde_json::json!({"format": ENTRY_FORMAT, "count": count, "index": index, "proof": proof});
    let head = crate::canonical::to_canonical(&head);
    let head = head.strip_suffix('}').unwrap_or(&head);
    format!("{head},\"entry\":{entry_text}}}")
}

/// A whole store in memory: its content hash and every entry file by key (the CLI's `publish` streams the
/// same files to disk; tests serve these).
pub fn layout(assets: &[crate::BundledAsset], normalization: &NormalizationConfig) -> (String, Vec<(String, String)>) {
    let mut entries: Vec<(String, String)> = assets
        .iter()
        .map(|b| (b.key.clone(), crate::canonical::to_canonical(&serde_json::to_value(b).unwrap_or_default())))
        .collect();
    entries.sort();
    entries.dedup_by(|a, b| a.0 == b.0);
    let tree = MerkleTree::new(entries.iter().map(|(_, t)| leaf_hash(t.as_bytes())).collect());
    let sha = content_hash(normalization, entries.len() as u64, &tree.root());
    let n = entries.len();
    let files = entries.iter().enumerate().map(|(i, (k, t))| (k.clone(), entry_file(t, i, &tree, n))).collect();
    (sha, files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Digest32> {
        (0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect()
    }

    #[test]
    fn every_leaf_of_every_tree_shape_proves_the_root_and_nothing_else_does() {
        for n in 1..=33usize {
            let tree = MerkleTree::new(leaves(n));
            let root = tree.root();
            for i in 0..n {
                let proof = tree.proof(i);
                let leaf = leaf_hash(format!("entry {i}").as_bytes());
                assert_eq!(root_from_proof(leaf, i as u64, n as u64, &proof), Some(root), "n={n} i={i}");
                // Another leaf, another index, another count or a cut proof: not the root.
                let other = leaf_hash(b"forged");
                assert_ne!(root_from_proof(other, i as u64, n as u64, &proof), Some(root));
                if n > 1 {
                    let j = (i + 1) % n;
                    assert_ne!(root_from_proof(leaf, j as u64, n as u64, &proof), Some(root), "n={n} i={i} j={j}");
                    assert_ne!(root_from_proof(leaf, i as u64, n as u64, &proof[1..]), Some(root));
                }
                assert_eq!(root_from_proof(leaf, n as u64, n as u64, &proof), None);
            }
        }
        assert_eq!(MerkleTree::new(Vec::new()).root(), <[u8; 32]>::from(Sha256::digest([])));
    }

    #[test]
    fn the_content_hash_binds_normalization_and_count() {
        let root = MerkleTree::new(leaves(3)).root();
        let plain = NormalizationConfig::default();
        let other = NormalizationConfig { ignore_fields: vec!["/temperature".into()], scrubbers: Vec::new() };
        assert_ne!(content_hash(&plain, 3, &root), content_hash(&other, 3, &root));
        assert_ne!(content_hash(&plain, 3, &root), content_hash(&plain, 4, &root));
        assert_eq!(content_hash(&plain, 3, &root).len(), 64);
    }

    #[test]
    fn store_sections_are_checked_field_by_field() {
        let ok = StoreConfig {
            cluster: "store".into(),
            authority: String::new(),
            prefix: "/a/b".into(),
            sha256: "ab".repeat(32),
            timeout_ms: 500,
            cache_entries: 2,
            cache_bytes: 1 << 20,
        };
        ok.check().unwrap();
        type Edit = fn(&mut StoreConfig);
        let cases: [(&str, Edit); 6] = [
            ("store.cluster", |c| c.cluster = " ".into()),
            ("store.prefix", |c| c.prefix = "a/b".into()),
            ("store.prefix", |c| c.prefix = "/a/../b".into()),
            ("store.sha256", |c| c.sha256 = "AB".repeat(32)),
            ("store.timeout_ms", |c| c.timeout_ms = MAX_STORE_TIMEOUT_MS + 1),
            ("store.cache_bytes", |c| c.cache_bytes = STORE_CACHE_BYTES + 1),
        ];
        for (field, edit) in cases {
            let mut c = ok.clone();
            edit(&mut c);
            let e = c.check().unwrap_err().to_string();
            assert!(e.starts_with(field), "{e}");
        }
    }

    #[test]
    fn entry_paths_spread_keys_over_256_directories() {
        assert_eq!(entry_path(&"ab".repeat(32)), format!("ab/{}.json", "ab".repeat(32)));
    }
}
