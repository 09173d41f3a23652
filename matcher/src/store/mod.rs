//! The asset store: assets compiled and indexed by key and by canonical request text, duplicate and conflict
//! detection, lookup, and the closest asset for a miss's explanation. Shared by the bundler and the filter.

pub(crate) mod answer;
pub mod remote;

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::Value;

use crate::asset::{validate, AnswerList, Asset, AssetOf, Latency, RawAsset, Sequence};
use crate::dialect::{Operation, Route};
use crate::error::ConfigError;
use crate::key::{difference_count, first_difference, Normalizer};
use answer::{Answers, Response};

// KEEP_CANONICAL (crate::limits): requests up to that size are matched by their canonical text (a plain
// hash-map lookup, no SHA-256: SHA-256 is ~8x slower in a wasm VM than natively); bigger ones by key.
pub(crate) use crate::limits::KEEP_CANONICAL;
use crate::limits::{MISS_DIFF_CAP, MISS_PARSE, MISS_PATH_CHARS, MISS_PREFIX_BYTES, MISS_SCAN, MISS_SHORTLIST};

/// A compiled asset ready to be served.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) label: String,
    pub(crate) key: String,
    /// The route it was recorded on (its operation; its API's error shape for `error` answers).
    pub(crate) route: Route,
    /// Canonical JSON of the normalized request (the hit index's key, and parsed for miss diagnostics);
    /// empty if huge.
    normalized: Rc<str>,
    /// The model of the recorded request ([`Route::model_of`]), for accounting.
    pub(crate) model: Option<Box<str>>,
    /// Estimated input tokens of the recorded request, for accounting answers that report no usage.
    pub(crate) input_estimate: u64,
    answers: Answers,
    pub(crate) sequence: Sequence,
    pub(crate) seed: u64,
    pub(crate) refresh: bool,
    pub(crate) latency: Option<Latency>,
    /// Calls served so far by this VM (sequence position).
    pub(crate) calls: Cell<u64>,
}

impl Compiled {
    /// Same answers as `other` (an identical duplicate, not a conflict).
    fn same_as(&self, other: &Compiled) -> bool {
        self.answers.same_as(&other.answers)
            && self.sequence == other.sequence
            && self.seed == other.seed
            && self.refresh == other.refresh
            && self.latency == other.latency
    }

    /// The compiled answers, compiling deferred ones on first use; an error says which response is bad.
    pub(crate) fn answers(&self) -> Result<&[Response], &str> {
        self.answers.get(&self.route, self.refresh)
    }
}

/// The asset that comes closest to a request no asset matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Closest {
    /// Its label (name and `file#index`).
    pub label: String,
    /// Its key.
    pub key: String,
    /// The JSON Pointer of the first difference (`/` for the whole body).
    pub at: String,
}

impl Closest {
    /// The `x-understudy-closest` header value, `<key> <label>`: the label percent-encoded outside
    /// printable ASCII, at most 256 bytes of it. Asset metadata only, never request content.
    pub fn header_value(&self) -> String {
        let label: String = self
            .label
            .bytes()
            .take(256)
            .map(|b| match b {
                b' '..=b'~' if b != b'%' => char::from(b).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("{} {label}", self.key)
    }
}

/// A set of assets indexed by key, with duplicate/conflict detection.
#[derive(Debug, Default)]
pub struct Store {
    assets: Vec<Compiled>,
    index: HashMap<String, usize>,
    /// Per operation: canonical text of the normalized request → asset (assets up to `KEEP_CANONICAL`).
    by_text: HashMap<Operation, HashMap<Rc<str>, usize>>,
    by_operation: HashMap<Operation, Vec<usize>>,
    duplicates: Vec<(String, String)>,
}

impl Store {
    /// Adds an asset; `stored_key` (from a bundle) must equal the computed key.
    /// Returns the computed key. Identical duplicates are recorded and skipped; conflicting ones are errors.
    pub fn add(
        &mut self,
        normalizer: &Normalizer,
        label: &str,
        asset: &Asset,
        stored_key: Option<&str>,
    ) -> Result<String, ConfigError> {
        self.add_owned(normalizer, label, asset.clone(), stored_key)
    }

    /// [`Store::add`] taking the asset by value (no copy of its bodies: what a big bundle load needs).
    pub fn add_owned(
        &mut self,
        normalizer: &Normalizer,
        label: &str,
        asset: Asset,
        stored_key: Option<&str>,
    ) -> Result<String, ConfigError> {
        self.insert(normalizer, label, asset, stored_key, typed_answers)
    }

    /// Adds a sealed bundle's asset with its answers deferred (see [`Answers::Deferred`]).
    pub(crate) fn add_raw(
        &mut self,
        normalizer: &Normalizer,
        label: &str,
        asset: RawAsset<'_>,
        stored_key: &str,
    ) -> Result<String, ConfigError> {
        self.insert(normalizer, label, asset, Some(stored_key), raw_answers)
    }

    /// Validates, keys and compiles an asset, then indexes it.
    fn insert<R, L: AnswerList>(
        &mut self,
        normalizer: &Normalizer,
        label: &str,
        asset: AssetOf<R, L>,
        stored_key: Option<&str>,
        answers: impl FnOnce(&Route, Option<R>, Option<L>, bool) -> Result<Answers, String>,
    ) -> Result<String, ConfigError> {
        let candidate = build(normalizer, label, asset, stored_key, answers)?;
        let key = candidate.key.clone();
        if let Some(&i) = self.index.get(&key) {
            let Some(prev) = self.assets.get(i) else { return Ok(key) };
            if prev.same_as(&candidate) {
                self.duplicates.push((prev.label.clone(), candidate.label));
                return Ok(key);
            }
            return Err(ConfigError::Conflict { key, first: prev.label.clone(), second: candidate.label });
        }
        let idx = self.assets.len();
        let operation = candidate.route.operation;
        if !candidate.normalized.is_empty() {
            self.by_text.entry(operation).or_default().insert(candidate.normalized.clone(), idx);
        }
        self.assets.push(candidate);
        self.index.insert(key.clone(), idx);
        self.by_operation.entry(operation).or_default().push(idx);
        Ok(key)
    }

    /// Room for `n` more assets.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.assets.reserve(n);
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.assets.len()
    }

    /// True when no asset is loaded.
    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }

