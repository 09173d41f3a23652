//! The runtime: a plugin configuration compiled once, and the one `decide()` call per request. The store
//! finds assets; the runtime decides (hit, synthesized answer, miss, bad request) and serves the answer in
//! the API's own shape, streamed when asked.

mod config;
mod memo;
#[cfg(test)]
mod store_tests;

use std::cell::Cell;
use std::hash::BuildHasher;

use serde_json::Value;

pub use crate::store::remote::{Fetch, Fetched, StoreAnswer, StoreConfig};
pub use config::{BundleSource, EmbeddedOf, OnMiss, PluginConfig, PluginConfigOf, EMBEDDED_FORMAT, EMBED_MARKER_MAGIC};

use crate::asset::{Latency, Sequence};
use crate::budget::{answer_cost, to_vec_exact, Budgets, Processing};
use crate::cost::Prices;
use crate::dialect::{error_kind, EmbeddingEncoding, Operation, Route, Usage};
use crate::error::{ConfigError, RequestError};
use crate::key::Normalizer;
use crate::policy::{Active, NodeInfo, Policy};
use crate::record::{Pace, Recorder};
use crate::store::answer::{at_path, output_tokens, refresh};
use crate::store::remote::{FetchedKind, Lookup, Remote};
use crate::store::{Compiled, Store, KEEP_CANONICAL};
use crate::stream::StreamOptions;
use crate::synth::Synthesizer;
use crate::template::{Context, Rng};
use memo::{Memo, Remembered};

/// The final outcome of one LLM request, for stats and the `x-understudy` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An asset matched.
    Hit,
    /// No asset matched.
    Miss,
    /// No asset matched; a `synthesize` rule answered.
    Synthesized,
    /// The body could not be parsed.
    BadRequest,
    /// Reading the request or building its answer would take more memory than a budget allows
    /// (`crate::limits`): answered with a typed error (forwarded under passthrough when it is the request).
    OverBudget,
}

/// A reply Envoy sends locally, without the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalResponse {
    /// Why.
    pub outcome: Outcome,
    /// HTTP status.
    pub status: u16,
    /// Headers, including `x-understudy`.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Simulated latency: send the reply after this many milliseconds.
    pub delay_ms: u64,
    /// What the answer saved, for a virtual answer (a hit or a synthesized answer).
    pub accounting: Option<Accounting>,
    /// A recorded stream to send at its recorded pace (through the pacer), when pacing is on.
    pub pace: Option<Box<Pace>>,
}

impl LocalResponse {
    /// The request's key, when the answer names it (`x-understudy-key`: hits, synthesized answers, misses).
    pub fn key(&self) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == "x-understudy-key").map(|(_, v)| v.as_str())
    }
}

/// The live call a virtual answer stood in for: who, what, and the tokens and dollars it would have cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounting {
    /// OpenTelemetry `gen_ai.provider.name` of the request's route.
    pub provider: &'static str,
    /// OpenTelemetry `gen_ai.operation.name`.
    pub operation: &'static str,
    /// The model ([`Route::model_of`] of the recorded request for hits, of the request for synthesized
    /// answers); empty when there is none.
    pub model: String,
    /// Tokens avoided: the answer's own usage, else estimated ([`crate::tokens`]).
    pub usage: Usage,
    /// True when `usage` is an estimate.
    pub estimated: bool,
    /// What they would have cost, in pico-dollars; `None` when the model is unpriced.
    pub cost_picos: Option<u128>,
}

/// The decision for one LLM request.
// One per request, moved straight to the host: boxing the answer would cost an allocation on every hit.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Answer locally.
    Respond(LocalResponse),
    /// Forward to the upstream (passthrough mode); the outcome says why.
    Forward(Outcome),
    /// The key is not among the assets loaded in this VM and the configuration has a remote `store`: fetch
    /// its entry, hold the request meanwhile (nothing goes upstream), then pass what the store answered to
    /// [`Runtime::take_fetched`] and decide again with [`Runtime::decide_fetched`].
    Fetch(Fetch),
}

/// Whether a decision may ask the remote store, or comes after it answered.
#[derive(Clone, Copy)]
enum Ask<'a> {
    MayFetch,
    Fetched(&'a Fetched),
}

/// What the remote store has for a request: an entry (and whether it was `cached` or just `fetched`), a
/// fetch to make first, or nothing to serve.
enum FromStore {
    Entry(std::rc::Rc<Compiled>, &'static str),
    Fetch(Fetch),
    Nothing(StoreNote),
}

/// Why a request that no loaded asset matches was not answered from the remote store either.
enum StoreNote {
    /// No store configured.
    None,
    /// The store has no entry for the key (it answered 404, now or earlier).
    NotFound,
    /// The store could not be asked or its answer was refused; says why.
    Failed(String),
}

/// What the answer needs to know of a request besides its match.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    stream: bool,
    encoding: EmbeddingEncoding,
    options: StreamOptions,
}

impl Facts {
    fn of(route: &Route, request: &Value) -> Self {
        let api = route.dialect();
        Facts {
            stream: api.wants_stream(route, request),
            encoding: route.operation.dialect().requested_encoding(route.operation, request),
            options: api.stream_options(route, request),
        }
    }
}

/// A request's key, computed only when something shows it.
enum Lazy {
    Known(String),
    Text(Operation, String),
}

impl Lazy {
    fn get(&mut self) -> String {
        if let Lazy::Text(op, text) = self {
            *self = Lazy::Known(Normalizer::key_of_canonical(*op, text));
        }
        match self {
            Lazy::Known(k) => k.clone(),
            Lazy::Text(..) => String::new(),
        }
    }
}

