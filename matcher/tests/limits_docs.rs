//! Docs and code agree: every limit `docs/limits.md`, the other pages of `docs/` and SECURITY.md state is the
//! constant `understudy_matcher::limits` holds (the README states none: it links to these pages). The docs are
//! compiled in (`include_str!`), so this runs under wasm too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use regex::Regex;
use understudy_matcher::limits::*;

const LIMITS_MD: &str = include_str!("../../docs/limits.md");
const SECURITY: &str = include_str!("../../SECURITY.md");
const COST_MD: &str = include_str!("../../docs/cost.md");
const STORE_MD: &str = include_str!("../../docs/store.md");
const ASSETS_MD: &str = include_str!("../../docs/assets.md");
const KEYS_MD: &str = include_str!("../../docs/keys.md");

/// `20000` → `20,000`, as the docs write numbers.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes as the docs write them: `1 GiB`, `384 MiB`, `64 KiB`.
fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n => format!("{} KiB", n >> 10),
    }
}

/// The text with line breaks and indentation folded into single spaces (prose wraps anywhere).
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Each `(constant, value)` is a row `| \`NAME\` | VALUE |` of `doc`'s table, and every constant row of the
/// table is one of them (a constant added to the docs must be checked here).
fn table_rows(doc: &str, name: &str, rows: &[(&str, String)]) {
    for (constant, value) in rows {
        let row = format!("| `{constant}` | {value} |");
        assert!(doc.contains(&row), "{name} has no row {row:?}");
    }
    let documented = Regex::new(r"(?m)^\| `([A-Z_]+)` \|").unwrap();
    for c in documented.captures_iter(doc) {
        assert!(rows.iter().any(|(constant, _)| *constant == &c[1]), "{name} documents {} unchecked", &c[1]);
    }
}

#[test]
fn the_limit_table_states_every_constant() {
    let rows: &[(&str, String)] = &[
        ("VM_MEMORY", size(VM_MEMORY)),
        ("DEFAULT_MAX_BODY_BYTES", size(DEFAULT_MAX_BODY_BYTES)),
        ("MAX_DEPTH", format!("{MAX_DEPTH} levels")),
        ("REQUEST_BUDGET", size(REQUEST_BUDGET)),
        ("ANSWER_BUDGET", size(ANSWER_BUDGET)),
        ("MAX_TEXT_BYTES", size(MAX_TEXT_BYTES as u64)),
        ("MAX_CHOICES", thousands(MAX_CHOICES as u64)),
        ("MAX_N", MAX_N.to_string()),
        ("MAX_EMBEDDING_FLOATS", thousands(MAX_EMBEDDING_FLOATS as u64)),
        ("MAX_DIMENSIONS", thousands(MAX_DIMENSIONS as u64)),
        ("MAX_DELAY_MS", format!("{} s", MAX_DELAY_MS / 1000)),
        ("DELAY_QUEUE_ENTRIES", format!("{} answers", thousands(DELAY_QUEUE_ENTRIES as u64))),
        ("DELAY_QUEUE_BYTES", size(DELAY_QUEUE_BYTES as u64)),
        ("MEMO_BODY", size(MEMO_BODY as u64)),
        ("MEMO_BYTES", size(MEMO_BYTES as u64)),
        ("KEEP_CANONICAL", size(KEEP_CANONICAL as u64)),
        ("MISS_SCAN", format!("{} assets", thousands(MISS_SCAN as u64))),
        ("MISS_PARSE", format!("{MISS_PARSE} candidates")),
        ("MISS_PREFIX_BYTES", size(MISS_PREFIX_BYTES as u64)),
        ("MISS_DIFF_CAP", format!("{} leaves", thousands(MISS_DIFF_CAP as u64))),
        ("MISS_PATH_CHARS", format!("{MISS_PATH_CHARS} chars")),
        ("MAX_MODEL_LABELS", format!("{MAX_MODEL_LABELS} models")),
        ("MAX_MODEL_LABEL_BYTES", format!("{MAX_MODEL_LABEL_BYTES} bytes")),
        ("MAX_CAPTURE_BYTES", size(MAX_CAPTURE_BYTES as u64)),
        ("MAX_PARITY_DIFFS", format!("{MAX_PARITY_DIFFS} differences")),
        ("MAX_PARITY_VALUE_CHARS", format!("{MAX_PARITY_VALUE_CHARS} chars")),
        ("RECORD_BUFFER_BYTES", size(RECORD_BUFFER_BYTES as u64)),
        ("RECORD_QUEUE_ENTRIES", format!("{} captures", thousands(RECORD_QUEUE_ENTRIES as u64))),
        ("RECORD_ATTEMPTS", format!("{RECORD_ATTEMPTS} attempts")),
        ("MAX_TIMING_CHUNKS", format!("{} chunks", thousands(MAX_TIMING_CHUNKS as u64))),
        ("STORE_CACHE_ENTRIES", format!("{} entries", thousands(STORE_CACHE_ENTRIES as u64))),
        ("STORE_CACHE_BYTES", size(STORE_CACHE_BYTES as u64)),
        ("STORE_ENTRY_BYTES", size(STORE_ENTRY_BYTES as u64)),
        ("STORE_TIMEOUT_MS", format!("{} ms", thousands(STORE_TIMEOUT_MS))),
        ("MAX_STORE_TIMEOUT_MS", format!("{} s", MAX_STORE_TIMEOUT_MS / 1000)),
        ("EMBEDDED_BUNDLE_BYTES", size(EMBEDDED_BUNDLE_BYTES as u64)),
    ];
    table_rows(LIMITS_MD, "docs/limits.md", rows);
    // The budget table and the prose.
    let text = flat(LIMITS_MD);
    for stated in [
        format!("`REQUEST_BUDGET` = {}", size(REQUEST_BUDGET)),
        format!("`ANSWER_BUDGET` = {}", size(ANSWER_BUDGET)),
        format!(
            "`DELAY_QUEUE_BYTES` = {}, at most `DELAY_QUEUE_ENTRIES` = {} answers",
            size(DELAY_QUEUE_BYTES as u64),
            thousands(DELAY_QUEUE_ENTRIES as u64)
        ),
        format!("`MEMO_BYTES` = {} (bodies up to `MEMO_BODY` = {})", size(MEMO_BYTES as u64), size(MEMO_BODY as u64)),
        format!("`PER_VM_BUDGET` = {} besides the store", size(PER_VM_BUDGET)),
        format!("`STORE_CACHE_BYTES` = {}", size(STORE_CACHE_BYTES as u64)),
        format!("`MISS_SHORTLIST` = {MISS_SHORTLIST}"),
        format!("`RECORD_BUFFER_BYTES` = {}", size(RECORD_BUFFER_BYTES as u64)),
        format!("back-off {} ms doubling up to {} s", RECORD_BACKOFF_MS, RECORD_BACKOFF_MAX_MS / 1000),
    ] {
        assert!(text.contains(&stated), "docs/limits.md does not say {stated:?}");
    }
}

