//! A testing kit: [`FakeCluster`], an in-process Kubernetes API server that a
//! [`kube::Client`] talks to directly (a tower service, no sockets), with an
//! optional PV binder that plays kube-controller-manager's part, fault
//! injection, and engines that can be crashed and restarted inside a test;
//! [`ScriptedBackend`], a provisioner whose answers a test scripts; waits
//! for events and backend states; and [`fixtures`], builders for the objects
//! tests create. The module exists with the `testing` feature only (a
//! dev-dependency feature: it is not part of production builds).
//!
//! The cluster serves what provisioning touches: PersistentVolumeClaims,
//! PersistentVolumes, StorageClasses, Events (`events.k8s.io/v1` and core
//! `v1`, one storage as in the real server), Leases (`coordination.k8s.io/v1`,
//! which leader election uses), Nodes and Namespaces, with get, list, watch,
//! create, update, patch, delete, delete-collection and `/status`.
//! Everything runs on Tokio timers, so tests work under
//! `#[tokio::test(start_paused = true)]`: backoff and lease timings pass
//! instantly and deterministically, and every wait here is woken by what it
//! waits for (writes to the cluster, calls to the backend), never by polling.
//!
//! # Testing a provisioner end to end
//! ```
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec};
//! use kube::api::{Api, PostParams};
//! use provisioner_core::testing::{FakeCluster, fixtures};
//! use provisioner_core::{DeleteError, Engine, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
//!
//! struct Dirs;
//!
//! #[async_trait::async_trait]
//! impl Provisioner for Dirs {
//!     async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
//!         let path = format!("/srv/{}", req.pv_name);
//!         Ok(ProvisionedVolume::new(PersistentVolumeSpec {
//!             host_path: Some(HostPathVolumeSource { path, type_: None }),
//!             ..Default::default()
//!         }))
//!     }
//!     async fn delete(&self, _volume: &PersistentVolume) -> Result<(), DeleteError> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = FakeCluster::with_binder();
//! let client = cluster.client();
//! Api::all(client.clone()).create(&PostParams::default(), &fixtures::class("fast", "example.com/dirs").build()).await?;
//! let engine = cluster.spawn_engine(|client| Engine::builder(client, "example.com/dirs", Arc::new(Dirs)).build())?;
//!
//! let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, "default");
//! claims.create(&PostParams::default(), &fixtures::claim("default", "data").class("fast").build()).await?;
//! let bound = cluster.wait_for::<PersistentVolumeClaim>("default", "data", |c| {
//!     c.is_some_and(|c| fixtures::claim_phase(c) == "Bound")
//! }).await?;
//! assert!(bound.and_then(|c| c.spec?.volume_name).is_some_and(|v| v.starts_with("pvc-")));
//! engine.stop().await?;
//! # Ok(()) }
//! ```
//!
//! # A scripted backend, and waiting for events
//! [`ScriptedBackend`] answers each call as the test scripted it (and
//! succeeds when nothing is scripted), records the calls and the volumes it
//! holds, and [`ScriptedBackend::wait_until`] waits for a state of it.
//! [`FakeCluster::wait_for_event`] waits for an event about an object with a
//! reason, [`FakeCluster::events_for`] lists them; [`wait_for_event`] and
//! [`events_for`] do the same through a client, on the kit or on a real
//! cluster. Here a backend failing once, under paused time:
//! ```
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::PersistentVolumeClaim;
//! use kube::api::{Api, PostParams};
//! use provisioner_core::testing::{FakeCluster, ProvisionAnswer, ScriptedBackend, fixtures};
//! use provisioner_core::{Engine, ProvisionError};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = FakeCluster::with_binder();
//! let client = cluster.client();
//! Api::all(client.clone()).create(&PostParams::default(), &fixtures::class("fast", "example.com/x").build()).await?;
//! let backend = ScriptedBackend::new();
//! backend.script([ProvisionAnswer::Fail(ProvisionError::failed("quota exceeded"))]);
//! let engine = cluster.spawn_engine(|c| Engine::builder(c, "example.com/x", Arc::new(backend.clone())).build())?;
//!
//! let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, "default");
//! claims.create(&PostParams::default(), &fixtures::claim("default", "data").class("fast").build()).await?;
//! let warning = cluster.wait_for_event("default", "data", "ProvisioningFailed").await?;
//! assert_eq!(warning.note.as_deref(), Some("quota exceeded"));
//! // The engine retries after its backoff (no time at all, paused) and the backend succeeds.
//! let state = backend.wait_until(|s| s.created == 1).await?;
//! assert_eq!(state.provision_calls.len(), 2);
//! cluster.wait_for_event("default", "data", "ProvisioningSucceeded").await?;
//! engine.stop().await?;
//! # Ok(()) }
//! ```
//!
//! # Faults
//! - [`FakeCluster::fail_next`]: the next `n` requests of a [`Verb`] on a
//!   kind (`fail_next::<PersistentVolume>(Verb::Create, Fault::InternalError, 2)`;
//!   [`fail_next_status`](FakeCluster::fail_next_status) for its `/status`,
//!   [`fail_next_any`](FakeCluster::fail_next_any) for any resource) answer
//!   with a [`Fault`]: a `Status` error with the real server's code and reason.
//! - [`FakeCluster::set_latency`]: requests wait this long (on the Tokio clock) first.
//! - [`FakeCluster::drop_watches`]: every open watch ends, as when a
//!   connection breaks; kube-runtime watchers resume from their last
//!   resourceVersion. [`FakeCluster::compact`] forgets the history, so that
//!   resumption gets `410 Gone` and the watchers re-list.
//! - [`FakeCluster::send_bookmarks`]: open watches that allow bookmarks get one now.
//! - [`FakeCluster::connect`]: a client and its [`Connection`], which
//!   [`sever`](Connection::sever)s it (a network partition: its requests
//!   hang) and [`restore`](Connection::restore)s it.
//!
//! Faults and latency apply to clients; the binder writes to the store directly.
//! [`FakeCluster::history`] tells when each write landed, by the Tokio clock.
//!
//! # Crashing an engine
//! [`FakeCluster::spawn_engine`] runs an engine on its own client. [`RunningEngine::crash`]
//! cuts that client off (its requests hang, its watches stop, as if the
//! process vanished) and aborts the engine's task without any shutdown:
//! nothing is released and nothing finishes. Start a new engine against the
//! same cluster with `spawn_engine` again, with a provisioner that shares
//! the old one's backend state (a clone of a [`ScriptedBackend`]), to test
//! recovery.
//!
//! # What the fake refuses, as the real API server does
//! Writes a real kube-apiserver refuses fail here too, with its status code,
//! reason and message wording, so that a test cannot pass on the kit and
//! fail on a cluster (`tests/e2e/contract.rs` runs the same requests against
//! both):
//! - a create carrying a `resourceVersion`: `500` with no reason ("resourceVersion
//!   should not be set on objects to be created");
//! - a write whose `resourceVersion` is not the object's (an update, or a
//!   patch carrying one), a PUT whose `uid` is not the object's, a delete
//!   whose preconditions do not hold: `409 Conflict`;
//! - adding a finalizer to an object that is being deleted, changing
//!   `metadata.uid` in a patch: `422 Invalid`;
//! - invalid objects, `422 Invalid`: names (RFC 1123 subdomains, labels for
//!   namespaces); claims without access modes or a positive storage request;
//!   volumes without access modes, a `storage` capacity or exactly one
//!   volume source (with its required fields); classes without a
//!   provisioner, or with an unknown reclaim policy or binding mode;
//! - immutable fields, `422 Invalid`: a claim's spec (except setting
//!   `volumeName` or `storageClassName` once, and the request of a bound
//!   claim), a volume's source and volume mode, a class's provisioner,
//!   parameters, reclaim policy and binding mode;
//! - growing a bound claim whose class does not exist or does not allow
//!   volume expansion: `403 Forbidden` (the real server's resize admission).
//!
//! # Where the fake differs from a real API server
//! - Strategic merge patch is applied as a JSON merge patch: lists are
//!   replaced, not merged by key. For the core kinds served here that
//!   matters for `metadata.finalizers` (merged as a set by the real server),
//!   `spec.accessModes`, `spec.mountOptions`, `status.conditions` (merged by
//!   `type`) and `metadata.ownerReferences` (merged by `uid`). Server-side
//!   apply is not supported (`415`).
//! - No schema validation beyond the refusals above: other fields (labels,
//!   annotations, events, leases, most of a volume source) are taken as
//!   written; namespaces need not exist and deleting one deletes nothing else.
//! - Lists ignore `limit` and `continue` (one page) and any `resourceVersion`
//!   (always the latest state); watches from `resourceVersion` `""`/`"0"`
//!   start with the current state as `ADDED` events.
//! - Field selectors accept any dotted path (the real server accepts only a
//!   few per kind).
//! - A delete that removes an object at once answers `Status Success`, as the
//!   real server does for these kinds; `propagationPolicy`, grace periods and
//!   `dryRun` are not supported.
//! - The binder binds only volumes whose `claimRef` names the claim (no
//!   matching of unbound volumes by size and class); "in use" is approximated
//!   as "Bound" (there are no pods). Its events are created once per claim
//!   and reason, not aggregated with counts.

