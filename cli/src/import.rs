//! `understudy import FILE... --to DIR`: traffic people already captured, turned into assets. Reads VCR.py /
//! pytest-recording cassettes (YAML; bodies as text, JSON, SSE or `!!binary`, gzip/deflate-encoded answers
//! inflated) and HAR 1.2 files (`postData.text`, `content.text`, base64 bodies), telling them apart by content.
//! Every LLM exchange goes through the recorder the filter uses (same key, redaction, whole-stream checks) and
//! into the collector's store (same validation, names and deduplication); other entries are skipped and
//! counted. A capture id derived from the exchange itself makes a repeated import of the same file a no-op.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Args;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use understudy_matcher::record::{CaptureDoc, Mode, Recorder};
use understudy_matcher::{classify, Normalizer};
use yaml_rust2::parser::{Event, EventReceiver, Parser, Tag};
use yaml_rust2::scanner::TScalarStyle;

use crate::collect::{OnRepeat, Store, Stored};

/// `understudy import`.
#[derive(Args)]
pub struct ImportArgs {
    /// VCR.py / pytest-recording cassettes (YAML) and HAR 1.2 files, told apart by their content.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Assets directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Normalization settings (JSON), as for `bundle` and `up`.
    #[arg(long)]
    pub normalization: Option<PathBuf>,
    /// Record settings (JSON): the redactions applied to every imported exchange.
    #[arg(long, value_name = "FILE")]
    pub record_config: Option<PathBuf>,
    /// What an exchange whose request already has an asset does.
    #[arg(long, value_enum, default_value = "keep-first")]
    pub on_repeat: OnRepeat,
}

