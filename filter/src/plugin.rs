//! proxy-wasm glue: root context (config load, metrics) and HTTP contexts wrapping [`Flow`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use understudy_matcher::Runtime;

use crate::env;
use crate::flow::{Flow, Next};
use crate::host::{Counter, Host};
use crate::metrics::{CostMetrics, ProxyWasm};
use crate::recording::{self, RecordCtx, Recording, SharedOutbox};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root {
            runtime: None,
            metrics: Rc::new([0; Counter::ALL.len()]),
            memory_gauge: None,
            memory_seen: Rc::new(Cell::new(0)),
            delayed: Rc::new(RefCell::new(Vec::new())),
            cost: Rc::new(CostMetrics::default()),
            outbox: SharedOutbox::default(),
            record: None,
        })
    });
}}

/// A local reply waiting for its simulated latency to pass.
struct Delayed {
    context_id: u32,
    due_nanos: u64,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// This VM's (this worker's) delayed replies, drained by the root context's tick.
type DelayQueue = Rc<RefCell<Vec<Delayed>>>;

/// Tick granularity while replies are waiting; the tick is off otherwise.
const TICK: Duration = Duration::from_millis(5);

struct Root {
    runtime: Option<Rc<Runtime>>,
    metrics: Rc<[u32; Counter::ALL.len()]>,
    /// `understudy.wasm_memory_bytes`: the largest linear memory of any of this plugin's VMs.
    memory_gauge: Option<u32>,
    /// Memory size last recorded by this VM.
    memory_seen: Rc<Cell<u64>>,
    delayed: DelayQueue,
    /// Live calls, tokens and dollars avoided (this VM's side of them).
    cost: Rc<CostMetrics>,
    outbox: SharedOutbox,
    /// Record mode's context, when the configuration records.
    record: Option<Rc<RecordCtx>>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some(r) = &self.record {
            recording::on_answer(r, token_id, body_size);
        }
    }
}

/// Starts the root context's tick (latency queue, record outbox); the tick stops itself when both are idle.
fn start_tick() {
    if let Err(e) = hostcalls::set_tick_period(TICK) {
        log(LogLevel::Error, &format!("understudy: cannot start the timer ({e:?})"));
    }
}

const MEMORY_GAUGE: &str = "understudy.wasm_memory_bytes";

/// This VM's linear memory size. It only grows (V8 never shrinks it), so it is the VM's high-water mark.
fn wasm_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    let pages = core::arch::wasm32::memory_size(0) as u64;
    #[cfg(not(target_arch = "wasm32"))]
    let pages = 0u64;
    pages.saturating_mul(65_536)
}

/// Raises the shared gauge to this VM's memory size if it is larger (each worker has its own VM, and Envoy
/// keeps one gauge per name; the largest VM is the one near the 1 GiB cap).
/// Cheap when memory hasn't grown since the last call (one instruction, no host call).
fn record_memory(gauge: Option<u32>, seen: &Cell<u64>) {
    let Some(id) = gauge else { return };
    let mine = wasm_memory_bytes();
    if mine <= seen.get() {
        return;
    }
    seen.set(mine);
    if hostcalls::get_metric(id).map_or(true, |current| mine > current) {
        let _ = hostcalls::record_metric(id, mine);
    }
}

impl Root {
    /// Defines the counters and the memory gauge (named with the environment, once it is known).
    fn define_metrics(&mut self) -> bool {
        let mut ids = [0u32; Counter::ALL.len()];
        for (slot, c) in ids.iter_mut().zip(Counter::ALL) {
            let name = env::stat_name(c.stat_name());
            match hostcalls::define_metric(MetricType::Counter, &name) {
                Ok(id) => *slot = id,
                Err(e) => {
                    log(LogLevel::Critical, &format!("understudy: cannot define metric {name}: {e:?}"));
                    return false;
                }
            }
        }
        self.metrics = Rc::new(ids);
        self.memory_gauge = hostcalls::define_metric(MetricType::Gauge, &env::stat_name(MEMORY_GAUGE)).ok();
        true
    }
}

