//! Waiting for events: on a [`FakeCluster`] (read from its store, woken by
//! its writes), and on any API server through a client (the kit's or a real
//! one), driven by a watch.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, Client};

use super::store::{EVENT, Filter};
use super::{FakeCluster, WAIT_TIMEOUT};

/// A wait for an event gave up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventWaitError {
    /// No such event came before the deadline.
    #[error(
        "timed out after {timeout:?} waiting for a {reason} event about {name:?} in namespace {namespace:?}; \
         events seen there (object:reason): {seen:?}"
    )]
    Timeout {
        /// The namespace of the events looked at.
        namespace: String,
        /// The name of the object the event was to be about.
        name: String,
        /// The reason waited for.
        reason: String,
        /// How long was waited, on the Tokio clock.
        timeout: Duration,
        /// The events seen meanwhile, as `object:reason`.
        seen: Vec<String>,
    },
    /// The watch of events failed.
    #[error("the watch of events failed: {0}")]
    Watch(#[source] watcher::Error),
    /// The watch of events ended (a watcher's stream does not, normally).
    #[error("the watch of events ended")]
    WatchEnded,
}

/// Whether `event` is about the object `name` and has `reason`.
fn about(event: &Event, name: &str, reason: &str) -> bool {
    event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name) && event.reason.as_deref() == Some(reason)
}

fn summary(event: &Event) -> String {
    let regarding = event.regarding.as_ref().and_then(|r| r.name.as_deref()).unwrap_or_default();
    format!("{regarding}:{}", event.reason.as_deref().unwrap_or_default())
}

impl FakeCluster {
    /// The events (`events.k8s.io/v1`) in `namespace` about the object
    /// `name` with `reason`, read from the store now. Events about
    /// cluster-scoped objects (volumes, classes) are in `default`, as on a
    /// real cluster. An event repeated by its reporter is one event with a
    /// `series`.
    pub fn events_for(&self, namespace: &str, name: &str, reason: &str) -> Vec<Event> {
        let stored = self.inner.lock().list(&EVENT, Some(namespace), &Filter::default());
        stored
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Event>(v).ok())
            .filter(|e| about(e, name, reason))
            .collect()
    }

    /// Waits until an event in `namespace` about the object `name` with
    /// `reason` exists, and returns it; woken by the cluster's writes, for
    /// at most [`WAIT_TIMEOUT`] on the Tokio clock.
    pub async fn wait_for_event(&self, namespace: &str, name: &str, reason: &str) -> Result<Event, EventWaitError> {
        let mut changed = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            changed.borrow_and_update();
            if let Some(event) = self.events_for(namespace, name, reason).into_iter().next() {
                return Ok(event);
            }
            let woke = tokio::time::timeout_at(deadline, changed.changed()).await;
            if !matches!(woke, Ok(Ok(()))) {
                let all = self.inner.lock().list(&EVENT, Some(namespace), &Filter::default());
                let seen = all.into_iter().filter_map(|v| serde_json::from_value::<Event>(v).ok());
                return Err(EventWaitError::Timeout {
                    namespace: namespace.into(),
                    name: name.into(),
                    reason: reason.into(),
                    timeout: WAIT_TIMEOUT,
                    seen: seen.map(|e| summary(&e)).collect(),
                });
            }
        }
    }
}

/// The events (`events.k8s.io/v1`) in `namespace` about the object `name`
/// with `reason`, as `client`'s API server lists them now: the kit's, or a
/// real one. Events about cluster-scoped objects are in `default`.
pub async fn events_for(client: &Client, namespace: &str, name: &str, reason: &str) -> kube::Result<Vec<Event>> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let listed = api.list(&ListParams::default()).await?;
    Ok(listed.items.into_iter().filter(|e| about(e, name, reason)).collect())
}

/// Waits until an event in `namespace` about the object `name` with
/// `reason` exists on `client`'s API server (the kit's, or a real one), and
/// returns it: driven by a watch of the namespace's events, for at most
/// `timeout` on the Tokio clock.
pub async fn wait_for_event(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> Result<Event, EventWaitError> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let event = match tokio::time::timeout_at(deadline, stream.try_next()).await {
            Ok(Ok(Some(watcher::Event::Apply(e) | watcher::Event::InitApply(e)))) => e,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return Err(EventWaitError::WatchEnded),
            Ok(Err(e)) => return Err(EventWaitError::Watch(e)),
            Err(_) => {
                return Err(EventWaitError::Timeout {
                    namespace: namespace.into(),
                    name: name.into(),
                    reason: reason.into(),
                    timeout,
                    seen,
                });
            }
        };
        if about(&event, name, reason) {
            return Ok(event);
        }
        seen.push(summary(&event));
    }
}