/// One request and its answer, as a capture file holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    pub method: String,
    /// The path and query, without scheme and host.
    pub path: String,
    pub request: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The kinds of file `import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Har,
    Vcr,
}

/// Reads a capture file into its exchanges; an exchange that can't be read is an `Err` naming it (its index),
/// never the whole file.
pub fn read(text: &str, name: &str) -> Result<(Kind, Vec<Result<Exchange, String>>)> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
            if let Some(entries) = v.pointer("/log/entries").and_then(Value::as_array) {
                return Ok((Kind::Har, entries.iter().enumerate().map(|(i, e)| har_entry(e, i)).collect()));
            }
            if let Some(items) = v.get("interactions").and_then(Value::as_array) {
                return Ok((Kind::Vcr, items.iter().enumerate().map(|(i, e)| vcr_interaction(e, i)).collect()));
            }
        }
    }
    let doc = yaml_to_json(text).with_context(|| format!("{name}: neither a HAR file nor a YAML cassette"))?;
    let Some(items) = doc.get("interactions").and_then(Value::as_array) else {
        bail!("{name}: not a HAR 1.2 file (log.entries) or a VCR cassette (interactions)");
    };
    Ok((Kind::Vcr, items.iter().enumerate().map(|(i, e)| vcr_interaction(e, i)).collect()))
}

/// `https://host/path?q` → `/path?q`.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest.get(i..).unwrap_or("/").to_string(),
        None => "/".into(),
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn har_entry(e: &Value, i: usize) -> Result<Exchange, String> {
    let at = |what: &str| format!("entry {i}: {what}");
    let method = str_at(e, "/request/method").ok_or_else(|| at("no request.method"))?.to_string();
    let url = str_at(e, "/request/url").ok_or_else(|| at("no request.url"))?;
    let request = har_body(e.pointer("/request/postData")).map_err(|m| at(&m))?;
    let status = e.pointer("/response/status").and_then(Value::as_u64).unwrap_or(0);
    let headers: Vec<(String, String)> = e
        .pointer("/response/headers")
        .and_then(Value::as_array)
        .map(|hs| {
            hs.iter()
                .filter_map(|h| Some((h.get("name")?.as_str()?.to_string(), h.get("value")?.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let body = har_body(e.pointer("/response/content")).map_err(|m| at(&m))?;
    // HAR's content.text is already decoded (browsers store the inflated body), whatever content-encoding says.
    let headers = headers.into_iter().filter(|(k, _)| !k.eq_ignore_ascii_case("content-encoding")).collect();
    Ok(Exchange { method, path: path_of(url), request, status: u16::try_from(status).unwrap_or(0), headers, body })
}

/// `postData` / `content`: `text`, base64 when `encoding` says so.
fn har_body(v: Option<&Value>) -> Result<Vec<u8>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let text = v.get("text").and_then(Value::as_str).unwrap_or_default();
    match v.get("encoding").and_then(Value::as_str) {
        Some(e) if e.eq_ignore_ascii_case("base64") => base64::engine::general_purpose::STANDARD
            .decode(text.split_whitespace().collect::<String>())
            .map_err(|e| format!("a base64 body that does not decode: {e}")),
        _ => Ok(text.as_bytes().to_vec()),
    }
}

/// A cassette body: a string, `null`, `{"string": ...}`, or a `!!binary` scalar (see [`yaml_to_json`]).
fn vcr_body(v: Option<&Value>) -> Result<Vec<u8>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(Value::Object(m)) if m.contains_key(BINARY) => {
            let b64: String = m.get(BINARY).and_then(Value::as_str).unwrap_or_default().split_whitespace().collect();
            base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("!!binary body: {e}"))
        }
        Some(Value::Object(m)) => vcr_body(m.get("string")),
        Some(other) => Ok(other.to_string().into_bytes()),
    }
}

fn vcr_interaction(e: &Value, i: usize) -> Result<Exchange, String> {
    let at = |what: &str| format!("interaction {i}: {what}");
    let method = str_at(e, "/request/method").ok_or_else(|| at("no request.method"))?.to_string();
    let uri = str_at(e, "/request/uri").ok_or_else(|| at("no request.uri"))?;
    let request = vcr_body(e.pointer("/request/body")).map_err(|m| at(&m))?;
    let status = e.pointer("/response/status/code").and_then(Value::as_u64).unwrap_or(0);
    let mut headers = Vec::new();
    if let Some(Value::Object(hs)) = e.pointer("/response/headers") {
        for (k, v) in hs {
            match v {
                Value::Array(vals) => {
                    headers.extend(vals.iter().filter_map(Value::as_str).map(|s| (k.clone(), s.to_string())))
                }
                Value::String(s) => headers.push((k.clone(), s.clone())),
                _ => {}
            }
        }
    }
    let mut body = vcr_body(e.pointer("/response/body")).map_err(|m| at(&m))?;
    let encoding = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-encoding"))
        .map(|(_, v)| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") | Some("") => {}
        Some("gzip") => body = inflate(flate2::read::GzDecoder::new(&body[..])).map_err(|m| at(&m))?,
        Some("deflate") => body = inflate(flate2::read::ZlibDecoder::new(&body[..])).map_err(|m| at(&m))?,
        Some(other) => return Err(at(&format!("the answer is compressed with {other}, which import can't inflate"))),
    }
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-encoding"));
    Ok(Exchange { method, path: path_of(uri), request, status: u16::try_from(status).unwrap_or(0), headers, body })
}

/// Most bytes an inflated answer may have (a capture's limit).
fn inflate(mut r: impl Read) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let cap = understudy_matcher::limits::MAX_CAPTURE_BYTES as u64;
    r.by_ref()
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("the compressed answer does not inflate: {e}"))?;
    if out.len() as u64 > cap {
        return Err(format!("the answer inflates past {} MiB (MAX_CAPTURE_BYTES)", cap >> 20));
    }
    Ok(out)
}

/// The key marking a `!!binary` scalar in [`yaml_to_json`]'s output.
const BINARY: &str = "$understudy_binary";

