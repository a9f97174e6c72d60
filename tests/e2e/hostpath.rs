//! The hostpath provisioner against the real control plane, with real
//! directories in temporary base dirs. Node objects are created by the
//! tests (there is no kubelet), with a hostname label that differs from the
//! node name, as it can on real clusters.
//!
//! `WaitForFirstConsumer` is driven as in a cluster: a pod that uses the
//! claim makes the real kube-scheduler pick a node and set the claim's
//! selected node, and binds the pod there once the volume is bound. The
//! tests that need a given node select it by its hostname label.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use e2e_support::TestEnv;
use e2e_support::engine::{RunningEngine, provisioner_name, start};
use e2e_support::fixtures::{claim, claim_phase, storage_class, volume_phase};
use e2e_support::scheduling::{delete_pod, pod_selecting, pod_using, schedulable_node, scheduled_node};
use e2e_support::wait_for_event;
use hostpath_provisioner::cli::node_identity;
use hostpath_provisioner::provisioner::{HOSTNAME_LABEL, immediate_binding_message};
use hostpath_provisioner::{HostPathProvisioner, Settings, SharedSettings};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::DeleteParams;
use provisioner_core::keys;

/// A Node `node-<n>-<id>` labelled with hostname `host-<n>-<id>`, Ready
/// for the scheduler, and an engine running the hostpath provisioner for it
/// over `base`.
async fn node_instance(env: &TestEnv, n: &str, base: &Path) -> RunningEngine {
    schedulable_instance(env, n, base, "8").await
}

/// A Node `node-<n>-<id>` (hostname `host-<n>-<id>`) that the scheduler can
/// use, reported Ready with `cpu` allocatable CPUs, and an engine running
/// the hostpath provisioner for it over `base`.
async fn schedulable_instance(env: &TestEnv, n: &str, base: &Path, cpu: &str) -> RunningEngine {
    let node = env.name(&format!("node-{n}"));
    schedulable_node(env, &node, &env.name(&format!("host-{n}")), cpu).await;
    instance_for(env, &node, base).await
}

/// An engine running the hostpath provisioner for Node `node` over `base`.
async fn instance_for(env: &TestEnv, node: &str, base: &Path) -> RunningEngine {
    let identity = node_identity(&env.client, node).await.expect("node identity");
    let settings = Settings::from_values(&[base.display().to_string()], None, "0770", None, None, "local", "delete")
        .expect("settings");
    let provisioner = HostPathProvisioner::new(identity, SharedSettings::new(settings));
    start(env, &provisioner_name(env), Arc::new(provisioner), |b| b).await
}

