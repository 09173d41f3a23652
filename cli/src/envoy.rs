//! The Envoy bootstrap `understudy up` runs: listener → understudy wasm → buffer → router → upstream(s).

use anyhow::{bail, Result};

use serde_json::{json, Value};

/// Where misses go in passthrough mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix to prepend, "" for none.
    pub prefix: String,
}

impl Upstream {
    /// Parses `http://host[:port][/prefix]` or `https://...`.
    pub fn parse(url: &str) -> Result<Self> {
        let u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("upstream {url:?}: {e}"))?;
        let tls = match u.scheme() {
            "https" => true,
            "http" => false,
            other => bail!("upstream {url:?}: must start with http:// or https://, not {other}://"),
        };
        let host = match u.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => bail!("upstream {url:?}: no host"),
        };
        if host.is_empty() {
            bail!("upstream {url:?}: no host");
        }
        if !u.username().is_empty() || u.password().is_some() || u.query().is_some() || u.fragment().is_some() {
            bail!("upstream {url:?}: only a scheme, host, port and path prefix are allowed");
        }
        let port = u.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        Ok(Upstream { tls, host, port, prefix: u.path().trim_end_matches('/').to_string() })
    }
}

/// The services whose passthrough traffic can go to an upstream of its own: OpenTelemetry
/// `gen_ai.provider.name` (what the filter names in `x-understudy-upstream` when it forwards an LLM call), the
/// `understudy up` flag, and where it goes when neither that flag nor `--upstream` is given.
pub const PROVIDERS: &[(&str, &str, Option<&str>)] = &[
    ("openai", "--upstream-openai", Some("https://api.openai.com")),
    ("azure.ai.openai", "--upstream-azure", None),
    ("anthropic", "--upstream-anthropic", Some("https://api.anthropic.com")),
    ("gcp.gemini", "--upstream-gemini", Some("https://generativelanguage.googleapis.com")),
    ("gcp.vertex_ai", "--upstream-vertex", Some("https://aiplatform.googleapis.com")),
    ("aws.bedrock", "--upstream-bedrock", Some("https://bedrock-runtime.us-east-1.amazonaws.com")),
    ("ollama", "--upstream-ollama", Some("http://127.0.0.1:11434")),
];

/// The request header the filter sets on an LLM call it forwards, naming its provider, so routing picks that
/// provider's upstream. Removed before the request leaves Envoy.
pub const UPSTREAM_HEADER: &str = "x-understudy-upstream";

/// Where passthrough traffic goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Upstreams {
    /// `--upstream`: every call whose provider has no upstream of its own, and every non-LLM request.
    pub default: Option<Upstream>,
    /// `--upstream-<provider>` flags given, by provider name.
    pub providers: Vec<(&'static str, Upstream)>,
}

impl Upstreams {
    /// Each provider's upstream: its own flag, else (without `--upstream`) its public endpoint.
    fn resolved(&self) -> Vec<(&'static str, Upstream)> {
        PROVIDERS
            .iter()
            .filter_map(|(name, _, public)| {
                let own = self.providers.iter().find(|(p, _)| p == name).map(|(_, u)| u.clone());
                let public = || public.filter(|_| self.default.is_none()).and_then(|u| Upstream::parse(u).ok());
                own.or_else(public).map(|u| (*name, u))
            })
            .collect()
    }
}

/// Settings for one bootstrap.
pub struct Settings<'a> {
    pub port: u16,
    pub admin_port: u16,
    pub wasm: &'a str,
    pub plugin_config: &'a str,
    /// Where passthrough traffic goes (see [`Upstreams`]).
    pub upstreams: &'a Upstreams,
    pub max_body_bytes: u64,
    /// A JSON-lines access log file: each request's outcome and key headers, path without query.
    pub access_log: Option<&'a str>,
    /// Record modes: the collector the filter's captures go to (cluster `understudy_collector`).
    pub collector: Option<&'a Upstream>,
    /// Paced replay: the pacer (cluster `understudy_pacer`), and the route that leads paced hits to it.
    pub pacer: Option<&'a Upstream>,
    /// The environment the policy applies, as node metadata `UNDERSTUDY_ENV` (docs/policy.md).
    pub env: Option<&'a str>,
}

