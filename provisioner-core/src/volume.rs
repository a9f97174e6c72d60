//! Building the PersistentVolume the engine saves: the provisioner's
//! description, completed with everything it left out. One place, pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use crate::keys;
use crate::provisioner::ProvisionedVolume;

/// Options that shape every saved volume.
#[derive(Clone, Debug)]
pub struct VolumeOptions {
    /// Put [`keys::VOLUME_FINALIZER`] on the volume, so a volume deleted
    /// before its claim still has its backend deleted.
    pub finalizer: bool,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions { finalizer: true }
    }
}

/// Completes `provisioned` into the PersistentVolume `pv_name` for `claim`.
///
/// Fields the provisioner set are kept as they are; the engine fills in only
/// what is empty: `claimRef` (with uid), `storageClassName`, the reclaim
/// policy (the class's, default `Delete`), mount options (the class's),
/// access modes and volume mode (the claim's), capacity (the claim's
/// request), and the `pv.kubernetes.io/provisioned-by` annotation (the
/// class's provisioner name).
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use provisioner_core::testing::fixtures::{claim, class};
/// use provisioner_core::volume::{build_volume, VolumeOptions};
/// use provisioner_core::ProvisionedVolume;
/// let c = claim("ns", "data").as_stored("u1").class("fast").request("5Gi").build();
/// let k = class("fast", "example.com/x").mount_options(&["noatime"]).build();
/// let pv = build_volume("pvc-u1", ProvisionedVolume::default(), &c, &k, &VolumeOptions::default());
/// let spec = pv.spec.unwrap();
/// assert_eq!(spec.capacity.unwrap()["storage"].0, "5Gi");
/// assert_eq!(spec.mount_options.unwrap(), vec!["noatime"]);
/// assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
/// # }
/// ```
pub fn build_volume(
    pv_name: &str,
    provisioned: ProvisionedVolume,
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    options: &VolumeOptions,
) -> PersistentVolume {
    let ProvisionedVolume { mut spec, labels, mut annotations } = provisioned;
    let claim_spec = claim.spec.clone().unwrap_or_default();

    annotations.entry(keys::PROVISIONED_BY.to_string()).or_insert_with(|| class.provisioner.clone());
    if spec.claim_ref.is_none() {
        spec.claim_ref = Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            namespace: claim.namespace(),
            name: Some(claim.name_any()),
            uid: claim.uid(),
            resource_version: claim.resource_version(),
            ..Default::default()
        });
    }
    if spec.storage_class_name.is_none() {
        spec.storage_class_name = class.metadata.name.clone();
    }
    if spec.persistent_volume_reclaim_policy.is_none() {
        spec.persistent_volume_reclaim_policy = Some(class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()));
    }
    if spec.mount_options.is_none() {
        spec.mount_options = class.mount_options.clone().filter(|m| !m.is_empty());
    }
    if spec.access_modes.is_none() {
        spec.access_modes = claim_spec.access_modes.clone();
    }
    if spec.volume_mode.is_none() {
        spec.volume_mode = Some(claim_spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()));
    }
    let storage = spec.capacity.as_ref().and_then(|c| c.get("storage")).cloned().or_else(|| {
        claim_spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned()
    });
    if let Some(storage) = storage {
        spec.capacity.get_or_insert_with(BTreeMap::new).insert("storage".into(), storage);
    } else if spec.capacity.is_none() {
        // A PV must state a capacity; a claim without a request gets the minimum.
        spec.capacity = Some(BTreeMap::from([("storage".into(), Quantity("1".into()))]));
    }

    // Only a volume whose backend goes with it needs the finalizer that
    // guards the backend delete; a kept (`Retain`) backend has nothing to guard.
    let finalizer = options.finalizer && spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.to_string()),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: Some(annotations),
            finalizers: finalizer.then(|| vec![keys::VOLUME_FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixtures::{claim, class};
    use k8s_openapi::api::core::v1::{NFSVolumeSource, NodeSelector, PersistentVolumeSpec, VolumeNodeAffinity};
    use proptest::prelude::*;

    #[test]
    fn fills_claim_ref_with_uid_and_class_defaults() {
        let c = claim("ns", "data").as_stored("u1").class("fast").access_modes(&["ReadWriteMany"]).build();
        let k = class("fast", "example.com/x").reclaim_policy("Retain").build();
        let pv = build_volume("pvc-u1", ProvisionedVolume::default(), &c, &k, &VolumeOptions::default());
        let spec = pv.spec.as_ref().expect("spec");
        let r = spec.claim_ref.as_ref().expect("claimRef");
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("ns"), Some("data"), Some("u1"))
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Retain"));
        assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteMany".to_string()][..]));
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        assert_eq!(pv.annotations().get(keys::PROVISIONED_BY).map(String::as_str), Some("example.com/x"));
        // A Retain volume keeps its backend: no finalizer to guard a delete.
        assert!(pv.finalizers().is_empty());
        let deleting = class("fast", "example.com/x").build();
        let pv = build_volume("pvc-u1", ProvisionedVolume::default(), &c, &deleting, &VolumeOptions::default());
        assert_eq!(pv.finalizers(), &[keys::VOLUME_FINALIZER.to_string()]);
    }

    #[test]
    fn retain_volumes_are_saved_without_the_finalizer() {
        let c = claim("ns", "data").as_stored("u1").class("fast").build();
        let k = class("fast", "example.com/x").reclaim_policy("Retain").build();
        let pv = build_volume("pvc-u1", ProvisionedVolume::default(), &c, &k, &VolumeOptions::default());
        assert!(pv.finalizers().is_empty());
    }

    #[test]
    fn finalizer_can_be_turned_off() {
        let c = claim("ns", "data").as_stored("u1").build();
        let k = class("fast", "example.com/x").build();
        let pv = build_volume("pvc-u1", ProvisionedVolume::default(), &c, &k, &VolumeOptions { finalizer: false });
        assert!(pv.finalizers().is_empty());
    }

    #[test]
    fn block_claims_get_block_volumes() {
        let c = claim("ns", "data").as_stored("u1").block().build();
        let k = class("fast", "example.com/x").build();
        let pv = build_volume("pvc-u1", ProvisionedVolume::default(), &c, &k, &VolumeOptions::default());
        assert_eq!(pv.spec.and_then(|s| s.volume_mode).as_deref(), Some("Block"));
    }

    fn arb_spec() -> impl Strategy<Value = PersistentVolumeSpec> {
        (
            proptest::option::of("[a-z]{1,8}"),
            proptest::option::of(prop_oneof![Just("Retain".to_string()), Just("Delete".to_string())]),
            proptest::option::of(proptest::collection::vec("[a-z=0-9]{1,8}", 0..3)),
            proptest::option::of(prop_oneof![
                Just(vec!["ReadWriteMany".to_string()]),
                Just(vec!["ReadOnlyMany".to_string()])
            ]),
            proptest::option::of("[0-9]{1,4}(Mi|Gi|Ei)"),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(class, policy, opts, modes, cap, nfs, affinity)| PersistentVolumeSpec {
                storage_class_name: class,
                persistent_volume_reclaim_policy: policy,
                mount_options: opts,
                access_modes: modes,
                capacity: cap.map(|c| BTreeMap::from([("storage".to_string(), Quantity(c))])),
                nfs: nfs.then(|| NFSVolumeSource { server: "fs.example".into(), path: "/".into(), read_only: None }),
                node_affinity: affinity
                    .then(|| VolumeNodeAffinity { required: Some(NodeSelector { node_selector_terms: vec![] }) }),
                ..Default::default()
            })
    }

    proptest! {
        #[test]
        fn never_loses_a_field_the_provisioner_set(
            spec in arb_spec(),
            labels in proptest::collection::btree_map("[a-z]{1,5}", "[a-z]{0,5}", 0..3),
            annotations in proptest::collection::btree_map("[a-z./]{1,12}", "[a-z]{0,5}", 0..3),
            finalizer in any::<bool>(),
        ) {
            let c = claim("ns", "data").as_stored("u1").class("fast").request("3Gi").build();
            let k = class("fast", "example.com/x").reclaim_policy("Delete").mount_options(&["ro"]).build();
            let given = ProvisionedVolume { spec: spec.clone(), labels: labels.clone(), annotations: annotations.clone() };
            let pv = build_volume("pvc-u1", given, &c, &k, &VolumeOptions { finalizer });
            let out = pv.spec.clone().expect("spec");
            if spec.storage_class_name.is_some() { prop_assert_eq!(&out.storage_class_name, &spec.storage_class_name); }
            if spec.persistent_volume_reclaim_policy.is_some() { prop_assert_eq!(&out.persistent_volume_reclaim_policy, &spec.persistent_volume_reclaim_policy); }
            if spec.mount_options.is_some() { prop_assert_eq!(&out.mount_options, &spec.mount_options); }
            if spec.access_modes.is_some() { prop_assert_eq!(&out.access_modes, &spec.access_modes); }
            if spec.capacity.is_some() { prop_assert_eq!(&out.capacity, &spec.capacity); }
            prop_assert_eq!(&out.nfs, &spec.nfs);
            prop_assert_eq!(&out.node_affinity, &spec.node_affinity);
            for (key, value) in &labels { prop_assert_eq!(pv.labels().get(key), Some(value)); }
            for (key, value) in &annotations { prop_assert_eq!(pv.annotations().get(key), Some(value)); }
            // And the engine's own fields are always present.
            prop_assert!(out.claim_ref.as_ref().and_then(|r| r.uid.as_deref()) == Some("u1"));
            prop_assert!(out.capacity.as_ref().is_some_and(|c| c.contains_key("storage")));
            prop_assert!(pv.annotations().contains_key(keys::PROVISIONED_BY));
            let delete = out.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
            prop_assert_eq!(pv.finalizers().contains(&keys::VOLUME_FINALIZER.to_string()), finalizer && delete);
        }
    }
}
