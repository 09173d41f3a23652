//! Every limit Understudy enforces, in one place.
//!
//! A V8 wasm VM (one per Envoy worker) has at most [`VM_MEMORY`] of linear memory, and it never shrinks: a
//! request that makes the VM allocate past it traps the VM, and with it every later request on that worker
//! until Envoy reloads the filter. So each stage of a request has a budget, and what would exceed it gets a
//! typed error in the API's own shape instead (see `docs/limits.md`, which lists every constant here with its
//! error and stat; `matcher/tests/limits_docs.rs` fails when the docs state another number).
//!
//! The memory of one VM is, at most:
//!
//! ```text
//!   the asset store (measured at load, logged as "wasm memory N bytes")
//! + REQUEST_BUDGET     the request being decided: body copy + parsed tree + transient buffers
//! + ANSWER_BUDGET      the answer being built: its tree, intermediate stream events, the rendered bytes
//! + DELAY_QUEUE_BYTES  answers waiting for their simulated latency
//! + MEMO_BYTES         exact repeated bodies remembered
//! + RECORD_BUFFER_BYTES  record modes only: captures being recorded or waiting for the collector
//! + STORE_CACHE_BYTES  entries fetched from a remote asset store (only with a `store` section)
//! ```
//!
//! which is [`PER_VM_BUDGET`] (712 MiB with every optional part) plus the store, well under 1 GiB for stores up to a few hundred MiB
//! (100k small assets take 200–260 MiB per VM).

/// The linear memory a V8 wasm VM may grow to.
pub const VM_MEMORY: u64 = 1 << 30;

/// JSON nesting limit of a request body: bodies nested this many levels deep or more are rejected as
/// malformed (serde_json's recursion limit; 127 levels are read).
pub const MAX_DEPTH: usize = 128;

/// Most memory one request may cost the VM while it is decided: the copy of its body, the parsed JSON tree
/// (every value, string, number, array buffer and map node, with allocator overhead) and the transient
/// buffers of parsing and keying, as predicted by `budget::request_cost` before anything is parsed. A
/// 64 MiB body of long strings fits; a body of millions of tiny values (`[0,0,…]`, `[{},{},…]`, millions
/// of short keys) is answered 413 `understudy_request_over_budget` instead of trapping the VM.
pub const REQUEST_BUDGET: u64 = 384 << 20;

/// Most memory one answer may cost while it is built and rendered: a synthesized body, the intermediate
/// events of a streamed rendering and the rendered bytes, as predicted by `budget::answer_cost` before
/// rendering (also the hard cap of every rendered SSE stream). A synthesized answer over it is a 413
/// `understudy_answer_over_budget`; an asset's answer over it, a 500 with the same code.
pub const ANSWER_BUDGET: u64 = 128 << 20;

/// Most answers one VM holds back at once for their simulated latency; one more gets a 503
/// `understudy_delay_queue_full` in the API's shape (with `retry-after`) right away.
pub const DELAY_QUEUE_ENTRIES: usize = 10_000;

/// Most bytes (bodies and headers) of answers one VM holds back for their simulated latency.
pub const DELAY_QUEUE_BYTES: usize = 64 << 20;

/// The largest simulated latency, time to first token plus time per token, in milliseconds (600 s). `understudy
/// up` sets the listener's `stream_idle_timeout` and route timeout a minute above it.
pub const MAX_DELAY_MS: u64 = 600_000;

/// Largest request body remembered by the per-VM memo of exact repeated bodies.
pub const MEMO_BODY: usize = 64 << 10;

/// The memo's total size per VM; when full it starts over.
pub const MEMO_BYTES: usize = 8 << 20;

/// Largest normalized asset request kept as canonical text (matched by a hash-map lookup of the text and
/// parsed for miss diagnostics); bigger ones are matched by key only.
pub const KEEP_CANONICAL: usize = 256 << 10;

/// A strict miss ranks at most this many same-operation assets for its "closest asset" hint.
pub const MISS_SCAN: usize = 20_000;

/// Up to this many candidates are compared in full; beyond, only those sharing the longest start of the
/// canonical text ([`MISS_SHORTLIST`] of them) are.
pub const MISS_PARSE: usize = 256;

/// Candidates compared in full after the prefix ranking of a big store.
pub const MISS_SHORTLIST: usize = 32;

/// Most bytes of the missed request's canonical text used for the prefix ranking.
pub const MISS_PREFIX_BYTES: usize = 64 << 10;

/// Counting differing leaves stops here (the ranking only needs the smallest count).
pub const MISS_DIFF_CAP: usize = 10_000;

/// Longest JSON Pointer quoted in a miss message (the "first difference"); longer ones are cut.
pub const MISS_PATH_CHARS: usize = 256;

/// Largest embedding dimension a rule or request may ask for.
pub const MAX_DIMENSIONS: usize = 65_536;

/// Most embedding floats one synthesized response may hold (inputs × dimension): the API's largest request,
/// 2,048 inputs of 3,072 dimensions. Float (JSON) answers are bounded sooner by [`ANSWER_BUDGET`].
pub const MAX_EMBEDDING_FLOATS: usize = 2_048 * 3_072;

