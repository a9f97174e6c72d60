//! What workers and watches share: the client, the caches, the queue, and
//! under one lock the engine's memory of every volume and of its own writes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::time::Instant;
use tracing::warn;

use super::EngineConfig;
use crate::cache::{self, Cached, JsonStore};
use crate::decision::{Names, Note};
use crate::events::EventType;
use crate::events::lane::{EventLane, Pending};
use crate::keys;
use crate::memory::Memories;
use crate::metrics::Metrics;
use crate::own_writes::{Expect, Side};
use crate::provisioner::Provisioner;
use crate::queue::WorkQueue;

/// The engine's memory, all in one lock.
#[derive(Default)]
pub(super) struct State {
    /// One record per volume ([`crate::memory::Memory`]), its own writes included.
    pub(super) memory: Memories,
    /// resourceVersions produced by the engine's own writes, whose watch
    /// events must not trigger another pass (the writer already knows).
    pub(super) echoes: HashSet<String>,
}

pub(super) struct Ctx {
    pub(super) client: Client,
    pub(super) provisioner: Arc<dyn Provisioner>,
    pub(super) names: Names,
    pub(super) config: EngineConfig,
    pub(super) metrics: Metrics,
    pub(super) queue: WorkQueue,
    pub(super) claims: JsonStore<PersistentVolumeClaim>,
    pub(super) volumes: JsonStore<PersistentVolume>,
    pub(super) classes: Store<StorageClass>,
    pub(super) events: EventLane,
    pub(super) journal: Arc<super::journal::Journal>,
    pub(super) state: Mutex<State>,
}

impl Ctx {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn key_of_claim(&self, claim: &PersistentVolumeClaim) -> String {
        claim
            .annotations()
            .get(keys::INTENT_VOLUME)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| self.provisioner.volume_name(claim))
    }

    pub(super) fn claim_api(&self, namespace: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub(super) fn volume_api(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    /// The engine is about to write the claim or volume of `key`.
    pub(super) fn writing(&self, key: &str, side: Side) {
        self.wrote();
        self.state().memory.writes(key, |w| w.writing(side));
    }

    /// The write announced by [`writing`](Ctx::writing) produced `expect`;
    /// passes over `key` wait until the cache shows it.
    pub(super) fn wrote_state(&self, key: &str, side: Side, expect: Option<Expect>) {
        let requeue = self.state().memory.writes(key, |w| w.wrote(side, expect, Instant::now()));
        if requeue {
            self.queue.add(key);
        }
    }

    /// The watch delivered a state (`None`: the deletion) of the claim or volume of `key`.
    pub(super) fn observed(&self, key: &str, side: Side, rv: Option<&str>) {
        let requeue = self.state().memory.existing_writes(key, |w| w.observed(side, rv)).unwrap_or(false);
        if requeue {
            self.queue.add(key);
        }
    }

    /// A re-list that started at `started` replaced the `side` cache.
    pub(super) fn relisted(&self, side: Side, started: Instant) {
        let requeue = self.state().memory.relisted(side, started);
        for key in requeue {
            self.queue.add(&key);
        }
    }

    /// Runs a backend call, counted as in flight, within `deadline` if
    /// one is set; past it, `late(deadline)` is the answer.
    pub(super) async fn backend_call<T>(
        &self,
        deadline: Option<std::time::Duration>,
        call: impl std::future::Future<Output = T>,
        late: impl FnOnce(std::time::Duration) -> T,
    ) -> T {
        self.metrics.in_flight.inc();
        let result = match deadline {
            Some(t) => tokio::time::timeout(t, call).await.unwrap_or_else(|_| late(t)),
            None => call.await,
        };
        self.metrics.in_flight.dec();
        result
    }

    pub(super) fn wrote(&self) {
        self.metrics.api_writes.inc();
    }

    /// Remembers the state an own write produced, so its watch event is ignored.
    pub(super) fn expect_echo<K: Resource>(&self, obj: &K) {
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
    pub(super) fn is_echo<K: Resource>(&self, obj: &K) -> bool {
        obj.meta().resource_version.as_ref().is_some_and(|rv| self.state().echoes.remove(rv))
    }

    pub(super) fn event(
        &self,
        regarding: k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        // Events are informational: they go on their own lane, never in
        // the way of provisioning (see `events::lane`).
        self.events.offer(Pending { regarding, type_, reason: reason.to_string(), action: action.to_string(), note });
    }

    pub(super) fn claim_event(&self, claim: &PersistentVolumeClaim, type_: EventType, reason: &str, note: String) {
        self.event(event_ref(claim), type_, reason, "Provision", note);
    }

    /// Publishes an event the rules asked for about the claim.
    pub(super) fn claim_note(&self, claim: &PersistentVolumeClaim, note: Note) {
        self.claim_event(claim, note.type_, note.reason, note.message);
    }

    /// Publishes an event the rules asked for about the volume.
    pub(super) fn volume_note(&self, volume: &PersistentVolume, note: Note) {
        self.event(event_ref(volume), note.type_, note.reason, "Delete", note.message);
    }
}

/// The reference events are about. Without the resourceVersion, so repeats
/// of one event about an object that changed in between still aggregate.
pub(super) fn event_ref<K: Resource<DynamicType = ()>>(obj: &K) -> k8s_openapi::api::core::v1::ObjectReference {
    let mut r = obj.object_ref(&());
    r.resource_version = None;
    r
}

pub(super) fn strip<K: Resource>(obj: &mut K) {
    // managedFields and the last-applied copy are most of an object's size
    // and the engine reads neither.
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The claim's key in the claim cache.
pub(super) fn claim_ref(claim: &PersistentVolumeClaim) -> Box<str> {
    cache::key(claim.namespace().as_deref(), &claim.name_any())
}

/// Decodes a cached object. One that does not decode makes the caller stop
/// (and retry later) rather than act as if it did not exist.
pub(super) fn decoded<K>(cached: Option<Cached<K>>) -> Result<Option<Arc<K>>, serde_json::Error>
where
    K: Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    cached.map(|c| c.decode().map(Arc::new)).transpose()
}

/// Every object of a cache, decoded one at a time as the caller iterates (so
/// a pass over a large cache never holds it all decoded); one that does not
/// decode is skipped with a warning.
pub(super) fn decoded_all<K>(store: &JsonStore<K>) -> impl Iterator<Item = K> + use<K>
where
    K: Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    store.state().into_iter().filter_map(|c| {
        c.decode().inspect_err(|e| warn!(object = ?c, error = %e, "a cached object does not decode")).ok()
    })
}
