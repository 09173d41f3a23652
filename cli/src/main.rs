//! `understudy`: build and validate asset bundles, compute matching keys, and run a local Envoy with the
//! Understudy filter (`understudy up`), the quickest way to a virtual LLM endpoint.

mod bundle;
mod clientenv;
mod collect;
mod costs;
mod embed;
mod envoy;
mod estimate;
mod import;
mod launcher;
mod manifests;
mod pacer;
mod package;
mod parity_report;
mod publish;
mod registry;
mod report;
mod run;
mod summary;
mod up;
mod watch;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use understudy_matcher::{classify, parse_asset_file, Normalizer};

#[derive(Parser)]
#[command(
    name = "understudy",
    version,
    about = "LLM service virtualization for Envoy: virtual responses from recorded assets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum OnMissArg {
    Error,
    Passthrough,
}

/// What the filter does with LLM calls (docs/record.md).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum ModeArg {
    /// Answer from the assets.
    #[default]
    Replay,
    /// Send every LLM call to the upstream and record it.
    Record,
    /// Answer hits from the assets; send misses to the upstream and record them.
    RecordMissing,
}

impl ModeArg {
    /// The mode as the command line spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ModeArg::Replay => "replay",
            ModeArg::Record => "record",
            ModeArg::RecordMissing => "record-missing",
        }
    }

    pub(crate) fn mode(self) -> understudy_matcher::Mode {
        match self {
            ModeArg::Replay => understudy_matcher::Mode::Replay,
            ModeArg::Record => understudy_matcher::Mode::Record,
            ModeArg::RecordMissing => understudy_matcher::Mode::RecordMissing,
        }
    }
}

/// Record and timing options shared by `up`, `run` and `plugin-config`.
#[derive(Args, Clone, Default)]
pub(crate) struct RecordArgs {
    /// replay (answer from the assets), record (every LLM call goes live and is recorded into --assets) or
    /// record-missing (hits answered, misses go live and are recorded).
    #[arg(long, value_enum, default_value = "replay")]
    pub mode: ModeArg,
    /// Record settings (JSON: redact_headers, redact_request, redact_response, redact_patterns, replacement,
    /// keep_errors); see docs/record.md.
    #[arg(long, value_name = "FILE")]
    pub record_config: Option<PathBuf>,
    /// Replay recorded streams at their recorded pace, scaled: 1 as recorded, 2 twice as fast (through the
    /// pacer). Off by default: answers leave at once.
    #[arg(long, value_name = "SPEED")]
    pub replay_speed: Option<f64>,
    /// Per-environment policy (JSON or YAML: environments, default, label, parity, override); see
    /// docs/policy.md.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

impl RecordArgs {
    /// The policy file, parsed strictly (YAML when it is not a JSON object); its optional `parity` member is
    /// the plugin configuration's `parity` (docs/parity.md).
    pub(crate) fn policy(&self) -> Result<Option<understudy_matcher::policy::PolicyConfig>> {
        Ok(self.policy_file()?.map(|(policy, _)| policy))
    }

    /// The policy file's `parity` settings, or the defaults.
    pub(crate) fn parity(&self) -> Result<understudy_matcher::parity::ParityConfig> {
        Ok(self.policy_file()?.map(|(_, parity)| parity).unwrap_or_default())
    }

    fn policy_file(
        &self,
    ) -> Result<Option<(understudy_matcher::policy::PolicyConfig, understudy_matcher::parity::ParityConfig)>> {
        let Some(p) = &self.policy else { return Ok(None) };
        let name = p.display().to_string();
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {name}"))?;
        let mut doc: serde_json::Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(&text).with_context(|| format!("{name}: not JSON"))?
        } else {
            import::yaml_to_json(&text).with_context(|| format!("{name}: not JSON or YAML"))?
        };
        let parity = doc.as_object_mut().and_then(|m| m.remove("parity"));
        let policy = understudy_matcher::asset::from_str_strict(&doc.to_string(), &name)?;
        let parity = match parity {
            Some(v) => understudy_matcher::asset::from_str_strict(&v.to_string(), &format!("{name} (parity)"))?,
            None => Default::default(),
        };
        Ok(Some((policy, parity)))
    }

