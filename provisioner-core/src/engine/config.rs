//! How an engine is built: its settings with their production defaults, the
//! builder that checks them, and what an observer can know of a running engine.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;

use super::Engine;
use crate::backoff::Backoff;
use crate::client::ApiRate;
use crate::decision::Names;
use crate::leader::{LeaderElectionConfig, lease_name_for};
use crate::metrics::Metrics;
#[cfg(doc)]
use crate::provisioner::ProvisionError;
use crate::provisioner::Provisioner;
use crate::volume::VolumeOptions;

/// Why the engine stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A watch could not be started or its cache never filled.
    #[error("the {what} cache never became ready: {reason}")]
    CacheNotReady {
        /// Which cache.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The configuration is not usable.
    #[error("invalid engine configuration: {0}")]
    Config(String),
}

/// Settings of an [`Engine`], all with production defaults.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Concurrent operations. Backend calls are slow I/O, not CPU, so the
    /// default is 100.
    pub workers: usize,
    /// Retry delays after failures and "in progress" answers.
    pub backoff: Backoff,
    /// Stop retrying a claim after this many failed attempts (default: never).
    /// When reached, a `ProvisioningFailed` event says so, and the claim is
    /// tried again only when it or its class changes.
    pub give_up_after: Option<u32>,
    /// The retry delay for [`ProvisionError::Infeasible`] (default 5 min);
    /// a change to the class retries at once.
    pub infeasible_retry: Duration,
    /// Options for saved volumes (the finalizer).
    pub volume: VolumeOptions,
    /// Deadline for one `provision()` call; passing it counts as "in progress".
    pub provision_timeout: Option<Duration>,
    /// Deadline for one `delete()` call; passing it counts as a failure.
    pub delete_timeout: Option<Duration>,
    /// Every this often, every known volume is looked at again (default 10 min).
    pub resync: Option<Duration>,
    /// How long a shutdown waits for running operations before dropping them.
    pub shutdown_grace: Duration,
    /// The name this replica reports events as.
    pub identity: String,
    /// Objects per page when the claim and volume caches are listed
    /// (default 500, as client-go): a smaller page lowers the memory peak
    /// of a re-list in a large cluster at the cost of more requests.
    pub list_page_size: u32,
    /// The events' own rate (default 10 per second, bursts of 25): events
    /// are published from a queue of their own, Warnings first, so that
    /// they never delay provisioning. `None`: as fast as the API server answers.
    pub event_rate: Option<ApiRate>,
    /// Events that may wait to be published (default 1024). When full, a
    /// Normal event is dropped, and a Warning takes the place of the oldest
    /// waiting Normal event; drops are counted in `provisioner_events_dropped_total`.
    pub event_queue: usize,
    /// Where the intent journal lives ([`crate::journal`]).
    pub journal: super::JournalConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 100,
            backoff: Backoff::default(),
            give_up_after: None,
            infeasible_retry: Duration::from_secs(300),
            volume: VolumeOptions::default(),
            provision_timeout: None,
            delete_timeout: None,
            resync: Some(Duration::from_secs(600)),
            shutdown_grace: Duration::from_secs(10),
            identity: default_identity(),
            list_page_size: 500,
            event_rate: Some(ApiRate { qps: 10.0, burst: 25 }),
            event_queue: 1024,
            journal: super::JournalConfig::default(),
        }
    }
}

fn default_identity() -> String {
    let host =
        std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "provisioner".to_string());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// What an observer can know about a running engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStatus {
    /// All three caches have listed once.
    pub synced: bool,
    /// This replica may act (it leads, or runs without election).
    pub leading: bool,
}

impl EngineStatus {
    /// Ready to serve: synced and leading. A follower is healthy but not ready.
    pub fn ready(&self) -> bool {
        self.synced && self.leading
    }
}

/// Builds an [`Engine`].
///
/// ```no_run
/// # async fn demo(client: kube::Client, p: std::sync::Arc<dyn provisioner_core::Provisioner>) {
/// use provisioner_core::Engine;
/// let mut registry = prometheus_client::registry::Registry::default();
/// let engine = Engine::builder(client, "example.com/dir", p)
///     .workers(50)
///     .metrics(&mut registry)
///     .build()
///     .expect("valid configuration");
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// engine.run(shutdown).await.expect("engine");
/// # }
/// ```
pub struct EngineBuilder {
    pub(super) client: Client,
    pub(super) provisioner: Arc<dyn Provisioner>,
    pub(super) primary: String,
    pub(super) more_names: Vec<String>,
    pub(super) config: EngineConfig,
    pub(super) metrics: Option<Metrics>,
    pub(super) leadership: Option<watch::Receiver<bool>>,
    pub(super) election: Option<LeaderElectionConfig>,
    pub(super) event_client: Option<Client>,
}

