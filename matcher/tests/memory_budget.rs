//! The memory one request costs stays under the documented bound, measured with a counting allocator.
//!
//! Generated hostile request bodies — long arrays of tiny numbers, empty containers, one-member objects,
//! millions of short keys, nested containers at the depth limit, huge numbers, long strings with and without
//! escapes, token-id inputs — and synthesized answers amplified by `n`, `dimensions` and `stream`, are decided
//! by a runtime whose budgets are lowered (so the property runs on bodies of kilobytes, not of the 64 MiB a VM
//! sees). For each, the peak bytes allocated while deciding, plus the body itself, must stay under:
//!
//! - the budgets: `body + REQUEST_BUDGET + ANSWER_BUDGET` (here the lowered ones) — the bound `docs/limits.md`
//!   documents per request. This is what fails without the budget checks: run with
//!   `UNDERSTUDY_TEST_NO_BUDGET=1` (budgets lifted, the bound kept) to see it fail;
//! - the model: when the request was not refused, the cost `budget::request_cost` predicts for it (plus, when a
//!   rule synthesized an answer, the answer budget), so the model is an upper bound of what really happens;
//! - the worst case as a function of the body length, `budget::worst_case_cost(len)`, which is why bodies up to
//!   `scan_free_len` need no scan.
//!
//! The allocator counts the bytes requested (not the allocator's own overhead, which the model adds on top).
//! One test function only: the counters are global. Runs natively and under wasm32-wasip1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use understudy_matcher::budget::{request_cost, scan, worst_case_cost, Budgets, Processing};
use understudy_matcher::{classify, Decision, Normalizer, Outcome, Runtime};

#[global_allocator]
static PEAK: PeakAlloc = PeakAlloc;

const REQUEST: u64 = 4 << 20;
const ANSWER: u64 = 2 << 20;
/// Fixed-size work besides the model's: the miss message, headers, the memo entry, the small store's trees.
const SLACK: u64 = 256 << 10;

const CHAT: &str = "/v1/chat/completions";
const EMB: &str = "/v1/embeddings";

fn runtime(synthesize: bool, ignore: bool) -> Runtime {
    let route = classify("POST", CHAT).unwrap();
    let request = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]});
    let normalization = if ignore { json!({"ignore_fields": ["/temperature"]}) } else { json!({}) };
    let n = Normalizer::compile(&serde_json::from_value(normalization.clone()).unwrap()).unwrap();
    let key = n.key(&route, request.to_string().as_bytes()).unwrap().0;
    let rules = if synthesize {
        json!([{"operation": "openai.chat_completions", "model": "echo*", "echo": true},
               {"operation": "openai.embeddings", "model": "*"}])
    } else {
        json!([])
    };
    let cfg = json!({
        "on_miss": "error",
        "normalization": normalization,
        "synthesize": rules,
        "bundle": {"format": understudy_matcher::BUNDLE_FORMAT, "assets": [{
            "key": key, "source": "t.json#0",
            "asset": {
                "request": {"path": CHAT, "body": request},
                "response": {"body": {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}},
            },
        }]},
    });
    let mut rt = Runtime::from_json(&cfg.to_string()).unwrap();
    let lifted = std::env::var("UNDERSTUDY_TEST_NO_BUDGET").is_ok_and(|v| v == "1");
    let budgets = if lifted {
        Budgets { request: u64::MAX, answer: u64::MAX }
    } else {
        Budgets { request: REQUEST, answer: ANSWER }
    };
    rt.set_budgets(budgets);
    rt
}

