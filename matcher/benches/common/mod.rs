//! Inputs and measurement definitions shared by the native criterion benches (`matcher/benches/micro.rs`) and
//! the in-VM runner (`bench/vm-micro`, which `#[path]`-includes this file), so both time exactly the same work.
//!
//! Everything is generated here, deterministically (a fixed-seed PRNG, no fixture files): chat requests of a
//! target size with long, realistic messages (words, punctuation, newlines, quotes, a little non-ASCII), a
//! ~1 KB chat response, and asset stores of any size (the hit asset plus small filler assets). [`cases`] builds
//! the inputs and checks each measured call takes the intended path (a hit is a hit, a miss a miss) before
//! anything is timed.

use std::hint::black_box;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use understudy_matcher::template::{refresh_id, Rng};
use understudy_matcher::{
    canonical, classify, parse_body, Asset, Bundle, BundledAsset, Decision, NormalizationConfig, Normalizer, OnMiss,
    Outcome, PluginConfig, Route, Runtime, BUNDLE_FORMAT,
};

/// `decide_at`'s clock: a fixed instant (2025-11-29T08:00:00Z), so runs are reproducible.
pub const NOW_NANOS: u64 = 1_764_403_200_000_000_000;

/// The chat path every generated request uses.
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// What to build. Sizes are request-body bytes; stores and loads are asset counts.
#[derive(Debug, Clone)]
pub struct Options {
    /// Request-body sizes for the parse/normalize/hash breakdown and the full hit.
    pub sizes: Vec<usize>,
    /// Store sizes for the hit-latency-vs-store-size cases (the smallest one also serves the miss cases).
    pub stores: Vec<usize>,
    /// Asset counts for the `Runtime::from_json_sealed` load-time cases.
    pub loads: Vec<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sizes: vec![2 << 10, 64 << 10, 1 << 20],
            stores: vec![10, 10_000, 100_000],
            loads: vec![1_000, 10_000],
        }
    }
}

impl Options {
    /// Parses a comma-separated list of counts; `k`/`m` suffixes mean ×1000 / ×1000000 and `KiB`/`MiB` ×1024 /
    /// ×1048576 (e.g. `2KiB,64KiB,1MiB` or `10,10k,100k`).
    pub fn parse_list(text: &str) -> Result<Vec<usize>, String> {
        text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse_count).collect()
    }
}

