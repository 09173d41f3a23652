//! Benchmark contender: the wasm floor, the most trivial proxy-wasm HTTP filter that could answer an LLM
//! request locally.
//!
//! It does what any such filter must do and nothing else: `Continue` on request headers (like Understudy, it
//! sits before an `envoy.filters.http.buffer` filter), `Pause` on body chunks until `end_of_stream`, then read
//! the whole body, SHA-256 it (no JSON parsing, no normalization, no lookup) and answer
//! `200` with `content-type: application/json`, `x-floor-key: <hex digest>` and a fixed body: the plugin
//! configuration string, read once per VM in `on_configure`.
//!
//! `bench/run.sh` runs it in Understudy's own Envoy bootstrap with only the wasm module and its configuration
//! swapped, so the difference between the two rows is Understudy's own work (parse, normalize, canonicalize,
//! look up, render). Build: `cargo build --release --target wasm32-wasip1 -p understudy-bench-floor`.

#[cfg(target_arch = "wasm32")]
mod plugin {
    use std::rc::Rc;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

    use crate::hex_sha256;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { body: Rc::from(Vec::new()) }) });
    }}

    struct Root {
        body: Rc<[u8]>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            match self.get_plugin_configuration() {
                Some(b) if !b.is_empty() => {
                    self.body = Rc::from(b);
                    true
                }
                _ => {
                    let _ = hostcalls::log(
                        LogLevel::Critical,
                        "bench-floor: the plugin configuration (reply body) is empty",
                    );
                    false
                }
            }
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Floor { body: self.body.clone() }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Floor {
        body: Rc<[u8]>,
    }

    impl Context for Floor {}

    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
            // Same as Understudy: the buffer filter after us holds the request back from the router.
            Action::Continue
        }

        fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            if !end_of_stream {
                return Action::Pause;
            }
            let request = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size).ok().flatten();
            let key = hex_sha256(request.as_deref().unwrap_or_default());
            let headers = [("content-type", "application/json"), ("x-floor-key", key.as_str())];
            if let Err(e) = hostcalls::send_http_response(200, headers.to_vec(), Some(&self.body)) {
                let _ = hostcalls::log(LogLevel::Error, &format!("bench-floor: send_http_response failed: {e:?}"));
            }
            Action::Pause
        }
    }
}

/// Lower-case hex SHA-256 of `data`.
pub fn hex_sha256(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for b in digest {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::hex_sha256;

    #[test]
    fn hex_sha256_matches_the_known_digest() {
        assert_eq!(hex_sha256(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hex_sha256(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
