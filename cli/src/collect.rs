//! The collector: receives captures from the filter (`POST /v1/captures`, the `understudy.capture/v1`
//! document) and writes each as one pretty-printed asset file, in the public asset format, into an assets
//! directory. `understudy collect` runs it alone; `understudy up --mode record` runs it beside Envoy.
//!
//! Nothing acknowledged is lost: a capture is answered 2xx only once its file is on disk (written to a temporary
//! file, fsynced, renamed over, the directory fsynced). A repeated delivery of the same capture (the filter
//! retries when an answer is lost) is recognized by the capture id each recorded response keeps, also after a
//! restart (the ids are read back from the files), and acknowledged without a second write. Deliveries are
//! serialized per collector, so concurrent ones never interleave in a file. [`Store`] is shared with
//! `understudy import`, so imported traffic is named, validated and deduplicated the same way.
//!
//! Parity mode's comparisons (`POST /v1/parity`, an `understudy.parity/v1` record) are written the same way,
//! one file per record under `<out>/.parity/` (which asset listings skip), named by the key, the time and a
//! hash of the record, so a repeated delivery finds its file and is acknowledged without a second write.
//! `understudy parity-report` reads them.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::Value;
use sha2::{Digest, Sha256};
use understudy_matcher::parity::ParityRecord;
use understudy_matcher::record::{first_words, CaptureDoc};
use understudy_matcher::{classify, parse_asset_file, Asset, Normalizer};

/// What a capture whose key already has an asset does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OnRepeat {
    /// Keep the asset already there; the new capture is counted as deduplicated.
    #[default]
    KeepFirst,
    /// Replace the asset's response with the newest capture.
    KeepLatest,
    /// Append the capture to the asset's `responses` (replayed in order, then the last one).
    Sequence,
}

/// `understudy collect`.
#[derive(Args)]
pub struct CollectArgs {
    /// Assets directory the recordings are written into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Port on 127.0.0.1 (0 picks a free one; the chosen one is printed).
    #[arg(long, default_value_t = 10100)]
    pub port: u16,
    /// What a capture whose request already has an asset does.
    #[arg(long, value_enum, default_value = "keep-first")]
    pub on_repeat: OnRepeat,
    /// Normalization settings (JSON), the same as the filter's: keys are checked against them.
    #[arg(long)]
    pub normalization: Option<PathBuf>,
}

/// What became of one capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A new asset file, or a response appended to or replacing an asset's.
    Written(PathBuf),
    /// Its key already has an asset (`keep-first`, or an asset file with several assets): not written.
    Deduplicated(PathBuf),
    /// This capture is already on disk (a repeated delivery).
    Redelivered(PathBuf),
}

/// Counts since the collector started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub recorded: u64,
    pub deduplicated: u64,
    pub redelivered: u64,
    /// Parity records written (repeated deliveries not counted again); left out of the JSON while 0, so a
    /// record-mode summary reads as before.
    #[serde(skip_serializing_if = "is_zero")]
    pub parity: u64,
    /// Captures refused (invalid, other normalization) or not written (disk errors).
    pub failed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The assets directory as the collector keeps it: every key's file and every capture id already on disk.
pub struct Store {
    dir: PathBuf,
    normalizer: Normalizer,
    on_repeat: OnRepeat,
    by_key: HashMap<String, PathBuf>,
    ids: HashMap<String, PathBuf>,
    names: HashSet<PathBuf>,
    pub counts: Counts,
}