mod backend;
mod binder;
pub mod fixtures;
#[cfg(test)]
mod refusals;
mod server;
mod store;
#[cfg(test)]
mod tests;
mod validation;
mod waits;

pub use backend::{BackendState, BackendTimeout, DeleteAnswer, ProvisionAnswer, ScriptedBackend};
pub use store::ChangeType;
pub use waits::{EventWaitError, events_for, wait_for_event};

use std::convert::Infallible;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::Request;
use kube::client::Body;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineError, EngineStatus};
use store::Store;

/// A request verb, for fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

/// What an injected failure answers with: a Kubernetes `Status` error with
/// the code and reason the real API server gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// `409 Conflict`: for a request naming an object, with the real
    /// server's wording for a stale write ("the object has been modified").
    Conflict,
    /// `429 TooManyRequests`, as API priority and fairness answers.
    TooManyRequests,
    /// `500 InternalError`.
    InternalError,
    /// `503 ServiceUnavailable`.
    ServiceUnavailable,
    /// `504 Timeout`.
    Timeout,
    /// Any other status code, with the reason the real server gives it.
    Status(u16),
}

impl Fault {
    /// The HTTP status code it answers with.
    pub fn code(self) -> u16 {
        match self {
            Fault::Conflict => 409,
            Fault::TooManyRequests => 429,
            Fault::InternalError => 500,
            Fault::ServiceUnavailable => 503,
            Fault::Timeout => 504,
            Fault::Status(code) => code,
        }
    }