/// YAML → JSON, keeping what a cassette needs: `!!binary` scalars become `{"$understudy_binary": base64}`
/// (a plain YAML loader would return their base64 text as if it were the body), anchors and aliases resolve.
pub fn yaml_to_json(text: &str) -> Result<Value> {
    let mut b = Builder::default();
    Parser::new_from_str(text).load(&mut b, false).map_err(|e| anyhow::anyhow!("YAML: {e}"))?;
    b.root.take().context("an empty YAML document")
}

enum Frame {
    Seq(Vec<Value>, usize),
    Map(Map<String, Value>, Option<String>, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: BTreeMap<usize, Value>,
    root: Option<Value>,
}

impl Builder {
    fn put(&mut self, v: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, v.clone());
        }
        match self.stack.last_mut() {
            Some(Frame::Seq(items, _)) => items.push(v),
            Some(Frame::Map(m, key, _)) => match key.take() {
                Some(k) => {
                    m.insert(k, v);
                }
                None => {
                    *key = Some(match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                }
            },
            None => self.root = Some(v),
        }
    }
}

fn scalar(v: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(t) = tag {
        if t.suffix == "binary" {
            let mut m = Map::new();
            m.insert(BINARY.into(), Value::String(v));
            return Value::Object(m);
        }
        if t.suffix == "str" {
            return Value::String(v);
        }
    }
    if style != TScalarStyle::Plain {
        return Value::String(v);
    }
    match v.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        s => match s.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(v),
        },
    }
}

impl EventReceiver for Builder {
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Scalar(v, style, anchor, tag) => self.put(scalar(v, style, tag.as_ref()), anchor),
            Event::Alias(id) => {
                let v = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                self.put(v, 0);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), anchor)),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map(Map::new(), None, anchor)),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq(items, anchor)) => self.put(Value::Array(items), anchor),
                Some(Frame::Map(m, _, anchor)) => self.put(Value::Object(m), anchor),
                None => {}
            },
            _ => {}
        }
    }
}

/// What an import came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: usize,
    pub recorded: usize,
    pub deduplicated: usize,
    pub already: usize,
    /// Not LLM calls (other paths, GET, ...).
    pub skipped: usize,
    /// 5xx/429 answers and other answers not stored on purpose, with why.
    pub not_stored: Vec<String>,
    /// LLM exchanges that could not be imported, with why.
    pub failed: Vec<String>,
}

/// Imports the exchanges of one file into `store`.
pub fn import_into(
    store: &mut Store,
    recorder: &Recorder,
    text: &str,
    name: &str,
    report: &mut Report,
) -> Result<Kind> {
    let (kind, exchanges) = read(text, name)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    for (i, x) in exchanges.into_iter().enumerate() {
        report.entries += 1;
        let x = match x {
            Ok(x) => x,
            Err(e) => {
                report.failed.push(format!("{name}: {e}"));
                continue;
            }
        };
        let Some(route) = classify(&x.method, &x.path) else {
            report.skipped += 1;
            continue;
        };
        let id = exchange_id(&x);
        let delivery = recorder.exchange(&route, &x.path, &x.request, x.status, x.headers, &x.body, now, id);
        let delivery = match delivery {
            Ok(d) => d,
            Err(skip) if skip.stat() == "record_failed" => {
                report.failed.push(format!("{name}: entry {i} ({}): {skip}", route.operation));
                continue;
            }
            Err(skip) => {
                report.not_stored.push(format!("{name}: entry {i} ({}): {skip}", route.operation));
                continue;
            }
        };
        let text = String::from_utf8_lossy(&delivery.body);
        let doc = match CaptureDoc::parse(&text, store.normalizer()) {
            Ok(d) => d,
            Err(e) => {
                report.failed.push(format!("{name}: entry {i}: {e}"));
                continue;
            }
        };
        match store.put(doc)? {
            Stored::Written(_) => report.recorded += 1,
            Stored::Deduplicated(_) => report.deduplicated += 1,
            Stored::Redelivered(_) => report.already += 1,
        }
    }
    Ok(kind)
}

