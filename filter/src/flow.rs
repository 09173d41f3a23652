//! The per-request state machine: classify on headers, buffer, decide once at end of body, act.

use std::rc::Rc;

use understudy_matcher::limits::{DELAY_QUEUE_BYTES, DELAY_QUEUE_ENTRIES};
use understudy_matcher::policy::{
    self, Forced, OverrideCheck, ParityCheck, PolicyMode, OVERRIDE_HEADER, OVERRIDE_TOKEN_HEADER,
};
use understudy_matcher::record::PACE_HEADER;
use understudy_matcher::{classify, error_answer, Decision, LocalResponse, Mode, Outcome, Route, Runtime};

use crate::host::{Counter, Host};
use crate::store::{self, Reply};

/// What the filter tells Envoy after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Let the request (or response) continue down the chain.
    Continue,
    /// Hold it (keep buffering, or a local reply was sent).
    Pause,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Before request headers.
    Start,
    /// Not an LLM call: untouched.
    Untouched,
    /// An LLM call whose body is still arriving.
    Buffering(Route),
    /// An LLM call with a compressed body: rejected once the body has arrived.
    Compressed(Route, String),
    /// Waiting for the remote asset store's answer for `key` (store.rs); the body stays in Envoy's buffer.
    Fetching { route: Route, key: String, body_size: usize, started_nanos: u64, timeout_ms: u64 },
    /// Forwarded upstream after the decision.
    Forwarded,
    /// Answered locally.
    Answered,
    /// A hit sent through the pacer, which streams it back at its recorded pace: its status and headers
    /// replace the pacer's.
    Paced(u16, Vec<(String, String)>),
}

/// One HTTP stream's state.
pub struct Flow {
    /// `None` when the VM has no runtime (its configuration did not load): LLM calls then fail closed.
    runtime: Option<Rc<Runtime>>,
    state: State,
    /// What an honoured `x-understudy-override` asks for this request.
    forced: Option<Forced>,
    /// Parity: the virtual answer kept to compare with the live one.
    parity: Option<ParityCheck>,
}

impl Flow {
    /// A new stream using the shared runtime.
    pub fn new(runtime: Rc<Runtime>) -> Self {
        Flow { runtime: Some(runtime), state: State::Start, forced: None, parity: None }
    }

    /// A stream in a VM without a runtime: LLM calls get a 503 in the API's shape (fail closed, nothing goes
    /// upstream); other requests pass untouched.
    pub fn unavailable() -> Self {
        Flow { runtime: None, state: State::Start, forced: None, parity: None }
    }

