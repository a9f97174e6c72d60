//! What every provisioner binary shares: the engine's flags (each also read
//! from an environment variable) and a runner that sets up logging, the
//! rate-limited client, leader election, the metrics and health endpoint,
//! and signal handling, so that a binary's `main` stays a few lines.
//!
//! ```no_run
//! use clap::Parser;
//! use provisioner_core::cli::{EngineArgs, run};
//! # struct MyProvisioner;
//! # #[async_trait::async_trait]
//! # impl provisioner_core::Provisioner for MyProvisioner {
//! #   async fn provision(&self, _: &provisioner_core::ProvisionRequest) -> Result<provisioner_core::ProvisionedVolume, provisioner_core::ProvisionError> { unimplemented!() }
//! #   async fn delete(&self, _: &k8s_openapi::api::core::v1::PersistentVolume) -> Result<(), provisioner_core::DeleteError> { unimplemented!() }
//! # }
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     engine: EngineArgs,
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let args = Args::parse();
//!     run(args.engine, &["example.com/mine".to_string()], std::sync::Arc::new(MyProvisioner)).await?;
//!     Ok(())
//! }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tracing::info;

use crate::client::{ApiRate, build_client};
use crate::engine::{Engine, EngineBuilder, EngineError};
use crate::provisioner::Provisioner;
use crate::serve::{serve, shutdown_on_signals};

/// The engine's flags.
#[derive(Clone, Debug, clap::Args)]
pub struct EngineArgs {
    /// Concurrent operations (backend calls are slow I/O, so many).
    #[arg(long, env = "WORKERS", default_value_t = 100)]
    pub workers: usize,
    /// Client-side API request rate (requests per second; 0 = unlimited).
    #[arg(long, env = "KUBE_API_QPS", default_value_t = 50.0)]
    pub kube_api_qps: f64,
    /// Client-side API request burst.
    #[arg(long, env = "KUBE_API_BURST", default_value_t = 100)]
    pub kube_api_burst: u32,
    /// Elect a leader among replicas with a Lease.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: the pod's, from POD_NAMESPACE or the
    /// ServiceAccount's namespace file; `default` outside a pod).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// How long a Lease holds without renewal, in seconds.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// How long the leader keeps trying to renew before it stops all work, in seconds.
    #[arg(long, env = "LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    pub lease_renew_deadline_seconds: u64,
    /// How often a replica tries to acquire or renew the Lease, in seconds.
    #[arg(long, env = "LEASE_RETRY_PERIOD_SECONDS", default_value_t = 2)]
    pub lease_retry_period_seconds: u64,
    /// Retry delay after a first failure, in milliseconds (it doubles per failure).
    #[arg(long, env = "BACKOFF_INITIAL_MS", default_value_t = 1000)]
    pub backoff_initial_ms: u64,
    /// The longest retry delay, in seconds.
    #[arg(long, env = "BACKOFF_MAX_SECONDS", default_value_t = 300)]
    pub backoff_max_seconds: u64,
    /// Address of /metrics, /healthz and /readyz (empty: off).
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: String,
    /// Deadline for one provision call, in seconds (0 = none).
    #[arg(long, env = "PROVISION_TIMEOUT_SECONDS", default_value_t = 0)]
    pub provision_timeout_seconds: u64,
    /// Deadline for one delete call, in seconds (0 = none).
    #[arg(long, env = "DELETE_TIMEOUT_SECONDS", default_value_t = 0)]
    pub delete_timeout_seconds: u64,
    /// Full re-examination period in seconds (0 = only on changes).
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 600)]
    pub resync_seconds: u64,
    /// Give up on a claim after this many failed attempts (0 = never).
    #[arg(long, env = "GIVE_UP_AFTER", default_value_t = 0)]
    pub give_up_after: u32,
    /// Put the deletion finalizer on saved volumes.
    #[arg(long, env = "VOLUME_FINALIZER", default_value_t = true, action = clap::ArgAction::Set)]
    pub volume_finalizer: bool,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl EngineArgs {
    /// Applies the flags to a builder.
    pub fn apply(&self, mut builder: EngineBuilder) -> EngineBuilder {
        builder = builder.workers(self.workers).finalizer(self.volume_finalizer);
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
        if self.leader_elect {
            builder = builder.leader_election_in(self.lease_namespace()).lease_timings(
                Duration::from_secs(self.lease_duration_seconds),
                Duration::from_secs(self.lease_renew_deadline_seconds),
                Duration::from_secs(self.lease_retry_period_seconds),
            );
        }
        builder
    }

    /// The Lease's namespace: the flag (or `POD_NAMESPACE`), else the
    /// namespace of the pod's ServiceAccount, else `default`.
    pub fn lease_namespace(&self) -> String {
        const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
        self.leader_election_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok().map(|n| n.trim().to_string()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string())
    }

    /// The client rate, `None` when unlimited.
    pub fn rate(&self) -> Option<ApiRate> {
        (self.kube_api_qps > 0.0).then_some(ApiRate { qps: self.kube_api_qps, burst: self.kube_api_burst })
    }
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
    let (client, _counts) = build_client(config, args.rate()).map_err(|e| RunError::Config(e.to_string()))?;
    let mut registry = Registry::default();
    let builder = Engine::builder(client, primary.clone(), provisioner)
        .additional_names(more.iter().cloned())
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
        let flagged = Cli::parse_from(["p", "--leader-election-namespace", "storage"]);
        assert_eq!(flagged.engine.lease_namespace(), "storage");
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
}
