//! `template::Template::compile` on arbitrary strings, and `expand` for every operation when it compiles.
//! Property: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use understudy_matcher::template::{Context, Rng, Template};
use understudy_matcher::{classify, Operation, Route};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(Some(t)) = Template::compile(&text) else { return };
    let request = json!({"model": "gpt-4o", "n": 2, "messages": [{"role": "user", "content": "hi"}],
        "nested": {"a~b": [1, 2.50, null, true], "c/d": "x"}});
    let seed = data.iter().fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b));
    for (i, op) in Operation::ALL.into_iter().enumerate() {
        let mut ids = Rng::new(seed);
        let mut choices = Rng::new(seed ^ 0x5eed);
        let no_model = json!({});
        let azure = classify("POST", "/openai/deployments/dep/chat/completions");
        let route = match (i % 3, azure) {
            (0, Some(r)) => r,
            _ => Route::of(op),
        };
        let mut ctx = Context {
            route: &route,
            request: if i % 2 == 0 { &request } else { &no_model },
            now_nanos: seed.wrapping_mul(i as u64 + 1),
            ids: &mut ids,
            choices: &mut choices,
        };
        let v = t.expand(&mut ctx);
        let _ = serde_json::to_string(&v);
    }
});