    /// Request headers arrived.
    pub fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Next {
        let method = host.request_header(":method").unwrap_or_default();
        let path = host.request_header(":path").unwrap_or_default();
        // The override's headers never go upstream (the token is a secret), whatever the request.
        let wanted = host.request_header(OVERRIDE_HEADER);
        let token = host.request_header(OVERRIDE_TOKEN_HEADER);
        for (name, present) in [(OVERRIDE_HEADER, wanted.is_some()), (OVERRIDE_TOKEN_HEADER, token.is_some())] {
            if present {
                host.set_request_header(name, None);
            }
        }
        let Some(route) = classify(&method, &path) else {
            self.state = State::Untouched;
            return Next::Continue;
        };
        // Names the provider for routing, so a call that ends up forwarded goes to its own API's upstream
        // (Envoy picks the route again when a filter changes request headers; request headers can only be
        // changed here, not once the body arrives). Removed before the request leaves Envoy.
        host.set_request_header(UPSTREAM_HEADER, Some(route.provider));
        // Only Understudy routes a request to the pacer.
        if host.request_header(PACE_HEADER).is_some() {
            host.set_request_header(PACE_HEADER, None);
        }
        if self.runtime.is_none() {
            let message = "Understudy has no asset store loaded in this Envoy worker (its plugin configuration \
                           did not load; see Envoy's log), so it refuses LLM calls rather than let them reach the \
                           live model";
            let (headers, body) = error_answer(&route, "unavailable", "api_error", message, "understudy_unavailable");
            host.send_response(503, &headers, &body);
            self.state = State::Answered;
            return Next::Pause;
        }
        let check = match self.runtime.as_ref().and_then(|r| r.policy()) {
            Some(p) => p.check_override(wanted.as_deref(), token.as_deref()),
            None => policy::check_override(None, wanted.as_deref(), token.as_deref()),
        };
        match check {
            OverrideCheck::Absent => {}
            OverrideCheck::Applied(f) => {
                host.increment(Counter::OverrideApplied);
                self.forced = Some(f);
            }
            OverrideCheck::Refused(_) => host.increment(Counter::OverrideRefused),
        }
        let live_env = self.runtime.as_ref().and_then(|r| r.active()).is_some_and(|a| a.mode == PolicyMode::Live);
        if live_env && self.forced != Some(Forced::Virtual) {
            // `live`: the call is left alone (not buffered, decided or recorded), only counted.
            host.increment(Counter::Live);
            self.state = State::Untouched;
            return Next::Continue;
        }
        if self.runtime.as_ref().is_some_and(|r| r.recorder().mode().records()) {
            // A recording stores the answer's bytes as they pass: ask the upstream for them uncompressed.
            host.set_request_header("accept-encoding", None);
        }
        let encoding = host.request_header("content-encoding").unwrap_or_default();
        let encoding = encoding.trim();
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            self.state = State::Compressed(route.clone(), encoding.to_string());
            if end_of_stream {
                return self.finish_compressed(host);
            }
            return Next::Continue;
        }
        if end_of_stream {
            return self.finish(host, &route, &[]);
        }
        self.state = State::Buffering(route);
        if self.runtime.as_ref().is_some_and(|r| r.pacing().is_some()) {
            // Pacing re-routes a hit to the pacer by changing its headers once the body has been decided, and
            // Envoy lets a filter change request headers only while it holds them: pause them. This needs the
            // wasm filter's `allow_on_headers_stop_iteration` (which `understudy up --replay-speed` sets), or
            // Envoy would never deliver the body.
            return Next::Pause;
        }
        // Continue, not Pause: Envoy would turn a header Pause into StopAllIteration and never deliver the
        // body (unless allow_on_headers_stop_iteration, which Istio can't set). The buffer filter after us
        // holds the headers back from the router until we decide.
        Next::Continue
    }

    /// A request body chunk arrived; `body_size` is the total buffered so far.
    pub fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Next {
        if let State::Compressed(..) = self.state {
            return if end_of_stream { self.finish_compressed(host) } else { Next::Pause };
        }
        let State::Buffering(route) = &self.state else {
            return match self.state {
                State::Answered => Next::Pause,
                _ => Next::Continue,
            };
        };
        if !end_of_stream {
            return Next::Pause;
        }
        let route = route.clone();
        let body = host.request_body(body_size).unwrap_or_default();
        self.finish(host, &route, &body)
    }

    /// Request trailers arrived: the body is complete.
    pub fn on_request_trailers(&mut self, host: &dyn Host, body_size: usize) -> Next {
        if matches!(self.state, State::Buffering(_) | State::Compressed(..)) {
            return self.on_request_body(host, body_size, true);
        }
        Next::Continue
    }

    /// Was the request forwarded upstream (a miss under passthrough, record mode, a sampled or forced live call)?
    pub fn forwarded(&self) -> bool {
        self.state == State::Forwarded
    }

    /// Parity: the virtual answer to compare with the live one, once the request has been forwarded.
    pub fn take_parity(&mut self) -> Option<ParityCheck> {
        self.parity.take()
    }

    /// Upstream response headers arrived.
    pub fn on_response_headers(&mut self, host: &dyn Host) -> Next {
        match &self.state {
            State::Paced(status, headers) => host.replace_response(*status, headers),
            State::Forwarded => host.set_response_header("x-understudy", "passthrough"),
            // A reply while we are still deciding: the upstream's (router started early: misconfigured), or
            // a local reply from a later filter, e.g. the buffer filter's 413, which is fine.
            State::Buffering(_) | State::Compressed(..) if host.upstream_started() => {
                self.report_misconfigured(host);
                host.set_response_header("x-understudy", "misconfigured");
            }
            _ => {}
        }
        Next::Continue
    }

    fn report_misconfigured(&self, host: &dyn Host) {
        host.increment(Counter::Misconfigured);
        host.log_error(
            "understudy: MISCONFIGURED: the router started before Understudy decided; the request reached the upstream. \
             Put an envoy.filters.http.buffer filter after the understudy wasm filter and before the router.",
        );
    }

    fn finish_compressed(&mut self, host: &dyn Host) -> Next {
        let State::Compressed(route, encoding) = std::mem::replace(&mut self.state, State::Start) else {
            return Next::Continue;
        };
        let Some(runtime) = &self.runtime else { return Next::Continue };
        let decision = runtime.reject(&route, &understudy_matcher::RequestError::Compressed(encoding));
        self.act(host, &route, decision)
    }

    fn finish(&mut self, host: &dyn Host, route: &Route, body: &[u8]) -> Next {
        let Some(runtime) = self.runtime.clone() else { return Next::Continue };
        if self.forced == Some(Forced::Live) {
            // Forced live: no asset is consulted; captured as it passes where the mode records.
            return self.act(host, route, Decision::Forward(Outcome::Hit));
        }
        if self.forced.is_none() && runtime.recorder().mode() == Mode::Record {
            // Record mode: every LLM call goes live and is captured as it passes (no asset is consulted).
            return self.act(host, route, Decision::Forward(Outcome::Miss));
        }
        let mut decision = runtime.decide_at(route, body, host.now_nanos());
        // Remote asset store (store.rs): the key is not among this VM's assets. Ask the store and hold the
        // request until it answers; a fetch that can't even start is a store error, decided at once.
        if let Decision::Fetch(fetch) = decision {
            match store::start(host, &fetch) {
                Ok(()) => {
                    let (started_nanos, timeout_ms) = (host.now_nanos(), fetch.timeout_ms);
                    self.state = State::Fetching {
                        route: route.clone(),
                        key: fetch.key,
                        body_size: body.len(),
                        started_nanos,
                        timeout_ms,
                    };
                    return Next::Pause;
                }
                Err(why) => decision = store::decide(&runtime, host, route, body, &fetch.key, &Reply::Failed(why)),
            }
        }
        let decision = self.sampled(host, &runtime, route, decision);
        self.act(host, route, decision)
    }

    /// The remote asset store answered a held request (or the call failed or timed out: `status` is then
    /// `None`). `read_body` reads that many bytes of the answer. Decides the request and acts on it; a request
    /// forwarded after waiting is resumed here, and its body size returned (record modes capture it).
    pub fn on_store_reply(
        &mut self,
        host: &dyn Host,
        num_headers: usize,
        status: Option<String>,
        body_size: usize,
        read_body: impl FnOnce(usize) -> Option<Vec<u8>>,
    ) -> Option<usize> {
        let State::Fetching { route, key, body_size: size, started_nanos, timeout_ms } =
            std::mem::replace(&mut self.state, State::Start)
        else {
            return None;
        };
        let runtime = self.runtime.clone()?;
        let waited_ms = host.now_nanos().saturating_sub(started_nanos) / 1_000_000;
        let reply = Reply::read(num_headers, status, body_size, waited_ms, timeout_ms, read_body);
        // The body stayed in Envoy's buffer while the filter held the request.
        let body = host.request_body(size).unwrap_or_default();
        let decision = store::decide(&runtime, host, &route, &body, &key, &reply);
        let decision = self.sampled(host, &runtime, &route, decision);
        if self.act(host, &route, decision) == Next::Continue {
            host.resume_request();
            return Some(size);
        }
        None
    }

    /// The environment's `live_sample`: a would-be-virtual answer (hit or synthesized) whose key is in the
    /// sample goes live instead; in parity mode its virtual answer is kept for the comparison.
    fn sampled(&mut self, host: &dyn Host, runtime: &Runtime, route: &Route, decision: Decision) -> Decision {
        match (self.forced, runtime.active(), decision) {
            (None, Some(active), Decision::Respond(r))
                if matches!(r.outcome, Outcome::Hit | Outcome::Synthesized)
                    && r.key().is_some_and(|k| active.samples(k)) =>
            {
                host.increment(Counter::LiveSampled);
                if active.mode == PolicyMode::Parity {
                    let asset =
                        if r.outcome == Outcome::Hit { r.key().and_then(|k| runtime.asset_label(k)) } else { None };
                    let asset = asset.map(str::to_string);
                    self.parity = Some(ParityCheck::new(route, r, asset.as_deref()));
                }
                Decision::Forward(Outcome::Hit)
            }
            (_, _, d) => d,
        }
    }

    fn act(&mut self, host: &dyn Host, route: &Route, decision: Decision) -> Next {
        if host.upstream_started() {
            self.report_misconfigured(host);
        }
        // The latency queue is bounded (limits::DELAY_QUEUE_*): past it, an answer that would wait is a 503.
        let decision = match decision {
            Decision::Respond(r) if r.delay_ms > 0 && !delay_queue_has_room(host, &r) => {
                Decision::Respond(delay_queue_full(route))
            }
            other => other,
        };
        host.increment(Counter::Requests);
        let outcome = match &decision {
            Decision::Respond(r) => r.outcome,
            Decision::Forward(o) => *o,
            Decision::Fetch(_) => Outcome::Miss,
        };
        host.increment(match (outcome, &decision) {
            // Sent live by the sample: counted as `live_sampled`, not as a hit.
            (Outcome::Hit, Decision::Forward(_)) => Counter::Passthroughs,
            (Outcome::Hit, _) => Counter::Hits,
            (Outcome::Miss, _) => Counter::Misses,
            (Outcome::Synthesized, _) => Counter::Synthesized,
            (Outcome::BadRequest, _) => Counter::BadRequests,
            (Outcome::OverBudget, _) => Counter::OverBudget,
        });
        if let Decision::Respond(LocalResponse { accounting: Some(a), .. }) = &decision {
            host.account(a);
        }
        match decision {
            Decision::Respond(r) if r.pace.is_some() => {
                if let Some(pace) = &r.pace {
                    if host.send_paced(&pace.frame(&r.body)) {
                        self.state = State::Paced(r.status, r.headers);
                        return Next::Continue;
                    }
                }
                host.send_response(r.status, &r.headers, &r.body);
                self.state = State::Answered;
                Next::Pause
            }
            Decision::Respond(r) if r.delay_ms > 0 => {
                host.send_response_later(r.delay_ms, r.status, r.headers, r.body);
                self.state = State::Answered;
                Next::Pause
            }
            Decision::Respond(r) => {
                host.send_response(r.status, &r.headers, &r.body);
                self.state = State::Answered;
                Next::Pause
            }
            Decision::Forward(o) => {
                if o != Outcome::Hit {
                    host.increment(Counter::Passthroughs);
                }
                self.state = State::Forwarded;
                Next::Continue
            }
            // A second fetch for one request: the runtime never asks for it (decide_fetched doesn't fetch).
            Decision::Fetch(f) => {
                let message = format!("Understudy asked the asset store twice for key {}: a bug; not forwarded", f.key);
                let (headers, body) =
                    error_answer(route, "miss", "api_error", &message, "understudy_store_unavailable");
                host.send_response(503, &headers, &body);
                self.state = State::Answered;
                Next::Pause
            }
        }
    }
}