/// A hostile body of about `size` bytes of class `class`; the path it goes to.
fn body(class: u8, size: usize, k: usize) -> (&'static str, Vec<u8>) {
    let repeat = |unit: &str, sep: &str| vec![unit; (size / (unit.len() + sep.len())).max(1)].join(sep);
    let chat = |field: &str, value: String| format!(r#"{{"model":"m","messages":[],"{field}":{value}}}"#);
    let text = match class {
        0 => chat("stop", format!("[{}]", repeat("0", ","))),
        1 => chat("stop", format!("[{}]", repeat("{}", ","))),
        2 => chat("stop", format!("[{}]", repeat("[]", ","))),
        3 => chat("stop", format!("[{}]", repeat(r#"{"":0}"#, ","))),
        4 => chat("stop", format!("[{}]", repeat("[0]", ","))),
        5 => {
            let keys: Vec<String> = (0..size / 10).map(|i| format!(r#""k{i}":0"#)).collect();
            chat("metadata", format!("{{{}}}", keys.join(",")))
        }
        6 => chat("stop", format!("[{}]", repeat(&format!("{}0{}", "{\"\":".repeat(40), "}".repeat(40)), ","))),
        7 => chat("stop", format!("[{}]", repeat(&format!("{}0{}", "[".repeat(126), "]".repeat(126)), ","))),
        8 => chat("seed", "7".repeat(size)),
        9 => chat("stop", format!("\"{}\"", "x".repeat(size))),
        10 => chat("stop", format!("\"{}\"", "\\u00e9\\n".repeat(size / 8))),
        11 => {
            let ids = repeat("12345", ",");
            return (EMB, format!(r#"{{"model":"e","input":[[{ids}],[{ids}]]}}"#).into_bytes());
        }
        // Synthesized answers: an echo amplified by `n` and streaming.
        12 => format!(
            r#"{{"model":"echo","n":{},"stream":{},"messages":[{{"role":"user","content":"{}"}}]}}"#,
            1 + k % 128,
            k % 2 == 0,
            "a ".repeat(size / 2)
        ),
        // Embeddings amplified by `dimensions` and inputs.
        13 => {
            let inputs = vec!["\"x\""; 1 + size / 512].join(",");
            let dims = 1 + k.wrapping_mul(977) % 65_536;
            format!(r#"{{"model":"e","dimensions":{dims},"input":[{inputs}]}}"#)
        }
        // Over the depth limit after a long prefix (priced up to where serde_json stops).
        _ => chat("stop", format!("[{},{}]", repeat("0", ","), "[".repeat(200))),
    };
    (if class == 13 { EMB } else { CHAT }, text.into_bytes())
}

#[test]
fn peak_memory_of_a_hostile_request_stays_under_the_documented_bound() {
    let runtimes = [runtime(false, false), runtime(true, false), runtime(false, true)];
    let mut runner = TestRunner::new(Config { cases: 96, failure_persistence: None, ..Config::default() });
    let strategy = (0u8..=14, 1usize..=(512 << 10), 0usize..3, any::<usize>());
    runner
        .run(&strategy, |(class, size, which, k)| {
            let which = if class >= 12 { 1 } else { which };
            let rt = &runtimes[which];
            let (path, body) = body(class, size, k);
            let route = classify("POST", path).unwrap();
            let base = PEAK.current_usage();
            PEAK.reset_peak_usage();
            let decision = rt.decide_at(&route, &body, 1_700_000_000_000_000_000);
            let used = (PEAK.peak_usage() - base) as u64 + body.len() as u64;
            let outcome = match &decision {
                Decision::Respond(r) => r.outcome,
                Decision::Forward(o) => *o,
                Decision::Fetch(f) => panic!("no store is configured, yet a fetch of {}", f.key),
            };
            drop(decision);
            let what = format!("class {class}, {} bytes, runtime {which}: {outcome:?}, peak {used}", body.len());

            prop_assert!(used <= body.len() as u64 + REQUEST + ANSWER, "over the budgets: {what}");
            let processing = Processing { plain: which != 2, synthesizes: which == 1 };
            let predicted = request_cost(body.len(), &scan(&body), processing);
            prop_assert!(predicted <= worst_case_cost(body.len()), "{what}: predicted {predicted}");
            if outcome != Outcome::OverBudget {
                let answer = if outcome == Outcome::Synthesized { ANSWER } else { 0 };
                prop_assert!(used <= predicted + answer + SLACK, "{what}: the model predicted {predicted}");
            }
            Ok(())
        })
        .unwrap();
}
