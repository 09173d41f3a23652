//! `understudy up --watch` (and `run --watch`): the assets are re-bundled when their files change and Envoy
//! applies the new plugin configuration without a restart and without dropping a request in flight.
//!
//! With `--watch` the bootstrap takes the Understudy filter over ECDS (extension config discovery) from a
//! file in Envoy's work directory, whose directory Envoy watches. A change to an asset file (debounced: an
//! editor's save is several events) rebuilds the configuration exactly as start-up does; a good one is
//! written next to that file and moved over it in one rename, which Envoy picks up: streams already running
//! finish on the filter configuration they started with, new ones get the new one (the VM and module stay,
//! so only the asset store is loaded again). A bad edit is reported (the file and field, as `understudy
//! bundle` names them) and the file is left alone: the previous assets keep serving. Whether Envoy applied
//! or rejected an update is read back from its ECDS stats and printed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{new_debouncer, DebounceEventResult};
use serde_json::{json, Value};

use crate::publish::write_atomic;

/// The Wasm HTTP filter's type URL (what the ECDS subscription accepts).
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// How long a burst of file events must be quiet before the assets are rebuilt.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// How long Envoy gets to apply (or reject) an update before we say we don't know.
const APPLY_WITHIN: Duration = Duration::from_secs(20);

/// The HTTP filter entry named `understudy` whose configuration comes over ECDS from the file at `path`
/// (Envoy watches the file's directory for a rename into it).
pub fn discovered_filter(path: &Path) -> Value {
    let watched = path.parent().map(|p| p.display().to_string()).unwrap_or_else(|| ".".into());
    json!({
        "name": "understudy",
        "config_discovery": {
            "config_source": {
                "path_config_source": {"path": path, "watched_directory": {"path": watched}},
                "resource_api_version": "V3"
            },
            "type_urls": [WASM_TYPE_URL]
        }
    })
}

/// An ECDS file holding one filter configuration (`typed_config` of the `understudy` filter), versioned by
/// its content.
pub fn ecds_document(typed_config: &Value) -> Result<Value> {
    let version = crate::package::sha256_hex(serde_json::to_string(typed_config)?.as_bytes());
    Ok(json!({
        "version_info": version.get(..16).unwrap_or(&version),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "understudy",
            "typed_config": typed_config
        }]
    }))
}

/// The Understudy filter's `typed_config` for a plugin configuration (as `understudy up` writes it inline).
pub fn filter_config(wasm: &str, plugin_config: &str, max_body_bytes: u64) -> Result<Value> {
    let filters = crate::envoy::http_filters(wasm, plugin_config, max_body_bytes);
    filters
        .as_array()
        .and_then(|f| f.iter().find(|f| f.get("name").and_then(Value::as_str) == Some("understudy")))
        .and_then(|f| f.get("typed_config"))
        .cloned()
        .ok_or_else(|| anyhow!("no understudy filter in the chain"))
}

/// Turns a bootstrap's inline Understudy filter into one taken over ECDS from `path`.
pub fn use_ecds(bootstrap: &mut Value, path: &Path) -> Result<()> {
    let filters = bootstrap
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| anyhow!("no http_filters in the bootstrap"))?;
    for f in filters.iter_mut() {
        if f.get("name").and_then(Value::as_str) == Some("understudy") {
            *f = discovered_filter(path);
        }
    }
    // File-based xDS subscriptions need a node identity.
    if let Some(m) = bootstrap.as_object_mut() {
        m.insert("node".into(), json!({"id": "understudy", "cluster": "understudy"}));
    }
    Ok(())
}

/// What the watcher rebuilds from and where it writes.
pub struct Watch {
    /// Files and directories whose changes trigger a rebuild.
    pub watched: Vec<PathBuf>,
    /// Builds the plugin configuration from the files as they are now.
    pub rebuild: Box<dyn Fn() -> Result<String> + Send>,
    /// The filter module (the same for every update: only the configuration changes).
    pub wasm: String,
    pub max_body_bytes: u64,
    /// The ECDS file Envoy watches.
    pub path: PathBuf,
}

/// A running watcher; dropping it stops it.
pub struct Watching {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Watch {
    /// The ECDS file's content for `plugin_config`.
    pub fn document(&self, plugin_config: &str) -> Result<String> {
        Ok(serde_json::to_string_pretty(&ecds_document(&filter_config(
            &self.wasm,
            plugin_config,
            self.max_body_bytes,
        )?)?)?)
    }

