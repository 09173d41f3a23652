//! Record mode's hostcalls (wasm only): one [`Recording`] per HTTP stream copies the answer as it passes
//! (returning `Continue`, so the client is never held up), and the root context's tick delivers finished
//! captures from the VM's [`Outbox`] to the collector cluster with `dispatch_http_call`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};
use understudy_matcher::limits::RECORD_DELIVERY_TIMEOUT_MS;
use understudy_matcher::parity::Observed;
use understudy_matcher::policy::{mismatch_message, parity_delivery, ParityCheck};
use understudy_matcher::record::Capture;
use understudy_matcher::{classify, Runtime};

use crate::record::{Answered, Outbox, RecordStat, PENDING_GAUGE};

/// This VM's outbox, shared by the root context and every HTTP context.
pub(crate) type SharedOutbox = Rc<RefCell<Outbox>>;

/// Record-mode metric ids.
pub(crate) struct Metrics {
    counters: [u32; 4],
    pending: u32,
}

impl Metrics {
    /// Defines the record counters and the pending gauge.
    pub(crate) fn define() -> Result<Metrics, String> {
        let mut counters = [0u32; 4];
        for (slot, s) in counters.iter_mut().zip(RecordStat::ALL) {
            *slot = hostcalls::define_metric(MetricType::Counter, &crate::env::stat_name(s.stat_name()))
                .map_err(|e| format!("cannot define metric {}: {e:?}", s.stat_name()))?;
        }
        let pending = hostcalls::define_metric(MetricType::Gauge, &crate::env::stat_name(PENDING_GAUGE))
            .map_err(|e| format!("cannot define metric {PENDING_GAUGE}: {e:?}"))?;
        Ok(Metrics { counters, pending })
    }

    fn count(&self, s: RecordStat) {
        let idx = RecordStat::ALL.iter().position(|x| *x == s).unwrap_or(0);
        if let Some(id) = self.counters.get(idx) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    /// A capture begun (+1) or resolved (-1): delivered, given up, or not recorded after all.
    fn pending(&self, delta: i64) {
        let _ = hostcalls::increment_metric(self.pending, delta);
    }

    /// A capture that ends here without reaching the collector.
    fn dropped(&self, stat: RecordStat, what: &str) {
        self.count(stat);
        let level = if stat == RecordStat::Failed { LogLevel::Error } else { LogLevel::Info };
        log(level, &format!("understudy: record: {what}"));
    }
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// Everything a stream's recording needs of its VM.
pub(crate) struct RecordCtx {
    pub(crate) runtime: Rc<Runtime>,
    pub(crate) outbox: SharedOutbox,
    pub(crate) metrics: Rc<Metrics>,
    /// Starts the root context's tick (shared with the latency queue).
    pub(crate) start_tick: fn(),
}

/// One stream's capture.
#[derive(Default)]
pub(crate) struct Recording {
    /// `:method` and `:path`, read while the request headers are still accessible (Envoy hides them from
    /// later callbacks once the filter lets them continue).
    request: Option<(String, String)>,
    capture: Option<Capture>,
    /// Bytes charged to the outbox's buffer for it.
    charged: usize,
    ended: bool,
    /// Parity: the answer is compared with this virtual one instead of being recorded.
    parity: Option<ParityCheck>,
}

impl Recording {
    /// The request headers arrived: remember what a capture needs of them.
    pub(crate) fn request_headers(&mut self) {
        let get = |n: &str| hostcalls::get_map_value(MapType::HttpRequestHeaders, n).ok().flatten().unwrap_or_default();
        self.request = Some((get(":method"), get(":path")));
    }

    /// The request has been forwarded upstream: start capturing it (for a parity check, to compare it with
    /// `parity`; the virtual answer's bytes are charged to the record buffer too).
    pub(crate) fn begin(&mut self, r: &RecordCtx, body_size: usize, parity: Option<ParityCheck>) {
        let Some((method, path)) = self.request.take() else { return };
        let Some(route) = classify(&method, &path) else { return };
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size).ok().flatten().unwrap_or_default();
        let now = now_nanos();
        r.metrics.pending(1);
        match r.runtime.recorder().begin(&route, &path, &body, now, None) {
            Ok(c) => {
                let held = c.held_bytes() + parity.as_ref().map_or(0, ParityCheck::held_bytes);
                if r.outbox.borrow_mut().reserve(held) {
                    self.charged = held;
                    self.capture = Some(c);
                    self.parity = parity;
                } else {
                    r.metrics.pending(-1);
                    r.metrics.dropped(
                        RecordStat::Failed,
                        &format!(
                            "capture {} ({}) FAILED: the record buffer is full (RECORD_BUFFER_BYTES)",
                            c.id(),
                            route.operation
                        ),
                    );
                }
            }
            Err(skip) => {
                r.metrics.pending(-1);
                r.metrics.dropped(RecordStat::of_skip(&skip), &format!("{} request: {skip}", route.operation));
            }
        }
    }

    /// Is a capture under way?
    pub(crate) fn active(&self) -> bool {
        self.capture.is_some()
    }

    /// The answer's status and headers arrived.
    pub(crate) fn response_headers(&mut self, end_of_stream: bool) {
        let Some(c) = self.capture.as_mut() else { return };
        let headers = hostcalls::get_map(MapType::HttpResponseHeaders).unwrap_or_default();
        let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        c.response_headers(status, headers);
        self.ended |= end_of_stream;
    }

    /// A piece of the answer's body passed (it is already on its way to the client).
    pub(crate) fn response_body(&mut self, r: &RecordCtx, size: usize, end_of_stream: bool) {
        self.ended |= end_of_stream;
        let Some(c) = self.capture.as_mut() else { return };
        let chunk = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size).ok().flatten().unwrap_or_default();
        let pushed = c.push_body(&chunk, now_nanos());
        let held = c.held_bytes();
        let grew = held.saturating_sub(self.charged);
        let room = pushed.is_ok() && r.outbox.borrow_mut().reserve(grew);
        if room {
            self.charged += grew;
            return;
        }
        let id = c.id().to_string();
        let why = match pushed {
            Err(skip) => skip.to_string(),
            Ok(()) => "recording FAILED: the record buffer is full (RECORD_BUFFER_BYTES)".into(),
        };
        self.give_up(r, RecordStat::Failed, &format!("capture {id}: {why}"));
    }

