//! The engine against the real control plane: kube-apiserver and the PV
//! binder of kube-controller-manager, with an in-memory backend that counts
//! what it creates and deletes.
//!
//! Only the cases that exercise the real binder and API server stay here:
//! immediate provisioning (the volume's fields, API writes counted at the
//! client), the legacy class annotation, WaitForFirstConsumer, Released with
//! `Delete`, a volume deleted before its claim, and two engines electing a
//! leader over a real Lease. The engine-logic cases moved to the testing kit,
//! `tests/kit/engine.rs` (`--test kit_engine`), with the same assertions:
//! the block-volume warning, failing twice then succeeding (aggregated
//! events, metrics), a claim deleted while provisioning is in progress,
//! reschedule, Released with `Retain`, and a claim created before its class.
//! The kit also runs WaitForFirstConsumer, Released with `Delete`, a volume
//! deleted before its claim and leader election, on its paused clock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use e2e_support::TestEnv;
use e2e_support::engine::{provisioner_name, start};
use e2e_support::fixtures::{claim, claim_phase, storage_class};
use e2e_support::wait_for_event;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use provisioner_core::testing::ScriptedBackend;
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
    let backend = ScriptedBackend::new();
    let engine =
        start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b.journal_linger(Duration::from_secs(1)))
            .await;
    // The initial lists are paged, so their count depends on the cluster's size.
    let reads_at_sync = engine.requests.reads();

    let created = env.create(&env.api(), claim("data", &class, "3Gi")).await;
    let c = bound(&env, "data").await;
    let pv_name = pv_name(&created);
    assert_eq!(c.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some(pv_name.as_str()));

    let pv = env.cluster_api::<PersistentVolume>().get(&pv_name).await.expect("pv");
    let spec = pv.spec.clone().expect("spec");
    let claim_ref = spec.claim_ref.clone().expect("claimRef");
    assert_eq!(claim_ref.uid, created.uid(), "the volume is bound by uid");
    assert_eq!(pv.annotations().get(keys::PROVISIONED_BY), Some(&provisioner_name(&env)));
    // The engine's writes name it in managedFields.
    let managers: Vec<_> = pv.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.as_deref()).collect();
    assert!(managers.contains(&keys::FIELD_MANAGER), "{managers:?}");
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
    // Nothing of ours is ever written on the claim, so nothing blocks its
    // deletion if the provisioner is uninstalled.
    let c = env.api::<PersistentVolumeClaim>().get("data").await.expect("claim");
    assert!(!c.finalizers().iter().any(|f| f == keys::INTENT_FINALIZER), "{:?}", c.finalizers());
    assert!(!c.annotations().keys().any(|k| k.starts_with("provisioner.rs/")), "{:?}", c.annotations());
    // Counted at the engine's client: the journal's commit of the entry, the
    // PV and the event; then, after the linger, the commit that removes the
    // entry. (Before the journal: the claim's intent patch, the PV, the event
    // and the intent's removal patch, four writes on the claim and PV.)
    assert_eq!(engine.requests.writes(), 3, "API writes to provision one volume");
    let client = env.client.clone();
    let name = provisioner_name(&env);
    let mut left = BTreeSet::from([pv_name.clone()]);
    for _ in 0..100 {
        left = e2e_support::journal::entries_of(&client, &name).await.expect("read the journal");
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.is_empty(), "the journal still holds {left:?}");
    assert_eq!(engine.requests.writes(), 4, "and the journal's removal commit");
    assert_eq!(engine.requests.reads(), reads_at_sync, "no GET per volume");
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn wait_for_first_consumer_claim_waits_for_its_selected_node() {
    let env = TestEnv::new("engine-wffc").await;
    let class = env.name("wffc");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", true)).await;
    let backend = ScriptedBackend::new();
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
    let backend = ScriptedBackend::new();
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
async fn released_volume_with_delete_policy_is_deleted_with_its_backend() {
    let env = TestEnv::new("engine-released-delete").await;
    let class = env.name("delete");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let backend = ScriptedBackend::new();
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
    // The whole lifecycle: intent patch, PV, event, intent removal; PV
    // delete, PV finalizer removal.
    let writes = engine.requests.writes();
    assert!(writes <= 6, "at most 6 API writes over one volume's life, made {writes}");
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn volume_deleted_while_its_claim_exists_keeps_its_backend_until_the_claim_is_gone() {
    // This test asserted the opposite until the rule was corrected: a
    // `kubectl delete pv` on a Bound volume deleted its backend at once,
    // under the pods still using it.
    let env = TestEnv::new("engine-pv-first").await;
    let class = env.name("pvfirst");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let backend = ScriptedBackend::new();
    let engine = start(&env, &provisioner_name(&env), Arc::new(backend.clone()), |b| b).await;

    let claims = env.api::<PersistentVolumeClaim>();
    let created = env.create(&claims, claim("data", &class, "1Gi")).await;
    bound(&env, "data").await;
    let pv = pv_name(&created);
    let volumes = env.cluster_api::<PersistentVolume>();
    volumes.delete(&pv, &DeleteParams::default()).await.expect("delete volume");
    // The volume's deletion event and several of the engine's retries pass.
    env.wait_for(&volumes, &pv, "the volume to be Terminating", |v| {
        v.is_some_and(|v| v.metadata.deletion_timestamp.is_some())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let held = volumes.get(&pv).await.expect("the volume is still there");
    assert!(held.finalizers().contains(&keys::VOLUME_FINALIZER.to_string()), "our finalizer holds it");
    assert!(backend.has(&pv), "the backend volume is kept while its claim exists");
    assert!(backend.delete_calls().is_empty(), "{:?}", backend.delete_calls());

    claims.delete("data", &DeleteParams::default()).await.expect("delete claim");
    gone(&env, &volumes, &pv, "the volume to be gone").await;
    assert!(!backend.has(&pv));
    assert_eq!(backend.delete_calls(), vec![pv.clone()]);
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
    let (first_backend, second_backend) = (ScriptedBackend::new(), ScriptedBackend::new());
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

/// The uninstall procedure: stop every replica, run `release`, then delete
/// claims and volumes as usual. Nothing hangs Terminating on a finalizer of
/// ours, and the report names the backend volumes left to the operator.
#[tokio::test]
async fn after_release_an_uninstalled_provisioner_leaves_nothing_that_blocks_a_deletion() {
    use provisioner_core::decision::Names;
    use provisioner_core::testing::ProvisionAnswer;

    let env = TestEnv::new("engine-uninstall").await;
    let class = env.name("uninstall");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", false)).await;
    let backend = ScriptedBackend::new();
    let name = provisioner_name(&env);
    let engine = start(&env, &name, Arc::new(backend.clone()), |b| b).await;
    let claims = env.api::<PersistentVolumeClaim>();
    let volumes = env.cluster_api::<PersistentVolume>();

    // One bound volume, and one claim whose backend volume is still "in progress".
    let done = env.create(&claims, claim("done", &class, "1Gi")).await;
    bound(&env, "done").await;
    let done_pv = pv_name(&done);
    backend.script((0..1000).map(|_| ProvisionAnswer::CreateThenFail(ProvisionError::in_progress("still creating"))));
    let busy = env.create(&claims, claim("busy", &class, "1Gi")).await;
    let busy_pv = pv_name(&busy);
    // The journal records the volume being provisioned; the claim carries nothing of ours.
    let journal_of = |busy_pv: String| {
        let client = env.client.clone();
        let name = name.clone();
        async move {
            let journals = e2e_support::journal::journals_of(&client, &name).await.expect("list journals");
            journals.into_iter().find(|cm| cm.data.as_ref().is_some_and(|d| d.contains_key(&busy_pv)))
        }
    };
    let mut recorded = None;
    for _ in 0..100 {
        recorded = journal_of(busy_pv.clone()).await;
        if recorded.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let recorded = recorded.expect("the journal records the volume being provisioned");
    let before = claims.get("busy").await.expect("claim");
    assert!(!before.finalizers().iter().any(|f| f == keys::INTENT_FINALIZER), "{:?}", before.finalizers());
    engine.stop().await.expect("clean shutdown");

    let names = Names::new(name.clone(), Vec::<String>::new());
    let dry = provisioner_core::release::release(env.client.clone(), &names, true).await.expect("dry run");
    assert_eq!(dry.claims.iter().map(|c| c.volume.as_str()).collect::<Vec<_>>(), vec![busy_pv.as_str()]);
    assert!(dry.volumes.iter().any(|v| v.name == done_pv), "{dry:?}");
    assert!(journal_of(busy_pv.clone()).await.is_some(), "a dry run writes nothing");

    let report = provisioner_core::release::release(env.client.clone(), &names, false).await.expect("release");
    let text = report.to_string();
    assert!(text.contains(&busy_pv) && text.contains(&done_pv), "the backends left are named:\n{text}");
    let journal = format!("{}/{}", recorded.namespace().unwrap_or_default(), recorded.name_any());
    assert_eq!(report.journals, vec![journal], "the journal is deleted");
    assert!(journal_of(busy_pv.clone()).await.is_none());

    // Claims and volumes go as if the provisioner had never been there.
    claims.delete("done", &DeleteParams::default()).await.expect("delete claim");
    claims.delete("busy", &DeleteParams::default()).await.expect("delete claim");
    gone(&env, &claims, "done", "the bound claim to be gone").await;
    gone(&env, &claims, "busy", "the claim that was being provisioned to be gone").await;
    volumes.delete(&done_pv, &DeleteParams::default()).await.expect("delete volume");
    gone(&env, &volumes, &done_pv, "the volume to be gone").await;
    assert!(backend.has(&done_pv) && backend.has(&busy_pv), "backends are the operator's now, not deleted");
    assert!(backend.delete_calls().is_empty());
    env.cleanup().await;
}
