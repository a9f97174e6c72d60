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
    /// Namespace of the Lease (default: the pod's, from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
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
        if self.leader_elect {
            builder = builder.leader_election_in(self.leader_election_namespace.clone());
        }
        builder
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