/// The request header naming a forwarded LLM call's provider (`gen_ai.provider.name`) for routing.
pub const UPSTREAM_HEADER: &str = "x-understudy-upstream";

/// Bytes an answer holds while it waits.
fn held_bytes(r: &LocalResponse) -> usize {
    r.body.len() + r.headers.iter().map(|(k, v)| k.len() + v.len() + 32).sum::<usize>()
}

fn delay_queue_has_room(host: &dyn Host, r: &LocalResponse) -> bool {
    let (entries, bytes) = host.delayed();
    entries < DELAY_QUEUE_ENTRIES && bytes.saturating_add(held_bytes(r)) <= DELAY_QUEUE_BYTES
}

/// What an answer that can't wait gets: a 503 in the API's shape that asks the client to retry (the SDKs do).
fn delay_queue_full(route: &Route) -> LocalResponse {
    let message = format!(
        "Understudy is holding back as many answers for their simulated latency as it may ({DELAY_QUEUE_ENTRIES} \
         answers, {} MiB: DELAY_QUEUE_ENTRIES and DELAY_QUEUE_BYTES, see docs/limits.md); retry shortly",
        DELAY_QUEUE_BYTES >> 20
    );
    let (mut headers, body) =
        error_answer(route, "over-budget", "overloaded_error", &message, "understudy_delay_queue_full");
    headers.push(("retry-after".into(), "1".into()));
    LocalResponse {
        outcome: Outcome::OverBudget,
        status: 503,
        headers,
        body,
        delay_ms: 0,
        accounting: None,
        pace: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use understudy_matcher::{Bundle, BundledAsset, NormalizationConfig, Normalizer, OnMiss, PluginConfig};

    type Sent = (u16, Vec<(String, String)>, Vec<u8>);
    type Replaced = (u16, Vec<(String, String)>);

    #[derive(Default)]
    struct FakeHost {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        upstream_started: bool,
        sent: RefCell<Option<Sent>>,
        response_headers: RefCell<Vec<(String, String)>>,
        counters: RefCell<Vec<Counter>>,
        errors: RefCell<Vec<String>>,
        delayed: std::cell::Cell<u64>,
        queue: std::cell::Cell<(usize, usize)>,
        accounted: RefCell<Vec<understudy_matcher::Accounting>>,
        request_changes: RefCell<Vec<(String, Option<String>)>>,
        paced: RefCell<Option<Vec<u8>>>,
        replaced: RefCell<Option<Replaced>>,
        fetches: RefCell<Vec<understudy_matcher::Fetch>>,
        fetch_error: Option<String>,
        resumed: std::cell::Cell<bool>,
    }

    impl Host for FakeHost {
        fn request_header(&self, name: &str) -> Option<String> {
            self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        }
        fn request_body(&self, len: usize) -> Option<Vec<u8>> {
            Some(self.body[..len.min(self.body.len())].to_vec())
        }
        fn send_response(&self, status: u16, headers: &[(String, String)], body: &[u8]) {
            *self.sent.borrow_mut() = Some((status, headers.to_vec(), body.to_vec()));
        }
        fn delayed(&self) -> (usize, usize) {
            self.queue.get()
        }
        fn send_response_later(&self, delay_ms: u64, status: u16, headers: Vec<(String, String)>, body: Vec<u8>) {
            self.delayed.set(delay_ms);
            self.send_response(status, &headers, &body);
        }
        fn now_nanos(&self) -> u64 {
            1_700_000_000_000_000_000
        }
        fn set_response_header(&self, name: &str, value: &str) {
            self.response_headers.borrow_mut().push((name.into(), value.into()));
        }
        fn set_request_header(&self, name: &str, value: Option<&str>) {
            self.request_changes.borrow_mut().push((name.into(), value.map(str::to_string)));
        }
        fn send_paced(&self, framed: &[u8]) -> bool {
            *self.paced.borrow_mut() = Some(framed.to_vec());
            true
        }
        fn replace_response(&self, status: u16, headers: &[(String, String)]) {
            *self.replaced.borrow_mut() = Some((status, headers.to_vec()));
        }
        fn upstream_started(&self) -> bool {
            self.upstream_started
        }
        fn increment(&self, counter: Counter) {
            self.counters.borrow_mut().push(counter);
        }
        fn account(&self, accounting: &understudy_matcher::Accounting) {
            self.accounted.borrow_mut().push(accounting.clone());
        }
        fn log_error(&self, message: &str) {
            self.errors.borrow_mut().push(message.into());
        }
        fn fetch(&self, fetch: &understudy_matcher::Fetch) -> Result<(), String> {
            self.fetches.borrow_mut().push(fetch.clone());
            self.fetch_error.clone().map_or(Ok(()), Err)
        }
        fn resume_request(&self) {
            self.resumed.set(true);
        }
    }

    const REQ: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    const STREAM: &str = "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

    fn runtime(on_miss: OnMiss) -> Rc<Runtime> {
        runtime_with_latency(on_miss, 0)
    }

    fn runtime_with_latency(on_miss: OnMiss, latency_ms: u64) -> Rc<Runtime> {
        runtime_with(on_miss, latency_ms, Default::default(), None)
    }

    fn runtime_with(
        on_miss: OnMiss,
        latency_ms: u64,
        mode: Mode,
        pacing: Option<understudy_matcher::record::PacingConfig>,
    ) -> Rc<Runtime> {
        Rc::new(Runtime::compile(config_with(on_miss, latency_ms, mode, pacing)).unwrap())
    }

    fn config_with(
        on_miss: OnMiss,
        latency_ms: u64,
        mode: Mode,
        pacing: Option<understudy_matcher::record::PacingConfig>,
    ) -> PluginConfig {
        let body: serde_json::Value = serde_json::from_str(REQ).unwrap();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let (key, _) =
            Normalizer::compile(&NormalizationConfig::default()).unwrap().key(&route, REQ.as_bytes()).unwrap();
        let asset: BundledAsset = serde_json::from_value(serde_json::json!({
            "key": key,
            "source": "t.json#0",
            "asset": {
                "name": "hi",
                "request": {"path": "/v1/chat/completions", "body": body},
                "responses": [
                    {"body": {"id": "x", "choices": []}},
                    {"headers": {"content-type": "text/event-stream"}, "body_text": STREAM, "timing": {"chunks": [[100, 10], [250, STREAM.len() - 10]]}},
                ],
                "sequence": "cycle",
                "refresh": false,
                "latency": {"ttft_ms": latency_ms},
            },
        }))
        .unwrap();
        PluginConfig { on_miss, bundle: Some(Bundle::sealed(vec![asset])), mode, pacing, ..PluginConfig::default() }
    }

    /// The test runtime under a policy, in the environment `env` names.
    fn runtime_in(policy: serde_json::Value, env: &str) -> Rc<Runtime> {
        let mut cfg = config_with(OnMiss::Error, 0, Mode::Replay, None);
        cfg.policy = Some(serde_json::from_value(policy).unwrap());
        let mut rt = Runtime::compile(cfg).unwrap();
        let node = understudy_matcher::policy::NodeInfo { understudy_env: Some(env.into()), ..Default::default() };
        rt.enter(&node).unwrap();
        Rc::new(rt)
    }

    const SECRET: &str = "s3cret-token";

    fn mesh() -> serde_json::Value {
        serde_json::json!({
            "environments": {
                "prod": {"mode": "live"},
                "staging": {"mode": "parity"},
                "sampled": {"mode": "replay", "live_sample": 1.0},
                "ci": {"mode": "replay"},
            },
            "override": {"secret_sha256": understudy_matcher::policy::secret_sha256(SECRET)},
        })
    }

    fn run(f: &mut Flow, h: &FakeHost) -> Next {
        f.on_request_headers(h, false);
        f.on_request_body(h, h.body.len(), true)
    }

    #[test]
    fn live_environments_leave_llm_calls_alone_and_count_them() {
        let rt = runtime_in(mesh(), "prod");
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(rt);
        assert_eq!(f.on_request_headers(&h, false), Next::Continue);
        assert_eq!(f.on_request_body(&h, 5, false), Next::Continue, "not buffered");
        assert_eq!(f.on_request_body(&h, REQ.len(), true), Next::Continue);
        assert!(h.sent.borrow().is_none() && !f.forwarded());
        assert_eq!(*h.counters.borrow(), vec![Counter::Live]);
        assert!(!h.request_changes.borrow().iter().any(|(k, _)| k == "accept-encoding"));
    }

    #[test]
    fn a_sampled_hit_goes_live_counted_apart_and_parity_keeps_the_virtual_answer() {
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(runtime_in(mesh(), "sampled"));
        assert_eq!(run(&mut f, &h), Next::Continue);
        assert!(f.forwarded() && h.sent.borrow().is_none());
        assert!(f.take_parity().is_none(), "replay with a sample checks nothing");
        assert_eq!(*h.counters.borrow(), vec![Counter::LiveSampled, Counter::Requests, Counter::Passthroughs]);
        assert!(h.accounted.borrow().is_empty(), "a live call saved nothing");
        // ci: no sample, answered virtually.
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(runtime_in(mesh(), "ci"));
        assert_eq!(run(&mut f, &h), Next::Pause);
        assert_eq!(*h.counters.borrow(), vec![Counter::Requests, Counter::Hits]);
        // parity: the hit goes live (uncompressed), its virtual answer kept with its key and asset.
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(runtime_in(mesh(), "staging"));
        assert_eq!(run(&mut f, &h), Next::Continue);
        assert!(h.request_changes.borrow().contains(&("accept-encoding".to_string(), None)));
        let check = f.take_parity().unwrap();
        assert_eq!(check.key().len(), 64);
        // parity: a miss goes live too, to be recorded like record_missing.
        let other = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"new"}]}"#;
        let h = host("/v1/chat/completions", other);
        let mut f = Flow::new(runtime_in(mesh(), "staging"));
        assert_eq!(run(&mut f, &h), Next::Continue);
        assert!(f.forwarded() && f.take_parity().is_none());
        assert_eq!(*h.counters.borrow(), vec![Counter::Requests, Counter::Misses, Counter::Passthroughs]);
    }

    #[test]
    fn an_override_needs_the_secret_and_its_headers_never_go_upstream() {
        let stripped = |h: &FakeHost| {
            let c = h.request_changes.borrow();
            c.contains(&(OVERRIDE_HEADER.to_string(), None)) && c.contains(&(OVERRIDE_TOKEN_HEADER.to_string(), None))
        };
        // A wrong secret: ignored and counted, the request is served as without it.
        let mut h = host("/v1/chat/completions", REQ);
        h.headers.push((OVERRIDE_HEADER.into(), "live".into()));
        h.headers.push((OVERRIDE_TOKEN_HEADER.into(), "guess".into()));
        let mut f = Flow::new(runtime_in(mesh(), "ci"));
        assert_eq!(run(&mut f, &h), Next::Pause);
        assert_eq!(h.sent.borrow().as_ref().unwrap().0, 200);
        assert_eq!(*h.counters.borrow(), vec![Counter::OverrideRefused, Counter::Requests, Counter::Hits]);
        assert!(stripped(&h));
        // Without a policy the header is refused too.
        let mut h = host("/v1/chat/completions", REQ);
        h.headers.push((OVERRIDE_HEADER.into(), "live".into()));
        h.headers.push((OVERRIDE_TOKEN_HEADER.into(), SECRET.into()));
        let mut f = Flow::new(runtime(OnMiss::Error));
        assert_eq!(run(&mut f, &h), Next::Pause);
        assert_eq!(h.counters.borrow()[0], Counter::OverrideRefused);
        // With the secret: live in ci, virtual in prod.
        let mut h = host("/v1/chat/completions", REQ);
        h.headers.push((OVERRIDE_HEADER.into(), "live".into()));
        h.headers.push((OVERRIDE_TOKEN_HEADER.into(), SECRET.into()));
        let mut f = Flow::new(runtime_in(mesh(), "ci"));
        assert_eq!(run(&mut f, &h), Next::Continue);
        assert!(f.forwarded() && stripped(&h));
        assert_eq!(*h.counters.borrow(), vec![Counter::OverrideApplied, Counter::Requests, Counter::Passthroughs]);
        let mut h = host("/v1/chat/completions", REQ);
        h.headers.push((OVERRIDE_HEADER.into(), "virtual".into()));
        h.headers.push((OVERRIDE_TOKEN_HEADER.into(), SECRET.into()));
        let mut f = Flow::new(runtime_in(mesh(), "prod"));
        assert_eq!(run(&mut f, &h), Next::Pause);
        assert_eq!(h.sent.borrow().as_ref().unwrap().0, 200);
        assert_eq!(*h.counters.borrow(), vec![Counter::OverrideApplied, Counter::Requests, Counter::Hits]);
    }

    fn host(path: &str, body: &str) -> FakeHost {
        FakeHost {
            headers: vec![(":method".into(), "POST".into()), (":path".into(), path.into())],
            body: body.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn hit_buffers_then_answers_locally() {
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(runtime(OnMiss::Error));
        assert_eq!(f.on_request_headers(&h, false), Next::Continue);
        assert_eq!(f.on_request_body(&h, 10, false), Next::Pause);
        assert!(h.sent.borrow().is_none(), "must not decide before end of stream");
        assert_eq!(f.on_request_body(&h, REQ.len(), true), Next::Pause);
        let (status, headers, body) = h.sent.borrow().clone().unwrap();
        assert_eq!(status, 200);
        assert!(headers.contains(&("x-understudy".into(), "hit".into())));
        assert_eq!(body, br#"{"choices":[],"id":"x"}"#.to_vec());
        assert_eq!(*h.counters.borrow(), vec![Counter::Requests, Counter::Hits]);
        let accounted = h.accounted.borrow();
        assert_eq!(accounted.len(), 1, "a virtual answer is accounted once");
        assert_eq!((accounted[0].provider, accounted[0].model.as_str()), ("openai", "gpt-4o"));
    }

    #[test]
    fn latency_defers_the_reply_through_the_host() {
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(runtime_with_latency(OnMiss::Error, 250));
        f.on_request_headers(&h, false);
        assert_eq!(f.on_request_body(&h, REQ.len(), true), Next::Pause);
        assert_eq!(h.delayed.get(), 250);
        assert_eq!(h.sent.borrow().as_ref().unwrap().0, 200);
    }

    #[test]
    fn strict_miss_answers_404_and_passthrough_forwards() {
        let other = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"bye"}]}"#;
        let h = host("/v1/chat/completions", other);
        let mut f = Flow::new(runtime(OnMiss::Error));
        f.on_request_headers(&h, false);
        assert_eq!(f.on_request_body(&h, other.len(), true), Next::Pause);
        assert_eq!(h.sent.borrow().as_ref().unwrap().0, 404);

        let h = host("/v1/chat/completions", other);
        let mut f = Flow::new(runtime(OnMiss::Passthrough));
        f.on_request_headers(&h, false);
        assert_eq!(f.on_request_body(&h, other.len(), true), Next::Continue);
        assert!(h.sent.borrow().is_none());
        assert_eq!(*h.request_changes.borrow(), vec![(UPSTREAM_HEADER.to_string(), Some("openai".to_string()))]);
        f.on_response_headers(&h);
        assert_eq!(*h.response_headers.borrow(), vec![("x-understudy".to_string(), "passthrough".to_string())]);
        assert_eq!(*h.counters.borrow(), vec![Counter::Requests, Counter::Misses, Counter::Passthroughs]);
        assert!(h.accounted.borrow().is_empty(), "misses save nothing");
    }

    #[test]
    fn malformed_and_bodyless_requests_get_400() {
        let h = host("/v1/chat/completions", "{not json");
        let mut f = Flow::new(runtime(OnMiss::Error));
        f.on_request_headers(&h, false);
        f.on_request_body(&h, 9, true);
        assert_eq!(h.sent.borrow().as_ref().unwrap().0, 400);

        let h = host("/v1/chat/completions", "");
        let mut f = Flow::new(runtime(OnMiss::Error));
        assert_eq!(f.on_request_headers(&h, true), Next::Pause);
        assert_eq!(h.sent.borrow().as_ref().unwrap().0, 400);
        assert_eq!(*h.counters.borrow(), vec![Counter::Requests, Counter::BadRequests]);
    }

    #[test]
    fn compressed_bodies_are_a_clear_400_not_a_parse_error() {
        let mut h = host("/v1/chat/completions", "\u{1f}\u{8b}garbage");
        h.headers.push(("content-encoding".into(), "gzip".into()));
        let mut f = Flow::new(runtime(OnMiss::Error));
        assert_eq!(f.on_request_headers(&h, false), Next::Continue);
        assert_eq!(f.on_request_body(&h, 4, false), Next::Pause);
        assert!(h.sent.borrow().is_none());
        f.on_request_body(&h, 10, true);
        let (status, _, body) = h.sent.borrow().clone().unwrap();
        assert_eq!(status, 400);
        assert!(String::from_utf8(body).unwrap().contains("content-encoding: gzip"));
        assert_eq!(*h.counters.borrow(), vec![Counter::Requests, Counter::BadRequests]);
    }

    #[test]
    fn non_llm_requests_are_untouched() {
        let h = host("/v1/models", "");
        let mut f = Flow::new(runtime(OnMiss::Error));
        assert_eq!(f.on_request_headers(&h, false), Next::Continue);
        assert_eq!(f.on_request_body(&h, 0, true), Next::Continue);
        f.on_response_headers(&h);
        assert!(h.sent.borrow().is_none());
        assert!(h.counters.borrow().is_empty());
        assert!(h.response_headers.borrow().is_empty());
    }

    #[test]
    fn a_missing_buffer_filter_is_reported() {
        let mut h = host("/v1/chat/completions", REQ);
        h.upstream_started = true;
        let mut f = Flow::new(runtime(OnMiss::Error));
        f.on_request_headers(&h, false);
        f.on_request_body(&h, REQ.len(), true);
        assert!(h.counters.borrow().contains(&Counter::Misconfigured));
        assert!(h.errors.borrow()[0].contains("MISCONFIGURED"));

        let mut h = host("/v1/chat/completions", REQ);
        h.upstream_started = true;
        let mut f = Flow::new(runtime(OnMiss::Error));
        f.on_request_headers(&h, false);
        f.on_response_headers(&h);
        assert_eq!(*h.counters.borrow(), vec![Counter::Misconfigured]);
    }

    #[test]
    fn without_a_runtime_llm_calls_fail_closed_in_the_api_shape_and_others_pass() {
        for (path, dialect_key) in [("/v1/chat/completions", "\"param\""), ("/v1/messages", "\"type\":\"error\"")] {
            let h = host(path, REQ);
            let mut f = Flow::unavailable();
            assert_eq!(f.on_request_headers(&h, false), Next::Pause);
            let (status, headers, body) = h.sent.borrow().clone().unwrap();
            assert_eq!(status, 503);
            assert!(headers.contains(&("x-understudy".into(), "unavailable".into())));
            let text = String::from_utf8(body).unwrap();
            assert!(text.contains("no asset store loaded") && text.contains(dialect_key), "{text}");
            // The body that follows is held too: nothing goes upstream.
            assert_eq!(f.on_request_body(&h, REQ.len(), true), Next::Pause);
        }
        let h = host("/v1/models", "");
        let mut f = Flow::unavailable();
        assert_eq!(f.on_request_headers(&h, true), Next::Continue);
        assert!(h.sent.borrow().is_none());
    }

    #[test]
    fn a_full_latency_queue_answers_503_at_once_and_counts_it() {
        use understudy_matcher::limits::{DELAY_QUEUE_BYTES, DELAY_QUEUE_ENTRIES};
        for queue in [(DELAY_QUEUE_ENTRIES, 0), (1, DELAY_QUEUE_BYTES - 10)] {
            let h = host("/v1/chat/completions", REQ);
            h.queue.set(queue);
            let mut f = Flow::new(runtime_with_latency(OnMiss::Error, 250));
            f.on_request_headers(&h, false);
            assert_eq!(f.on_request_body(&h, REQ.len(), true), Next::Pause);
            assert_eq!(h.delayed.get(), 0, "not queued");
            let (status, headers, body) = h.sent.borrow().clone().unwrap();
            assert_eq!(status, 503);
            assert!(headers.contains(&("retry-after".into(), "1".into())));
            assert!(String::from_utf8(body).unwrap().contains("understudy_delay_queue_full"));
            assert_eq!(*h.counters.borrow(), vec![Counter::Requests, Counter::OverBudget]);
            assert!(h.accounted.borrow().is_empty(), "an answer that never went out saved nothing");
        }
        // Room left: queued as before.
        let h = host("/v1/chat/completions", REQ);
        h.queue.set((DELAY_QUEUE_ENTRIES - 1, 0));
        let mut f = Flow::new(runtime_with_latency(OnMiss::Error, 250));
        f.on_request_headers(&h, false);
        f.on_request_body(&h, REQ.len(), true);
        assert_eq!(h.delayed.get(), 250);
        assert_eq!(*h.counters.borrow(), vec![Counter::Requests, Counter::Hits]);
    }

    #[test]
    fn a_local_reply_from_a_later_filter_is_not_a_misconfiguration() {
        // The buffer filter's 413 passes back through us while we still wait for the body.
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(runtime(OnMiss::Error));
        f.on_request_headers(&h, false);
        f.on_response_headers(&h);
        assert!(h.counters.borrow().is_empty());
        assert!(h.errors.borrow().is_empty());
        assert!(h.response_headers.borrow().is_empty());
    }

    #[test]
    fn record_mode_forwards_every_llm_call_uncompressed_and_pace_headers_never_come_from_clients() {
        let mut h = host("/v1/chat/completions", REQ);
        h.headers.push((PACE_HEADER.into(), "1".into()));
        let mut f = Flow::new(runtime_with(OnMiss::Error, 0, Mode::Record, None));
        f.on_request_headers(&h, false);
        assert_eq!(f.on_request_body(&h, REQ.len(), true), Next::Continue, "a request an asset matches goes live too");
        assert!(f.forwarded() && h.sent.borrow().is_none());
        assert_eq!(
            *h.request_changes.borrow(),
            vec![
                (UPSTREAM_HEADER.to_string(), Some("openai".to_string())),
                (PACE_HEADER.to_string(), None),
                ("accept-encoding".to_string(), None)
            ]
        );
        assert_eq!(*h.counters.borrow(), vec![Counter::Requests, Counter::Misses, Counter::Passthroughs]);
        // record_missing: hits answered, misses forwarded even with on_miss error.
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(runtime_with(OnMiss::Error, 0, Mode::RecordMissing, None));
        f.on_request_headers(&h, false);
        assert_eq!(f.on_request_body(&h, REQ.len(), true), Next::Pause);
        assert_eq!(h.sent.borrow().as_ref().unwrap().0, 200);
        let other = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"new"}]}"#;
        let h = host("/v1/chat/completions", other);
        let mut f = Flow::new(runtime_with(OnMiss::Error, 0, Mode::RecordMissing, None));
        f.on_request_headers(&h, false);
        assert_eq!(f.on_request_body(&h, other.len(), true), Next::Continue);
        assert!(f.forwarded());
        // Replay leaves accept-encoding alone (it only names the provider for routing).
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(runtime(OnMiss::Error));
        f.on_request_headers(&h, false);
        assert_eq!(*h.request_changes.borrow(), vec![(UPSTREAM_HEADER.to_string(), Some("openai".to_string()))]);
    }

    #[test]
    fn a_recorded_stream_with_timing_goes_through_the_pacer_when_pacing_is_on() {
        let stream_req = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let pacing = Some(understudy_matcher::record::PacingConfig { speed: 2.0 });
        let rt = runtime_with(OnMiss::Error, 0, Mode::Replay, pacing);
        // The first response has no timing: answered locally.
        let h = host("/v1/chat/completions", stream_req);
        let mut f = Flow::new(rt.clone());
        f.on_request_headers(&h, false);
        assert_eq!(f.on_request_body(&h, stream_req.len(), true), Next::Pause);
        assert!(h.paced.borrow().is_none());
        // The second is a recorded stream with timing: sent to the pacer, at twice the speed.
        let h = host("/v1/chat/completions", stream_req);
        let mut f = Flow::new(rt);
        f.on_request_headers(&h, false);
        assert_eq!(f.on_request_body(&h, stream_req.len(), true), Next::Continue);
        assert!(h.sent.borrow().is_none());
        let framed = h.paced.borrow().clone().unwrap();
        let (pace, body) = understudy_matcher::record::Pace::unframe(&framed).unwrap();
        assert_eq!(body, STREAM.as_bytes());
        assert_eq!(pace.chunks, vec![(50, 10), (125, STREAM.len() as u64 - 10)]);
        f.on_response_headers(&h);
        let (status, headers) = h.replaced.borrow().clone().unwrap();
        assert_eq!(status, 200);
        assert!(headers.contains(&("x-understudy".into(), "hit".into())));
        assert!(headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")));
        // Without pacing the same asset is answered locally.
        let h = host("/v1/chat/completions", stream_req);
        let rt = runtime_with(OnMiss::Error, 0, Mode::Replay, None);
        for _ in 0..2 {
            let mut f = Flow::new(rt.clone());
            f.on_request_headers(&h, false);
            assert_eq!(f.on_request_body(&h, stream_req.len(), true), Next::Pause);
        }
        assert!(h.paced.borrow().is_none());
    }

    // ---- the remote asset store (store.rs) ----------------------------------------------------------------

    /// A runtime with no assets of its own and a store holding the REQ asset; the store's files by key.
    fn store_runtime(on_miss: OnMiss) -> (Rc<Runtime>, Vec<(String, String)>) {
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let (key, _) = Normalizer::default().key(&route, REQ.as_bytes()).unwrap();
        let body: serde_json::Value = serde_json::from_str(REQ).unwrap();
        let asset: BundledAsset = serde_json::from_value(serde_json::json!({
            "key": key, "source": "t.json#0",
            "asset": {"request": {"path": "/v1/chat/completions", "body": body}, "response": {"body": {"id": "x", "choices": []}}, "refresh": false},
        }))
        .unwrap();
        let (sha256, files) = understudy_matcher::store::remote::layout(&[asset], &NormalizationConfig::default());
        let cfg = serde_json::json!({
            "on_miss": on_miss,
            "store": {"cluster": "store", "prefix": "/s", "sha256": sha256, "timeout_ms": 100},
        });
        (Rc::new(Runtime::from_json_sealed(&cfg.to_string()).unwrap()), files)
    }

    fn held(f: &mut Flow, h: &FakeHost, body: &str) -> understudy_matcher::Fetch {
        f.on_request_headers(h, false);
        assert_eq!(f.on_request_body(h, body.len(), true), Next::Pause, "held while the store is asked");
        assert!(h.sent.borrow().is_none());
        h.fetches.borrow().last().cloned().expect("a fetch")
    }

    #[test]
    fn a_key_missing_locally_is_fetched_from_the_store_then_served_from_the_cache() {
        let (rt, files) = store_runtime(OnMiss::Error);
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(rt.clone());
        let fetch = held(&mut f, &h, REQ);
        assert_eq!((fetch.cluster.as_str(), fetch.timeout_ms), ("store", 100));
        assert_eq!(fetch.path, format!("/s/{}/{}.json", &fetch.key[..2], fetch.key));
        let file = files[0].1.clone().into_bytes();
        f.on_store_reply(&h, 3, Some("200".into()), file.len(), |n| Some(file[..n].to_vec()));
        let (status, headers, _) = h.sent.borrow().clone().unwrap();
        assert_eq!(status, 200);
        assert!(headers.contains(&("x-understudy-store".into(), "fetched".into())), "{headers:?}");
        assert_eq!(*h.counters.borrow(), vec![Counter::StoreFetches, Counter::Requests, Counter::Hits]);
        // The next request is answered from the VM's cache, without a fetch.
        let h = host("/v1/chat/completions", REQ);
        let mut f = Flow::new(rt);
        f.on_request_headers(&h, false);
        assert_eq!(f.on_request_body(&h, REQ.len(), true), Next::Pause);
        assert!(h.fetches.borrow().is_empty());
        assert!(h.sent.borrow().as_ref().unwrap().1.contains(&("x-understudy-store".into(), "cached".into())));
    }

    #[test]
    fn a_404_is_a_miss_and_an_outage_a_counted_store_error_never_a_forward_in_strict_mode() {
        let other = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"bye"}]}"#;
        let (rt, files) = store_runtime(OnMiss::Error);
        let h = host("/v1/chat/completions", other);
        let mut f = Flow::new(rt.clone());
        held(&mut f, &h, other);
        f.on_store_reply(&h, 3, Some("404".into()), 0, |_| None);
        let (status, _, body) = h.sent.borrow().clone().unwrap();
        assert_eq!(status, 404);
        assert!(String::from_utf8(body).unwrap().contains("the store has no entry for this key"));
        assert!(!h.resumed.get());
        // An outage (no answer), a tampered entry, a dispatch that can't start: 503, counted, not forwarded.
        let tampered = files[0].1.replace("\"choices\":[]", "\"choices\":[1]").into_bytes();
        let replies: [(usize, Option<String>, Vec<u8>); 2] = [(0, None, Vec::new()), (3, Some("200".into()), tampered)];
        for (n, status, file) in replies {
            let h = host("/v1/chat/completions", REQ);
            let mut f = Flow::new(rt.clone());
            held(&mut f, &h, REQ);
            f.on_store_reply(&h, n, status, file.len(), |k| Some(file[..k].to_vec()));
            assert_eq!(h.sent.borrow().as_ref().unwrap().0, 503);
            assert!(h.counters.borrow().contains(&Counter::StoreErrors));
            assert_eq!(h.errors.borrow().len(), 1, "{:?}", h.errors.borrow());
            assert!(!h.resumed.get());
        }
        let h = FakeHost { fetch_error: Some("no such cluster".into()), ..host("/v1/chat/completions", REQ) };
        let mut f = Flow::new(rt);
        f.on_request_headers(&h, false);
        assert_eq!(f.on_request_body(&h, REQ.len(), true), Next::Pause);
        assert_eq!(h.sent.borrow().as_ref().unwrap().0, 503);
        assert!(h.errors.borrow()[0].contains("no such cluster"));
    }

    #[test]
    fn under_passthrough_a_store_miss_or_outage_resumes_the_held_request() {
        let (rt, _) = store_runtime(OnMiss::Passthrough);
        // Two bodies: a 404 is remembered (a published store never changes), so the same body is not asked twice.
        for (n, status, word) in [(3, Some("404".to_string()), "bye"), (0, None, "ciao")] {
            let other = REQ.replace("hi", word);
            let h = host("/v1/chat/completions", &other);
            let mut f = Flow::new(rt.clone());
            held(&mut f, &h, &other);
            f.on_store_reply(&h, n, status, 0, |_| None);
            assert!(h.sent.borrow().is_none());
            assert!(h.resumed.get(), "the held request goes on to the upstream");
            assert!(h.counters.borrow().contains(&Counter::Passthroughs));
        }
    }
}
