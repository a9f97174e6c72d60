//! The engine's own end-to-end cases on the testing kit: a
//! `FakeCluster::with_binder()` under paused Tokio time, with the in-memory
//! [`FakeBackend`]. These cases are engine logic (retries, events, metrics,
//! clean-up, rescheduling, leader election) that does not depend on the real
//! API server's exact behaviour, so they run here in milliseconds instead of
//! against the control plane; `tests/e2e/engine.rs` keeps the cases that
//! exercise the real binder and API server. The assertions are the
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

use async_trait::async_trait;
use e2e_support::backend::{FakeBackend, Scripted};
use e2e_support::engine::quick_backoff;
use e2e_support::fixtures::{claim, claim_phase, storage_class, volume_phase};
use e2e_support::{default_timeout, events_for, wait_for, wait_for_event};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use provisioner_core::engine::EngineStatus;
use provisioner_core::metrics::Metrics;
use provisioner_core::testing::{FakeCluster, Verb};
use provisioner_core::{
    Cause, DeleteError, Engine, EngineBuilder, EngineError, ProvisionError, ProvisionRequest, ProvisionedVolume,
    Provisioner, keys,
};
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
        let mut k = storage_class(name, NAME);
        k.reclaim_policy = Some(policy.into());
        if wffc {
            k.volume_binding_mode = Some("WaitForFirstConsumer".into());
        }
        Api::<StorageClass>::all(self.client.clone()).create(&PostParams::default(), &k).await.expect("class");
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

fn pv_name(c: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", c.uid().expect("claim uid"))
}