    /// The policy of the environment `env` (`None` without --policy), as the filter will resolve it.
    pub(crate) fn active(
        &self,
        on_miss: OnMissArg,
        env: Option<&str>,
    ) -> Result<Option<understudy_matcher::policy::Active>> {
        let Some(cfg) = self.policy()? else { return Ok(None) };
        let policy =
            understudy_matcher::policy::Policy::compile(&cfg, &self.parity()?, self.mode.mode(), on_miss.on_miss())?;
        let node =
            understudy_matcher::policy::NodeInfo { understudy_env: env.map(str::to_string), ..Default::default() };
        Ok(Some(policy.resolve(&node)))
    }

    /// Does the environment `env` record (and so need a collector and an assets directory)?
    pub(crate) fn records(&self, on_miss: OnMissArg, env: Option<&str>) -> Result<bool> {
        Ok(match self.active(on_miss, env)? {
            Some(a) => a.mode.recorder_mode().records(),
            None => self.mode.mode().records(),
        })
    }
    /// The record settings file, or the defaults.
    pub(crate) fn config(&self) -> Result<understudy_matcher::RecordConfig> {
        let Some(p) = &self.record_config else { return Ok(Default::default()) };
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        Ok(understudy_matcher::asset::from_str_strict(&text, &p.display().to_string())?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print the matching key of an asset file's request(s), or of a raw request body with --path.
    Key {
        /// Asset file, or raw request JSON with --path; `-` reads stdin.
        file: String,
        /// Treat FILE as a raw request body sent to this path (e.g. /v1/chat/completions).
        #[arg(long)]
        path: Option<String>,
        /// HTTP method for --path.
        #[arg(long, default_value = "POST")]
        method: String,
        /// Normalization settings (JSON: ignore_fields, scrubbers).
        #[arg(long)]
        normalization: Option<PathBuf>,
    },
    /// Validate a directory of assets and write the bundle the filter loads.
    Bundle {
        /// Assets directory (every *.json below it, recursively).
        dir: PathBuf,
        /// Output bundle file (`-` for stdout).
        #[arg(short, long)]
        output: String,
        /// Normalization settings (JSON: ignore_fields, scrubbers).
        #[arg(long)]
        normalization: Option<PathBuf>,
    },
    /// Print the plugin configuration (on_miss, normalization, bundle, store) for an assets directory and/or
    /// a published asset store.
    PluginConfig {
        /// Assets directory (the bundle inside the configuration); optional with --store.
        #[arg(required_unless_present = "store")]
        dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "error")]
        on_miss: OnMissArg,
        #[arg(long)]
        normalization: Option<PathBuf>,
        /// Synthesize rules (JSON array) for requests no asset matches.
        #[arg(long)]
        synthesize: Option<PathBuf>,
        /// Prices (JSON: model name or glob → USD per million tokens) in front of the built-in table
        /// (docs/cost.md).
        #[arg(long, value_name = "FILE")]
        prices: Option<PathBuf>,
        #[command(flatten)]
        record: RecordArgs,
        /// A published asset store (`understudy publish`), as served: http(s)://HOST[:PORT][/PREFIX]. Its
        /// manifest is read from there; keys the bundle lacks are fetched from it (docs/store.md).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// The Envoy cluster that reaches the store (in Istio: outbound|PORT||HOST).
        #[arg(long, default_value = "understudy_store", requires = "store")]
        store_cluster: String,
        #[command(flatten)]
        store_tuning: publish::StoreTuning,
    },
    /// Validate a directory of assets and publish it as a remote asset store: a static layout (a manifest and
    /// one file per key) for any HTTP server or bucket (docs/store.md).
    Publish(publish::PublishArgs),
    /// Run a local Envoy with Understudy in the foreground, serving an assets directory.
    Up(up::UpArgs),
    /// Run a command (a test suite) against Envoy with Understudy: SDKs pointed at it through the
    /// environment, Envoy torn down after, a verdict and a summary at the end; exits with the command's status.
    #[command(after_help = "Exit status: the command's; 128+N if it died of signal N; 122 with --fail-on-miss when \
                            a request missed although the command passed; 125 if Understudy itself failed; \
                            126 if the command is not executable; 127 if it was not found. See docs/ci.md.")]
    Run(run::RunArgs),
    /// What virtualization saved: live calls, tokens and dollars per provider, operation and model, read from
    /// one or more Envoys' stats, with weekly and quarterly projections (docs/cost.md).
    Report(report::ReportArgs),
    /// The exposure of a test suite to live models: (tokens per call) × (calls per run) × (runs per week) ×
    /// (environments), from flags or measured from an assets directory (docs/cost.md).
    Estimate(estimate::EstimateArgs),
    /// Replay recorded streams at their recorded pace (the pacer `understudy up --replay-speed` runs; a
    /// service of its own in a mesh).
    Pace(pacer::PaceArgs),
    /// Turn captured traffic into assets: VCR.py / pytest-recording cassettes and HAR 1.2 files.
    Import(import::ImportArgs),
    /// Receive captures from the filter in record mode and write them as asset files into a directory.
    Collect(collect::CollectArgs),
    /// Parity of the virtual answers with the live model, from parity mode's records: rate per provider,
    /// operation, model and environment, and the worst drifts (docs/parity.md).
    #[command(after_help = "Exit status: 0; 3 when the parity rate is under --min-parity (or there is no \
                            record); 1 when DIR can't be read. See docs/parity.md.")]
    ParityReport(parity_report::ParityReportArgs),
    /// Package the filter as OCI images (wasm artifact and compat image) and optionally push one.
    Package(package::PackageArgs),
    /// Generate Istio, Envoy Gateway and plain Envoy (ECDS) configuration for an environment.
    Manifests(manifests::ManifestsArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // A usage error of `run` must not look like the wrapped command's own status.
            let run = std::env::args_os().nth(1).is_some_and(|a| a == "run");
            return match (e.use_stderr(), run) {
                (false, _) => ExitCode::SUCCESS,
                (true, true) => ExitCode::from(run::EXIT_ERROR),
                (true, false) => ExitCode::from(2),
            };
        }
    };
    let res = match cli.command {
        Command::Key { file, path, method, normalization } => {
            key(&file, path.as_deref(), &method, normalization.as_deref())
        }
        Command::Bundle { dir, output, normalization } => bundle_cmd(&dir, &output, normalization.as_deref()),
        Command::PluginConfig {
            dir,
            on_miss,
            normalization,
            synthesize,
            prices,
            record,
            store,
            store_cluster,
            store_tuning,
        } => {
            if record.replay_speed.is_some() {
                eprintln!(
                    "understudy: pacing needs `allow_on_headers_stop_iteration: true` in the wasm filter's config and a \
                     route on the x-understudy-pace header to a pacer (`understudy pace`); without the flag Envoy \
                     never delivers LLM request bodies. See docs/record.md."
                );
            }
            plugin_config_cmd(
                dir,
                on_miss,
                normalization,
                synthesize,
                prices,
                &record,
                store,
                &store_cluster,
                &store_tuning,
            )
            .map(|c| println!("{c}"))
        }
        Command::Publish(args) => publish::run(args),
        Command::Up(args) => up::run(args),
        Command::Run(args) => return run::main(args),
        Command::ParityReport(args) => return parity_report::main(args),
        Command::Report(args) => report::run(args),
        Command::Estimate(args) => estimate::run(args),
        Command::Collect(args) => collect::run(args),
        Command::Import(args) => import::run(args),
        Command::Pace(args) => pacer::run(args),
        Command::Package(args) => package::run(args),
        Command::Manifests(args) => manifests::run(args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("understudy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_input(file: &str) -> Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))
}

fn key(file: &str, path: Option<&str>, method: &str, normalization: Option<&Path>) -> Result<()> {
    let normalizer = Normalizer::compile(&bundle::load_normalization(normalization)?)?;
    let text = read_input(file)?;
    if let Some(p) = path {
        let Some(route) = classify(method, p) else {
            bail!("{method} {p} is not an LLM operation Understudy virtualizes");
        };
        let (k, _) = normalizer.key(&route, text.as_bytes()).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        println!("{k}");
        return Ok(());
    }
    let assets = parse_asset_file(&text, file)?;
    let many = assets.len() > 1;
    for (label, a) in assets {
        let Some(route) = classify(&a.request.method, &a.request.path) else {
            bail!("{label}: not an LLM operation");
        };
        let body = serde_json::to_vec(&a.request.body)?;
        let (k, _) = normalizer.key(&route, &body).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
        if many {
            println!("{k}  {label}{}", a.name.map(|n| format!(" {n:?}")).unwrap_or_default());
        } else {
            println!("{k}");
        }
    }
    Ok(())
}

fn bundle_cmd(dir: &Path, output: &str, normalization: Option<&Path>) -> Result<()> {
    let built = bundle::build(dir, &bundle::load_normalization(normalization)?)?;
    let json = serde_json::to_string_pretty(&built.bundle)?;
    if output == "-" {
        println!("{json}");
    } else {
        std::fs::write(output, json + "\n").with_context(|| format!("cannot write {output}"))?;
    }
    eprintln!("{}", bundle::report(&built));
    Ok(())
}

/// `understudy plugin-config`: the store's normalization settings unless --normalization says otherwise (and
/// then they must agree).
#[allow(clippy::too_many_arguments)] // one per flag of `understudy plugin-config`
fn plugin_config_cmd(
    dir: Option<PathBuf>,
    on_miss: OnMissArg,
    normalization: Option<PathBuf>,
    synthesize: Option<PathBuf>,
    prices: Option<PathBuf>,
    record: &RecordArgs,
    store: Option<String>,
    cluster: &str,
    tuning: &publish::StoreTuning,
) -> Result<String> {
    let mut norm = bundle::load_normalization(normalization.as_deref())?;
    let store = match store {
        Some(url) => {
            let loc = publish::StoreLocation::parse(&url)?;
            let manifest = loc.manifest()?;
            norm = store_normalization(normalization.is_some().then_some(norm), &manifest)?;
            eprintln!("asset store {url}: {}", publish::describe(&manifest));
            Some(loc.section(cluster, &manifest, tuning))
        }
        None => None,
    };
    build_plugin_config(&ConfigSpec {
        assets: dir.as_deref(),
        store,
        on_miss,
        normalization: norm,
        synthesize: synthesize.as_deref(),
        prices: prices.as_deref(),
        record,
    })
}

/// The normalization a configuration with a store must use: the store's; settings given besides must match.
pub(crate) fn store_normalization(
    given: Option<understudy_matcher::NormalizationConfig>,
    manifest: &understudy_matcher::store::remote::StoreManifest,
) -> Result<understudy_matcher::NormalizationConfig> {
    match given {
        Some(n) if n != manifest.normalization => bail!(
            "--normalization differs from the settings the store was published with ({}): every key would miss; \
             publish the store with the same settings",
            serde_json::to_string(&manifest.normalization)?
        ),
        _ => Ok(manifest.normalization.clone()),
    }
}

/// What a plugin configuration is built from.
pub(crate) struct ConfigSpec<'a> {
    /// Assets directory for the inline bundle (none: the embedded bundle or the store only).
    pub assets: Option<&'a Path>,
    pub store: Option<understudy_matcher::StoreConfig>,
    pub on_miss: OnMissArg,
    pub normalization: understudy_matcher::NormalizationConfig,
    pub synthesize: Option<&'a Path>,
    pub prices: Option<&'a Path>,
    pub record: &'a RecordArgs,
}

/// Builds a plugin configuration, proven loadable by the filter's own loader.
pub(crate) fn build_plugin_config(spec: &ConfigSpec) -> Result<String> {
    let bundle = match spec.assets {
        Some(dir) => {
            let built = bundle::build(dir, &spec.normalization)?;
            eprintln!("{}", bundle::report(&built));
            Some(built.bundle)
        }
        None => None,
    };
    let cfg = understudy_matcher::PluginConfig {
        on_miss: spec.on_miss.on_miss(),
        normalization: spec.normalization.clone(),
        bundle,
        store: spec.store.clone(),
        synthesize: bundle::load_synthesize(spec.synthesize)?,
        prices: bundle::load_prices(spec.prices)?,
        mode: spec.record.mode.mode(),
        record: spec.record.config()?,
        pacing: spec.record.replay_speed.map(|speed| understudy_matcher::record::PacingConfig { speed }),
        policy: spec.record.policy()?,
        parity: spec.record.parity()?,
    };
    // Canonical JSON: the filter then verifies the bundle's content hash over the text as it is (no second,
    // canonicalizing pass over every asset). Prove the filter will accept it, through its own loader (a
    // configuration without a bundle or store is proven by the caller, with the module's embedded bundle).
    let text = understudy_matcher::canonical::to_canonical(&serde_json::to_value(&cfg)?);
    if cfg.bundle.is_some() || cfg.store.is_some() {
        understudy_matcher::Runtime::from_json_sealed(&text)?;
    }
    Ok(text)
}