/// Every match of `pattern` in `doc` (at least one) must capture exactly `want`.
fn states(doc: &str, name: &str, pattern: &str, want: &[String]) {
    let text = flat(doc);
    let re = Regex::new(pattern).unwrap();
    let found: Vec<Vec<String>> =
        re.captures_iter(&text).map(|c| c.iter().skip(1).map(|m| m.unwrap().as_str().to_string()).collect()).collect();
    assert!(!found.is_empty(), "{name} no longer says /{pattern}/: update this test with the docs");
    for got in found {
        assert_eq!(got, want, "{name} states /{pattern}/ as {got:?}; the code says {want:?}");
    }
}

const RECORD_MD: &str = include_str!("../../docs/record.md");

#[test]
fn the_record_page_states_every_record_limit() {
    let rows: &[(&str, String)] = &[
        ("MAX_CAPTURE_BYTES", size(MAX_CAPTURE_BYTES as u64)),
        ("RECORD_BUFFER_BYTES", size(RECORD_BUFFER_BYTES as u64)),
        ("RECORD_QUEUE_ENTRIES", format!("{} captures", thousands(RECORD_QUEUE_ENTRIES as u64))),
        ("RECORD_IN_FLIGHT", format!("{RECORD_IN_FLIGHT} deliveries")),
        ("RECORD_ATTEMPTS", format!("{RECORD_ATTEMPTS} attempts")),
        ("RECORD_DELIVERY_TIMEOUT_MS", format!("{} ms", thousands(RECORD_DELIVERY_TIMEOUT_MS))),
        ("MAX_TIMING_CHUNKS", format!("{} chunks", thousands(MAX_TIMING_CHUNKS as u64))),
    ];
    table_rows(RECORD_MD, "docs/record.md", rows);
    let text = flat(RECORD_MD);
    let backoff = format!(
        "`RECORD_BACKOFF_MS` = {RECORD_BACKOFF_MS} ms doubling up to `RECORD_BACKOFF_MAX_MS` = {} ms",
        thousands(RECORD_BACKOFF_MAX_MS)
    );
    assert!(text.contains(&backoff), "docs/record.md does not say {backoff:?}");
    states(RECORD_MD, "docs/record.md", r"over `MAX_CAPTURE_BYTES` \((\d+ MiB)", &[size(MAX_CAPTURE_BYTES as u64)]);
}