/// Most answer text (bytes, over all choices) one synthesized response may hold.
pub const MAX_TEXT_BYTES: usize = 32 << 20;

/// Most choices (`n` × prompts) one synthesized completions response may hold.
pub const MAX_CHOICES: usize = 4_096;

/// `n` of a synthesized answer is clamped to 1..=MAX_N, the API's own range.
pub const MAX_N: u64 = 128;

/// The request body limit `understudy up` gives Envoy's buffer filter (`--max-body-bytes`), 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 << 20;

/// Largest capture in record modes: the request body plus the response body as they passed. A bigger
/// exchange still reaches the client untouched; it is not recorded, and is counted (`record_failed`) and logged.
pub const MAX_CAPTURE_BYTES: usize = 16 << 20;

/// Bytes one VM holds for recording: the captures of answers still streaming plus the captures waiting for
/// the collector. A capture that would not fit is not recorded (`record_failed`, logged); the client is
/// never held up.
pub const RECORD_BUFFER_BYTES: usize = 64 << 20;

/// Most captures one VM holds waiting for the collector (delivered or retrying).
pub const RECORD_QUEUE_ENTRIES: usize = 1_000;

/// Most deliveries to the collector one VM has in flight at once.
pub const RECORD_IN_FLIGHT: usize = 8;

/// Delivery attempts per capture before it is given up, counted (`record_failed`) and logged.
pub const RECORD_ATTEMPTS: u32 = 10;

/// The first retry waits this long (ms); every later one twice as long, up to [`RECORD_BACKOFF_MAX_MS`]:
/// ten attempts span about 21 s, time for a restarted collector to come back.
pub const RECORD_BACKOFF_MS: u64 = 100;

/// The longest wait between two delivery attempts (ms).
pub const RECORD_BACKOFF_MAX_MS: u64 = 5_000;

/// How long one delivery to the collector may take (ms) before it counts as failed and is retried.
pub const RECORD_DELIVERY_TIMEOUT_MS: u64 = 10_000;

/// Most chunk timings kept for one recorded stream; later chunks are merged into the last timing.
pub const MAX_TIMING_CHUNKS: usize = 10_000;

/// Most distinct model names one Envoy labels its cost metrics with (`gen_ai_request_model`, shared by its
/// workers' VMs); the virtual answers of later models are counted under the model `other`, so a client
/// sending random model names can't grow Envoy's stats (or Prometheus) without bound.
pub const MAX_MODEL_LABELS: usize = 64;

/// Longest model name used as a label value, in bytes; longer names are counted under `other`.
pub const MAX_MODEL_LABEL_BYTES: usize = 160;

/// Most entries one VM keeps in its cache of entries fetched from a remote asset store (`store` in the
/// plugin configuration, `docs/store.md`): the default, and the most `store.cache_entries` may ask for. Keys
/// the store answered 404 for are remembered in the same cache (a published store never changes).
pub const STORE_CACHE_ENTRIES: usize = 10_000;

/// Most bytes that cache holds: the default, and the most `store.cache_bytes` may ask for. Each entry counts
/// [`STORE_ENTRY_COST`] times its file's size plus [`STORE_ENTRY_OVERHEAD`] (the canonical request, the answer
/// text and its compiled form); the least recently used entries are evicted first.
pub const STORE_CACHE_BYTES: usize = 64 << 20;

/// How many times its file's size a cached store entry is counted as.
pub const STORE_ENTRY_COST: usize = 3;

/// Bytes a cached store entry is counted as on top of its size (label, key, index slots).
pub const STORE_ENTRY_OVERHEAD: usize = 1 << 10;

/// Largest store entry file the filter reads: a bigger answer is a store error (`store_errors`), never read
/// into the VM.
pub const STORE_ENTRY_BYTES: usize = 8 << 20;

/// How long the filter waits for the store by default (`store.timeout_ms`); past it the request gets the miss
/// policy and counts as a store error.
pub const STORE_TIMEOUT_MS: u64 = 2_000;

/// The longest `store.timeout_ms` may be.
pub const MAX_STORE_TIMEOUT_MS: u64 = 30_000;

/// Largest bundle `understudy package --assets` embeds in the module. The embedded bundle lives in every VM's
/// linear memory besides its index, so bigger stores belong in a remote store (`understudy publish`).
pub const EMBEDDED_BUNDLE_BYTES: usize = 256 << 20;

/// The budget of one VM besides its asset store.
pub const PER_VM_BUDGET: u64 = REQUEST_BUDGET
    + ANSWER_BUDGET
    + DELAY_QUEUE_BYTES as u64
    + MEMO_BYTES as u64
    + RECORD_BUFFER_BYTES as u64
    + STORE_CACHE_BYTES as u64;
/// Most differences one parity comparison reports (`docs/parity.md`); the rest are dropped, the verdict stays
/// a mismatch.
pub const MAX_PARITY_DIFFS: usize = 64;

/// Longest value quoted in a parity difference, in chars (longer ones are cut and end with `…`).
pub const MAX_PARITY_VALUE_CHARS: usize = 200;
