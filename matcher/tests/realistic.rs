//! Runtime behaviour of realistic responses: sequences, errors, refresh, placeholders, streaming,
//! synthesized answers and latency, through the public `Runtime::decide_at` API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use serde_json::{json, Value};
use understudy_matcher::{classify, Decision, LocalResponse, NormalizationConfig, Normalizer, Outcome, Runtime};

const NOW: u64 = 1_764_403_200_000_000_000;
const CHAT: &str = "/v1/chat/completions";
const MSG: &str = "/v1/messages";

fn key(path: &str, body: &Value) -> String {
    let n = Normalizer::compile(&NormalizationConfig::default()).unwrap();
    n.key(&classify("POST", path).unwrap(), body.to_string().as_bytes()).unwrap().0
}

/// A runtime over assets given as JSON objects (asset file format), keys computed here.
fn runtime(assets: Vec<Value>, extra: Value) -> Runtime {
    let bundled: Vec<Value> = assets
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let k = key(a["request"]["path"].as_str().unwrap(), &a["request"]["body"]);
            json!({"key": k, "source": format!("t.json#{i}"), "asset": a})
        })
        .collect();
    let mut cfg = json!({"bundle": {"format": understudy_matcher::BUNDLE_FORMAT, "assets": bundled}});
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    Runtime::from_json(&cfg.to_string()).unwrap()
}

fn call(rt: &Runtime, path: &str, body: &Value) -> LocalResponse {
    match rt.decide_at(&classify("POST", path).unwrap(), body.to_string().as_bytes(), NOW) {
        Decision::Respond(r) => r,
        d => panic!("expected a local response, got {d:?}"),
    }
}

fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn json_of(r: &LocalResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn chat_req(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

fn chat_body(id: &str, text: &str) -> Value {
    json!({"id": id, "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}})
}

#[test]
fn repeat_last_serves_in_order_then_repeats_the_last() {
    let rt = runtime(
        vec![json!({"request": {"path": CHAT, "body": chat_req("retry me")}, "responses": [
            {"status": 429, "headers": {"retry-after": "0"}, "error": {"type": "rate_limit_error", "message": "slow down"}},
            {"body": chat_body("chatcmpl-a", "first")},
            {"body": chat_body("chatcmpl-b", "second")}
        ]})],
        json!({}),
    );
    let r = call(&rt, CHAT, &chat_req("retry me"));
    assert_eq!(
        (r.status, header(&r, "retry-after"), header(&r, "x-understudy-response")),
        (429, Some("0"), Some("1/3"))
    );
    assert_eq!(
        json_of(&r),
        json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": null}})
    );
    let texts: Vec<String> = (0..4)
        .map(|_| {
            json_of(&call(&rt, CHAT, &chat_req("retry me")))["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .into()
        })
        .collect();
    assert_eq!(texts, ["first", "second", "second", "second"]);
}

#[test]
fn cycle_and_seeded_random_sequences() {
    let responses: Vec<Value> = (0..3).map(|i| json!({"body": chat_body("chatcmpl-x", &format!("v{i}"))})).collect();
    let asset = |seq: &str| json!({"request": {"path": CHAT, "body": chat_req("vary")}, "responses": responses, "sequence": seq, "seed": 11});
    let texts = |rt: &Runtime| -> Vec<String> {
        (0..12)
            .map(|_| {
                json_of(&call(rt, CHAT, &chat_req("vary")))["choices"][0]["message"]["content"].as_str().unwrap().into()
            })
            .collect()
    };
    let cyc = texts(&runtime(vec![asset("cycle")], json!({})));
    assert_eq!(cyc[..6], ["v0", "v1", "v2", "v0", "v1", "v2"]);
    let a = texts(&runtime(vec![asset("random")], json!({})));
    let b = texts(&runtime(vec![asset("random")], json!({})));
    assert_eq!(a, b, "a seeded random sequence repeats across fresh runtimes");
    let distinct: std::collections::HashSet<_> = a.iter().collect();
    assert!(distinct.len() > 1, "{a:?}");
}

#[test]
fn anthropic_error_variants_have_anthropic_shape_and_default_status() {
    let req = json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let rt = runtime(
        vec![
            json!({"request": {"path": MSG, "body": req}, "response": {"error": {"type": "overloaded_error", "message": "Overloaded"}}}),
        ],
        json!({}),
    );
    let r = call(&rt, MSG, &req);
    assert_eq!(r.status, 529);
    assert_eq!(json_of(&r), json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
}

#[test]
fn refresh_is_default_and_can_be_turned_off() {
    let fresh = runtime(
        vec![
            json!({"request": {"path": CHAT, "body": chat_req("a")}, "response": {"body": chat_body("chatcmpl-AAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "x")}}),
        ],
        json!({}),
    );
    let one = json_of(&call(&fresh, CHAT, &chat_req("a")));
    let two = json_of(&call(&fresh, CHAT, &chat_req("a")));
    assert_ne!(one["id"], two["id"]);
    assert_eq!(one["id"].as_str().unwrap().len(), 38);
    assert_eq!(one["created"], json!(NOW / 1_000_000_000));

    let exact = runtime(
        vec![
            json!({"request": {"path": CHAT, "body": chat_req("a")}, "response": {"body": chat_body("chatcmpl-1", "x")}, "refresh": false}),
        ],
        json!({}),
    );
    let a = call(&exact, CHAT, &chat_req("a")).body;
    let b = call(&exact, CHAT, &chat_req("a")).body;
    assert_eq!(a, b);
    assert_eq!(serde_json::from_slice::<Value>(&a).unwrap(), chat_body("chatcmpl-1", "x"));
}

#[test]
fn placeholders_are_expanded_per_hit_and_bad_ones_fail_the_load() {
    let mut body = chat_body("{{id}}", "You said: {{request:/messages/0/content}} ({{request.model}})");
    body["created"] = json!("{{now}}");
    body["choices"][0]["message"]["tool_calls"] =
        json!([{"id": "{{id:call_}}", "type": "function", "function": {"name": "f", "arguments": "{}"}}]);
    let rt = runtime(
        vec![
            json!({"request": {"path": CHAT, "body": chat_req("ping")}, "response": {"body": body}, "refresh": false}),
        ],
        json!({}),
    );
    let v = json_of(&call(&rt, CHAT, &chat_req("ping")));
    assert_eq!(v["choices"][0]["message"]["content"], "You said: ping (gpt-4o-mini)");
    assert_eq!(v["created"], json!(NOW / 1_000_000_000));
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["choices"][0]["message"]["tool_calls"][0]["id"].as_str().unwrap().starts_with("call_"));

    let mut bad = chat_body("x", "{{nope}}");
    bad["id"] = json!("x");
    let asset = json!({"asset": {"request": {"path": CHAT, "body": chat_req("ping")}, "response": {"body": bad}},
                       "key": key(CHAT, &chat_req("ping")), "source": "bad.json#0"});
    let cfg = json!({"bundle": {"format": understudy_matcher::BUNDLE_FORMAT, "assets": [asset]}});
    let err = Runtime::from_json(&cfg.to_string()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bad.json#0") && msg.contains("/choices/0/message/content") && msg.contains("nope"), "{msg}");
}

#[test]
fn stream_requests_get_sse_from_a_plain_asset_and_recorded_streams_serve_both_ways() {
    let rt = runtime(
        vec![
            json!({"request": {"path": CHAT, "body": chat_req("s")}, "response": {"body": chat_body("chatcmpl-s", "Hello there, streaming world")}}),
        ],
        json!({}),
    );
    let mut req = chat_req("s");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let r = call(&rt, CHAT, &req);
    assert_eq!(header(&r, "content-type"), Some("text/event-stream; charset=utf-8"));
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let deltas: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str().map(String::from)))
        .collect();
    assert_eq!(deltas, "Hello there, streaming world");
    assert!(text.contains(r#""completion_tokens":40"#), "usage chunk missing");

    let sse = "data: {\"id\":\"chatcmpl-r\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
               data: {\"id\":\"chatcmpl-r\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Recorded\"},\"finish_reason\":null}]}\n\n\
               data: {\"id\":\"chatcmpl-r\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
               data: [DONE]\n\n";
    let rec = runtime(
        vec![
            json!({"request": {"path": CHAT, "body": chat_req("rec")}, "response": {"headers": {"content-type": "text/event-stream"}, "body_text": sse}}),
        ],
        json!({}),
    );
    let mut sreq = chat_req("rec");
    sreq["stream"] = json!(true);
    let r = call(&rec, CHAT, &sreq);
    assert_eq!(String::from_utf8(r.body).unwrap(), sse, "recorded stream served verbatim");
    let r = call(&rec, CHAT, &chat_req("rec"));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(json_of(&r)["choices"][0]["message"]["content"], "Recorded");
}

#[test]
fn synthesized_answers_for_misses_are_marked_and_embeddings_are_stable() {
    let rules = json!({"synthesize": [
        {"operation": "openai.embeddings", "dimensions": 16},
        {"operation": "openai.chat_completions", "model": "gpt-4o*", "echo": true, "latency": {"ttft_ms": 100, "per_token_ms": 10}}
    ]});
    let rt = runtime(vec![], rules);
    let r = call(&rt, CHAT, &chat_req("echo this"));
    assert_eq!((r.outcome, header(&r, "x-understudy")), (Outcome::Synthesized, Some("synthesized")));
    let v = json_of(&r);
    assert_eq!(v["choices"][0]["message"]["content"], "echo this");
    let out = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(r.delay_ms, 100 + 10 * out);

    let emb = |input: &str| {
        let r = call(
            &rt,
            "/v1/embeddings",
            &json!({"model": "text-embedding-3-small", "input": input, "encoding_format": "float"}),
        );
        let v: Vec<f64> =
            json_of(&r)["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        v
    };
    let a = emb("hello");
    assert_eq!(a.len(), 16);
    assert!((a.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-5);
    assert_eq!(a, emb("hello"));
    assert_ne!(a, emb("goodbye"));

    // No rule for Anthropic: an ordinary strict miss.
    let r = call(&rt, MSG, &json!({"model": "claude", "max_tokens": 5, "messages": []}));
    assert_eq!((r.outcome, r.status), (Outcome::Miss, 404));
}

#[test]
fn latency_adds_time_per_output_token() {
    let rt = runtime(
        vec![
            json!({"request": {"path": CHAT, "body": chat_req("slow")}, "response": {"body": chat_body("chatcmpl-s", "x")},
                    "latency": {"ttft_ms": 250, "per_token_ms": 2.5}}),
        ],
        json!({}),
    );
    assert_eq!(call(&rt, CHAT, &chat_req("slow")).delay_ms, 250 + 100); // usage.completion_tokens = 40
}

#[test]
fn a_sealed_bundle_that_was_edited_fails_the_load() {
    let req = chat_req("sealed");
    let asset: understudy_matcher::BundledAsset = serde_json::from_value(json!({
        "key": key(CHAT, &req), "source": "s.json#0",
        "asset": {"request": {"path": CHAT, "body": req}, "response": {"body": chat_body("chatcmpl-1", "original")}}
    }))
    .unwrap();
    let bundle = understudy_matcher::Bundle::sealed(vec![asset]);
    let ok = json!({"bundle": bundle});
    assert!(Runtime::from_json(&ok.to_string()).is_ok());
    // Change only the response (the key still matches): the content hash catches it.
    let mut tampered = ok.clone();
    tampered["bundle"]["assets"][0]["asset"]["response"]["body"]["choices"][0]["message"]["content"] = json!("forged");
    let err = Runtime::from_json(&tampered.to_string()).unwrap_err().to_string();
    assert!(err.starts_with("bundle.sha256:"), "{err}");
    // The filter's loader refuses an unsealed bundle, so deleting the hash doesn't disable the check.
    let mut unsealed = tampered.clone();
    unsealed["bundle"].as_object_mut().unwrap().remove("sha256");
    assert!(Runtime::from_json(&unsealed.to_string()).is_ok(), "library loader: hash optional");
    let err = Runtime::from_json_sealed(&unsealed.to_string()).unwrap_err().to_string();
    assert!(err.starts_with("bundle.sha256: missing"), "{err}");
    assert!(Runtime::from_json_sealed(&ok.to_string()).is_ok());
    // Dropping an asset is caught as well.
    let mut truncated = ok.clone();
    truncated["bundle"]["assets"] = json!([]);
    assert!(Runtime::from_json(&truncated.to_string()).is_err());
}

#[test]
fn ollama_streams_by_default_refreshes_created_at_and_serves_recorded_ndjson_both_ways() {
    const OCHAT: &str = "/api/chat";
    let req = json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]});
    let answer = json!({"model": "llama3.2", "created_at": "2023-08-04T19:22:45.499127Z",
        "message": {"role": "assistant", "content": "Rayleigh scattering makes it blue."},
        "done_reason": "stop", "done": true, "prompt_eval_count": 26, "eval_count": 7});
    let ndjson = "{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.385406455Z\",\"response\":\"Rec\",\"done\":false}\n\
                  {\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.485406455Z\",\"response\":\"orded.\",\"done\":false}\n\
                  {\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.585406455Z\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"eval_count\":2}\n";
    let gen_req = json!({"model": "llama3.2", "prompt": "recorded"});
    let rt = runtime(
        vec![
            json!({"request": {"path": OCHAT, "body": req}, "response": {"body": answer}}),
            json!({"request": {"path": "/api/generate", "body": gen_req}, "response": {"headers": {"content-type": "application/x-ndjson"}, "body_text": ndjson}}),
        ],
        json!({"synthesize": [{"operation": "ollama.chat", "text": "Modeled."}]}),
    );

    // No `stream` member: Ollama streams.
    let r = call(&rt, OCHAT, &req);
    assert_eq!((r.outcome, header(&r, "content-type")), (Outcome::Hit, Some("application/x-ndjson")));
    let lines: Vec<Value> =
        std::str::from_utf8(&r.body).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let text: String = lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
    assert_eq!(text, "Rayleigh scattering makes it blue.");
    assert!(lines.iter().all(|l| l["created_at"] == "2025-11-29T08:00:00.000000Z"), "refreshed, same precision");
    assert_eq!(lines.last().unwrap()["eval_count"], 7);
    let streamed_key = header(&r, "x-understudy-key").unwrap().to_string();

    // `stream: false` and `keep_alive` don't change the key; the SDK's empty `tools` neither.
    let mut plain = req.clone();
    plain["stream"] = json!(false);
    plain["keep_alive"] = json!("5m");
    plain["tools"] = json!([]);
    let r = call(&rt, OCHAT, &plain);
    assert_eq!(
        (header(&r, "content-type"), header(&r, "x-understudy-key")),
        (Some("application/json"), Some(streamed_key.as_str()))
    );
    let v = json_of(&r);
    assert_eq!(v["message"]["content"], "Rayleigh scattering makes it blue.");
    assert_eq!(v["created_at"], "2025-11-29T08:00:00.000000Z");

    // A recorded NDJSON stream: verbatim by default, assembled for `stream: false`.
    let r = call(&rt, "/api/generate", &gen_req);
    assert_eq!(String::from_utf8(r.body).unwrap(), ndjson);
    let mut plain = gen_req.clone();
    plain["stream"] = json!(false);
    let v = json_of(&call(&rt, "/api/generate", &plain));
    assert_eq!((v["response"].clone(), v["eval_count"].clone()), (json!("Recorded."), json!(2)));

    // Synthesized answers stream too; errors are `{"error": "..."}`.
    let r = call(&rt, OCHAT, &json!({"model": "llama3.2", "messages": [{"role": "user", "content": "new"}]}));
    assert_eq!((r.outcome, header(&r, "content-type")), (Outcome::Synthesized, Some("application/x-ndjson")));
    assert!(std::str::from_utf8(&r.body).unwrap().lines().last().unwrap().contains("\"done\":true"));
    let r = call(&rt, "/api/generate", &json!({"model": "llama3.2", "prompt": "unknown"}));
    assert_eq!((r.status, header(&r, "content-type")), (404, Some("application/json")));
    let msg = json_of(&r)["error"].as_str().unwrap().to_string();
    assert!(msg.contains(header(&r, "x-understudy-key").unwrap()) && msg.contains("ollama.generate"), "{msg}");
    let r = match rt.decide_at(&classify("POST", OCHAT).unwrap(), b"{not json", NOW) {
        Decision::Respond(r) => r,
        d => panic!("{d:?}"),
    };
    assert_eq!(r.status, 400);
    assert!(json_of(&r)["error"].as_str().unwrap().contains("could not read"));
}
