//! `understudy run [options of up] -- CMD [ARGS...]`: start Envoy with the filter on free ports, run CMD
//! with every supported SDK pointed at it, forward signals, tear Envoy down, print a verdict and a summary,
//! and exit with CMD's status. Exit statuses (docs/ci.md): CMD's own; 128+N when CMD died of signal N;
//! 122 when `--fail-on-miss` and a request missed although CMD passed; 125 when Understudy itself failed
//! (bad options or assets, Envoy did not start or died); 126 CMD not executable; 127 CMD not found.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::exfiltrator::origin::WithOrigin;
use signal_hook::iterator::{Handle, SignalsInfo};
use signal_hook::low_level::siginfo::{Cause, Origin};

use crate::clientenv;
use crate::launcher::{self, Defaults, Envoy, EnvoyArgs, Output};
use crate::summary::{self, Avoided, CommandEnd, Summary, Tally};

/// `--fail-on-miss`: the command passed, but a request missed the assets.
pub const EXIT_MISSES: u8 = 122;
/// Understudy itself failed: bad options or assets, Envoy did not start or died, the summary can't be written.
pub const EXIT_ERROR: u8 = 125;
/// The command exists but can't be executed.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// How long the access log may lag behind the filter's counters once the command has ended.
const LOG_CATCH_UP: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    envoy: EnvoyArgs,
    /// Exit with status 122 when any LLM request missed the assets (and no synthesize rule answered it),
    /// even if the command passed.
    #[arg(long)]
    fail_on_miss: bool,
    /// Also write the summary as JSON to FILE (format understudy.run-summary/v1, see docs/ci.md).
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
    /// Directory for Envoy's log and access log, kept after the run [default: a new directory in $TMPDIR].
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// The command to run, and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<OsString>,
}

pub fn main(a: RunArgs) -> ExitCode {
    match run(a) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("understudy run: error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(a: RunArgs) -> Result<u8> {
    let started = Instant::now();
    let Some((program, args)) = a.command.split_first() else {
        anyhow::bail!("no command given: understudy run [OPTIONS] -- CMD [ARGS...]");
    };
    let shown = program.to_string_lossy().into_owned();
    // A typo in the command shouldn't cost an Envoy start.
    if let Err((code, why)) = runnable(program) {
        eprintln!("understudy run: error: {shown}: {why}");
        return Ok(code);
    }
    let log_dir = match &a.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "understudy-run-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
        )),
    };
    std::fs::create_dir_all(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
    let log_dir = log_dir.canonicalize()?;
    let envoy_log = log_dir.join("envoy.log");
    let access_log = log_dir.join("access.log");
    let _ = std::fs::remove_file(&access_log);
    let mut plan = a.envoy.plan(&Defaults { port: 0, admin_port: 0, access_log: Some(&access_log) })?;

    let signals = Signals::start()?;
    let mut early = None;
    let started_envoy = plan.start(&Output::File(envoy_log.clone()), true, &mut || {
        early = early.take().or_else(|| signals.next());
        early.is_some()
    })?;
    let Some(mut envoy) = started_envoy else {
        let sig = early.map_or(SIGTERM, |o| o.signal);
        eprintln!("understudy run: stopped by signal {sig} while Envoy was starting");
        return Ok(signal_status(sig));
    };
    eprintln!(
        "understudy run: serving {} at http://127.0.0.1:{} (on_miss={}); Envoy log: {}",
        plan.serving,
        envoy.port,
        plan.on_miss.name(),
        envoy_log.display()
    );

    let _watching = plan.watch(&envoy)?;
    let env = clientenv::environment(envoy.port, &envoy.admin, |n| std::env::var_os(n));
    let mut child = match Command::new(program).args(args).envs(env).spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                std::io::ErrorKind::PermissionDenied => EXIT_NOT_EXECUTABLE,
                _ => EXIT_ERROR,
            };
            eprintln!("understudy run: error: cannot run {shown}: {e}");
            return Ok(code);
        }
    };
    let (status, envoy_died) = supervise(&mut child, &mut envoy, &signals)?;

    // The command is done; Envoy has logged (or is about to flush) every request it served. A signal now
    // means: don't wait for the log. Record modes first wait for every capture to be on disk.
    let (drained, pending) = if envoy_died.is_none() && plan.records() {
        envoy.drain(launcher::DRAIN_WITHIN, &mut || signals.next().is_some())
    } else {
        (None, 0)
    };
    let stats = if envoy_died.is_none() { drained.or_else(|| envoy.counters().ok()) } else { None };
    let cost = if envoy_died.is_none() { envoy.cost().ok() } else { None };
    let deadline = Instant::now() + LOG_CATCH_UP;
    while stats.as_ref().is_some_and(|s| !summary::agrees(&summary::read_log(&access_log).counts, s))
        && Instant::now() < deadline
        && signals.next().is_none()
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    envoy.stop();
    let recorded = plan.finish(stats.as_ref(), pending);
    let tally = summary::read_log(&access_log);

    let command = CommandEnd {
        status: status.code(),
        signal: status.signal(),
        error: envoy_died.map(|s| format!("was stopped because Envoy exited unexpectedly ({s})")),
    };
    let missed = summary::missed(&tally.counts, stats.as_ref());
    let mut exit = match (&command.error, status.code(), status.signal()) {
        (Some(_), _, _) => EXIT_ERROR,
        (None, Some(code), _) => u8::try_from(code).unwrap_or(EXIT_ERROR),
        (None, None, Some(sig)) => signal_status(sig),
        _ => EXIT_ERROR,
    };
    if exit == 0 && a.fail_on_miss && missed > 0 {
        exit = EXIT_MISSES;
    }
    let notes = notes(&tally, stats.as_ref(), missed, &a, exit);
    let c = tally.counts.clone();
    let mut s = Summary {
        format: summary::FORMAT,
        verdict: if exit == 0 { "passed" } else { "failed" },
        exit_status: exit,
        command,
        on_miss: plan.on_miss.name(),
        fail_on_miss: a.fail_on_miss,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        consistent: stats.as_ref().is_some_and(|st| summary::agrees(&c, st)),
        stats,
        avoided: Avoided::new(c.hits + c.synthesized, cost.as_ref().map(|s| &s.reading)),
        counts: c,
        misses: tally.misses,
        passthroughs: tally.passthroughs,
        bad_requests: tally.bad_requests,
        envoy_log,
        access_log,
        notes,
        recorded,
    };
    if let Some(path) = &a.summary_json {
        if let Err(e) = write_json(path, &s) {
            eprintln!("understudy run: error: {e:#}");
            if s.exit_status == 0 {
                s.exit_status = EXIT_ERROR;
                s.verdict = "failed";
            }
        }
    }
    eprint!("{}", s.text(&shown));
    Ok(s.exit_status)
}