fn class_for(env: &TestEnv, name: &str, policy: &str, params: &[(&str, &str)]) -> StorageClass {
    let mut k = storage_class(name, &provisioner_name(env));
    k.reclaim_policy = Some(policy.into());
    k.volume_binding_mode = Some("WaitForFirstConsumer".into());
    k.parameters = Some(params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    k
}

/// Creates claim `name` and pod `<name>-pod` that uses it and may run only on
/// node `node-<node>-<id>` (a node selector on its hostname label): the
/// scheduler picks that node and sets the claim's selected node.
async fn claim_on(env: &TestEnv, name: &str, class: &str, size: &str, node: &str) -> PersistentVolumeClaim {
    let created = env.create(&env.api(), claim(name, class, size)).await;
    let on = BTreeMap::from([(HOSTNAME_LABEL.to_string(), env.name(&format!("host-{node}")))]);
    pod_selecting(env, &format!("{name}-pod"), name, on).await;
    created
}

async fn bound_volume(env: &TestEnv, name: &str) -> PersistentVolume {
    let c = env
        .wait_for(&env.api::<PersistentVolumeClaim>(), name, "the claim to be Bound", |c| {
            c.is_some_and(|c| claim_phase(c) == "Bound")
        })
        .await
        .expect("claim");
    let pv = c.spec.and_then(|s| s.volume_name).expect("volume name");
    env.cluster_api::<PersistentVolume>().get(&pv).await.expect("pv")
}

fn local_path(pv: &PersistentVolume) -> String {
    pv.spec.as_ref().and_then(|s| s.local.as_ref()).map(|l| l.path.clone()).expect("a local volume")
}

/// The volume directories in a base dir (the provisioner's own ledger,
/// `.provisioner-ledger`, is not a volume).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("base dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .filter(|n: &String| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Deletes claim `name`, after the pod `claim_on` made for it (a claim in
/// use by a pod stays until the pod is gone).
async fn delete_claim(env: &TestEnv, name: &str) {
    if env.api::<Pod>().get_opt(&format!("{name}-pod")).await.expect("get pod").is_some() {
        delete_pod(env, &format!("{name}-pod")).await;
    }
    env.api::<PersistentVolumeClaim>().delete(name, &DeleteParams::default()).await.expect("delete claim");
}

/// The hostname label value a PV's node affinity requires.
fn pinned_hostname(pv: &PersistentVolume) -> Option<String> {
    let terms = pv.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms.clone();
    let expr = terms.first()?.match_expressions.as_ref()?.first()?.clone();
    (expr.key == HOSTNAME_LABEL).then(|| expr.values.unwrap_or_default().join(","))
}

/// A tmpfs of `size` mounted on `dir` for the life of the guard: a small
/// disk, for a node that is full. `None` (with the reason printed) where this
/// process may not mount.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk(dir.to_path_buf())),
            Ok(o) => {
                eprintln!("skipped: mounting a tmpfs needs root ({})", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_pod_makes_the_scheduler_pick_a_node_whose_instance_provisions_and_a_second_pod_follows_the_volume() {
    let env = TestEnv::new("hostpath-scheduled").await;
    let (base_a, base_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let class = env.name("local");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", &[])).await;
    let a = schedulable_instance(&env, "a", base_a.path(), "4").await;
    let b = schedulable_instance(&env, "b", base_b.path(), "4").await;

    // No selected node is set by the test: the scheduler sets it for the pod.
    env.create(&env.api(), claim("data", &class, "10Mi")).await;
    pod_using(&env, "app-1", "data").await;
    let node = scheduled_node(&env, "app-1").await;
    let pv = bound_volume(&env, "data").await;
    let claim_now = env.api::<PersistentVolumeClaim>().get("data").await.expect("claim");
    assert_eq!(claim_now.annotations().get(keys::SELECTED_NODE), Some(&node), "the scheduler's choice");
    let (mine, other, host) = if node == env.name("node-a") {
        (base_a.path(), base_b.path(), env.name("host-a"))
    } else {
        assert_eq!(node, env.name("node-b"), "one of this test's nodes");
        (base_b.path(), base_a.path(), env.name("host-b"))
    };
    assert_eq!(pinned_hostname(&pv), Some(host), "pinned to the chosen node's hostname label");
    assert_eq!(local_path(&pv), mine.join(pv.name_any()).display().to_string(), "made by the chosen node's instance");
    assert!(Path::new(&local_path(&pv)).is_dir());
    assert!(entries(other).is_empty(), "the other node's instance made nothing");

    // A second pod of the claim can only go where the volume is.
    pod_using(&env, "app-2", "data").await;
    assert_eq!(scheduled_node(&env, "app-2").await, node, "the volume's node affinity decides");

    delete_pod(&env, "app-1").await;
    delete_pod(&env, "app-2").await;
    delete_claim(&env, "data").await;
    env.wait_for(&env.cluster_api::<PersistentVolume>(), &pv.name_any(), "the volume to be deleted", |v| v.is_none())
        .await;
    assert!(!Path::new(&local_path(&pv)).exists(), "delete removes the directory");
    a.stop().await.expect("clean shutdown");
    b.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn a_full_nodes_reschedule_makes_the_scheduler_pick_another_node() {
    let env = TestEnv::new("hostpath-reschedule").await;
    let (base_a, base_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let Some(_disk) = SmallDisk::mount(base_a.path(), "4m") else { return env.cleanup().await };
    let class = env.name("local");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", &[])).await;
    // Node A is the only node at first, and its disk is too small for the claim.
    let a = schedulable_instance(&env, "a", base_a.path(), "2").await;
    env.create(&env.api(), claim("data", &class, "64Mi")).await;
    pod_using(&env, "app", "data").await;
    let ev = wait_for_event(&env.client, &env.namespace, "data", "ProvisioningFailed").await;
    assert!(ev.note.as_deref().unwrap_or_default().contains("free space"), "{:?}", ev.note);
    assert!(entries(base_a.path()).is_empty(), "nothing made on the full node");

    // A node with room joins (and scores higher: more CPU free for the pod's request).
    let b = schedulable_instance(&env, "b", base_b.path(), "64").await;
    assert_eq!(scheduled_node(&env, "app").await, env.name("node-b"), "the scheduler picked the node with room");
    let pv = bound_volume(&env, "data").await;
    assert_eq!(pinned_hostname(&pv), Some(env.name("host-b")));
    assert_eq!(local_path(&pv), base_b.path().join(pv.name_any()).display().to_string());
    assert!(entries(base_a.path()).is_empty(), "still nothing on the full node");

    delete_pod(&env, "app").await;
    delete_claim(&env, "data").await;
    env.wait_for(&env.cluster_api::<PersistentVolume>(), &pv.name_any(), "the volume to be deleted", |v| v.is_none())
        .await;
    a.stop().await.expect("clean shutdown");
    b.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn claim_on_this_node_gets_a_directory_and_a_local_volume_pinned_by_hostname() {
    let env = TestEnv::new("hostpath-bind").await;
    let base = tempfile::tempdir().expect("tempdir");
    let class = env.name("local");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", &[])).await;
    let engine = node_instance(&env, "a", base.path()).await;

    let created = claim_on(&env, "data", &class, "10Mi", "a").await;
    let pv = bound_volume(&env, "data").await;
    assert_eq!(pv.name_any(), format!("pvc-{}", created.uid().expect("uid")));
    let path = local_path(&pv);
    assert_eq!(path, base.path().join(pv.name_any()).display().to_string(), "<base dir>/<pv name>");
    let meta = std::fs::metadata(&path).expect("the directory exists");
    assert!(meta.is_dir());
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o770);

    let required = pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.clone());
    let expr =
        &required.expect("required node affinity").node_selector_terms[0].match_expressions.clone().expect("exprs")[0];
    assert_eq!(expr.key, HOSTNAME_LABEL);
    assert_eq!(expr.values, Some(vec![env.name("host-a")]), "the hostname label's value, not the node name");

    delete_claim(&env, "data").await;
    env.wait_for(&env.cluster_api::<PersistentVolume>(), &pv.name_any(), "the volume to be deleted", |v| v.is_none())
        .await;
    assert!(!Path::new(&path).exists(), "delete removes the directory");
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn two_node_instances_each_take_only_their_own_claims() {
    let env = TestEnv::new("hostpath-two-nodes").await;
    let (base_a, base_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let class = env.name("local");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", &[])).await;
    let a = node_instance(&env, "a", base_a.path()).await;
    let b = node_instance(&env, "b", base_b.path()).await;

    for i in 0..3 {
        claim_on(&env, &format!("on-a-{i}"), &class, "1Mi", "a").await;
        claim_on(&env, &format!("on-b-{i}"), &class, "1Mi", "b").await;
    }
    for i in 0..3 {
        for (node, base) in [("a", base_a.path()), ("b", base_b.path())] {
            let pv = bound_volume(&env, &format!("on-{node}-{i}")).await;
            assert!(local_path(&pv).starts_with(&base.display().to_string()), "on-{node}-{i} is on node {node}");
            assert_eq!(
                pv.annotations().get(hostpath_provisioner::provisioner::NODE_ANNOTATION),
                Some(&env.name(&format!("node-{node}")))
            );
        }
    }
    assert_eq!(entries(base_a.path()).len(), 3);
    assert_eq!(entries(base_b.path()).len(), 3);
    assert_eq!(a.metrics.provisioned(&class), 3);
    assert_eq!(b.metrics.provisioned(&class), 3);
    a.stop().await.expect("clean shutdown");
    b.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn retain_policy_keeps_the_directory() {
    let env = TestEnv::new("hostpath-retain").await;
    let base = tempfile::tempdir().expect("tempdir");
    let class = env.name("keep");
    env.create(&env.cluster_api(), class_for(&env, &class, "Retain", &[])).await;
    let engine = node_instance(&env, "a", base.path()).await;

    claim_on(&env, "data", &class, "1Mi", "a").await;
    let pv = bound_volume(&env, "data").await;
    std::fs::write(Path::new(&local_path(&pv)).join("precious"), b"x").expect("write");
    delete_claim(&env, "data").await;
    env.wait_for(&env.cluster_api::<PersistentVolume>(), &pv.name_any(), "the volume to be Released", |v| {
        v.is_some_and(|v| volume_phase(v) == "Released")
    })
    .await;
    assert!(Path::new(&local_path(&pv)).join("precious").exists(), "Retain keeps the data");
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn archive_on_delete_renames_the_directory() {
    let env = TestEnv::new("hostpath-archive").await;
    let base = tempfile::tempdir().expect("tempdir");
    let class = env.name("archive");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", &[("onDelete", "archive")])).await;
    let engine = node_instance(&env, "a", base.path()).await;

    claim_on(&env, "data", &class, "1Mi", "a").await;
    let pv = bound_volume(&env, "data").await;
    std::fs::write(Path::new(&local_path(&pv)).join("precious"), b"x").expect("write");
    delete_claim(&env, "data").await;
    env.wait_for(&env.cluster_api::<PersistentVolume>(), &pv.name_any(), "the volume to be deleted", |v| v.is_none())
        .await;
    let left = entries(base.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(&format!("archived-{}-", pv.name_any())), "{left:?}");
    assert!(base.path().join(&left[0]).join("precious").exists());
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn claim_larger_than_the_free_space_is_sent_back_to_the_scheduler() {
    let env = TestEnv::new("hostpath-too-big").await;
    let base = tempfile::tempdir().expect("tempdir");
    let class = env.name("local");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", &[])).await;
    let engine = node_instance(&env, "a", base.path()).await;

    claim_on(&env, "huge", &class, "1Ei", "a").await;
    env.wait_for(&env.api::<PersistentVolumeClaim>(), "huge", "the scheduler to select the node", |c| {
        c.is_some_and(|c| c.annotations().contains_key(keys::SELECTED_NODE))
    })
    .await;
    env.wait_for(&env.api::<PersistentVolumeClaim>(), "huge", "the selected node to be removed", |c| {
        c.is_some_and(|c| !c.annotations().contains_key(keys::SELECTED_NODE))
    })
    .await;
    let ev = wait_for_event(&env.client, &env.namespace, "huge", "ProvisioningFailed").await;
    assert!(ev.note.as_deref().unwrap_or_default().contains("free space"), "{:?}", ev.note);
    assert!(entries(base.path()).is_empty(), "no directory");
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn bad_class_parameter_gives_a_clear_event_and_no_directory() {
    let env = TestEnv::new("hostpath-bad-param").await;
    let base = tempfile::tempdir().expect("tempdir");
    let class = env.name("open");
    env.create(&env.cluster_api(), class_for(&env, &class, "Delete", &[("mode", "0777")])).await;
    let engine = node_instance(&env, "a", base.path()).await;

    claim_on(&env, "data", &class, "1Mi", "a").await;
    let ev = wait_for_event(&env.client, &env.namespace, "data", "ProvisioningFailed").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(
        ev.note.as_deref(),
        Some("invalid StorageClass parameter mode=\"0777\": mode \"0777\" is world-writable; use 0770 or 0750")
    );
    assert!(entries(base.path()).is_empty(), "no directory");
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

#[tokio::test]
async fn immediate_binding_class_is_told_to_use_wait_for_first_consumer() {
    let env = TestEnv::new("hostpath-immediate").await;
    let base = tempfile::tempdir().expect("tempdir");
    let class = env.name("immediate");
    let mut k = class_for(&env, &class, "Delete", &[]);
    k.volume_binding_mode = Some("Immediate".into());
    env.create(&env.cluster_api(), k).await;
    let engine = node_instance(&env, "a", base.path()).await;

    env.create(&env.api(), claim("data", &class, "1Mi")).await;
    let ev = wait_for_event(&env.client, &env.namespace, "data", "ProvisioningFailed").await;
    assert_eq!(ev.note, Some(immediate_binding_message(&class)));
    assert!(entries(base.path()).is_empty());
    // The claim can still go: the intent record is released.
    delete_claim(&env, "data").await;
    env.wait_for(&env.api::<PersistentVolumeClaim>(), "data", "the claim to be deleted", |c| c.is_none()).await;
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}
