//! The engine: watches claims, volumes and classes, and drives a
//! [`Provisioner`] through the decisions of [`crate::decision`].
//!
//! # Shape
//! Three watches keep caches of claims, volumes and classes; claims and
//! volumes are cached as compressed JSON in a store of our own and decoded
//! when looked at (see [`crate::cache`] for why and what it saves), and only those
//! the engine has business with ([`decision::claim_is_relevant`],
//! [`decision::volume_is_relevant`]): the claims and volumes of other
//! provisioners in the cluster cost nothing once their events have passed.
//! After each change of leader both caches are listed afresh. Every change
//! is mapped to a *key*, the PersistentVolume name, and queued in a
//! [`WorkQueue`] that hands a key to one worker at a time, so the provision
//! path and the delete path of one volume can never run at once. A worker
//! reads the caches, asks [`decide`] what to do and does it. Workers run
//! only while this replica leads.
//!
//! # Crash safety
//! The danger is the window between "backend volume created" and
//! "PersistentVolume saved": a crash there, or a claim deleted while the
//! engine is down, would leak the backend volume. The engine closes it with
//! an *intent record* on the claim, written before the backend is touched:
//!
//! 1. One patch adds the finalizer [`keys::INTENT_FINALIZER`] and the
//!    annotation [`keys::INTENT_VOLUME`] (the PV name) to the claim. It
//!    carries the claim's resourceVersion, so it also confirms that the
//!    cached claim is current (still unbound, not deleted) before the
//!    dangerous call.
//! 2. `provision()` runs, keyed by the PV name, so a repeat returns the same
//!    backend volume.
//! 3. The PV is created with `claimRef.uid`; `AlreadyExists` for the same
//!    claim uid is success.
//!
//! Why this is enough: at every instant, any backend volume that may exist is
//! recorded either by a claim carrying the intent finalizer or by a PV.
//! The finalizer keeps the claim (and with it the class name, the request and
//! the PV name) in the API server even if a user deletes it, so after a
//! crash at any point the engine finds the claim, calls `provision()` again
//! (idempotent: same volume, no duplicate), saves the PV, and only then
//! removes the finalizer. A claim deleted meanwhile gets the PV anyway; the
//! binder marks it `Released` once the claim is gone and the normal delete
//! path removes the backend. If `provision()` answers that nothing was
//! created (`Final`, `Reschedule`, `Infeasible`) for a claim that is going
//! away, the finalizer is removed at once. Where several instances serve one
//! provisioner name (one per node), only the instance whose
//! `should_provision` takes the claim records, finishes or removes the
//! intent; `Ignored` never touches the claim.
//!
//! The intent finalizer is removed lazily, when the claim is deleted and its
//! PV exists, which keeps the normal path at three writes per volume: the
//! claim patch, the PV create, and the `ProvisioningSucceeded` event.
//!
//! Deletion runs backend delete, then PV delete (with a uid precondition),
//! then removal of [`keys::VOLUME_FINALIZER`]; a crash in between repeats the
//! backend delete, which provisioners must treat "not found" as success for.
//!
//! After each of its own writes the engine remembers the state the write
//! produced (the object's new resourceVersion, or its deletion) and does not
//! act on that volume until the watch has delivered it (`own_writes.rs`).
//! Every state the cache shows before then is older than the write, whoever
//! else wrote in between (the PV protection controller does, during every
//! delete), so a lagging watch cannot cause a second provision or delete.
//! The engine also remembers which volumes' backends it has deleted, so a
//! retry after a failed or conflicting write to the PV object does not call
//! the backend again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use crate::backoff::Backoff;
use crate::cache::{self, Cached, JsonStore, JsonWriter};
use crate::decision::{self, Decision, Names, ProvisionPlan, Snapshot, decide};
use crate::events::{EventRecorder, EventType};
use crate::keys;
use crate::leader::{LeaderElectionConfig, LeaderElector, lease_name_for};
use crate::metrics::Metrics;
use crate::own_writes::{Expect, OwnWrites, Side};
use crate::provisioner::{DeleteError, ProvisionError, ProvisionRequest, Provisioner};
use crate::queue::WorkQueue;
use crate::volume::{VolumeOptions, build_volume};

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
    client: Client,
    provisioner: Arc<dyn Provisioner>,
    primary: String,
    more_names: Vec<String>,
    config: EngineConfig,
    metrics: Option<Metrics>,
    leadership: Option<watch::Receiver<bool>>,
    election: Option<LeaderElectionConfig>,
}

