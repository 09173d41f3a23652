//! The only interface between the request state machine and Envoy.

/// Counters the filter exports as Envoy stats (`understudy.<name>`; `understudy_<name>` in Prometheus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// LLM requests seen (hits + synthesized + misses + bad requests).
    Requests,
    /// Answered from an asset.
    Hits,
    /// No asset matched and no rule synthesized an answer (answered 404 or forwarded).
    Misses,
    /// No asset matched; a `synthesize` rule answered.
    Synthesized,
    /// Body could not be parsed (answered 400 or forwarded).
    BadRequests,
    /// Forwarded to the live upstream.
    Passthroughs,
    /// The router started before the decision: the buffer filter is missing.
    Misconfigured,
    /// Refused by a memory budget (request, answer or latency queue; `understudy_matcher::limits`): answered
    /// with a typed error, or forwarded under passthrough when the request body was over budget.
    OverBudget,
    /// Entries asked of the remote asset store (store.rs).
    StoreFetches,
    /// Fetches that failed: no answer, a timeout, an HTTP status other than 200 or 404, or an entry refused
    /// by verification. The request then got the miss policy.
    StoreErrors,
    /// LLM calls left alone because the environment's policy is `live` (not buffered, decided or recorded).
    Live,
    /// Would-be-virtual calls (hits, synthesized answers) sent live instead, as the `live_sample` chose them.
    LiveSampled,
    /// Parity checks whose live answer matched what Understudy would have served.
    ParityMatch,
    /// Parity checks that found a difference (logged with the key, the asset and the paths; sent to the
    /// collector).
    ParityMismatch,
    /// Per-request overrides honoured (the secret matched).
    OverrideApplied,
    /// Override headers ignored: no override configured, no or a wrong secret, an unknown value.
    OverrideRefused,
}

impl Counter {
    /// Every counter, in definition order.
    pub const ALL: [Counter; 16] = [
        Counter::Requests,
        Counter::Hits,
        Counter::Misses,
        Counter::Synthesized,
        Counter::BadRequests,
        Counter::Passthroughs,
        Counter::Misconfigured,
        Counter::OverBudget,
        Counter::StoreFetches,
        Counter::StoreErrors,
        Counter::Live,
        Counter::LiveSampled,
        Counter::ParityMatch,
        Counter::ParityMismatch,
        Counter::OverrideApplied,
        Counter::OverrideRefused,
    ];

    /// Stat name as Envoy shows it.
    pub fn stat_name(self) -> &'static str {
        match self {
            Counter::Requests => "understudy.requests",
            Counter::Hits => "understudy.hits",
            Counter::Misses => "understudy.misses",
            Counter::Synthesized => "understudy.synthesized",
            Counter::BadRequests => "understudy.bad_requests",
            Counter::Passthroughs => "understudy.passthroughs",
            Counter::Misconfigured => "understudy.misconfigured",
            Counter::OverBudget => "understudy.over_budget",
            Counter::StoreFetches => "understudy.store_fetches",
            Counter::StoreErrors => "understudy.store_errors",
            Counter::Live => "understudy.live",
            Counter::LiveSampled => "understudy.live_sampled",
            Counter::ParityMatch => "understudy.parity_match",
            Counter::ParityMismatch => "understudy.parity_mismatch",
            Counter::OverrideApplied => "understudy.override_applied",
            Counter::OverrideRefused => "understudy.override_refused",
        }
    }
}

/// Host calls the per-request state machine needs. Implemented over proxy-wasm in the plugin, faked in tests.
pub trait Host {
    /// A request header (pseudo-headers like `:path` included).
    fn request_header(&self, name: &str) -> Option<String>;
    /// The buffered request body, `len` bytes from the start.
    fn request_body(&self, len: usize) -> Option<Vec<u8>>;
    /// Sends a local reply; the request never reaches the router.
    fn send_response(&self, status: u16, headers: &[(String, String)], body: &[u8]);
    /// Answers waiting for their simulated latency in this VM: how many, and their bytes (bodies and headers).
    fn delayed(&self) -> (usize, usize);
    /// Sends a local reply after `delay_ms` without blocking the worker (simulated latency).
    fn send_response_later(&self, delay_ms: u64, status: u16, headers: Vec<(String, String)>, body: Vec<u8>);
    /// Unix time in nanoseconds, from the host's clock.
    fn now_nanos(&self) -> u64;
    /// Sets a header on the upstream's response.
    fn set_response_header(&self, name: &str, value: &str);
    /// Sets (`Some`) or removes (`None`) a request header before the request leaves Envoy.
    fn set_request_header(&self, name: &str, value: Option<&str>);
    /// Sends a hit through the pacer instead of answering locally: the request body becomes `framed` (the
    /// answer and its chunk timing) and the pace header routes it to the pacer. False when it can't.
    fn send_paced(&self, framed: &[u8]) -> bool;
    /// Replaces the (pacer's) response status and sets these headers on it.
    fn replace_response(&self, status: u16, headers: &[(String, String)]);
    /// Has the router already picked an upstream host for this stream?
    fn upstream_started(&self) -> bool;
    /// Adds one to a counter.
    fn increment(&self, counter: Counter);
    /// Counts a virtual answer's live call, tokens and dollars avoided (`crate::metrics`).
    fn account(&self, accounting: &understudy_matcher::Accounting);
    /// Logs at error level (never request data beyond method and path).
    fn log_error(&self, message: &str);
    /// Starts a GET to the remote asset store (store.rs); its answer comes back through
    /// `Flow::on_store_reply`. An error means no answer will come.
    fn fetch(&self, fetch: &understudy_matcher::Fetch) -> Result<(), String>;
    /// Lets a request held while the store was asked go on (to the buffer filter and the router).
    fn resume_request(&self);
}
