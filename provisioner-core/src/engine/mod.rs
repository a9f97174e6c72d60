//! The engine: watches claims, volumes and classes, and drives a
//! [`Provisioner`] through the decisions of [`crate::decision`].
//!
//! Crash safety comes first below; then the files, each answering one
//! question: `config` (how an engine is built and set up), `watches` (what
//! the caches hold and which keys a change queues), `runner` (which worker
//! runs a key, and what the queue does after), `reconcile` (what the cluster
//! and the engine's memory say about one volume, and the decision taken on
//! it), `provision` (the provision path), `delete` (the delete path and the
//! volume finalizer), `journal` (the intent journal's commits), `intent`
//! (ending an intent, and the claim records of earlier versions), `writes`
//! (the guarded patch every removal uses) and `context` (what workers and
//! watches share). The rules themselves are all in [`crate::decision`], and
//! the per-volume memory they read in [`crate::memory`].
//!
//! # Shape
//! Three watches keep caches of claims, volumes and classes; claims and
//! volumes are cached as compressed JSON in a store of our own and decoded
//! when looked at (see `cache.rs` for why and what it saves), and only those
//! the engine has business with ([`crate::decision::claim_is_relevant`],
//! [`crate::decision::volume_is_ours`]): the claims and volumes of other
//! provisioners in the cluster (CSI drivers' PVs carry the same deletion
//! finalizer as ours) cost nothing once their events have passed, and are
//! never written.
//! After each change of leader both caches are listed afresh. Every change
//! is mapped to a *key*, the PersistentVolume name, and queued in a
//! work queue (`queue.rs`) that hands a key to one worker at a time, so the provision
//! path and the delete path of one volume can never run at once. A worker
//! reads the caches and its memory of the volume, asks
//! [`crate::decision::decide`] what to do and does it. Workers run
//! only while this replica leads.
//!
//! # Crash safety
//! The danger is the window between "backend volume created" and
//! "PersistentVolume saved": a crash there, or a claim deleted while the
//! engine is down, would leak the backend volume. The engine closes it with
//! an *intent journal* ([`crate::journal`]): a ConfigMap of its own (one per
//! provisioner name, or per instance for node-local provisioners) in which
//! it records a volume before the backend is touched:
//!
//! 1. An entry keyed by the PV name, holding the claim as it is (name,
//!    namespace, uid, labels, annotations, spec) and its class, is committed
//!    to the journal. Commits are grouped: every provision waiting at that
//!    moment shares one replace of the ConfigMap (with its resourceVersion,
//!    so a concurrent change is merged, never overwritten).
//! 2. `provision()` runs, keyed by the PV name, so a repeat returns the same
//!    backend volume.
//! 3. The PV is created with `claimRef.uid`; `AlreadyExists` for the same
//!    claim uid is success. The entry is then forgotten: it leaves the
//!    journal in the next commit (or after a linger of 10 s).
//!
//! Why this is enough: at every instant, any backend volume that may exist is
//! recorded either by a journal entry on the server or by a PV (the entry is
//! committed before the call, and is removed only once a PV exists, or once
//! `provision()` said that nothing was created). At the start of each term
//! the engine reads the journal afresh and looks at every entry: a PV by that
//! name ends it; otherwise `provision()` is called again with the claim as
//! it lives or, if it is gone (deleted while the engine was down, say), as
//! recorded, and with the class as recorded if it is gone too; the PV is
//! saved anyway, the binder marks it `Released` once its claim is gone, and
//! the normal delete path removes the backend. If `provision()` answers that
//! nothing was created (`Final`, `Reschedule`, `Infeasible`) for a claim
//! that is gone or going, the entry is forgotten at once.
//!
//! Two more rules keep an entry from outliving its backend or being lost:
//! - before a backend is deleted, the engine waits until the server's
//!   journal no longer holds an entry for that volume (a lingering one would
//!   make a restart provision the volume again after its whole life ended);
//! - the engine watches its journal: an entry it still holds that an edit
//!   removed, or a journal deleted by hand, is written again at once, while
//!   keys it cannot read (an operator's note) are kept as they are, and
//!   entries it did not know (another replica's) are learned and looked at.
//!   A journal whose owner annotation names another engine is refused at
//!   start-up. (A journal deleted while no engine runs takes its entries
//!   with it, as removing a finalizer by hand would: `release` is the way
//!   to give them up, and it lists them.)
//!
//! The journal is bounded ([`crate::journal::MAX_BYTES`], under the API
//! server's 1 MiB per ConfigMap, about 1,500 entries): when it is full, new
//! provisions wait (counted in `provisioner_journal_full_total`, logged once
//! a minute) and finished entries leave at once to make room.
//!
//! Only the leader writes the journal. Claims carry nothing of ours, so a
//! claim, or its namespace, can always be deleted, with or without the
//! provisioner. Provisioning costs one PV create plus a share of the
//! journal's commits: two commits for a volume provisioned alone, a small
//! fraction of a write per volume when many start together. The
//! `ProvisioningSucceeded` event goes on the events' own lane and client.
//! Claims that versions before the journal recorded on the claim itself (a
//! finalizer and two annotations) are finished the same way and their record
//! removed.
//!
//! Deletion runs backend delete, then PV delete (with a uid precondition),
//! then removal of [`crate::keys::VOLUME_FINALIZER`]; a crash in between repeats the
//! backend delete, which provisioners must treat "not found" as success for.
//! A PV deleted while it is still bound to a claim that exists keeps its
//! backend (and our finalizer) until the claim is gone.
//!
//! After each of its own writes the engine remembers the state the write
//! produced (the object's new resourceVersion, or its deletion) and does not
//! act on that volume until the watch has delivered it (`own_writes.rs`,
//! kept in the volume's memory record).
//! Every state the cache shows before then is older than the write, whoever
//! else wrote in between (the PV protection controller does, during every
//! delete), so a lagging watch cannot cause a second provision or delete.
//! The engine also remembers which volumes' backends it has deleted, so a
//! retry after a failed or conflicting write to the PV object does not call
//! the backend again ([`crate::memory`]).