impl EngineBuilder {
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
    /// name in `namespace` (usually the pod's, `POD_NAMESPACE`), with the
    /// default timings (lease 15 s, renew deadline 10 s, retry 2 s). On
    /// shutdown the leader releases the Lease, so failover is immediate.
    pub fn leader_election_in(self, namespace: impl Into<String>) -> Self {
        let config = LeaderElectionConfig::new(lease_name_for(&self.primary), namespace, self.config.identity.clone());
        self.leader_election(config)
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
        let (status_tx, _) = watch::channel(EngineStatus::default());
        Ok(Engine {
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

/// The provisioning engine. Build it with [`Engine::builder`], run it with
/// [`Engine::run`].
pub struct Engine {
    client: Client,
    provisioner: Arc<dyn Provisioner>,
    names: Names,
    config: EngineConfig,
    metrics: Metrics,
    leadership: Option<watch::Receiver<bool>>,
    election: Option<LeaderElectionConfig>,
    status: watch::Sender<EngineStatus>,
}

impl Engine {
    /// Starts building an engine for `provisioner_name` backed by `provisioner`.
    pub fn builder(
        client: Client,
        provisioner_name: impl Into<String>,
        provisioner: Arc<dyn Provisioner>,
    ) -> EngineBuilder {
        EngineBuilder {
            client,
            provisioner,
            primary: provisioner_name.into(),
            more_names: Vec::new(),
            config: EngineConfig::default(),
            metrics: None,
            leadership: None,
            election: None,
        }
    }

    /// The engine's status, for health and readiness endpoints.
    pub fn status(&self) -> watch::Receiver<EngineStatus> {
        self.status.subscribe()
    }

    /// The engine's metrics (shared with the registry they were registered in).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Runs until `shutdown` is cancelled. Then it stops taking work, lets
    /// running operations finish for the grace period, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), EngineError> {
        let Engine { client, provisioner, names, config, metrics, leadership, election, status } = self;
        // The elector outlives the workers: the Lease is released only after
        // all work has stopped.
        let elector_stop = CancellationToken::new();
        let (leadership, elector) = match election {
            Some(cfg) => {
                let elector =
                    LeaderElector::new(client.clone(), cfg).map_err(|e| EngineError::Config(e.to_string()))?;
                let (rx, handle) = elector.spawn(elector_stop.clone());
                (Some(rx), Some(handle))
            }
            None => (leadership, None),
        };
        let queue = WorkQueue::new();
        let (claims, claim_writer) = cache::store::<PersistentVolumeClaim>();
        let (volumes, volume_writer) = cache::store::<PersistentVolume>();
        let (classes, class_writer) = reflector::store::<StorageClass>();
        let recorder = EventRecorder::new(client.clone(), names.primary(), config.identity.clone());
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            provisioner,
            names,
            config,
            metrics,
            queue: queue.clone(),
            claims,
            volumes,
            classes,
            recorder,
            state: Mutex::new(KeyState::default()),
        });

        let watches = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let (claims_relist, claims_relist_rx) = mpsc::unbounded_channel();
        let (volumes_relist, volumes_relist_rx) = mpsc::unbounded_channel();
        tasks.spawn(watch_claims(ctx.clone(), claim_writer, claims_relist_rx, watches.clone()));
        tasks.spawn(watch_volumes(ctx.clone(), volume_writer, volumes_relist_rx, watches.clone()));
        tasks.spawn(watch_classes(ctx.clone(), class_writer, watches.clone()));

        let ready = async {
            ctx.claims.wait_until_ready().await.map_err(|e| ("claims", e.to_string()))?;
            ctx.volumes.wait_until_ready().await.map_err(|e| ("volumes", e.to_string()))?;
            ctx.classes.wait_until_ready().await.map_err(|e| ("classes", e.to_string()))?;
            Ok::<_, (&'static str, String)>(())
        };
        tokio::select! {
            r = ready => if let Err((what, reason)) = r {
                watches.cancel();
                elector_stop.cancel();
                return Err(EngineError::CacheNotReady { what, reason });
            },
            _ = shutdown.cancelled() => {
                watches.cancel();
                elector_stop.cancel();
                return Ok(());
            }
        }
        info!(names = ?ctx.names.all(), claims = ctx.claims.len(), volumes = ctx.volumes.len(), "caches synced");
        status.send_modify(|s| s.synced = true);
        // Everything already in the caches was queued by the initial lists.

        if let Some(every) = ctx.config.resync {
            tasks.spawn(resync(ctx.clone(), every, watches.clone()));
        }
        tasks.spawn(report_queue(ctx.clone(), watches.clone()));

        // With a leadership channel, the previous leader may have written
        // moments ago and this replica's watches may not have delivered it
        // yet: each term starts from fresh lists.
        let fresh_lists_per_term = leadership.is_some();
        let mut leadership = leadership.unwrap_or_else(|| watch::channel(true).1);
        let mut terms = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait_for(&mut leadership, true) => {}
            }
            if fresh_lists_per_term {
                let started = Instant::now();
                let fresh = async {
                    let (claims_done, claims_ack) = oneshot::channel();
                    let (volumes_done, volumes_ack) = oneshot::channel();
                    let sent = claims_relist.send(claims_done).is_ok() && volumes_relist.send(volumes_done).is_ok();
                    sent && claims_ack.await.is_ok() && volumes_ack.await.is_ok()
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    done = fresh => if !done {
                        warn!("the watches stopped; not leading");
                        break;
                    },
                }
                debug!(took = ?started.elapsed(), "claims and volumes listed afresh for the new term");
                if !*leadership.borrow() {
                    continue;
                }
            }
            ctx.metrics.leader.set(1);
            status.send_modify(|s| s.leading = true);
            info!(term = terms + 1, "leading; starting workers");
            if terms > 0 && !fresh_lists_per_term {
                // A new term: anything may have changed while following.
                requeue_all(&ctx);
            }
            terms += 1;
            let term = CancellationToken::new();
            let mut workers = spawn_workers(&ctx, &term);
            let lost = tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = wait_for(&mut leadership, false) => true,
            };
            ctx.queue.close();
            if lost {
                // Another replica may start soon: stop everything now.
                term.cancel();
            } else {
                let grace_ends = Instant::now() + ctx.config.shutdown_grace;
                if tokio::time::timeout_at(grace_ends, join_all(&mut workers)).await.is_err() {
                    warn!("shutdown grace period over; dropping running operations");
                } else if tokio::time::timeout_at(grace_ends, save_unsaved(&ctx)).await.is_err() {
                    warn!("shutdown grace period over while saving volumes");
                }
            }
            term.cancel();
            join_all(&mut workers).await;
            ctx.queue.reopen();
            ctx.metrics.leader.set(0);
            status.send_modify(|s| s.leading = false);
            if !lost {
                break;
            }
            info!("lost leadership; all work stopped");
        }
        watches.cancel();
        while tasks.join_next().await.is_some() {}
        status.send_modify(|s| s.leading = false);
        elector_stop.cancel();
        if let Some(handle) = elector {
            let _ = handle.await;
        }
        Ok(())
    }
}

