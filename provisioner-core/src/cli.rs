//! What every provisioner binary shares: the engine's flags (each also read
//! from an environment variable) and a runner that sets up logging, the
//! rate-limited client, leader election, the metrics and health endpoint,
//! and signal handling, so that a binary's `main` stays a few lines.
//!
//! # Environment variables
//!
//! Every flag `--<flag>` is also read from `PROVISIONER_<FLAG>`: the flag in
//! upper case, `-` as `_`, and a flag that already starts with
//! `provisioner-` not prefixed twice ([`variable_for`]): `--workers` is
//! `PROVISIONER_WORKERS`, `--provisioner-name` is `PROVISIONER_NAME`. A
//! flag given on the command line wins over its variable.
//!
//! Variables renamed since 0.1.0 are listed as [`Renamed`] pairs
//! ([`ENGINE_RENAMED`] for the engine's). [`parse`] still reads an old name
//! when the new one is unset and returns a warning for it, to be logged with
//! [`log_deprecations`] once logging is set up.
//!
//! ```no_run
//! use provisioner_core::cli::{ENGINE_RENAMED, EngineArgs, init_logging, log_deprecations, parse, run};
//! # struct MyProvisioner;
//! # #[async_trait::async_trait]
//! # impl provisioner_core::Provisioner for MyProvisioner {
//! #   async fn provision(&self, _: &provisioner_core::ProvisionRequest) -> Result<provisioner_core::ProvisionedVolume, provisioner_core::ProvisionError> { unimplemented!() }
//! #   async fn delete(&self, _: &k8s_openapi::api::core::v1::PersistentVolume) -> Result<(), provisioner_core::DeleteError> { unimplemented!() }
//! # }
//!
//! #[derive(clap::Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     engine: EngineArgs,
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (args, deprecations) = parse::<Args>(ENGINE_RENAMED);
//!     init_logging(&args.engine.log_format);
//!     log_deprecations(&deprecations);
//!     run(args.engine, &["example.com/mine".to_string()], std::sync::Arc::new(MyProvisioner)).await?;
//!     Ok(())
//! }
//! ```

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::parser::ValueSource;

use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::client::{ApiRate, build_client};
use crate::engine::{Engine, EngineBuilder, EngineError};
use crate::provisioner::Provisioner;
use crate::serve::{serve, shutdown_on_signals};

