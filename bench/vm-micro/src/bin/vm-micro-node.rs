//! The in-VM micro-benchmark loop as a command: under Node's WASI (`node scripts/wasi-runner.mjs
//! target/wasm32-wasip1/release/vm-micro-node.wasm '{"round_ms":100}'`) or natively. Prints one JSON object
//! per line, the same objects `bench_vm_micro.wasm` logs under Envoy. Exit status 1 on a set-up failure.

#[path = "../../../../matcher/benches/common/mod.rs"]
mod common;
#[path = "../runner.rs"]
mod runner;

fn main() {
    let text = std::env::args().nth(1).unwrap_or_default();
    let settings = match runner::Settings::from_json(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vm-micro-node: {e}");
            std::process::exit(2);
        }
    };
    if runner::run(&settings, &mut |v| println!("{v}")).is_err() {
        std::process::exit(1);
    }
}
