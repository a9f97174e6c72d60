//! The engine's own end-to-end cases on the testing kit: a
//! `FakeCluster::with_binder()` under paused Tokio time, with the kit's
//! in-memory [`ScriptedBackend`]. These cases are engine logic (retries,
//! events, metrics, clean-up, rescheduling, leader election) that does not
//! depend on the real API server's exact behaviour, so they run here in
//! milliseconds instead of against the control plane; `tests/e2e/engine.rs`
//! keeps the cases that exercise the real binder and API server. The assertions are the
//! real-plane ones: same counts, same event reasons and messages.
//!
//! The last three cases are faults only the kit can give on demand: a
//! volume create answered with `500` twice; watches dropped (with the
//! history compacted) while a provision call is in flight; and a volume
//! watch down while volumes are released, coming back through a re-list
//! served in slow pages.
//!
//! Kept on the real plane only: immediate provisioning, whose "at most 3
//! writes, no GET per volume" is counted by `provisioner_core::client`'s
//! request layer, which builds its own client from a `kube::Config` and so
//! cannot wrap the kit's in-process service; and the legacy class
//! annotation, which is about what the real binder reads.

use std::sync::Arc;
use std::time::Duration;

use e2e_support::engine::quick_backoff;
use e2e_support::{default_timeout, wait_for};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use provisioner_core::engine::EngineStatus;
use provisioner_core::metrics::Metrics;
use provisioner_core::testing::fixtures::{claim, claim_phase, class, volume_phase};
use provisioner_core::testing::{FakeCluster, Fault, ProvisionAnswer, ScriptedBackend, Verb};
use provisioner_core::{Cause, Engine, EngineBuilder, EngineError, ProvisionError, Provisioner, keys};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The namespace of every claim here; each test has a cluster of its own.
const NS: &str = "engine";
/// The provisioner name of the engines under test.
const NAME: &str = "e2e.provisioner-rs.io/kit";

/// One test's cluster and the test's own client of it.
struct Kit {
    cluster: FakeCluster,
    client: Client,
}

