//! Proves that the test control plane is the real thing: kube-controller-manager's
//! PV binder annotates claims for external provisioners, binds pre-bound
//! volumes, and releases volumes whose claim is gone.

use e2e_support::TestEnv;
use e2e_support::fixtures::{claim, claim_phase, storage_class, volume_for, volume_phase};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::DeleteParams;

const PROVISIONER: &str = "example.com/none";

#[tokio::test]
async fn binder_annotates_binds_and_releases_a_claim() {
    let env = TestEnv::new("binder-annotates-binds-releases").await;
    let class_name = env.name("none");
    env.create(&env.cluster_api::<StorageClass>(), storage_class(&class_name, PROVISIONER)).await;
    let claims = env.api::<PersistentVolumeClaim>();
    let created = env.create(&claims, claim("data", &class_name, "1Gi")).await;

    // The binder finds no volume and hands the claim to the class's provisioner.
    let annotated = env
        .wait_for(&claims, "data", "the binder to name the external provisioner", |c| {
            c.is_some_and(|c| {
                c.annotations().get("volume.kubernetes.io/storage-provisioner").map(String::as_str) == Some(PROVISIONER)
            })
        })
        .await
        .expect("claim exists");
    assert_eq!(claim_phase(&annotated), "Pending");
    assert_eq!(
        annotated.annotations().get("volume.beta.kubernetes.io/storage-provisioner").map(String::as_str),
        Some(PROVISIONER),
        "the binder also writes the legacy annotation"
    );

    // A volume pre-bound to the claim's uid is what a provisioner would create.
    let volumes = env.cluster_api::<PersistentVolume>();
    let pv_name = env.name("pv");
    env.create(&volumes, volume_for(&pv_name, &created, "Retain")).await;
    let bound = env
        .wait_for(&claims, "data", "the claim to be Bound", |c| c.is_some_and(|c| claim_phase(c) == "Bound"))
        .await
        .expect("claim exists");
    assert_eq!(bound.spec.as_ref().and_then(|s| s.volume_name.clone()), Some(pv_name.clone()));
    env.wait_for(&volumes, &pv_name, "the volume to be Bound", |v| v.is_some_and(|v| volume_phase(v) == "Bound")).await;

    // Without its claim, a Retain volume is Released, not deleted.
    claims.delete("data", &DeleteParams::default()).await.expect("delete claim");
    env.wait_for(&claims, "data", "the claim to be gone", |c| c.is_none()).await;
    let released = env
        .wait_for(&volumes, &pv_name, "the volume to be Released", |v| v.is_some_and(|v| volume_phase(v) == "Released"))
        .await
        .expect("volume kept");
    assert_eq!(
        released.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone()),
        created.uid(),
        "a released volume keeps the reference to its old claim"
    );
    env.cleanup().await;
}
