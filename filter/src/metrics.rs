//! The cost metrics of virtual answers: live calls, tokens and dollars avoided, per provider, operation and
//! model (`understudy_matcher::cost::stats` names them and encodes the labels).
//!
//! Two things are shared by every worker's VM through proxy-wasm shared data (compare-and-swap):
//!
//! - **the models admitted as labels** — at most `limits::MAX_MODEL_LABELS` per Envoy, in the order they were
//!   first seen; later ones are counted as `other`, so every worker labels a model the same way;
//! - **the sub-micro-dollar remainder of each label set**: costs are exact pico-dollars, the counter counts
//!   micro-dollars, and the remainder is carried in one shared place, so the counter Envoy sums over all
//!   workers is exactly `floor(total pico-dollars / 10⁶)` of that label set, whichever worker served what.
//!
//! Should the host refuse shared data, each VM keeps both for itself (the cap then holds per VM, and money is
//! exact per VM).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use understudy_matcher::cost::stats::{self, Labels, Metric, TokenType, OTHER};
use understudy_matcher::cost::PICOS_PER_MICRO;
use understudy_matcher::limits::MAX_MODEL_LABELS;
use understudy_matcher::Accounting;

/// Shared-data key of the admitted model labels (one per line).
pub const REGISTRY_KEY: &str = "understudy.cost.models";

/// Shared-data key prefix of the remainders (then `provider;operation;model`: a model label holds no `;`).
pub const REMAINDER_KEY: &str = "understudy.cost.remainder;";

/// A compare-and-swap value that no existing entry has (the host hands out ids from 1 upwards): a write with
/// it creates an absent key and fails on one another VM created meanwhile, so no creation is lost.
pub const CREATE_ONLY: u32 = u32::MAX;

/// Attempts at a contended compare-and-swap before falling back to this VM's own state.
const CAS_TRIES: usize = 32;

/// A conditional shared-data write's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Written.
    Ok,
    /// Another VM wrote first: read again.
    Conflict,
    /// The host refused.
    Failed,
}

/// What the cost metrics need of the host: counters and the shared data of this plugin's VMs.
pub trait StatsHost {
    /// Defines (or finds) a counter; `None` when the host refuses.
    fn define_counter(&self, name: &str) -> Option<u32>;
    /// Adds `n` to a counter.
    fn add(&self, id: u32, n: u64);
    /// A shared-data value and its compare-and-swap id (`None` when absent); `None` when the host refuses.
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)>;
    /// Writes a shared-data value if its compare-and-swap id is still `cas`.
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Written;
}

/// One VM's view of the cost metrics.
#[derive(Debug, Default)]
pub struct CostMetrics {
    state: RefCell<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Model labels known to be admitted (a copy of the shared list as last read, or this VM's own).
    models: Vec<String>,
    /// The shared list was full when last read: nothing more will be admitted.
    full: bool,
    /// The label sets seen, by model label (then a handful of provider/operation pairs).
    series: HashMap<String, Vec<Series>>,
}

/// One label set: its counters (defined on first use) and its remainder.
#[derive(Debug)]
struct Series {
    provider: &'static str,
    operation: &'static str,
    /// Counter ids, by position in `Metric::ALL`.
    ids: [Option<u32>; Metric::ALL.len()],
    /// Shared-data key of the sub-micro-dollar remainder.
    remainder_key: String,
    /// The remainder, when shared data is refused.
    local: u128,
}

impl Series {
    fn add(&mut self, host: &dyn StatsHost, metric: Metric, model: &str, n: u64) {
        let Some(slot) = Metric::ALL.iter().position(|m| *m == metric).and_then(|i| self.ids.get_mut(i)) else {
            return;
        };
        let id = match *slot {
            Some(id) => id,
            None => {
                let labels =
                    Labels { provider: self.provider.into(), operation: self.operation.into(), model: model.into() };
                let Some(id) = host.define_counter(&stats::stat_name(metric, &labels)) else { return };
                *slot = Some(id);
                id
            }
        };
        if n > 0 {
            host.add(id, n);
        }
    }

