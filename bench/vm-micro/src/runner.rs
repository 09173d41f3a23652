//! The timing loop: runs every case of `matcher/benches/common` with `std::time::Instant` (WASI's monotonic
//! clock under wasm) and reports one JSON object per case.
//!
//! Per case: a calibration phase doubles the iteration count until one batch takes at least a quarter of a
//! round, one more untimed round warms up (V8 tiers hot functions up from Liftoff to TurboFan), then `rounds`
//! rounds of `round_ms` each are timed; the reported `ns_per_op` is the median round, `min_ns_per_op` the fastest.

use std::time::Instant;

use serde_json::{json, Value};

use crate::common;

/// Run settings, from the plugin configuration (Envoy) or the first argument (Node / native).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Target duration of one timed round, in milliseconds.
    pub round_ms: f64,
    /// Timed rounds per case (at most 3 for slow cases and cases slower than a round).
    pub rounds: usize,
    /// Inputs to build.
    pub options: common::Options,
    /// Only cases whose name contains this.
    pub only: Option<String>,
}

impl Settings {
    /// `{"round_ms": 100, "rounds": 5, "sizes": "2KiB,64KiB,1MiB", "stores": "10,10k,100k", "loads": "1k,10k",
    /// "only": "parse"}`, every field optional; empty text means all defaults.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let mut s = Settings { round_ms: 100.0, rounds: 5, options: common::Options::default(), only: None };
        if text.trim().is_empty() {
            return Ok(s);
        }
        let v: Value = serde_json::from_str(text).map_err(|e| format!("settings are not JSON: {e}"))?;
        let obj = v.as_object().ok_or("settings must be a JSON object")?;
        for (k, val) in obj {
            let list = || val.as_str().ok_or(format!("{k} must be a string like \"10,10k\"")).map(str::to_string);
            match k.as_str() {
                "round_ms" => s.round_ms = val.as_f64().filter(|x| *x > 0.0).ok_or("round_ms must be > 0")?,
                "rounds" => {
                    s.rounds = val.as_u64().filter(|x| *x > 0).ok_or("rounds must be > 0")? as usize;
                }
                "sizes" => s.options.sizes = common::Options::parse_list(&list()?)?,
                "stores" => s.options.stores = common::Options::parse_list(&list()?)?,
                "loads" => s.options.loads = common::Options::parse_list(&list()?)?,
                "only" => s.only = Some(list()?),
                other => return Err(format!("unknown setting {other:?}")),
            }
        }
        Ok(s)
    }
}

fn time(run: &mut dyn FnMut() -> usize, iters: u64) -> f64 {
    let t = Instant::now();
    let mut sink = 0usize;
    for _ in 0..iters {
        sink = sink.wrapping_add(run());
    }
    std::hint::black_box(sink);
    t.elapsed().as_nanos() as f64
}

/// (median ns/op, min ns/op, iterations per round, rounds).
fn measure(run: &mut dyn FnMut() -> usize, slow: bool, s: &Settings) -> (f64, f64, u64, usize) {
    let round_ns = s.round_ms * 1e6;
    // Calibrate: double the batch until it takes a quarter of a round.
    let mut iters = 1u64;
    let mut per_op = loop {
        let t = time(run, iters);
        if t >= round_ns / 4.0 || iters >= 1 << 40 {
            break t / iters as f64;
        }
        iters = iters.saturating_mul(2);
    };
    // Warm up for one more (untimed) round, so V8's tiered-up code is what the rounds measure, and
    // re-estimate from it. The lower estimate wins: a preempted batch only ever looks slower.
    if per_op < round_ns {
        let iters = ((round_ns / per_op.max(1.0)) as u64).max(1);
        per_op = per_op.min(time(run, iters) / iters as f64);
    }
    let rounds = if slow || per_op > round_ns { s.rounds.min(3) } else { s.rounds };
    let iters = ((round_ns / per_op.max(1.0)) as u64).max(1);
    let mut samples: Vec<f64> = (0..rounds).map(|_| time(run, iters) / iters as f64).collect();
    samples.sort_by(f64::total_cmp);
    let median = samples.get(samples.len() / 2).copied().unwrap_or(per_op);
    let min = samples.first().copied().unwrap_or(per_op);
    (median, min, iters, rounds)
}

/// The clock's finest observed step, in ns (0 if it never moved: a broken clock).
fn clock_step_ns() -> u128 {
    let mut best = u128::MAX;
    for _ in 0..1000 {
        let a = Instant::now();
        let mut b = Instant::now();
        let mut spins = 0;
        while b == a && spins < 1_000_000 {
            b = Instant::now();
            spins += 1;
        }
        let d = b.duration_since(a).as_nanos();
        if d > 0 {
            best = best.min(d);
        }
    }
    if best == u128::MAX {
        0
    } else {
        best
    }
}

/// Builds the inputs and runs every selected case, calling `emit` with one JSON object per event:
/// `{"event":"start",...}`, one `{"name",...,"ns_per_op",...}` per case, then `{"event":"done",...}`.
/// A set-up failure is emitted as `{"event":"error","message":...}` and returned.
pub fn run(s: &Settings, emit: &mut dyn FnMut(Value)) -> Result<(), String> {
    let started = Instant::now();
    let step = clock_step_ns();
    emit(json!({"event": "start", "clock_step_ns": step as u64, "round_ms": s.round_ms, "rounds": s.rounds}));
    if step == 0 {
        let message = "the monotonic clock does not advance: no timing possible".to_string();
        emit(json!({"event": "error", "message": message}));
        return Err(message);
    }
    let cases = match common::cases(&s.options) {
        Ok(c) => c,
        Err(message) => {
            emit(json!({"event": "error", "message": message}));
            return Err(message);
        }
    };
    emit(json!({"event": "setup", "cases": cases.len(), "setup_s": started.elapsed().as_secs_f64()}));
    let mut measured = 0;
    for case in cases {
        let name = case.name();
        if s.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let mut op = match (case.make)() {
            Ok(op) => op,
            Err(e) => {
                let message = format!("{name}: {e}");
                emit(json!({"event": "error", "message": message}));
                return Err(message);
            }
        };
        let (ns, min, iters, rounds) = measure(&mut op, case.slow, s);
        drop(op);
        let mbps = |ns: f64| if case.bytes > 0 && ns > 0.0 { json!(case.bytes as f64 * 1e3 / ns) } else { Value::Null };
        emit(json!({
            "name": name,
            "label": case.label,
            "bytes": case.bytes,
            "ns_per_op": ns,
            "min_ns_per_op": min,
            "mb_per_s": mbps(ns),
            "iters": iters,
            "rounds": rounds,
        }));
        measured += 1;
    }
    emit(json!({"event": "done", "measured": measured, "total_s": started.elapsed().as_secs_f64()}));
    Ok(())
}