async fn wait_for(rx: &mut watch::Receiver<bool>, value: bool) {
    // A dropped sender means nobody can change leadership any more: stay as we are.
    if rx.wait_for(|v| *v == value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn join_all(workers: &mut tokio::task::JoinSet<()>) {
    while workers.join_next().await.is_some() {}
}

/// Per-key memory of the engine, all in one lock.
#[derive(Default)]
struct KeyState {
    /// PV name -> the claim it belongs to.
    claim_of: HashMap<String, Box<str>>,
    /// PV name -> consecutive failures.
    failures: HashMap<String, u32>,
    /// The engine's own writes the cache has not shown yet.
    own_writes: OwnWrites,
    /// PV name -> uid, for PersistentVolumes whose backend this engine
    /// deleted: kept until a pass finds neither claim nor volume (or a
    /// re-list shows the uid gone), so that a pass working from a snapshot
    /// taken before the PV's deletion never deletes the backend again.
    backend_deleted: HashMap<String, String>,
    /// PV name -> the volume the backend returned that the API server did
    /// not take yet (a transient error): the retry saves it without asking
    /// the backend again.
    unsaved: HashMap<String, PersistentVolume>,
    /// PV names this process saved: it never asks the backend to provision
    /// them again, whatever a lagging cache shows.
    saved: HashSet<String>,
    /// PV name -> (claim rv, class rv) at which the engine gave up.
    given_up: HashMap<String, (String, String)>,
    /// Claim uids already warned about unsupported block mode.
    block_warned: HashSet<String>,
    /// resourceVersions produced by the engine's own writes, whose watch
    /// events must not trigger another pass (the writer already knows).
    echoes: HashSet<String>,
}

struct Ctx {
    client: Client,
    provisioner: Arc<dyn Provisioner>,
    names: Names,
    config: EngineConfig,
    metrics: Metrics,
    queue: WorkQueue,
    claims: JsonStore<PersistentVolumeClaim>,
    volumes: JsonStore<PersistentVolume>,
    classes: Store<StorageClass>,
    recorder: EventRecorder,
    state: Mutex<KeyState>,
}

impl Ctx {
    fn state(&self) -> std::sync::MutexGuard<'_, KeyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key_of_claim(&self, claim: &PersistentVolumeClaim) -> String {
        claim
            .annotations()
            .get(keys::INTENT_VOLUME)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| self.provisioner.volume_name(claim))
    }

    fn claim_api(&self, namespace: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn volume_api(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    /// The engine is about to write the claim or volume of `key`.
    fn writing(&self, key: &str, side: Side) {
        self.wrote();
        self.state().own_writes.writing(key, side);
    }

    /// The write announced by [`writing`](Ctx::writing) produced `expect`;
    /// passes over `key` wait until the cache shows it.
    fn wrote_state(&self, key: &str, side: Side, expect: Option<Expect>) {
        let requeue = self.state().own_writes.wrote(key, side, expect, Instant::now());
        if requeue {
            self.queue.add(key);
        }
    }

    /// The watch delivered a state (`None`: the deletion) of the claim or volume of `key`.
    fn observed(&self, key: &str, side: Side, rv: Option<&str>) {
        let requeue = self.state().own_writes.observed(key, side, rv);
        if requeue {
            self.queue.add(key);
        }
    }

    /// A re-list that started at `started` replaced the `side` cache.
    fn relisted(&self, side: Side, started: Instant) {
        let requeue = self.state().own_writes.relisted(side, started);
        for key in requeue {
            self.queue.add(&key);
        }
    }

    fn wrote(&self) {
        self.metrics.api_writes.inc();
    }

    /// Remembers the state an own write produced, so its watch event is ignored.
    fn expect_echo<K: Resource>(&self, obj: &K) {
        if let Some(rv) = obj.meta().resource_version.clone() {
            let mut st = self.state();
            if st.echoes.len() > 100_000 {
                // Echoes of writes whose events were missed (a re-list) would pile up.
                st.echoes.clear();
            }
            st.echoes.insert(rv);
        }
    }

    /// Whether this watch event is the echo of an own write.
    fn is_echo<K: Resource>(&self, obj: &K) -> bool {
        obj.meta().resource_version.as_ref().is_some_and(|rv| self.state().echoes.remove(rv))
    }

    fn event(
        &self,
        regarding: k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.wrote();
        let recorder = self.recorder.clone();
        let (reason, action) = (reason.to_string(), action.to_string());
        // Events are informational: publish off the critical path.
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&regarding, type_, &reason, &action, &note).await {
                debug!(error = %e, reason, "event not recorded");
            }
        });
    }

    fn claim_event(&self, claim: &PersistentVolumeClaim, type_: EventType, reason: &str, note: String) {
        self.event(event_ref(claim), type_, reason, "Provision", note);
    }
}

/// The reference events are about. Without the resourceVersion, so repeats
/// of one event about an object that changed in between still aggregate.
fn event_ref<K: Resource<DynamicType = ()>>(obj: &K) -> k8s_openapi::api::core::v1::ObjectReference {
    let mut r = obj.object_ref(&());
    r.resource_version = None;
    r
}

fn strip<K: Resource>(obj: &mut K) {
    // managedFields and the last-applied copy are most of an object's size
    // and the engine reads neither.
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The claim's key in the claim cache.
fn claim_ref(claim: &PersistentVolumeClaim) -> Box<str> {
    cache::key(claim.namespace().as_deref(), &claim.name_any())
}

/// Decodes a cached object. One that does not decode makes the caller stop
/// (and retry later) rather than act as if it did not exist.
fn decoded<K>(cached: Option<Cached<K>>) -> Result<Option<Arc<K>>, serde_json::Error>
where
    K: Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    cached.map(|c| c.decode().map(Arc::new)).transpose()
}

/// Every object of a cache, decoded one at a time as the caller iterates (so
/// a pass over a large cache never holds it all decoded); one that does not
/// decode is skipped with a warning.
fn decoded_all<K>(store: &JsonStore<K>) -> impl Iterator<Item = K> + use<K>
where
    K: Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    store.state().into_iter().filter_map(|c| {
        c.decode().inspect_err(|e| warn!(object = ?c, error = %e, "a cached object does not decode")).ok()
    })
}

/// How long one watch request lasts before it is renewed from its last
/// resourceVersion (no re-list). The client gives up on a silent watch after
/// the same time plus a margin, so this also bounds how long a watch that
/// died without an error (seen after kube-apiserver restarts) leaves a cache
/// stale. Renewing costs one request per minute per watched kind.
const WATCH_TIMEOUT_SECS: u32 = 60;

fn watch_config(page_size: u32) -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS).page_size(page_size)
}

/// What one cached watch watches: the kind (through its API), the watch's
/// settings, and its name in logs.
struct Feed<K> {
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
}

