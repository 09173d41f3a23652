//! Record mode, the host side: each forwarded LLM call's capture is built as its answer passes (the capture
//! logic itself is `understudy_matcher::record`), then queued in this VM's [`Outbox`] and delivered to the
//! collector with `dispatch_http_call` from the root context's tick, never holding up the client.
//!
//! The outbox is bounded (`RECORD_QUEUE_ENTRIES` captures; `RECORD_BUFFER_BYTES` for queued captures and those
//! still being recorded), a delivery is retried with a doubling back-off (`RECORD_BACKOFF_MS` up to
//! `RECORD_BACKOFF_MAX_MS`, `RECORD_ATTEMPTS` attempts), and every capture that does not reach the
//! collector is counted (`understudy.record_failed`) and logged by id, never by content. The gauge
//! `understudy.record_pending` counts captures begun and not yet delivered or given up, so `understudy up`
//! knows when everything is on disk.

use std::collections::{BTreeMap, VecDeque};

use understudy_matcher::limits::{
    RECORD_ATTEMPTS, RECORD_BACKOFF_MAX_MS, RECORD_BACKOFF_MS, RECORD_BUFFER_BYTES, RECORD_IN_FLIGHT,
    RECORD_QUEUE_ENTRIES,
};
use understudy_matcher::record::Delivery;

/// Record-mode stats (`understudy.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStat {
    /// Captures acknowledged by the collector (on disk).
    Recorded,
    /// Captures that should have been recorded and were not: too big, no room, refused by the collector,
    /// retries exhausted, a redaction that would change the key.
    Failed,
    /// Answers not stored on purpose: 5xx and 429 (unless `keep_errors`), requests no asset can hold.
    Skipped,
    /// Answers cut short: a stream reset or without its last event, a JSON body that does not parse.
    Truncated,
}

impl RecordStat {
    /// Every record counter, in definition order.
    pub const ALL: [RecordStat; 4] =
        [RecordStat::Recorded, RecordStat::Failed, RecordStat::Skipped, RecordStat::Truncated];

    /// The stat's name.
    pub fn stat_name(self) -> &'static str {
        match self {
            RecordStat::Recorded => "understudy.recorded",
            RecordStat::Failed => "understudy.record_failed",
            RecordStat::Skipped => "understudy.record_skipped",
            RecordStat::Truncated => "understudy.record_truncated",
        }
    }

    /// The counter a `Skip` goes to.
    pub fn of_skip(skip: &understudy_matcher::record::Skip) -> RecordStat {
        match skip.stat() {
            "record_skipped" => RecordStat::Skipped,
            "record_truncated" => RecordStat::Truncated,
            _ => RecordStat::Failed,
        }
    }
}

/// The gauge of captures begun and not yet delivered or given up.
pub const PENDING_GAUGE: &str = "understudy.record_pending";

/// A capture waiting to be (re)delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The capture.
    pub delivery: Delivery,
    /// Deliveries tried so far.
    pub attempts: u32,
    /// Not before this time (ns).
    pub due_nanos: u64,
}

/// What became of a delivery the collector answered (or that failed on the way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// On disk.
    Delivered(String),
    /// Tried again later.
    Retry,
    /// Given up: the capture id and why.
    GaveUp(String, String),
    /// An answer for no delivery of ours.
    Unknown,
}

/// This VM's captures on their way to the collector, and the bytes of those still being recorded.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Pending>,
    in_flight: BTreeMap<u32, Pending>,
    /// Bytes of queued and in-flight captures.
    queued_bytes: usize,
    /// Bytes held by captures still being recorded.
    recording_bytes: usize,
}

impl Outbox {
    /// Room for `more` bytes of a capture being recorded? Charged when there is.
    pub fn reserve(&mut self, more: usize) -> bool {
        if self.queued_bytes.saturating_add(self.recording_bytes).saturating_add(more) > RECORD_BUFFER_BYTES {
            return false;
        }
        self.recording_bytes += more;
        true
    }

