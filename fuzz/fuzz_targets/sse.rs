//! SSE streams: `stream::assemble_sse` on arbitrary text for every operation, and `stream::render_sse` on
//! the input parsed as JSON (when it is) for every operation and a few stream options.
//!
//! Properties: never panics; when render succeeds, assembling the rendered stream succeeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_matcher::stream::{assemble_sse, is_sse, render_sse, StreamOptions};
use understudy_matcher::Operation;

const OPTIONS: [StreamOptions; 3] = [
    StreamOptions { include_usage: false, chunk_chars: 8 },
    StreamOptions { include_usage: true, chunk_chars: 1 },
    StreamOptions { include_usage: true, chunk_chars: 0 },
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = is_sse(&text);
    for op in Operation::ALL {
        let _ = assemble_sse(op, &text);
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for op in Operation::ALL {
        for opts in &OPTIONS {
            let Ok(sse) = render_sse(op, &body, opts) else { continue };
            if let Err(e) = assemble_sse(op, &sse) {
                panic!("{op}: rendered stream does not assemble: {e}\n--- body:\n{body}\n--- stream:\n{sse}");
            }
        }
    }
});
