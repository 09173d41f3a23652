//! `understudy parity-report DIR`: how closely the virtual answers still match the live model, from the
//! parity records parity mode sends the collector (`understudy collect` writes them under `DIR/.parity/`).
//! Parity rate (matched / records) per provider, operation, model and environment, totals, and the worst
//! drifts: the differing JSON paths seen most often, with their kind and an example key and asset. `--json`
//! prints `understudy.parity-report/v1` (docs/parity.md). With `--min-parity`, exits
//! [`EXIT_UNDER_PARITY`] when the rate is under it (a CI gate). A record file that can't be read is
//! reported and counted, never fatal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use understudy_matcher::parity::{DiffKind, ParityRecord};

use crate::collect::PARITY_DIR;

/// The JSON report's format name; bumped only on incompatible changes.
pub const FORMAT: &str = "understudy.parity-report/v1";

/// The exit status when the parity rate is under `--min-parity` (or there is no record to rate).
pub const EXIT_UNDER_PARITY: u8 = 3;

#[derive(Args)]
pub struct ParityReportArgs {
    /// The collector's output directory (its `.parity/` records are read), or a directory of records.
    pub dir: PathBuf,
    /// Print the report as JSON (format understudy.parity-report/v1, see docs/parity.md).
    #[arg(long)]
    pub json: bool,
    /// Exit with status 3 when the parity rate (matched / records) is under this fraction, or when there is
    /// no record.
    #[arg(long, value_name = "FRACTION", value_parser = fraction)]
    pub min_parity: Option<f64>,
    /// How many of the most frequent drifts to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub worst: usize,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction from 0 to 1 (0.95 is 95%)")),
    }
}

/// The totals of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub records: u64,
    pub matched: u64,
    /// matched / records; `null` without records.
    pub rate: Option<f64>,
    /// Record files that could not be read (not in `records`).
    pub unreadable: u64,
}

/// Parity of one provider, operation, model and environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub provider: String,
    pub operation: String,
    pub model: Option<String>,
    pub env: String,
    pub records: u64,
    pub matched: u64,
    pub rate: f64,
}

/// A differing path and kind, with how many records show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drift {
    pub path: String,
    pub kind: DiffKind,
    /// Records with this difference.
    pub count: u64,
    pub example_key: String,
    pub example_asset: Option<String>,
    /// What the example expected and got there.
    pub example_expected: Option<String>,
    pub example_live: Option<String>,
}

/// A record file that could not be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unreadable {
    pub file: String,
    pub error: String,
}

/// The report (`--json` prints it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub format: &'static str,
    pub dir: String,
    pub totals: Totals,
    pub rows: Vec<Row>,
    /// The most frequent drifts first (at most `--worst`).
    pub drifts: Vec<Drift>,
    pub unreadable: Vec<Unreadable>,
    pub min_parity: Option<f64>,
    /// False when the rate is under `min_parity` (or there is no record and `min_parity` is set).
    pub passed: bool,
}

/// The record files a directory holds: everything under `DIR/.parity/`, and the `*.json` files directly in
/// DIR. Sorted, so examples and ties are stable.
fn record_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let json = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(d).with_context(|| format!("cannot read {}", d.display()))? {
            let p = e?.path();
            if p.is_file() && p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    };
    let sub = dir.join(PARITY_DIR);
    let records = if sub.is_dir() { json(&sub)? } else { Vec::new() };
    Ok((records, json(dir)?))
}

/// Reads the records of `dir`. Files under `.parity/` must be records; a JSON file directly in DIR is one
/// when its `format` says so (an asset beside them is not a record) and unreadable when it is not JSON.
pub fn read(dir: &Path) -> Result<(Vec<ParityRecord>, Vec<Unreadable>)> {
    let (in_sub, in_dir) = record_files(dir)?;
    let (mut records, mut bad) = (Vec::new(), Vec::new());
    let mut unreadable = |file: &Path, error: String| bad.push(Unreadable { file: file.display().to_string(), error });
    for (f, must) in in_sub.iter().map(|f| (f, true)).chain(in_dir.iter().map(|f| (f, false))) {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                unreadable(f, e.to_string());
                continue;
            }
        };
        if !must {
            match serde_json::from_str::<Value>(&text) {
                Err(e) => {
                    unreadable(f, format!("not JSON: {e}"));
                    continue;
                }
                Ok(v)
                    if !v
                        .get("format")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s.starts_with("understudy.parity/")) =>
                {
                    continue;
                }
                Ok(_) => {}
            }
        }
        match ParityRecord::parse(&text) {
            Ok(r) => records.push(r),
            Err(e) => unreadable(f, e),
        }
    }
    Ok((records, bad))
}