/// The cluster of the collector (the plugin configuration's `record.collector` default).
pub const COLLECTOR_CLUSTER: &str = "understudy_collector";
/// The cluster of the pacer.
pub const PACER_CLUSTER: &str = "understudy_pacer";

/// The route that sends a paced hit (the filter set the pace header and the body) to the pacer. Only LLM paths
/// run the filter, which removes a client's own pace header, so only the filter's requests match it.
pub fn pacer_route(cluster: &str) -> Value {
    let mut m = llm_match("/");
    if let Some(headers) = m.get_mut("headers").and_then(Value::as_array_mut) {
        headers.push(json!({"name": understudy_matcher::record::PACE_HEADER, "present_match": true}));
    }
    json!({"match": m, "route": {"cluster": cluster, "timeout": reply_timeout()}})
}

pub fn cluster(name: &str, up: &Upstream) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": up.host, "port_value": up.port}}}}]}]
        }
    });
    if up.tls {
        let tls = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": up.host,
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"}}
                }
            }
        });
        if let Some(m) = c.as_object_mut() {
            m.insert("transport_socket".into(), tls);
        }
    }
    c
}

/// Paths that may be an LLM call: the Understudy filters run only on routes matching this (Envoy's RE2, on the
/// normalized `:path`, query included). Every path `classify` accepts matches, whatever its spelling: `classify`
/// decodes `%XX` (any `%` matches here), drops `;params`, control characters, dot and empty segments and
/// lower-cases, none of which can create these words, and each operation ends in one of them.
/// `llm_path_regex_covers_every_operation` (below) fails to compile when an operation is added.
pub const LLM_PATH_REGEX: &str =
    "(?i).*(%|completions|embed|responses|messages|generate|counttokens|rawpredict|converse|invoke|chat).*";

/// The filters that only LLM routes run; every other route disables them (`FilterConfig{disabled}`), so Envoy
/// does not even create them for non-LLM requests: those cost what plain proxying costs.
pub const SCOPED_FILTERS: [&str; 3] = ["envoy.filters.http.decompressor", "understudy", "envoy.filters.http.buffer"];