/// The compiled, validated runtime the filter holds for its lifetime.
#[derive(Debug)]
pub struct Runtime {
    on_miss: OnMiss,
    normalizer: Normalizer,
    store: Store,
    synth: Synthesizer,
    prices: Prices,
    /// Distinguishes this VM's fresh ids from other workers'.
    salt: u64,
    /// Fresh-id generators handed out so far (see `fresh_ids`).
    served: Cell<u64>,
    /// Exact request bodies seen before and what they came to.
    memo: Memo,
    /// Memory budgets of one request and one answer (crate::budget).
    budgets: Budgets,
    /// Record mode and its settings.
    recorder: Recorder,
    /// Replay speed of paced recorded streams, when pacing is on.
    pacing: Option<f64>,
    /// The remote asset store and its per-VM cache, if configured.
    remote: Option<Remote>,
    /// Where the assets loaded in the VM came from.
    source: BundleSource,
    /// The per-environment policy, when configured.
    policy: Option<Policy>,
    /// This VM's environment and its policy, once [`Runtime::enter`] has resolved it.
    active: Option<Active>,
}

impl Runtime {
    /// Parses and compiles a plugin configuration. Any problem fails the whole load, naming the field/asset.
    /// A bundle without a content hash is accepted here (tools and tests build them); the filter uses
    /// [`Runtime::from_json_sealed`].
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        config::load(text, false, None).map(Self::assemble)
    }

    /// As [`Runtime::from_json`], but the bundle must carry its content hash (`bundle.sha256`), so deleting
    /// the hash can't switch the integrity check off. What the filter loads.
    pub fn from_json_sealed(text: &str) -> Result<Self, ConfigError> {
        config::load(text, true, None).map(Self::assemble)
    }

    /// As [`Runtime::from_json_sealed`], with the bundle embedded in the filter's module (what `understudy
    /// package --assets` writes: [`EmbeddedOf`] JSON) used when the configuration carries no `bundle`.
    pub fn from_json_sealed_embedded(text: &str, embedded: Option<&str>) -> Result<Self, ConfigError> {
        config::load(text, true, embedded).map(Self::assemble)
    }

    /// Compiles a parsed configuration.
    pub fn compile(cfg: PluginConfig) -> Result<Self, ConfigError> {
        config::compile(cfg).map(Self::assemble)
    }

    fn assemble(c: config::Compiled) -> Self {
        // std seeds RandomState from the OS (WASI random_get under Envoy): a per-VM salt.
        let salt = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        Runtime {
            on_miss: c.on_miss,
            normalizer: c.normalizer,
            store: c.store,
            synth: c.synth,
            prices: c.prices,
            salt,
            served: Cell::new(0),
            memo: Memo::default(),
            budgets: Budgets::default(),
            recorder: c.recorder,
            pacing: c.pacing,
            remote: c.remote,
            source: c.source,
            policy: c.policy,
            active: None,
        }
    }

    /// The per-environment policy, when the configuration has one.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// This VM's environment and its policy (after [`Runtime::enter`]; `None` without a policy).
    pub fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }

    /// Resolves the environment the node metadata names (once per VM, before serving) and applies its policy:
    /// its recording mode and miss policy replace the top-level ones. Without a policy nothing changes.
    pub fn enter(&mut self, node: &NodeInfo) -> Option<&Active> {
        let active = self.policy.as_ref()?.resolve(node);
        let mode = active.mode.recorder_mode();
        self.recorder.set_mode(mode);
        self.on_miss = config::on_miss(active.on_miss, mode);
        self.active = Some(active);
        self.active.as_ref()
    }

    /// The label (name and `file#index`) of the asset with this key, if one is loaded.
    pub fn asset_label(&self, key: &str) -> Option<&str> {
        self.store.by_key(key).map(|(_, a)| a.label.as_str())
    }

    /// Record mode and its settings.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The replay speed of paced recorded streams, when pacing is on.
    pub fn pacing(&self) -> Option<f64> {
        self.pacing
    }

    /// Where the assets loaded in this VM came from.
    pub fn bundle_source(&self) -> BundleSource {
        self.source
    }

    /// The remote store's configuration, if there is one.
    pub fn store(&self) -> Option<&StoreConfig> {
        self.remote.as_ref().map(|r| &r.config)
    }

    /// Turns what the store answered for `key` (after a [`Decision::Fetch`]) into a verified entry, cached in
    /// this VM, a remembered absence (404), or a store error ([`Fetched::error`]: the filter counts it).
    pub fn take_fetched(&self, key: &str, answer: StoreAnswer<'_>) -> Fetched {
        match &self.remote {
            Some(r) => r.take(&self.normalizer, key, answer),
            None => Fetched { kind: FetchedKind::Failed("no store is configured".into()) },
        }
    }

    /// Decides a request again once the store has answered for it: a hit from the fetched entry, else the
    /// miss policy (never another fetch). `body` is the same request body.
    pub fn decide_fetched(&self, route: &Route, body: &[u8], now_nanos: u64, fetched: &Fetched) -> Decision {
        self.decide_with(route, body, now_nanos, Ask::Fetched(fetched))
    }

    /// Replaces the memory budgets (`crate::limits::REQUEST_BUDGET`, `ANSWER_BUDGET`); tests lower them to
    /// exercise the checks with small bodies.
    #[doc(hidden)]
    pub fn set_budgets(&mut self, budgets: Budgets) {
        self.budgets = budgets;
        self.synth.set_answer_budget(budgets.answer);
    }

    /// How this runtime processes a request, as far as its memory cost goes.
    fn processing(&self) -> Processing {
        Processing { plain: self.normalizer.is_plain(), synthesizes: !self.synth.is_empty() }
    }

    /// Turns the memo of exact repeated bodies on (the default) or off; benchmarks use it to measure the
    /// full path. Off also forgets what was remembered.
    pub fn set_memo(&mut self, on: bool) {
        self.memo.reset(on);
    }

    /// The miss policy.
    pub fn on_miss(&self) -> OnMiss {
        self.on_miss
    }

    /// Number of assets loaded.
    pub fn asset_count(&self) -> usize {
        self.store.len()
    }

    /// [`Runtime::decide_at`] with the system clock.
    pub fn decide(&self, route: &Route, body: &[u8]) -> Decision {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        self.decide_at(route, body, u64::try_from(now).unwrap_or(u64::MAX))
    }

    /// Decides what to do with a complete LLM request body for `route`, at Unix time `now_nanos`.
    /// Never panics on any input.
    pub fn decide_at(&self, route: &Route, body: &[u8], now_nanos: u64) -> Decision {
        self.decide_with(route, body, now_nanos, Ask::MayFetch)
    }

    fn decide_with(&self, route: &Route, body: &[u8], now_nanos: u64, ask: Ask<'_>) -> Decision {
        match self.memo.get(route, body) {
            Some(Remembered::Hit(i, facts)) => {
                if let Some(asset) = self.store.get(i) {
                    return Decision::Respond(self.serve(asset, route, &facts, None, asset.key.clone(), now_nanos));
                }
            }
            Some(Remembered::Forward) => return Decision::Forward(Outcome::Miss),
            None => {}
        }
        // Priced before it is parsed: a body whose tree would not fit the request budget is a 413 (budget.rs).
        let request = match crate::parse_body_within(body, self.processing(), self.budgets.request) {
            Ok(v) => v,
            Err(e) => return self.bad_request(route, &e),
        };
        // Small requests are looked up by canonical text (no SHA-256 on the hot path: a hit reports its asset's
        // key, a passthrough miss needs none); big ones are hashed as they are written, never held as text.
        // Every asset is in the key index too, so skipping the text walk for a big body is always correct.
        let text = if body.len() <= 2 * KEEP_CANONICAL {
            self.normalizer.canonical_of_request(route, &request, KEEP_CANONICAL)
        } else {
            Ok(None)
        };
        let (found, mut key) = match text {
            Ok(Some(text)) => match self.store.by_text(route.operation, &text) {
                Some((i, a)) => (Some((i, a)), Lazy::Known(a.key.clone())),
                None => (None, Lazy::Text(route.operation, text)),
            },
            Ok(None) => match self.normalizer.key_of_request(route, &request) {
                Ok(k) => (self.store.by_key(&k), Lazy::Known(k)),
                Err(e) => return self.bad_request(route, &e),
            },
            Err(e) => return self.bad_request(route, &e),
        };
        let Some((i, asset)) = found else {
            // Not among the assets loaded here: the remote store's (cached, fetched, or to fetch).
            let note = match self.store_entry(ask, key.get()) {
                FromStore::Entry(entry, how) => {
                    let facts = Facts::of(route, &request);
                    let mut r = self.serve(&entry, route, &facts, Some(&request), entry.key.clone(), now_nanos);
                    r.headers.push(("x-understudy-store".into(), how.into()));
                    return Decision::Respond(r);
                }
                FromStore::Fetch(fetch) => return Decision::Fetch(fetch),
                FromStore::Nothing(note) => note,
            };
            // A store that could not be asked says nothing about whether an asset exists: no synthesized
            // stand-in for what may be a recorded answer.
            if !matches!(note, StoreNote::Failed(_)) {
                if let Some(r) = self.synthesized(route, &request, &mut key, now_nanos) {
                    return Decision::Respond(r);
                }
            }
            if self.on_miss == OnMiss::Passthrough {
                // A published store never changes under its content hash: its 404 may be remembered too.
                if self.synth.is_empty() && !matches!(note, StoreNote::Failed(_)) {
                    self.memo.put(route, body, Remembered::Forward);
                }
                return Decision::Forward(Outcome::Miss);
            }
            return self.strict_miss(route, request, key.get(), note);
        };
        let facts = Facts::of(route, &request);
        let response = self.serve(asset, route, &facts, Some(&request), key.get(), now_nanos);
        // Placeholders may read the request itself: only answers without them are replayed from the memo.
        if asset.answers().is_ok_and(|a| a.iter().all(|r| r.templates.is_empty())) {
            self.memo.put(route, body, Remembered::Hit(i, facts));
        }
        Decision::Respond(response)
    }

    /// What the remote store has for a request that no loaded asset matches.
    fn store_entry(&self, ask: Ask<'_>, key: String) -> FromStore {
        let Some(remote) = &self.remote else { return FromStore::Nothing(StoreNote::None) };
        match ask {
            Ask::Fetched(f) => match &f.kind {
                FetchedKind::Entry(e) if e.key == key => FromStore::Entry(e.clone(), "fetched"),
                FetchedKind::Entry(e) => FromStore::Nothing(StoreNote::Failed(format!(
                    "it was asked for key {} but this request's key is {key}",
                    e.key
                ))),
                FetchedKind::NotFound => FromStore::Nothing(StoreNote::NotFound),
                FetchedKind::Failed(why) => FromStore::Nothing(StoreNote::Failed(why.clone())),
            },
            Ask::MayFetch => match remote.lookup(&key) {
                Lookup::Present(e) => FromStore::Entry(e, "cached"),
                Lookup::Absent => FromStore::Nothing(StoreNote::NotFound),
                Lookup::Unknown => FromStore::Fetch(remote.fetch(key)),
            },
        }
    }

    /// The 404 of a strict miss, explaining it: the key, the closest asset and where it differs. When the
    /// remote store could not be asked, a 503 that says why (the request may well have an asset there).
    fn strict_miss(&self, route: &Route, mut request: Value, key: String, note: StoreNote) -> Decision {
        let op = route.operation;
        if let (StoreNote::Failed(why), Some(remote)) = (&note, &self.remote) {
            let message = format!(
                "Understudy has no asset for this {op} request (key {key}) among the {} assets loaded in the filter, \
                 and could not ask the asset store (cluster {}, content hash {}…): {why}. The request was not \
                 forwarded; this counts in understudy.store_errors.",
                self.store.len(),
                remote.config.cluster,
                remote.short_hash()
            );
            let mut r = local_error(route, Outcome::Miss, 503, Some(&key), &message, "understudy_store_unavailable");
            r.headers.push(("x-understudy-store".into(), "error".into()));
            return Decision::Respond(r);
        }
        // The request is not needed any more: normalize it in place (no copy of a big tree).
        if let Err(e) = self.normalizer.normalize(route, &mut request) {
            return self.bad_request(route, &e);
        }
        let mut message = format!("Understudy has no asset for this {op} request (key {key}).");
        if let Some(remote) = &self.remote {
            message.push_str(&format!(
                " Neither the {} assets loaded in the filter nor the asset store (content hash {}…) hold it: \
                 the store has no entry for this key.",
                self.store.len(),
                remote.short_hash()
            ));
        }
        let closest = self.store.closest(op, &request);
        let scope =
            if self.remote.is_some() { " loaded in the filter (the store's assets are not compared)" } else { "" };
        match &closest {
            Some(c) => message.push_str(&format!(
                " Closest asset{scope}: {} (key {}), first difference at {}.",
                c.label, c.key, c.at
            )),
            None if self.remote.is_some() => {}
            None => message.push_str(&format!(" No asset for {op} is loaded.")),
        }
        message.push_str(
            " To virtualize it, add an asset file with this request and its response to your assets directory \
             and rebuild the bundle (`understudy bundle DIR -o FILE`, or restart `understudy up`); \
             `understudy key FILE` prints a request's key.",
        );
        let mut r = local_error(route, Outcome::Miss, 404, Some(&key), &message, "understudy_no_matching_asset");
        r.headers.push(("x-understudy-operation".into(), op.name().into()));
        if self.remote.is_some() {
            r.headers.push(("x-understudy-store".into(), "miss".into()));
        }
        if let Some(c) = closest {
            r.headers.push(("x-understudy-closest".into(), c.header_value()));
        }
        Decision::Respond(r)
    }

    fn serve(
        &self,
        asset: &Compiled,
        route: &Route,
        facts: &Facts,
        request: Option<&Value>,
        key: String,
        now_nanos: u64,
    ) -> LocalResponse {
        let call = asset.calls.get();
        asset.calls.set(call.saturating_add(1));
        let answers = match asset.answers() {
            Ok(a) => a,
            Err(e) => return self.asset_error(asset, route, &key, format!("can't be served: {e}")),
        };
        let n = answers.len() as u64;
        let pick = match asset.sequence {
            Sequence::RepeatLast => call.min(n.saturating_sub(1)),
            Sequence::Cycle => call.checked_rem(n).unwrap_or(0),
            Sequence::Random => Rng::new(asset.seed ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15)).below(n),
        };
        let Some(resp) = answers.get(pick as usize) else {
            return self.asset_error(asset, route, &key, "has no response".into());
        };
        let op = route.operation;
        let mut headers = resp.headers.clone();
        let stream = facts.stream && !resp.is_error && op.streams();
        let converting = resp.embeddings.is_some_and(|have| have != facts.encoding);
        let needs_work = stream || asset.refresh || !resp.templates.is_empty() || converting;
        let mut pace = None;
        let body = match (&resp.splice, &resp.stream) {
            (_, Some(recorded)) if stream => {
                set_content_type(&mut headers, route.dialect().stream_content_type(route));
                let served = route.dialect().recorded_stream(route, recorded);
                if let (Some(speed), Some(chunks)) = (self.pacing, &resp.timing) {
                    pace = Some(Box::new(Pace::fit(chunks, recorded.len() as u64, served.len() as u64, speed)));
                }
                served
            }
            // The common hit: only the id and timestamps change, written into the pre-serialized body.
            (Some(splice), _) if !stream && !converting => splice.render(now_nanos, &mut self.fresh_ids(now_nanos)),
            _ if resp.has_json && !resp.is_error && needs_work => {
                let Some(mut v) = resp.json_for_hit() else {
                    return self.asset_error(asset, route, &key, "has a body that no longer parses".into());
                };
                let mut ids = self.fresh_ids(now_nanos);
                let mut choices = Rng::new(asset.seed ^ call.wrapping_mul(0xA076_1D64_78BD_642F));
                if asset.refresh {
                    refresh(&mut v, op.dialect().refreshed(op), now_nanos, &mut ids);
                }
                if !resp.templates.is_empty() {
                    // A memoized repeat never reaches here: answers with placeholders are not memoized.
                    let Some(request) = request else {
                        return self.asset_error(asset, route, &key, "needs the parsed request".into());
                    };
                    let mut ctx = Context { route, request, now_nanos, ids: &mut ids, choices: &mut choices };
                    for (path, t) in &resp.templates {
                        let val = t.expand(&mut ctx);
                        if let Some(slot) = at_path(&mut v, path) {
                            *slot = val;
                        }
                    }
                }
                if resp.embeddings.is_some() && converting {
                    op.dialect().convert_embeddings(op, &mut v, facts.encoding);
                }
                // Priced before it is rendered: an asset's answer over the answer budget is a 500 naming the limit.
                let cost = answer_cost(&v, stream.then_some(&facts.options));
                if cost > self.budgets.answer {
                    return self.over_budget(route, &key, Some(&asset.label), Some(cost));
                }
                if stream {
                    match route.dialect().render_stream(route, &v, &facts.options) {
                        Ok(bytes) => {
                            set_content_type(&mut headers, route.dialect().stream_content_type(route));
                            bytes
                        }
                        Err(e) => return self.asset_error(asset, route, &key, format!("can't be streamed: {e}")),
                    }
                } else {
                    to_vec_exact(&v)
                }
            }
            _ => resp.source().into_owned(),
        };
        if stream {
            headers.push(("cache-control".into(), "no-cache".into()));
        }
        headers.push(("x-understudy".into(), "hit".into()));
        headers.push(("x-understudy-key".into(), key));
        if n > 1 {
            headers.push(("x-understudy-response".into(), format!("{}/{n}", pick + 1)));
        }
        let delay_ms = delay(asset.latency, resp.output_tokens);
        let (usage, estimated) = match resp.usage {
            Some(u) => (u, false),
            None if resp.is_error => (Usage::default(), false),
            None => (Usage { input: asset.input_estimate, output: resp.output_tokens, cached_input: 0 }, true),
        };
        let model = asset.model.as_deref().unwrap_or_default();
        let accounting = Some(self.account(route, model, usage, estimated));
        LocalResponse { outcome: Outcome::Hit, status: resp.status, headers, body, delay_ms, accounting, pace }
    }

    /// A generator for fresh ids: seeded from the clock, this VM's salt and a per-VM serial, so ids differ
    /// across hits, workers and restarts.
    fn fresh_ids(&self, now_nanos: u64) -> Rng {
        let serial = self.served.get();
        self.served.set(serial.wrapping_add(1));
        Rng::new(now_nanos ^ self.salt ^ serial.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// A `synthesize` rule's answer for a request no asset matches, if a rule applies.
    fn synthesized(&self, route: &Route, request: &Value, key: &mut Lazy, now_nanos: u64) -> Option<LocalResponse> {
        if self.synth.is_empty() {
            return None;
        }
        let mut ids = self.fresh_ids(now_nanos);
        let Some(body) = self.synth.synthesize(route, request, now_nanos / 1_000_000_000, &mut ids) else {
            // A rule matched but its answer is over a synthesis limit: a typed 413 naming it, not a miss.
            let matched = self.synth.matches(route, request);
            return matched.then(|| self.over_budget(route, &key.get(), None, None));
        };
        let api = route.dialect();
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        let stream = api.wants_stream(route, request) && route.operation.streams();
        // Priced before it is rendered (n choices, streamed pieces, dimensions): over the answer budget, a 413.
        let options = api.stream_options(route, request);
        let cost = answer_cost(&body, stream.then_some(&options));
        if cost > self.budgets.answer {
            return Some(self.over_budget(route, &key.get(), None, Some(cost)));
        }
        let bytes = if stream {
            set_content_type(&mut headers, api.stream_content_type(route));
            headers.push(("cache-control".into(), "no-cache".into()));
            api.render_stream(route, &body, &options).ok()?
        } else {
            to_vec_exact(&body)
        };
        headers.push(("x-understudy".into(), "synthesized".into()));
        headers.push(("x-understudy-key".into(), key.get()));
        let delay_ms = delay(self.synth.latency(route, request), output_tokens(route, &body));
        let op = route.operation;
        let (usage, estimated) = match op.dialect().usage(op, &body) {
            Some(u) => (u, true),
            None => (Usage { input: op.dialect().prompt_tokens(op, request), output: 0, cached_input: 0 }, true),
        };
        let model = route.model_of(request).unwrap_or_default();
        let accounting = Some(self.account(route, model, usage, estimated));
        Some(LocalResponse {
            outcome: Outcome::Synthesized,
            status: 200,
            headers,
            body: bytes,
            delay_ms,
            accounting,
            pace: None,
        })
    }

    /// What a virtual answer for `model` saved.
    fn account(&self, route: &Route, model: &str, usage: Usage, estimated: bool) -> Accounting {
        Accounting {
            provider: route.provider,
            operation: route.operation.otel_name(),
            model: model.to_string(),
            usage,
            estimated,
            cost_picos: self.prices.lookup(model).map(|(_, p)| p.cost_picos(&usage)),
        }
    }

    /// An answer over a limit: a 413 for a synthesized answer, a 500 naming the asset for an asset's.
    fn over_budget(&self, route: &Route, key: &str, asset: Option<&str>, cost: Option<u64>) -> LocalResponse {
        let (status, message) = crate::budget::answer_over_budget(asset, cost, self.budgets.answer);
        let key = Some(key).filter(|k| !k.is_empty());
        local_error(route, Outcome::OverBudget, status, key, &message, "understudy_answer_over_budget")
    }

    /// An asset that matched but can't produce this answer: a 500 that says why, never a panic.
    fn asset_error(&self, asset: &Compiled, route: &Route, key: &str, why: String) -> LocalResponse {
        let message = format!("Understudy matched asset {} but it {why}", asset.label);
        local_error(route, Outcome::Hit, 500, Some(key), &message, "understudy_bad_asset")
    }

    /// The decision for a request rejected before its body could be read: a 400 in the API's shape
    /// under `on_miss: error`, forwarded under `passthrough`.
    pub fn reject(&self, route: &Route, e: &RequestError) -> Decision {
        self.bad_request(route, e)
    }

    fn bad_request(&self, route: &Route, e: &RequestError) -> Decision {
        // A body over the request budget is told apart (413, its own outcome and stat) from a malformed one.
        let outcome = match e {
            RequestError::OverBudget(_) => Outcome::OverBudget,
            _ => Outcome::BadRequest,
        };
        if self.on_miss == OnMiss::Passthrough {
            return Decision::Forward(outcome);
        }
        let message = format!("Understudy could not read this {} request: {e}", route.operation);
        Decision::Respond(local_error(route, outcome, e.status(), None, &message, e.code()))
    }
}

/// A local error answer in the API's own shape: `x-understudy` names the outcome, `x-understudy-key` the key
/// when there is one.
fn local_error(
    route: &Route,
    outcome: Outcome,
    status: u16,
    key: Option<&str>,
    message: &str,
    code: &str,
) -> LocalResponse {
    let tag = match outcome {
        Outcome::Hit => "hit",
        Outcome::Miss => "miss",
        Outcome::Synthesized => "synthesized",
        Outcome::BadRequest => "bad-request",
        Outcome::OverBudget => "over-budget",
    };
    let (mut headers, body) = error_answer(route, tag, error_kind(status), message, code);
    if let Some(k) = key {
        headers.insert(2, ("x-understudy-key".into(), k.into()));
    }
    LocalResponse { outcome, status, headers, body, delay_ms: 0, accounting: None, pace: None }
}

/// The headers and body of an error answer of type `kind` in `route`'s API shape, tagged `x-understudy: tag`
/// (also for answers the filter makes itself: no runtime loaded, latency queue full).
pub fn error_answer(
    route: &Route,
    tag: &str,
    kind: &str,
    message: &str,
    code: &str,
) -> (Vec<(String, String)>, Vec<u8>) {
    let mut headers =
        vec![("content-type".to_string(), "application/json".to_string()), ("x-understudy".into(), tag.into())];
    headers.extend(route.dialect().error_headers(route, kind));
    let body = route.dialect().error_body(route, kind, message, Some(code));
    (headers, serde_json::to_vec(&body).unwrap_or_default())
}

/// Time to first token plus time per output token, in milliseconds, at most `MAX_DELAY_MS` in all.
fn delay(latency: Option<Latency>, output_tokens: u64) -> u64 {
    use crate::limits::MAX_DELAY_MS;
    latency.map_or(0, |l| {
        let per_token = l.per_token_ms * output_tokens as f64;
        l.ttft_ms.saturating_add(per_token.min(MAX_DELAY_MS as f64) as u64).min(MAX_DELAY_MS)
    })
}

fn set_content_type(headers: &mut Vec<(String, String)>, value: &str) {
    headers.retain(|(k, _)| k != "content-type");
    headers.push(("content-type".into(), value.into()));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::memo::{MEMO_BODY, MEMO_BYTES};
    use super::*;
    use crate::asset::{Bundle, BundledAsset};
    use crate::dialect::classify;
    use serde_json::json;

    fn bundle_json(assets: Vec<BundledAsset>) -> String {
        let cfg = PluginConfig { bundle: Some(Bundle::sealed(assets)), ..PluginConfig::default() };
        serde_json::to_string(&cfg).unwrap()
    }

    fn asset(i: u64) -> BundledAsset {
        let request = json!({"model": "m", "messages": [{"role": "user", "content": format!("q{i}")}]});
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let mut n = request.clone();
        Normalizer::default().normalize(&route, &mut n).unwrap();
        let key = Normalizer::key_of_normalized(route.operation, &n);
        serde_json::from_value(json!({
            "key": key, "source": format!("f{i}.json#0"),
            "asset": {
                "request": {"path": "/v1/chat/completions", "body": request},
                "response": {"body": {"id": format!("chatcmpl-{i:08}"), "created": 1, "choices": []}},
            },
        }))
        .unwrap()
    }

    #[test]
    fn streamed_load_verifies_the_same_content_hash_and_serves() {
        let text = bundle_json((0..20).map(asset).collect());
        let rt = Runtime::from_json_sealed(&text).unwrap();
        assert_eq!(rt.asset_count(), 20);
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let body = br#"{"messages":[{"content":"q7","role":"user"}],"model":"m","stream":false}"#;
        let Decision::Respond(r) = rt.decide_at(&route, body, 2_000_000_000_000_000_000) else { panic!() };
        assert_eq!(r.outcome, Outcome::Hit);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["created"], json!(2_000_000_000u64));
        assert_ne!(v["id"], json!("chatcmpl-00000007"));
        assert_eq!(v["id"].as_str().unwrap().len(), "chatcmpl-00000007".len());
        // An empty sealed bundle too.
        assert_eq!(Runtime::from_json_sealed(&bundle_json(Vec::new())).unwrap().asset_count(), 0);
    }

    #[test]
    fn tampering_is_reported_as_a_hash_mismatch_even_when_an_asset_no_longer_compiles() {
        let text = bundle_json((0..5).map(asset).collect());
        // Changing a request changes its key: the content hash, not the key check, must report it.
        let tampered = text.replace("\"q3\"", "\"q3 changed\"");
        assert_ne!(tampered, text);
        let err = Runtime::from_json_sealed(&tampered).unwrap_err().to_string();
        assert!(err.contains("bundle.sha256") && err.contains("changed after"), "{err}");
        // Unsealed (tools): the key check names the asset.
        let unsealed = tampered
            .replace(&format!("\"sha256\":\"{}\",", Bundle::sealed((0..5).map(asset).collect()).sha256.unwrap()), "");
        assert_ne!(unsealed, tampered);
        let err = Runtime::from_json(&unsealed).unwrap_err().to_string();
        assert!(err.contains("bundle.assets[3]"), "{err}");
    }

    #[test]
    fn requests_bigger_than_the_text_index_still_hit_by_key_and_small_ones_by_text() {
        let big = "word ".repeat(KEEP_CANONICAL / 4);
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let mut assets = Vec::new();
        for content in [big.as_str(), "small"] {
            let request = json!({"model": "m", "messages": [{"role": "user", "content": content}]});
            let key = Normalizer::default().key(&route, request.to_string().as_bytes()).unwrap().0;
            assets.push(
                serde_json::from_value(json!({
                    "key": key, "source": "t.json#0",
                    "asset": {
                        "request": {"path": "/v1/chat/completions", "body": request},
                        "response": {"body": {"id": "chatcmpl-1", "choices": [{"message": {"content": content.len()}}]}},
                    },
                }))
                .unwrap(),
            );
        }
        let rt = Runtime::from_json_sealed(&bundle_json(assets)).unwrap();
        for content in [big.as_str(), "small"] {
            // Spelled differently (spaces, key order, an ignored field): the same key either way.
            let body = format!(
                r#"{{ "stream": false, "messages": [ {{ "content": {}, "role": "user" }} ], "model": "m" }}"#,
                serde_json::to_string(content).unwrap()
            );
            let want = Normalizer::default().key(&route, body.as_bytes()).unwrap().0;
            let Decision::Respond(r) = rt.decide_at(&route, body.as_bytes(), 0) else { panic!() };
            assert_eq!(r.outcome, Outcome::Hit, "{} bytes", content.len());
            assert!(r.headers.contains(&("x-understudy-key".to_string(), want)));
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], json!(content.len()));
            // One character more: a miss, with the key of what was sent.
            let other = body.replacen("\"user\"", "\"user \"", 1);
            let want = Normalizer::default().key(&route, other.as_bytes()).unwrap().0;
            let Decision::Respond(r) = rt.decide_at(&route, other.as_bytes(), 0) else { panic!() };
            assert_eq!((r.outcome, r.status), (Outcome::Miss, 404));
            assert!(r.headers.contains(&("x-understudy-key".to_string(), want)));
        }
    }

    #[test]
    fn a_repeated_body_is_answered_from_the_memo_exactly_as_the_full_path_answers_it() {
        let mut a = asset(1);
        a.asset.responses = Some(vec![a.asset.response.take().unwrap(), serde_json::from_value(json!({"body": {"id": "c-2", "choices": [{"index": 0, "message": {"role": "assistant", "content": "two"}, "finish_reason": "stop"}]}})).unwrap()]);
        a.asset.sequence = Sequence::Cycle;
        let text = bundle_json(vec![a, asset(2)]);
        let chat = classify("POST", "/v1/chat/completions").unwrap();
        let azure = classify("POST", "/openai/deployments/m/chat/completions?api-version=1").unwrap();
        let hit = br#"{"model":"m","messages":[{"role":"user","content":"q1"}],"stream":true}"#;
        let miss = br#"{"model":"m","messages":[{"role":"user","content":"nope"}]}"#;
        let run = |memo: bool| {
            let mut rt = Runtime::from_json_sealed(&text).unwrap();
            rt.set_memo(memo);
            let mut out = Vec::new();
            for (route, body) in [
                (&chat, &hit[..]),
                (&chat, &hit[..]),
                (&azure, &hit[..]),
                (&chat, &miss[..]),
                (&chat, &miss[..]),
                (&chat, &hit[..]),
            ] {
                out.push(match rt.decide_at(route, body, 5_000_000_000) {
                    Decision::Respond(r) => (
                        r.outcome,
                        r.status,
                        r.headers.iter().find(|(k, _)| k == "x-understudy-response").cloned(),
                        r.headers.iter().any(|(_, v)| v.starts_with("text/event-stream")),
                        r.body.len(),
                    ),
                    Decision::Forward(o) => (o, 0, None, false, 0),
                    Decision::Fetch(_) => panic!("no store"),
                });
            }
            let remembered: usize = rt.memo.entries.borrow().values().map(Vec::len).sum();
            (out, remembered)
        };
        let (full, none) = run(false);
        let (memo, remembered) = run(true);
        assert_eq!(none, 0);
        assert_eq!(remembered, 2, "the hit body on two routes; a strict miss is not remembered");
        assert_eq!(memo, full, "the memo must not change any answer: sequence position, streaming, route");
        assert_eq!(full[0].2, Some(("x-understudy-response".into(), "1/2".into())));
        assert_eq!(full[1].2, Some(("x-understudy-response".into(), "2/2".into())));
        assert!(full[0].3, "stream: true is a fact of the body the memo keeps");
        assert_eq!(full[3].1, 404);
    }

    #[test]
    fn the_memo_stays_within_its_budget() {
        let rt = Runtime::from_json_sealed(&bundle_json(vec![asset(1)])).unwrap();
        let chat = classify("POST", "/v1/chat/completions").unwrap();
        let pad = "x".repeat(MEMO_BODY - 100);
        for i in 0..(2 * MEMO_BYTES / MEMO_BODY) {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"q1"}}],"user":"{i}{pad}"}}"#);
            assert!(body.len() <= MEMO_BODY);
            let Decision::Respond(r) = rt.decide_at(&chat, body.as_bytes(), 0) else { panic!() };
            assert_eq!(r.outcome, Outcome::Hit);
            assert!(rt.memo.bytes.get() <= MEMO_BYTES);
        }
        let big = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"q1"}}],"user":"{}"}}"#,
            "y".repeat(MEMO_BODY)
        );
        let before = rt.memo.bytes.get();
        let Decision::Respond(r) = rt.decide_at(&chat, big.as_bytes(), 0) else { panic!() };
        assert_eq!(r.outcome, Outcome::Hit);
        assert_eq!(rt.memo.bytes.get(), before, "bodies over MEMO_BODY are not remembered");
    }

    #[test]
    fn a_strict_miss_in_a_big_store_names_the_closest_asset() {
        let rt = Runtime::from_json_sealed(&bundle_json((0..1000).map(asset).collect())).unwrap();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"q537?"}]}"#;
        let Decision::Respond(r) = rt.decide_at(&route, body, 0) else { panic!() };
        assert_eq!(r.status, 404);
        let text = String::from_utf8(r.body).unwrap();
        assert!(text.contains("from f537.json#0") && text.contains("/messages/0/content"), "{text}");
    }

    #[test]
    fn a_bad_asset_slice_names_its_index_and_field() {
        let sealed = bundle_json((0..3).map(asset).collect());
        let stored = Bundle::sealed((0..3).map(asset).collect()).sha256.unwrap();
        let text = sealed.replace("\"source\":\"f1.json#0\"", "\"source\":\"f1.json#0\",\"bogus\":1");
        // Sealed: the edit is what went wrong.
        let err = Runtime::from_json_sealed(&text).unwrap_err().to_string();
        assert!(err.contains("bundle.sha256") && err.contains("changed after"), "{err}");
        // Unsealed: the field is named.
        let text = text.replace(&format!("\"sha256\":\"{stored}\","), "");
        let err = Runtime::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("bundle.assets[1]") && err.contains("bogus"), "{err}");
    }

    fn deferred(rt: &Runtime, compiled: bool) -> usize {
        rt.store.deferred_count(compiled)
    }

    #[test]
    fn a_sealed_bundle_loads_from_canonical_or_reformatted_text_and_compiles_answers_on_first_use() {
        let cfg: Value = serde_json::from_str(&bundle_json((0..4).map(asset).collect())).unwrap();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"q2"}]}"#;
        for text in [crate::canonical::to_canonical(&cfg), serde_json::to_string_pretty(&cfg).unwrap()] {
            let rt = Runtime::from_json_sealed(&text).unwrap();
            assert_eq!(deferred(&rt, false), 4);
            let Decision::Respond(r) = rt.decide_at(&route, body, 0) else { panic!() };
            assert_eq!((r.outcome, r.status), (Outcome::Hit, 200));
            assert_eq!(deferred(&rt, true), 1, "only the asset that was hit is compiled");
        }
    }

    #[test]
    fn a_deferred_answer_that_does_not_compile_is_a_500_that_says_why_not_a_crash() {
        // Sealed by hand around a response `understudy bundle` would have refused (two bodies).
        let mut a = asset(0);
        a.asset.response.as_mut().unwrap().body_text = Some("also".into());
        let text = bundle_json(vec![a]);
        let rt = Runtime::from_json_sealed(&text).unwrap();
        let route = classify("POST", "/v1/chat/completions").unwrap();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"q0"}]}"#;
        for _ in 0..2 {
            let Decision::Respond(r) = rt.decide_at(&route, body, 0) else { panic!() };
            assert_eq!(r.status, 500);
            let text = String::from_utf8(r.body).unwrap();
            assert!(text.contains("more than one of `body`, `body_text`"), "{text}");
        }
    }

    #[test]
    fn identical_duplicates_are_skipped_and_conflicts_named() {
        let n = Normalizer::default();
        let a = asset(1).asset;
        let mut set = Store::default();
        set.add(&n, "a", &a, None).unwrap();
        set.add(&n, "b", &a, None).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.duplicates().len(), 1);
        let mut c = a.clone();
        c.response.as_mut().unwrap().body = Some(json!({"id": "chatcmpl-other", "created": 1, "choices": []}));
        let err = set.add(&n, "c", &c, None).unwrap_err().to_string();
        assert!(err.contains("a") && err.contains("c"), "{err}");
        let mut d = a.clone();
        d.refresh = false;
        assert!(set.add(&n, "d", &d, None).is_err(), "refresh differs: a conflict");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod accounting_tests {
    use super::*;
    use serde_json::json;

    fn runtime(prices: Value) -> Runtime {
        let chat = crate::dialect::classify("POST", "/v1/chat/completions").unwrap();
        let mk = |q: &str, usage: Option<Value>| {
            let request = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": q}]});
            let key = Normalizer::default().key(&chat, request.to_string().as_bytes()).unwrap().0;
            let mut body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "An answer of a few words."}, "finish_reason": "stop"}]});
            if let Some(u) = usage {
                body["usage"] = u;
            }
            json!({"key": key, "source": "t.json#0", "asset": {"request": {"path": "/v1/chat/completions", "body": request}, "response": {"body": body}}})
        };
        let cfg = json!({
            "bundle": {"format": crate::asset::BUNDLE_FORMAT, "assets": [
                mk("with usage", Some(json!({"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500, "prompt_tokens_details": {"cached_tokens": 200}}))),
                mk("without usage", None),
            ]},
            "synthesize": [{"operation": "anthropic.messages", "text": "synthesized"}],
            "prices": prices,
        });
        Runtime::from_json(&cfg.to_string()).unwrap()
    }

    fn accounting(rt: &Runtime, path: &str, body: Value) -> Accounting {
        let route = crate::dialect::classify("POST", path).unwrap();
        match rt.decide_at(&route, body.to_string().as_bytes(), 0) {
            Decision::Respond(r) => r.accounting.expect("a virtual answer is accounted"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_hit_accounts_its_recorded_usage_and_its_cost_to_the_picodollar() {
        let rt = runtime(json!({"gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.6}}));
        let q = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "with usage"}]});
        let a = accounting(&rt, "/v1/chat/completions", q);
        assert_eq!((a.provider, a.operation, a.model.as_str()), ("openai", "chat", "gpt-4o-mini"));
        assert_eq!(a.usage, Usage { input: 1200, output: 300, cached_input: 200 });
        assert!(!a.estimated);
        assert_eq!(a.cost_picos, Some(1000 * 150_000 + 200 * 75_000 + 300 * 600_000));
    }

    #[test]
    fn counting_tokens_avoids_no_billed_tokens() {
        let cfg = json!({
            "bundle": {"format": crate::asset::BUNDLE_FORMAT, "assets": []},
            "synthesize": [{"operation": "gemini.count_tokens"}],
        });
        let rt = Runtime::from_json(&cfg.to_string()).unwrap();
        let q = json!({"contents": [{"role": "user", "parts": [{"text": "How many tokens is this?"}]}]});
        let a = accounting(&rt, "/v1beta/models/gemini-2.5-flash:countTokens", q);
        assert_eq!((a.provider, a.operation, a.model.as_str()), ("gcp.gemini", "count_tokens", "gemini-2.5-flash"));
        assert_eq!((a.usage, a.cost_picos), (Usage::default(), Some(0)));
    }

    #[test]
    fn answers_without_usage_are_estimated_and_unknown_models_unpriced() {
        let rt = runtime(json!({}));
        let q = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "without usage"}]});
        let a = accounting(&rt, "/v1/chat/completions", q);
        assert!(a.estimated);
        assert!(a.usage.input > 0 && a.usage.output > 0, "{a:?}");
        assert!(a.cost_picos.is_some(), "gpt-4o-mini is in the built-in table");
        let q = json!({"model": "house-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let a = accounting(&rt, "/v1/messages", q);
        assert_eq!((a.provider, a.model.as_str(), a.cost_picos), ("anthropic", "house-model", None));
        assert!(a.estimated && a.usage.output > 0);
    }
}