fn parse_count(s: &str) -> Result<usize, String> {
    let (digits, mult) = [("KiB", 1 << 10), ("MiB", 1 << 20), ("k", 1_000), ("m", 1_000_000)]
        .iter()
        .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|d| (d, *m)))
        .unwrap_or((s, 1));
    let n: usize = digits.trim().parse().map_err(|e| format!("{s:?} is not a count: {e}"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// `2048` → `2KiB`, `1048576` → `1MiB`, `10000` → `10k`: a compact, path-safe spelling for benchmark ids.
pub fn short(n: usize, binary: bool) -> String {
    let units: &[(usize, &str)] =
        if binary { &[(1 << 20, "MiB"), (1 << 10, "KiB")] } else { &[(1_000_000, "m"), (1_000, "k")] };
    for (u, suffix) in units {
        if n >= *u && n % u == 0 {
            return format!("{}{suffix}", n / u);
        }
    }
    if binary {
        format!("{n}B")
    } else {
        n.to_string()
    }
}

/// One measurement: a closure doing one operation, plus how to name and scale it.
pub struct Case {
    /// Criterion group (the stage), e.g. `parse`.
    pub group: &'static str,
    /// Id within the group (usually the input size), e.g. `2KiB`.
    pub id: String,
    /// Human label for the results table.
    pub label: String,
    /// Input bytes per operation (for MB/s), 0 when throughput is meaningless.
    pub bytes: u64,
    /// Milliseconds per operation or more: harnesses take fewer samples.
    pub slow: bool,
    /// Builds the case's own inputs (big stores are built here, right before the case runs) and returns the
    /// operation: one call does the work once and returns something derived from its result, so it can't be
    /// optimized away.
    pub make: Make,
}

/// One timed operation.
pub type Op = Box<dyn FnMut() -> usize>;

/// Builds a case's inputs (checking they take the intended path) and returns its operation.
pub type Make = Box<dyn FnOnce() -> Result<Op, String>>;

/// A case whose inputs are already built.
fn ready(op: impl FnMut() -> usize + 'static) -> Make {
    Box::new(move || Ok(Box::new(op) as Op))
}

impl Case {
    /// `group/id`, the name both harnesses report.
    pub fn name(&self) -> String {
        format!("{}/{}", self.group, self.id)
    }
}

// ---- deterministic text ---------------------------------------------------------------------------------

const WORDS: &[&str] = &[
    "the",
    "capital",
    "of",
    "France",
    "is",
    "Paris",
    "and",
    "in",
    "spring",
    "it",
    "lively",
    "but",
    "less",
    "crowded",
    "than",
    "summer",
    "museums",
    "keep",
    "extended",
    "hours",
    "from",
    "April",
    "onward",
    "so",
    "plan",
    "big",
    "ones",
    "for",
    "weekday",
    "mornings",
    "book",
    "timed-entry",
    "tickets",
    "Louvre",
    "Musée",
    "d'Orsay",
    "a",
    "few",
    "weeks",
    "ahead",
    "consider",
    "pass",
    "if",
    "you",
    "will",
    "visit",
    "more",
    "three",
    "two",
    "days",
    "skips",
    "most",
    "ticket",
    "lines",
    "careful",
    "assistant",
    "travel",
    "company",
    "answer",
    "geography",
    "questions",
    "one",
    "short",
    "sentence",
    "official",
    "names",
    "never",
    "include",
    "URLs",
    "café",
    "naïve",
    "façade",
    "Zürich",
    "—",
    "budget",
    "train",
    "hotel",
    "river",
    "walk",
    "quiet",
    "neighbourhood",
    "breakfast",
    "station",
    "airport",
];

/// `bytes` (at least) of prose: words, commas and full stops, a newline now and then, an occasional quoted
/// phrase. Deterministic for a given `rng`.
fn prose(rng: &mut Rng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 32);
    let mut in_sentence = 0u64;
    while s.len() < bytes {
        let i = rng.below(WORDS.len() as u64) as usize;
        let word = WORDS.get(i).copied().unwrap_or("word");
        if !s.is_empty() && !s.ends_with('\n') {
            s.push(' ');
        }
        match rng.below(40) {
            0 => {
                s.push('"');
                s.push_str(word);
                s.push('"');
            }
            1 => {
                s.push_str(word);
                s.push(',');
            }
            _ => s.push_str(word),
        }
        in_sentence += 1;
        if in_sentence > 6 + rng.below(12) {
            s.push('.');
            in_sentence = 0;
            if rng.below(5) == 0 {
                s.push('\n');
            }
        }
    }
    s
}

// ---- requests, responses, assets -------------------------------------------------------------------------

/// A chat-completions request body of about `target` bytes (compact JSON), ending with `question`.
/// Long conversations are built from system, user and assistant messages of up to 4 KB each.
pub fn chat_body(target: usize, question: &str) -> Result<Vec<u8>, String> {
    let mut rng = Rng::new(0x5eed_0000 ^ target as u64);
    let skeleton = |messages: Vec<Value>| {
        json!({
            "model": "gpt-4o-mini",
            "messages": messages,
            "temperature": 0.7,
            "top_p": 1,
            "max_tokens": 256,
            "user": "bench-user-0001",
            "stream": false
        })
    };
    let last = json!({"role": "user", "content": question});
    let base = serde_json::to_vec(&skeleton(vec![last.clone()])).map_err(|e| e.to_string())?.len();
    let mut messages = Vec::new();
    let mut size = base;
    let mut turn = 0usize;
    // Each message costs its content plus ~30 bytes of JSON and escapes; aim a little low, then top up.
    while size + 64 < target {
        let room = target - size - 40;
        let content = prose(&mut rng, room.min(4_000));
        let role = match turn {
            0 => "system",
            t if t % 2 == 1 => "user",
            _ => "assistant",
        };
        let m = json!({"role": role, "content": content});
        size += serde_json::to_vec(&m).map_err(|e| e.to_string())?.len() + 1;
        messages.push(m);
        turn += 1;
    }
    messages.push(last);
    serde_json::to_vec(&skeleton(messages)).map_err(|e| e.to_string())
}

/// A realistic ~1 KB chat.completion response body (the shape of bench/assets/openai/chat-bench.json).
pub fn chat_response(tag: &str) -> Value {
    json!({
        "id": "chatcmpl-BVx2M9rJ7tZ1kq0aLw3yF8eHn4cUd",
        "object": "chat.completion",
        "created": 1_764_403_200u64,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": format!("{tag}: The capital of France is Paris; in spring it is lively but less crowded than in summer, and most museums keep extended hours from April onward, so plan the big ones for weekday mornings. Book timed-entry tickets for the Louvre and the Musée d'Orsay a few weeks ahead, and consider a Paris Museum Pass if you will visit more than three museums in two days; it also skips most ticket lines."),
                "refusal": null,
                "annotations": []
            },
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 412,
            "completion_tokens": 41,
            "total_tokens": 453,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
            }
        },
        "service_tier": "default",
        "system_fingerprint": "fp_560af6e559"
    })
}