/// A capture id from the exchange's own content: importing the same traffic twice writes nothing new.
fn exchange_id(x: &Exchange) -> String {
    let mut h = Sha256::new();
    for part in [x.method.as_bytes(), x.path.as_bytes(), &x.request, x.status.to_string().as_bytes(), &x.body] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("imp-{}", hex.get(..16).unwrap_or_default())
}

/// `understudy import`.
pub fn run(a: ImportArgs) -> Result<()> {
    let norm = crate::bundle::load_normalization(a.normalization.as_deref())?;
    let record = crate::RecordArgs { record_config: a.record_config.clone(), ..Default::default() }.config()?;
    let recorder = Recorder::compile(Mode::Record, &record, &norm)?;
    let (mut store, problems) = Store::open(&a.to, Normalizer::compile(&norm)?, a.on_repeat)?;
    for p in &problems {
        eprintln!("understudy import: warning: {p} (left alone)");
    }
    let mut report = Report::default();
    for f in &a.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let name = f.display().to_string();
        let kind = import_into(&mut store, &recorder, &text, &name, &mut report)?;
        eprintln!("understudy import: {name}: {}", if kind == Kind::Har { "HAR" } else { "VCR cassette" });
    }
    for n in &report.not_stored {
        eprintln!("  not stored: {n}");
    }
    for f in &report.failed {
        eprintln!("  FAILED: {f}");
    }
    println!(
        "Imported {} of {} entries into {}: {} deduplicated, {} already there, {} not LLM calls (skipped), {} not \
         stored (5xx/429, cut short), {} failed",
        report.recorded,
        report.entries,
        store.dir().display(),
        report.deduplicated,
        report.already,
        report.skipped,
        report.not_stored.len(),
        report.failed.len()
    );
    if !report.failed.is_empty() {
        bail!("{} LLM exchange(s) could not be imported (listed above)", report.failed.len());
    }
    Ok(())
}