    /// The error answered to a request of `verb` on `kind` (object `name`, if it names one).
    fn error(self, verb: Verb, kind: &store::KindInfo, name: Option<&str>) -> store::ApiError {
        match (self, name) {
            (Fault::Conflict, Some(name)) => store::ApiError::conflict(kind, name),
            (_, Some(name)) => {
                store::ApiError::new(self.code(), format!("injected failure of {verb:?} on {}", kind.qualified()))
                    .about(kind, name)
            }
            (_, None) => {
                store::ApiError::new(self.code(), format!("injected failure of {verb:?} on {}", kind.qualified()))
            }
        }
    }
}

/// The resource a request is for: `group`, `plural` and subresource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FaultTarget {
    group: String,
    plural: String,
    subresource: Option<String>,
}

impl FaultTarget {
    fn of<K: Resource<DynamicType = ()>>(subresource: Option<&str>) -> Self {
        FaultTarget {
            group: K::group(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
            subresource: subresource.map(str::to_string),
        }
    }
}

struct Failure {
    verb: Verb,
    /// `None`: any resource.
    target: Option<FaultTarget>,
    remaining: u32,
    fault: Fault,
}

struct Latency {
    verb: Option<Verb>,
    /// `None`: any resource.
    target: Option<FaultTarget>,
    delay: Duration,
}

#[derive(Default)]
struct Faults {
    failures: Vec<Failure>,
    latency: Vec<Latency>,
}

/// The shared state behind a [`FakeCluster`] and its clients.
pub(crate) struct Inner {
    store: Mutex<Store>,
    /// Bumped after every write; watches and the binder wake on it.
    changed: watch::Sender<u64>,
    /// Bumped to end all open watches.
    drops: watch::Sender<u64>,
    /// Bumped to send a bookmark on every open watch that allows them.
    bookmark_requests: watch::Sender<u64>,
    faults: Mutex<Faults>,
    /// Lists served in pages: by continue token, the resourceVersion of the
    /// list and the items not served yet (a snapshot, as the real API
    /// server serves every page of one list at the same resourceVersion).
    pub(crate) pages: Mutex<std::collections::HashMap<String, (String, Vec<serde_json::Value>)>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn take_fault(&self, verb: Verb, resource: &FaultTarget) -> Option<Fault> {
        let mut faults = self.faults();
        let failure = faults
            .failures
            .iter_mut()
            .find(|f| f.verb == verb && f.remaining > 0 && f.target.as_ref().is_none_or(|t| t == resource))?;
        failure.remaining -= 1;
        let fault = failure.fault;
        faults.failures.retain(|f| f.remaining > 0);
        Some(fault)
    }

