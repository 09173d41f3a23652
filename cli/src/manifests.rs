//! `understudy manifests`: what a platform team applies to put Understudy in a mesh.
//!
//! - **Istio**: a `WasmPlugin` (the OCI image pinned by digest, `FAIL_CLOSE`, the plugin configuration,
//!   matched to the one plaintext port LLM traffic uses) and an `EnvoyFilter` inserting
//!   `envoy.filters.http.buffer` right before the router of that port's listeners, so it sits after the wasm
//!   filter whatever name the Istio version gives it. `--target sidecar` adds a `ServiceEntry` and a
//!   `DestinationRule` per LLM host: the app calls `http://HOST:PORT`, its sidecar originates TLS to HOST:443.
//! - **Envoy Gateway**: an `EnvoyExtensionPolicy` (wasm from the image) and a `BackendTrafficPolicy`
//!   (`requestBuffer`) on the LLM `HTTPRoute`s, and an `EnvoyProxy` whose `filterOrder` puts the buffer after
//!   the wasm filter (Envoy Gateway's default order has it before).
//! - **Plain Envoy**: a bootstrap whose Understudy filter comes over ECDS from a watched file, and that file:
//!   the module fetched from the registry's blob URL and checked against its SHA-256. Rewriting the file rolls
//!   out a new plugin configuration without a restart.
//!
//! Every flavour scopes the filters to LLM traffic: a dedicated port (Istio), the targeted routes (Envoy
//! Gateway), LLM-path routes (plain Envoy, as `understudy up`). Kubernetes objects are checked before they are
//! written: a configuration over 1 MiB, or with a number that Kubernetes and Istio would not carry exactly
//! (they hold JSON numbers as 64-bit floats), is refused with the reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::envoy::{bootstrap, Settings, Upstream, Upstreams};
use crate::package::{compat_image, sha256_hex, wasm_artifact};
use crate::registry::ImageRef;
use crate::OnMissArg;

/// A Kubernetes object is stored whole in etcd; about 1 MiB is the practical limit.
pub const MAX_OBJECT_BYTES: usize = 1 << 20;
/// Last among the WasmPlugins of its phase: other plugins (auth, header rewrites) run first.
const ISTIO_PRIORITY: i64 = -1000;

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum Flavor {
    Istio,
    EnvoyGateway,
    Envoy,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum Target {
    /// An egress or ingress gateway that apps send plaintext LLM calls to.
    Gateway,
    /// Workloads' sidecars: the app calls http://HOST:PORT and its sidecar originates TLS.
    Sidecar,
}

#[derive(Args)]
pub struct ManifestsArgs {
    /// Environment name: names (understudy-NAME) and labels every generated object.
    #[arg(long)]
    env: String,
    /// The pushed filter image: registry/repository:tag, or @sha256:digest (`understudy package --push`).
    #[arg(long)]
    image: String,
    /// Manifest digest to pin [default: the digest in --image, else the digest `understudy package` gives
    /// the module at --wasm].
    #[arg(long)]
    sha256: Option<String>,
    /// The image is the compat flavour (pin the compat image's digest).
    #[arg(long)]
    compat: bool,
    /// The filter, to compute the digests [default: found like `understudy up` finds it].
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// Assets directory [default: the project's examples/assets].
    #[arg(long)]
    assets: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "error")]
    on_miss: OnMissArg,
    #[arg(long)]
    normalization: Option<PathBuf>,
    #[arg(long)]
    synthesize: Option<PathBuf>,
    /// Prices (JSON: model name or glob → USD per million tokens) in front of the built-in table (docs/cost.md).
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
    /// Kubernetes namespace [default: the environment name].
    #[arg(long)]
    namespace: Option<String>,
    /// Per-environment policy (JSON or YAML) carried in the plugin configuration; in Istio each proxy's
    /// environment comes from its node metadata (docs/policy.md).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Where the filter runs in Istio.
    #[arg(long, value_enum, default_value = "gateway")]
    target: Target,
    /// Workload labels selecting the proxies, KEY=VALUE (repeatable) [default: istio=egressgateway for
    /// --target gateway, none (every workload in the namespace) for sidecar].
    #[arg(long = "selector")]
    selectors: Vec<String>,
    /// The plaintext port LLM calls arrive on: the ServiceEntry port (sidecar), the gateway's container port,
    /// or plain Envoy's listener port. Only this port's traffic runs the filter.
    #[arg(long, default_value_t = 10000)]
    port: u16,
    /// LLM API hosts (--target sidecar: a ServiceEntry and a DestinationRule each).
    #[arg(long = "llm-host", default_values_t = ["api.openai.com".to_string(), "api.anthropic.com".to_string()])]
    llm_hosts: Vec<String>,
    /// Envoy Gateway: the HTTPRoute(s) carrying LLM calls (the policies' targets).
    #[arg(long = "httproute", default_values_t = ["llm".to_string()])]
    httproutes: Vec<String>,
    /// Plain Envoy: live upstream for passthrough (as `understudy up --upstream`).
    #[arg(long)]
    upstream: Option<String>,
    /// Plain Envoy: where Envoy reads the ECDS file (its directory is watched).
    #[arg(long, default_value = "/etc/envoy/understudy-ecds.yaml")]
    ecds_path: PathBuf,
    /// Plain Envoy: listener address.
    #[arg(long, default_value = "0.0.0.0")]
    listen: String,
    /// Plain Envoy: fetch the module from the registry over plain HTTP.
    #[arg(long)]
    plain_http: bool,
    /// Largest request body buffered for matching; bigger ones get 413.
    #[arg(long, default_value_t = understudy_matcher::limits::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: u64,
    /// Embed the assets' bundle in the module instead of the plugin configuration: pin the image that
    /// `understudy package --assets` pushes (same --assets and --normalization); the pluginConfig carries no
    /// bundle, so no Kubernetes size limit applies to the assets (docs/store.md).
    #[arg(long)]
    embed: bool,
    /// A published asset store (`understudy publish`), as served: http(s)://HOST[:PORT][/PREFIX]; its manifest
    /// is read from there. Without --assets it is the only source of assets.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The Envoy cluster that reaches the store [default: Istio's name for it, outbound|PORT||HOST; plain
    /// Envoy's bootstrap defines a cluster of that name].
    #[arg(long, requires = "store")]
    store_cluster: Option<String>,
    #[command(flatten)]
    store_tuning: crate::publish::StoreTuning,
    /// Which manifests to print (ignored with --output).
    #[arg(long, value_enum, default_value = "istio")]
    flavor: Flavor,
    /// Write every flavour into this directory (istio.yaml, envoy-gateway.yaml, envoy.yaml,
    /// understudy-ecds.yaml) instead of printing one.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// What every flavour needs.
