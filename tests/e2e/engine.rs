//! The engine against the real control plane: kube-apiserver and the PV
//! binder of kube-controller-manager, with an in-memory backend that counts
//! what it creates and deletes.

use std::sync::Arc;

use e2e_support::TestEnv;
use e2e_support::backend::{FakeBackend, Scripted};
use e2e_support::engine::{provisioner_name, start};
use e2e_support::fixtures::{claim, claim_phase, storage_class, volume_phase};
use e2e_support::{events_for, wait_for_event};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use provisioner_core::{ProvisionError, keys};
use serde_json::json;

fn pv_name(c: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", c.uid().expect("claim uid"))
}

async fn bound(env: &TestEnv, name: &str) -> PersistentVolumeClaim {
    env.wait_for(&env.api::<PersistentVolumeClaim>(), name, "the claim to be Bound", |c| {
        c.is_some_and(|c| claim_phase(c) == "Bound")
    })
    .await
    .expect("claim exists")
}

async fn gone<K>(env: &TestEnv, api: &Api<K>, name: &str, what: &str)
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + 'static,
    <K as kube::Resource>::DynamicType: Default,
{
    env.wait_for(api, name, what, |o| o.is_none()).await;
}

fn class_for(env: &TestEnv, name: &str, policy: &str, wffc: bool) -> StorageClass {
    let mut k = storage_class(name, &provisioner_name(env));
    k.reclaim_policy = Some(policy.into());
    if wffc {
        k.volume_binding_mode = Some("WaitForFirstConsumer".into());
    }
    k
}