impl Store {
    /// Reads what `dir` already holds (creating it if missing). Files that do not parse are reported and left
    /// alone.
    pub fn open(dir: &Path, normalizer: Normalizer, on_repeat: OnRepeat) -> Result<(Store, Vec<String>)> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let mut s = Store {
            dir: dir.clone(),
            normalizer,
            on_repeat,
            by_key: HashMap::new(),
            ids: HashMap::new(),
            names: HashSet::new(),
            counts: Counts::default(),
        };
        let mut problems = Vec::new();
        for f in crate::bundle::asset_files(&dir)? {
            s.names.insert(f.clone());
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("{}: {e}", f.display()));
                    continue;
                }
            };
            let parsed = match parse_asset_file(&text, &f.display().to_string()) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            for (_, a) in parsed {
                let Some(route) = classify(&a.request.method, &a.request.path) else { continue };
                let body = serde_json::to_vec(&a.request.body)?;
                if let Ok((key, _)) = s.normalizer.key(&route, &body) {
                    s.by_key.entry(key).or_insert_with(|| f.clone());
                }
                for r in a.all_responses() {
                    if let Some(rec) = &r.recorded {
                        s.ids.insert(rec.capture.clone(), f.clone());
                    }
                }
            }
        }
        Ok((s, problems))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The normalization keys are checked with.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// Stores one checked capture.
    pub fn put(&mut self, doc: CaptureDoc) -> Result<Stored> {
        if let Some(f) = self.ids.get(&doc.id) {
            self.counts.redelivered += 1;
            return Ok(Stored::Redelivered(f.clone()));
        }
        let Some(mut response) = doc.asset.response.clone() else { bail!("the capture has no response") };
        if let Some(rec) = response.recorded.as_mut() {
            rec.capture = doc.id.clone();
        }
        let stored = match self.by_key.get(&doc.key).cloned() {
            None => {
                let path = self.name_for(&doc);
                write_atomic(&path, &pretty(&serde_json::to_value(&doc.asset)?))?;
                self.by_key.insert(doc.key.clone(), path.clone());
                self.names.insert(path.clone());
                Stored::Written(path)
            }
            Some(path) if self.on_repeat == OnRepeat::KeepFirst => Stored::Deduplicated(path),
            Some(path) => {
                let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let mut assets = parse_asset_file(&text, &path.display().to_string())?;
                // A file with several assets is a person's: leave it alone.
                if assets.len() != 1 {
                    self.counts.deduplicated += 1;
                    return Ok(Stored::Deduplicated(path));
                }
                let Some((_, mut asset)) = assets.pop() else { bail!("{} holds no asset", path.display()) };
                merge(&mut asset, response, self.on_repeat);
                write_atomic(&path, &pretty(&serde_json::to_value(&asset)?))?;
                Stored::Written(path)
            }
        };
        match &stored {
            Stored::Written(p) => {
                self.counts.recorded += 1;
                self.ids.insert(doc.id, p.clone());
            }
            Stored::Deduplicated(_) => self.counts.deduplicated += 1,
            Stored::Redelivered(_) => {}
        }
        Ok(stored)
    }

    /// Stores one parity record, `text` as delivered (already checked with [`ParityRecord::parse`]).
    pub fn put_parity(&mut self, record: &ParityRecord, text: &str) -> Result<Stored> {
        let value: Value = serde_json::from_str(text)?;
        let path = self.dir.join(PARITY_DIR).join(parity_file_name(record, text));
        if path.is_file() {
            return Ok(Stored::Redelivered(path));
        }
        write_atomic(&path, &pretty(&value))?;
        self.counts.parity += 1;
        Ok(Stored::Written(path))
    }

    /// `<dir>/<operation>/<model>--<first words>--<key, 12 hex>.json`: a person finds a recording by what
    /// was asked; the key part keeps names unique.
    fn name_for(&self, doc: &CaptureDoc) -> PathBuf {
        let a = &doc.asset;
        let route = classify(&a.request.method, &a.request.path);
        let op = route.as_ref().map_or("unknown", |r| r.operation.name());
        let model = route.as_ref().and_then(|r| r.model_of(&a.request.body)).unwrap_or("no-model");
        let words = slug(&first_words(&a.request.body, 8), 48);
        let key: String = doc.key.chars().take(12).collect();
        let mut stem = slug(model, 40);
        if !words.is_empty() {
            stem = format!("{stem}--{words}");
        }
        let dir = self.dir.join(op);
        let mut path = dir.join(format!("{stem}--{key}.json"));
        let mut n = 2;
        while self.names.contains(&path) {
            path = dir.join(format!("{stem}--{key}-{n}.json"));
            n += 1;
        }
        path
    }
}

/// The directory of an assets directory that holds parity records (skipped when assets are listed).
pub const PARITY_DIR: &str = ".parity";