fn asset(request_body: Value, response_body: Value, name: Option<String>) -> Result<Asset, String> {
    let mut a = json!({
        "request": {"method": "POST", "path": CHAT_PATH, "body": request_body},
        "response": {"status": 200, "body": response_body}
    });
    if let (Some(n), Some(m)) = (name, a.as_object_mut()) {
        m.insert("name".into(), Value::String(n));
    }
    serde_json::from_value(a).map_err(|e| format!("generated asset does not parse: {e}"))
}

/// The `i`-th small filler asset: a one-question chat request (~200 B) and a short answer (~300 B).
fn filler(i: usize) -> Result<Asset, String> {
    let mut rng = Rng::new(0xf111_e700_0000 ^ i as u64);
    let question = format!("Filler question {i}: {}?", prose(&mut rng, 80));
    let request = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0
    });
    let response = json!({
        "id": format!("chatcmpl-filler{i:08}"),
        "object": "chat.completion",
        "created": 1_764_403_200u64,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Filler answer {i}.")},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 24, "completion_tokens": 4, "total_tokens": 28}
    });
    asset(request, response, None)
}

/// Bundles `asset` under the key the bundler would compute (default normalization).
fn bundled(normalizer: &Normalizer, source: String, asset: Asset) -> Result<BundledAsset, String> {
    let route = classify(&asset.request.method, &asset.request.path).ok_or("generated asset is not an LLM route")?;
    let mut v = asset.request.body.clone();
    normalizer.normalize(&route, &mut v).map_err(|e| format!("{source}: {e}"))?;
    let key = Normalizer::key_of_normalized(route.operation, &v);
    Ok(BundledAsset { key, source, asset })
}

/// `hits` (request body, name) first, then fillers up to `total` assets.
fn store_assets(normalizer: &Normalizer, hits: &[(&[u8], String)], total: usize) -> Result<Vec<BundledAsset>, String> {
    let mut out = Vec::with_capacity(total.max(hits.len()));
    for (i, (body, name)) in hits.iter().enumerate() {
        let request: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let a = asset(request, chat_response(name), Some(name.clone()))?;
        out.push(bundled(normalizer, format!("bench/hit-{i}.json#0"), a)?);
    }
    for i in out.len()..total {
        out.push(bundled(normalizer, format!("bench/filler-{i}.json#0"), filler(i)?)?);
    }
    Ok(out)
}