/// Watches `feed` into `writer` (objects stripped, cached as JSON) and hands
/// every event, decoded, to `handle`.
async fn watch_cached<K>(
    feed: Feed<K>,
    mut writer: JsonWriter<K>,
    mut relist: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    stop: CancellationToken,
    keep: impl Fn(&K) -> bool,
    mut handle: impl FnMut(watcher::Event<K>),
) where
    K: Resource<DynamicType = ()>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + 'static,
{
    let Feed { api, config, what } = feed;
    let start = || Box::pin(watcher(api.clone(), config.clone()).default_backoff().modify(strip));
    let mut stream = start();
    // Asked for a fresh list: answered at the InitDone of a list started after the request.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            Some(ack) = relist.recv() => {
                waiting.push(ack);
                stream = start();
                continue;
            }
            e = stream.try_next() => e,
        };
        let init_done = matches!(event, Ok(Some(watcher::Event::InitDone)));
        match event {
            Ok(Some(event)) => {
                if tracing::enabled!(tracing::Level::TRACE) {
                    let (kind, obj) = match &event {
                        watcher::Event::Apply(o) => ("apply", Some(o)),
                        watcher::Event::Delete(o) => ("delete", Some(o)),
                        watcher::Event::InitApply(o) => ("init-apply", Some(o)),
                        watcher::Event::Init => ("init", None),
                        watcher::Event::InitDone => ("init-done", None),
                    };
                    let name = obj.map(|o| o.name_any()).unwrap_or_default();
                    let rv = obj.and_then(|o| o.resource_version()).unwrap_or_default();
                    trace!(what, kind, name, rv, "watch event");
                }
                // Into the cache first, as a reflector does, so handlers see
                // it there. Only objects the engine has business with are
                // kept: one that stops being relevant leaves the cache.
                match &event {
                    watcher::Event::Apply(o) if keep(o) => writer.insert(o),
                    watcher::Event::Apply(o) | watcher::Event::Delete(o) => writer.remove(o),
                    watcher::Event::InitApply(o) if keep(o) => writer.init_insert(o),
                    watcher::Event::InitApply(_) => {}
                    watcher::Event::Init => writer.init(),
                    watcher::Event::InitDone => writer.init_done(),
                }
                handle(event);
                if init_done {
                    // The listed objects are in the store and their keys queued.
                    for ack in waiting.drain(..) {
                        let _ = ack.send(());
                    }
                }
            }
            Ok(None) => {
                // A watcher does not end; if it ever did, the cache would
                // silently go stale. Start over from a fresh list.
                warn!("{what} watch ended; starting it again");
                stream = start();
            }
            Err(e) => warn!(error = %e, "{what} watch error; retrying"),
        }
    }
}

/// A re-list in progress on one watch. Its keys are queued at its InitDone,
/// when the store swaps the listed objects in: a worker reading the store
/// earlier would act on the state before the re-list and never look again.
struct Relist {
    side: Side,
    started: Instant,
    keys: Vec<String>,
}

impl Relist {
    fn new(side: Side) -> Relist {
        Relist { side, started: Instant::now(), keys: Vec::new() }
    }

    fn start(&mut self) {
        self.started = Instant::now();
        self.keys.clear();
    }

    fn done(&mut self, ctx: &Ctx) {
        ctx.relisted(self.side, self.started);
        for key in self.keys.drain(..) {
            ctx.queue.add(&key);
        }
    }
}

async fn watch_claims(
    ctx: Arc<Ctx>,
    writer: JsonWriter<PersistentVolumeClaim>,
    relist: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    stop: CancellationToken,
) {
    let api: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    let mut listing = Relist::new(Side::Claim);
    let names = ctx.names.clone();
    let keep = move |c: &PersistentVolumeClaim| decision::claim_is_relevant(c, &names);
    let feed = Feed { api, config: watch_config(ctx.config.list_page_size), what: "claim" };
    watch_cached(feed, writer, relist, stop, keep, |event| match event {
        watcher::Event::Apply(c) => {
            ctx.observed(&ctx.key_of_claim(&c), Side::Claim, c.resource_version().as_deref());
            on_claim(&ctx, &c);
        }
        watcher::Event::InitApply(c) => listing.keys.extend(claim_key(&ctx, &c)),
        watcher::Event::Init => listing.start(),
        watcher::Event::InitDone => listing.done(&ctx),
        watcher::Event::Delete(c) => {
            let key = ctx.key_of_claim(&c);
            ctx.observed(&key, Side::Claim, None);
            let mut st = ctx.state();
            st.claim_of.remove(&key);
            st.block_warned.remove(c.uid().as_deref().unwrap_or_default());
            drop(st);
            ctx.queue.add(&key);
        }
    })
    .await
}

/// The key of a claim the engine has business with (remembering which
/// claim it names), or `None` for another provisioner's claim or the echo
/// of an own write.
fn claim_key(ctx: &Ctx, claim: &PersistentVolumeClaim) -> Option<String> {
    if !decision::claim_is_relevant(claim, &ctx.names) || ctx.is_echo(claim) {
        return None;
    }
    let key = ctx.key_of_claim(claim);
    ctx.state().claim_of.insert(key.clone(), claim_ref(claim));
    Some(key)
}

fn on_claim(ctx: &Ctx, claim: &PersistentVolumeClaim) {
    if let Some(key) = claim_key(ctx, claim) {
        ctx.queue.add(&key);
    }
}

async fn watch_volumes(
    ctx: Arc<Ctx>,
    writer: JsonWriter<PersistentVolume>,
    relist: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    stop: CancellationToken,
) {
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let mut listing = Relist::new(Side::Volume);
    let names = ctx.names.clone();
    let keep = move |v: &PersistentVolume| decision::volume_is_relevant(v, &names);
    let feed = Feed { api, config: watch_config(ctx.config.list_page_size), what: "volume" };
    watch_cached(feed, writer, relist, stop, keep, |event| match event {
        watcher::Event::Apply(v) => {
            ctx.observed(&v.name_any(), Side::Volume, v.resource_version().as_deref());
            remember_claim_of(&ctx, &v);
            if decision::volume_is_relevant(&v, &ctx.names) && !ctx.is_echo(&v) {
                ctx.queue.add(&v.name_any());
            }
        }
        watcher::Event::InitApply(v) => {
            remember_claim_of(&ctx, &v);
            if decision::volume_is_relevant(&v, &ctx.names) && !ctx.is_echo(&v) {
                listing.keys.push(v.name_any());
            }
        }
        watcher::Event::Init => listing.start(),
        watcher::Event::InitDone => {
            listing.done(&ctx);
            // Deletions the re-list skipped over.
            // One volume decoded at a time, and only when there is a mark to check.
            if !ctx.state().backend_deleted.is_empty() {
                let uids: HashSet<String> =
                    ctx.volumes.state().iter().filter_map(|c| c.decode().ok()?.metadata.uid).collect();
                ctx.state().backend_deleted.retain(|_, uid| uids.contains(uid));
            }
        }
        watcher::Event::Delete(v) => {
            ctx.observed(&v.name_any(), Side::Volume, None);
            if decision::volume_is_relevant(&v, &ctx.names) {
                ctx.queue.add(&v.name_any());
            }
        }
    })
    .await
}