struct Common {
    name: String,
    namespace: String,
    labels: Value,
    image: ImageRef,
    /// Manifest digest, hex.
    digest: String,
    /// The module's SHA-256, hex (= its layer's digest in the wasm artifact).
    module_sha256: String,
    plugin_config_text: String,
    plugin_config: Value,
    /// The store's cluster name and location, with --store.
    store: Option<(String, crate::publish::StoreLocation)>,
}

fn dns_label(s: &str, what: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        bail!("{what} {s:?}: lower-case letters, digits and '-', at most 63 characters");
    }
    Ok(())
}

fn selector_labels(a: &ManifestsArgs) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for s in &a.selectors {
        let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("--selector {s:?}: expected KEY=VALUE"))?;
        out.insert(k.to_string(), v.to_string());
    }
    if out.is_empty() && a.target == Target::Gateway {
        out.insert("istio".into(), "egressgateway".into());
    }
    Ok(out)
}

/// Refuses a value that Kubernetes (and Istio's `Struct`) would not carry exactly: both hold JSON numbers as
/// 64-bit floats, so `0.1` survives but a 30-digit integer or `1e999` would change, and then the bundle's
/// content hash would not match and the filter would (rightly) refuse to load.
pub fn check_numbers_survive_kubernetes(v: &Value, path: &mut String) -> Result<()> {
    match v {
        Value::Number(n) => {
            let lit = n.to_string();
            let exact = lit
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| {
                    use understudy_matcher::canonical::canonical_number;
                    canonical_number(&format!("{f:e}")) == canonical_number(&lit)
                })
                .unwrap_or(false);
            if !exact {
                bail!(
                    "the plugin configuration holds the number {lit} at {path}, which Kubernetes and Istio store as a \
                     64-bit float and would change; use `understudy up` or plain Envoy for this asset, or change it"
                );
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "/{i}");
                check_numbers_survive_kubernetes(x, path)?;
                path.truncate(len);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                let len = path.len();
                let _ = write!(path, "/{}", k.replace('~', "~0").replace('/', "~1"));
                check_numbers_survive_kubernetes(x, path)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_object_size(obj: &Value) -> Result<()> {
    let size = serde_json::to_vec(obj)?.len();
    if size > MAX_OBJECT_BYTES {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("object");
        bail!(
            "the {kind} is {size} bytes, over the {MAX_OBJECT_BYTES} bytes a Kubernetes object can hold: \
             split the assets into smaller environments"
        );
    }
    Ok(())
}

fn metadata(c: &Common, suffix: &str) -> Value {
    json!({"name": format!("{}{suffix}", c.name), "namespace": c.namespace, "labels": c.labels})
}

fn istio(c: &Common, a: &ManifestsArgs) -> Result<Vec<Value>> {
    let labels = selector_labels(a)?;
    let url = match &c.image.digest {
        Some(d) => format!("oci://{}@{d}", c.image.repository_url()),
        None => format!("oci://{}:{}", c.image.repository_url(), c.image.tag.as_deref().unwrap_or("latest")),
    };
    let mut plugin = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": metadata(c, ""),
        "spec": {
            "url": url,
            "sha256": c.digest,
            "imagePullPolicy": "IfNotPresent",
            "pluginName": "understudy",
            "type": "HTTP",
            // After Istio's authn/authz and stats filters: policies still apply, virtual answers are measured.
            "phase": "UNSPECIFIED_PHASE",
            "priority": ISTIO_PRIORITY,
            "failStrategy": "FAIL_CLOSE",
            "match": [{"mode": "CLIENT", "ports": [{"number": a.port}]}],
            "pluginConfig": c.plugin_config,
        }
    });
    let context = match a.target {
        Target::Gateway => "GATEWAY",
        Target::Sidecar => "SIDECAR_OUTBOUND",
    };
    let mut buffer = json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata(c, "-buffer"),
        "spec": {
            "configPatches": [{
                "applyTo": "HTTP_FILTER",
                "match": {
                    "context": context,
                    "listener": {
                        "portNumber": a.port,
                        "filterChain": {"filter": {
                            "name": "envoy.filters.network.http_connection_manager",
                            "subFilter": {"name": "envoy.filters.http.router"}
                        }}
                    }
                },
                // Right before the router, hence after the wasm filter: the request waits here, whole, until
                // Understudy has decided, so a virtualized call sends nothing upstream.
                "patch": {"operation": "INSERT_BEFORE", "value": buffer_filter(a.max_body_bytes)}
            }]
        }
    });
    if !labels.is_empty() {
        if let Some(s) = plugin.get_mut("spec").and_then(Value::as_object_mut) {
            s.insert("selector".into(), json!({"matchLabels": labels}));
        }
        if let Some(s) = buffer.get_mut("spec").and_then(Value::as_object_mut) {
            s.insert("workloadSelector".into(), json!({"labels": labels}));
        }
    }
    let mut out = vec![plugin, buffer];
    if a.target == Target::Sidecar {
        for host in &a.llm_hosts {
            let id = host.replace('.', "-").to_ascii_lowercase();
            dns_label(&id, "--llm-host")?;
            out.push(json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": metadata(c, &format!("-{id}")),
                "spec": {
                    "hosts": [host],
                    "location": "MESH_EXTERNAL",
                    "resolution": "DNS",
                    "exportTo": ["."],
                    "ports": [{"number": a.port, "name": "http-understudy", "protocol": "HTTP", "targetPort": 443}]
                }
            }));
            out.push(json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": metadata(c, &format!("-{id}")),
                "spec": {
                    "host": host,
                    "exportTo": ["."],
                    "trafficPolicy": {"portLevelSettings": [{
                        "port": {"number": a.port},
                        "tls": {"mode": "SIMPLE", "sni": host}
                    }]}
                }
            }));
        }
    }
    Ok(out)
}