fn config(on_miss: OnMiss, bundle: Bundle) -> PluginConfig {
    PluginConfig { on_miss, bundle: Some(bundle), ..PluginConfig::default() }
}

/// A runtime over `assets`, compiled directly (no JSON round trip, no content hash: set-up speed only), with
/// the memo of repeated bodies off: the cases repeat one body, and must measure the full path.
fn runtime(on_miss: OnMiss, assets: Vec<BundledAsset>) -> Result<Runtime, String> {
    let bundle = Bundle { format: BUNDLE_FORMAT.to_string(), sha256: None, assets };
    let mut rt = Runtime::compile(config(on_miss, bundle)).map_err(|e| format!("store does not compile: {e}"))?;
    rt.set_memo(false);
    Ok(rt)
}

/// The plugin configuration text the filter would load: a sealed bundle of `n` assets (the 2 KiB hit asset
/// plus fillers), as `understudy plugin-config` writes it.
pub fn plugin_config_text(normalizer: &Normalizer, hit_body: &[u8], n: usize) -> Result<String, String> {
    let assets = store_assets(normalizer, &[(hit_body, "bench hit".to_string())], n)?;
    let cfg = serde_json::to_value(config(OnMiss::Error, Bundle::sealed(assets))).map_err(|e| e.to_string())?;
    // Canonical JSON, as `understudy plugin-config` writes it (the filter then hashes the text as is).
    Ok(understudy_matcher::canonical::to_canonical(&cfg))
}

// ---- checks ------------------------------------------------------------------------------------------------

fn outcome(d: &Decision) -> (Outcome, u16) {
    match d {
        Decision::Respond(r) => (r.outcome, r.status),
        Decision::Forward(o) => (*o, 0),
        // No case configures a remote store.
        Decision::Fetch(_) => (Outcome::Miss, 0),
    }
}

fn expect(what: &str, d: &Decision, want: (Outcome, u16)) -> Result<(), String> {
    let got = outcome(d);
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want:?}, got {got:?} (the benchmark would time the wrong path)"))
    }
}

fn decision_len(d: &Decision) -> usize {
    match d {
        Decision::Respond(r) => r.body.len() + r.headers.len(),
        Decision::Forward(_) | Decision::Fetch(_) => 1,
    }
}

// ---- the cases ---------------------------------------------------------------------------------------------