/// The engine's flags.
#[derive(Clone, Debug, clap::Args)]
pub struct EngineArgs {
    /// Concurrent operations (backend calls are slow I/O, so many).
    #[arg(long, env = "PROVISIONER_WORKERS", default_value_t = 100)]
    pub workers: usize,
    /// Client-side API request rate (requests per second; 0 = unlimited).
    #[arg(long, env = "PROVISIONER_KUBE_API_QPS", default_value_t = 50.0)]
    pub kube_api_qps: f64,
    /// Client-side API request burst.
    #[arg(long, env = "PROVISIONER_KUBE_API_BURST", default_value_t = 100)]
    pub kube_api_burst: u32,
    /// Events per second, on a client and a budget of their own apart from
    /// --kube-api-qps (0 = unlimited).
    #[arg(long, env = "PROVISIONER_EVENT_QPS", default_value_t = 10.0)]
    pub event_qps: f64,
    /// Events that may go at once after a quiet period.
    #[arg(long, env = "PROVISIONER_EVENT_BURST", default_value_t = 25)]
    pub event_burst: u32,
    /// Elect a leader among replicas with a Lease.
    #[arg(long, env = "PROVISIONER_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: the pod's, read from its ServiceAccount's
    /// namespace file; `default` outside a pod). The intent journal lives
    /// there too.
    #[arg(long = "lease-namespace", visible_alias = "leader-election-namespace", env = "PROVISIONER_LEASE_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// How long a Lease holds without renewal, in seconds.
    #[arg(long, env = "PROVISIONER_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// How long the leader keeps trying to renew before it stops all work, in seconds.
    #[arg(long, env = "PROVISIONER_LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    pub lease_renew_deadline_seconds: u64,
    /// How often a replica tries to acquire or renew the Lease, in seconds.
    #[arg(long, env = "PROVISIONER_LEASE_RETRY_PERIOD_SECONDS", default_value_t = 2)]
    pub lease_retry_period_seconds: u64,
    /// Retry delay after a first failure, in milliseconds (it doubles per failure).
    #[arg(long, env = "PROVISIONER_BACKOFF_INITIAL_MS", default_value_t = 1000)]
    pub backoff_initial_ms: u64,
    /// The longest retry delay, in seconds.
    #[arg(long, env = "PROVISIONER_BACKOFF_MAX_SECONDS", default_value_t = 300)]
    pub backoff_max_seconds: u64,
    /// Address of /metrics, /healthz and /readyz (empty: off).
    #[arg(long, env = "PROVISIONER_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: String,
    /// Deadline for one provision call, in seconds (0 = none).
    #[arg(long, env = "PROVISIONER_PROVISION_TIMEOUT_SECONDS", default_value_t = 0)]
    pub provision_timeout_seconds: u64,
    /// Deadline for one delete call, in seconds (0 = none).
    #[arg(long, env = "PROVISIONER_DELETE_TIMEOUT_SECONDS", default_value_t = 0)]
    pub delete_timeout_seconds: u64,
    /// Full re-examination period in seconds (0 = only on changes).
    #[arg(long, env = "PROVISIONER_RESYNC_SECONDS", default_value_t = 600)]
    pub resync_seconds: u64,
    /// Give up on a claim after this many failed attempts (0 = never).
    #[arg(long, env = "PROVISIONER_GIVE_UP_AFTER", default_value_t = 0)]
    pub give_up_after: u32,
    /// Put the deletion finalizer on saved volumes.
    #[arg(long, env = "PROVISIONER_VOLUME_FINALIZER", default_value_t = true, action = clap::ArgAction::Set)]
    pub volume_finalizer: bool,
    /// Log format: `text` or `json`.
    #[arg(long, env = "PROVISIONER_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl EngineArgs {
    /// Applies the flags to a builder.
    pub fn apply(&self, mut builder: EngineBuilder) -> EngineBuilder {
        builder = builder.workers(self.workers).finalizer(self.volume_finalizer).event_rate(self.event_rate());
        if self.provision_timeout_seconds > 0 {
            builder = builder.provision_timeout(Duration::from_secs(self.provision_timeout_seconds));
        }
        if self.delete_timeout_seconds > 0 {
            builder = builder.delete_timeout(Duration::from_secs(self.delete_timeout_seconds));
        }
        builder = builder.resync((self.resync_seconds > 0).then(|| Duration::from_secs(self.resync_seconds)));
        if self.give_up_after > 0 {
            builder = builder.give_up_after(self.give_up_after);
        }
        builder = builder.backoff(crate::backoff::Backoff {
            initial: Duration::from_millis(self.backoff_initial_ms),
            max: Duration::from_secs(self.backoff_max_seconds),
        });
        // The intent journal lives beside the Lease, in the pod's namespace.
        builder = builder.journal_in(self.lease_namespace());
        if self.leader_elect {
            builder = builder.leader_election_in(self.lease_namespace()).lease_timings(
                Duration::from_secs(self.lease_duration_seconds),
                Duration::from_secs(self.lease_renew_deadline_seconds),
                Duration::from_secs(self.lease_retry_period_seconds),
            );
        }
        builder
    }

    /// The Lease's namespace: the flag (or `PROVISIONER_LEASE_NAMESPACE`),
    /// else the namespace of the pod's ServiceAccount, else `default`.
    pub fn lease_namespace(&self) -> String {
        const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
        self.leader_election_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok().map(|n| n.trim().to_string()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string())
    }

    /// The events' own rate, `None` when unlimited.
    pub fn event_rate(&self) -> Option<ApiRate> {
        (self.event_qps > 0.0).then_some(ApiRate { qps: self.event_qps, burst: self.event_burst })
    }

    /// The client rate, `None` when unlimited.
    pub fn rate(&self) -> Option<ApiRate> {
        (self.kube_api_qps > 0.0).then_some(ApiRate { qps: self.kube_api_qps, burst: self.kube_api_burst })
    }
}