    /// Identical duplicates skipped so far: (kept, skipped).
    pub fn duplicates(&self) -> &[(String, String)] {
        &self.duplicates
    }

    /// Asset counts per operation.
    pub fn counts(&self) -> Vec<(Operation, usize)> {
        let mut v: Vec<(Operation, usize)> = self.by_operation.iter().map(|(op, ix)| (*op, ix.len())).collect();
        v.sort();
        v
    }

    /// The asset whose normalized request has this canonical text.
    pub(crate) fn by_text(&self, op: Operation, text: &str) -> Option<(usize, &Compiled)> {
        let i = *self.by_text.get(&op)?.get(text)?;
        self.assets.get(i).map(|a| (i, a))
    }

    /// The asset with this key.
    pub(crate) fn by_key(&self, key: &str) -> Option<(usize, &Compiled)> {
        let i = *self.index.get(key)?;
        self.assets.get(i).map(|a| (i, a))
    }

    /// The asset at position `i` (as returned by the lookups).
    pub(crate) fn get(&self, i: usize) -> Option<&Compiled> {
        self.assets.get(i)
    }

    /// The same-operation asset closest to a normalized request, for a miss's explanation. Bounded work on
    /// huge stores (the limits are in [`crate::limits`] and docs/limits.md): at most `MISS_SCAN` candidates
    /// are considered, and past `MISS_PARSE` of them only the `MISS_SHORTLIST` sharing the longest start of
    /// the canonical text (at most `MISS_PREFIX_BYTES` of it) are compared in full.
    pub fn closest(&self, op: Operation, normalized: &Value) -> Option<Closest> {
        let candidates = self.by_operation.get(&op).map(Vec::as_slice).unwrap_or_default();
        let mut shortlist: Vec<&Compiled> = candidates
            .iter()
            .take(MISS_SCAN)
            .filter_map(|&i| self.assets.get(i))
            .filter(|a| !a.normalized.is_empty())
            .collect();
        if shortlist.len() > MISS_PARSE {
            // Big store: keep the candidates sharing the longest start of the canonical text (keys are sorted,
            // so that is mostly the conversation), and compare only those in full.
            let text = Normalizer::canonical_prefix(normalized, MISS_PREFIX_BYTES);
            let common = |a: &Compiled| a.normalized.bytes().zip(text.bytes()).take_while(|(x, y)| x == y).count();
            shortlist.sort_by_cached_key(|a| std::cmp::Reverse(common(a)));
            shortlist.truncate(MISS_SHORTLIST);
        }
        // The store keeps canonical text, not parsed trees (memory per VM): parse candidates here, on a miss.
        let (_, a, v) = shortlist
            .into_iter()
            .filter_map(|a| serde_json::from_str::<Value>(&a.normalized).ok().map(|v| (a, v)))
            .map(|(a, v)| (difference_count(&v, normalized, MISS_DIFF_CAP), a, v))
            .min_by_key(|(d, _, _)| *d)?;
        let mut at = first_difference(&v, normalized).filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_string());
        // A key can be as long as the body: quote the start of the pointer only.
        if let Some((cut, _)) = at.char_indices().nth(MISS_PATH_CHARS) {
            at.truncate(cut);
            at.push('…');
        }
        Some(Closest { label: a.label.clone(), key: a.key.clone(), at })
    }
}

/// One asset validated, keyed and compiled on its own (then dropped): how `understudy bundle` and
/// `understudy publish` check every asset without holding a compiled store of them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Its key.
    pub key: String,
    /// Its operation.
    pub operation: Operation,
    /// Its name and `file#index`, as messages show it.
    pub label: String,
    /// A hash of what two assets of one key must share to be identical duplicates rather than a conflict
    /// (the compiled answers, sequence, seed, refresh and latency: what [`Store::add`] compares).
    fingerprint: [u8; 32],
}

