//! The `understudy` binary's contract: keys, bundles and their errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn understudy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_understudy")).args(args).output().expect("run understudy")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("understudy-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn chat(content: &str, answer: &str) -> String {
    format!(
        r#"{{"request": {{"path": "/v1/chat/completions", "body": {{"model": "m", "messages": [{{"role": "user", "content": "{content}"}}]}}}},
           "response": {{"body": {{"answer": "{answer}"}}}}}}"#
    )
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/assets")
}

#[test]
fn key_of_an_asset_equals_key_of_its_raw_body_sent_by_a_client() {
    let d = tmpdir("key");
    write(&d, "a.json", &chat("hi", "x"));
    let from_asset = understudy(&["key", d.join("a.json").to_str().unwrap()]);
    assert!(from_asset.status.success(), "{}", String::from_utf8_lossy(&from_asset.stderr));
    // Same request as a client would spell it: other key order, spacing, ignored fields.
    write(
        &d,
        "raw.txt",
        r#"{ "messages":[{"content":"hi","role":"user"}], "stream": false, "model":"m", "user": "u1" }"#,
    );
    let from_raw = understudy(&["key", d.join("raw.txt").to_str().unwrap(), "--path", "/gw/v1/chat/completions"]);
    assert!(from_raw.status.success());
    let k = String::from_utf8(from_asset.stdout).unwrap();
    assert_eq!(k.trim().len(), 64);
    assert_eq!(k, String::from_utf8(from_raw.stdout).unwrap());
}