async fn watch_classes(ctx: Arc<Ctx>, writer: reflector::store::Writer<StorageClass>, stop: CancellationToken) {
    let api: Api<StorageClass> = Api::all(ctx.client.clone());
    let stream = watcher(api, watch_config(ctx.config.list_page_size)).default_backoff().modify(strip).reflect(writer);
    let mut stream = std::pin::pin!(stream);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.try_next() => e,
        };
        match event {
            Ok(Some(watcher::Event::Apply(k))) => {
                // A new or changed class: its waiting claims go now, and an
                // infeasible claim gets a fresh start.
                let name = k.name_any();
                for claim in decoded_all(&ctx.claims) {
                    if decision::claim_class(&claim) == Some(name.as_str())
                        && decision::claim_is_relevant(&claim, &ctx.names)
                    {
                        let key = ctx.key_of_claim(&claim);
                        ctx.state().failures.remove(&key);
                        ctx.state().claim_of.insert(key.clone(), claim_ref(&claim));
                        ctx.queue.add(&key);
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => warn!(error = %e, "class watch error; retrying"),
        }
    }
}

/// Volumes name their claim: record it, so the key finds the claim even if
/// the claim carries no annotation of ours any more.
fn remember_claim_of(ctx: &Ctx, volume: &PersistentVolume) {
    if !decision::volume_is_relevant(volume, &ctx.names) {
        return;
    }
    if let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
        && let (Some(ns), Some(name)) = (&r.namespace, &r.name)
    {
        ctx.state().claim_of.entry(volume.name_any()).or_insert_with(|| cache::key(Some(ns), name));
    }
}

fn requeue_all(ctx: &Ctx) {
    for claim in decoded_all(&ctx.claims) {
        on_claim(ctx, &claim);
    }
    for volume in decoded_all(&ctx.volumes) {
        if decision::volume_is_relevant(&volume, &ctx.names) {
            ctx.queue.add(&volume.name_any());
        }
    }
}

async fn resync(ctx: Arc<Ctx>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => requeue_all(&ctx),
        }
    }
}

async fn report_queue(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                ctx.metrics.queue_depth.set((ctx.queue.ready_len() + ctx.queue.delayed_len()) as i64);
            }
        }
    }
}

fn spawn_workers(ctx: &Arc<Ctx>, term: &CancellationToken) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..ctx.config.workers {
        let ctx = ctx.clone();
        let term = term.clone();
        set.spawn(async move {
            while let Some(key) = ctx.queue.next().await {
                let outcome = tokio::select! {
                    _ = term.cancelled() => {
                        // Dropped mid-operation: whoever leads next redoes it.
                        ctx.queue.done(&key);
                        ctx.queue.add(&key);
                        return;
                    }
                    o = reconcile(&ctx, &key) => o,
                };
                finish(&ctx, &key, outcome);
            }
        });
    }
    set
}

/// What a reconcile asks of the queue afterwards.
#[derive(Debug)]
enum Next {
    /// Done until something changes.
    Done,
    /// Success: forget failures.
    Succeeded,
    /// A failed or unfinished attempt: retry with backoff.
    Failed,
    /// Retry after this long without counting a failure.
    After(Duration),
}

fn finish(ctx: &Ctx, key: &str, next: Next) {
    if ctx.state().own_writes.pass_ended(key) {
        ctx.queue.add(key);
    }
    match next {
        Next::Done => ctx.queue.done(key),
        Next::Succeeded => {
            ctx.state().failures.remove(key);
            ctx.queue.done(key);
        }
        Next::After(d) => ctx.queue.done_after(key, d),
        Next::Failed => {
            let failures = {
                let mut st = ctx.state();
                let n = st.failures.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            };
            ctx.metrics.retries.inc();
            let delay = ctx.config.backoff.delay_jittered(failures, 0.1, rand::random::<f64>());
            ctx.queue.done_after(key, delay);
        }
    }
}