/// `typed_per_filter_config` that turns the Understudy filters off on a route or virtual host.
pub fn filters_disabled() -> Value {
    let off = json!({"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true});
    Value::Object(SCOPED_FILTERS.iter().map(|n| (n.to_string(), off.clone())).collect())
}

/// A route `match` for the LLM paths under `prefix`.
pub fn llm_match(prefix: &str) -> Value {
    json!({"prefix": prefix, "headers": [{"name": ":path", "string_match": {"safe_regex": {"regex": LLM_PATH_REGEX}}}]})
}

/// The route action to `cluster` for paths under `prefix`.
fn action(prefix: &str, cluster: &str, up: &Upstream) -> Value {
    let mut action = json!({"cluster": cluster, "timeout": reply_timeout(), "auto_host_rewrite": true});
    if !up.prefix.is_empty() {
        if let Some(m) = action.as_object_mut() {
            m.insert("prefix_rewrite".into(), json!(format!("{}{}", up.prefix, prefix)));
        }
    }
    action
}

/// Two routes for `prefix`: LLM paths through the Understudy filters, everything else without them.
fn route(prefix: &str, cluster: &str, up: &Upstream) -> [Value; 2] {
    let action = action(prefix, cluster, up);
    [
        json!({"match": llm_match(prefix), "route": action, "request_headers_to_remove": [UPSTREAM_HEADER]}),
        json!({"match": {"prefix": prefix}, "route": action, "typed_per_filter_config": filters_disabled(),
               "request_headers_to_remove": [UPSTREAM_HEADER]}),
    ]
}

/// The route an LLM call forwarded for `provider` takes once the filter has named it (`x-understudy-upstream`):
/// Envoy picks the route again after a filter changes request headers.
fn provider_route(provider: &str, cluster: &str, up: &Upstream) -> Value {
    json!({
        "match": {"prefix": "/", "headers": [{"name": UPSTREAM_HEADER, "string_match": {"exact": provider}}]},
        "route": action("/", cluster, up),
        "request_headers_to_remove": [UPSTREAM_HEADER]
    })
}

/// Cluster names: the provider name with `.` replaced.
fn cluster_name(provider: &str) -> String {
    format!("upstream-{}", provider.replace('.', "-"))
}

/// The Understudy HTTP filters, in the order that is safe everywhere: (decompressor), wasm, buffer, router.
/// A minute above the longest simulated latency (`limits::MAX_DELAY_MS`), so a delayed answer is never cut.
fn reply_timeout() -> String {
    format!("{}s", understudy_matcher::limits::MAX_DELAY_MS / 1000 + 60)
}

pub fn http_filters(wasm: &str, plugin_config: &str, max_body_bytes: u64) -> Value {
    json!([
        {
            // gzip request bodies are inflated before understudy reads them.
            "name": "envoy.filters.http.decompressor",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor",
                "decompressor_library": {
                    "name": "gzip",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"}
                },
                "response_direction_config": {
                    "common_config": {"enabled": {"default_value": false, "runtime_key": "understudy.decompress_responses"}}
                }
            }
        },
        {
            "name": "understudy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "understudy",
                    "root_id": "understudy",
                    // A VM that traps (a bug: every request has a memory budget) fails closed (503, nothing
                    // upstream) during a back-off, then Envoy recreates it: virtualization comes back by itself.
                    "failure_policy": "FAIL_RELOAD",
                    "reload_config": {"backoff": {"base_interval": "1s", "max_interval": "10s"}},
                    "vm_config": {
                        "vm_id": "understudy",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm}}
                    },
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config}
                }
            }
        },
        {
            // Holds headers and body back from the router until understudy has decided.
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": max_body_bytes
            }
        },
        {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    ])
}

/// One JSON line per request: Understudy's outcome headers, the method, the path WITHOUT its query string
/// (some APIs take keys there) and the status. Nothing else of the request: no headers, no body.
pub fn access_log(path: &str) -> Value {
    json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {"json_format": {
                "outcome": "%RESP(x-understudy)%",
                "key": "%RESP(x-understudy-key)%",
                "closest": "%RESP(x-understudy-closest)%",
                "method": "%REQ(:METHOD)%",
                "path": "%PATH(NQ)%",
                "status": "%RESPONSE_CODE%"
            }}
        }
    }])
}

/// Routes and clusters for the upstreams: a forwarded LLM call goes to its provider's upstream (named by the
/// filter), Anthropic's other paths (`/v1/messages/...`) to Anthropic's, everything else to the default: the
/// `--upstream` URL, else api.openai.com. A provider with no upstream (Azure without `--upstream-azure` and
/// no `--upstream`) gets a 502 that says which flag is missing, never another provider's endpoint.
fn routes_and_clusters(ups: &Upstreams) -> (Vec<Value>, Vec<Value>) {
    let openai = || Upstream { tls: true, host: "api.openai.com".into(), port: 443, prefix: String::new() };
    let default = ups.default.clone().unwrap_or_else(openai);
    let resolved = ups.resolved();
    let mut routes = Vec::new();
    let mut clusters = vec![cluster("upstream", &default)];
    for (provider, flag, _) in PROVIDERS {
        match resolved.iter().find(|(p, _)| p == provider) {
            Some((_, up)) => {
                let name = cluster_name(provider);
                routes.push(provider_route(provider, &name, up));
                clusters.push(cluster(&name, up));
            }
            None if ups.default.is_none() => routes.push(json!({
                "match": {"prefix": "/", "headers": [{"name": UPSTREAM_HEADER, "string_match": {"exact": provider}}]},
                "direct_response": {"status": 502, "body": {"inline_string": format!(
                    "understudy: no upstream for {provider} calls: pass {flag} URL (or --upstream URL)\n")}}
            })),
            None => {}
        }
    }
    if let Some((_, anthropic)) = resolved.iter().find(|(p, _)| *p == "anthropic") {
        routes.extend(route("/v1/messages", &cluster_name("anthropic"), anthropic));
    }
    routes.extend(route("/", "upstream", &default));
    (routes, clusters)
}