#[test]
fn bundle_reports_counts_and_duplicates_and_writes_a_loadable_bundle() {
    let d = tmpdir("bundle");
    write(&d, "a.json", &chat("hi", "x"));
    write(&d, "sub/b.json", &format!("[{}, {}]", chat("hi", "x"), chat("bye", "y")));
    write(&d, "notes.txt", "not an asset");
    let out = d.join("bundle.json");
    let o = understudy(&["bundle", d.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("2 assets from 2 files"), "{err}");
    assert!(err.contains("openai.chat_completions: 2"), "{err}");
    assert!(err.contains("duplicate: sub/b.json#0"), "{err}");
    let bundle: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(bundle["format"], "understudy.bundle/v2");
    assert_eq!(bundle["assets"][0]["asset"]["request"]["path"], "/v1/chat/completions");
    assert_eq!(bundle["sha256"].as_str().unwrap().len(), 64, "bundles are sealed with a content hash");
    assert_eq!(bundle["assets"].as_array().unwrap().len(), 2);
    assert_eq!(bundle["assets"][0]["source"], "a.json#0");
}

#[test]
fn conflicting_responses_for_one_key_are_an_error() {
    let d = tmpdir("conflict");
    write(&d, "a.json", &chat("hi", "x"));
    write(&d, "b.json", &chat("hi", "DIFFERENT"));
    let o = understudy(&["bundle", d.to_str().unwrap(), "-o", "-"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("conflicting responses for key"), "{err}");
    assert!(err.contains("a.json#0") && err.contains("b.json#0"), "{err}");
}

#[test]
fn every_bad_asset_is_reported_with_file_and_field() {
    let d = tmpdir("bad");
    write(
        &d,
        "unknown.json",
        r#"{"request": {"path": "/v1/embeddings", "body": {}, "headers": {}}, "response": {"body": {}}}"#,
    );
    write(&d, "syntax.json", r#"{"request": "#);
    write(
        &d,
        "both.json",
        r#"{"request": {"path": "/v1/embeddings", "body": {}}, "response": {"body": {}, "body_text": "x"}}"#,
    );
    write(&d, "path.json", r#"{"request": {"path": "/v1/files", "body": {}}, "response": {"body": {}}}"#);
    write(
        &d,
        "secret.json",
        r#"{"request": {"path": "/v1/embeddings", "body": {}}, "response": {"headers": {"Set-Cookie": "s=1"}, "body": {}}}"#,
    );
    let o = understudy(&["bundle", d.to_str().unwrap(), "-o", "-"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("5 problem(s)"), "{err}");
    assert!(err.contains("unknown.json#0: request.headers: unknown field `headers`"), "{err}");
    assert!(err.contains("syntax.json"), "{err}");
    assert!(
        err.contains("both.json#0") && err.contains("more than one of `body`, `body_text`, `body_base64`, `error`"),
        "{err}"
    );
    assert!(err.contains("path.json#0") && err.contains("not an LLM operation"), "{err}");
    assert!(err.contains("secret.json#0") && err.contains("Set-Cookie"), "{err}");
}

#[test]
fn plugin_config_of_the_examples_is_accepted_by_the_runtime() {
    let o = understudy(&["plugin-config", examples().to_str().unwrap(), "--on-miss", "passthrough"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let rt = understudy_matcher::Runtime::from_json(&text).unwrap();
    assert_eq!(rt.on_miss(), understudy_matcher::OnMiss::Passthrough);
    assert!(rt.asset_count() >= 5);
}

#[test]
fn a_bad_normalization_file_names_the_field() {
    let d = tmpdir("norm");
    write(&d, "a.json", &chat("hi", "x"));
    write(&d, "../norm-bad.json", r#"{"scrubbers": [{"pattern": "(", "placeholder": "x"}]}"#);
    let norm = d.join("../norm-bad.json");
    let o = understudy(&["bundle", d.to_str().unwrap(), "-o", "-", "--normalization", norm.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("normalization.scrubbers[0].pattern"), "{err}");
}

#[test]
fn up_refuses_a_bad_upstream_before_starting_envoy() {
    let o = understudy(&["up", "--upstream", "ftp://nope", "--wasm", "/dev/null", "--print-config", "/dev/null"]);
    assert!(!o.status.success());
}

#[test]
fn symlinked_asset_directories_are_followed_and_a_symlink_loop_is_an_error() {
    let d = tmpdir("symlinks");
    let shared = tmpdir("symlinks-shared");
    write(&shared, "s.json", &chat("shared", "y"));
    write(&d, "a.json", &chat("hi", "x"));
    std::os::unix::fs::symlink(&shared, d.join("linked")).unwrap();
    let o = understudy(&["bundle", d.to_str().unwrap(), "-o", "-"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("2 assets from 2 files"), "{err}");
    // A link back to an ancestor would walk forever without loop protection.
    std::os::unix::fs::symlink(&d, d.join("loop")).unwrap();
    let o = understudy(&["bundle", d.to_str().unwrap(), "-o", "-"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("loop"), "{err}");
}

#[test]
fn run_without_a_command_is_a_usage_error_of_its_own() {
    let o = understudy(&["run", "--fail-on-miss"]);
    assert_eq!(o.status.code(), Some(125), "{}", String::from_utf8_lossy(&o.stderr));
    let o = understudy(&["run", "--", "understudy-no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&o.stderr).contains("understudy-no-such-command: command not found"));
}

/// A parity record of a chat answer compared with a live one by the real comparator.
fn parity_record(key: &str, live_finish: &str) -> String {
    use understudy_matcher::parity::{Observed, ParityConfig, ParityRecord, PARITY_FORMAT};
    use understudy_matcher::{Operation, Route};
    let answer = |finish: &str| {
        format!(
            r#"{{"id":"chatcmpl-{key}","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hi"}},"finish_reason":"{finish}"}}],"usage":{{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}}"#
        )
    };
    let (e, l) = (answer("stop"), answer(live_finish));
    fn ok(b: &str) -> Observed<'_> {
        Observed { status: 200, content_type: Some("application/json"), body: b.as_bytes() }
    }
    let verdict =
        ParityConfig::default().compile().unwrap().compare(&Route::of(Operation::ChatCompletions), ok(&e), ok(&l));
    let r = ParityRecord {
        format: PARITY_FORMAT.into(),
        key: key.into(),
        asset: Some("chat.json#0".into()),
        provider: "openai".into(),
        operation: Operation::ChatCompletions.name().into(),
        model: Some("gpt-4o-mini".into()),
        env: "staging".into(),
        at_ms: 1,
        verdict,
    };
    serde_json::to_string(&r).unwrap()
}

#[test]
fn parity_report_gates_on_min_parity_and_prints_its_json_schema() {
    let d = tmpdir("parity-report");
    write(&d, ".parity/a.json", &parity_record("k1", "stop"));
    write(&d, ".parity/b.json", &parity_record("k2", "stop"));
    write(&d, ".parity/c.json", &parity_record("k3", "length"));
    write(&d, ".parity/d.json", "not json");
    write(&d, "asset.json", &chat("hi", "x"));
    let dir = d.to_str().unwrap();
    let out = understudy(&["parity-report", dir]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Parity: 2/3 records matched (66.7%)"), "{text}");
    assert!(text.contains("finish_reason") && text.contains("/choices/0/finish_reason"), "{text}");
    assert!(text.contains("1 record file(s) could not be read") && text.contains("d.json"), "{text}");

    let out = understudy(&["parity-report", dir, "--json", "--min-parity", "0.9", "--worst", "5"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("d.json"), "the unreadable file is reported");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["format"], "understudy.parity-report/v1");
    assert_eq!(j["totals"]["records"], 3);
    assert_eq!(j["totals"]["matched"], 2);
    assert_eq!(j["totals"]["unreadable"], 1);
    assert_eq!(j["passed"], false);
    let row = &j["rows"][0];
    for k in ["provider", "operation", "model", "env", "records", "matched", "rate"] {
        assert!(row.get(k).is_some(), "rows[0].{k} in {row}");
    }
    let drift = &j["drifts"][0];
    assert_eq!(
        (drift["path"].as_str(), drift["kind"].as_str(), drift["count"].as_u64()),
        (Some("/choices/0/finish_reason"), Some("finish_reason"), Some(1))
    );
    assert_eq!((drift["example_key"].as_str(), drift["example_asset"].as_str()), (Some("k3"), Some("chat.json#0")));

    assert!(understudy(&["parity-report", dir, "--min-parity", "0.6"]).status.success());
    assert_eq!(understudy(&["parity-report", dir, "--min-parity", "2"]).status.code(), Some(2), "a usage error");
    assert_eq!(understudy(&["parity-report", d.join("nope").to_str().unwrap()]).status.code(), Some(1));
}
