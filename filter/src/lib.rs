//! `understudy-filter`: the proxy-wasm adapter that runs Understudy inside Envoy.
//!
//! It is deliberately thin. [`flow::Flow`] is a small per-request state machine around one
//! `Runtime::decide()` call from `understudy-matcher`; every host call goes through the [`host::Host`]
//! trait, so the state machine is unit-tested natively with a fake host.
//!
//! Buffering design (safe under plain Envoy and Istio alike): the filter returns `Continue` on request
//! headers and `Pause` on body chunks until `end_of_stream`, and an `envoy.filters.http.buffer` filter must
//! sit after it, before the router, so the router starts only after the decision. A missing buffer filter
//! is detected (the upstream answers while a decision is pending, or an upstream host is already chosen when
//! the body ends) and reported loudly: a critical log line and the `understudy.misconfigured` counter.

pub mod embedded;
pub mod env;
pub mod flow;
pub mod host;
pub mod metrics;
pub mod record;
pub mod store;

#[cfg(target_arch = "wasm32")]
mod plugin;
#[cfg(target_arch = "wasm32")]
mod recording;