#[test]
fn security_and_the_pages_state_the_constants() {
    let s = |n: u64| n.to_string();
    states(SECURITY, "SECURITY.md", r"nested (\d+) levels", &[s(MAX_DEPTH as u64)]);
    states(SECURITY, "SECURITY.md", r"ranks at most ([\d,]+) same-operation", &[thousands(MISS_SCAN as u64)]);
    states(
        SECURITY,
        "SECURITY.md",
        r"capped \(([\d,]+) embedding floats, ([\d,]+) choices, (\d+ MiB) of text\)",
        &[thousands(MAX_EMBEDDING_FLOATS as u64), thousands(MAX_CHOICES as u64), size(MAX_TEXT_BYTES as u64)],
    );
    states(SECURITY, "SECURITY.md", r"latency at (\d+) s", &[s(MAX_DELAY_MS / 1000)]);
    states(SECURITY, "SECURITY.md", r"request budget of (\d+ MiB)", &[size(REQUEST_BUDGET)]);
    states(SECURITY, "SECURITY.md", r"\(budget (\d+ MiB): 413", &[size(ANSWER_BUDGET)]);
    states(
        SECURITY,
        "SECURITY.md",
        r"at most ([\d,]+) answers and (\d+ MiB)",
        &[thousands(DELAY_QUEUE_ENTRIES as u64), size(DELAY_QUEUE_BYTES as u64)],
    );
    states(SECURITY, "SECURITY.md", r"the memo (\d+ MiB)", &[size(MEMO_BYTES as u64)]);
    states(SECURITY, "SECURITY.md", r"budget per VM \((\d+ MiB) plus", &[size(PER_VM_BUDGET)]);
    states(SECURITY, "SECURITY.md", r"(\d+ MiB) in `understudy up`", &[size(DEFAULT_MAX_BODY_BYTES)]);
    states(SECURITY, "SECURITY.md", r"at most (\d+ MiB) per exchange", &[size(MAX_CAPTURE_BYTES as u64)]);

    states(
        SECURITY,
        "SECURITY.md",
        r"label at most (\d+) model names per Envoy \(names over (\d+) bytes",
        &[s(MAX_MODEL_LABELS as u64), s(MAX_MODEL_LABEL_BYTES as u64)],
    );
    states(COST_MD, "docs/cost.md", r"`MAX_MODEL_LABELS` = (\d+)", &[s(MAX_MODEL_LABELS as u64)]);
    states(COST_MD, "docs/cost.md", r"`MAX_MODEL_LABEL_BYTES` = (\d+) bytes", &[s(MAX_MODEL_LABEL_BYTES as u64)]);
    states(COST_MD, "docs/cost.md", r"\| `MAX_MODEL_LABELS` \| (\d+) models", &[s(MAX_MODEL_LABELS as u64)]);
    states(COST_MD, "docs/cost.md", r"names over (\d+) bytes", &[s(MAX_MODEL_LABEL_BYTES as u64)]);
    // Moved from the README with the sections that state them: matching keys, latency, hardening.
    states(KEYS_MD, "docs/keys.md", r"nested (\d+) levels", &[s(MAX_DEPTH as u64)]);
    states(ASSETS_MD, "docs/assets.md", r"capped at (\d+) s", &[s(MAX_DELAY_MS / 1000)]);
    states(ASSETS_MD, "docs/assets.md", r"`stream_idle_timeout` to (\d+) s", &[s(MAX_DELAY_MS / 1000 + 60)]);
    states(
        ASSETS_MD,
        "docs/assets.md",
        r"at most ([\d,]+) answers and (\d+ MiB) per VM",
        &[thousands(DELAY_QUEUE_ENTRIES as u64), size(DELAY_QUEUE_BYTES as u64)],
    );
    states(SECURITY, "SECURITY.md", r"naming `REQUEST_BUDGET` \((\d+ MiB)\)", &[size(REQUEST_BUDGET)]);
    states(SECURITY, "SECURITY.md", r"the (\d+ MiB) latency queue", &[size(DELAY_QUEUE_BYTES as u64)]);
}

#[test]
fn the_store_page_states_the_constants() {
    let words = ["zero", "one", "two", "three", "four", "five"];
    states(
        STORE_MD,
        "docs/store.md",
        r"at most ([\d,]+) entries and (\d+ MiB) per VM",
        &[thousands(STORE_CACHE_ENTRIES as u64), size(STORE_CACHE_BYTES as u64)],
    );
    states(
        STORE_MD,
        "docs/store.md",
        r"counted as (\w+) times its file's size plus (\d+ KiB)",
        &[words[STORE_ENTRY_COST].to_string(), size(STORE_ENTRY_OVERHEAD as u64)],
    );
    states(STORE_MD, "docs/store.md", r"files over (\d+ MiB) are not read", &[size(STORE_ENTRY_BYTES as u64)]);
    states(
        STORE_MD,
        "docs/store.md",
        r"default ([\d,]+) ms, at most (\d+) s",
        &[thousands(STORE_TIMEOUT_MS), (MAX_STORE_TIMEOUT_MS / 1000).to_string()],
    );
    states(STORE_MD, "docs/store.md", r"bundles up to (\d+ MiB)", &[size(EMBEDDED_BUNDLE_BYTES as u64)]);
}