    /// Adds `picos` to the remainder; returns the whole micro-dollars to count.
    fn carry(&mut self, host: &dyn StatsHost, picos: u128) -> u64 {
        for _ in 0..CAS_TRIES {
            let Some((bytes, cas)) = host.shared_get(&self.remainder_key) else { break };
            let before: u128 = std::str::from_utf8(&bytes).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            let (micros, left) = split(before.saturating_add(picos));
            match host.shared_set(&self.remainder_key, left.to_string().as_bytes(), cas.unwrap_or(CREATE_ONLY)) {
                Written::Ok => return micros,
                Written::Conflict => continue,
                Written::Failed => break,
            }
        }
        let (micros, left) = split(self.local.saturating_add(picos));
        self.local = left;
        micros
    }
}

impl CostMetrics {
    /// Counts one virtual answer.
    pub fn record(&self, host: &dyn StatsHost, a: &Accounting) {
        let model = match stats::model_label(&a.model) {
            Some(m) if self.admit(host, &m) => m,
            _ => Cow::Borrowed(OTHER),
        };
        let mut st = self.state.borrow_mut();
        if !st.series.contains_key(model.as_ref()) {
            st.series.insert(model.to_string(), Vec::new());
        }
        let Some(list) = st.series.get_mut(model.as_ref()) else { return };
        let i = match list.iter().position(|s| s.provider == a.provider && s.operation == a.operation) {
            Some(i) => i,
            None => {
                list.push(Series {
                    provider: a.provider,
                    operation: a.operation,
                    ids: [None; Metric::ALL.len()],
                    remainder_key: format!("{REMAINDER_KEY}{};{};{model}", a.provider, a.operation),
                    local: 0,
                });
                list.len() - 1
            }
        };
        let Some(series) = list.get_mut(i) else { return };
        let cached = a.usage.cached_input.min(a.usage.input);
        let counts = [
            (Metric::VirtualRequests, 1, true),
            (Metric::TokensAvoided(TokenType::Input), a.usage.input, a.usage.input > 0),
            (Metric::TokensAvoided(TokenType::Output), a.usage.output, a.usage.output > 0),
            (Metric::TokensAvoided(TokenType::CachedInput), cached, cached > 0),
            (Metric::Unpriced, 1, a.cost_picos.is_none()),
            (Metric::Estimated, 1, a.estimated),
        ];
        for (metric, n, applies) in counts {
            if applies {
                series.add(host, metric, &model, n);
            }
        }
        if let Some(picos) = a.cost_picos {
            let micros = series.carry(host, picos);
            // Defined even when 0: the series says the model is priced.
            series.add(host, Metric::CostMicros, &model, micros);
        }
    }

    /// Whether `label` may be a label of its own: already admitted, or admitted now while there is room.
    fn admit(&self, host: &dyn StatsHost, label: &str) -> bool {
        {
            let st = self.state.borrow();
            if st.models.iter().any(|m| m == label) {
                return true;
            }
            if st.full {
                return false;
            }
        }
        for _ in 0..CAS_TRIES {
            let Some((bytes, cas)) = host.shared_get(REGISTRY_KEY) else { break };
            let list: Vec<String> =
                String::from_utf8_lossy(&bytes).lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
            let mut st = self.state.borrow_mut();
            if list.iter().any(|m| m == label) {
                st.models = list;
                return true;
            }
            if list.len() >= MAX_MODEL_LABELS {
                st.models = list;
                st.full = true;
                return false;
            }
            let mut grown = list;
            grown.push(label.to_string());
            match host.shared_set(REGISTRY_KEY, grown.join("\n").as_bytes(), cas.unwrap_or(CREATE_ONLY)) {
                Written::Ok => {
                    st.models = grown;
                    return true;
                }
                Written::Conflict => continue,
                Written::Failed => break,
            }
        }
        // Shared data refused (or endlessly contended): this VM decides alone.
        let mut st = self.state.borrow_mut();
        if st.models.len() < MAX_MODEL_LABELS {
            st.models.push(label.to_string());
            true
        } else {
            false
        }
    }
}

/// The proxy-wasm host: Envoy's counters and the shared data of this plugin's VMs.
#[cfg(target_arch = "wasm32")]
pub struct ProxyWasm;

#[cfg(target_arch = "wasm32")]
impl StatsHost for ProxyWasm {
    fn define_counter(&self, name: &str) -> Option<u32> {
        proxy_wasm::hostcalls::define_metric(proxy_wasm::types::MetricType::Counter, &crate::env::stat_name(name)).ok()
    }