/// Builds every input and returns the cases in report order. Fails (without timing anything) when an input
/// doesn't behave as the case's name says.
pub fn cases(opts: &Options) -> Result<Vec<Case>, String> {
    let normalizer = Normalizer::compile(&NormalizationConfig::default()).map_err(|e| e.to_string())?;
    let route: Route = classify("POST", CHAT_PATH).ok_or("chat path does not classify")?;
    let question = "What is the capital of France?";
    let bodies: Vec<(usize, Vec<u8>)> =
        opts.sizes.iter().map(|&s| chat_body(s, question).map(|b| (s, b))).collect::<Result<_, _>>()?;
    let mut out: Vec<Case> = Vec::new();

    // The smallest store holds a hit asset for every body size (plus fillers): it serves the per-size full
    // hits and the miss cases.
    let hits: Vec<(&[u8], String)> =
        bodies.iter().map(|(s, b)| (b.as_slice(), format!("bench hit {}", short(*s, true)))).collect();
    let small = opts.stores.iter().copied().min().unwrap_or(10).max(hits.len());
    let small_rt = std::rc::Rc::new(runtime(OnMiss::Error, store_assets(&normalizer, &hits, small)?)?);

    out.push(Case {
        group: "classify",
        id: "chat".into(),
        label: format!("classify(POST {CHAT_PATH})"),
        bytes: 0,
        slow: false,
        make: ready(move || classify(black_box("POST"), black_box(CHAT_PATH)).map_or(0, |r| r.operation as usize)),
    });

    // ---- per body size: the stages of a key, then the whole hit ----
    for (size, body) in &bodies {
        let sz = short(*size, true);
        let n = body.len() as u64;
        let parsed = parse_body(body).map_err(|e| e.to_string())?;
        let mut normalized = parsed.clone();
        normalizer.normalize(&route, &mut normalized).map_err(|e| e.to_string())?;
        let canonical_text = canonical::to_canonical(&normalized);
        let (key, _) = normalizer.key(&route, body).map_err(|e| e.to_string())?;
        if key != Normalizer::key_of_normalized(route.operation, &normalized)
            || Ok(key.clone()) != normalizer.key_of_request(&route, &parsed).map_err(|e| e.to_string())
            || Ok(Some(canonical_text.clone()))
                != normalizer.canonical_of_request(&route, &parsed, usize::MAX).map_err(|e| e.to_string())
        {
            return Err("Normalizer::key, key_of_normalized, key_of_request and canonical_of_request disagree".into());
        }
        let hit = small_rt.decide_at(&route, body, NOW_NANOS);
        expect(&format!("hit {sz}"), &hit, (Outcome::Hit, 200))?;
        let push = |out: &mut Vec<Case>, group: &'static str, label: String, bytes: u64, run: Op| {
            out.push(Case {
                group,
                id: sz.clone(),
                label,
                bytes,
                slow: *size >= 256 << 10,
                make: Box::new(move || Ok(run)),
            });
        };

        let b = body.clone();
        push(
            &mut out,
            "parse",
            format!("parse_body (serde_json → Value), {n} B"),
            n,
            Box::new(move || parse_body(black_box(&b)).map_or(0, |v| v.as_object().map_or(0, |m| m.len()))),
        );
        let p = parsed.clone();
        push(
            &mut out,
            "clone",
            format!("Value::clone of the parsed request, {n} B"),
            n,
            Box::new(move || black_box(&p).clone().as_object().map_or(0, |m| m.len())),
        );
        let mut v = normalized.clone();
        let nz = normalizer.clone();
        let r = route.clone();
        // O(top-level fields), not O(bytes): no throughput.
        push(
            &mut out,
            "normalize",
            format!("Normalizer::normalize (in place, default config), {n} B"),
            0,
            Box::new(move || nz.normalize(&r, black_box(&mut v)).map_or(0, |_| 1)),
        );
        let v = normalized.clone();
        push(
            &mut out,
            "canonicalize",
            format!("canonical::to_canonical of the normalized body, {n} B"),
            n,
            Box::new(move || canonical::to_canonical(black_box(&v)).len()),
        );
        let (p, nz, r) = (parsed.clone(), normalizer.clone(), route.clone());
        push(
            &mut out,
            "canonical_of_request",
            format!("Normalizer::canonical_of_request (text from the unnormalized request), {n} B"),
            n,
            Box::new(move || {
                nz.canonical_of_request(&r, black_box(&p), usize::MAX).map_or(0, |t| t.map_or(0, |t| t.len()))
            }),
        );
        let c = canonical_text.clone().into_bytes();
        push(
            &mut out,
            "sha256",
            format!("SHA-256 of the canonical text ({} B), {n} B body", c.len()),
            n,
            Box::new(move || Sha256::digest(black_box(&c)).first().copied().map_or(0, usize::from)),
        );
        let (p, nz, r) = (parsed.clone(), normalizer.clone(), route.clone());
        push(
            &mut out,
            "key_of_request",
            format!("Normalizer::key_of_request (canonical straight into SHA-256, no copy), {n} B"),
            n,
            Box::new(move || nz.key_of_request(&r, black_box(&p)).map_or(0, |k| k.len())),
        );
        let (b, nz, r) = (body.clone(), normalizer.clone(), route.clone());
        push(
            &mut out,
            "key",
            format!("Normalizer::key (parse + normalize + key), {n} B"),
            n,
            Box::new(move || nz.key(&r, black_box(&b)).map_or(0, |(k, _)| k.len())),
        );
        let (b, rt, r) = (body.clone(), small_rt.clone(), route.clone());
        push(
            &mut out,
            "decide_hit",
            format!("Runtime::decide_at, hit, {n} B request ({small} assets)"),
            n,
            Box::new(move || decision_len(&rt.decide_at(&r, black_box(&b), NOW_NANOS))),
        );
        // The same with the memo on: a repeated body skips parse, normalize and matching.
        let mut memo_rt = runtime(OnMiss::Error, store_assets(&normalizer, &[(body, "bench hit".into())], small)?)?;
        memo_rt.set_memo(true);
        expect("hit (memo)", &memo_rt.decide_at(&route, body, NOW_NANOS), (Outcome::Hit, 200))?;
        let (b, r) = (body.clone(), route.clone());
        push(
            &mut out,
            "decide_hit_repeat",
            format!("Runtime::decide_at, hit, {n} B request repeated (memo on, the default)"),
            n,
            Box::new(move || decision_len(&memo_rt.decide_at(&r, black_box(&b), NOW_NANOS))),
        );
    }

    // ---- response rendering building blocks (what a hit does after the lookup) ----
    let resp = chat_response("bench hit");
    let resp_len = serde_json::to_vec(&resp).map_err(|e| e.to_string())?.len() as u64;
    let v = resp.clone();
    out.push(Case {
        group: "render",
        id: "clone_serialize".into(),
        label: format!("response: Value::clone + serde_json::to_vec ({resp_len} B)"),
        bytes: resp_len,
        slow: false,
        make: ready(move || serde_json::to_vec(&black_box(&v).clone()).map_or(0, |b| b.len())),
    });
    let v = resp.clone();
    out.push(Case {
        group: "render",
        id: "serialize".into(),
        label: format!("response: serde_json::to_vec only ({resp_len} B)"),
        bytes: resp_len,
        slow: false,
        make: ready(move || serde_json::to_vec(black_box(&v)).map_or(0, |b| b.len())),
    });
    let mut rng = Rng::new(7);
    out.push(Case {
        group: "render",
        id: "refresh_id".into(),
        label: "response: template::refresh_id (fresh chatcmpl- id)".into(),
        bytes: 0,
        slow: false,
        make: ready(move || refresh_id(black_box("chatcmpl-BVx2M9rJ7tZ1kq0aLw3yF8eHn4cUd"), &mut rng).len()),
    });

    // ---- misses on a 2 KiB-class request (the first size), one word different from the hit ----
    if let Some((size, body)) = bodies.first() {
        let sz = short(*size, true);
        let miss = chat_body(*size, "What is the capital of Norway?")?;
        if miss.len() != body.len() {
            return Err("miss body differs in size from the hit body".into());
        }
        let n = miss.len() as u64;
        expect("miss (error)", &small_rt.decide_at(&route, &miss, NOW_NANOS), (Outcome::Miss, 404))?;
        let (m, rt, r) = (miss.clone(), small_rt.clone(), route.clone());
        out.push(Case {
            group: "miss",
            id: format!("error_{}", short(small, false)),
            label: format!(
                "decide_at, miss, on_miss=error (404 + closest-asset diagnosis), {sz} request, {small} assets"
            ),
            bytes: n,
            slow: false,
            make: ready(move || decision_len(&rt.decide_at(&r, black_box(&m), NOW_NANOS))),
        });
        let pass_rt = runtime(OnMiss::Passthrough, store_assets(&normalizer, &hits, small)?)?;
        expect("miss (passthrough)", &pass_rt.decide_at(&route, &miss, NOW_NANOS), (Outcome::Miss, 0))?;
        let (m, r) = (miss.clone(), route.clone());
        out.push(Case {
            group: "miss",
            id: format!("passthrough_{}", short(small, false)),
            label: format!("decide_at, miss, on_miss=passthrough, {sz} request, {small} assets"),
            bytes: n,
            slow: false,
            make: ready(move || decision_len(&pass_rt.decide_at(&r, black_box(&m), NOW_NANOS))),
        });

        // ---- hit latency vs store size (must be flat), and the miss diagnosis on a big store ----
        let mut stores: Vec<usize> = opts.stores.clone();
        stores.sort_unstable();
        stores.dedup();
        // The miss diagnosis scans at most 5,000 same-operation candidates: time it on the biggest store <= 10k.
        let diag_store = stores.iter().copied().filter(|&c| c > small && c <= 10_000).max();
        for &count in &stores {
            // Big stores are built right before their case runs and dropped after it, so they don't sit in the
            // heap (and the caches) while everything else is measured.
            let (b, m, r, nz, small_rt) =
                (body.clone(), miss.clone(), route.clone(), normalizer.clone(), small_rt.clone());
            let build = move || -> Result<std::rc::Rc<Runtime>, String> {
                let rt = if count == small {
                    small_rt
                } else {
                    std::rc::Rc::new(runtime(OnMiss::Error, store_assets(&nz, &[(&b, "bench hit".into())], count)?)?)
                };
                if rt.asset_count() != count {
                    return Err(format!("store of {count}: {} assets loaded", rt.asset_count()));
                }
                expect(&format!("hit in store {count}"), &rt.decide_at(&r, &b, NOW_NANOS), (Outcome::Hit, 200))?;
                expect(&format!("miss in store {count}"), &rt.decide_at(&r, &m, NOW_NANOS), (Outcome::Miss, 404))?;
                Ok(rt)
            };
            let (b, r, build2) = (body.clone(), route.clone(), build.clone());
            out.push(Case {
                group: "store_hit",
                id: short(count, false),
                label: format!("decide_at, hit, {sz} request, store of {count} assets"),
                bytes: n,
                slow: false,
                make: Box::new(move || {
                    let rt = build2()?;
                    Ok(Box::new(move || decision_len(&rt.decide_at(&r, black_box(&b), NOW_NANOS))) as Op)
                }),
            });
            if diag_store == Some(count) {
                let (m, r) = (miss.clone(), route.clone());
                out.push(Case {
                    group: "miss",
                    id: format!("error_{}", short(count, false)),
                    label: format!("decide_at, miss, on_miss=error, {sz} request, store of {count} assets"),
                    bytes: n,
                    slow: true,
                    make: Box::new(move || {
                        let rt = build()?;
                        Ok(Box::new(move || decision_len(&rt.decide_at(&r, black_box(&m), NOW_NANOS))) as Op)
                    }),
                });
            }
        }

        // ---- load time: the filter's on_configure work for a sealed bundle ----
        for &count in &opts.loads {
            let text = plugin_config_text(&normalizer, body, count)?;
            out.push(Case {
                group: "load",
                id: short(count, false),
                label: format!("Runtime::from_json_sealed, {count} assets ({:.1} MB config)", text.len() as f64 / 1e6),
                bytes: text.len() as u64,
                slow: true,
                make: Box::new(move || {
                    let loaded = Runtime::from_json_sealed(&text).map_err(|e| format!("load {count}: {e}"))?;
                    if loaded.asset_count() != count {
                        return Err(format!("load {count}: {} assets loaded", loaded.asset_count()));
                    }
                    drop(loaded);
                    Ok(Box::new(move || Runtime::from_json_sealed(black_box(&text)).map_or(0, |rt| rt.asset_count()))
                        as Op)
                }),
            });
        }
    }
    Ok(out)
}