/// `<key, 16 chars>-<at_ms>-<sha256 of the record, 12 hex>.json`: the same record always gets the same name,
/// two records never one. The key is the sender's: only its letters and digits are used.
pub fn parity_file_name(record: &ParityRecord, text: &str) -> String {
    let mut key = slug(&record.key, 16);
    if key.is_empty() {
        key = "no-key".to_string();
    }
    let hash: String = Sha256::digest(text.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{key}-{}-{hash}.json", record.at_ms)
}

/// Adds a newer recording of an asset's request: replacing its answer, or appended to its `responses`.
fn merge(asset: &mut Asset, response: understudy_matcher::asset::AssetResponse, on_repeat: OnRepeat) {
    if on_repeat == OnRepeat::KeepLatest {
        asset.response = Some(response);
        asset.responses = None;
        return;
    }
    let mut all: Vec<_> = asset.response.take().into_iter().collect();
    all.extend(asset.responses.take().unwrap_or_default());
    all.push(response);
    asset.responses = Some(all);
}

/// Lower-case ASCII letters and digits, words joined by `-`, at most `max` characters.
pub fn slug(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            let sep = dash && !out.is_empty();
            if out.len() + usize::from(sep) >= max {
                break;
            }
            if sep {
                out.push('-');
            }
            dash = false;
            out.push(c);
        } else {
            dash = true;
        }
    }
    out
}

/// Writes `text` to `path` so that it is either absent or whole, and on disk before this returns: a temporary
/// file beside it, fsynced, renamed over `path`, then the directory fsynced (the rename itself is durable).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().context("a file path without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// JSON pretty-printed for people: two-space indentation, and arrays of numbers, booleans and nulls kept on one
/// line (an embedding vector or a stream's timing is one line, not thousands).
pub fn pretty(v: &Value) -> String {
    let mut out = String::new();
    write_pretty(v, 0, &mut out);
    out.push('\n');
    out
}