    /// The answer's trailers arrived: it has ended.
    pub(crate) fn response_trailers(&mut self) {
        self.ended = true;
    }

    fn give_up(&mut self, r: &RecordCtx, stat: RecordStat, what: &str) {
        self.capture = None;
        self.parity = None;
        r.outbox.borrow_mut().release(std::mem::take(&mut self.charged));
        r.metrics.pending(-1);
        r.metrics.dropped(stat, what);
    }

    /// The stream is over: a whole answer becomes a capture for the collector; one that never ended (a
    /// reset stream, a client that hung up) is counted as truncated.
    /// A parity check answers whether the live answer matched (`None`: no check was made).
    pub(crate) fn done(&mut self, r: &RecordCtx) -> Option<bool> {
        let c = self.capture.take()?;
        let parity = self.parity.take();
        r.outbox.borrow_mut().release(std::mem::take(&mut self.charged));
        let id = c.id().to_string();
        if !self.ended {
            r.metrics.pending(-1);
            r.metrics.dropped(RecordStat::Truncated, &format!("capture {id}: the answer never ended (stream reset)"));
            return None;
        }
        let now = now_nanos();
        let mut matched = None;
        let delivery = match parity {
            Some(check) => {
                let (status, content_type, body) = c.answer();
                let live = Observed { status, content_type, body };
                let env = r.runtime.active().map_or("default", |a| a.name.as_str());
                let parity = r.runtime.policy().map(|p| p.parity());
                let Some(parity) = parity else {
                    r.metrics.pending(-1);
                    return None;
                };
                let record = check.judge(parity, env, live, now / 1_000_000);
                matched = Some(record.verdict.matched);
                if !record.verdict.matched {
                    log(LogLevel::Warn, &mismatch_message(&record));
                }
                match parity_delivery(&record, format!("parity-{id}")) {
                    Ok(d) => d,
                    Err(why) => {
                        r.metrics.pending(-1);
                        r.metrics.dropped(RecordStat::Failed, &format!("{id}: {why}"));
                        return matched;
                    }
                }
            }
            None => match r.runtime.recorder().finish(c, now) {
                Ok(d) => d,
                Err(skip) => {
                    r.metrics.pending(-1);
                    r.metrics.dropped(RecordStat::of_skip(&skip), &format!("capture {id}: {skip}"));
                    return None;
                }
            },
        };
        let was_idle = r.outbox.borrow().is_idle();
        match r.outbox.borrow_mut().push(delivery, now) {
            Ok(()) => {}
            Err(why) => {
                r.metrics.pending(-1);
                r.metrics.dropped(RecordStat::Failed, &format!("capture {id} FAILED: {why}"));
                return matched;
            }
        }
        if was_idle {
            (r.start_tick)();
        }
        matched
    }
}

/// Sends what is due (root context tick).
pub(crate) fn pump(r: &RecordCtx) {
    let now = now_nanos();
    let due = r.outbox.borrow_mut().due(now);
    for p in due {
        let id = p.delivery.id.clone();
        let headers = vec![
            (":method", "POST"),
            (":path", p.delivery.path),
            (":authority", "understudy-collector"),
            ("content-type", "application/json"),
            ("x-understudy-capture", id.as_str()),
        ];
        let sent = hostcalls::dispatch_http_call(
            r.runtime.recorder().collector(),
            headers,
            Some(&p.delivery.body),
            Vec::new(),
            Duration::from_millis(RECORD_DELIVERY_TIMEOUT_MS),
        );
        match sent {
            Ok(token) => r.outbox.borrow_mut().sent(token, p),
            Err(e) => {
                let why = format!("Envoy would not send it to cluster {:?}: {e:?}", r.runtime.recorder().collector());
                let answered = r.outbox.borrow_mut().not_sent(p, &why, now);
                settle(r, answered);
            }
        }
    }
}

/// The collector answered delivery `token` (root context).
pub(crate) fn on_answer(r: &RecordCtx, token: u32, body_size: usize) {
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u16>().ok());
    let reason = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(300))
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let answered = r.outbox.borrow_mut().answered(token, status, &reason, now_nanos());
    settle(r, answered);
}

fn settle(r: &RecordCtx, a: Answered) {
    match a {
        Answered::Delivered(id) => {
            r.metrics.pending(-1);
            if !id.starts_with("parity-") {
                r.metrics.count(RecordStat::Recorded);
            }
        }
        Answered::GaveUp(id, why) => {
            r.metrics.pending(-1);
            r.metrics.dropped(RecordStat::Failed, &format!("capture {id} FAILED, not delivered: {why}"));
        }
        Answered::Retry | Answered::Unknown => {}
    }
}
