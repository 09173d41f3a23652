//! Golden key vectors: `golden/keys.json` pins the key of every case, so any change to classification,
//! normalization, canonical JSON or hashing shows up as a diff. The file is compiled in with `include_str!`
//! (no filesystem at run time), so the same vectors are checked natively and under wasm32-wasip1
//! (`scripts/test-wasm.sh`).
//!
//! Each case may also say `same_as` / `differs_from` another case. Those relations are written by hand
//! from the normalization rules, and the test checks that the keys group exactly into the `same_as`
//! classes: two cases share a key if and only if `same_as` links connect them. So the file is not merely
//! self-confirming: regenerating the keys can't hide a rule change.
//!
//! Regenerate the keys (native only) with
//! `UNDERSTUDY_BLESS=1 cargo test -p understudy-matcher --test golden`, then review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use understudy_matcher::{classify, Decision, NormalizationConfig, Normalizer, Outcome, Runtime, BUNDLE_FORMAT};

const GOLDEN: &str = include_str!("../golden/keys.json");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    method: String,
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    normalization: Option<NormalizationConfig>,
    /// The raw request body text, so spelling variants survive.
    body: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    same_as: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    differs_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn cases() -> Vec<Case> {
    serde_json::from_str(GOLDEN).expect("golden/keys.json does not parse")
}

fn compute(c: &Case) -> String {
    let cfg = c.normalization.clone().unwrap_or_default();
    let n = Normalizer::compile(&cfg).unwrap_or_else(|e| panic!("{}: normalization does not compile: {e}", c.name));
    let route =
        classify(&c.method, &c.path).unwrap_or_else(|| panic!("{}: {} {} is not classified", c.name, c.method, c.path));
    let (key, _) = n.key(&route, c.body.as_bytes()).unwrap_or_else(|e| panic!("{}: no key: {e}", c.name));
    // The filter's path: the key straight from the parsed request (no normalized copy when plain).
    let parsed = understudy_matcher::parse_body(c.body.as_bytes()).unwrap();
    let direct = n.key_of_request(&route, &parsed).unwrap_or_else(|e| panic!("{}: no direct key: {e}", c.name));
    assert_eq!(direct, key, "{}: key_of_request differs from normalize + key", c.name);
    let text = n.canonical_of_request(&route, &parsed, usize::MAX).unwrap().unwrap();
    assert_eq!(Normalizer::key_of_canonical(route.operation, &text), key, "{}: canonical text path differs", c.name);
    assert_eq!(n.canonical_of_request(&route, &parsed, text.len() - 1).unwrap(), None, "{}: cap ignored", c.name);
    key
}

fn render(cases: &[Case]) -> String {
    let mut s = serde_json::to_string_pretty(cases).unwrap();
    s.push('\n');
    s
}

fn bless_requested() -> bool {
    std::env::var("UNDERSTUDY_BLESS").is_ok_and(|v| v == "1")
}

#[test]
fn golden_keys_match() {
    let cases = cases();
    assert!(cases.len() >= 30, "only {} golden cases", cases.len());
    let mut fresh = cases.clone();
    let mut wrong = Vec::new();
    for c in &mut fresh {
        let k = compute(c);
        assert_eq!(k.len(), 64, "{}", c.name);
        assert!(
            k.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{}: key {k} is not lowercase hex",
            c.name
        );
        if k != c.key {
            wrong.push(format!("{}: file has {:?}, computed {k}", c.name, c.key));
        }
        c.key = k;
    }
    if bless_requested() {
        bless(&fresh);
        return;
    }
    assert!(
        wrong.is_empty(),
        "{} golden key(s) changed (if intended, rerun natively with UNDERSTUDY_BLESS=1 and review the diff):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[cfg(not(target_os = "wasi"))]
fn bless(cases: &[Case]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/keys.json");
    std::fs::write(path, render(cases)).unwrap();
    eprintln!("blessed {} golden keys into {path}", cases.len());
}

// WASI tests run with no preopened directories, so the file can't be rewritten there.
#[cfg(target_os = "wasi")]
fn bless(_: &[Case]) {
    panic!("UNDERSTUDY_BLESS=1 only works natively (no filesystem under WASI)");
}

#[test]
fn golden_file_is_in_blessed_form() {
    // Names are unique and the file is byte-for-byte what bless writes, so regenerating is diff-stable.
    let cases = cases();
    let mut names = BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name.as_str()), "duplicate case name {}", c.name);
    }
    if !bless_requested() {
        assert!(render(&cases) == GOLDEN, "golden/keys.json is not formatted as UNDERSTUDY_BLESS=1 writes it");
    }
}

