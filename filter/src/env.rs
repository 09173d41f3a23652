//! The VM's environment in the filter: read from Envoy's node metadata once per VM (the order of precedence
//! is `understudy_matcher::policy`'s), and the `understudy_env` label every stat name then carries.

use std::cell::RefCell;

use understudy_matcher::cost::stats;
use understudy_matcher::policy::{NodeInfo, ENV_METADATA_KEY, ISTIO_LABELS, ISTIO_NAMESPACE};

thread_local! {
    /// The environment stat names carry: set once per VM, before any metric is defined.
    static STAT_ENV: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Sets the environment every stat name defined from now on carries (`None`: no label, as without a policy).
pub fn set_stat_env(env: Option<&str>) {
    STAT_ENV.with(|e| *e.borrow_mut() = env.map(str::to_string));
}

/// `name` (`understudy.<stat>`) as this VM defines it: labeled with its environment, if any.
pub fn stat_name(name: &str) -> String {
    STAT_ENV.with(|e| stats::with_env(name, e.borrow().as_deref()))
}

/// What the node metadata says about the environment; `property` reads a property path (proxy-wasm's
/// `get_property`), `label` is the workload label to look up in Istio's `LABELS` (empty: none).
pub fn node_info(property: &dyn Fn(&[&str]) -> Option<Vec<u8>>, label: &str) -> NodeInfo {
    // Envoy 1.40 names the node `xds.node` (its CEL attribute); older Envoys and Istio's proxies `node`.
    let text = |path: &[&str]| {
        [&["xds", "node", "metadata"][..], &["node", "metadata"][..]].iter().find_map(|prefix| {
            let full: Vec<&str> = prefix.iter().chain(path).copied().collect();
            property(&full).and_then(|b| String::from_utf8(b).ok()).filter(|s| !s.is_empty())
        })
    };
    NodeInfo {
        understudy_env: text(&[ENV_METADATA_KEY]),
        label: if label.is_empty() { None } else { text(&[ISTIO_LABELS, label]) },
        namespace: text(&[ISTIO_NAMESPACE]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn node_metadata_is_read_at_istios_paths_and_stats_carry_the_environment() {
        let props = |path: &[&str]| -> Option<Vec<u8>> {
            match path {
                ["xds", "node", "metadata", "LABELS", "understudy.io/env"] => Some(b"staging".to_vec()),
                ["node", "metadata", "NAMESPACE"] => Some(b"team-a".to_vec()),
                ["xds", "node", "metadata", "UNDERSTUDY_ENV"] => Some(Vec::new()),
                _ => None,
            }
        };
        let n = node_info(&props, "understudy.io/env");
        assert_eq!(
            (n.understudy_env, n.label.as_deref(), n.namespace.as_deref()),
            (None, Some("staging"), Some("team-a"))
        );
        assert_eq!(node_info(&props, "").label, None, "an empty label reads no labels");
        assert_eq!(stat_name("understudy.hits"), "understudy.hits");
        set_stat_env(Some("ci"));
        assert_eq!(stat_name("understudy.hits"), "understudy.understudy_env=.=ci;.;hits");
        set_stat_env(None);
    }
}
