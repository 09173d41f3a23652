//! `understudy up`: bundle the assets, write an Envoy bootstrap, run Envoy in the foreground.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::launcher::{Defaults, EnvoyArgs, Output, DRAIN_WITHIN};

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    envoy: EnvoyArgs,
    /// Write the bootstrap to this file and exit instead of running Envoy.
    #[arg(long)]
    print_config: Option<PathBuf>,
}

pub fn run(a: UpArgs) -> Result<()> {
    let plan = a.envoy.plan(&Defaults { port: 10000, admin_port: 9901, access_log: None })?;
    if let Some(out) = &a.print_config {
        std::fs::write(out, &plan.bootstrap).with_context(|| format!("cannot write {}", out.display()))?;
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let mut plan = plan;
    let Some(mut envoy) = plan.start(&Output::Inherit, false, &mut || stop.load(Ordering::Relaxed))? else {
        // Stopped by a signal while starting.
        return Ok(());
    };
    let (port, admin) = (envoy.port, envoy.admin.clone());
    println!(
        "Understudy is up: Envoy {} serving {} (on_miss={})",
        envoy.binary.display(),
        plan.serving,
        plan.on_miss.name()
    );
    if let Some(p) = &plan.policy {
        println!("  Policy:             {p}");
    }
    println!("  OpenAI base URL:    http://127.0.0.1:{port}/v1   (OPENAI_BASE_URL)");
    println!("  Anthropic base URL: http://127.0.0.1:{port}      (ANTHROPIC_BASE_URL)");
    println!("  Stats:              http://{admin}/stats?filter=understudy");
    println!("  Cost avoided:       understudy report --admin http://{admin}");
    if let Some(to) = &plan.recording_to {
        println!("  Recording:          {} mode, recordings go to {to}", a.envoy.record.mode.name());
    }
    if let Some(speed) = a.envoy.record.replay_speed {
        println!("  Pacing:             recorded streams replay at {speed}x their recorded pace");
    }
    let _watching = plan.watch(&envoy)?;
    println!("Press Ctrl-C to stop.");
    let _ = std::io::stdout().flush();

    loop {
        if let Some(status) = envoy.exited()? {
            bail!("Envoy exited unexpectedly ({status})");
        }
        if stop.load(Ordering::Relaxed) {
            let (stats, pending) = if plan.records() {
                println!("Stopping: no new requests; waiting for requests in flight and their recordings (Ctrl-C again to stop now)...");
                let _ = std::io::stdout().flush();
                stop.store(false, Ordering::Relaxed);
                envoy.drain(DRAIN_WITHIN, &mut || stop.load(Ordering::Relaxed))
            } else {
                (None, 0)
            };
            envoy.stop();
            if let Some(report) = plan.finish(stats.as_ref(), pending) {
                println!("{}", report.text());
            }
            println!("Understudy stopped.");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