    fn latency_for(&self, verb: Verb, resource: &FaultTarget) -> Option<Duration> {
        self.faults()
            .latency
            .iter()
            .filter(|l| l.verb.is_none_or(|v| v == verb) && l.target.as_ref().is_none_or(|t| t == resource))
            .map(|l| l.delay)
            .max()
    }
}

/// An in-process API server. Clones share the cluster.
#[derive(Clone)]
pub struct FakeCluster {
    inner: Arc<Inner>,
}

impl Default for FakeCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Debug for FakeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCluster").field("resource_version", &self.resource_version()).finish()
    }
}

/// A client's link to the cluster, which a test can cut.
#[derive(Clone, Debug)]
pub struct Connection {
    severed: Arc<AtomicBool>,
    signal: watch::Sender<bool>,
}

impl Connection {
    /// Cuts the client off: its requests from now on never answer, and its
    /// open watches stop delivering (they neither end nor error).
    pub fn sever(&self) {
        self.severed.store(true, Ordering::SeqCst);
        self.signal.send_replace(true);
    }

    /// Reconnects the client: requests it sends from now on are served.
    /// Requests and watches caught by [`sever`](Self::sever) stay hung, as
    /// on a connection that died: the client must give up on them (its own
    /// timeouts) and try again.
    pub fn restore(&self) {
        self.severed.store(false, Ordering::SeqCst);
        self.signal.send_replace(false);
    }
}

/// One change in a [`FakeCluster`]'s history (see [`FakeCluster::history`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HistoryEntry<K> {
    /// When the write landed, by the Tokio clock.
    pub at: tokio::time::Instant,
    /// The cluster's resourceVersion after the write.
    pub resource_version: u64,
    /// What the write did.
    pub change: ChangeType,
    /// The object after the write (its last state, for a deletion).
    pub object: K,
}

/// [`FakeCluster::wait_for`] gave up.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {kind} {name:?}; last seen: {last}")]
pub struct WaitTimeout {
    /// The kind waited for.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// How long was waited.
    pub timeout: Duration,
    /// The object as last seen (JSON), or "absent".
    pub last: String,
}

/// How long [`FakeCluster::wait_for`] waits, on the Tokio clock.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(300);

