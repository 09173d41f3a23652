//! The pacer: replays a recorded stream with its recorded timing. A local reply leaves Envoy in one piece, so
//! for a hit whose answer has a timing (with pacing on) the filter replaces the request body with the answer
//! and its chunk plan (`understudy_matcher::record::Pace`) and routes the request here; the pacer streams the
//! chunks back with their recorded gaps, and the filter puts the answer's status and headers on the way back.
//! It holds no assets and no state: in a mesh it is a plain service (`understudy pace`), reached through a
//! cluster and a route on the pace header. `understudy up --replay-speed` runs one beside Envoy.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use understudy_matcher::record::Pace;

/// Most answers paced at once; more get a 503 (the filter's client sees Envoy's upstream error).
pub const MAX_PACED: usize = 1024;

/// Largest paced document: an answer within the answer budget plus its chunk plan.
const MAX_DOCUMENT: u64 = understudy_matcher::limits::ANSWER_BUDGET + (4 << 20);

/// `understudy pace`.
#[derive(Args)]
pub struct PaceArgs {
    /// Port (0 picks a free one; the chosen one is printed).
    #[arg(long, default_value_t = 10200)]
    pub port: u16,
    /// Address to listen on (0.0.0.0 in a mesh).
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: String,
}

/// A running pacer.
pub struct Server {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub port: u16,
}

impl Server {
    /// Starts serving on `listen`:`port`.
    pub fn start(listen: &str, port: u16) -> Result<Server> {
        let server = tiny_http::Server::http((listen, port))
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}:{port}: {e}"))?;
        let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or(port);
        let server = Arc::new(server);
        let active = Arc::new(AtomicUsize::new(0));
        let s = server.clone();
        let thread = std::thread::spawn(move || {
            for request in s.incoming_requests() {
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_PACED {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = request
                        .respond(tiny_http::Response::from_string("too many paced answers").with_status_code(503));
                    continue;
                }
                let active = active.clone();
                std::thread::spawn(move || {
                    pace(request);
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Server { server, thread: Some(thread), port })
    }

    /// Stops accepting.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pace(mut request: tiny_http::Request) {
    let started = Instant::now();
    let mut doc = Vec::new();
    let read = request.as_reader().take(MAX_DOCUMENT + 1).read_to_end(&mut doc);
    let Some((plan, body)) = read.ok().and_then(|_| Pace::unframe(&doc)) else {
        let _ = request.respond(tiny_http::Response::from_string("not a paced answer").with_status_code(400));
        return;
    };
    let mut out = request.into_writer();
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\
                cache-control: no-cache\r\nconnection: close\r\n\r\n";
    if out.write_all(head.as_bytes()).and_then(|_| out.flush()).is_err() {
        return;
    }
    let mut rest = body;
    for (at_ms, len) in plan.chunks {
        let due = started + Duration::from_millis(at_ms);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let n = usize::try_from(len).unwrap_or(usize::MAX).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        if chunk.is_empty() {
            continue;
        }
        let sent = write!(out, "{n:x}\r\n").and_then(|_| out.write_all(chunk)).and_then(|_| out.write_all(b"\r\n"));
        // The client went away: stop.
        if sent.and_then(|_| out.flush()).is_err() {
            return;
        }
    }
    let _ = out.write_all(b"0\r\n\r\n").and_then(|_| out.flush());
}

/// `understudy pace`: serve until SIGINT/SIGTERM.
pub fn run(a: PaceArgs) -> Result<()> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let server = Server::start(&a.listen, a.port)?;
    println!("Understudy pacer listening on {}:{}", a.listen, server.port);
    let _ = std::io::stdout().flush();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn chunks_leave_at_their_times_and_bad_documents_get_400() {
        let server = Server::start("127.0.0.1", 0).unwrap();
        let plan = Pace { chunks: vec![(0, 3), (150, 3), (300, 4)] };
        let doc = plan.frame(b"abcdefghij");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", doc.len()).unwrap();
        s.write_all(&doc).unwrap();
        let start = Instant::now();
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        let mut arrivals = Vec::new();
        let mut body = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap() == 0 {
                break;
            }
            // Chunk sizes are the lines after the head that parse as hex and are followed by data.
            if let Ok(n) = usize::from_str_radix(line.trim(), 16) {
                if n == 0 {
                    break;
                }
                let mut data = vec![0; n + 2];
                r.read_exact(&mut data).unwrap();
                arrivals.push(start.elapsed().as_millis() as u64);
                body.push_str(std::str::from_utf8(&data[..n]).unwrap());
            }
        }
        assert_eq!(body, "abcdefghij");
        assert_eq!(arrivals.len(), 3);
        // Gaps as ratios of the planned ones (150 ms each), within a generous band: no timed flake.
        let gaps = [arrivals[1] - arrivals[0], arrivals[2] - arrivals[1]];
        for g in gaps {
            assert!((100..400).contains(&g), "{arrivals:?}");
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        write!(s, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        server.stop();
    }
}
