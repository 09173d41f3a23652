//! Matcher micro-benchmarks inside Envoy's wasm VM (V8), reported through Envoy's log.
//!
//! Built as a proxy-wasm HTTP filter module (`cargo build --release --target wasm32-wasip1 -p
//! understudy-bench-vm-micro` → `target/wasm32-wasip1/release/bench_vm_micro.wasm`). Its root context's
//! `on_configure` builds the inputs and runs every case of `matcher/benches/common` (the same code the native
//! criterion benches run) with a plain `std::time::Instant` loop, then logs one line per measurement at info
//! level:
//!
//! ```text
//! bench-vm-micro: {"name":"parse/2KiB","label":"...","bytes":2051,"ns_per_op":5123.4,"mb_per_s":400.3,...}
//! ```
//!
//! framed by `{"event":"start",...}` and `{"event":"done",...}` lines (`{"event":"error",...}` on failure).
//! The plugin configuration string holds the run settings (see [`runner::Settings::from_json`]). Envoy
//! configures one VM per worker plus one on the main thread; only the first VM to configure runs the suite (a
//! shared-data flag), the others log that they skipped. The filter itself passes every request through.
//!
//! `bench/micro.sh` runs it under Envoy; `src/bin/vm-micro-node.rs` runs the same loop under Node's WASI
//! (or natively).

#[cfg(target_arch = "wasm32")]
#[path = "../../../matcher/benches/common/mod.rs"]
mod common;
#[cfg(target_arch = "wasm32")]
pub mod runner;

#[cfg(target_arch = "wasm32")]
mod plugin {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{ContextType, LogLevel};

    use crate::runner::{run, Settings};

    /// Shared-data key claimed by the VM that runs the suite.
    const CLAIM: &str = "understudy.bench-vm-micro.claimed";

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    struct Root;

    impl Context for Root {}

    fn log(level: LogLevel, line: &str) {
        let _ = hostcalls::log(level, &format!("bench-vm-micro: {line}"));
    }

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            if matches!(hostcalls::get_shared_data(CLAIM), Ok((Some(_), _))) {
                log(LogLevel::Info, r#"{"event":"skipped","why":"another VM of this process ran the suite"}"#);
                return true;
            }
            if let Err(e) = hostcalls::set_shared_data(CLAIM, Some(b"1"), None) {
                log(LogLevel::Error, &format!(r#"{{"event":"error","message":"cannot set shared data: {e:?}"}}"#));
                return true;
            }
            let text = self.get_plugin_configuration().unwrap_or_default();
            let settings = match std::str::from_utf8(&text).map_err(|e| e.to_string()).and_then(Settings::from_json) {
                Ok(s) => s,
                Err(message) => {
                    log(LogLevel::Error, &serde_json::json!({"event": "error", "message": message}).to_string());
                    return true;
                }
            };
            // Errors are already reported through `emit`.
            let _ = run(&settings, &mut |v| log(LogLevel::Info, &v.to_string()));
            true
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(PassThrough))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct PassThrough;

    impl Context for PassThrough {}

    impl HttpContext for PassThrough {}
}