impl Checked {
    /// `other` is an identical duplicate (same key and answers), not a conflict.
    pub fn same_answers(&self, other: &Checked) -> bool {
        self.key == other.key && self.fingerprint == other.fingerprint
    }
}

/// Validates, keys and compiles `asset` (`label` is its `file#index`) exactly as [`Store::add`] does.
pub fn check(normalizer: &Normalizer, label: &str, asset: &Asset) -> Result<Checked, ConfigError> {
    let compiled = build(normalizer, label, asset.clone(), None, typed_answers)?;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for r in compiled.answers().unwrap_or_default() {
        r.fingerprint(&mut h);
    }
    h.update(
        format!("{:?}|{}|{}|{:?}", compiled.sequence, compiled.seed, compiled.refresh, compiled.latency).as_bytes(),
    );
    Ok(Checked {
        key: compiled.key,
        operation: compiled.route.operation,
        label: compiled.label,
        fingerprint: h.finalize().into(),
    })
}

/// Validates, keys and compiles one asset (without indexing it): what [`Store::insert`] indexes, and what the
/// remote store's cache holds (`remote.rs`). `stored_key`, when given, must equal the computed key.
fn build<R, L: AnswerList>(
    normalizer: &Normalizer,
    label: &str,
    asset: AssetOf<R, L>,
    stored_key: Option<&str>,
    answers: impl FnOnce(&Route, Option<R>, Option<L>, bool) -> Result<Answers, String>,
) -> Result<Compiled, ConfigError> {
    let bad = |reason: String| ConfigError::Asset { asset: label.to_string(), reason };
    let route = validate(&asset, label)?;
    let AssetOf { name, request, response, responses, sequence, seed, refresh, latency } = asset;
    let answers = answers(&route, response, responses, refresh).map_err(bad)?;
    let model = route.model_of(&request.body).map(Box::from);
    let input_estimate = route.operation.dialect().prompt_tokens(route.operation, &request.body);
    let mut normalized = request.body;
    normalizer.normalize(&route, &mut normalized).map_err(|e| bad(format!("request.body: {e}")))?;
    // Too big to be worth its memory in every VM: matched by key only.
    let (key, canonical) = Normalizer::key_and_canonical(route.operation, &normalized, KEEP_CANONICAL);
    drop(normalized);
    if let Some(stored) = stored_key.filter(|s| *s != key) {
        return Err(ConfigError::KeyMismatch { asset: label.to_string(), stored: stored.to_string(), computed: key });
    }
    let display = match &name {
        Some(n) => format!("{n:?} ({label})"),
        None => label.to_string(),
    };
    let seed = seed.unwrap_or_else(|| u64::from_str_radix(key.get(..16).unwrap_or("0"), 16).unwrap_or(0));
    Ok(Compiled {
        label: display,
        key,
        route,
        normalized: canonical.unwrap_or_default().into(),
        model,
        input_estimate,
        answers,
        sequence,
        seed,
        refresh,
        latency,
        calls: Cell::new(0),
    })
}

/// A sealed entry's asset compiled on its own, answers deferred (see [`Store::add_raw`]): what the remote
/// store's cache holds.
pub(crate) fn build_raw(
    normalizer: &Normalizer,
    label: &str,
    asset: RawAsset<'_>,
    stored_key: &str,
) -> Result<Compiled, ConfigError> {
    build(normalizer, label, asset, Some(stored_key), raw_answers)
}

/// Answers of a typed asset, compiled now.
fn typed_answers(
    route: &Route,
    response: Option<crate::asset::AssetResponse>,
    responses: Option<Vec<crate::asset::AssetResponse>>,
    refresh: bool,
) -> Result<Answers, String> {
    let many = responses.is_some();
    let all = match (response, responses) {
        (Some(r), _) => vec![r],
        (None, Some(rs)) => rs,
        (None, None) => Vec::new(),
    };
    Answers::compile(route, all, many, refresh)
}

/// Answers of a sealed asset, kept as their JSON text and compiled on first use.
fn raw_answers(
    _: &Route,
    response: Option<&serde_json::value::RawValue>,
    responses: Option<&serde_json::value::RawValue>,
    _: bool,
) -> Result<Answers, String> {
    match (response, responses) {
        (Some(r), _) => Ok(Answers::deferred(r.get(), false)),
        (None, Some(rs)) => Ok(Answers::deferred(rs.get(), true)),
        (None, None) => Err("needs `response` (or `responses`, a list)".into()),
    }
}

#[cfg(test)]
impl Store {
    /// Assets whose answers are deferred, compiled (`true`) or not yet.
    pub(crate) fn deferred_count(&self, compiled: bool) -> usize {
        self.assets.iter().filter(|a| a.answers.is_deferred(compiled)).count()
    }
}
