//! Native micro-benchmarks of the matcher (criterion): the stages of a key (parse, clone, normalize,
//! canonicalize, SHA-256), full `Runtime::decide_at` hits and misses, hit latency against store size, response
//! rendering pieces and bundle load time. The cases live in `benches/common/mod.rs`, shared with the in-Envoy
//! runner (`bench/vm-micro`), so native and wasm numbers measure the same work.
//!
//! ```text
//! cargo bench -p understudy-matcher --bench micro -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Environment: `MICRO_SIZES` (default `2KiB,64KiB,1MiB`), `MICRO_STORES` (`10,10k,100k`), `MICRO_LOADS`
//! (`1k,10k`) choose the inputs; `MICRO_MANIFEST=FILE` writes one JSON line per case (name, label, bytes) for
//! `bench/micro.sh`'s report. Results: criterion's `estimates.json` under `$CRITERION_HOME` (or
//! `target/criterion`).

mod common;

use std::io::Write;

use criterion::{criterion_main, Criterion, SamplingMode, Throughput};

fn options() -> Result<common::Options, String> {
    let mut o = common::Options::default();
    let from_env = |var: &str, into: &mut Vec<usize>| -> Result<(), String> {
        if let Ok(text) = std::env::var(var) {
            *into = common::Options::parse_list(&text).map_err(|e| format!("{var}: {e}"))?;
        }
        Ok(())
    };
    from_env("MICRO_SIZES", &mut o.sizes)?;
    from_env("MICRO_STORES", &mut o.stores)?;
    from_env("MICRO_LOADS", &mut o.loads)?;
    Ok(o)
}

fn write_manifest(cases: &[common::Case]) -> Result<(), String> {
    let Ok(path) = std::env::var("MICRO_MANIFEST") else { return Ok(()) };
    let mut f = std::fs::File::create(&path).map_err(|e| format!("{path}: {e}"))?;
    for c in cases {
        let line = serde_json::json!({"name": c.name(), "label": c.label, "bytes": c.bytes});
        writeln!(f, "{line}").map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

fn micro(c: &mut Criterion) {
    let started = std::time::Instant::now();
    let cases = match options().and_then(|o| common::cases(&o)) {
        Ok(cases) => cases,
        Err(e) => {
            eprintln!("micro: set-up failed: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = write_manifest(&cases) {
        eprintln!("micro: cannot write the manifest: {e}");
        std::process::exit(1);
    }
    eprintln!("micro: {} cases, inputs built in {:.1} s", cases.len(), started.elapsed().as_secs_f64());
    for case in cases {
        let name = case.name();
        let mut op = match (case.make)() {
            Ok(op) => op,
            Err(e) => {
                eprintln!("micro: {name}: set-up failed: {e}");
                std::process::exit(1);
            }
        };
        let mut g = c.benchmark_group(case.group);
        if case.bytes > 0 {
            g.throughput(Throughput::BytesDecimal(case.bytes));
        }
        if case.slow {
            g.sample_size(10).sampling_mode(SamplingMode::Flat);
        }
        g.bench_function(case.id.as_str(), |b| b.iter(&mut op));
        g.finish();
        drop(op);
    }
}

/// criterion's generated `pub fn` lives in a private module, so it needs no docs.
mod harness {
    criterion::criterion_group!(benches, super::micro);
}
criterion_main!(harness::benches);
