//! Prometheus metrics of the engine, registered into a registry the
//! embedding program owns (there is no global registry).
//!
//! The six `controller_persistentvolume*` names are the ones existing
//! dashboards and alerts use for external provisioners; the rest are this
//! engine's (`provisioner_*`).
//!
//! ```
//! use prometheus_client::registry::Registry;
//! use provisioner_core::metrics::Metrics;
//! let mut registry = Registry::default();
//! let metrics = Metrics::register(&mut registry);
//! metrics.provision_succeeded("fast", std::time::Duration::from_millis(20));
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains("controller_persistentvolumeclaim_provision_total{class=\"fast\"} 1"));
//! ```

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `class` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// StorageClass name.
    pub class: String,
}

fn duration_histogram() -> Histogram {
    // 10 ms to about 10 min: directory creation to EFS file systems.
    Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0])
}

type Hist = Family<ClassLabel, Histogram, fn() -> Histogram>;

/// The engine's metrics. Cheap to clone; clones share values.
#[derive(Clone)]
pub struct Metrics {
    provision_total: Family<ClassLabel, Counter>,
    provision_failed: Family<ClassLabel, Counter>,
    provision_duration: Hist,
    delete_total: Family<ClassLabel, Counter>,
    delete_failed: Family<ClassLabel, Counter>,
    delete_duration: Hist,
    /// Keys waiting in the work queue (ready or delayed).
    pub(crate) queue_depth: Gauge,
    /// Backend calls running now.
    pub(crate) in_flight: Gauge,
    /// Attempts scheduled after a failure or an in-progress answer.
    pub(crate) retries: Counter,
    /// 1 while this replica leads, else 0.
    pub(crate) leader: Gauge,
    /// API writes the engine made on its main budget (creates, patches,
    /// deletes; events are counted apart).
    pub(crate) api_writes: Counter,
    /// Commits of the intent journal (each also counted in `api_writes`).
    pub(crate) journal_commits: Counter,
    /// Commits that found the journal changed on the server and merged.
    pub(crate) journal_conflicts: Counter,
    /// Provisions that waited because the journal was full.
    pub(crate) journal_full: Counter,
    /// Entries the journal holds.
    pub(crate) journal_entries: Gauge,
    events: Family<EventTypeLabel, Counter>,
    events_dropped: Family<EventTypeLabel, Counter>,
    events_failed: Counter,
    events_coalesced: Counter,
    events_waiting: Gauge,
}