fn write_pretty(v: &Value, indent: usize, out: &mut String) {
    let pad = |n: usize, out: &mut String| out.extend(std::iter::repeat_n(' ', n));
    match v {
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Array(a) if a.iter().all(|x| !x.is_array() && !x.is_object() && !x.is_string()) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&x.to_string());
            }
            out.push(']');
        }
        Value::Array(a) => {
            out.push_str("[\n");
            for (i, x) in a.iter().enumerate() {
                pad(indent + 2, out);
                write_pretty(x, indent + 2, out);
                out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
            }
            pad(indent, out);
            out.push(']');
        }
        Value::Object(m) => {
            out.push_str("{\n");
            for (i, (k, x)) in m.iter().enumerate() {
                pad(indent + 2, out);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_pretty(x, indent + 2, out);
                out.push_str(if i + 1 < m.len() { ",\n" } else { "\n" });
            }
            pad(indent, out);
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Largest capture document accepted (the filter's capture limit, with room for base64 and JSON escaping).
const MAX_DOCUMENT: usize = 8 * understudy_matcher::limits::MAX_CAPTURE_BYTES;

/// Largest parity record accepted: a record holds at most `MAX_PARITY_DIFFS` short differences.
const MAX_PARITY_DOCUMENT: usize = 1 << 20;

/// A running collector.
pub struct Server {
    server: Arc<tiny_http::Server>,
    store: Arc<Mutex<Store>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub port: u16,
}

impl Server {
    /// Starts serving on 127.0.0.1:`port` with a few worker threads.
    pub fn start(store: Store, port: u16) -> Result<Server> {
        let server = tiny_http::Server::http(("127.0.0.1", port))
            .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or(port);
        let server = Arc::new(server);
        let store = Arc::new(Mutex::new(store));
        let threads = (0..4)
            .map(|_| {
                let (server, store) = (server.clone(), store.clone());
                std::thread::spawn(move || {
                    for request in server.incoming_requests() {
                        handle(request, &store);
                    }
                })
            })
            .collect();
        Ok(Server { server, store, threads, port })
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.store.lock().map(|s| s.counts).unwrap_or_default()
    }

    /// Stops accepting and waits for the deliveries being handled.
    pub fn stop(mut self) -> Counts {
        self.server.unblock();
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.counts()
    }
}

fn respond(request: tiny_http::Request, status: u16, body: Value) {
    let header = tiny_http::Header::from_bytes(&b"content-type"[..], &b"application/json"[..]);
    let mut response = tiny_http::Response::from_string(body.to_string()).with_status_code(status);
    if let Ok(h) = header {
        response.add_header(h);
    }
    let _ = request.respond(response);
}

fn handle(mut request: tiny_http::Request, store: &Mutex<Store>) {
    let path = request.url().split('?').next().unwrap_or_default().to_string();
    match (request.method(), path.as_str()) {
        (tiny_http::Method::Get, "/v1/status") => {
            let counts = store.lock().map(|s| s.counts).unwrap_or_default();
            respond(request, 200, serde_json::to_value(counts).unwrap_or(Value::Null));
        }
        (tiny_http::Method::Post, "/v1/captures") => {
            let mut body = Vec::new();
            let read = request.as_reader().take(MAX_DOCUMENT as u64 + 1).read_to_end(&mut body);
            if read.is_err() || body.len() > MAX_DOCUMENT {
                count_failed(store);
                return respond(request, 413, serde_json::json!({"error": "the capture is too large or unreadable"}));
            }
            let Ok(text) = String::from_utf8(body) else {
                count_failed(store);
                return respond(request, 400, serde_json::json!({"error": "the capture is not UTF-8"}));
            };
            let Ok(mut s) = store.lock() else {
                return respond(request, 500, serde_json::json!({"error": "the collector's store is unusable"}));
            };
            let doc = match CaptureDoc::parse(&text, &s.normalizer) {
                Ok(d) => d,
                Err(e) => {
                    s.counts.failed += 1;
                    eprintln!("understudy collect: refused a capture: {e}");
                    drop(s);
                    return respond(request, 422, serde_json::json!({"error": e.to_string()}));
                }
            };
            let id = doc.id.clone();
            match s.put(doc) {
                Ok(stored) => {
                    let (status, outcome, file) = match &stored {
                        Stored::Written(p) => (201, "recorded", p),
                        Stored::Deduplicated(p) => (200, "deduplicated", p),
                        Stored::Redelivered(p) => (200, "redelivered", p),
                    };
                    let file = file.strip_prefix(&s.dir).unwrap_or(file).display().to_string();
                    drop(s);
                    respond(request, status, serde_json::json!({"id": id, "outcome": outcome, "file": file}));
                }
                Err(e) => {
                    s.counts.failed += 1;
                    drop(s);
                    eprintln!("understudy collect: could not write capture {id}: {e:#}");
                    // Not on disk: the filter retries.
                    respond(request, 503, serde_json::json!({"error": format!("not written: {e:#}")}));
                }
            }
        }
        (tiny_http::Method::Post, "/v1/parity") => handle_parity(request, store),
        _ => {
            respond(request, 404, serde_json::json!({"error": "POST /v1/captures, POST /v1/parity or GET /v1/status"}))
        }
    }
}

/// `POST /v1/parity`: 201 once a new record is on disk, 200 for a record already there, 400 for what is not a
/// parity record, 413 over the size limit, 503 when it could not be written (the filter retries).
fn handle_parity(mut request: tiny_http::Request, store: &Mutex<Store>) {
    let mut body = Vec::new();
    let read = request.as_reader().take(MAX_PARITY_DOCUMENT as u64 + 1).read_to_end(&mut body);
    if read.is_err() || body.len() > MAX_PARITY_DOCUMENT {
        count_failed(store);
        let error = format!("the parity record is unreadable or larger than {MAX_PARITY_DOCUMENT} bytes");
        return respond(request, 413, serde_json::json!({ "error": error }));
    }
    let record = match std::str::from_utf8(&body)
        .map_err(|e| format!("not UTF-8: {e}"))
        .and_then(|t| ParityRecord::parse(t).map(|r| (r, t)))
    {
        Ok(r) => r,
        Err(e) => {
            count_failed(store);
            eprintln!("understudy collect: refused a parity record: {e}");
            return respond(request, 400, serde_json::json!({ "error": e }));
        }
    };
    let (record, text) = record;
    let Ok(mut s) = store.lock() else {
        return respond(request, 500, serde_json::json!({"error": "the collector's store is unusable"}));
    };
    match s.put_parity(&record, text) {
        Ok(stored) => {
            let (status, outcome, file) = match &stored {
                Stored::Written(p) => (201, "recorded", p),
                Stored::Deduplicated(p) | Stored::Redelivered(p) => (200, "redelivered", p),
            };
            let file = file.strip_prefix(&s.dir).unwrap_or(file).display().to_string();
            drop(s);
            respond(request, status, serde_json::json!({"key": record.key, "outcome": outcome, "file": file}));
        }
        Err(e) => {
            s.counts.failed += 1;
            drop(s);
            eprintln!("understudy collect: could not write the parity record of {}: {e:#}", record.key);
            respond(request, 503, serde_json::json!({"error": format!("not written: {e:#}")}));
        }
    }
}

fn count_failed(store: &Mutex<Store>) {
    if let Ok(mut s) = store.lock() {
        s.counts.failed += 1;
    }
}

/// One line for people: what the collector did.
pub fn report(c: &Counts, dir: &Path) -> String {
    format!(
        "{} recorded into {} ({} deduplicated, {} repeated deliveries, {} refused or not written){}",
        c.recorded,
        dir.display(),
        c.deduplicated,
        c.redelivered,
        c.failed,
        if c.parity > 0 { format!("; {} parity record(s) in {PARITY_DIR}", c.parity) } else { String::new() }
    )
}

/// `understudy collect`: serve until SIGINT/SIGTERM.
pub fn run(a: CollectArgs) -> Result<()> {
    let normalizer = Normalizer::compile(&crate::bundle::load_normalization(a.normalization.as_deref())?)?;
    let (store, problems) = Store::open(&a.out, normalizer, a.on_repeat)?;
    for p in &problems {
        eprintln!("understudy collect: warning: {p} (left alone)");
    }
    let dir = store.dir().to_path_buf();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let server = Server::start(store, a.port)?;
    println!("Understudy collector listening on http://127.0.0.1:{} writing {}", server.port, dir.display());
    let _ = std::io::stdout().flush();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let counts = server.stop();
    println!("Collector stopped: {}", report(&counts, &dir));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;
    use understudy_matcher::record::{Mode, RecordConfig, Recorder};
    use understudy_matcher::NormalizationConfig;

    fn capture(question: &str, answer: &str, id: &str) -> CaptureDoc {
        let rec = Recorder::compile(Mode::Record, &RecordConfig::default(), &NormalizationConfig::default()).unwrap();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let req = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]});
        let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]});
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        let d = rec
            .exchange(
                &route,
                "/v1/chat/completions",
                req.to_string().as_bytes(),
                200,
                headers,
                body.to_string().as_bytes(),
                0,
                id.into(),
            )
            .unwrap();
        CaptureDoc::parse(std::str::from_utf8(&d.body).unwrap(), &Normalizer::default()).unwrap()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("understudy-collect-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn store(dir: &Path, on_repeat: OnRepeat) -> Store {
        Store::open(dir, Normalizer::default(), on_repeat).unwrap().0
    }

    #[test]
    fn a_recording_is_named_for_its_operation_model_and_question_and_bundles() {
        let dir = tmp("name");
        let mut s = store(&dir, OnRepeat::KeepFirst);
        let Stored::Written(p) = s.put(capture("What is the capital of France?", "Paris.", "c1")).unwrap() else {
            panic!()
        };
        let rel = p.strip_prefix(s.dir()).unwrap().display().to_string();
        assert!(rel.starts_with("openai.chat_completions/gpt-4o-mini--what-is-the-capital-of-france--"), "{rel}");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("{\n  \"name\": \"What is the capital of France?\""), "{text}");
        let built = crate::bundle::build(&dir, &NormalizationConfig::default()).unwrap();
        assert_eq!(built.bundle.assets.len(), 1);
        assert!(!std::fs::read_dir(p.parent().unwrap()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn repeated_deliveries_are_idempotent_across_restarts_and_repeats_follow_on_repeat() {
        let dir = tmp("repeat");
        let mut s = store(&dir, OnRepeat::KeepFirst);
        assert!(matches!(s.put(capture("q", "first", "c1")).unwrap(), Stored::Written(_)));
        assert!(matches!(s.put(capture("q", "first", "c1")).unwrap(), Stored::Redelivered(_)));
        assert!(matches!(s.put(capture("q", "second", "c2")).unwrap(), Stored::Deduplicated(_)));
        assert_eq!(s.counts, Counts { recorded: 1, deduplicated: 1, redelivered: 1, parity: 0, failed: 0 });
        // A restarted collector knows what it wrote.
        let mut s = store(&dir, OnRepeat::Sequence);
        assert!(matches!(s.put(capture("q", "first", "c1")).unwrap(), Stored::Redelivered(_)));
        let Stored::Written(p) = s.put(capture("q", "second", "c2")).unwrap() else { panic!() };
        assert!(matches!(s.put(capture("q", "second", "c2")).unwrap(), Stored::Redelivered(_)));
        let Stored::Written(p3) = s.put(capture("q", "third", "c3")).unwrap() else { panic!() };
        assert_eq!(p, p3, "appended to the same file");
        let (_, a) = parse_asset_file(&std::fs::read_to_string(&p).unwrap(), "t").unwrap().pop().unwrap();
        let answers: Vec<Value> = a
            .responses
            .unwrap()
            .iter()
            .map(|r| r.body.as_ref().unwrap()["choices"][0]["message"]["content"].clone())
            .collect();
        assert_eq!(answers, [json!("first"), json!("second"), json!("third")]);
        let mut s = store(&dir, OnRepeat::KeepLatest);
        s.put(capture("q", "latest", "c4")).unwrap();
        let (_, a) = parse_asset_file(&std::fs::read_to_string(&p).unwrap(), "t").unwrap().pop().unwrap();
        assert_eq!(a.response.unwrap().body.unwrap()["choices"][0]["message"]["content"], json!("latest"));
        assert_eq!(crate::bundle::asset_files(&dir).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_deliveries_through_the_server_are_all_written() {
        let dir = tmp("server");
        let server = Server::start(store(&dir, OnRepeat::KeepFirst), 0).unwrap();
        let port = server.port;
        let threads: Vec<_> = (0..16)
            .map(|i| {
                std::thread::spawn(move || {
                    let doc = capture(&format!("question {i}"), "answer", &format!("id{i}"));
                    let text = serde_json::to_string(&doc).unwrap();
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    write!(s, "POST /v1/captures HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len()).unwrap();
                    let mut resp = String::new();
                    s.read_to_string(&mut resp).unwrap();
                    resp
                })
            })
            .collect();
        for t in threads {
            let resp = t.join().unwrap();
            assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
        }
        let counts = server.stop();
        assert_eq!(counts.recorded, 16);
        assert_eq!(crate::bundle::asset_files(&dir).unwrap().len(), 16);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pretty_keeps_number_arrays_on_one_line() {
        let v = json!({"a": [1, 2.5, null], "b": [{"c": "x"}], "d": {}, "e": ["s", "t"]});
        assert_eq!(pretty(&v), "{\n  \"a\": [1, 2.5, null],\n  \"b\": [\n    {\n      \"c\": \"x\"\n    }\n  ],\n  \"d\": {},\n  \"e\": [\n    \"s\",\n    \"t\"\n  ]\n}\n");
        assert_eq!(serde_json::from_str::<Value>(&pretty(&v)).unwrap(), v);
        assert_eq!(slug("  GPT-4o mini: What's up?!", 40), "gpt-4o-mini-what-s-up");
        assert_eq!(slug("claude-3-5-sonnet@20240620", 10), "claude-3-5");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod parity_tests {
    use super::*;
    use crate::parity_report::samples::{chat, record};
    use understudy_matcher::Operation;

    fn post(port: u16, path: &str, body: &str) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    }

    #[test]
    fn parity_records_are_written_once_and_bad_ones_refused() {
        let dir = std::env::temp_dir().join(format!("understudy-collect-parity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = Store::open(&dir, Normalizer::default(), OnRepeat::KeepFirst).unwrap();
        let server = Server::start(store, 0).unwrap();
        let r = record(
            Operation::ChatCompletions,
            "gpt-4o-mini",
            "ab12/../../x",
            &chat("stop", true),
            &chat("length", true),
            9,
        );
        let text = serde_json::to_string(&r).unwrap();
        let first = post(server.port, "/v1/parity", &text);
        assert!(first.starts_with("HTTP/1.1 201"), "{first}");
        let again = post(server.port, "/v1/parity", &text);
        assert!(again.starts_with("HTTP/1.1 200") && again.contains("redelivered"), "{again}");
        for (bad, why) in [
            ("{", "not a parity record"),
            (
                r#"{"format": "understudy.parity/v9", "key": "k", "asset": null, "provider": "p", "operation": "o", "model": null, "env": "e", "at_ms": 1, "verdict": {"matched": true, "diffs": []}}"#,
                "format",
            ),
        ] {
            let resp = post(server.port, "/v1/parity", bad);
            assert!(resp.starts_with("HTTP/1.1 400") && resp.contains(why), "{resp}");
        }
        let counts = server.stop();
        assert_eq!((counts.parity, counts.failed, counts.recorded), (1, 2, 0));
        assert_eq!(serde_json::to_value(counts).unwrap()["parity"], 1);
        assert!(
            serde_json::to_value(Counts::default()).unwrap().get("parity").is_none(),
            "record mode reads as before"
        );
        let files: Vec<PathBuf> = std::fs::read_dir(dir.join(PARITY_DIR)).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("ab12-x-9-") && name.ends_with(".json"), "{name}");
        let back = ParityRecord::parse(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
        assert_eq!(back, r);
        // The records are not assets: listing and bundling the directory skip them.
        assert!(crate::bundle::asset_files(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