fn buffer_filter(max_body_bytes: u64) -> Value {
    json!({
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": max_body_bytes
        }
    })
}

/// A Kubernetes quantity: `64Mi` when it divides evenly, else bytes.
fn quantity(bytes: u64) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{}Mi", bytes >> 20)
    } else {
        bytes.to_string()
    }
}

fn envoy_gateway(c: &Common, a: &ManifestsArgs) -> Vec<Value> {
    let targets: Vec<Value> = a
        .httproutes
        .iter()
        .map(|r| json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": r}))
        .collect();
    let url = match &c.image.digest {
        Some(d) => format!("{}@{d}", c.image.repository_url()),
        None => format!("{}:{}", c.image.repository_url(), c.image.tag.as_deref().unwrap_or("latest")),
    };
    vec![
        json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1",
            "kind": "EnvoyExtensionPolicy",
            "metadata": metadata(c, ""),
            "spec": {
                "targetRefs": targets,
                "wasm": [{
                    "name": "understudy",
                    "rootID": "understudy",
                    "code": {"type": "Image", "image": {"url": url, "sha256": c.digest}},
                    "config": c.plugin_config,
                    "failOpen": false
                }]
            }
        }),
        json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1",
            "kind": "BackendTrafficPolicy",
            "metadata": metadata(c, "-buffer"),
            "spec": {"targetRefs": targets, "requestBuffer": {"limit": quantity(a.max_body_bytes)}}
        }),
        json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1",
            "kind": "EnvoyProxy",
            "metadata": metadata(c, ""),
            // Envoy Gateway orders the buffer before wasm filters by default; Understudy needs it after.
            "spec": {"filterOrder": [{"name": "envoy.filters.http.buffer", "after": "envoy.filters.http.wasm"}]}
        }),
    ]
}