/// Union-find over `same_as` links.
fn classes(cases: &[Case]) -> Vec<usize> {
    let index: BTreeMap<&str, usize> = cases.iter().enumerate().map(|(i, c)| (c.name.as_str(), i)).collect();
    let mut parent: Vec<usize> = (0..cases.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    for (i, c) in cases.iter().enumerate() {
        for other in c.same_as.iter().chain(&c.differs_from) {
            assert!(index.contains_key(other.as_str()), "{} refers to unknown case {other}", c.name);
        }
        if let Some(other) = &c.same_as {
            let j = index[other.as_str()];
            let (a, b) = (find(&mut parent, i), find(&mut parent, j));
            parent[a] = b;
        }
    }
    (0..cases.len()).map(|i| find(&mut parent, i)).collect()
}

#[test]
fn keys_group_exactly_into_same_as_classes() {
    let cases = cases();
    let class = classes(&cases);
    let keys: Vec<String> = cases.iter().map(compute).collect();
    let mut problems = Vec::new();
    for i in 0..cases.len() {
        for j in i + 1..cases.len() {
            let same_class = class[i] == class[j];
            let same_key = keys[i] == keys[j];
            if same_class && !same_key {
                problems.push(format!(
                    "{} and {} should share a key (same_as chain) but differ",
                    cases[i].name, cases[j].name
                ));
            }
            if same_key && !same_class {
                problems.push(format!(
                    "{} and {} share key {} but nothing says they are the same",
                    cases[i].name, cases[j].name, keys[i]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn differs_from_relations_hold() {
    let cases = cases();
    let class = classes(&cases);
    let by_name: BTreeMap<&str, usize> = cases.iter().enumerate().map(|(i, c)| (c.name.as_str(), i)).collect();
    for (i, c) in cases.iter().enumerate() {
        if let Some(other) = &c.differs_from {
            let j = by_name[other.as_str()];
            assert_ne!(class[i], class[j], "{} differs_from {other}, but same_as links join them", c.name);
            assert_ne!(compute(c), compute(&cases[j]), "{} must differ from {other}", c.name);
        }
    }
    let n = cases.iter().filter(|c| c.differs_from.is_some()).count();
    let s = cases.iter().filter(|c| c.same_as.is_some()).count();
    assert!(n >= 10 && s >= 10, "too few relations: {s} same_as, {n} differs_from");
}

/// The path an asset of a case is written with: an asset may not carry a credential (`?key=`), which never
/// counts anyway; the request is still sent with it.
fn asset_path(path: &str) -> &str {
    match path.split_once('?') {
        Some((p, q)) if q.split('&').any(|kv| kv.starts_with("key=")) => p,
        _ => path,
    }
}

/// The filter path: each case loaded as a bundle asset (its body spliced in verbatim, so the asset's body
/// is parsed as a JSON value inside the plugin configuration) must load with the key computed from the raw
/// bytes as its stored key (no `KeyMismatch`), and the raw request must hit it with that key.
#[test]
fn golden_cases_load_as_bundles_and_hit() {
    for c in cases() {
        let key = compute(&c);
        let norm = serde_json::to_string(&c.normalization.clone().unwrap_or_default()).unwrap();
        let config = format!(
            r#"{{"on_miss":"error","normalization":{norm},"bundle":{{"format":{fmt},"assets":[{{"key":{key},"source":"golden/keys.json","asset":{{"name":{name},"request":{{"method":{method},"path":{path},"body":{body}}},"response":{{"body":{{"case":{name}}}}}}}}}]}}}}"#,
            fmt = serde_json::to_string(BUNDLE_FORMAT).unwrap(),
            key = serde_json::to_string(&key).unwrap(),
            name = serde_json::to_string(&c.name).unwrap(),
            method = serde_json::to_string(&c.method).unwrap(),
            path = serde_json::to_string(asset_path(&c.path)).unwrap(),
            body = c.body,
        );
        let rt = Runtime::from_json(&config).unwrap_or_else(|e| panic!("{}: bundle does not load: {e}", c.name));
        let route = classify(&c.method, &c.path).unwrap();
        match rt.decide(&route, c.body.as_bytes()) {
            Decision::Respond(r) => {
                assert_eq!(r.outcome, Outcome::Hit, "{}", c.name);
                assert!(
                    r.headers.iter().any(|(k, v)| k == "x-understudy-key" && *v == key),
                    "{}: {:?}",
                    c.name,
                    r.headers
                );
            }
            other => panic!("{}: {other:?}", c.name),
        }
    }
}
