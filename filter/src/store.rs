//! The filter's side of the remote asset store (`docs/store.md`): when the runtime answers
//! `Decision::Fetch`, the request is held (strict mode forwards nothing while it waits) and a GET for the
//! key's entry goes out through the configured Envoy cluster; when the store answers, fails or times out,
//! the runtime verifies and caches what came back and decides the request again. Everything that decides
//! is in `understudy_matcher` (`Runtime::take_fetched`, `Runtime::decide_fetched`); this module only moves
//! bytes between Envoy and the runtime and counts.

use understudy_matcher::limits::STORE_ENTRY_BYTES;
use understudy_matcher::{Decision, Fetch, Route, Runtime, StoreAnswer};

use crate::host::{Counter, Host};

/// What came back for one fetch, owned (read from Envoy's buffers in the call-response callback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An HTTP answer: status and body.
    Status(u16, Vec<u8>),
    /// No usable answer; says why.
    Failed(String),
}

impl Reply {
    /// Reads Envoy's answer to a fetch: `status` is its `:status` header (none when the call failed: Envoy
    /// reports a reset, a refused connection or the timeout as an answer without headers), and `read_body`
    /// reads that many bytes of its body. A body over `STORE_ENTRY_BYTES` is never read into the VM.
    pub fn read(
        num_headers: usize,
        status: Option<String>,
        body_size: usize,
        waited_ms: u64,
        timeout_ms: u64,
        read_body: impl FnOnce(usize) -> Option<Vec<u8>>,
    ) -> Reply {
        let status = status.and_then(|s| s.trim().parse::<u16>().ok());
        let timed_out = || format!("no answer within the store's timeout ({timeout_ms} ms)");
        // Envoy's clock for the filter is its event loop's, a little behind the timer that fired.
        let about_timeout = waited_ms.saturating_add(timeout_ms / 10 + 10) >= timeout_ms;
        let Some(status) = status.filter(|_| num_headers > 0) else {
            if about_timeout {
                return Reply::Failed(timed_out());
            }
            return Reply::Failed(format!("the call failed after {waited_ms} ms (connection refused or reset)"));
        };
        // Envoy answers a call that ran out of time with its own 504.
        if status == 504 && about_timeout {
            return Reply::Failed(timed_out());
        }
        if status != 200 && status != 404 {
            // The start of the answer says why (Envoy's own, e.g. "upstream connect error ... connection refused").
            let text = read_body(body_size.min(160)).unwrap_or_default();
            let text: String = String::from_utf8_lossy(&text).chars().filter(|c| (' '..='~').contains(c)).collect();
            return Reply::Failed(format!("it answered HTTP {status} ({})", text.trim()));
        }
        if body_size > STORE_ENTRY_BYTES {
            return Reply::Failed(format!(
                "its answer of {body_size} bytes is over STORE_ENTRY_BYTES ({STORE_ENTRY_BYTES}) and was not read"
            ));
        }
        if status == 404 || body_size == 0 {
            return Reply::Status(status, Vec::new());
        }
        match read_body(body_size) {
            Some(body) => Reply::Status(status, body),
            None => Reply::Failed("its answer's body could not be read".into()),
        }
    }

    fn answer(&self) -> StoreAnswer<'_> {
        match self {
            Reply::Status(s, body) => StoreAnswer::Status(*s, body),
            Reply::Failed(why) => StoreAnswer::Failed(why),
        }
    }
}

/// Starts the fetch; counted in `store_fetches`. An error (e.g. the cluster does not exist) means no answer
/// will come: the caller decides at once with it.
pub fn start(host: &dyn Host, fetch: &Fetch) -> Result<(), String> {
    host.increment(Counter::StoreFetches);
    host.fetch(fetch)
}

/// Hands the store's reply to the runtime and decides the held request again. A store error is counted in
/// `store_errors` and logged (the key and the reason; never request content).
pub fn decide(runtime: &Runtime, host: &dyn Host, route: &Route, body: &[u8], key: &str, reply: &Reply) -> Decision {
    let fetched = runtime.take_fetched(key, reply.answer());
    if let Some(why) = fetched.error() {
        host.increment(Counter::StoreErrors);
        host.log_error(&format!("understudy: asset store error: {why}"));
    }
    runtime.decide_fetched(route, body, host.now_nanos(), &fetched)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn envoy_answers_become_replies() {
        let body = |n: usize| Some(vec![b'x'; n]);
        assert_eq!(Reply::read(3, Some("200".into()), 2, 5, 100, body), Reply::Status(200, b"xx".to_vec()));
        // A 404's body is not read: it is a miss whatever it says.
        assert_eq!(Reply::read(3, Some("404".into()), 9, 5, 100, |_| panic!("read")), Reply::Status(404, Vec::new()));
        let Reply::Failed(why) = Reply::read(0, None, 0, 100, 100, body) else { panic!() };
        assert!(why.contains("timeout (100 ms)"), "{why}");
        let Reply::Failed(why) = Reply::read(0, None, 0, 3, 100, body) else { panic!() };
        assert!(why.contains("failed after 3 ms"), "{why}");
        let Reply::Failed(why) = Reply::read(3, Some("200".into()), STORE_ENTRY_BYTES + 1, 1, 100, |_| panic!("read"))
        else {
            panic!()
        };
        assert!(why.contains("STORE_ENTRY_BYTES"), "{why}");
        let Reply::Failed(_) = Reply::read(3, Some("200".into()), 4, 1, 100, |_| None) else { panic!() };
        // Envoy's own 504 after the timeout; another status says what the answer said.
        let Reply::Failed(why) = Reply::read(3, Some("504".into()), 24, 100, 100, body) else { panic!() };
        assert!(why.contains("timeout"), "{why}");
        let Reply::Failed(why) = Reply::read(3, Some("503".into()), 999, 5, 100, |n| Some(vec![b'y'; n])) else {
            panic!()
        };
        assert!(why.starts_with("it answered HTTP 503 (yyyy") && why.len() < 200, "{why}");
    }
}