/// Waits for the command, forwarding signals to it; stops it if Envoy dies under it.
fn supervise(child: &mut Child, envoy: &mut Envoy, signals: &Signals) -> Result<(ExitStatus, Option<ExitStatus>)> {
    let mut envoy_died = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, envoy_died));
        }
        while let Some(origin) = signals.next() {
            // The terminal sends Ctrl-C (and hang-ups) to the whole foreground process group, the command
            // included: forwarding those too would deliver them twice.
            if origin.cause != Cause::Kernel {
                launcher::signal(child.id(), signal_name(origin.signal));
            }
        }
        if envoy_died.is_none() {
            if let Some(status) = envoy.exited()? {
                eprintln!("understudy run: error: Envoy exited unexpectedly ({status}); stopping the command");
                launcher::signal(child.id(), "TERM");
                envoy_died = Some(status);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn notes(
    t: &Tally,
    stats: Option<&std::collections::BTreeMap<String, u64>>,
    missed: u64,
    a: &RunArgs,
    exit: u8,
) -> Vec<String> {
    let c = &t.counts;
    let mut notes = Vec::new();
    match stats {
        Some(s) if !summary::agrees(c, s) => notes.push(format!(
            "the access log and the filter's counters disagree (counters: {}); the counts above are from the log",
            s.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        )),
        Some(_) => {}
        None => notes.push("Envoy's counters could not be read: the counts above are from the access log alone".into()),
    }
    if c.requests + c.untouched == 0 {
        notes.push(
            "no request reached Understudy: does the command's LLM client read OPENAI_BASE_URL, ANTHROPIC_BASE_URL \
             or the other variables listed in docs/ci.md?"
                .into(),
        );
    }
    if missed > c.misses {
        notes.push(format!("{} miss(es) were forwarded to the live upstream (on_miss=passthrough)", missed - c.misses));
    }
    if missed > 0 && !a.fail_on_miss && exit == 0 {
        notes.push(format!("{missed} request(s) missed the assets; --fail-on-miss would fail this run"));
    }
    if c.misconfigured > 0 {
        notes.push(format!("{} request(s) reached the upstream before Understudy decided", c.misconfigured));
    }
    if t.unreadable > 0 {
        notes.push(format!("{} access log line(s) could not be read", t.unreadable));
    }
    notes
}

fn write_json(path: &Path, s: &Summary) -> Result<()> {
    let text = serde_json::to_string_pretty(s)? + "\n";
    std::fs::write(path, text).with_context(|| format!("cannot write the summary to {}", path.display()))
}

/// Whether `program` can be started, as a shell decides it: found on PATH (or at its path) and executable.
fn runnable(program: &std::ffi::OsStr) -> std::result::Result<(), (u8, &'static str)> {
    let Some(path) = launcher::which(program) else { return Err((EXIT_NOT_FOUND, "command not found")) };
    match std::fs::metadata(&path) {
        Err(_) => Err((EXIT_NOT_FOUND, "no such file")),
        Ok(m) if m.is_dir() => Err((EXIT_NOT_EXECUTABLE, "is a directory")),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err((EXIT_NOT_EXECUTABLE, "permission denied")),
        Ok(_) => Ok(()),
    }
}

/// The status a shell reports for a process killed by signal `sig`.
fn signal_status(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(EXIT_ERROR)
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "INT",
        SIGHUP => "HUP",
        _ => "TERM",
    }
}

/// SIGINT, SIGTERM and SIGHUP, with who sent them, delivered from a background thread.
struct Signals {
    rx: Receiver<Origin>,
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Signals {
    fn start() -> Result<Self> {
        let mut signals = SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP])?;
        let handle = signals.handle();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            for origin in signals.forever() {
                if tx.send(origin).is_err() {
                    break;
                }
            }
        });
        Ok(Signals { rx, handle, thread: Some(thread) })
    }

    fn next(&self) -> Option<Origin> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