    /// Starts watching, after Envoy (admin at `admin`) serves the configuration `current` was built into.
    pub fn spawn(self, admin: String, current: String) -> Result<Watching> {
        let (tx, rx) = mpsc::channel::<DebounceEventResult>();
        let mut debouncer = new_debouncer(DEBOUNCE, tx).context("cannot watch the assets")?;
        for p in &self.watched {
            let mode = if p.is_dir() { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
            // A single file is watched through its directory: editors replace files by rename.
            let target = if p.is_dir() { p.as_path() } else { p.parent().unwrap_or(Path::new(".")) };
            debouncer.watcher().watch(target, mode).with_context(|| format!("cannot watch {}", p.display()))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let shown = self.watched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        let thread = std::thread::Builder::new().name("understudy-watch".into()).spawn(move || {
            let _keep = debouncer;
            let mut last = current;
            let mut seen = self.fingerprint();
            let mut failing = false;
            while !flag.load(Ordering::Relaxed) {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(Ok(events)) if events.iter().any(|e| self.relevant(&e.path)) => {
                        // Events that arrived meanwhile are part of this change. Reading the files (ours, an
                        // editor's) is an event too: only a change of the files' sizes or times rebuilds.
                        while rx.try_recv().is_ok() {}
                        let now = self.fingerprint();
                        if now == seen {
                            continue;
                        }
                        seen = now;
                        if let Some(applied) = self.update(&admin, &last, &mut failing) {
                            last = applied;
                        }
                    }
                    Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                    Ok(Err(e)) => eprintln!("understudy: watching the assets: {e}"),
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        })?;
        eprintln!("Watching {shown} for changes (--watch): edits are applied without a restart.");
        Ok(Watching { stop, thread: Some(thread) })
    }

    /// An asset file (`*.json`), a watched file itself, or a directory (created, renamed, removed).
    fn relevant(&self, path: &Path) -> bool {
        let under = |root: &PathBuf| path.starts_with(root) || path == root.as_path();
        if !self.watched.iter().any(under) {
            return false;
        }
        path.extension().is_some_and(|x| x == "json") || self.watched.iter().any(|w| w == path) || path.is_dir()
    }

    /// Every watched `*.json` file (and watched file) with its size and modification time.
    fn fingerprint(&self) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
        let mut out = Vec::new();
        for root in &self.watched {
            for e in walkdir::WalkDir::new(root).follow_links(true).into_iter().filter_map(Result::ok) {
                let p = e.path();
                if e.file_type().is_file() && (p.extension().is_some_and(|x| x == "json") || p == root.as_path()) {
                    let meta = e.metadata().ok();
                    out.push((
                        p.to_path_buf(),
                        meta.as_ref().map_or(0, |m| m.len()),
                        meta.and_then(|m| m.modified().ok()),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    /// Rebuilds; writes and waits for Envoy when the configuration changed. The configuration now serving.
    fn update(&self, admin: &str, last: &str, failing: &mut bool) -> Option<String> {
        let started = Instant::now();
        let text = match (self.rebuild)() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("understudy: error: {e:#}");
                eprintln!("understudy: the edit was not applied; still serving the previous assets");
                *failing = true;
                return None;
            }
        };
        let was_failing = std::mem::replace(failing, false);
        if text == last {
            if was_failing {
                eprintln!("understudy: the assets are valid again; the ones serving are up to date");
            }
            return None;
        }
        let before = ecds_stats(admin);
        let written = self.document(&text).and_then(|doc| write_atomic(&self.path, doc.as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "understudy: error: cannot write {}: {e:#}; still serving the previous assets",
                self.path.display()
            );
            return None;
        }
        let deadline = Instant::now() + APPLY_WITHIN;
        while Instant::now() < deadline {
            let now = ecds_stats(admin);
            if now.1 > before.1 {
                eprintln!(
                    "understudy: Envoy rejected the new configuration (see its log); still serving the previous assets"
                );
                return None;
            }
            if now.0 > before.0 {
                eprintln!(
                    "understudy: reloaded the assets in {} ms (new requests get them)",
                    started.elapsed().as_millis()
                );
                return Some(text);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("understudy: Envoy did not confirm the update within {} s", APPLY_WITHIN.as_secs());
        Some(text)
    }
}

/// Envoy's ECDS counters for the Understudy filter: (config_reload, config_fail).
fn ecds_stats(admin: &str) -> (u64, u64) {
    let text = crate::launcher::admin_get(admin, "/stats?filter=extension_config_discovery").unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .filter_map(|l| l.trim().split_once(": "))
            .find(|(k, _)| k.ends_with(&format!("understudy.{name}")))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    (stat("config_reload"), stat("config_fail"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_takes_the_filter_over_ecds_and_the_document_carries_it() {
        let mut boot = json!({"static_resources": {"listeners": [{"filter_chains": [{"filters": [{"typed_config": {
            "http_filters": crate::envoy::http_filters("/x.wasm", "{}", 10)}}]}]}]}});
        use_ecds(&mut boot, Path::new("/w/ecds/u.json")).unwrap();
        let f =
            &boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
        assert_eq!(
            f[1]["config_discovery"]["config_source"]["path_config_source"]["watched_directory"]["path"],
            "/w/ecds"
        );
        assert_eq!(f[2]["name"], "envoy.filters.http.buffer");
        assert!(boot["node"]["id"].is_string());
        let doc = ecds_document(&filter_config("/x.wasm", "{\"a\":1}", 10).unwrap()).unwrap();
        let cfg = &doc["resources"][0]["typed_config"]["config"]["configuration"]["value"];
        assert_eq!(cfg, "{\"a\":1}");
        let other = ecds_document(&filter_config("/x.wasm", "{\"a\":2}", 10).unwrap()).unwrap();
        assert_ne!(doc["version_info"], other["version_info"]);
    }
}