/// Envoy's tag extraction for the cost metrics: every `TAG=.=VALUE;.;` in a stat name becomes a tag (a
/// Prometheus label), Istio's `extraStatTags` encoding (docs/cost.md). Envoy's default tags stay on.
pub fn stats_config() -> Value {
    use understudy_matcher::cost::stats::{tag_regex, TAGS};
    let tags: Vec<Value> = TAGS.iter().map(|t| json!({"tag_name": t, "regex": tag_regex(t)})).collect();
    json!({"stats_tags": tags})
}

/// The whole bootstrap as JSON (which Envoy reads as YAML).
pub fn bootstrap(s: &Settings) -> Value {
    let (mut routes, mut clusters) = routes_and_clusters(s.upstreams);
    if let Some(c) = s.collector {
        clusters.push(cluster(COLLECTOR_CLUSTER, c));
    }
    if let Some(p) = s.pacer {
        routes.insert(0, pacer_route(PACER_CLUSTER));
        clusters.push(cluster(PACER_CLUSTER, p));
    }
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "understudy",
        // Decode and merge paths as upstreams do, so no spelling of an LLM path is routed
        // differently from how understudy classifies it.
        "normalize_path": true,
        "merge_slashes": true,
        // Simulated latency may hold a reply up to 600 s; Envoy's default idle timeout is 300 s.
        "stream_idle_timeout": reply_timeout(),
        "codec_type": "AUTO",
        "route_config": {"name": "understudy", "virtual_hosts": [{"name": "llm", "domains": ["*"], "routes": routes}]},
        "http_filters": http_filters(s.wasm, s.plugin_config, s.max_body_bytes)
    });
    if s.pacer.is_some() {
        // Paced replay holds LLM request headers until the body is decided (the filter then re-routes a paced
        // hit to the pacer by changing them): the wasm filter must be allowed to stop on headers.
        if let Some(cfg) = hcm.pointer_mut("/http_filters/1/typed_config/config").and_then(Value::as_object_mut) {
            cfg.insert("allow_on_headers_stop_iteration".into(), json!(true));
        }
    }
    if let (Some(path), Some(m)) = (s.access_log, hcm.as_object_mut()) {
        m.insert("access_log".into(), access_log(path));
    }
    let mut boot = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": s.admin_port}}},
        "stats_config": stats_config(),
        // A connection cap is Envoy's recommended hardening (and silences its start-up warning).
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 50000
            }
        }]},
        "static_resources": {
            "listeners": [{
                "name": "understudy",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": s.port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm
                }]}]
            }],
            "clusters": clusters
        }
    });
    if let (Some(env), Some(m)) = (s.env, boot.as_object_mut()) {
        let key = understudy_matcher::policy::ENV_METADATA_KEY;
        m.insert("node".into(), json!({"id": "understudy", "cluster": "understudy", "metadata": {key: env}}));
    }
    boot
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_parse() {
        assert_eq!(
            Upstream::parse("https://api.openai.com").unwrap(),
            Upstream { tls: true, host: "api.openai.com".into(), port: 443, prefix: "".into() }
        );
        assert_eq!(
            Upstream::parse("http://127.0.0.1:8080/gw/").unwrap(),
            Upstream { tls: false, host: "127.0.0.1".into(), port: 8080, prefix: "/gw".into() }
        );
        assert_eq!(Upstream::parse("http://[::1]:9000").unwrap().host, "::1");
        assert!(Upstream::parse("ftp://x").is_err());
        assert!(Upstream::parse("http://h:notaport").is_err());
    }

    #[test]
    fn filter_order_is_wasm_buffer_router() {
        let f = http_filters("/x.wasm", "{}", 10);
        let names: Vec<&str> = f.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["envoy.filters.http.decompressor", "understudy", "envoy.filters.http.buffer", "envoy.filters.http.router"]
        );
    }

    /// A sample path for every operation: adding an operation fails to compile here until it has one, and
    /// then the test below fails until `LLM_PATH_REGEX` covers its path.
    fn sample_path(op: understudy_matcher::Operation) -> &'static str {
        use understudy_matcher::Operation::*;
        match op {
            ChatCompletions => "/v1/chat/completions",
            Completions => "/v1/completions",
            Embeddings => "/openai/deployments/e/embeddings?api-version=1",
            Responses => "/v1/responses",
            Messages => "/v1/messages",
            GenerateContent => "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            EmbedContent => "/v1/projects/p/locations/l/publishers/google/models/gemini-embedding-001:embedContent",
            BatchEmbedContents => "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            CountTokens => "/v1beta/models/gemini-2.5-flash:countTokens",
            BedrockConverse => "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream",
            BedrockTitanEmbeddings => "/model/amazon.titan-embed-text-v2:0/invoke",
            BedrockInvokeModel => "/model/meta.llama3-8b-instruct-v1:0/invoke-with-response-stream",
            OllamaChat => "/api/chat",
            OllamaGenerate => "/ollama/api/generate",
            OllamaEmbed => "/api/embed",
            OllamaEmbeddings => "/api/embeddings",
        }
    }

    fn llm_route_matches(path: &str) -> bool {
        // Envoy's safe_regex must match the whole value.
        let re = regex::Regex::new(&format!("^(?:{LLM_PATH_REGEX})$")).unwrap();
        re.is_match(path)
    }

    #[test]
    fn llm_path_regex_covers_every_operation() {
        for op in understudy_matcher::Operation::ALL {
            let p = sample_path(op);
            assert_eq!(understudy_matcher::classify("POST", p).map(|r| r.operation), Some(op), "{p}");
            assert!(llm_route_matches(p), "{op}: {p} would skip the filter");
        }
        for p in ["/v1/files", "/v1/models", "/healthz", "/v1/files/abc/content", "/"] {
            assert!(understudy_matcher::classify("POST", p).is_none());
            assert!(!llm_route_matches(p), "{p} should skip the filter");
        }
    }

    #[test]
    fn every_spelling_the_matcher_classifies_takes_the_llm_route() {
        // Segments that decode, trim or collapse into operation words, in random combinations and cases.
        let pieces = [
            "v1",
            "chat",
            "completions",
            "embeddings",
            "responses",
            "messages",
            "openai",
            "deployments",
            "gpt-4o",
            "files",
            "models",
            "",
            ".",
            "..",
            "%63ompletions",
            "comp%6Cetions",
            "%2F",
            "x;y",
            "..;",
            "completions;v=1",
            "%00",
            "\u{7f}",
            "%20messages",
            "MeSsAgEs",
            "COMPLETIONS",
            "a%2Fb",
            "embeddings%3Bx",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut classified, mut checked) = (0, 0);
        for _ in 0..50_000 {
            let len = 1 + next(6);
            let mut path = String::new();
            for _ in 0..len {
                path.push('/');
                path.push_str(pieces[next(pieces.len())]);
            }
            if next(4) == 0 {
                path.push_str("?api-version=1");
            }
            checked += 1;
            if understudy_matcher::classify("POST", &path).is_some() {
                classified += 1;
                assert!(llm_route_matches(&path), "{path:?} is an LLM call but would skip the filter");
            }
        }
        assert!(classified > 1_000 && classified < checked, "{classified} of {checked}: a weak sample");
    }

    #[test]
    fn non_llm_routes_disable_the_understudy_filters() {
        let up = Upstream::parse("http://127.0.0.1:1/gw").unwrap();
        let [llm, other] = route("/", "upstream", &up);
        assert!(llm.get("typed_per_filter_config").is_none());
        assert_eq!(llm["match"]["headers"][0]["name"], ":path");
        let names: Vec<&String> = other["typed_per_filter_config"].as_object().unwrap().keys().collect();
        let chain = http_filters("/x.wasm", "{}", 10);
        for n in SCOPED_FILTERS {
            assert!(names.iter().any(|k| k.as_str() == n), "{n} not disabled");
            assert!(chain.as_array().unwrap().iter().any(|f| f["name"] == n), "{n} is not in the chain");
        }
        assert_eq!(llm["route"], other["route"]);
    }

    #[test]
    fn the_bootstrap_and_the_reference_yaml_extract_every_cost_label() {
        use understudy_matcher::cost::stats::{tag_regex, TAGS};
        let reference = include_str!("../../envoy/understudy.yaml");
        let tags = stats_config()["stats_tags"].as_array().unwrap().clone();
        assert_eq!(tags.len(), TAGS.len());
        for (t, entry) in TAGS.iter().zip(&tags) {
            assert_eq!(entry["tag_name"], *t);
            assert_eq!(entry["regex"], tag_regex(t));
            let line = format!("{{ tag_name: {t}, regex: {} }}", serde_json::to_string(&tag_regex(t)).unwrap());
            assert!(reference.contains(&line), "envoy/understudy.yaml lacks {line}");
        }
        let boot = bootstrap(&Settings {
            port: 1,
            admin_port: 2,
            wasm: "/x.wasm",
            plugin_config: "{}",
            upstreams: &Upstreams::default(),
            max_body_bytes: 10,
            access_log: None,
            collector: None,
            pacer: None,
            env: None,
        });
        assert_eq!(boot["stats_config"], stats_config());
        assert!(boot.get("node").is_none(), "no environment: no node metadata, as before");
        let ups = Upstreams::default();
        let with_env = Settings { env: Some("staging"), ..settings_for_test(&ups) };
        assert_eq!(bootstrap(&with_env)["node"]["metadata"]["UNDERSTUDY_ENV"], "staging");
    }

    fn settings_for_test(upstreams: &Upstreams) -> Settings<'_> {
        Settings {
            port: 1,
            admin_port: 2,
            wasm: "/x.wasm",
            plugin_config: "{}",
            upstreams,
            max_body_bytes: 10,
            access_log: None,
            collector: None,
            pacer: None,
            env: None,
        }
    }

    #[test]
    fn https_upstreams_get_tls_with_sni() {
        let up = Upstream::parse("https://llm.example.com:8443").unwrap();
        let c = cluster("upstream", &up);
        assert_eq!(c["transport_socket"]["typed_config"]["sni"], "llm.example.com");
        assert!(cluster("u", &Upstream::parse("http://h").unwrap()).get("transport_socket").is_none());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod upstream_tests {
    use super::*;

    fn provider_routes(ups: &Upstreams) -> Vec<(String, Value)> {
        let (routes, _) = routes_and_clusters(ups);
        routes
            .into_iter()
            .filter_map(|r| {
                let h = r.pointer("/match/headers/0")?.clone();
                (h["name"] == UPSTREAM_HEADER).then(|| (h["string_match"]["exact"].as_str().unwrap().to_string(), r))
            })
            .collect()
    }

    #[test]
    fn every_provider_routes_to_its_own_upstream_or_says_which_flag_is_missing() {
        let public = provider_routes(&Upstreams::default());
        assert_eq!(public.len(), PROVIDERS.len());
        let azure = &public.iter().find(|(p, _)| p == "azure.ai.openai").unwrap().1;
        assert_eq!(azure["direct_response"]["status"], 502);
        assert!(azure["direct_response"]["body"]["inline_string"].as_str().unwrap().contains("--upstream-azure"));
        let bedrock = &public.iter().find(|(p, _)| p == "aws.bedrock").unwrap().1;
        assert_eq!(bedrock["route"]["cluster"], "upstream-aws-bedrock");
        // With --upstream, only the providers given their own flag get a route; the rest take the default.
        let ups = Upstreams {
            default: Some(Upstream::parse("http://127.0.0.1:9").unwrap()),
            providers: vec![("anthropic", Upstream::parse("https://a.example/gw").unwrap())],
        };
        let own = provider_routes(&ups);
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].1["route"]["prefix_rewrite"], "/gw/");
    }

    #[test]
    fn upstream_urls_are_checked() {
        for bad in ["api.openai.com", "ftp://x", "http://", "https://u:p@h", "http://h/p?q=1"] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }
}