/// The Understudy filter as an ECDS resource: the module from the registry's blob URL, checked by SHA-256.
fn ecds_resource(c: &Common, a: &ManifestsArgs) -> Result<Value> {
    let mut filter = crate::watch::filter_config("", &c.plugin_config_text, a.max_body_bytes)?;
    let scheme = if a.plain_http { "http" } else { "https" };
    let code = json!({"remote": {
        "http_uri": {
            "uri": format!("{scheme}://{}/v2/{}/blobs/sha256:{}", c.image.api_host(), c.image.repository, c.module_sha256),
            "cluster": "understudy_registry",
            "timeout": "60s"
        },
        "sha256": c.module_sha256,
        "retry_policy": {"num_retries": 3}
    }});
    let vm = filter.pointer_mut("/config/vm_config").and_then(Value::as_object_mut);
    vm.ok_or_else(|| anyhow!("the understudy filter has no vm_config"))?.insert("code".into(), code);
    crate::watch::ecds_document(&filter)
}

/// A plain Envoy bootstrap: `understudy up`'s routes and filters, the Understudy filter over ECDS from a file.
fn envoy_bootstrap(c: &Common, a: &ManifestsArgs) -> Result<Value> {
    let upstreams =
        Upstreams { default: a.upstream.as_deref().map(Upstream::parse).transpose()?, providers: Vec::new() };
    let mut boot = bootstrap(&Settings {
        port: a.port,
        admin_port: 9901,
        wasm: "",
        plugin_config: "",
        upstreams: &upstreams,
        max_body_bytes: a.max_body_bytes,
        access_log: None,
        collector: None,
        pacer: None,
        env: None,
    });
    crate::watch::use_ecds(&mut boot, &a.ecds_path)?;
    // File-based xDS subscriptions need a node identity; the environment a policy applies is its metadata.
    if let Some(m) = boot.as_object_mut() {
        let env = json!({understudy_matcher::policy::ENV_METADATA_KEY: a.env});
        m.insert("node".into(), json!({"id": c.name, "cluster": "understudy", "metadata": env}));
    }
    let listener = boot.pointer_mut("/static_resources/listeners/0").ok_or_else(|| anyhow!("no listener"))?;
    if let Some(addr) = listener.pointer_mut("/address/socket_address/address") {
        *addr = json!(a.listen);
    }
    let scheme = if a.plain_http { "http" } else { "https" };
    let registry = Upstream::parse(&format!("{scheme}://{}", c.image.api_host()))?;
    let clusters = boot
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| anyhow!("no clusters"))?;
    clusters.push(crate::envoy::cluster("understudy_registry", &registry));
    if let Some((cluster, loc)) = &c.store {
        clusters.push(crate::envoy::cluster(cluster, &loc.upstream));
    }
    Ok(boot)
}