/// The files of a directory tree, for tests.
#[cfg(test)]
fn all_files(dir: &std::path::Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use understudy_matcher::record::RecordConfig;
    use understudy_matcher::NormalizationConfig;

    const CASSETTE: &str = include_str!("../tests/fixtures/openai_cassette.yaml");
    const HAR: &str = include_str!("../tests/fixtures/session.har");
    const SECRETS: &[&str] = &["FIXTURESECRET42", "FIXTUREORG", "FIXTURECOOKIE", "FIXTUREKEY"];

    fn setup(name: &str) -> (PathBuf, Store, Recorder) {
        let dir = std::env::temp_dir().join(format!("understudy-import-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let norm: NormalizationConfig = serde_json::from_value(serde_json::json!({
            "scrubbers": [{"pattern": "sk-live-[A-Z0-9]+", "placeholder": "<key>"}]
        }))
        .unwrap();
        let cfg: RecordConfig = serde_json::from_value(serde_json::json!({
            "redact_patterns": [{"pattern": "sk-live-[A-Z0-9]+", "placeholder": "<key>"}]
        }))
        .unwrap();
        let recorder = Recorder::compile(Mode::Record, &cfg, &norm).unwrap();
        let store = Store::open(&dir, Normalizer::compile(&norm).unwrap(), OnRepeat::KeepFirst).unwrap().0;
        (dir, store, recorder)
    }

    fn no_secret_in(dir: &std::path::Path) {
        for f in all_files(dir) {
            let text = std::fs::read_to_string(&f).unwrap();
            for s in SECRETS {
                assert!(!text.contains(s), "{s} in {}", f.display());
            }
        }
    }

    #[test]
    fn binary_scalars_survive_yaml_and_plain_ones_are_typed() {
        let v = yaml_to_json("a: !!binary |\n  aGk=\nb: 3\nc: null\nd: 'x: y'\ne: &x [1, two]\nf: *x\n").unwrap();
        assert_eq!(v["a"][BINARY], "aGk=\n");
        assert_eq!((v["b"].as_i64(), v["c"].is_null(), v["d"].as_str()), (Some(3), true, Some("x: y")));
        assert_eq!(v["f"], serde_json::json!([1, "two"]));
    }

    #[test]
    fn a_vcr_cassette_imports_with_gzip_bodies_streams_and_non_llm_entries_skipped() {
        let (dir, mut store, rec) = setup("vcr");
        let mut report = Report::default();
        assert_eq!(import_into(&mut store, &rec, CASSETTE, "c.yaml", &mut report).unwrap(), Kind::Vcr);
        assert_eq!((report.entries, report.recorded, report.skipped), (4, 2, 1), "{report:?}");
        assert_eq!(report.not_stored.len(), 1, "the 503 is not stored: {report:?}");
        assert!(report.failed.is_empty(), "{report:?}");
        let files = all_files(&dir);
        let chat = files.iter().find(|f| f.to_string_lossy().contains("capital-of-france")).unwrap();
        let asset: Value = serde_json::from_str(&std::fs::read_to_string(chat).unwrap()).unwrap();
        assert_eq!(asset["response"]["body"]["choices"][0]["message"]["content"], "The capital of France is Paris.");
        assert_eq!(
            asset["request"]["body"]["messages"][0]["content"],
            "What is the capital of France? My key is <key>"
        );
        assert!(asset["response"]["headers"].get("content-encoding").is_none());
        let stream = files.iter().find(|f| f.to_string_lossy().contains("count-to-three")).unwrap();
        let asset: Value = serde_json::from_str(&std::fs::read_to_string(stream).unwrap()).unwrap();
        assert!(asset["response"]["body_text"].as_str().unwrap().ends_with("data: [DONE]\n\n"));
        no_secret_in(&dir);
        // The bundler takes what import wrote; importing again writes nothing.
        crate::bundle::build(&dir, &NormalizationConfig { scrubbers: rec_scrubbers(), ..Default::default() }).unwrap();
        let mut again = Report::default();
        import_into(&mut store, &rec, CASSETTE, "c.yaml", &mut again).unwrap();
        assert_eq!((again.recorded, again.already), (0, 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn rec_scrubbers() -> Vec<understudy_matcher::ScrubberConfig> {
        vec![understudy_matcher::ScrubberConfig { pattern: "sk-live-[A-Z0-9]+".into(), placeholder: "<key>".into() }]
    }

    #[test]
    fn a_har_file_imports_base64_bodies_and_strips_query_credentials() {
        let (dir, mut store, rec) = setup("har");
        let mut report = Report::default();
        assert_eq!(import_into(&mut store, &rec, HAR, "s.har", &mut report).unwrap(), Kind::Har);
        assert_eq!((report.entries, report.recorded, report.skipped), (3, 2, 1), "{report:?}");
        let files = all_files(&dir);
        let names: Vec<String> = files.iter().map(|f| f.strip_prefix(&dir).unwrap().display().to_string()).collect();
        assert!(
            names.iter().any(|n| n.starts_with("anthropic.messages/claude-sonnet-4-5--say-hello-in-french--")),
            "{names:?}"
        );
        let gemini = files.iter().find(|f| f.to_string_lossy().contains("gemini.generate_content")).unwrap();
        let asset: Value = serde_json::from_str(&std::fs::read_to_string(gemini).unwrap()).unwrap();
        assert_eq!(asset["request"]["path"], "/v1beta/models/gemini-2.5-flash:generateContent");
        let msg = files.iter().find(|f| f.to_string_lossy().contains("anthropic")).unwrap();
        let asset: Value = serde_json::from_str(&std::fs::read_to_string(msg).unwrap()).unwrap();
        assert_eq!(asset["response"]["body"]["content"][0]["text"], "Bonjour !");
        no_secret_in(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn other_files_are_refused_with_a_clear_error() {
        let e = read("just: yaml\n", "x.yaml").unwrap_err().to_string();
        assert!(e.contains("not a HAR 1.2 file") && e.contains("x.yaml"), "{e}");
        assert!(read("{\"log\": 1", "y.json").is_err());
    }
}