impl FakeCluster {
    /// An empty cluster without a binder: claims stay as written.
    pub fn new() -> Self {
        let (changed, _) = watch::channel(0);
        let (drops, _) = watch::channel(0);
        let (bookmark_requests, _) = watch::channel(0);
        FakeCluster {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::new(10_000)),
                changed,
                drops,
                bookmark_requests,
                faults: Mutex::default(),
                pages: Mutex::default(),
            }),
        }
    }

    /// An empty cluster with a PV binder (the part of kube-controller-manager
    /// that provisioning needs), and the protection finalizers that the
    /// real API server's admission adds. Must be called inside a Tokio
    /// runtime: the binder is a task, woken by every write.
    pub fn with_binder() -> Self {
        let cluster = Self::new();
        cluster.inner.lock().protection = true;
        binder::spawn(&cluster.inner);
        cluster
    }

    /// A new client of this cluster.
    pub fn client(&self) -> Client {
        self.connect().0
    }

    /// A new client of this cluster, and the link that can cut it off.
    pub fn connect(&self) -> (Client, Connection) {
        let (signal, _) = watch::channel(false);
        let connection = Connection { severed: Arc::new(AtomicBool::new(false)), signal };
        let (inner, link) = (self.inner.clone(), connection.clone());
        let service = tower::service_fn(move |request: Request<Body>| {
            let (inner, link) = (inner.clone(), link.clone());
            async move {
                if link.severed.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                let cut = link.signal.subscribe();
                let response = inner.handle(request).await.map(|body| stops_when_cut(body, cut));
                Ok::<_, Infallible>(response)
            }
        });
        (Client::new(service, "default"), connection)
    }

    /// The cluster's current resourceVersion (the global write counter).
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().resource_version()
    }

    fn add_failure(&self, verb: Verb, target: Option<FaultTarget>, fault: Fault, times: u32) {
        self.inner.faults().failures.push(Failure { verb, target, remaining: times, fault });
    }

    /// The next `times` requests of `verb` on objects of kind `K` (not on
    /// their `/status`) answer with `fault` and change nothing.
    ///
    /// ```
    /// # use k8s_openapi::api::core::v1::PersistentVolume;
    /// # use provisioner_core::testing::{FakeCluster, Fault, Verb};
    /// # let cluster = FakeCluster::new();
    /// // The engine's next two volume saves get `500 InternalError`.
    /// cluster.fail_next::<PersistentVolume>(Verb::Create, Fault::InternalError, 2);
    /// ```
    pub fn fail_next<K: Resource<DynamicType = ()>>(&self, verb: Verb, fault: Fault, times: u32) {
        self.add_failure(verb, Some(FaultTarget::of::<K>(None)), fault, times);
    }

    /// The next `times` requests of `verb` on the `/status` of objects of
    /// kind `K` answer with `fault`.
    pub fn fail_next_status<K: Resource<DynamicType = ()>>(&self, verb: Verb, fault: Fault, times: u32) {
        self.add_failure(verb, Some(FaultTarget::of::<K>(Some("status"))), fault, times);
    }

    /// The next `times` requests of `verb`, on any resource, answer with `fault`.
    pub fn fail_next_any(&self, verb: Verb, fault: Fault, times: u32) {
        self.add_failure(verb, None, fault, times);
    }

    fn put_latency(&self, verb: Option<Verb>, target: Option<FaultTarget>, delay: Duration) {
        let mut faults = self.inner.faults();
        faults.latency.retain(|l| !(l.verb == verb && l.target == target));
        if !delay.is_zero() {
            faults.latency.push(Latency { verb, target, delay });
        }
    }

    /// Requests of `verb` (any: `None`) on objects of kind `K` wait `delay`
    /// (on the Tokio clock) before they are served. A zero delay removes the rule.
    pub fn set_latency<K: Resource<DynamicType = ()>>(&self, verb: Option<Verb>, delay: Duration) {
        self.put_latency(verb, Some(FaultTarget::of::<K>(None)), delay);
    }

    /// Requests of `verb` (any: `None`) on any resource wait `delay` before
    /// they are served. A zero delay removes the rule.
    pub fn set_latency_any(&self, verb: Option<Verb>, delay: Duration) {
        self.put_latency(verb, None, delay);
    }

    /// Removes all injected failures and latency.
    pub fn clear_faults(&self) {
        *self.inner.faults() = Faults::default();
    }

    /// Ends every open watch, as a broken connection would.
    pub fn drop_watches(&self) {
        self.inner.drops.send_modify(|n| *n += 1);
    }

    /// Sends a bookmark now on every open watch that allows bookmarks
    /// (they also get one after each idle minute).
    pub fn send_bookmarks(&self) {
        self.inner.bookmark_requests.send_modify(|n| *n += 1);
    }

    /// Forgets the change history: a watch resuming from an earlier
    /// resourceVersion gets `410 Gone` and its watcher re-lists.
    pub fn compact(&self) {
        self.inner.lock().compact();
    }

    /// Keeps at most `changes` changes for resuming watches (default 10 000).
    pub fn set_history_limit(&self, changes: usize) {
        self.inner.lock().history_limit = changes.max(1);
    }

    /// The changes to objects of kind `K` that the history still holds,
    /// oldest first: creates, updates (the binder's too) and deletions, each
    /// with the Tokio instant it landed. The history keeps the last 10 000
    /// changes of all kinds ([`set_history_limit`](Self::set_history_limit))
    /// and [`compact`](Self::compact) empties it.
    pub fn history<K>(&self) -> Vec<HistoryEntry<K>>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let Some(kind) = kind_of::<K>() else { return Vec::new() };
        let store = self.inner.lock();
        let changes = store.changes_since(kind, store.compacted).unwrap_or_default();
        changes
            .into_iter()
            .filter_map(|c| {
                let object = serde_json::from_value(c.object).ok()?;
                Some(HistoryEntry { at: c.at, resource_version: c.rv, change: c.type_, object })
            })
            .collect()
    }

    /// The object `namespace/name` of kind `K` (`namespace` is ignored for
    /// cluster-scoped kinds), read directly from the store.
    pub fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let kind = kind_of::<K>()?;
        let ns = if kind.namespaced { namespace } else { "" };
        let value = self.inner.lock().get(kind, ns, name).ok()?;
        serde_json::from_value(value).ok()
    }

    /// Waits until `cond` holds for the object `namespace/name` (`None`: it
    /// does not exist), woken by the cluster's writes, for at most
    /// [`WAIT_TIMEOUT`] on the Tokio clock.
    pub async fn wait_for<K>(
        &self,
        namespace: &str,
        name: &str,
        cond: impl Fn(Option<&K>) -> bool,
    ) -> Result<Option<K>, WaitTimeout>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Debug,
    {
        let mut changed = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            changed.borrow_and_update();
            let current = self.get::<K>(namespace, name);
            if cond(current.as_ref()) {
                return Ok(current);
            }
            let woke = tokio::time::timeout_at(deadline, changed.changed()).await;
            if !matches!(woke, Ok(Ok(()))) {
                return Err(WaitTimeout {
                    kind: K::kind(&()).to_string(),
                    name: name.to_string(),
                    timeout: WAIT_TIMEOUT,
                    last: current.map_or_else(|| "absent".to_string(), |o| format!("{o:?}")),
                });
            }
        }
    }

    /// Builds an engine on a new client of this cluster (with `build`) and
    /// runs it as a task. See the module docs for crashing and restarting.
    pub fn spawn_engine(
        &self,
        build: impl FnOnce(Client) -> Result<Engine, EngineError>,
    ) -> Result<RunningEngine, EngineError> {
        let (client, connection) = self.connect();
        let engine = build(client)?;
        let status = engine.status();
        let token = CancellationToken::new();
        let handle = tokio::spawn(engine.run(token.clone()));
        Ok(RunningEngine { status, token, handle, connection })
    }
}