    /// A capture being recorded gave back `bytes`.
    pub fn release(&mut self, bytes: usize) {
        self.recording_bytes = self.recording_bytes.saturating_sub(bytes);
    }

    /// Queues a finished capture for delivery now. `Err` says why there is no room.
    pub fn push(&mut self, delivery: Delivery, now_nanos: u64) -> Result<(), String> {
        let len = delivery.body.len();
        if self.queue.len() + self.in_flight.len() >= RECORD_QUEUE_ENTRIES {
            return Err(format!(
                "{RECORD_QUEUE_ENTRIES} captures already wait for the collector (RECORD_QUEUE_ENTRIES)"
            ));
        }
        if self.queued_bytes.saturating_add(self.recording_bytes).saturating_add(len) > RECORD_BUFFER_BYTES {
            return Err(format!(
                "the record buffer is full ({} MiB, RECORD_BUFFER_BYTES): the collector is slow or down",
                RECORD_BUFFER_BYTES >> 20
            ));
        }
        self.queued_bytes += len;
        self.queue.push_back(Pending { delivery, attempts: 0, due_nanos: now_nanos });
        Ok(())
    }

    /// Captures to send now: due, and within the in-flight limit. They count as in flight once `sent`.
    pub fn due(&mut self, now_nanos: u64) -> Vec<Pending> {
        let room = RECORD_IN_FLIGHT.saturating_sub(self.in_flight.len());
        let mut out = Vec::new();
        let mut waiting = VecDeque::with_capacity(self.queue.len());
        while let Some(p) = self.queue.pop_front() {
            if out.len() < room && p.due_nanos <= now_nanos {
                out.push(p);
            } else {
                waiting.push_back(p);
            }
        }
        self.queue = waiting;
        out
    }

    /// A capture handed to Envoy under `token`.
    pub fn sent(&mut self, token: u32, mut p: Pending) {
        p.attempts += 1;
        self.in_flight.insert(token, p);
    }

    /// A capture Envoy would not dispatch (e.g. no such cluster): retried like a failed delivery.
    pub fn not_sent(&mut self, mut p: Pending, why: &str, now_nanos: u64) -> Answered {
        p.attempts += 1;
        self.retry_or_give_up(p, why, now_nanos)
    }

    /// The collector answered `status` (`None`: no answer, e.g. the connection failed or timed out) for
    /// `token`; `reason` is its message, for the log.
    pub fn answered(&mut self, token: u32, status: Option<u16>, reason: &str, now_nanos: u64) -> Answered {
        let Some(p) = self.in_flight.remove(&token) else { return Answered::Unknown };
        match status {
            Some(s) if (200..300).contains(&s) => {
                self.queued_bytes = self.queued_bytes.saturating_sub(p.delivery.body.len());
                Answered::Delivered(p.delivery.id)
            }
            // The collector refused the capture itself (a bad document, other normalization): retrying can't help.
            Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                self.queued_bytes = self.queued_bytes.saturating_sub(p.delivery.body.len());
                Answered::GaveUp(p.delivery.id, format!("the collector refused it ({s}): {reason}"))
            }
            _ => {
                let why = match status {
                    Some(s) => format!("the collector answered {s}: {reason}"),
                    None => format!("no answer from the collector: {reason}"),
                };
                self.retry_or_give_up(p, &why, now_nanos)
            }
        }
    }

    fn retry_or_give_up(&mut self, mut p: Pending, why: &str, now_nanos: u64) -> Answered {
        if p.attempts >= RECORD_ATTEMPTS {
            self.queued_bytes = self.queued_bytes.saturating_sub(p.delivery.body.len());
            return Answered::GaveUp(p.delivery.id, format!("{why} (after {} attempts)", p.attempts));
        }
        p.due_nanos = now_nanos.saturating_add(backoff_ms(p.attempts).saturating_mul(1_000_000));
        self.queue.push_back(p);
        Answered::Retry
    }

    /// Nothing queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty()
    }

    /// Captures queued or in flight, and their bytes.
    pub fn len(&self) -> (usize, usize) {
        (self.queue.len() + self.in_flight.len(), self.queued_bytes)
    }
}