#[tokio::test(start_paused = true)]
async fn block_claim_for_a_provisioner_without_block_support_gets_one_warning() {
    let kit = Kit::new();
    kit.class("block", "Delete", false).await;
    let backend = FakeBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let mut c = claim("raw", "block", "1Gi");
    c.spec.as_mut().expect("spec").volume_mode = Some("Block".into());
    kit.create_claim(c).await;
    let ev = wait_for_event(&kit.client, NS, "raw", "ProvisioningFailed").await;
    assert_eq!(ev.note.as_deref(), Some(format!("{NAME} does not support block volume provisioning").as_str()));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    // A later change to the claim does not repeat the warning or call the backend.
    kit.touch("raw").await;
    assert!(backend.provision_calls().is_empty(), "the backend is never asked");
    let warnings = events_for(&kit.client, NS, "raw", "ProvisioningFailed").await;
    assert_eq!(warnings.len(), 1, "one warning, not a retry loop");
    assert!(warnings[0].series.is_none(), "and no repeats of it");
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_provisioner_asking_to_be_polled_is_looked_at_on_its_interval_not_a_growing_backoff() {
    let kit = Kit::new();
    kit.class("polled", "Delete", false).await;
    let backend = FakeBackend::new();
    let creating = || Scripted::Fail(ProvisionError::retry_after("creating", std::time::Duration::from_secs(15)));
    backend.script([creating(), creating(), creating()]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let started = tokio::time::Instant::now();
    kit.create_claim(claim("data", "polled", "1Gi")).await;
    kit.bound("data").await;
    let took = started.elapsed();
    // Three polls of 15 s; the engine's own backoff (1 s, 2 s, 4 s) would be done in 7 s.
    assert!(took >= std::time::Duration::from_secs(45) && took < std::time::Duration::from_secs(55), "{took:?}");
    assert_eq!(backend.provision_calls().len(), 4);
    let provisioning = events_for(&kit.client, NS, "data", "Provisioning").await;
    assert_eq!(provisioning.len(), 1, "one Provisioning event");
    assert_eq!(provisioning[0].series.as_ref().map(|s| s.count), None, "published once, not repeated per poll");
    assert!(events_for(&kit.client, NS, "data", "ProvisioningFailed").await.is_empty(), "polling is no failure");
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_provisioner_warns_on_the_claim_and_finishes_after_the_claim_is_deleted() {
    let kit = Kit::new();
    kit.class("stalled", "Delete", false).await;
    let backend = FakeBackend::new();
    let stalled = || Scripted::Fail(ProvisionError::stalled("could not get credentials"));
    backend.script([stalled(), stalled()]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b.give_up_after(1)).await;

    let created = kit.create_claim(claim("data", "stalled", "1Gi")).await;
    let warned = wait_for_event(&kit.client, NS, "data", "ProvisioningFailed").await;
    assert_eq!(warned.note.as_deref(), Some("could not get credentials"));
    // Deleted while stalled: the work that may exist is finished, saved and then deleted.
    kit.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    let pv = pv_name(&created);
    backend.wait_until("the backend volume is created and then deleted", |b| b.created() == 1 && !b.has(&pv)).await;
    kit.volume_gone(&pv).await;
    assert_eq!(backend.provision_calls().len(), 3, "never given up on, though the limit is 1");
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn per_class_counters_are_scraped_at_zero_before_the_first_claim() {
    let kit = Kit::new();
    kit.class("early", "Delete", false).await;
    let engine = kit.engine(Arc::new(FakeBackend::new()), |b| b).await;
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
    let backend = FakeBackend::new();
    backend.script([
        Scripted::Fail(ProvisionError::failed("backend unavailable")),
        Scripted::Fail(ProvisionError::failed("backend unavailable")),
    ]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    kit.create_claim(claim("data", "flaky", "1Gi")).await;
    kit.bound("data").await;
    assert_eq!(backend.provision_calls().len(), 3);
    assert_eq!(backend.created(), 1);
    let failed = wait_for_event(&kit.client, NS, "data", "ProvisioningFailed").await;
    assert_eq!(failed.note.as_deref(), Some("backend unavailable"));
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    wait_for_event(&kit.client, NS, "data", "ProvisioningSucceeded").await;
    let warnings = events_for(&kit.client, NS, "data", "ProvisioningFailed").await;
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
    let backend = FakeBackend::new();
    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
    backend.script([Scripted::Fail(ProvisionError::failed(Cause::context(
        "could not create file system",
        DispatchFailure(refused),
    )))]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    kit.create_claim(claim("data", "chained", "1Gi")).await;
    let failed = wait_for_event(&kit.client, NS, "data", "ProvisioningFailed").await;
    assert_eq!(failed.note.as_deref(), Some("could not create file system: dispatch failure: connection refused"));
    kit.bound("data").await;
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn claim_deleted_while_provisioning_is_in_progress_has_its_backend_cleaned_up() {
    let kit = Kit::new();
    kit.class("slow", "Delete", false).await;
    let backend = FakeBackend::new();
    backend.script([
        Scripted::CreateButInProgress("file system creating".into()),
        Scripted::CreateButInProgress("file system creating".into()),
        Scripted::CreateButInProgress("file system creating".into()),
    ]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim("data", "slow", "1Gi")).await;
    let pv = pv_name(&created);
    backend.wait_until("the backend volume exists", |b| b.has(&pv)).await;
    wait_for_event(&kit.client, NS, "data", "Provisioning").await;
    kit.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");

    // The engine finishes, saves the volume, lets the claim go, and deletes it all.
    kit.wait_claim("data", "the claim to be gone", |c| c.is_none()).await;
    kit.volume_gone(&pv).await;
    backend.wait_until("the backend volume is deleted", |b| !b.has(&pv)).await;
    assert_eq!(backend.created(), 1, "one backend volume, never two");
    assert_eq!(backend.deleted(), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn reschedule_removes_the_selected_node() {
    let kit = Kit::new();
    kit.class("local", "Delete", true).await;
    let backend = FakeBackend::new();
    backend.script([Scripted::Fail(ProvisionError::reschedule("node-a has 1 GiB free, the claim asks for 5 GiB"))]);
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let mut c = claim("data", "local", "5Gi");
    c.metadata.annotations = Some([(keys::SELECTED_NODE.to_string(), "node-a".to_string())].into());
    kit.create_claim(c).await;
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
    let ev = wait_for_event(&kit.client, NS, "data", "ProvisioningFailed").await;
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
    let backend = FakeBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim("data", "delete", "1Gi")).await;
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
    let backend = FakeBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim("data", "retain", "1Gi")).await;
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
    let backend = FakeBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim("data", "pvfirst", "1Gi")).await;
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
    let backend = FakeBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    kit.create_claim(claim("data", "late", "1Gi")).await;
    kit.class("late", "Delete", false).await;
    kit.bound("data").await;
    assert_eq!(backend.created(), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn wait_for_first_consumer_claim_waits_for_its_selected_node() {
    let kit = Kit::new();
    kit.class("wffc", "Delete", true).await;
    let backend = FakeBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim("data", "wffc", "1Gi")).await;
    // The binder leaves WaitForFirstConsumer claims to the scheduler and says so.
    wait_for_event(&kit.client, NS, "data", "WaitForFirstConsumer").await;
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
    let (first_backend, second_backend) = (FakeBackend::new(), FakeBackend::new());
    let first = kit.engine(Arc::new(first_backend.clone()), |b| b.leader_election(election("first"))).await;
    let mut first_status = first.status.clone();
    tokio::time::timeout(Duration::from_secs(10), first_status.wait_for(|s| s.leading))
        .await
        .expect("the first replica leads")
        .expect("status");
    let second = kit.engine(Arc::new(second_backend.clone()), |b| b.leader_election(election("second"))).await;
    assert!(!second.status.borrow().leading, "only one replica leads");
    assert!(!second.status.borrow().ready(), "a follower is not ready");

    kit.create_claim(claim("one", "ha", "1Gi")).await;
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

    kit.create_claim(claim("two", "ha", "1Gi")).await;
    kit.bound("two").await;
    assert_eq!((first_backend.created(), second_backend.created()), (1, 1), "the new leader provisions");
    second.stop().await.expect("clean shutdown");
}

// Kit-only faults.

#[tokio::test(start_paused = true)]
async fn volume_create_failing_with_500_twice_is_retried_into_one_bound_volume() {
    let kit = Kit::new();
    kit.class("flaky-api", "Delete", false).await;
    let backend = FakeBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;
    kit.cluster.fail_next(Verb::Create, "persistentvolumes", 2, 500);

    let created = kit.create_claim(claim("data", "flaky-api", "1Gi")).await;
    let pv = pv_name(&created);
    let bound = kit.bound("data").await;
    assert_eq!(bound.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some(pv.as_str()));
    // A failed save is retried with the volume the backend already
    // returned: the backend is asked once.
    assert_eq!(backend.provision_calls(), vec![pv.clone()], "the backend is not asked again to save a volume");
    assert_eq!(backend.created(), 1, "one backend volume");
    let volumes = kit.volumes().list(&ListParams::default()).await.expect("list volumes");
    assert_eq!(volumes.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), vec![pv.clone()]);
    wait_for_event(&kit.client, NS, "data", "ProvisioningSucceeded").await;
    assert_eq!(engine.metrics.provision_failures("flaky-api"), 2, "each failed save counts as a failure");
    assert_eq!(engine.metrics.provisioned("flaky-api"), 1);
    engine.stop().await.expect("clean shutdown");
}

/// A backend whose provision calls wait at a gate the test opens, counting
/// the calls that reached it.
#[derive(Clone)]
struct Gated {
    backend: FakeBackend,
    entered: Arc<watch::Sender<usize>>,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl Provisioner for Gated {
    async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        self.entered.send_modify(|n| *n += 1);
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        self.backend.provision(req).await
    }

    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
        self.backend.delete(volume).await
    }
}

#[tokio::test(start_paused = true)]
async fn watches_dropped_mid_provisioning_do_not_cause_a_second_provision_call() {
    let kit = Kit::new();
    kit.class("gated", "Delete", false).await;
    let backend = FakeBackend::new();
    let (entered, _) = watch::channel(0);
    let entered = Arc::new(entered);
    let (open, gate) = watch::channel(false);
    let gated = Gated { backend: backend.clone(), entered: entered.clone(), open: gate };
    let engine = kit.engine(Arc::new(gated), |b| b).await;

    let created = kit.create_claim(claim("data", "gated", "1Gi")).await;
    let pv = pv_name(&created);
    let mut calls = entered.subscribe();
    calls.wait_for(|n| *n >= 1).await.expect("provision called");

    // Every watch breaks and the history is gone: the engine's watchers
    // must re-list, and so see the claim again while its provision call is
    // still running. The paused clock lets their reconnect backoff pass.
    kit.cluster.drop_watches();
    kit.cluster.compact();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // And a change to the claim after the re-list.
    kit.touch("data").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(*entered.borrow(), 1, "no second provision call while the first runs");

    open.send_replace(true);
    let bound = kit.bound("data").await;
    assert_eq!(bound.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some(pv.as_str()));
    wait_for_event(&kit.client, NS, "data", "ProvisioningSucceeded").await;
    assert_eq!(backend.provision_calls(), vec![pv.clone()], "exactly one provision call");
    assert_eq!(backend.created(), 1);
    assert_eq!(*entered.borrow(), 1);
    assert_eq!(engine.metrics.provisioned("gated"), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn volumes_released_while_the_volume_watch_was_down_are_deleted_after_the_relist() {
    let kit = Kit::new();
    kit.class("paged", "Delete", false).await;
    let backend = FakeBackend::new();
    // One volume per list page, so the re-list below takes several requests
    // and workers run between its pages.
    let engine = kit.engine(Arc::new(backend.clone()), |b| b.list_page_size(1)).await;
    let names = ["a", "b", "c"];
    for n in names {
        kit.create_claim(claim(n, "paged", "1Gi")).await;
    }
    let mut pvs = Vec::new();
    for n in names {
        let bound = kit.bound(n).await;
        pvs.push(bound.spec.and_then(|s| s.volume_name).expect("bound to a volume"));
    }

    // The volume watch breaks and cannot come back; meanwhile the claims
    // are deleted and the binder releases their volumes.
    kit.cluster.fail_next(Verb::Watch, "persistentvolumes", 10_000, 500);
    kit.cluster.fail_next(Verb::List, "persistentvolumes", 10_000, 500);
    kit.cluster.drop_watches();
    for n in names {
        kit.claims().delete(n, &DeleteParams::default()).await.expect("delete claim");
    }
    let released =
        |pv: &String| kit.cluster.get::<PersistentVolume>("", pv).is_some_and(|v| volume_phase(&v) == "Released");
    let deadline = tokio::time::Instant::now() + default_timeout();
    while !pvs.iter().all(released) {
        assert!(tokio::time::Instant::now() < deadline, "the binder released the volumes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(backend.delete_calls().is_empty(), "nothing deleted while the engine cannot see the volumes");

    // The history is gone, so the watch comes back through a re-list whose
    // pages are slow: every volume arrives Released in the re-list, and the
    // engine must act on what the re-list shows, not on what its cache held.
    kit.cluster.compact();
    kit.cluster.clear_faults();
    kit.cluster.set_latency(Some(Verb::List), Some("persistentvolumes"), Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + default_timeout();
    while !pvs.iter().all(|pv| kit.cluster.get::<PersistentVolume>("", pv).is_none()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "released volumes deleted after the re-list; delete calls so far: {:?}",
            backend.delete_calls()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut calls = backend.delete_calls();
    calls.sort();
    pvs.sort();
    assert_eq!(calls, pvs, "one delete call per volume");
    assert_eq!(backend.deleted(), 3);
    engine.stop().await.expect("clean shutdown");
}