mod config;
mod context;
mod delete;
mod intent;
mod journal;
mod provision;
mod reconcile;
mod runner;
mod watches;
mod writes;

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::runtime::reflector;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use config::{EngineBuilder, EngineConfig, EngineError, EngineStatus};
pub use journal::JournalConfig;

use crate::cache;
use crate::decision::Names;
use crate::events::EventRecorder;
use crate::events::lane::EventLane;
use crate::leader::{LeaderElectionConfig, LeaderElector};
use crate::metrics::Metrics;
use crate::provisioner::Provisioner;
use crate::queue::WorkQueue;
use context::{Ctx, State};
use provision::save_unsaved;
use runner::{join_all, spawn_workers, wait_for};
use watches::{report_queue, requeue_all, resync, watch_claims, watch_classes, watch_volumes};

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
    event_client: Option<Client>,
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
            event_client: None,
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
        let Engine { client, provisioner, names, config, metrics, leadership, election, status, event_client } = self;
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
        let recorder = EventRecorder::new(
            event_client.unwrap_or_else(|| client.clone()),
            names.primary(),
            config.identity.clone(),
        );
        let events = EventLane::new(config.event_queue, metrics.event_lane_counts());
        let events_stop = CancellationToken::new();
        let event_publisher = tokio::spawn(events.clone().run(recorder, config.event_rate, events_stop.clone()));
        let journal =
            Arc::new(journal::Journal::new(client.clone(), names.primary(), &config.journal, metrics.clone()));
        let ctx = Arc::new(Ctx {
            journal: journal.clone(),
            client: client.clone(),
            provisioner,
            names,
            config,
            metrics,
            queue: queue.clone(),
            claims,
            volumes,
            classes,
            events,
            state: Mutex::new(State::default()),
        });

        let watches = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let (claims_relist, claims_relist_rx) = mpsc::unbounded_channel();
        let (volumes_relist, volumes_relist_rx) = mpsc::unbounded_channel();
        tasks.spawn(watch_claims(ctx.clone(), claim_writer, claims_relist_rx, watches.clone()));
        tasks.spawn(watch_volumes(ctx.clone(), volume_writer, volumes_relist_rx, watches.clone()));
        tasks.spawn(watch_classes(ctx.clone(), class_writer, watches.clone()));
        let journal_stop = CancellationToken::new();
        let committer = tokio::spawn(journal.clone().run(journal_stop.clone()));
        {
            let queue = queue.clone();
            tasks.spawn(journal.clone().watch(move |key: &str| queue.add(key), watches.clone()));
        }

        let ready = async {
            ctx.claims.wait_until_ready().await.map_err(|e| ("claims", e.to_string()))?;
            ctx.volumes.wait_until_ready().await.map_err(|e| ("volumes", e.to_string()))?;
            ctx.classes.wait_until_ready().await.map_err(|e| ("classes", e.to_string()))?;
            Ok::<_, (&'static str, String)>(())
        };
        tokio::select! {
            r = ready => if let Err((what, reason)) = r {
                watches.cancel();
                journal_stop.cancel();
                elector_stop.cancel();
                events_stop.cancel();
                return Err(EngineError::CacheNotReady { what, reason });
            },
            _ = shutdown.cancelled() => {
                watches.cancel();
                journal_stop.cancel();
                elector_stop.cancel();
                events_stop.cancel();
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
            // What the journal holds decides what a gone claim left: read it
            // afresh before any worker runs, and look at every entry.
            let loaded = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait_for(&mut leadership, false) => continue,
                l = ctx.journal.load() => l,
            };
            match loaded {
                Ok(keys) => {
                    for key in keys {
                        ctx.queue.add(&key);
                    }
                }
                Err(msg) => {
                    watches.cancel();
                    journal_stop.cancel();
                    events_stop.cancel();
                    elector_stop.cancel();
                    return Err(EngineError::Config(msg));
                }
            }
            // Reading the journal takes a request (retried while the API
            // server is away): leadership may have gone meanwhile.
            if !*leadership.borrow() {
                continue;
            }
            ctx.journal.set_leading(true);
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
            ctx.journal.set_leading(false);
            ctx.queue.reopen();
            ctx.metrics.leader.set(0);
            status.send_modify(|s| s.leading = false);
            if !lost {
                break;
            }
            info!("lost leadership; all work stopped");
        }
        watches.cancel();
        journal_stop.cancel();
        let _ = committer.await;
        while tasks.join_next().await.is_some() {}
        // Events still waiting get a moment to go out (counted as dropped after it).
        let flushed = tokio::time::timeout(std::time::Duration::from_secs(1), ctx.events.flushed()).await.is_ok();
        events_stop.cancel();
        let _ = event_publisher.await;
        if !flushed {
            debug!("events still waiting at shutdown were dropped");
        }
        status.send_modify(|s| s.leading = false);
        elector_stop.cancel();
        if let Some(handle) = elector {
            let _ = handle.await;
        }
        Ok(())
    }
}
