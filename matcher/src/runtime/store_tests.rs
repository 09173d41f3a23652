//! The runtime with a remote asset store: fetch, verify, cache within its bounds, and the miss policy for
//! absent keys and for a store that can't be asked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use serde_json::{json, Value};

use super::*;
use crate::asset::BundledAsset;
use crate::dialect::classify;
use crate::key::NormalizationConfig;
use crate::store::remote::layout;

const CHAT: &str = "/v1/chat/completions";

fn request(q: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": q}]})
}

fn asset(q: &str) -> BundledAsset {
    let route = classify("POST", CHAT).unwrap();
    let key = Normalizer::default().key(&route, request(q).to_string().as_bytes()).unwrap().0;
    serde_json::from_value(json!({
        "key": key, "source": format!("{q}.json#0"),
        "asset": {"request": {"path": CHAT, "body": request(q)},
                  "response": {"body": {"id": "chatcmpl-1", "choices": [{"message": {"content": format!("answer {q}")}}]}},
                  "refresh": false},
    }))
    .unwrap()
}

/// A runtime whose only assets are in a store of `qs`, with `store` fields on top of the defaults.
fn runtime(qs: &[&str], on_miss: &str, store: Value) -> (Runtime, Vec<(String, String)>) {
    let assets: Vec<BundledAsset> = qs.iter().map(|q| asset(q)).collect();
    let (sha256, files) = layout(&assets, &NormalizationConfig::default());
    let mut section = json!({"cluster": "store", "sha256": sha256});
    section.as_object_mut().unwrap().extend(store.as_object().unwrap().clone());
    let cfg = json!({"on_miss": on_miss, "store": section});
    (Runtime::from_json_sealed(&cfg.to_string()).unwrap(), files)
}

fn file<'a>(files: &'a [(String, String)], key: &str) -> &'a str {
    &files.iter().find(|(k, _)| k == key).unwrap().1
}

/// Decides `q`, answering a fetch from `files` (a 404 when the key has no file); how many fetches it took.
fn ask(rt: &Runtime, files: &[(String, String)], q: &str) -> (LocalResponse, usize) {
    let route = classify("POST", CHAT).unwrap();
    let body = request(q).to_string();
    match rt.decide_at(&route, body.as_bytes(), 0) {
        Decision::Respond(r) => (r, 0),
        Decision::Fetch(f) => {
            let answer = match files.iter().find(|(k, _)| *k == f.key) {
                Some((_, text)) => StoreAnswer::Status(200, text.as_bytes()),
                None => StoreAnswer::Status(404, b"not found"),
            };
            let fetched = rt.take_fetched(&f.key, answer);
            match rt.decide_fetched(&route, body.as_bytes(), 0, &fetched) {
                Decision::Respond(r) => (r, 1),
                d => panic!("{d:?}"),
            }
        }
        d => panic!("{d:?}"),
    }
}

fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn a_store_entry_is_fetched_once_then_served_from_the_cache() {
    let (rt, files) = runtime(&["a", "b"], "error", json!({}));
    assert_eq!(rt.asset_count(), 0);
    assert_eq!(rt.bundle_source(), BundleSource::None);
    let (r, fetches) = ask(&rt, &files, "a");
    assert_eq!((r.status, fetches, header(&r, "x-understudy-store")), (200, 1, Some("fetched")));
    assert!(String::from_utf8(r.body).unwrap().contains("answer a"));
    let (r, fetches) = ask(&rt, &files, "a");
    assert_eq!((r.status, fetches, header(&r, "x-understudy-store")), (200, 0, Some("cached")));
    assert_eq!(header(&r, "x-understudy-key"), Some(asset("a").key.as_str()));
}

#[test]
fn the_cache_keeps_at_most_its_entries_and_bytes_evicting_the_least_recently_used() {
    let qs = ["a", "b", "c", "d"];
    let (rt, files) = runtime(&qs, "error", json!({"cache_entries": 2}));
    let mut fetches = 0;
    for q in ["a", "b", "a", "c", "a", "b"] {
        fetches += ask(&rt, &files, q).1;
        assert!(rt.remote.as_ref().unwrap().usage().0 <= 2);
    }
    // a, b fetched; a cached; c fetched (evicts b); a cached; b fetched again.
    assert_eq!(fetches, 4);
    // A byte bound that holds one entry: every other key evicts it.
    let one =
        file(&files, &asset("a").key).len() * crate::limits::STORE_ENTRY_COST + crate::limits::STORE_ENTRY_OVERHEAD;
    let (rt, files) = runtime(&qs, "error", json!({"cache_bytes": one + 200}));
    let mut fetches = 0;
    for q in ["a", "a", "b", "a", "b", "b"] {
        fetches += ask(&rt, &files, q).1;
        assert!(rt.remote.as_ref().unwrap().usage().1 <= one + 200);
    }
    assert_eq!(fetches, 4);
}

#[test]
fn a_key_the_store_lacks_is_a_remembered_miss_that_says_where_it_looked() {
    let (rt, files) = runtime(&["a"], "error", json!({}));
    let (r, fetches) = ask(&rt, &files, "zzz");
    assert_eq!((r.status, fetches, header(&r, "x-understudy-store")), (404, 1, Some("miss")));
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("the store has no entry for this key"), "{text}");
    // Remembered: a published store never changes under its content hash.
    assert_eq!(ask(&rt, &files, "zzz").1, 0);
}