/// The wait before retry number `attempts` (1-based): `RECORD_BACKOFF_MS` doubling up to `RECORD_BACKOFF_MAX_MS`.
pub fn backoff_ms(attempts: u32) -> u64 {
    let shift = attempts.saturating_sub(1).min(20);
    RECORD_BACKOFF_MS.saturating_mul(1u64 << shift).min(RECORD_BACKOFF_MAX_MS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn d(id: &str, len: usize) -> Delivery {
        Delivery { path: "/v1/captures", id: id.into(), key: "k".into(), body: vec![b'x'; len] }
    }

    #[test]
    fn deliveries_are_limited_in_flight_and_acknowledged_ones_leave() {
        let mut o = Outbox::default();
        for i in 0..RECORD_IN_FLIGHT + 3 {
            o.push(d(&format!("c{i}"), 10), 0).unwrap();
        }
        let now = o.due(0);
        assert_eq!(now.len(), RECORD_IN_FLIGHT);
        for (t, p) in now.into_iter().enumerate() {
            o.sent(t as u32, p);
        }
        assert!(o.due(0).is_empty(), "no room in flight");
        assert_eq!(o.answered(0, Some(201), "", 0), Answered::Delivered("c0".into()));
        assert_eq!(o.answered(0, Some(201), "", 0), Answered::Unknown, "an answer counts once");
        let next = o.due(0);
        assert_eq!(next.len(), 1);
        for p in next {
            o.sent(99, p);
        }
        assert_eq!(o.len(), (RECORD_IN_FLIGHT + 2, (RECORD_IN_FLIGHT + 2) * 10));
    }

    #[test]
    fn failed_deliveries_back_off_then_give_up_and_refusals_are_final() {
        let mut o = Outbox::default();
        o.push(d("a", 10), 0).unwrap();
        let mut now = 0;
        let mut waits = Vec::new();
        loop {
            let mut due = o.due(now);
            if due.is_empty() {
                now += 1_000_000;
                continue;
            }
            let p = due.pop().unwrap();
            let sent_at = now;
            o.sent(7, p);
            match o.answered(7, None, "connection refused", now) {
                Answered::Retry => {}
                Answered::GaveUp(id, why) => {
                    assert_eq!(id, "a");
                    assert!(why.contains("after 10 attempts"), "{why}");
                    break;
                }
                other => panic!("{other:?}"),
            }
            waits.push(sent_at);
        }
        let gaps: Vec<u64> = waits.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
        assert_eq!(gaps, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert!(o.is_idle());
        assert_eq!(o.len(), (0, 0), "bytes are given back");
        o.push(d("b", 10), 0).unwrap();
        let p = o.due(0).pop().unwrap();
        o.sent(1, p);
        assert!(matches!(o.answered(1, Some(422), "other normalization", 0), Answered::GaveUp(..)));
        o.push(d("c", 10), 0).unwrap();
        let p = o.due(0).pop().unwrap();
        o.sent(2, p);
        assert_eq!(o.answered(2, Some(503), "", 0), Answered::Retry);
    }

    #[test]
    fn the_outbox_is_bounded_by_entries_and_bytes_shared_with_captures_being_recorded() {
        let mut o = Outbox::default();
        for i in 0..RECORD_QUEUE_ENTRIES {
            o.push(d(&i.to_string(), 1), 0).unwrap();
        }
        assert!(o.push(d("over", 1), 0).unwrap_err().contains("RECORD_QUEUE_ENTRIES"));
        let mut o = Outbox::default();
        assert!(o.reserve(RECORD_BUFFER_BYTES - 100));
        assert!(!o.reserve(200));
        assert!(o.push(d("big", 200), 0).unwrap_err().contains("RECORD_BUFFER_BYTES"));
        o.release(RECORD_BUFFER_BYTES - 100);
        o.push(d("fits", 200), 0).unwrap();
    }
}