#[tokio::test]
async fn immediate_claim_is_provisioned_bound_and_described() {
    let env = TestEnv::new("engine-immediate").await;
    let class = env.name("immediate");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let backend = FakeBackend::new();
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    let created = env.create(&env.api(), claim("data", &class, "3Gi")).await;
    let c = bound(&env, "data").await;
    let pv_name = pv_name(&created);
    assert_eq!(c.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some(pv_name.as_str()));

    let pv = env.cluster_api::<PersistentVolume>().get(&pv_name).await.expect("pv");
    let spec = pv.spec.clone().expect("spec");
    let claim_ref = spec.claim_ref.clone().expect("claimRef");
    assert_eq!(claim_ref.uid, created.uid(), "the volume is bound by uid");
    assert_eq!(pv.annotations().get(keys::PROVISIONED_BY), Some(&provisioner_name(&env)));
    assert!(pv.finalizers().contains(&keys::VOLUME_FINALIZER.to_string()));
    assert_eq!(spec.storage_class_name.as_deref(), Some(class.as_str()));
    assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(spec.capacity.expect("capacity")["storage"].0, "3Gi");
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));

    assert_eq!(backend.created(), 1);
    assert_eq!(backend.provision_calls(), vec![pv_name.clone()], "exactly one provision call");
    let ev = wait_for_event(&env.client, &env.namespace, "data", "ProvisioningSucceeded").await;
    assert_eq!(ev.note.as_deref(), Some(format!("Successfully provisioned volume {pv_name}").as_str()));
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert_eq!(engine.metrics.provisioned(&class), 1);
    // Counted at the engine's client: the intent patch, the PV, the event.
    let writes = engine.requests.writes();
    assert!(writes <= 3, "at most 3 API writes per volume, made {writes}");
    assert!(engine.requests.reads() <= 3, "no GET per volume, only the three initial lists");
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn wait_for_first_consumer_claim_waits_for_its_selected_node() {
    let env = TestEnv::new("engine-wffc").await;
    let class = env.name("wffc");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", true)).await;
    let backend = FakeBackend::new();
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    let claims = env.api::<PersistentVolumeClaim>();
    let created = env.create(&claims, claim("data", &class, "1Gi")).await;
    // The binder leaves WaitForFirstConsumer claims to the scheduler and says so.
    wait_for_event(&env.client, &env.namespace, "data", "WaitForFirstConsumer").await;
    assert!(backend.provision_calls().is_empty(), "nothing provisioned before a node is selected");

    // As the scheduler does:
    let patch = json!({ "metadata": { "annotations": { keys::SELECTED_NODE: "node-a" } } });
    claims.patch("data", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("select node");
    bound(&env, "data").await;
    assert_eq!(
        backend.volumes().get(&pv_name(&created)),
        Some(&Some("node-a".to_string())),
        "the node reaches the backend"
    );
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn legacy_storage_class_annotation_claim_is_provisioned() {
    let env = TestEnv::new("engine-legacy-class").await;
    let class = env.name("general");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let backend = FakeBackend::new();
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    // The seed's claims name their class only in the beta annotation.
    let mut c = claim("seed", "", "1Mi");
    c.spec.as_mut().expect("spec").storage_class_name = None;
    c.spec.as_mut().expect("spec").access_modes = Some(vec!["ReadWriteMany".into()]);
    c.metadata.annotations = Some([(keys::BETA_STORAGE_CLASS.to_string(), class.clone())].into());
    env.create(&env.api(), c).await;
    let bound = bound(&env, "seed").await;
    let pv = env
        .cluster_api::<PersistentVolume>()
        .get(bound.spec.as_ref().and_then(|s| s.volume_name.as_deref()).expect("volume"))
        .await
        .expect("pv");
    assert_eq!(pv.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()), Some(class.as_str()));
    assert_eq!(pv.spec.as_ref().and_then(|s| s.access_modes.clone()), Some(vec!["ReadWriteMany".to_string()]));
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn claim_created_before_its_class_is_provisioned_once_the_class_exists() {
    let env = TestEnv::new("engine-late-class").await;
    let class = env.name("late");
    let backend = FakeBackend::new();
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    env.create(&env.api(), claim("data", &class, "1Gi")).await;
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    bound(&env, "data").await;
    assert_eq!(backend.created(), 1);
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn block_claim_for_a_provisioner_without_block_support_gets_one_warning() {
    let env = TestEnv::new("engine-block").await;
    let class = env.name("block");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let backend = FakeBackend::new();
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    let mut c = claim("raw", &class, "1Gi");
    c.spec.as_mut().expect("spec").volume_mode = Some("Block".into());
    env.create(&env.api(), c).await;
    let ev = wait_for_event(&env.client, &env.namespace, "raw", "ProvisioningFailed").await;
    assert_eq!(
        ev.note.as_deref(),
        Some(format!("{} does not support block volume provisioning", provisioner_name(&env)).as_str())
    );
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    // A later change to the claim does not repeat the warning or call the backend.
    let patch = json!({ "metadata": { "labels": { "touched": "yes" } } });
    env.api::<PersistentVolumeClaim>()
        .patch("raw", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("touch");
    env.wait_for(&env.api::<PersistentVolumeClaim>(), "raw", "the touch", |c| {
        c.is_some_and(|c| c.labels().contains_key("touched"))
    })
    .await;
    assert!(backend.provision_calls().is_empty(), "the backend is never asked");
    let warnings = events_for(&env.client, &env.namespace, "raw", "ProvisioningFailed").await;
    assert_eq!(warnings.len(), 1, "one warning, not a retry loop");
    assert!(warnings[0].series.is_none(), "and no repeats of it");
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn provisioner_failing_twice_then_succeeding_reports_failures_and_success() {
    let env = TestEnv::new("engine-flaky").await;
    let class = env.name("flaky");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let backend = FakeBackend::new();
    backend.script([
        Scripted::Fail(ProvisionError::Final("backend unavailable".into())),
        Scripted::Fail(ProvisionError::Final("backend unavailable".into())),
    ]);
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    env.create(&env.api(), claim("data", &class, "1Gi")).await;
    bound(&env, "data").await;
    assert_eq!(backend.provision_calls().len(), 3);
    assert_eq!(backend.created(), 1);
    let failed = wait_for_event(&env.client, &env.namespace, "data", "ProvisioningFailed").await;
    assert_eq!(failed.note.as_deref(), Some("backend unavailable"));
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    wait_for_event(&env.client, &env.namespace, "data", "ProvisioningSucceeded").await;
    let warnings = events_for(&env.client, &env.namespace, "data", "ProvisioningFailed").await;
    assert_eq!(warnings.len(), 1, "identical warnings are aggregated into one event");
    assert_eq!(warnings[0].series.as_ref().map(|s| s.count), Some(2), "with a count of 2");

    assert_eq!(engine.metrics.provision_failures(&class), 2);
    assert_eq!(engine.metrics.provisioned(&class), 1);
    let text = engine.metrics_text();
    assert!(
        text.contains(&format!("controller_persistentvolumeclaim_provision_failed_total{{class=\"{class}\"}} 2")),
        "{text}"
    );
    assert!(
        text.contains(&format!("controller_persistentvolumeclaim_provision_total{{class=\"{class}\"}} 1")),
        "{text}"
    );
    assert!(text.contains("controller_persistentvolumeclaim_provision_duration_seconds_count"), "{text}");
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn claim_deleted_while_provisioning_is_in_progress_has_its_backend_cleaned_up() {
    let env = TestEnv::new("engine-in-progress-deleted").await;
    let class = env.name("slow");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let backend = FakeBackend::new();
    backend.script([
        Scripted::CreateButInProgress("file system creating".into()),
        Scripted::CreateButInProgress("file system creating".into()),
        Scripted::CreateButInProgress("file system creating".into()),
    ]);
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    let claims = env.api::<PersistentVolumeClaim>();
    let created = env.create(&claims, claim("data", &class, "1Gi")).await;
    let pv = pv_name(&created);
    backend.wait_until("the backend volume exists", |b| b.has(&pv)).await;
    wait_for_event(&env.client, &env.namespace, "data", "Provisioning").await;
    claims.delete("data", &DeleteParams::default()).await.expect("delete claim");

    // The engine finishes, saves the volume, lets the claim go, and deletes it all.
    gone(&env, &claims, "data", "the claim to be gone").await;
    gone(&env, &env.cluster_api::<PersistentVolume>(), &pv, "the volume to be gone").await;
    backend.wait_until("the backend volume is deleted", |b| !b.has(&pv)).await;
    assert_eq!(backend.created(), 1, "one backend volume, never two");
    assert_eq!(backend.deleted(), 1);
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn reschedule_removes_the_selected_node() {
    let env = TestEnv::new("engine-reschedule").await;
    let class = env.name("local");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", true)).await;
    let backend = FakeBackend::new();
    backend
        .script([Scripted::Fail(ProvisionError::Reschedule("node-a has 1 GiB free, the claim asks for 5 GiB".into()))]);
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    let claims = env.api::<PersistentVolumeClaim>();
    let mut c = claim("data", &class, "5Gi");
    c.metadata.annotations = Some([(keys::SELECTED_NODE.to_string(), "node-a".to_string())].into());
    env.create(&claims, c).await;
    let after = env
        .wait_for(&claims, "data", "the selected node to be removed", |c| {
            c.is_some_and(|c| !c.annotations().contains_key(keys::SELECTED_NODE))
        })
        .await
        .expect("claim");
    assert!(
        !after.finalizers().contains(&keys::INTENT_FINALIZER.to_string()),
        "nothing was created, so no intent remains"
    );
    let ev = wait_for_event(&env.client, &env.namespace, "data", "ProvisioningFailed").await;
    assert!(ev.note.as_deref().unwrap_or_default().contains("node-a has 1 GiB free"), "{ev:?}");
    assert_eq!(backend.created(), 0);

    // The scheduler picks another node; this time it works.
    let patch = json!({ "metadata": { "annotations": { keys::SELECTED_NODE: "node-b" } } });
    claims.patch("data", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("select node");
    bound(&env, "data").await;
    assert_eq!(backend.volumes().values().next(), Some(&Some("node-b".to_string())));
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn released_volume_with_delete_policy_is_deleted_with_its_backend() {
    let env = TestEnv::new("engine-released-delete").await;
    let class = env.name("delete");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let backend = FakeBackend::new();
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    let claims = env.api::<PersistentVolumeClaim>();
    let created = env.create(&claims, claim("data", &class, "1Gi")).await;
    bound(&env, "data").await;
    let pv = pv_name(&created);
    claims.delete("data", &DeleteParams::default()).await.expect("delete claim");
    gone(&env, &claims, "data", "the claim to be gone").await;
    gone(&env, &env.cluster_api::<PersistentVolume>(), &pv, "the volume to be gone").await;
    assert!(!backend.has(&pv));
    assert_eq!(backend.delete_calls(), vec![pv.clone()], "exactly one delete call");
    assert_eq!(engine.metrics.deleted(&class), 1);
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn released_volume_with_retain_policy_is_kept() {
    let env = TestEnv::new("engine-released-retain").await;
    let class = env.name("retain");
    env.create(&env.cluster_api(), class_for(&env, &class, "Retain", false)).await;
    let backend = FakeBackend::new();
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    let claims = env.api::<PersistentVolumeClaim>();
    let created = env.create(&claims, claim("data", &class, "1Gi")).await;
    bound(&env, "data").await;
    let pv = pv_name(&created);
    claims.delete("data", &DeleteParams::default()).await.expect("delete claim");
    gone(&env, &claims, "data", "the claim to be gone").await;
    let volumes = env.cluster_api::<PersistentVolume>();
    let released = env
        .wait_for(&volumes, &pv, "the volume to be Released", |v| v.is_some_and(|v| volume_phase(v) == "Released"))
        .await
        .expect("volume");
    assert_eq!(released.spec.and_then(|s| s.persistent_volume_reclaim_policy).as_deref(), Some("Retain"));
    assert!(backend.has(&pv), "the backend volume is kept");
    assert!(backend.delete_calls().is_empty());
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn volume_deleted_before_its_claim_still_has_its_backend_deleted() {
    let env = TestEnv::new("engine-pv-first").await;
    let class = env.name("pvfirst");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let backend = FakeBackend::new();
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    let claims = env.api::<PersistentVolumeClaim>();
    let created = env.create(&claims, claim("data", &class, "1Gi")).await;
    bound(&env, "data").await;
    let pv = pv_name(&created);
    let volumes = env.cluster_api::<PersistentVolume>();
    volumes.delete(&pv, &DeleteParams::default()).await.expect("delete volume");
    backend.wait_until("the backend volume is deleted", |b| !b.has(&pv)).await;
    // Once our finalizer is gone only the binder's protection remains; the
    // volume goes with its claim.
    env.wait_for(&volumes, &pv, "our finalizer to be removed", |v| {
        v.is_none_or(|v| !v.finalizers().contains(&keys::VOLUME_FINALIZER.to_string()))
    })
    .await;
    claims.delete("data", &DeleteParams::default()).await.expect("delete claim");
    gone(&env, &volumes, &pv, "the volume to be gone").await;
    assert_eq!(backend.deleted(), 1);
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn two_engines_elect_one_leader_and_the_other_takes_over_on_shutdown() {
    use provisioner_core::leader::{LeaderElectionConfig, lease_name_for};
    use std::time::Duration;

    let env = TestEnv::new("engine-two-replicas").await;
    let class = env.name("ha");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let name = provisioner_name(&env);
    let election = |identity: &str| {
        let mut cfg = LeaderElectionConfig::new(lease_name_for(&name), &env.namespace, identity);
        cfg.lease_duration = Duration::from_secs(6);
        cfg.renew_deadline = Duration::from_secs(4);
        cfg.retry_period = Duration::from_secs(1);
        cfg
    };
    let (first_backend, second_backend) = (FakeBackend::new(), FakeBackend::new());
    let first = start(&env, &name, Arc::new(first_backend.clone()), |b| b.leader_election(election("first"))).await;
    let mut first_status = first.status.clone();
    tokio::time::timeout(Duration::from_secs(10), first_status.wait_for(|s| s.leading))
        .await
        .expect("the first replica leads")
        .expect("status");
    let second = start(&env, &name, Arc::new(second_backend.clone()), |b| b.leader_election(election("second"))).await;
    assert!(!second.status.borrow().leading, "only one replica leads");
    assert!(!second.status.borrow().ready(), "a follower is not ready");

    env.create(&env.api(), claim("one", &class, "1Gi")).await;
    bound(&env, "one").await;
    assert_eq!((first_backend.created(), second_backend.created()), (1, 0), "only the leader provisions");

    let stopped_at = tokio::time::Instant::now();
    first.stop().await.expect("clean shutdown");
    let mut second_status = second.status.clone();
    tokio::time::timeout(Duration::from_secs(6), second_status.wait_for(|s| s.leading))
        .await
        .expect("the follower takes over within the lease duration")
        .expect("status");
    let takeover = stopped_at.elapsed();
    assert!(takeover < Duration::from_secs(6), "released lease taken over in {takeover:?}");

    env.create(&env.api(), claim("two", &class, "1Gi")).await;
    bound(&env, "two").await;
    assert_eq!((first_backend.created(), second_backend.created()), (1, 1), "the new leader provisions");
    second.stop().await.expect("clean shutdown");
    env.cleanup().await;
}