#[test]
fn an_edited_swapped_or_foreign_entry_is_refused_and_the_request_gets_a_503_not_an_answer() {
    let (rt, files) = runtime(&["a", "b"], "error", json!({}));
    let (ka, kb) = (asset("a").key, asset("b").key);
    let route = classify("POST", CHAT).unwrap();
    let body = request("a").to_string();
    let (_, other_store) = runtime(&["a", "c"], "error", json!({}));
    let edited = file(&files, &ka).replace("answer a", "answer A");
    let bad_json = "{\"format\":".to_string();
    for (what, text) in [
        ("an edited answer", edited.as_str()),
        ("another key's entry", file(&files, &kb)),
        ("another publish's entry", file(&other_store, &ka)),
        ("not JSON", bad_json.as_str()),
    ] {
        let fetched = rt.take_fetched(&ka, StoreAnswer::Status(200, text.as_bytes()));
        let why = fetched.error().unwrap_or_else(|| panic!("{what} was accepted"));
        let Decision::Respond(r) = rt.decide_fetched(&route, body.as_bytes(), 0, &fetched) else { panic!() };
        assert_eq!(r.status, 503, "{what}");
        assert!(String::from_utf8(r.body).unwrap().contains("could not ask the asset store"), "{what}: {why}");
    }
    // The refused entries were not cached: the next request fetches again, and the real entry hits.
    let (r, fetches) = ask(&rt, &files, "a");
    assert_eq!((r.status, fetches, header(&r, "x-understudy-store")), (200, 1, Some("fetched")));
}

#[test]
fn a_store_published_with_other_normalization_settings_does_not_verify() {
    let (_, files) = runtime(&["a"], "error", json!({}));
    let (sha256, _) = layout(&[asset("a")], &NormalizationConfig::default());
    let cfg =
        json!({"normalization": {"ignore_fields": ["/temperature"]}, "store": {"cluster": "s", "sha256": sha256}});
    let rt = Runtime::from_json_sealed(&cfg.to_string()).unwrap();
    let fetched = rt.take_fetched(&asset("a").key, StoreAnswer::Status(200, file(&files, &asset("a").key).as_bytes()));
    assert!(fetched.error().unwrap().contains("other normalization settings"), "{:?}", fetched.error());
}

#[test]
fn under_passthrough_misses_and_outages_forward_and_strict_outages_say_why() {
    let (rt, _) = runtime(&["a"], "passthrough", json!({}));
    let route = classify("POST", CHAT).unwrap();
    let body = request("a").to_string();
    for answer in [StoreAnswer::Status(404, b""), StoreAnswer::Status(500, b""), StoreAnswer::Failed("timeout")] {
        let fetched = rt.take_fetched(&asset("a").key, answer);
        assert_eq!(rt.decide_fetched(&route, body.as_bytes(), 0, &fetched), Decision::Forward(Outcome::Miss));
    }
    let (rt, _) = runtime(&["a"], "error", json!({}));
    let fetched = rt.take_fetched(&asset("a").key, StoreAnswer::Failed("no answer within the store's timeout"));
    let Decision::Respond(r) = rt.decide_fetched(&route, body.as_bytes(), 0, &fetched) else { panic!() };
    assert_eq!((r.status, r.outcome), (503, Outcome::Miss));
    assert!(String::from_utf8(r.body).unwrap().contains("no answer within the store's timeout"));
    // Not remembered: the next request asks the store again.
    assert!(matches!(rt.decide_at(&route, body.as_bytes(), 0), Decision::Fetch(_)));
}

#[test]
fn local_assets_answer_first_and_the_store_only_for_the_rest() {
    let (sha256, files) = layout(&[asset("a"), asset("b")], &NormalizationConfig::default());
    let bundle = crate::Bundle::sealed(vec![asset("a")]);
    let cfg = json!({"bundle": bundle, "store": {"cluster": "s", "sha256": sha256}});
    let rt = Runtime::from_json_sealed(&cfg.to_string()).unwrap();
    assert_eq!(rt.bundle_source(), BundleSource::Inline);
    let (r, fetches) = ask(&rt, &files, "a");
    assert_eq!((r.status, fetches, header(&r, "x-understudy-store")), (200, 0, None));
    assert_eq!(ask(&rt, &files, "b").1, 1);
    // A miss explains that its closest-asset hint covers the loaded assets only.
    let (r, _) = ask(&rt, &files, "a!");
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("loaded in the filter (the store's assets are not compared)"), "{text}");
}

#[test]
fn a_configuration_needs_a_bundle_a_store_or_an_embedded_bundle() {
    let e = Runtime::from_json_sealed("{}").unwrap_err().to_string();
    assert!(e.starts_with("bundle: missing") && e.contains("understudy package --assets"), "{e}");
    let bad = json!({"store": {"cluster": "s", "sha256": "x"}});
    assert!(Runtime::from_json_sealed(&bad.to_string()).unwrap_err().to_string().starts_with("store.sha256"));
    // Embedded: used without an inline bundle, refused when its normalization differs.
    let embedded = json!({"format": EMBEDDED_FORMAT, "bundle": crate::Bundle::sealed(vec![asset("a")])}).to_string();
    let rt = Runtime::from_json_sealed_embedded("{}", Some(&embedded)).unwrap();
    assert_eq!((rt.asset_count(), rt.bundle_source()), (1, BundleSource::Embedded));
    let other = json!({"normalization": {"ignore_fields": ["/x"]}}).to_string();
    let e = Runtime::from_json_sealed_embedded(&other, Some(&embedded)).unwrap_err().to_string();
    assert!(e.starts_with("normalization:") && e.contains("embedded bundle"), "{e}");
    // An inline bundle wins over the embedded one.
    let inline = json!({"bundle": crate::Bundle::sealed(vec![asset("a"), asset("b")])}).to_string();
    let rt = Runtime::from_json_sealed_embedded(&inline, Some(&embedded)).unwrap();
    assert_eq!((rt.asset_count(), rt.bundle_source()), (2, BundleSource::Inline));
}