fn common(a: &ManifestsArgs) -> Result<Common> {
    dns_label(&a.env, "--env")?;
    let namespace = a.namespace.clone().unwrap_or_else(|| a.env.clone());
    dns_label(&namespace, "--namespace")?;
    let image = ImageRef::parse(&a.image)?;
    let wasm = crate::launcher::find_wasm(a.wasm.clone())?;
    let assets = a.assets.clone().unwrap_or_else(crate::launcher::default_assets);
    // With --embed, the image's module carries the bundle (what `understudy package --assets` pushes).
    let embedded = a.embed.then_some(assets.as_path());
    let module = crate::package::module_with(&wasm, embedded, a.normalization.as_deref())?;
    let computed = if a.compat { compat_image(&module)?.digest() } else { wasm_artifact(&module)?.digest() };
    let digest = a.sha256.clone().or_else(|| image.digest.clone()).unwrap_or(computed);
    let digest = digest.strip_prefix("sha256:").unwrap_or(&digest).to_string();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        bail!("--sha256 {digest:?}: 64 lower-case hex digits");
    }
    if let Some(d) = &image.digest {
        if d.strip_prefix("sha256:") != Some(digest.as_str()) {
            bail!("--image pins {d} but --sha256 is {digest}");
        }
    }
    let given = a.normalization.as_deref().map(|p| crate::bundle::load_normalization(Some(p))).transpose()?;
    let mut normalization = given.clone().unwrap_or_default();
    let store = match &a.store {
        Some(url) => {
            let loc = crate::publish::StoreLocation::parse(url)?;
            let manifest = loc.manifest()?;
            normalization = crate::store_normalization(given, &manifest)?;
            let cluster = a
                .store_cluster
                .clone()
                .unwrap_or_else(|| format!("outbound|{}||{}", loc.upstream.port, loc.upstream.host));
            let section = loc.section(&cluster, &manifest, &a.store_tuning);
            Some((cluster, loc, section))
        }
        None => None,
    };
    // The bundle goes inline unless it is embedded, or a store stands in for the assets.
    let inline = (!a.embed && (a.assets.is_some() || store.is_none())).then_some(assets.as_path());
    let text = crate::build_plugin_config(&crate::ConfigSpec {
        assets: inline,
        store: store.as_ref().map(|(_, _, s)| s.clone()),
        on_miss: a.on_miss,
        normalization,
        synthesize: a.synthesize.as_deref(),
        prices: a.prices.as_deref(),
        record: &crate::RecordArgs { policy: a.policy.clone(), ..Default::default() },
    })?;
    if a.embed && store.is_none() {
        let payload = crate::embed::extract(&module)?.map(String::from_utf8).transpose()?;
        understudy_matcher::Runtime::from_json_sealed_embedded(&text, payload.as_deref())?;
    }
    let plugin_config: Value = serde_json::from_str(&text)?;
    Ok(Common {
        name: format!("understudy-{}", a.env),
        namespace,
        labels: json!({
            "app.kubernetes.io/name": "understudy",
            "app.kubernetes.io/version": env!("CARGO_PKG_VERSION"),
            "understudy.io/env": a.env,
        }),
        image,
        digest,
        module_sha256: sha256_hex(&module),
        plugin_config_text: text,
        plugin_config,
        store: store.map(|(cluster, loc, _)| (cluster, loc)),
    })
}

fn kubernetes(objs: &[Value], c: &Common) -> Result<String> {
    check_numbers_survive_kubernetes(&c.plugin_config, &mut String::from("pluginConfig"))?;
    for o in objs {
        check_object_size(o)?;
    }
    Ok(objs.iter().map(|o| format!("---\n{}", to_yaml(o))).collect())
}

pub fn run(a: ManifestsArgs) -> Result<()> {
    let c = common(&a)?;
    let header = format!(
        "# understudy manifests --env {} (understudy {}): image {} sha256 {}\n",
        a.env,
        env!("CARGO_PKG_VERSION"),
        c.image.repository_url(),
        c.digest
    );
    let envoy = || -> Result<(String, String)> {
        Ok((header.clone() + &to_yaml(&envoy_bootstrap(&c, &a)?), header.clone() + &to_yaml(&ecds_resource(&c, &a)?)))
    };
    let Some(dir) = &a.output else {
        let text = match a.flavor {
            Flavor::Istio => header.clone() + &kubernetes(&istio(&c, &a)?, &c)?,
            Flavor::EnvoyGateway => header.clone() + &kubernetes(&envoy_gateway(&c, &a), &c)?,
            Flavor::Envoy => {
                let (boot, ecds) = envoy()?;
                format!("{boot}---\n# {} (the ECDS file)\n{ecds}", a.ecds_path.display())
            }
        };
        print!("{text}");
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (boot, ecds) = envoy()?;
    let files = [
        ("istio.yaml", header.clone() + &kubernetes(&istio(&c, &a)?, &c)?),
        ("envoy-gateway.yaml", header.clone() + &kubernetes(&envoy_gateway(&c, &a), &c)?),
        ("envoy.yaml", boot),
        ("understudy-ecds.yaml", ecds),
    ];
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

// ---- YAML ---------------------------------------------------------------------------------------------------

/// Block-style YAML that YAML 1.1 (Kubernetes' and PyYAML's parsers) and 1.2 read the same: strings are always
/// double-quoted with every non-printable-ASCII character escaped, and exponent numbers are spelled
/// `1.0e+7` (YAML 1.1 reads `1e7` as a string).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => write_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => write_seq(a, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn write_map(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (k, v) in m {
        out.extend(std::iter::repeat_n(' ', indent));
        out.push_str(&key(k));
        write_value_after(v, indent, out);
    }
}