/// A response body that stops where it is once `cut` turns true.
fn stops_when_cut(body: server::ResponseBody, cut: watch::Receiver<bool>) -> server::ResponseBody {
    use http_body_util::BodyExt;
    let frames = futures::stream::unfold((body, cut), |(mut body, mut cut)| async move {
        tokio::select! {
            frame = body.frame() => frame.map(|f| (f, (body, cut))),
            true = async { cut.wait_for(|c| *c).await.is_ok() } => std::future::pending().await,
        }
    });
    http_body_util::StreamBody::new(frames).boxed_unsync()
}

fn kind_of<K: Resource<DynamicType = ()>>() -> Option<&'static store::KindInfo> {
    store::find_kind(&K::group(&()), &K::version(&()), &K::plural(&()))
}

/// An engine running as a task against a [`FakeCluster`].
pub struct RunningEngine {
    status: watch::Receiver<EngineStatus>,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), EngineError>>,
    connection: Connection,
}

impl RunningEngine {
    /// The engine's status.
    pub fn status(&self) -> watch::Receiver<EngineStatus> {
        self.status.clone()
    }

    /// Waits until the engine's caches have synced (or it stopped).
    pub async fn synced(&mut self) {
        let _ = self.status.wait_for(|s| s.synced).await;
    }

    /// Shuts the engine down gracefully and returns what `run` returned.
    pub async fn stop(self) -> Result<(), EngineError> {
        self.token.cancel();
        match self.handle.await {
            Ok(result) => result,
            Err(e) => Err(EngineError::Config(format!("the engine task failed: {e}"))),
        }
    }

    /// Kills the engine as a crash would: its client is cut off first, then
    /// its task is aborted; nothing shuts down cleanly.
    pub fn crash(self) {
        self.connection.sever();
        self.handle.abort();
    }
}
