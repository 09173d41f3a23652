//! Streams in every framing: `stream::assemble_recorded` on arbitrary bytes for every operation on its own
//! API's route and on Bedrock's routes (AWS event streams, Anthropic events in `chunk`s), and
//! `stream::render_stream` of the input parsed as JSON (when it is) for the same routes and a few options.
//!
//! Properties: never panics; when render succeeds, assembling the rendered stream succeeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_matcher::stream::{assemble_recorded, is_sse, render_stream, StreamOptions};
use understudy_matcher::{classify, Operation, Route};

const OPTIONS: [StreamOptions; 3] = [
    StreamOptions { include_usage: false, chunk_chars: 8 },
    StreamOptions { include_usage: true, chunk_chars: 1 },
    StreamOptions { include_usage: true, chunk_chars: 0 },
];

/// Routes whose framing differs from their operation's own API.
const FOREIGN: &[&str] = &[
    "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream",
    "/model/meta.llama3-8b-instruct-v1%3A0/invoke-with-response-stream",
];

fn routes() -> Vec<Route> {
    let mut out: Vec<Route> = Operation::ALL.into_iter().map(Route::of).collect();
    out.extend(FOREIGN.iter().filter_map(|p| classify("POST", p)));
    out
}

fuzz_target!(|data: &[u8]| {
    let _ = is_sse(&String::from_utf8_lossy(data));
    let routes = routes();
    for route in &routes {
        let _ = assemble_recorded(route, data);
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for route in &routes {
        for opts in &OPTIONS {
            let Ok(stream) = render_stream(route, &body, opts) else { continue };
            if let Err(e) = assemble_recorded(route, &stream) {
                panic!(
                    "{} on {:?}: rendered stream does not assemble: {e}\n--- body:\n{body}\n--- stream:\n{}",
                    route.operation,
                    route.api,
                    String::from_utf8_lossy(&stream)
                );
            }
        }
    }
});