fn rate(matched: u64, records: u64) -> f64 {
    if records == 0 {
        return 0.0;
    }
    matched as f64 / records as f64
}

/// Provider, operation, model, environment.
type RowKey = (String, String, Option<String>, String);

/// Builds the report of some records.
pub fn build(
    dir: &Path,
    records: &[ParityRecord],
    unreadable: Vec<Unreadable>,
    min: Option<f64>,
    worst: usize,
) -> Report {
    let mut rows: BTreeMap<RowKey, (u64, u64)> = BTreeMap::new();
    let mut drifts: BTreeMap<(String, DiffKind), Drift> = BTreeMap::new();
    let matched = records.iter().filter(|r| r.verdict.matched).count() as u64;
    for r in records {
        let row =
            rows.entry((r.provider.clone(), r.operation.clone(), r.model.clone(), r.env.clone())).or_insert((0, 0));
        row.0 += 1;
        row.1 += u64::from(r.verdict.matched);
        let mut seen = std::collections::BTreeSet::new();
        for d in &r.verdict.diffs {
            if !seen.insert((d.path.clone(), d.kind)) {
                continue;
            }
            drifts.entry((d.path.clone(), d.kind)).and_modify(|x| x.count += 1).or_insert_with(|| Drift {
                path: d.path.clone(),
                kind: d.kind,
                count: 1,
                example_key: r.key.clone(),
                example_asset: r.asset.clone(),
                example_expected: d.expected.clone(),
                example_live: d.live.clone(),
            });
        }
    }
    let mut drifts: Vec<Drift> = drifts.into_values().collect();
    drifts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)).then(a.kind.cmp(&b.kind)));
    drifts.truncate(worst);
    let total = records.len() as u64;
    let totals = Totals {
        records: total,
        matched,
        rate: (total > 0).then(|| rate(matched, total)),
        unreadable: unreadable.len() as u64,
    };
    let passed = match (min, totals.rate) {
        (None, _) => true,
        (Some(min), Some(r)) => r >= min,
        (Some(_), None) => false,
    };
    Report {
        format: FORMAT,
        dir: dir.display().to_string(),
        totals,
        rows: rows
            .into_iter()
            .map(|((provider, operation, model, env), (n, m))| Row {
                provider,
                operation,
                model,
                env,
                records: n,
                matched: m,
                rate: rate(m, n),
            })
            .collect(),
        drifts,
        unreadable,
        min_parity: min,
        passed,
    }
}

fn percent(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

/// The report for people.
pub fn text(r: &Report) -> String {
    let mut s = String::new();
    let t = &r.totals;
    let _ = match t.rate {
        Some(rate) => {
            writeln!(s, "Parity: {}/{} records matched ({}) in {}", t.matched, t.records, percent(rate), r.dir)
        }
        None => writeln!(s, "Parity: no parity record in {} (nor in its {PARITY_DIR}/)", r.dir),
    };
    if !r.rows.is_empty() {
        let table: Vec<[String; 6]> = r
            .rows
            .iter()
            .map(|x| {
                [
                    x.provider.clone(),
                    x.operation.clone(),
                    x.model.clone().unwrap_or_else(|| "-".into()),
                    x.env.clone(),
                    format!("{}/{}", x.matched, x.records),
                    percent(x.rate),
                ]
            })
            .collect();
        let _ = writeln!(s);
        write_table(&mut s, ["PROVIDER", "OPERATION", "MODEL", "ENV", "MATCHED", "RATE"], &table);
    }
    if !r.drifts.is_empty() {
        let _ = writeln!(s, "\nWorst drifts:");
        let table: Vec<[String; 6]> = r
            .drifts
            .iter()
            .map(|d| {
                let path = if d.path.is_empty() { "(whole answer)".to_string() } else { d.path.clone() };
                let was = format!(
                    "{} -> {}",
                    d.example_expected.as_deref().unwrap_or("(absent)"),
                    d.example_live.as_deref().unwrap_or("(absent)")
                );
                let key: String = d.example_key.chars().take(12).collect();
                [
                    d.count.to_string(),
                    d.kind.name().into(),
                    path,
                    was,
                    key,
                    d.example_asset.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        write_table(&mut s, ["RECORDS", "KIND", "PATH", "EXPECTED -> LIVE", "KEY", "ASSET"], &table);
    }
    if !r.unreadable.is_empty() {
        let _ = writeln!(s, "\n{} record file(s) could not be read:", r.unreadable.len());
        for u in &r.unreadable {
            let _ = writeln!(s, "  {}: {}", u.file, u.error);
        }
    }
    if let Some(min) = r.min_parity {
        let _ = writeln!(
            s,
            "\n{}: parity {} against --min-parity {}",
            if r.passed { "PASS" } else { "FAIL" },
            t.rate.map_or_else(|| "unknown (no record)".into(), percent),
            percent(min)
        );
    }
    s
}

fn write_table<const N: usize>(s: &mut String, head: [&str; N], rows: &[[String; N]]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count().min(60));
        }
    }
    let line = |s: &mut String, cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| {
                let c: String = c.chars().take(60).collect();
                format!("{c:<w$}")
            })
            .collect();
        let _ = writeln!(s, "{}", padded.join("  ").trim_end());
    };
    line(s, head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(s, r.to_vec());
    }
}