async fn reconcile(ctx: &Ctx, key: &str) -> Next {
    // The snapshot and the check of own writes against it happen under one
    // lock: a watch event applied in between (the store first, then
    // `observed`, which takes this lock) would otherwise count as shown while
    // the snapshot predates it.
    let snapshot = {
        let mut st = ctx.state();
        let claim_ref = st.claim_of.get(key).cloned();
        let cached = (claim_ref.and_then(|r| ctx.claims.get_key(&r)), ctx.volumes.get(None, key));
        match (decoded(cached.0), decoded(cached.1)) {
            (Ok(claim), Ok(volume)) => {
                // A claim of the same name may have been recreated (new uid,
                // new key): only the claim whose key this is belongs to this volume.
                let claim = claim.filter(|c| ctx.key_of_claim(c) == key);
                // `Some(wait)`: the cache has not shown the engine's last write
                // yet; the awaited watch event requeues the key, or the wait
                // ends after `wait`.
                let cached_claim = claim.as_ref().and_then(|c| c.resource_version());
                let cached_volume = volume.as_ref().and_then(|v| v.resource_version());
                let behind =
                    st.own_writes.behind(key, cached_claim.as_deref(), cached_volume.as_deref(), Instant::now());
                Ok((claim, volume, behind, cached_claim, cached_volume))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    };
    let (claim, volume, cache_behind, cached_claim, cached_volume) = match snapshot {
        Ok(s) => s,
        Err(e) => {
            warn!(volume = key, error = %e, "a cached object does not decode; retrying later");
            return Next::Failed;
        }
    };
    let class_name = claim
        .as_deref()
        .and_then(decision::claim_class)
        .map(str::to_string)
        .or_else(|| volume.as_ref().and_then(|v| v.spec.as_ref()?.storage_class_name.clone()));
    let class = class_name.as_deref().and_then(|n| ctx.classes.get(&ObjectRef::new(n)));

    if let Some(wait) = cache_behind {
        debug!(
            volume = key,
            ?wait,
            ?cached_claim,
            ?cached_volume,
            "the cache has not shown the engine's last write yet"
        );
    }
    // A volume the backend returned and the API server has not taken yet is
    // saved whatever the cache shows: saving is idempotent, and waiting could
    // outlast this process (then the next one asks the backend again).
    if ctx.state().unsaved.contains_key(key)
        && let (Some(c), Some(k)) = (claim.as_deref(), class.as_deref())
    {
        return save_pending(ctx, key, c, k).await;
    }
    let cache_stale = cache_behind.is_some();
    if let (Some(c), Some(k)) = (claim.as_deref(), class.as_deref()) {
        let st = ctx.state();
        if let Some((crv, krv)) = st.given_up.get(key)
            && Some(crv) == c.resource_version().as_ref()
            && Some(krv) == k.resource_version().as_ref()
            && !decision::has_intent(c, &ctx.names)
        {
            return Next::Done;
        }
    }
    let snap = Snapshot { claim: claim.as_deref(), volume: volume.as_deref(), class: class.as_deref(), cache_stale };
    let decision = decide(key, &snap, &ctx.names, ctx.provisioner.as_ref());
    debug!(volume = key, ?decision, "decided");
    match decision {
        Decision::Idle(decision::IdleReason::Nothing) => {
            // Claim and volume are gone: forget the key's bookkeeping (its
            // own-write expectations expire on their own).
            let mut st = ctx.state();
            st.claim_of.remove(key);
            st.failures.remove(key);
            st.given_up.remove(key);
            st.unsaved.remove(key);
            st.saved.remove(key);
            st.backend_deleted.remove(key);
            drop(st);
            Next::Done
        }
        Decision::Idle(_) => Next::Done,
        Decision::WaitForCache => Next::After(cache_behind.unwrap_or_default()),
        Decision::WaitForClass(class) => {
            debug!(volume = key, class, "waiting for the class to exist");
            Next::Done
        }
        Decision::RejectBlock => {
            let Some(claim) = claim else { return Next::Done };
            let uid = claim.uid().unwrap_or_default();
            if ctx.state().block_warned.insert(uid) {
                let name =
                    class.as_deref().map(|k| k.provisioner.clone()).unwrap_or_else(|| ctx.names.primary().into());
                ctx.claim_event(
                    &claim,
                    EventType::Warning,
                    "ProvisioningFailed",
                    format!("{name} does not support block volume provisioning"),
                );
            }
            Next::Done
        }
        Decision::Provision(plan) => match (claim, class) {
            (Some(claim), Some(class)) => provision(ctx, key, plan, claim, class).await,
            _ => Next::Done,
        },
        Decision::ReleaseClaim => match claim {
            Some(claim) => release_claim(ctx, key, &claim, false).await,
            None => Next::Done,
        },
        Decision::DeleteBackend { delete_object } => match volume {
            Some(volume) => delete(ctx, key, &volume, delete_object).await,
            None => Next::Done,
        },
        Decision::RemoveVolumeFinalizer => match volume {
            Some(volume) => remove_volume_finalizer(ctx, key, &volume).await,
            None => Next::Done,
        },
    }
}

fn class_label(class: &StorageClass) -> String {
    class.name_any()
}

async fn provision(
    ctx: &Ctx,
    key: &str,
    plan: ProvisionPlan,
    mut claim: Arc<PersistentVolumeClaim>,
    class: Arc<StorageClass>,
) -> Next {
    let ns = claim.namespace().unwrap_or_default();
    if plan.record_intent {
        let mut finalizers = claim.finalizers().to_vec();
        finalizers.push(keys::INTENT_FINALIZER.to_string());
        let patch = json!({
            "metadata": {
                "resourceVersion": claim.resource_version(),
                "finalizers": finalizers,
                "annotations": {
                    keys::INTENT_VOLUME: plan.pv_name,
                    keys::INTENT_PROVISIONER: class.provisioner,
                },
            }
        });
        ctx.writing(key, Side::Claim);
        match ctx.claim_api(&ns).patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(updated) => {
                ctx.wrote_state(key, Side::Claim, Expect::of_write(&updated));
                ctx.expect_echo(&updated);
                claim = Arc::new(updated);
            }
            // The cache was behind; the newer claim is on its way and will requeue the key.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => return Next::Done,
            Err(e) => {
                warn!(volume = key, error = %e, "recording the provisioning intent failed");
                return Next::Failed;
            }
        }
    }

    let request = ProvisionRequest {
        pv_name: plan.pv_name.clone(),
        claim: claim.clone(),
        class: class.clone(),
        selected_node: plan.selected_node.clone(),
    };
    let label = class_label(&class);
    let started = Instant::now();
    // (A volume the backend returned but the API server has not taken yet
    // never gets here: `reconcile` saves it first.)
    if ctx.state().saved.contains(key) {
        // The cache has not shown the saved volume yet, or it was deleted
        // since; either way the backend has done its part.
        if plan.finishing_only && claim.metadata.deletion_timestamp.is_some() {
            return release_claim(ctx, key, &claim, false).await;
        }
        debug!(volume = key, "volume saved already; waiting for the cache");
        return Next::Done;
    }
    ctx.metrics.in_flight.inc();
    let call = ctx.provisioner.provision(&request);
    let result = match ctx.config.provision_timeout {
        Some(t) => tokio::time::timeout(t, call)
            .await
            .unwrap_or_else(|_| Err(ProvisionError::InProgress(format!("provision call timed out after {t:?}")))),
        None => call.await,
    };
    ctx.metrics.in_flight.dec();

    let first_attempt = !ctx.state().failures.contains_key(key);
    match result {
        Ok(provisioned) => {
            let pv = build_volume(&plan.pv_name, provisioned, &claim, &class, &ctx.config.volume);
            save_volume(ctx, key, &claim, &class, pv, started.elapsed()).await
        }
        Err(ProvisionError::InProgress(msg)) => {
            if first_attempt {
                ctx.claim_event(
                    &claim,
                    EventType::Normal,
                    "Provisioning",
                    format!("External provisioner is provisioning volume for claim \"{ns}/{}\"", claim.name_any()),
                );
            }
            debug!(volume = key, msg, "provisioning in progress");
            Next::Failed
        }
        // Not this instance's claim: its record, if any, belongs to the
        // instance that wrote it (another node's, another shard's).
        Err(ProvisionError::Ignored) => Next::Done,
        Err(err) if plan.finishing_only => {
            // Nothing was created and the claim is going away: let it go.
            debug!(volume = key, %err, "nothing to finish");
            release_claim(ctx, key, &claim, false).await
        }
        Err(ProvisionError::Reschedule(msg)) if plan.selected_node.is_some() => {
            ctx.metrics.provision_failed(&label);
            ctx.claim_event(
                &claim,
                EventType::Warning,
                "ProvisioningFailed",
                format!("{msg}; asking the scheduler for another node"),
            );
            release_claim(ctx, key, &claim, true).await
        }
        Err(ProvisionError::Infeasible(msg)) => {
            ctx.metrics.provision_failed(&label);
            ctx.claim_event(&claim, EventType::Warning, "ProvisioningFailed", msg);
            Next::After(ctx.config.infeasible_retry)
        }
        Err(ProvisionError::Final(msg) | ProvisionError::Reschedule(msg)) => {
            ctx.metrics.provision_failed(&label);
            let failures = ctx.state().failures.get(key).copied().unwrap_or(0) + 1;
            if ctx.config.give_up_after.is_some_and(|limit| failures >= limit) {
                ctx.claim_event(
                    &claim,
                    EventType::Warning,
                    "ProvisioningFailed",
                    format!("{msg}; giving up after {failures} attempts: edit the claim or its class to try again"),
                );
                let mut st = ctx.state();
                st.given_up.insert(
                    key.to_string(),
                    (claim.resource_version().unwrap_or_default(), class.resource_version().unwrap_or_default()),
                );
                st.failures.remove(key);
                return Next::Done;
            }
            ctx.claim_event(&claim, EventType::Warning, "ProvisioningFailed", msg);
            Next::Failed
        }
    }
}

async fn save_volume(
    ctx: &Ctx,
    key: &str,
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    pv: PersistentVolume,
    took: Duration,
) -> Next {
    let label = class_label(class);
    ctx.writing(key, Side::Volume);
    let saved = match ctx.volume_api().create(&PostParams::default(), &pv).await {
        Ok(saved) => {
            ctx.expect_echo(&saved);
            Some(saved)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Ours from an earlier attempt (same claim uid) is success.
            match ctx.volume_api().get_opt(key).await {
                Ok(Some(existing)) => {
                    let uid = existing.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone());
                    if uid == claim.uid() {
                        Some(existing)
                    } else {
                        ctx.metrics.provision_failed(&label);
                        ctx.claim_event(
                            claim,
                            EventType::Warning,
                            "ProvisioningFailed",
                            format!("volume {key} already exists and belongs to another claim"),
                        );
                        return Next::Failed;
                    }
                }
                _ => {
                    ctx.state().unsaved.insert(key.to_string(), pv);
                    return Next::Failed;
                }
            }
        }
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
            // The API server will never take this volume: undo the backend.
            ctx.metrics.provision_failed(&label);
            ctx.state().unsaved.remove(key);
            return match ctx.provisioner.delete(&pv).await {
                Ok(()) | Err(DeleteError::Ignored) => {
                    ctx.claim_event(
                        claim,
                        EventType::Warning,
                        "ProvisioningFailed",
                        format!("the API server rejected volume {key}: {}; its backend volume was removed", e.message),
                    );
                    Next::Failed
                }
                Err(de) => {
                    ctx.claim_event(
                        claim,
                        EventType::Warning,
                        "ProvisioningCleanupFailed",
                        format!(
                            "the API server rejected volume {key} ({}) and deleting its backend volume failed ({de}); \
                             delete the backend volume for {key} by hand",
                            e.message
                        ),
                    );
                    Next::Failed
                }
            };
        }
        Err(e) => {
            warn!(volume = key, error = %e, "saving the volume failed; will retry");
            ctx.metrics.provision_failed(&label);
            ctx.state().unsaved.insert(key.to_string(), pv);
            return Next::Failed;
        }
    };
    {
        let mut st = ctx.state();
        st.unsaved.remove(key);
        st.saved.insert(key.to_string());
    }
    if let Some(saved) = &saved {
        ctx.wrote_state(key, Side::Volume, Expect::of_write(saved));
    }
    ctx.metrics.provision_succeeded(&label, took);
    ctx.claim_event(
        claim,
        EventType::Normal,
        "ProvisioningSucceeded",
        format!("Successfully provisioned volume {key}"),
    );
    info!(volume = key, claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any()), "provisioned");
    Next::Succeeded
}