/// The environment variable of the flag `flag` (`--log-format` or
/// `log-format`): `PROVISIONER_` and the flag in upper case with `-` as `_`,
/// without doubling a leading `provisioner-` (`--provisioner-name` is
/// `PROVISIONER_NAME`).
pub fn variable_for(flag: &str) -> String {
    let flag = flag.trim_start_matches('-');
    let flag = flag.strip_prefix("provisioner-").unwrap_or(flag);
    format!("PROVISIONER_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// An environment variable renamed since 0.1.0. Until the next release
/// [`parse`] reads `old` for the flag whose variable is `new` when `new` is
/// unset, with a deprecation warning naming `new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renamed {
    /// The name 0.1.0 read.
    pub old: &'static str,
    /// The name now read.
    pub new: &'static str,
}

const fn renamed(old: &'static str, new: &'static str) -> Renamed {
    Renamed { old, new }
}

/// The engine's ([`EngineArgs`]') variables renamed since 0.1.0.
pub const ENGINE_RENAMED: &[Renamed] = &[
    renamed("WORKERS", "PROVISIONER_WORKERS"),
    renamed("KUBE_API_QPS", "PROVISIONER_KUBE_API_QPS"),
    renamed("KUBE_API_BURST", "PROVISIONER_KUBE_API_BURST"),
    renamed("LEADER_ELECT", "PROVISIONER_LEADER_ELECT"),
    renamed("POD_NAMESPACE", "PROVISIONER_LEASE_NAMESPACE"),
    renamed("LEASE_DURATION_SECONDS", "PROVISIONER_LEASE_DURATION_SECONDS"),
    renamed("LEASE_RENEW_DEADLINE_SECONDS", "PROVISIONER_LEASE_RENEW_DEADLINE_SECONDS"),
    renamed("LEASE_RETRY_PERIOD_SECONDS", "PROVISIONER_LEASE_RETRY_PERIOD_SECONDS"),
    renamed("BACKOFF_INITIAL_MS", "PROVISIONER_BACKOFF_INITIAL_MS"),
    renamed("BACKOFF_MAX_SECONDS", "PROVISIONER_BACKOFF_MAX_SECONDS"),
    renamed("METRICS_ADDRESS", "PROVISIONER_METRICS_ADDRESS"),
    renamed("PROVISION_TIMEOUT_SECONDS", "PROVISIONER_PROVISION_TIMEOUT_SECONDS"),
    renamed("DELETE_TIMEOUT_SECONDS", "PROVISIONER_DELETE_TIMEOUT_SECONDS"),
    renamed("RESYNC_SECONDS", "PROVISIONER_RESYNC_SECONDS"),
    renamed("GIVE_UP_AFTER", "PROVISIONER_GIVE_UP_AFTER"),
    renamed("VOLUME_FINALIZER", "PROVISIONER_VOLUME_FINALIZER"),
    renamed("LOG_FORMAT", "PROVISIONER_LOG_FORMAT"),
];

/// Parses `T` from the process's arguments and environment like
/// [`clap::Parser::parse`] (on an error: clap's message, exit code 2), also
/// reading the old name of every variable in `renamed` whose new name is
/// unset. Returns the deprecation warnings, for [`log_deprecations`].
pub fn parse<T: clap::Parser>(renamed: &[Renamed]) -> (T, Vec<String>) {
    try_parse_from(std::env::args_os(), renamed).unwrap_or_else(|e| e.exit())
}

/// [`parse`] of `argv` (its first item is the program name), returning
/// clap's error instead of exiting.
///
/// For a set old name: while the new name is unset, the flag whose variable
/// is the new name reads the old one instead (the command line still wins),
/// and a warning says to rename it; with the new name set, the old one is
/// ignored, with a warning too.
pub fn try_parse_from<T, I, S>(argv: I, renamed: &[Renamed]) -> Result<(T, Vec<String>), clap::Error>
where
    T: clap::Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let mut cmd = T::command();
    let mut warnings = Vec::new();
    let mut read_old = Vec::new();
    for r in renamed {
        if std::env::var_os(r.old).is_none() {
            continue;
        }
        if std::env::var_os(r.new).is_some() {
            warnings.push(format!("{} is ignored because {} is set; remove {}, its old name", r.old, r.new, r.old));
            continue;
        }
        let ids: Vec<String> = cmd
            .get_arguments()
            .filter(|a| a.get_env() == Some(OsStr::new(r.new)))
            .map(|a| a.get_id().to_string())
            .collect();
        for id in ids {
            cmd = cmd.mut_arg(&id, |a| a.env(r.old));
            read_old.push((r, id));
        }
    }
    let mut matches = cmd.try_get_matches_from_mut(argv)?;
    for (r, id) in read_old {
        if matches.value_source(&id) == Some(ValueSource::EnvVariable) {
            warnings.push(format!(
                "{} is deprecated and will not be read by the next release: rename it to {}",
                r.old, r.new
            ));
        } else {
            let flag = cmd.get_arguments().find(|a| a.get_id() == id.as_str()).and_then(|a| a.get_long());
            warnings.push(format!(
                "{} is ignored because --{} is given; remove {} (deprecated; its new name is {})",
                r.old,
                flag.unwrap_or(&id),
                r.old,
                r.new
            ));
        }
    }
    let parsed = T::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut cmd))?;
    Ok((parsed, warnings))
}