    fn add(&self, id: u32, n: u64) {
        let _ = proxy_wasm::hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        proxy_wasm::hostcalls::get_shared_data(key).ok().map(|(v, cas)| (v.unwrap_or_default(), cas))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Written {
        match proxy_wasm::hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Written::Ok,
            Err(proxy_wasm::types::Status::CasMismatch) => Written::Conflict,
            Err(_) => Written::Failed,
        }
    }
}

/// Pico-dollars as whole micro-dollars and the pico-dollars left over.
fn split(picos: u128) -> (u64, u128) {
    let micros = u64::try_from(picos / PICOS_PER_MICRO).unwrap_or(u64::MAX);
    (micros, picos % PICOS_PER_MICRO)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::rc::Rc;
    use understudy_matcher::cost::stats::{parse_stat_name, Series};
    use understudy_matcher::Usage;

    /// Envoy's side: counters by name, shared data with compare-and-swap ids, shared by every "VM".
    #[derive(Default)]
    struct Envoy {
        names: RefCell<Vec<String>>,
        values: RefCell<Vec<u64>>,
        shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        refuse_shared: Cell<bool>,
        /// Another VM writes to every key between our read and our write this many times.
        interfere: Cell<u32>,
    }

    impl Envoy {
        fn counters(&self) -> BTreeMap<Series, u64> {
            let mut out = BTreeMap::new();
            for (n, v) in self.names.borrow().iter().zip(self.values.borrow().iter()) {
                *out.entry(parse_stat_name(n).unwrap()).or_default() += v;
            }
            out
        }
        fn get(&self, metric: Metric, model: &str) -> u64 {
            self.counters().iter().filter(|(s, _)| s.metric == metric && s.model == model).map(|(_, v)| v).sum()
        }
    }

    /// One worker's VM talking to the shared Envoy.
    struct Vm(Rc<Envoy>);

    impl StatsHost for Vm {
        fn define_counter(&self, name: &str) -> Option<u32> {
            let mut names = self.0.names.borrow_mut();
            if let Some(i) = names.iter().position(|n| n == name) {
                return Some(i as u32);
            }
            names.push(name.to_string());
            self.0.values.borrow_mut().push(0);
            Some(names.len() as u32 - 1)
        }
        fn add(&self, id: u32, n: u64) {
            self.0.values.borrow_mut()[id as usize] += n;
        }
        fn shared_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
            if self.0.refuse_shared.get() {
                return None;
            }
            Some(match self.0.shared.borrow().get(key) {
                Some((v, cas)) => (v.clone(), Some(*cas)),
                None => (Vec::new(), None),
            })
        }
        fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Written {
            let mut shared = self.0.shared.borrow_mut();
            let next = self.0.next_cas.get() + 1;
            if self.0.interfere.get() > 0 {
                self.0.interfere.set(self.0.interfere.get() - 1);
                // Someone else's write lands first: the entry changes under us (same value, new id).
                let old = shared.get(key).map(|(v, _)| v.clone()).unwrap_or_default();
                shared.insert(key.to_string(), (old, next));
                self.0.next_cas.set(next);
                return Written::Conflict;
            }
            match shared.get(key) {
                Some((_, have)) if cas != 0 && cas != *have => return Written::Conflict,
                _ => {}
            }
            shared.insert(key.to_string(), (value.to_vec(), next));
            self.0.next_cas.set(next);
            Written::Ok
        }
    }

    fn answer(provider: &'static str, model: &str, usage: Usage, cost_picos: Option<u128>) -> Accounting {
        Accounting { provider, operation: "chat", model: model.into(), usage, estimated: false, cost_picos }
    }

    #[test]
    fn tokens_and_requests_are_counted_per_label_set() {
        let envoy = Rc::new(Envoy::default());
        let m = CostMetrics::default();
        let vm = Vm(envoy.clone());
        let u = Usage { input: 1200, output: 300, cached_input: 200 };
        m.record(&vm, &answer("openai", "gpt-4.1", u, Some(1)));
        m.record(&vm, &answer("openai", "gpt-4.1", u, Some(1)));
        m.record(&vm, &answer("azure.ai.openai", "gpt-4.1", Usage { input: 5, output: 0, cached_input: 9 }, None));
        let c = envoy.counters();
        let get = |metric, provider: &str| {
            c.iter().find(|(s, _)| s.metric == metric && s.provider == provider).map(|(_, v)| *v)
        };
        assert_eq!(get(Metric::VirtualRequests, "openai"), Some(2));
        assert_eq!(get(Metric::TokensAvoided(TokenType::Input), "openai"), Some(2400));
        assert_eq!(get(Metric::TokensAvoided(TokenType::Output), "openai"), Some(600));
        assert_eq!(get(Metric::TokensAvoided(TokenType::CachedInput), "openai"), Some(400));
        assert_eq!(get(Metric::CostMicros, "openai"), Some(0), "defined though under a micro-dollar");
        assert_eq!(get(Metric::Unpriced, "openai"), None);
        assert_eq!(get(Metric::Unpriced, "azure.ai.openai"), Some(1));
        assert_eq!(get(Metric::CostMicros, "azure.ai.openai"), None);
        assert_eq!(get(Metric::TokensAvoided(TokenType::CachedInput), "azure.ai.openai"), Some(5), "capped at input");
        assert_eq!(get(Metric::TokensAvoided(TokenType::Output), "azure.ai.openai"), None, "zero: no series");
    }