/// Saves the volume the backend returned for `key` that the API server has
/// not taken yet, if any.
async fn save_pending(ctx: &Ctx, key: &str, claim: &PersistentVolumeClaim, class: &StorageClass) -> Next {
    let Some(pv) = ctx.state().unsaved.get(key).cloned() else { return Next::Done };
    debug!(volume = key, "saving the volume the backend returned earlier");
    save_volume(ctx, key, claim, class, pv, Duration::ZERO).await
}

/// On a graceful stop, after the workers: one attempt to save each volume
/// the backend returned and the API server has not taken yet, so the next
/// leader need not ask the backend for it again.
async fn save_unsaved(ctx: &Ctx) {
    let keys: Vec<String> = ctx.state().unsaved.keys().cloned().collect();
    for key in keys {
        let claim_ref = ctx.state().claim_of.get(&key).cloned();
        let claim = claim_ref.and_then(|r| ctx.claims.get_key(&r)).and_then(|c| c.decode().ok());
        let class = claim.as_ref().and_then(decision::claim_class).and_then(|n| ctx.classes.get(&ObjectRef::new(n)));
        if let (Some(claim), Some(class)) = (claim, class) {
            let _ = save_pending(ctx, &key, &claim, &class).await;
        }
    }
}

/// Removes the intent record from the claim (and, when `reschedule`, the
/// selected node), in one JSON patch guarded by `test` operations.
async fn release_claim(ctx: &Ctx, key: &str, claim: &PersistentVolumeClaim, reschedule: bool) -> Next {
    let mut ops = Vec::new();
    if let Some(i) = claim.finalizers().iter().position(|f| f == keys::INTENT_FINALIZER) {
        let path = format!("/metadata/finalizers/{i}");
        ops.push(json!({ "op": "test", "path": path, "value": keys::INTENT_FINALIZER }));
        ops.push(json!({ "op": "remove", "path": path }));
    }
    let mut remove_annotation = |k: &str| {
        if claim.annotations().contains_key(k) {
            ops.push(json!({ "op": "remove", "path": format!("/metadata/annotations/{}", k.replace('~', "~0").replace('/', "~1")) }));
        }
    };
    remove_annotation(keys::INTENT_VOLUME);
    remove_annotation(keys::INTENT_PROVISIONER);
    if reschedule {
        remove_annotation(keys::SELECTED_NODE);
        remove_annotation(keys::ALPHA_SELECTED_NODE);
    }
    if ops.is_empty() {
        return Next::Succeeded;
    }
    let ns = claim.namespace().unwrap_or_default();
    let api = ctx.claim_api(&ns);
    guarded_patch(ctx, key, Side::Claim, &api, &claim.name_any(), ops, "removing the provisioning intent").await
}