/// Logs each of `warnings` (from [`parse`]) as a warning.
pub fn log_deprecations(warnings: &[String]) {
    for w in warnings {
        warn!("{w}");
    }
}

/// For tests of flags read from the environment: runs `body` in a child
/// process of the running test binary whose environment is exactly `env`
/// (a test cannot change its own process's environment: `std::env::set_var`
/// needs unsafe code). `test` is the calling test's name as `cargo test`
/// prints it (`cli::tests::flags_are_read_from_the_environment`); the child
/// runs that test alone, and there this function runs `body`.
///
/// # Panics
///
/// In the parent, unless `body` returned in the child (a failed assertion
/// there fails the test here, with the child's output).
pub fn in_child_process(test: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    const CHILD: &str = "PROVISIONER_CLI_TEST_CHILD";
    const DONE: &str = "in_child_process: the body returned";
    if std::env::var_os(CHILD).is_some_and(|t| t == test) {
        body();
        println!("{DONE}");
        return;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("the test binary's path: {e}"));
    let out = std::process::Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env(CHILD, test)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the test binary again: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "{test} with the environment {env:?} failed in its child process ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    /// A flag has a bad value.
    #[error("bad flag: {0}")]
    Flag(String),
    /// The engine stopped with an error.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// `release` could not finish (run it again: it is idempotent).
    #[error("release did not finish (it is safe to run again): {0}")]
    Release(#[source] kube::Error),
}

/// Uninstalling: with every replica stopped, removes the engine's intent
/// records and deletion finalizers for `names` from the cluster and prints
/// which backend volumes that leaves to the operator
/// ([`crate::release::release`]).
pub async fn run_release(names: &[String], dry_run: bool) -> Result<(), RunError> {
    let (primary, more) = names.split_first().ok_or_else(|| RunError::Flag("no provisioner name".into()))?;
    let config = kube::Config::infer().await.map_err(|e| RunError::Config(e.to_string()))?;
    let (client, _counts) = build_client(config, None).map_err(|e| RunError::Config(e.to_string()))?;
    let names = crate::decision::Names::new(primary.clone(), more.iter().cloned());
    let report = crate::release::release(client, &names, dry_run).await.map_err(RunError::Release)?;
    print!("{report}");
    Ok(())
}

/// Installs a `tracing` subscriber writing `text` or `json` to stderr,
/// filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}

/// Runs an engine for `names` (the first is the primary: Lease and event
/// reporter) backed by `provisioner`, until SIGTERM or SIGINT.
pub async fn run(args: EngineArgs, names: &[String], provisioner: Arc<dyn Provisioner>) -> Result<(), RunError> {
    run_with(args, names, provisioner, |b, _| b).await
}

/// [`run`], with a last chance to adjust the engine builder and to register
/// the provisioner's own metrics in the registry `/metrics` serves.
pub async fn run_with(
    args: EngineArgs,
    names: &[String],
    provisioner: Arc<dyn Provisioner>,
    customize: impl FnOnce(EngineBuilder, &mut Registry) -> EngineBuilder,
) -> Result<(), RunError> {
    init_logging(&args.log_format);
    let (primary, more) = names.split_first().ok_or_else(|| RunError::Flag("no provisioner name".into()))?;
    let config = kube::Config::infer().await.map_err(|e| RunError::Config(e.to_string()))?;
    let (client, _counts) = build_client(config.clone(), args.rate()).map_err(|e| RunError::Config(e.to_string()))?;
    // Events go through a client of their own, paced by the engine's event
    // lane, so that they take nothing from the main budget.
    let (event_client, _) = build_client(config, None).map_err(|e| RunError::Config(e.to_string()))?;
    let mut registry = Registry::default();
    let builder = Engine::builder(client, primary.clone(), provisioner)
        .additional_names(more.iter().cloned())
        .event_client(event_client)
        .metrics(&mut registry);
    let engine = customize(args.apply(builder), &mut registry).build()?;
    let shutdown = shutdown_on_signals();
    if !args.metrics_address.is_empty() {
        let addr: SocketAddr = args
            .metrics_address
            .parse()
            .map_err(|e| RunError::Flag(format!("--metrics-address {}: {e}", args.metrics_address)))?;
        let status = engine.status();
        let stop = shutdown.clone();
        let registry = Arc::new(registry);
        tokio::spawn(async move {
            if let Err(e) = serve(addr, registry, status, stop).await {
                tracing::error!(%addr, error = %e, "the metrics endpoint could not start");
            }
        });
    }
    info!(names = ?names, workers = args.workers, leader_elect = args.leader_elect, "starting");
    engine.run(shutdown).await?;
    info!("stopped");
    Ok(())
}

impl RunError {
    /// The process exit code: 2 for a configuration the operator must fix
    /// (a bad flag, no usable kubeconfig, an invalid engine setting), 1 for
    /// anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Flag(_) | RunError::Config(_) | RunError::Engine(EngineError::Config(_)) => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    #[test]
    fn the_lease_namespace_is_the_flag_else_the_service_accounts_else_default() {
        let flagged = Cli::parse_from(["p", "--lease-namespace", "storage"]);
        assert_eq!(flagged.engine.lease_namespace(), "storage");
        let old_flag = Cli::parse_from(["p", "--leader-election-namespace", "storage"]);
        assert_eq!(old_flag.engine.lease_namespace(), "storage", "the 0.1.0 flag still works");
        // No pod here: no ServiceAccount namespace file either.
        let bare = Cli::parse_from(["p"]);
        if !std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/namespace").exists() {
            assert_eq!(bare.engine.lease_namespace(), "default");
        }
    }

    #[test]
    fn lease_and_backoff_flags_have_the_documented_defaults() {
        let a = Cli::parse_from(["p"]).engine;
        assert_eq!(
            (a.lease_duration_seconds, a.lease_renew_deadline_seconds, a.lease_retry_period_seconds),
            (15, 10, 2)
        );
        assert_eq!((a.backoff_initial_ms, a.backoff_max_seconds), (1000, 300));
        let b = Cli::parse_from(["p", "--backoff-initial-ms", "250", "--lease-duration-seconds", "30"]).engine;
        assert_eq!((b.backoff_initial_ms, b.lease_duration_seconds), (250, 30));
    }

    #[test]
    fn configuration_errors_exit_with_2() {
        assert_eq!(RunError::Flag("x".into()).exit_code(), 2);
        assert_eq!(RunError::Engine(EngineError::Config("x".into())).exit_code(), 2);
        let stopped = EngineError::CacheNotReady { what: "claims", reason: "x".into() };
        assert_eq!(RunError::Engine(stopped).exit_code(), 1);
    }

    #[test]
    fn a_variable_is_provisioner_and_the_flag_in_upper_case() {
        assert_eq!(variable_for("--workers"), "PROVISIONER_WORKERS");
        assert_eq!(variable_for("log-format"), "PROVISIONER_LOG_FORMAT");
        assert_eq!(variable_for("--provisioner-name"), "PROVISIONER_NAME");
        assert_eq!(variable_for("--lease-namespace"), "PROVISIONER_LEASE_NAMESPACE");
    }

    #[test]
    fn every_engine_flag_is_read_from_provisioner_and_its_name() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let mut seen = 0;
        for arg in cmd.get_arguments().filter(|a| a.get_long().is_some_and(|l| l != "help")) {
            let long = arg.get_long().unwrap_or_default();
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(variable_for(long).as_str()), "--{long}");
            seen += 1;
        }
        assert_eq!(seen, 19, "17 flags of 0.1.0, and --event-qps and --event-burst");
    }

    #[test]
    fn every_renamed_engine_variable_is_a_flags_variable_and_no_old_name_is_read_directly() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let envs: Vec<_> = cmd.get_arguments().filter_map(|a| a.get_env()?.to_str()).collect();
        for r in ENGINE_RENAMED {
            assert!(envs.contains(&r.new), "{} is no flag's variable", r.new);
            assert!(!envs.contains(&r.old), "{} is still read directly", r.old);
        }
        let olds: std::collections::BTreeSet<_> = ENGINE_RENAMED.iter().map(|r| r.old).collect();
        assert_eq!(olds.len(), ENGINE_RENAMED.len(), "one entry per old name");
        assert_eq!(ENGINE_RENAMED.len(), 17, "every engine flag had an unprefixed variable in 0.1.0");
    }

    #[test]
    fn engine_flags_are_read_from_their_provisioner_variables() {
        let env = [
            ("PROVISIONER_WORKERS", "7"),
            ("PROVISIONER_KUBE_API_QPS", "0"),
            ("PROVISIONER_LEADER_ELECT", "true"),
            ("PROVISIONER_LEASE_NAMESPACE", "storage"),
            ("PROVISIONER_BACKOFF_MAX_SECONDS", "60"),
            ("PROVISIONER_METRICS_ADDRESS", ""),
            ("PROVISIONER_GIVE_UP_AFTER", "3"),
            ("PROVISIONER_VOLUME_FINALIZER", "false"),
            ("PROVISIONER_LOG_FORMAT", "json"),
        ];
        in_child_process("cli::tests::engine_flags_are_read_from_their_provisioner_variables", &env, || {
            let (cli, warnings) = try_parse_from::<Cli, _, _>(["p"], ENGINE_RENAMED).expect("parses");
            let a = cli.engine;
            assert_eq!((a.workers, a.rate(), a.leader_elect), (7, None, true));
            assert_eq!((a.lease_namespace(), a.backoff_max_seconds, a.give_up_after), ("storage".into(), 60, 3));
            assert_eq!((a.metrics_address.as_str(), a.volume_finalizer, a.log_format.as_str()), ("", false, "json"));
            assert!(warnings.is_empty(), "{warnings:?}");
        });
    }

    #[test]
    fn an_old_variable_is_still_read_with_a_warning_naming_the_new_one() {
        let env = [("WORKERS", "7"), ("POD_NAMESPACE", "storage"), ("LEADER_ELECT", "true")];
        in_child_process("cli::tests::an_old_variable_is_still_read_with_a_warning_naming_the_new_one", &env, || {
            let (cli, warnings) = try_parse_from::<Cli, _, _>(["p"], ENGINE_RENAMED).expect("parses");
            assert_eq!((cli.engine.workers, cli.engine.leader_elect), (7, true));
            assert_eq!(cli.engine.lease_namespace(), "storage");
            assert_eq!(warnings.len(), 3, "{warnings:?}");
            for (old, new) in [("WORKERS", "PROVISIONER_WORKERS"), ("POD_NAMESPACE", "PROVISIONER_LEASE_NAMESPACE")] {
                let w = warnings.iter().find(|w| w.starts_with(old)).expect("a warning");
                assert!(w.contains("deprecated") && w.contains(&format!("rename it to {new}")), "{w}");
            }
        });
    }

    #[test]
    fn a_new_variable_and_the_command_line_win_over_an_old_variable() {
        let env = [("WORKERS", "7"), ("PROVISIONER_WORKERS", "9"), ("LOG_FORMAT", "json")];
        in_child_process("cli::tests::a_new_variable_and_the_command_line_win_over_an_old_variable", &env, || {
            let (cli, warnings) =
                try_parse_from::<Cli, _, _>(["p", "--log-format", "text"], ENGINE_RENAMED).expect("parses");
            assert_eq!((cli.engine.workers, cli.engine.log_format.as_str()), (9, "text"));
            assert_eq!(warnings.len(), 2, "{warnings:?}");
            assert!(warnings.iter().any(|w| w.starts_with("WORKERS is ignored because PROVISIONER_WORKERS is set")));
            assert!(warnings.iter().any(|w| w.starts_with("LOG_FORMAT is ignored because --log-format is given")));
        });
    }

    #[test]
    fn a_bad_value_under_an_old_name_is_a_usage_error() {
        in_child_process("cli::tests::a_bad_value_under_an_old_name_is_a_usage_error", &[("WORKERS", "many")], || {
            let err = try_parse_from::<Cli, _, _>(["p"], ENGINE_RENAMED).err().expect("an error");
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains("many"), "{err}");
        });
    }
}