impl EngineBuilder {
    /// Publish events with this client (for example one built without the
    /// main client's rate limit, as the bundled binaries do), so that events
    /// take nothing from the main client's budget. Default: the main client;
    /// events are then paced by [`EngineConfig::event_rate`] within its budget.
    pub fn event_client(mut self, client: Client) -> Self {
        self.event_client = Some(client);
        self
    }
    /// The events' own rate; see [`EngineConfig::event_rate`].
    pub fn event_rate(mut self, rate: Option<ApiRate>) -> Self {
        self.config.event_rate = rate;
        self
    }
    /// Keep the intent journal in `namespace` (default: the client's
    /// default namespace, which in a cluster is the pod's own).
    pub fn journal_in(mut self, namespace: impl Into<String>) -> Self {
        self.config.journal.namespace = Some(namespace.into());
        self
    }
    /// This engine is one of several instances serving the same names
    /// without a leader (one per node, say): it keeps a journal of its own,
    /// named after `instance`. Instances that shared one would finish each
    /// other's volumes.
    pub fn journal_instance(mut self, instance: impl Into<String>) -> Self {
        self.config.journal.instance = Some(instance.into());
        self
    }
    /// How long finished journal entries may wait for a commit that writes
    /// new ones before they get one of their own (default 10 s).
    pub fn journal_linger(mut self, linger: Duration) -> Self {
        self.config.journal.linger = Some(linger);
        self
    }
    /// The most the intent journal may hold, in bytes (default and at most
    /// [`crate::journal::MAX_BYTES`]); past it new provisions wait.
    pub fn journal_max_bytes(mut self, bytes: usize) -> Self {
        self.config.journal.max_bytes = Some(bytes);
        self
    }
    /// Also act for claims of these provisioner names.
    pub fn additional_names<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.more_names.extend(names.into_iter().map(Into::into));
        self
    }
    /// Number of concurrent operations.
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }
    /// Retry backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }
    /// Give up on a claim after `attempts` failed attempts.
    pub fn give_up_after(mut self, attempts: u32) -> Self {
        self.config.give_up_after = Some(attempts);
        self
    }
    /// Retry delay for infeasible claims.
    pub fn infeasible_retry(mut self, delay: Duration) -> Self {
        self.config.infeasible_retry = delay;
        self
    }
    /// Put the deletion finalizer on saved volumes (default on).
    pub fn finalizer(mut self, on: bool) -> Self {
        self.config.volume.finalizer = on;
        self
    }
    /// Deadline for each `provision()` call.
    pub fn provision_timeout(mut self, timeout: Duration) -> Self {
        self.config.provision_timeout = Some(timeout);
        self
    }
    /// Deadline for each `delete()` call.
    pub fn delete_timeout(mut self, timeout: Duration) -> Self {
        self.config.delete_timeout = Some(timeout);
        self
    }
    /// Periodic full re-examination (`None`: only on changes).
    pub fn resync(mut self, every: Option<Duration>) -> Self {
        self.config.resync = every;
        self
    }
    /// Objects per page when listing claims and volumes (at least 1).
    pub fn list_page_size(mut self, objects: u32) -> Self {
        self.config.list_page_size = objects.max(1);
        self
    }
    /// How long shutdown waits for running operations.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }
    /// The identity in events (default: pod or host name plus a random suffix).
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.config.identity = identity.into();
        self
    }
    /// Replace the whole configuration.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }
    /// Register the engine's metrics in `registry`.
    pub fn metrics(mut self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.metrics = Some(Metrics::register(registry));
        self
    }
    /// Act only while `leadership` holds `true` (from a
    /// [`crate::leader::LeaderElector`] or anything else). Without it the
    /// engine always acts.
    pub fn leadership(mut self, leadership: watch::Receiver<bool>) -> Self {
        self.leadership = Some(leadership);
        self
    }
    /// Elect a leader among replicas with a Lease named after the provisioner
    /// name in `namespace` (usually the pod's; `cli` reads it from the pod's
    /// ServiceAccount), with the default timings (lease 15 s, renew deadline
    /// 10 s, retry 2 s). On shutdown the leader releases the Lease, so
    /// failover is immediate.
    pub fn leader_election_in(self, namespace: impl Into<String>) -> Self {
        let config = LeaderElectionConfig::new(lease_name_for(&self.primary), namespace, self.config.identity.clone());
        self.leader_election(config)
    }
    /// The Lease timings of the election set up by
    /// [`leader_election_in`](EngineBuilder::leader_election_in) (call it
    /// after that; without an election it does nothing).
    pub fn lease_timings(mut self, lease_duration: Duration, renew_deadline: Duration, retry_period: Duration) -> Self {
        if let Some(e) = self.election.as_mut() {
            e.lease_duration = lease_duration;
            e.renew_deadline = renew_deadline;
            e.retry_period = retry_period;
        }
        self
    }
    /// Elect a leader with fully specified settings.
    pub fn leader_election(mut self, config: LeaderElectionConfig) -> Self {
        self.election = Some(config);
        self
    }
    /// Checks the configuration and builds the engine.
    pub fn build(self) -> Result<Engine, EngineError> {
        if self.config.workers == 0 {
            return Err(EngineError::Config("workers must be at least 1".into()));
        }
        if self.primary.is_empty() {
            return Err(EngineError::Config("the provisioner name must not be empty".into()));
        }
        if self.config.backoff.initial.is_zero() || self.config.backoff.max < self.config.backoff.initial {
            return Err(EngineError::Config("backoff needs 0 < initial <= max".into()));
        }
        if self.election.is_some() && self.leadership.is_some() {
            return Err(EngineError::Config(
                "give either a leadership channel or leader election settings, not both".into(),
            ));
        }
        if let Some(e) = &self.election {
            e.validate().map_err(|e| EngineError::Config(e.to_string()))?;
        }
        if self.config.event_queue == 0 {
            return Err(EngineError::Config("the event queue must hold at least 1 event".into()));
        }
        let (status_tx, _) = watch::channel(EngineStatus::default());
        Ok(Engine {
            event_client: self.event_client,
            client: self.client,
            provisioner: self.provisioner,
            names: Names::new(self.primary, self.more_names),
            config: self.config,
            metrics: self.metrics.unwrap_or_else(Metrics::unregistered),
            leadership: self.leadership,
            election: self.election,
            status: status_tx,
        })
    }
}