impl Kit {
    fn new() -> Kit {
        let cluster = FakeCluster::with_binder();
        let client = cluster.client();
        Kit { cluster, client }
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn volumes(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    async fn class(&self, name: &str, policy: &str, wffc: bool) {
        let k = class(name, NAME).reclaim_policy(policy);
        let k = if wffc { k.wait_for_first_consumer() } else { k.immediate() };
        Api::<StorageClass>::all(self.client.clone()).create(&PostParams::default(), &k.build()).await.expect("class");
    }

    /// Waits for an event about the claim `name` with `reason`.
    async fn event(&self, name: &str, reason: &str) -> Event {
        self.cluster.wait_for_event(NS, name, reason).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The events about the claim `name` with `reason`, now.
    fn events(&self, name: &str, reason: &str) -> Vec<Event> {
        self.cluster.events_for(NS, name, reason)
    }

    async fn create_claim(&self, c: PersistentVolumeClaim) -> PersistentVolumeClaim {
        self.claims().create(&PostParams::default(), &c).await.expect("claim")
    }

    /// Starts an engine as `start` in `e2e_support::engine` does (quick
    /// backoff, no resync, 16 workers, metrics), on a client of its own.
    async fn engine(
        &self,
        backend: Arc<dyn Provisioner>,
        customize: impl FnOnce(EngineBuilder) -> EngineBuilder,
    ) -> KitEngine {
        let mut registry = Registry::default();
        let builder = Engine::builder(self.cluster.client(), NAME, backend)
            .backoff(quick_backoff())
            .resync(None)
            .workers(16)
            .metrics(&mut registry);
        let engine = customize(builder).build().expect("valid engine configuration");
        let metrics = engine.metrics();
        let mut status = engine.status();
        let token = CancellationToken::new();
        let handle = tokio::spawn(engine.run(token.clone()));
        tokio::time::timeout(default_timeout(), status.wait_for(|s| s.synced))
            .await
            .expect("engine caches synced in time")
            .expect("engine running");
        KitEngine { token, metrics, registry, status, handle }
    }

    async fn wait_claim(&self, name: &str, what: &str, cond: impl Fn(Option<&PersistentVolumeClaim>) -> bool) {
        wait_for(&self.claims(), name, what, default_timeout(), cond).await.unwrap_or_else(|e| panic!("{e}"));
    }

    async fn bound(&self, name: &str) -> PersistentVolumeClaim {
        wait_for(&self.claims(), name, "the claim to be Bound", default_timeout(), |c| {
            c.is_some_and(|c| claim_phase(c) == "Bound")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("claim exists")
    }

    /// Creates the claims `names` of `class` and waits until each is Bound;
    /// returns their volumes' names in the same order.
    async fn bound_claims(&self, names: &[&str], class: &str) -> Vec<String> {
        for n in names {
            self.create_claim(claim(NS, n).class(class).build()).await;
        }
        let mut pvs = Vec::new();
        for n in names {
            let bound = self.bound(n).await;
            pvs.push(bound.spec.and_then(|s| s.volume_name).expect("bound to a volume"));
        }
        pvs
    }

    async fn volume_gone(&self, name: &str) {
        wait_for(&self.volumes(), name, "the volume to be gone", default_timeout(), |v| v.is_none())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    async fn touch(&self, name: &str) {
        let patch = json!({ "metadata": { "labels": { "touched": "yes" } } });
        self.claims().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("touch");
        self.wait_claim(name, "the touch", |c| c.is_some_and(|c| c.labels().contains_key("touched"))).await;
    }

    async fn select_node(&self, name: &str, node: &str) {
        let patch = json!({ "metadata": { "annotations": { keys::SELECTED_NODE: node } } });
        self.claims().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("select node");
    }
}

struct KitEngine {
    token: CancellationToken,
    metrics: Metrics,
    registry: Registry,
    status: watch::Receiver<EngineStatus>,
    handle: tokio::task::JoinHandle<Result<(), EngineError>>,
}

impl KitEngine {
    async fn stop(self) -> Result<(), EngineError> {
        self.token.cancel();
        self.handle.await.expect("engine task")
    }

    fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encode metrics");
        text
    }
}

#[path = "journal.rs"]
mod journal;

fn pv_name(c: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", c.uid().expect("claim uid"))
}

#[tokio::test(start_paused = true)]
async fn block_claim_for_a_provisioner_without_block_support_gets_one_warning() {
    let kit = Kit::new();
    kit.class("block", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    kit.create_claim(claim(NS, "raw").class("block").block().build()).await;
    let ev = kit.event("raw", "ProvisioningFailed").await;
    assert_eq!(ev.note.as_deref(), Some(format!("{NAME} does not support block volume provisioning").as_str()));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    // A later change to the claim does not repeat the warning or call the backend.
    kit.touch("raw").await;
    assert!(backend.provision_calls().is_empty(), "the backend is never asked");
    let warnings = kit.events("raw", "ProvisioningFailed");
    assert_eq!(warnings.len(), 1, "one warning, not a retry loop");
    assert!(warnings[0].series.is_none(), "and no repeats of it");
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_provisioner_asking_to_be_polled_is_looked_at_on_its_interval_not_a_growing_backoff() {
    let kit = Kit::new();
    kit.class("polled", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let creating =
        || ProvisionAnswer::Fail(ProvisionError::retry_after("creating", std::time::Duration::from_secs(15)));
    backend.script([creating(), creating(), creating()]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let started = tokio::time::Instant::now();
    kit.create_claim(claim(NS, "data").class("polled").build()).await;
    kit.bound("data").await;
    let took = started.elapsed();
    // Three polls of 15 s; the engine's own backoff (1 s, 2 s, 4 s) would be done in 7 s.
    assert!(took >= std::time::Duration::from_secs(45) && took < std::time::Duration::from_secs(55), "{took:?}");
    assert_eq!(backend.provision_calls().len(), 4);
    let provisioning = kit.events("data", "Provisioning");
    assert_eq!(provisioning.len(), 1, "one Provisioning event");
    assert_eq!(provisioning[0].series.as_ref().map(|s| s.count), None, "published once, not repeated per poll");
    assert!(kit.events("data", "ProvisioningFailed").is_empty(), "polling is no failure");
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_provisioner_warns_on_the_claim_and_finishes_after_the_claim_is_deleted() {
    let kit = Kit::new();
    kit.class("stalled", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let stalled = || ProvisionAnswer::Fail(ProvisionError::stalled("could not get credentials"));
    backend.script([stalled(), stalled()]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b.give_up_after(1)).await;

    let created = kit.create_claim(claim(NS, "data").class("stalled").build()).await;
    let warned = kit.event("data", "ProvisioningFailed").await;
    assert_eq!(warned.note.as_deref(), Some("could not get credentials"));
    // Deleted while stalled: the work that may exist is finished, saved and then deleted.
    kit.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    let pv = pv_name(&created);
    backend
        .wait_until(|s| s.created == 1 && !s.has(&pv))
        .await
        .expect("the backend volume is created and then deleted");
    kit.volume_gone(&pv).await;
    assert_eq!(backend.provision_calls().len(), 3, "never given up on, though the limit is 1");
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn per_class_counters_are_scraped_at_zero_before_the_first_claim() {
    let kit = Kit::new();
    kit.class("early", "Delete", false).await;
    let engine = kit.engine(Arc::new(ScriptedBackend::new()), |b| b).await;
    kit.class("late", "Delete", false).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let text = engine.metrics_text();
    for class in ["early", "late"] {
        for family in [
            "controller_persistentvolumeclaim_provision_failed_total",
            "controller_persistentvolume_delete_failed_total",
        ] {
            assert!(text.contains(&format!("{family}{{class=\"{class}\"}} 0")), "{family} for {class}:\n{text}");
        }
    }
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn provisioner_failing_twice_then_succeeding_reports_failures_and_success() {
    let kit = Kit::new();
    kit.class("flaky", "Delete", false).await;
    let backend = ScriptedBackend::new();
    backend.script([
        ProvisionAnswer::Fail(ProvisionError::failed("backend unavailable")),
        ProvisionAnswer::Fail(ProvisionError::failed("backend unavailable")),
    ]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    kit.create_claim(claim(NS, "data").class("flaky").build()).await;
    kit.bound("data").await;
    assert_eq!(backend.provision_calls().len(), 3);
    assert_eq!(backend.created(), 1);
    let failed = kit.event("data", "ProvisioningFailed").await;
    assert_eq!(failed.note.as_deref(), Some("backend unavailable"));
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    kit.event("data", "ProvisioningSucceeded").await;
    let warnings = kit.events("data", "ProvisioningFailed");
    assert_eq!(warnings.len(), 1, "identical warnings are aggregated into one event");
    assert_eq!(warnings[0].series.as_ref().map(|s| s.count), Some(2), "with a count of 2");

    assert_eq!(engine.metrics.provision_failures("flaky"), 2);
    assert_eq!(engine.metrics.provisioned("flaky"), 1);
    let text = engine.metrics_text();
    assert!(text.contains("controller_persistentvolumeclaim_provision_failed_total{class=\"flaky\"} 2"), "{text}");
    assert!(text.contains("controller_persistentvolumeclaim_provision_total{class=\"flaky\"} 1"), "{text}");
    assert!(text.contains("controller_persistentvolumeclaim_provision_duration_seconds_count"), "{text}");
    engine.stop().await.expect("clean shutdown");
}

/// An SDK-style error: a short message, the detail in its source.
#[derive(Debug)]
struct DispatchFailure(std::io::Error);

impl std::fmt::Display for DispatchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dispatch failure")
    }
}

impl std::error::Error for DispatchFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_provision_shows_the_whole_error_chain_in_the_claims_event() {
    let kit = Kit::new();
    kit.class("chained", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
    backend.script([ProvisionAnswer::Fail(ProvisionError::failed(Cause::context(
        "could not create file system",
        DispatchFailure(refused),
    )))]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    kit.create_claim(claim(NS, "data").class("chained").build()).await;
    let failed = kit.event("data", "ProvisioningFailed").await;
    assert_eq!(failed.note.as_deref(), Some("could not create file system: dispatch failure: connection refused"));
    kit.bound("data").await;
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn claim_deleted_while_provisioning_is_in_progress_has_its_backend_cleaned_up() {
    let kit = Kit::new();
    kit.class("slow", "Delete", false).await;
    let backend = ScriptedBackend::new();
    backend.script([
        ProvisionAnswer::CreateThenFail(ProvisionError::in_progress("file system creating")),
        ProvisionAnswer::CreateThenFail(ProvisionError::in_progress("file system creating")),
        ProvisionAnswer::CreateThenFail(ProvisionError::in_progress("file system creating")),
    ]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim(NS, "data").class("slow").build()).await;
    let pv = pv_name(&created);
    backend.wait_until(|s| s.has(&pv)).await.expect("the backend volume exists");
    kit.event("data", "Provisioning").await;
    kit.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");

    // The engine finishes, saves the volume, lets the claim go, and deletes it all.
    kit.wait_claim("data", "the claim to be gone", |c| c.is_none()).await;
    kit.volume_gone(&pv).await;
    backend.wait_until(|s| !s.has(&pv)).await.expect("the backend volume is deleted");
    assert_eq!(backend.created(), 1, "one backend volume, never two");
    assert_eq!(backend.deleted(), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn reschedule_removes_the_selected_node() {
    let kit = Kit::new();
    kit.class("local", "Delete", true).await;
    let backend = ScriptedBackend::new();
    backend
        .script([ProvisionAnswer::Fail(ProvisionError::reschedule("node-a has 1 GiB free, the claim asks for 5 GiB"))]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    kit.create_claim(claim(NS, "data").class("local").request("5Gi").selected_node("node-a").build()).await;
    let after = wait_for(&kit.claims(), "data", "the selected node to be removed", default_timeout(), |c| {
        c.is_some_and(|c| !c.annotations().contains_key(keys::SELECTED_NODE))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .expect("claim");
    assert!(
        !after.finalizers().contains(&keys::INTENT_FINALIZER.to_string()),
        "nothing was created, so no intent remains"
    );
    let ev = kit.event("data", "ProvisioningFailed").await;
    assert!(ev.note.as_deref().unwrap_or_default().contains("node-a has 1 GiB free"), "{ev:?}");
    assert_eq!(backend.created(), 0);

    // The scheduler picks another node; this time it works.
    kit.select_node("data", "node-b").await;
    kit.bound("data").await;
    assert_eq!(backend.volumes().values().next(), Some(&Some("node-b".to_string())));
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn released_volume_with_delete_policy_is_deleted_with_its_backend() {
    let kit = Kit::new();
    kit.class("delete", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim(NS, "data").class("delete").build()).await;
    kit.bound("data").await;
    let pv = pv_name(&created);
    kit.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    kit.wait_claim("data", "the claim to be gone", |c| c.is_none()).await;
    kit.volume_gone(&pv).await;
    assert!(!backend.has(&pv));
    assert_eq!(backend.delete_calls(), vec![pv.clone()], "exactly one delete call");
    assert_eq!(engine.metrics.deleted("delete"), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn released_volume_with_retain_policy_is_kept() {
    let kit = Kit::new();
    kit.class("retain", "Retain", false).await;
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim(NS, "data").class("retain").build()).await;
    kit.bound("data").await;
    let pv = pv_name(&created);
    kit.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    kit.wait_claim("data", "the claim to be gone", |c| c.is_none()).await;
    let released = wait_for(&kit.volumes(), &pv, "the volume to be Released", default_timeout(), |v| {
        v.is_some_and(|v| volume_phase(v) == "Released")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .expect("volume");
    assert_eq!(released.spec.and_then(|s| s.persistent_volume_reclaim_policy).as_deref(), Some("Retain"));
    assert!(backend.has(&pv), "the backend volume is kept");
    assert!(backend.delete_calls().is_empty());
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn volume_deleted_while_its_claim_exists_keeps_its_backend_until_the_claim_is_gone() {
    // This test asserted the opposite until the rule was corrected: a
    // `kubectl delete pv` on a Bound volume deleted its backend at once,
    // under the pods still using it.
    let kit = Kit::new();
    kit.class("pvfirst", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim(NS, "data").class("pvfirst").build()).await;
    kit.bound("data").await;
    let pv = pv_name(&created);
    kit.volumes().delete(&pv, &DeleteParams::default()).await.expect("delete volume");
    // Minutes of retries and resyncs pass (paused time): the claim still
    // exists, so the volume stays Terminating with its backend and our finalizer.
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    let held = kit.volumes().get(&pv).await.expect("the volume is still there");
    assert!(held.metadata.deletion_timestamp.is_some(), "Terminating");
    assert!(held.finalizers().contains(&keys::VOLUME_FINALIZER.to_string()), "our finalizer holds it");
    assert!(backend.has(&pv), "the backend volume is kept while its claim exists");
    assert!(backend.delete_calls().is_empty(), "{:?}", backend.delete_calls());
    let c = kit.claims().get("data").await.expect("the claim");
    assert_eq!(c.status.and_then(|s| s.phase).as_deref(), Some("Bound"));

    // The claim goes: backend delete once, then the volume goes.
    kit.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    kit.volume_gone(&pv).await;
    assert!(!backend.has(&pv));
    assert_eq!(backend.delete_calls(), vec![pv.clone()]);
    assert_eq!(backend.deleted(), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn claim_created_before_its_class_is_provisioned_once_the_class_exists() {
    let kit = Kit::new();
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    kit.create_claim(claim(NS, "data").class("late").build()).await;
    kit.class("late", "Delete", false).await;
    kit.bound("data").await;
    assert_eq!(backend.created(), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn wait_for_first_consumer_claim_waits_for_its_selected_node() {
    let kit = Kit::new();
    kit.class("wffc", "Delete", true).await;
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim(NS, "data").class("wffc").build()).await;
    // The binder leaves WaitForFirstConsumer claims to the scheduler and says so.
    kit.event("data", "WaitForFirstConsumer").await;
    assert!(backend.provision_calls().is_empty(), "nothing provisioned before a node is selected");

    // As the scheduler does:
    kit.select_node("data", "node-a").await;
    kit.bound("data").await;
    assert_eq!(
        backend.volumes().get(&pv_name(&created)),
        Some(&Some("node-a".to_string())),
        "the node reaches the backend"
    );
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn two_engines_elect_one_leader_and_the_other_takes_over_on_shutdown() {
    use provisioner_core::leader::{LeaderElectionConfig, lease_name_for};

    let kit = Kit::new();
    kit.class("ha", "Delete", false).await;
    let election = |identity: &str| {
        let mut cfg = LeaderElectionConfig::new(lease_name_for(NAME), NS, identity);
        cfg.lease_duration = Duration::from_secs(6);
        cfg.renew_deadline = Duration::from_secs(4);
        cfg.retry_period = Duration::from_secs(1);
        cfg
    };
    let (first_backend, second_backend) = (ScriptedBackend::new(), ScriptedBackend::new());
    let first = kit.engine(Arc::new(first_backend.clone()), |b| b.leader_election(election("first"))).await;
    let mut first_status = first.status.clone();
    tokio::time::timeout(Duration::from_secs(10), first_status.wait_for(|s| s.leading))
        .await
        .expect("the first replica leads")
        .expect("status");
    let second = kit.engine(Arc::new(second_backend.clone()), |b| b.leader_election(election("second"))).await;
    assert!(!second.status.borrow().leading, "only one replica leads");
    assert!(!second.status.borrow().ready(), "a follower is not ready");

    kit.create_claim(claim(NS, "one").class("ha").build()).await;
    kit.bound("one").await;
    assert_eq!((first_backend.created(), second_backend.created()), (1, 0), "only the leader provisions");

    // Measured on the paused clock: the lease timings, not the machine's speed.
    let stopped_at = tokio::time::Instant::now();
    first.stop().await.expect("clean shutdown");
    let mut second_status = second.status.clone();
    tokio::time::timeout(Duration::from_secs(6), second_status.wait_for(|s| s.leading))
        .await
        .expect("the follower takes over within the lease duration")
        .expect("status");
    let takeover = stopped_at.elapsed();
    assert!(takeover < Duration::from_secs(6), "released lease taken over in {takeover:?}");

    kit.create_claim(claim(NS, "two").class("ha").build()).await;
    kit.bound("two").await;
    assert_eq!((first_backend.created(), second_backend.created()), (1, 1), "the new leader provisions");
    second.stop().await.expect("clean shutdown");
}

// Kit-only faults.

#[tokio::test(start_paused = true)]
async fn volume_create_failing_with_500_twice_is_retried_into_one_bound_volume() {
    let kit = Kit::new();
    kit.class("flaky-api", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;
    kit.cluster.fail_next::<PersistentVolume>(Verb::Create, Fault::InternalError, 2);

    let created = kit.create_claim(claim(NS, "data").class("flaky-api").build()).await;
    let pv = pv_name(&created);
    let bound = kit.bound("data").await;
    assert_eq!(bound.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some(pv.as_str()));
    // A failed save is retried with the volume the backend already
    // returned: the backend is asked once.
    assert_eq!(backend.provision_calls(), vec![pv.clone()], "the backend is not asked again to save a volume");
    assert_eq!(backend.created(), 1, "one backend volume");
    let volumes = kit.volumes().list(&ListParams::default()).await.expect("list volumes");
    assert_eq!(volumes.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), vec![pv.clone()]);
    kit.event("data", "ProvisioningSucceeded").await;
    assert_eq!(engine.metrics.provision_failures("flaky-api"), 2, "each failed save counts as a failure");
    assert_eq!(engine.metrics.provisioned("flaky-api"), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn watches_dropped_mid_provisioning_do_not_cause_a_second_provision_call() {
    let kit = Kit::new();
    kit.class("gated", "Delete", false).await;
    // Provision calls start and then wait until the test resumes them.
    let backend = ScriptedBackend::new();
    backend.pause();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim(NS, "data").class("gated").build()).await;
    let pv = pv_name(&created);
    backend.wait_until(|s| !s.provision_calls.is_empty()).await.expect("provision called");

    // Every watch breaks and the history is gone: the engine's watchers
    // must re-list, and so see the claim again while its provision call is
    // still running. The paused clock lets their reconnect backoff pass.
    kit.cluster.drop_watches();
    kit.cluster.compact();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // And a change to the claim after the re-list.
    kit.touch("data").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(backend.provision_calls().len(), 1, "no second provision call while the first runs");

    backend.resume();
    let bound = kit.bound("data").await;
    assert_eq!(bound.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some(pv.as_str()));
    kit.event("data", "ProvisioningSucceeded").await;
    assert_eq!(backend.provision_calls(), vec![pv.clone()], "exactly one provision call");
    assert_eq!(backend.created(), 1);
    assert_eq!(engine.metrics.provisioned("gated"), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn volumes_released_while_the_volume_watch_was_down_are_deleted_after_the_relist() {
    let kit = Kit::new();
    kit.class("paged", "Delete", false).await;
    let backend = ScriptedBackend::new();
    // One volume per list page, so the re-list below takes several requests
    // and workers run between its pages.
    let engine = kit.engine(Arc::new(backend.clone()), |b| b.list_page_size(1)).await;
    let names = ["a", "b", "c"];
    let mut pvs = kit.bound_claims(&names, "paged").await;

    // The volume watch breaks and cannot come back; meanwhile the claims
    // are deleted and the binder releases their volumes.
    kit.cluster.fail_next::<PersistentVolume>(Verb::Watch, Fault::InternalError, 10_000);
    kit.cluster.fail_next::<PersistentVolume>(Verb::List, Fault::InternalError, 10_000);
    kit.cluster.drop_watches();
    for n in names {
        kit.claims().delete(n, &DeleteParams::default()).await.expect("delete claim");
    }
    for pv in &pvs {
        kit.cluster
            .wait_for::<PersistentVolume>("", pv, |v| v.is_some_and(|v| volume_phase(v) == "Released"))
            .await
            .unwrap_or_else(|e| panic!("the binder released the volumes: {e}"));
    }
    assert!(backend.delete_calls().is_empty(), "nothing deleted while the engine cannot see the volumes");

    // The history is gone, so the watch comes back through a re-list whose
    // pages are slow: every volume arrives Released in the re-list, and the
    // engine must act on what the re-list shows, not on what its cache held.
    kit.cluster.compact();
    kit.cluster.clear_faults();
    kit.cluster.set_latency::<PersistentVolume>(Some(Verb::List), Duration::from_millis(200));
    for pv in &pvs {
        if let Err(e) = kit.cluster.wait_for::<PersistentVolume>("", pv, |v| v.is_none()).await {
            panic!(
                "released volumes deleted after the re-list; delete calls so far: {:?}; {e}",
                backend.delete_calls()
            );
        }
    }
    let mut calls = backend.delete_calls();
    calls.sort();
    pvs.sort();
    assert_eq!(calls, pvs, "one delete call per volume");
    assert_eq!(backend.deleted(), 3);
    engine.stop().await.expect("clean shutdown");
}

/// The claim watch is down while claims are deleted: their volumes are
/// released and seen, but the claim cache still shows the claims (the
/// volume waits for them); the claim watch comes back through a re-list
/// that no longer holds them, with no deletion event of its own, and the
/// volumes must still be deleted.
#[tokio::test(start_paused = true)]
async fn claims_deleted_while_the_claim_watch_was_down_have_their_volumes_deleted_after_the_relist() {
    let kit = Kit::new();
    kit.class("gap", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;
    let names = ["a", "b"];
    let pvs = kit.bound_claims(&names, "gap").await;

    kit.cluster.fail_next::<PersistentVolumeClaim>(Verb::Watch, Fault::InternalError, 10_000);
    kit.cluster.fail_next::<PersistentVolumeClaim>(Verb::List, Fault::InternalError, 10_000);
    kit.cluster.drop_watches();
    for n in names {
        kit.claims().delete(n, &DeleteParams::default()).await.expect("delete claim");
    }
    for pv in &pvs {
        kit.cluster
            .wait_for::<PersistentVolume>("", pv, |v| v.is_some_and(|v| volume_phase(v) == "Released"))
            .await
            .unwrap_or_else(|e| panic!("the binder released the volumes: {e}"));
    }
    // The volume watch is back and shows them Released; the claims are still cached.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(backend.delete_calls().is_empty(), "nothing deleted while the cache shows the claims");

    kit.cluster.compact();
    kit.cluster.clear_faults();
    for pv in &pvs {
        if let Err(e) = kit.cluster.wait_for::<PersistentVolume>("", pv, |v| v.is_none()).await {
            panic!(
                "released volumes deleted after the claims' re-list; delete calls: {:?}; {e}",
                backend.delete_calls()
            );
        }
    }
    assert_eq!(backend.deleted(), 2);
    engine.stop().await.expect("clean shutdown");
}

/// Events go on their own lane with a rate of their own: a trickle of
/// events does not slow provisioning, and a Warning goes before the Normal
/// events waiting ahead of it.
#[tokio::test(start_paused = true)]
async fn events_on_their_own_lane_never_delay_provisioning_and_warnings_go_first() {
    use provisioner_core::client::ApiRate;
    let kit = Kit::new();
    kit.class("fast", "Delete", false).await;
    kit.class("block", "Delete", false).await;
    let backend = ScriptedBackend::new();
    // One event per 100 s after the first.
    let engine = kit.engine(Arc::new(backend.clone()), |b| b.event_rate(Some(ApiRate { qps: 0.01, burst: 1 }))).await;

    let started = tokio::time::Instant::now();
    for i in 0..10 {
        kit.create_claim(claim(NS, &format!("data-{i}")).class("fast").build()).await;
    }
    for i in 0..10 {
        kit.bound(&format!("data-{i}")).await;
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "provisioning waited for events: {took:?}");
    let succeeded = (0..10).filter(|i| !kit.events(&format!("data-{i}"), "ProvisioningSucceeded").is_empty()).count();
    assert!(succeeded <= 2, "{succeeded} events published; the lane's rate allows about one");
    let text = engine.metrics_text();
    let waiting = text
        .lines()
        .find_map(|l| l.strip_prefix("provisioner_events_waiting "))
        .and_then(|v| v.trim().parse::<i64>().ok());
    assert!(waiting.is_some_and(|n| n >= 8), "events wait on their lane: {waiting:?}");

    // A warning now goes before the Normal events that wait.
    kit.create_claim(claim(NS, "raw").class("block").block().build()).await;
    let warning = kit.event("raw", "ProvisioningFailed").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let after_warning =
        (0..10).filter(|i| !kit.events(&format!("data-{i}"), "ProvisioningSucceeded").is_empty()).count();
    assert!(after_warning < 10, "the warning waited for every Normal event ({after_warning} published first)");
    engine.stop().await.expect("clean shutdown");
}