/// The `type` label of event metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventTypeLabel {
    r#type: String,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            provision_total: Family::default(),
            provision_failed: Family::default(),
            provision_duration: Family::new_with_constructor(duration_histogram),
            delete_total: Family::default(),
            delete_failed: Family::default(),
            delete_duration: Family::new_with_constructor(duration_histogram),
            queue_depth: Gauge::default(),
            in_flight: Gauge::default(),
            retries: Counter::default(),
            leader: Gauge::default(),
            api_writes: Counter::default(),
            journal_commits: Counter::default(),
            journal_conflicts: Counter::default(),
            journal_full: Counter::default(),
            journal_entries: Gauge::default(),
            events: Family::default(),
            events_dropped: Family::default(),
            events_failed: Counter::default(),
            events_coalesced: Counter::default(),
            events_waiting: Gauge::default(),
        };
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "controller_persistentvolumeclaim_provision",
            "Volumes provisioned, by class",
            m.provision_total.clone(),
        );
        registry.register(
            "controller_persistentvolumeclaim_provision_failed",
            "Failed provision attempts, by class",
            m.provision_failed.clone(),
        );
        registry.register_with_unit(
            "controller_persistentvolumeclaim_provision_duration",
            "Time of successful provision calls, by class",
            Unit::Seconds,
            m.provision_duration.clone(),
        );
        registry.register("controller_persistentvolume_delete", "Volumes deleted, by class", m.delete_total.clone());
        registry.register(
            "controller_persistentvolume_delete_failed",
            "Failed delete attempts, by class",
            m.delete_failed.clone(),
        );
        registry.register_with_unit(
            "controller_persistentvolume_delete_duration",
            "Time of successful delete calls, by class",
            Unit::Seconds,
            m.delete_duration.clone(),
        );
        registry.register("provisioner_queue_depth", "Volumes waiting for work", m.queue_depth.clone());
        registry.register("provisioner_in_flight_operations", "Backend calls running now", m.in_flight.clone());
        registry.register("provisioner_retries", "Attempts scheduled after a failure", m.retries.clone());
        registry.register("provisioner_leader", "1 while this replica is the leader", m.leader.clone());
        registry.register(
            "provisioner_api_writes",
            "API write requests made by the engine on its main budget (events apart)",
            m.api_writes.clone(),
        );
        registry.register(
            "provisioner_journal_commits",
            "Writes of the intent journal (group commits; also counted in provisioner_api_writes)",
            m.journal_commits.clone(),
        );
        registry.register(
            "provisioner_journal_conflicts",
            "Journal commits that found it changed on the server and merged",
            m.journal_conflicts.clone(),
        );
        registry.register(
            "provisioner_journal_full",
            "Provisions that waited because the intent journal was full",
            m.journal_full.clone(),
        );
        registry.register("provisioner_journal_entries", "Entries in the intent journal", m.journal_entries.clone());
        registry.register(
            "provisioner_events",
            "Events published (created or counted in a series), by type",
            m.events.clone(),
        );
        registry.register(
            "provisioner_events_dropped",
            "Events dropped by type: the event queue was full (Warnings go first) or the engine stopped",
            m.events_dropped.clone(),
        );
        registry.register(
            "provisioner_events_failed",
            "Events the API server refused or did not answer",
            m.events_failed.clone(),
        );
        registry.register(
            "provisioner_events_coalesced",
            "Events coalesced into an identical event still waiting",
            m.events_coalesced.clone(),
        );
        registry.register(
            "provisioner_events_waiting",
            "Events waiting on the events' own lane",
            m.events_waiting.clone(),
        );
        m
    }

    /// The event lane's counters, children of the registered families.
    pub(crate) fn event_lane_counts(&self) -> crate::events::lane::LaneCounts {
        // One child per call: a family's guard must be dropped before the
        // next `get_or_create` (which may need its write lock); in one array
        // expression both guards would live to its end and deadlock.
        let child = |family: &Family<EventTypeLabel, Counter>, t: &str| {
            family.get_or_create(&EventTypeLabel { r#type: t.to_string() }).clone()
        };
        crate::events::lane::LaneCounts {
            published: [child(&self.events, "Normal"), child(&self.events, "Warning")],
            dropped: [child(&self.events_dropped, "Normal"), child(&self.events_dropped, "Warning")],
            failed: self.events_failed.clone(),
            coalesced: self.events_coalesced.clone(),
            waiting: self.events_waiting.clone(),
        }
    }

    /// Events published so far (both types).
    pub fn events_published(&self) -> u64 {
        let get = |t: &str| self.events.get_or_create(&EventTypeLabel { r#type: t.to_string() }).get();
        get("Normal") + get("Warning")
    }

    /// Keys waiting in the work queue now (ready or delayed).
    pub fn queue_depth(&self) -> i64 {
        self.queue_depth.get()
    }

    /// Backend calls running now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Attempts scheduled after a failure or an in-progress answer, so far.
    pub fn retries(&self) -> u64 {
        self.retries.get()
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// API writes on the main budget so far (events are counted apart).
    pub fn api_writes(&self) -> u64 {
        self.api_writes.get()
    }

    /// Commits of the intent journal so far (each one write on the main budget).
    pub fn journal_commits(&self) -> u64 {
        self.journal_commits.get()
    }

    /// Entries the intent journal holds now.
    pub fn journal_entries(&self) -> i64 {
        self.journal_entries.get()
    }

    /// Metrics registered nowhere, for an engine built without a registry.
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    fn label(class: &str) -> ClassLabel {
        ClassLabel { class: class.to_string() }
    }

    /// A successful provision call that took `took`.
    pub fn provision_succeeded(&self, class: &str, took: Duration) {
        self.provision_total.get_or_create(&Self::label(class)).inc();
        self.provision_duration.get_or_create(&Self::label(class)).observe(took.as_secs_f64());
    }

    /// A provision attempt that failed (any outcome but a volume or "ignored").
    pub fn provision_failed(&self, class: &str) {
        self.provision_failed.get_or_create(&Self::label(class)).inc();
    }

    /// A successful backend delete that took `took`.
    pub fn delete_succeeded(&self, class: &str, took: Duration) {
        self.delete_total.get_or_create(&Self::label(class)).inc();
        self.delete_duration.get_or_create(&Self::label(class)).observe(took.as_secs_f64());
    }

    /// A failed delete attempt.
    pub fn delete_failed(&self, class: &str) {
        self.delete_failed.get_or_create(&Self::label(class)).inc();
    }

    /// Makes the per-class counters of `class` exist (at 0), so a scrape
    /// shows them before the first success or failure and an alert's
    /// `rate()` has a series from the start.
    pub fn class_seen(&self, class: &str) {
        let l = Self::label(class);
        drop(self.provision_total.get_or_create(&l));
        drop(self.provision_failed.get_or_create(&l));
        drop(self.delete_total.get_or_create(&l));
        drop(self.delete_failed.get_or_create(&l));
    }

    /// Successful provisions so far for `class` (for tests and benchmarks).
    pub fn provisioned(&self, class: &str) -> u64 {
        self.provision_total.get_or_create(&Self::label(class)).get()
    }

    /// Failed provision attempts so far for `class`.
    pub fn provision_failures(&self, class: &str) -> u64 {
        self.provision_failed.get_or_create(&Self::label(class)).get()
    }

    /// Successful deletes so far for `class`.
    pub fn deleted(&self, class: &str) -> u64 {
        self.delete_total.get_or_create(&Self::label(class)).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lane_metrics_are_exported_by_type() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let counts = m.event_lane_counts();
        counts.published[1].inc();
        counts.dropped[0].inc_by(2);
        counts.coalesced.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains(r#"provisioner_events_total{type="Warning"} 1"#), "{text}");
        assert!(text.contains(r#"provisioner_events_dropped_total{type="Normal"} 2"#), "{text}");
        assert!(text.contains("provisioner_events_coalesced_total 1"), "{text}");
        assert_eq!(m.events_published(), 1);
    }
}
