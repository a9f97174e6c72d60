//! Kubernetes events (`events.k8s.io/v1`) with aggregation: a repeat of the
//! same event (same object, type, reason and message) within ten minutes
//! updates the first one's series count instead of creating another object,
//! so a retry loop cannot flood `kubectl describe` or etcd. A different
//! message is a different event, so no failure reason is hidden.

pub(crate) mod lane;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch};
use kube::{Api, Client};
use tokio::time::Instant;

/// How long a published event can be aggregated into.
const SERIES_WINDOW: Duration = Duration::from_secs(600);
/// Cache entries kept at most; the oldest half is dropped beyond it.
const MAX_CACHED: usize = 4096;

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    kind: String,
    name: String,
    type_: EventType,
    reason: String,
    note: String,
}

struct Cached {
    name: String,
    namespace: String,
    count: i32,
    first: Instant,
}

/// Publishes events for one controller instance. Clones share the cache.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    cache: Arc<Mutex<HashMap<Key, Cached>>>,
}

impl EventRecorder {
    /// A recorder reporting as `controller` (e.g. the provisioner name) from `instance`.
    pub fn new(client: Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        EventRecorder { client, controller: controller.into(), instance: instance.into(), cache: Arc::default() }
    }

    /// Publishes an event about `regarding`; a repeat within the window
    /// increments the first event's series instead.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            kind: regarding.kind.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            type_,
            reason: reason.to_string(),
            note: note.to_string(),
        };
        let now = Timestamp::now();
        let repeat = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, c| c.first.elapsed() < SERIES_WINDOW);
            if cache.len() > MAX_CACHED {
                let mut ages: Vec<_> = cache.values().map(|c| c.first).collect();
                ages.sort();
                let cutoff = ages[ages.len() / 2];
                cache.retain(|_, c| c.first >= cutoff);
            }
            cache.get_mut(&key).map(|c| {
                c.count += 1;
                (c.name.clone(), c.namespace.clone(), c.count)
            })
        };
        if let Some((name, namespace, count)) = repeat {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) }
            });
            api.patch(&name, &crate::keys::patch_params(), &Patch::Merge(&patch)).await?;
            return Ok(());
        }
        // Events about cluster-scoped objects (volumes) live in `default`.
        let namespace = regarding.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
        let name = format!("{}.{:x}", key.name, now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(namespace.clone()), ..Default::default() },
            event_time: Some(MicroTime(now)),
            action: Some(action.to_string()),
            reason: Some(reason.to_string()),
            note: Some(note.chars().take(1024).collect()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(match type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&crate::keys::post_params(), &event).await?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Cached { name, namespace, count: 1, first: Instant::now() });
        Ok(())
    }
}