fn write_seq(a: &[Value], indent: usize, out: &mut String) {
    for v in a {
        out.extend(std::iter::repeat_n(' ', indent));
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // The first entry on the dash's line, the rest aligned under it.
                let mut first = true;
                for (k, x) in m {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        out.extend(std::iter::repeat_n(' ', indent + 2));
                    }
                    out.push_str(&key(k));
                    write_value_after(x, indent + 2, out);
                }
            }
            Value::Array(x) if !x.is_empty() => {
                out.push('\n');
                write_seq(x, indent + 2, out);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

/// After `key`: `: scalar` on the line, or a nested block below it.
fn write_value_after(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push_str(":\n");
            write_map(m, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push_str(":\n");
            write_seq(a, indent, out);
        }
        other => {
            out.push_str(": ");
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b))
        && k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        k.to_string()
    } else {
        quote(k)
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => yaml_number(&n.to_string()),
        Value::String(s) => quote(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn yaml_number(lit: &str) -> String {
    let Some(i) = lit.find(['e', 'E']) else { return lit.to_string() };
    let (mantissa, exp) = (lit.get(..i).unwrap_or(lit), lit.get(i + 1..).unwrap_or_default());
    let mantissa = if mantissa.contains('.') { mantissa.to_string() } else { format!("{mantissa}.0") };
    let exp = if exp.starts_with(['+', '-']) { exp.to_string() } else { format!("+{exp}") };
    format!("{mantissa}e{exp}")
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(ch),
            c if (c as u32) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08X}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers_kubernetes_would_change_are_refused() {
        let ok = json!({"a": [1, 0.7, -0.0125, 1e300, 9007199254740992_u64, "12345678901234567890123"]});
        check_numbers_survive_kubernetes(&ok, &mut String::new()).unwrap();
        for bad in ["123456789012345678901234567890", "1e999", "0.1000000000000000000001", "9007199254740993"] {
            let v: Value = serde_json::from_str(&format!(r#"{{"x": {{"y/z": [{bad}]}}}}"#)).unwrap();
            let e = check_numbers_survive_kubernetes(&v, &mut String::from("pluginConfig")).unwrap_err().to_string();
            assert!(e.contains("64-bit float") && e.contains("pluginConfig/x/y~1z/0"), "{e}");
        }
    }

    #[test]
    fn yaml_numbers_and_strings_read_the_same_in_yaml_1_1_and_1_2() {
        assert_eq!(yaml_number("1e400"), "1.0e+400");
        assert_eq!(yaml_number("1.5e-7"), "1.5e-7");
        assert_eq!(yaml_number("-2E5"), "-2.0e+5");
        assert_eq!(yaml_number("0.7"), "0.7");
        assert_eq!(quote("é\u{2028}😀\"\\\n\u{7f}"), r#""\u00E9\u2028\U0001F600\"\\\n\u007F""#);
        assert_eq!(key("on"), "\"on\"");
        assert_eq!(key("apiVersion"), "apiVersion");
        assert_eq!(key("@type"), "\"@type\"");
    }

    #[test]
    fn yaml_nests_maps_and_sequences() {
        let v = json!({"a": {"b": [1, {"c": "d", "e": []}, [2]]}, "f": {}});
        assert_eq!(to_yaml(&v), "a:\n  b:\n  - 1\n  - c: \"d\"\n    e: []\n  -\n    - 2\nf: {}\n");
    }
}