    #[test]
    fn money_summed_over_workers_is_exact_to_the_microdollar() {
        let envoy = Rc::new(Envoy::default());
        let workers: Vec<(CostMetrics, Vm)> = (0..3).map(|_| (CostMetrics::default(), Vm(envoy.clone()))).collect();
        // Costs that leave remainders: 333_333.333… micro-dollars' worth spread over three workers.
        let mut total: u128 = 0;
        for i in 0..999u128 {
            let picos = 333_333_333 + i * 7;
            total += picos;
            let (m, vm) = &workers[(i % 3) as usize];
            if i % 10 == 0 {
                envoy.interfere.set(2);
            }
            m.record(vm, &answer("anthropic", "claude-sonnet-4-5", Usage::default(), Some(picos)));
        }
        assert_eq!(u128::from(envoy.get(Metric::CostMicros, "claude-sonnet-4-5")), total / PICOS_PER_MICRO);
        // Per-VM remainders would each have dropped up to a micro-dollar: the shared one dropped none.
        let rem = envoy.shared.borrow()[&format!("{REMAINDER_KEY}anthropic;chat;claude-sonnet-4-5")].0.clone();
        assert_eq!(String::from_utf8(rem).unwrap().parse::<u128>().unwrap(), total % PICOS_PER_MICRO);
    }

    #[test]
    fn models_past_the_cap_are_other_for_every_worker_and_money_stays_exact() {
        let envoy = Rc::new(Envoy::default());
        let (a, b) = (CostMetrics::default(), CostMetrics::default());
        let (va, vb) = (Vm(envoy.clone()), Vm(envoy.clone()));
        let mut picos = 0u128;
        for i in 0..MAX_MODEL_LABELS + 10 {
            let (m, vm) = if i % 2 == 0 { (&a, &va) } else { (&b, &vb) };
            m.record(vm, &answer("openai", &format!("model-{i}"), Usage::default(), Some(1_500_000)));
            picos += 1_500_000;
        }
        // The late models are `other` on both workers; one worker's late model is not another's label.
        b.record(&vb, &answer("openai", "model-0", Usage::default(), None));
        a.record(&va, &answer("openai", &format!("model-{}", MAX_MODEL_LABELS + 3), Usage::default(), None));
        let c = envoy.counters();
        let models: std::collections::BTreeSet<&str> = c.keys().map(|s| s.model.as_str()).collect();
        assert_eq!(models.len(), MAX_MODEL_LABELS + 1);
        assert!(models.contains(OTHER) && models.contains("model-0"));
        assert!(!models.contains(format!("model-{MAX_MODEL_LABELS}").as_str()));
        assert_eq!(envoy.get(Metric::VirtualRequests, OTHER), 11);
        assert_eq!(envoy.get(Metric::Unpriced, "model-0"), 1);
        let micros: u64 = c.iter().filter(|(s, _)| s.metric == Metric::CostMicros).map(|(_, v)| v).sum();
        // Each label set floors on its own: 1.5 → 1 per admitted model; `other` carries its ten 1.5s exactly.
        assert_eq!(u128::from(micros), MAX_MODEL_LABELS as u128 + 15);
        assert!(picos > 0);
        // Too long to be a label: `other`, without taking a slot.
        let long = "m".repeat(understudy_matcher::limits::MAX_MODEL_LABEL_BYTES + 1);
        a.record(&va, &answer("openai", &long, Usage::default(), None));
        assert_eq!(envoy.get(Metric::VirtualRequests, OTHER), 12);
    }

    #[test]
    fn without_shared_data_each_vm_caps_and_carries_alone() {
        let envoy = Rc::new(Envoy::default());
        envoy.refuse_shared.set(true);
        let m = CostMetrics::default();
        let vm = Vm(envoy.clone());
        for i in 0..MAX_MODEL_LABELS + 2 {
            m.record(&vm, &answer("openai", &format!("m{i}"), Usage::default(), Some(600_000)));
            m.record(&vm, &answer("openai", &format!("m{i}"), Usage::default(), Some(600_000)));
        }
        assert_eq!(envoy.get(Metric::VirtualRequests, OTHER), 4);
        assert_eq!(envoy.get(Metric::CostMicros, "m0"), 1);
        assert_eq!(envoy.get(Metric::CostMicros, OTHER), 2, "4 × 0.6");
        assert!(envoy.shared.borrow().is_empty());
    }

    #[test]
    fn split_is_exact() {
        assert_eq!(split(0), (0, 0));
        assert_eq!(split(1_999_999), (1, 999_999));
        assert_eq!(split(u128::MAX), (u64::MAX, u128::MAX % PICOS_PER_MICRO));
    }
}