/// Sends `ops` as one JSON patch and records the state it produced. A failed
/// `test` (422) or a conflict means the object changed: its watch event
/// requeues the key, so that is not a failure; a missing object is done.
async fn guarded_patch<K>(
    ctx: &Ctx,
    key: &str,
    side: Side,
    api: &Api<K>,
    name: &str,
    ops: Vec<serde_json::Value>,
    what: &str,
) -> Next
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let patch: json_patch::Patch = match serde_json::from_value(serde_json::Value::Array(ops)) {
        Ok(p) => p,
        Err(e) => {
            warn!(volume = key, error = %e, "building the patch for {what} failed");
            return Next::Failed;
        }
    };
    ctx.writing(key, side);
    match api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch)).await {
        Ok(updated) => {
            ctx.wrote_state(key, side, Expect::of_write(&updated));
            Next::Succeeded
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            ctx.wrote_state(key, side, Some(Expect::Gone));
            Next::Succeeded
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => Next::Done,
        Err(e) => {
            warn!(volume = key, error = %e, "{what} failed");
            Next::Failed
        }
    }
}

async fn delete(ctx: &Ctx, key: &str, volume: &PersistentVolume, delete_object: bool) -> Next {
    let uid = volume.uid().unwrap_or_default();
    // A pass after a failed or conflicting write below: the backend is gone already.
    let already = !uid.is_empty() && ctx.state().backend_deleted.get(key) == Some(&uid);
    if !already {
        if let Err(next) = delete_backend(ctx, key, volume).await {
            return next;
        }
        if !uid.is_empty() {
            ctx.state().backend_deleted.insert(key.to_string(), uid);
        }
    }
    let mut current = volume.clone();
    if delete_object {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: volume.uid(), resource_version: None }),
            ..DeleteParams::default()
        };
        ctx.writing(key, Side::Volume);
        match ctx.volume_api().delete(key, &dp).await {
            Ok(either) => match either.left() {
                // Held by the finalizer, which goes next.
                Some(still_there) => {
                    ctx.wrote_state(key, Side::Volume, Expect::of_write(&still_there));
                    current = still_there;
                }
                None => {
                    ctx.wrote_state(key, Side::Volume, Some(Expect::Gone));
                    return Next::Succeeded;
                }
            },
            Err(kube::Error::Api(e)) if e.code == 404 => {
                ctx.wrote_state(key, Side::Volume, Some(Expect::Gone));
                return Next::Succeeded;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => return Next::Done,
            Err(e) => {
                warn!(volume = key, error = %e, "deleting the volume object failed");
                return Next::Failed;
            }
        }
    }
    remove_volume_finalizer(ctx, key, &current).await
}

/// Calls [`Provisioner::delete`] for `volume`: `Ok` when the backend volume
/// is gone, otherwise what the pass should answer.
async fn delete_backend(ctx: &Ctx, key: &str, volume: &PersistentVolume) -> Result<(), Next> {
    let label = volume.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
    let started = Instant::now();
    ctx.metrics.in_flight.inc();
    let call = ctx.provisioner.delete(volume);
    let result = match ctx.config.delete_timeout {
        Some(t) => tokio::time::timeout(t, call)
            .await
            .unwrap_or_else(|_| Err(DeleteError::Failed(format!("delete call timed out after {t:?}")))),
        None => call.await,
    };
    ctx.metrics.in_flight.dec();
    match result {
        Ok(()) => {}
        Err(DeleteError::Ignored) => return Err(Next::Done),
        Err(DeleteError::InUse(msg)) => {
            debug!(volume = key, msg, "backend volume still in use");
            return Err(Next::Failed);
        }
        Err(DeleteError::Failed(msg)) => {
            ctx.metrics.delete_failed(&label);
            ctx.event(event_ref(volume), EventType::Warning, "VolumeFailedDelete", "Delete", msg);
            return Err(Next::Failed);
        }
    }
    ctx.metrics.delete_succeeded(&label, started.elapsed());
    info!(volume = key, "deleted the backend volume");
    Ok(())
}

async fn remove_volume_finalizer(ctx: &Ctx, key: &str, volume: &PersistentVolume) -> Next {
    let Some(i) = volume.finalizers().iter().position(|f| f == keys::VOLUME_FINALIZER) else {
        return Next::Succeeded;
    };
    let path = format!("/metadata/finalizers/{i}");
    let ops = vec![
        json!({ "op": "test", "path": path, "value": keys::VOLUME_FINALIZER }),
        json!({ "op": "remove", "path": path }),
    ];
    guarded_patch(ctx, key, Side::Volume, &ctx.volume_api(), key, ops, "removing the volume finalizer").await
}