/// `understudy parity-report`: 0, [`EXIT_UNDER_PARITY`] under `--min-parity`, 1 when DIR can't be read.
pub fn main(a: ParityReportArgs) -> ExitCode {
    let report = read(&a.dir).map(|(records, bad)| build(&a.dir, &records, bad, a.min_parity, a.worst));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("understudy: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if a.json {
        // The text report lists them itself.
        for u in &report.unreadable {
            eprintln!("understudy parity-report: warning: {}: {}", u.file, u.error);
        }
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("understudy: error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", text(&report));
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNDER_PARITY)
    }
}

/// Records made by the real comparator, for the tests of the report and the collector.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
pub(crate) mod samples {
    use serde_json::{json, Value};
    use understudy_matcher::parity::{Observed, ParityConfig, ParityRecord, PARITY_FORMAT};
    use understudy_matcher::{Operation, Route};

    pub fn chat(finish: &str, usage: bool) -> Value {
        let mut v = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris.", "refusal": null, "annotations": []},
                "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}});
        if !usage {
            v.as_object_mut().unwrap().remove("usage");
        }
        v
    }

    /// The record of comparing `expected` with `live` on `op`.
    pub fn record(op: Operation, model: &str, key: &str, expected: &Value, live: &Value, at_ms: u64) -> ParityRecord {
        let route = Route::of(op);
        let (e, l) = (serde_json::to_vec(expected).unwrap(), serde_json::to_vec(live).unwrap());
        let ok = |body| Observed { status: 200, content_type: Some("application/json"), body };
        let verdict = ParityConfig::default().compile().unwrap().compare(&route, ok(&e), ok(&l));
        ParityRecord {
            format: PARITY_FORMAT.into(),
            key: key.into(),
            asset: Some(format!("assets/{key}.json#0")),
            provider: route.provider.into(),
            operation: op.name().into(),
            model: Some(model.into()),
            env: "staging".into(),
            at_ms,
            verdict,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::samples::{chat, record};
    use super::*;
    use serde_json::json;
    use understudy_matcher::Operation;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("understudy-parity-report-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join(PARITY_DIR)).unwrap();
        d
    }

    fn write(dir: &Path, name: &str, r: &ParityRecord) {
        std::fs::write(dir.join(name), serde_json::to_string(r).unwrap()).unwrap();
    }

    /// 4 chat records on gpt-4o-mini (2 match, one stops for another reason, one lost its usage), 2 embeddings
    /// records (one of another dimension).
    fn fixture(dir: &Path) {
        let sub = dir.join(PARITY_DIR);
        let ok = chat("stop", true);
        write(&sub, "a.json", &record(Operation::ChatCompletions, "gpt-4o-mini", "k1", &ok, &ok, 1));
        write(&sub, "b.json", &record(Operation::ChatCompletions, "gpt-4o-mini", "k2", &ok, &chat("stop", true), 2));
        write(&sub, "c.json", &record(Operation::ChatCompletions, "gpt-4o-mini", "k3", &ok, &chat("length", true), 3));
        let both = record(Operation::ChatCompletions, "gpt-4o-mini", "k4", &ok, &chat("length", false), 4);
        write(&sub, "d.json", &both);
        let emb = |dims: usize| json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vec![0.5; dims]}], "usage": {"prompt_tokens": 1, "total_tokens": 1}});
        write(&sub, "e.json", &record(Operation::Embeddings, "text-embedding-3-small", "k5", &emb(4), &emb(4), 5));
        write(&sub, "f.json", &record(Operation::Embeddings, "text-embedding-3-small", "k6", &emb(4), &emb(8), 6));
    }

    #[test]
    fn rates_per_operation_and_model_and_the_worst_drifts() {
        let dir = tmp("rates");
        fixture(&dir);
        let (records, bad) = read(&dir).unwrap();
        assert_eq!((records.len(), bad.len()), (6, 0));
        let r = build(&dir, &records, bad, None, 10);
        assert_eq!(r.totals, Totals { records: 6, matched: 3, rate: Some(0.5), unreadable: 0 });
        let rows: Vec<_> =
            r.rows.iter().map(|x| (x.operation.as_str(), x.model.as_deref(), x.records, x.matched)).collect();
        assert_eq!(
            rows,
            [
                ("openai.chat_completions", Some("gpt-4o-mini"), 4, 2),
                ("openai.embeddings", Some("text-embedding-3-small"), 2, 1)
            ]
        );
        let drifts: Vec<_> =
            r.drifts.iter().map(|d| (d.path.as_str(), d.kind, d.count, d.example_key.as_str())).collect();
        assert_eq!(
            drifts,
            [
                ("/choices/0/finish_reason", DiffKind::FinishReason, 2, "k3"),
                ("/data/0/embedding", DiffKind::EmbeddingDimension, 1, "k6"),
                ("/usage", DiffKind::UsageMissing, 1, "k4"),
            ]
        );
        assert_eq!(r.drifts[0].example_asset.as_deref(), Some("assets/k3.json#0"));
        assert_eq!(
            (r.drifts[0].example_expected.as_deref(), r.drifts[0].example_live.as_deref()),
            (Some("stop"), Some("length"))
        );
        assert!(r.passed);
        let t = text(&r);
        assert!(t.starts_with("Parity: 3/6 records matched (50.0%)"), "{t}");
        assert!(t.contains("/choices/0/finish_reason"), "{t}");
        // --worst limits the list; the most frequent stays.
        let r = build(&dir, &records, Vec::new(), None, 1);
        assert_eq!(r.drifts.len(), 1);
        assert_eq!(r.drifts[0].count, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_gate_fails_under_the_minimum_and_without_records() {
        let dir = tmp("gate");
        fixture(&dir);
        let (records, _) = read(&dir).unwrap();
        assert!(build(&dir, &records, Vec::new(), Some(0.5), 10).passed);
        let under = build(&dir, &records, Vec::new(), Some(0.51), 10);
        assert!(!under.passed);
        assert!(text(&under).contains("FAIL: parity 50.0% against --min-parity 51.0%"), "{}", text(&under));
        let empty = tmp("gate-empty");
        let (none, _) = read(&empty).unwrap();
        let r = build(&empty, &none, Vec::new(), Some(0.0), 10);
        assert_eq!((r.totals.rate, r.passed), (None, false));
        assert!(build(&empty, &none, Vec::new(), None, 10).passed);
        assert!(fraction("1.5").is_err() && fraction("x").is_err() && fraction("0.95").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn unreadable_files_are_counted_and_assets_beside_records_are_not_records() {
        let dir = tmp("bad");
        fixture(&dir);
        std::fs::write(dir.join(PARITY_DIR).join("cut.json"), "{\"format\": \"understudy.parity/v1\", \"key\":")
            .unwrap();
        std::fs::write(dir.join(PARITY_DIR).join("other.json"), r#"{"format": "understudy.capture/v1"}"#).unwrap();
        // An asset at the top of an assets directory is skipped; a record there is read; broken JSON is reported.
        std::fs::write(dir.join("asset.json"), r#"{"request": {"path": "/v1/chat/completions", "body": {}}}"#).unwrap();
        let top = record(Operation::ChatCompletions, "gpt-4o-mini", "k7", &chat("stop", true), &chat("stop", true), 7);
        write(&dir, "top.json", &top);
        std::fs::write(dir.join("broken.json"), "{").unwrap();
        let (records, bad) = read(&dir).unwrap();
        assert_eq!(records.len(), 7);
        let files: Vec<String> =
            bad.iter().map(|u| Path::new(&u.file).file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(files, ["cut.json", "other.json", "broken.json"]);
        assert!(bad[1].error.contains("format"), "{:?}", bad[1]);
        let r = build(&dir, &records, bad, Some(0.5), 10);
        assert_eq!((r.totals.records, r.totals.matched, r.totals.unreadable), (7, 4, 3));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["format"], FORMAT);
        assert_eq!(j["totals"]["rate"], json!(4.0 / 7.0));
        assert_eq!(j["drifts"][0]["kind"], "finish_reason");
        assert_eq!(j["rows"][0]["env"], "staging");
        assert!(read(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