/// Reads the node metadata and applies the policy of the environment it names (once per VM).
fn enter_environment(rt: &mut Runtime) {
    let Some(label) = rt.policy().map(|p| p.label().to_string()) else { return };
    let property = |path: &[&str]| hostcalls::get_property(path.to_vec()).ok().flatten();
    let node = env::node_info(&property, &label);
    let Some(a) = rt.enter(&node) else { return };
    env::set_stat_env(Some(&a.name));
    for why in &a.ignored {
        log(LogLevel::Warn, &format!("understudy: node metadata ignored: {why}"));
    }
    log(
        LogLevel::Info,
        &format!(
            "understudy: environment {} (from {}{}): mode {}, live_sample {}",
            a.name,
            a.source.describe(&label),
            if a.listed { "" } else { "; not in the policy: its default applies" },
            a.mode.name(),
            a.live_sample
        ),
    );
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let started = now_nanos();
        let loaded = match self.get_plugin_configuration() {
            None => {
                Err("no plugin configuration; it must carry the asset bundle (see `understudy bundle`)".to_string())
            }
            Some(bytes) => match std::str::from_utf8(&bytes) {
                // Without an inline bundle, the one `understudy package --assets` embedded in this module (if any).
                Ok(text) => match crate::embedded::bundle() {
                    Ok(embedded) => Runtime::from_json_sealed_embedded(text, embedded)
                        .map_err(|e| format!("invalid plugin configuration: {e}")),
                    Err(e) => Err(format!("{e}; package the module again")),
                },
                Err(e) => Err(format!("plugin configuration is not UTF-8: {e}")),
            },
        };
        // The environment first: every stat name carries it.
        let mut loaded = loaded;
        if let Ok(rt) = loaded.as_mut() {
            enter_environment(rt);
        }
        if !self.define_metrics() {
            return false;
        }
        match loaded {
            Ok(rt) => {
                let ms = now_nanos().saturating_sub(started) / 1_000_000;
                log(
                    LogLevel::Info,
                    &format!(
                        "understudy: loaded {} assets in {ms} ms (wasm memory {} bytes), on_miss={:?}{}",
                        rt.asset_count(),
                        wasm_memory_bytes(),
                        rt.on_miss(),
                        origin(&rt)
                    ),
                );
                record_memory(self.memory_gauge, &self.memory_seen);
                // The budgets of requests, answers, the latency queue and the memo come on top of the store.
                let need = wasm_memory_bytes().saturating_add(understudy_matcher::limits::PER_VM_BUDGET);
                if need > understudy_matcher::limits::VM_MEMORY {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "understudy: the asset store leaves less room than the per-request budgets need \
                             ({} MiB at load + {} MiB of budgets > the VM's {} MiB): a large request may trap this \
                             VM; split the assets over several listeners (see docs/limits.md)",
                            wasm_memory_bytes() >> 20,
                            understudy_matcher::limits::PER_VM_BUDGET >> 20,
                            understudy_matcher::limits::VM_MEMORY >> 20
                        ),
                    );
                }
                let rt = Rc::new(rt);
                if rt.recorder().mode().records() {
                    match recording::Metrics::define() {
                        Ok(metrics) => {
                            self.record = Some(Rc::new(RecordCtx {
                                runtime: rt.clone(),
                                outbox: self.outbox.clone(),
                                metrics: Rc::new(metrics),
                                start_tick,
                            }));
                        }
                        Err(e) => {
                            log(LogLevel::Critical, &format!("understudy: {e}"));
                            return false;
                        }
                    }
                    log(
                        LogLevel::Info,
                        &format!(
                            "understudy: {:?} mode: captures go to cluster {:?}",
                            rt.recorder().mode(),
                            rt.recorder().collector()
                        ),
                    );
                }
                self.runtime = Some(rt);
                true
            }
            Err(e) => {
                log(LogLevel::Critical, &format!("understudy: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Always a context: `None` makes the proxy-wasm SDK panic (a trap). Without a runtime (the
        // configuration did not load) the context fails closed: LLM calls get a 503 in the API's shape.
        let flow = match self.runtime.clone() {
            Some(runtime) => Flow::new(runtime),
            None => Flow::unavailable(),
        };
        let host = ProxyHost {
            metrics: self.metrics.clone(),
            memory_gauge: self.memory_gauge,
            memory_seen: self.memory_seen.clone(),
            delayed: self.delayed.clone(),
            cost: self.cost.clone(),
            context_id,
        };
        Some(Box::new(Http { flow, host, record: self.record.clone(), recording: Recording::default() }))
    }

    fn on_tick(&mut self) {
        let now = now_nanos();
        let due: Vec<Delayed> = {
            let mut q = self.delayed.borrow_mut();
            let (due, waiting) = q.drain(..).partition(|d| d.due_nanos <= now);
            *q = waiting;
            due
        };
        for d in due {
            // The stream may be gone (client hung up): then there is nobody to answer.
            if hostcalls::set_effective_context(d.context_id).is_ok() {
                send_local_reply(d.status, &d.headers, &d.body);
            }
        }
        if let Some(r) = &self.record {
            recording::pump(r);
        }
        if self.delayed.borrow().is_empty() && self.outbox.borrow().is_idle() {
            let _ = hostcalls::set_tick_period(Duration::ZERO);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    flow: Flow,
    host: ProxyHost,
    /// Record mode: the VM's record context, and this stream's capture.
    record: Option<Rc<RecordCtx>>,
    recording: Recording,
}

impl Http {
    /// The request was decided: in record modes a forwarded LLM call starts its capture.
    fn after_request(&mut self, end_of_stream: bool, body_size: usize) {
        if let (true, true, Some(r)) = (end_of_stream, self.flow.forwarded(), &self.record) {
            if !self.recording.active() {
                let parity = self.flow.take_parity();
                self.recording.begin(r, body_size, parity);
            }
        }
    }
}

impl Context for Http {
    // The remote asset store answered a fetch of this stream (store.rs), or the call failed or timed out.
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        let read = |n| hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, n).ok().flatten();
        // A store miss or outage under passthrough (or record_missing) sends the held request on: record it.
        if let Some(request_size) = self.flow.on_store_reply(&self.host, num_headers, status, body_size, read) {
            self.after_request(true, request_size);
        }
        record_memory(self.host.memory_gauge, &self.host.memory_seen);
    }
}

/// Where the loaded assets came from, for the load log line: the embedded bundle, and the remote store.
fn origin(rt: &Runtime) -> String {
    let mut s = String::new();
    if rt.bundle_source() == understudy_matcher::BundleSource::Embedded {
        s.push_str(", bundle embedded in the module");
    }
    if let Some(store) = rt.store() {
        s.push_str(&format!(
            ", asset store {} via cluster {}",
            store.sha256.get(..12).unwrap_or_default(),
            store.cluster
        ));
    }
    s
}

fn action(n: Next) -> Action {
    match n {
        Next::Continue => Action::Continue,
        Next::Pause => Action::Pause,
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        #[allow(clippy::panic)]
        if self.host.request_header("x-understudy-fault").as_deref() == Some("panic") {
            panic!("understudy: fault injected by x-understudy-fault (test build)");
        }
        if self.record.is_some() {
            self.recording.request_headers();
        }
        action(self.flow.on_request_headers(&self.host, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let next = self.flow.on_request_body(&self.host, body_size, end_of_stream);
        if end_of_stream {
            record_memory(self.host.memory_gauge, &self.host.memory_seen);
        }
        self.after_request(end_of_stream, body_size);
        action(next)
    }

    fn on_http_request_trailers(&mut self, _n: usize) -> Action {
        let size = self.host.body_size();
        let next = self.flow.on_request_trailers(&self.host, size);
        record_memory(self.host.memory_gauge, &self.host.memory_seen);
        self.after_request(true, size);
        action(next)
    }

    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let next = self.flow.on_response_headers(&self.host);
        self.recording.response_headers(end_of_stream);
        action(next)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(r) = &self.record {
            self.recording.response_body(r, body_size, end_of_stream);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _n: usize) -> Action {
        self.recording.response_trailers();
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(r) = &self.record {
            match self.recording.done(r) {
                Some(true) => self.host.increment(Counter::ParityMatch),
                Some(false) => self.host.increment(Counter::ParityMismatch),
                None => {}
            }
        }
    }
}

/// Sends a local reply on the current effective context.
fn send_local_reply(status: u16, headers: &[(String, String)], body: &[u8]) {
    let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Err(e) = hostcalls::send_http_response(u32::from(status), hs, Some(body)) {
        log(LogLevel::Error, &format!("understudy: send_http_response failed: {e:?}"));
    }
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

struct ProxyHost {
    metrics: Rc<[u32; Counter::ALL.len()]>,
    memory_gauge: Option<u32>,
    memory_seen: Rc<Cell<u64>>,
    delayed: DelayQueue,
    cost: Rc<CostMetrics>,
    context_id: u32,
}

fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

impl ProxyHost {
    /// Size of the buffered request body (trailers carry no size).
    fn body_size(&self) -> usize {
        hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpRequestBody, 0, usize::MAX)
            .ok()
            .flatten()
            .map(|b| b.len())
            .unwrap_or(0)
    }
}

impl Host for ProxyHost {
    fn request_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(proxy_wasm::types::MapType::HttpRequestHeaders, name).ok().flatten()
    }

    fn request_body(&self, len: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpRequestBody, 0, len).ok().flatten()
    }

    fn send_response(&self, status: u16, headers: &[(String, String)], body: &[u8]) {
        send_local_reply(status, headers, body);
    }

    fn delayed(&self) -> (usize, usize) {
        let q = self.delayed.borrow();
        let bytes =
            q.iter().map(|d| d.body.len() + d.headers.iter().map(|(k, v)| k.len() + v.len() + 32).sum::<usize>());
        (q.len(), bytes.sum())
    }

    fn send_response_later(&self, delay_ms: u64, status: u16, headers: Vec<(String, String)>, body: Vec<u8>) {
        let was_idle = self.delayed.borrow().is_empty();
        if was_idle {
            if let Err(e) = hostcalls::set_tick_period(TICK) {
                log(LogLevel::Error, &format!("understudy: cannot start the latency timer ({e:?}); answering now"));
                return self.send_response(status, &headers, &body);
            }
        }
        let due_nanos = now_nanos().saturating_add(delay_ms.saturating_mul(1_000_000));
        self.delayed.borrow_mut().push(Delayed { context_id: self.context_id, due_nanos, status, headers, body });
    }

    fn now_nanos(&self) -> u64 {
        now_nanos()
    }

    fn set_response_header(&self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(proxy_wasm::types::MapType::HttpResponseHeaders, name, Some(value));
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(proxy_wasm::types::MapType::HttpRequestHeaders, name, value);
    }

    fn send_paced(&self, framed: &[u8]) -> bool {
        use proxy_wasm::types::{BufferType, MapType};
        use understudy_matcher::record::PACE_HEADER;
        if hostcalls::set_buffer(BufferType::HttpRequestBody, 0, usize::MAX, framed).is_err() {
            return false;
        }
        let len = framed.len().to_string();
        // Changing a request header makes Envoy pick the route again: the pace header's route leads to the pacer.
        [("content-length", len.as_str()), ("content-type", "application/x-understudy-pace"), (PACE_HEADER, "1")]
            .iter()
            .all(|(k, v)| hostcalls::set_map_value(MapType::HttpRequestHeaders, k, Some(v)).is_ok())
    }

    fn replace_response(&self, status: u16, headers: &[(String, String)]) {
        use proxy_wasm::types::MapType;
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, ":status", Some(&status.to_string()));
        for (k, v) in headers {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, k, Some(v));
        }
    }

    fn upstream_started(&self) -> bool {
        matches!(hostcalls::get_property(vec!["upstream", "address"]), Ok(Some(ref v)) if !v.is_empty())
    }

    fn increment(&self, counter: Counter) {
        let idx = Counter::ALL.iter().position(|c| *c == counter).unwrap_or(0);
        if let Some(id) = self.metrics.get(idx) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    fn account(&self, accounting: &understudy_matcher::Accounting) {
        self.cost.record(&ProxyWasm, accounting);
    }

    fn log_error(&self, message: &str) {
        log(LogLevel::Error, message);
    }

    fn fetch(&self, f: &understudy_matcher::Fetch) -> Result<(), String> {
        let headers = vec![(":method", "GET"), (":path", f.path.as_str()), (":authority", f.authority.as_str())];
        // Registered with the current (this stream's) context: the answer arrives at its on_http_call_response.
        hostcalls::dispatch_http_call(&f.cluster, headers, None, Vec::new(), Duration::from_millis(f.timeout_ms))
            .map(|_| ())
            .map_err(|e| format!("Envoy refused the call to cluster {:?} ({e:?}): is the cluster defined?", f.cluster))
    }

    fn resume_request(&self) {
        let _ = hostcalls::resume_http_request();
    }
}
