//! Builders for claims, classes and volumes, for unit tests of provisioners
//! and of the engine's decisions, and for tests that create them on an API
//! server: what they build, a real kube-apiserver accepts on create (no
//! `resourceVersion`; a volume has a capacity, access modes and a volume
//! source). The server replaces the uids they set and drops their status
//! and `deletionTimestamp`.
//!
//! ```
//! use provisioner_core::fixtures::{claim, class};
//! let c = claim("ns", "data", "uid-1").class("fast").request("1Gi").provisioner("example.com/x").build();
//! let k = class("fast", "example.com/x").wait_for_first_consumer().build();
//! assert_eq!(k.volume_binding_mode.as_deref(), Some("WaitForFirstConsumer"));
//! assert_eq!(c.metadata.uid.as_deref(), Some("uid-1"));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeSpec, PersistentVolumeStatus, TypedLocalObjectReference, TypedObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;

use crate::keys;
use crate::provisioner::ProvisionRequest;

/// Starts a claim `namespace/name` with uid `uid`, `ReadWriteOnce`, 1Gi, no resourceVersion.
pub fn claim(namespace: &str, name: &str, uid: &str) -> ClaimBuilder {
    ClaimBuilder(PersistentVolumeClaim {
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Builds a [`PersistentVolumeClaim`].
#[derive(Clone, Debug)]
pub struct ClaimBuilder(PersistentVolumeClaim);

impl ClaimBuilder {
    fn spec(&mut self) -> &mut PersistentVolumeClaimSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }
    /// Sets an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }
    /// Sets `spec.storageClassName`.
    pub fn class(mut self, class: &str) -> Self {
        self.spec().storage_class_name = Some(class.into());
        self
    }
    /// Names the class with the legacy beta annotation, as the seed's claims do.
    pub fn legacy_class(self, class: &str) -> Self {
        self.annotation(keys::BETA_STORAGE_CLASS, class)
    }
    /// Sets the storage request.
    pub fn request(mut self, size: &str) -> Self {
        let res = self.spec().resources.get_or_insert_with(Default::default);
        res.requests.get_or_insert_with(BTreeMap::new).insert("storage".into(), Quantity(size.into()));
        self
    }
    /// Sets the access modes.
    pub fn access_modes(mut self, modes: &[&str]) -> Self {
        self.spec().access_modes = Some(modes.iter().map(|m| m.to_string()).collect());
        self
    }
    /// Asks for a raw block volume.
    pub fn block(mut self) -> Self {
        self.spec().volume_mode = Some("Block".into());
        self
    }
    /// The binder's annotation naming the provisioner.
    pub fn provisioner(self, name: &str) -> Self {
        self.annotation(keys::STORAGE_PROVISIONER, name)
    }
    /// The scheduler's selected node.
    pub fn selected_node(self, node: &str) -> Self {
        self.annotation(keys::SELECTED_NODE, node)
    }
    /// Bound (or pre-bound) to volume `pv`.
    pub fn volume_name(mut self, pv: &str) -> Self {
        self.spec().volume_name = Some(pv.into());
        self
    }
    /// Marks the claim as being deleted.
    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        self
    }
    /// Records the provisioning intent of `provisioner`'s engine for volume `pv`.
    pub fn intent_of(mut self, provisioner: &str, pv: &str) -> Self {
        self.0.metadata.finalizers.get_or_insert_with(Vec::new).push(keys::INTENT_FINALIZER.into());
        self.annotation(keys::INTENT_VOLUME, pv).annotation(keys::INTENT_PROVISIONER, provisioner)
    }
    /// Sets the resourceVersion, as a claim read from a server has (a
    /// create carrying one is refused).
    pub fn resource_version(mut self, rv: &str) -> Self {
        self.0.metadata.resource_version = Some(rv.into());
        self
    }
    /// Asks for an existing volume with these labels (`spec.selector`).
    pub fn selector(mut self, label: &str, value: &str) -> Self {
        let sel = self.spec().selector.get_or_insert_with(Default::default);
        sel.match_labels.get_or_insert_with(BTreeMap::new).insert(label.into(), value.into());
        self
    }
    /// Asks for a clone of claim `source` (`spec.dataSource` and the
    /// `spec.dataSourceRef` the API server mirrors it to).
    pub fn clone_of(self, source: &str) -> Self {
        self.data_source(None, "PersistentVolumeClaim", source)
    }
    /// Asks for a restore of `VolumeSnapshot` `snapshot`.
    pub fn from_snapshot(self, snapshot: &str) -> Self {
        self.data_source(Some(crate::provisioner::SNAPSHOT_GROUP), "VolumeSnapshot", snapshot)
    }
    /// Asks for contents from any source (`spec.dataSource` and `spec.dataSourceRef`).
    pub fn data_source(mut self, api_group: Option<&str>, kind: &str, name: &str) -> Self {
        let api_group = api_group.map(str::to_string);
        self.spec().data_source =
            Some(TypedLocalObjectReference { api_group: api_group.clone(), kind: kind.into(), name: name.into() });
        self.spec().data_source_ref =
            Some(TypedObjectReference { api_group, kind: kind.into(), name: name.into(), namespace: None });
        self
    }
    /// The claim.
    pub fn build(self) -> PersistentVolumeClaim {
        self.0
    }
}

/// Starts a class `name` for `provisioner`, `Immediate` binding, no reclaim policy set, no resourceVersion.
pub fn class(name: &str, provisioner: &str) -> ClassBuilder {
    ClassBuilder(StorageClass {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        provisioner: provisioner.into(),
        ..Default::default()
    })
}

/// Builds a [`StorageClass`].
#[derive(Clone, Debug)]
pub struct ClassBuilder(StorageClass);

impl ClassBuilder {
    /// `volumeBindingMode: WaitForFirstConsumer`.
    pub fn wait_for_first_consumer(mut self) -> Self {
        self.0.volume_binding_mode = Some("WaitForFirstConsumer".into());
        self
    }
    /// Sets the reclaim policy (`Delete` or `Retain`).
    pub fn reclaim_policy(mut self, policy: &str) -> Self {
        self.0.reclaim_policy = Some(policy.into());
        self
    }
    /// Adds a parameter.
    pub fn parameter(mut self, key: &str, value: &str) -> Self {
        self.0.parameters.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }
    /// Sets the mount options.
    pub fn mount_options(mut self, options: &[&str]) -> Self {
        self.0.mount_options = Some(options.iter().map(|m| m.to_string()).collect());
        self
    }
    /// `allowVolumeExpansion: true`: bound claims of the class may grow.
    pub fn allow_volume_expansion(mut self) -> Self {
        self.0.allow_volume_expansion = Some(true);
        self
    }
    /// Sets the resourceVersion, as a class read from a server has (a
    /// create carrying one is refused).
    pub fn resource_version(mut self, rv: &str) -> Self {
        self.0.metadata.resource_version = Some(rv.into());
        self
    }
    /// The class.
    pub fn build(self) -> StorageClass {
        self.0
    }
}

/// Starts a volume `name` provisioned by `provisioner` for `claim`, policy
/// `Delete`, phase `Bound`, uid `uid-of-<name>`, no resourceVersion: with the
/// claim's request as its capacity (1Gi without one), the claim's access
/// modes (`ReadWriteOnce` without them) and a `hostPath` source
/// `/srv/volumes/<name>`.
pub fn volume(name: &str, provisioner: &str, claim: &PersistentVolumeClaim) -> VolumeBuilder {
    let claim_spec = claim.spec.as_ref();
    let request = claim_spec.and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage").cloned());
    let access_modes = claim_spec.and_then(|s| s.access_modes.clone()).filter(|m| !m.is_empty());
    VolumeBuilder(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-of-{name}")),
            annotations: Some(BTreeMap::from([(keys::PROVISIONED_BY.into(), provisioner.into())])),
            finalizers: Some(vec![keys::VOLUME_FINALIZER.into()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".into(), request.unwrap_or_else(|| Quantity("1Gi".into())))])),
            access_modes: Some(access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()])),
            host_path: Some(HostPathVolumeSource { path: format!("/srv/volumes/{name}"), type_: None }),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            claim_ref: Some(ObjectReference {
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeStatus { phase: Some("Bound".into()), ..Default::default() }),
    })
}

/// Builds a [`PersistentVolume`].
#[derive(Clone, Debug)]
pub struct VolumeBuilder(PersistentVolume);

impl VolumeBuilder {
    /// Sets the phase (`Bound`, `Released`, ...).
    pub fn phase(mut self, phase: &str) -> Self {
        self.0.status.get_or_insert_with(Default::default).phase = Some(phase.into());
        self
    }
    /// Sets the reclaim policy.
    pub fn reclaim_policy(mut self, policy: &str) -> Self {
        self.0.spec.get_or_insert_with(Default::default).persistent_volume_reclaim_policy = Some(policy.into());
        self
    }
    /// Marks the volume as being deleted.
    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        self
    }
    /// Removes every finalizer.
    pub fn without_finalizers(mut self) -> Self {
        self.0.metadata.finalizers = None;
        self
    }
    /// Removes the `pv.kubernetes.io/provisioned-by` annotation (a statically provisioned volume).
    pub fn static_volume(mut self) -> Self {
        if let Some(a) = self.0.metadata.annotations.as_mut() {
            a.remove(keys::PROVISIONED_BY);
        }
        self
    }
    /// Binds the volume to no claim (`spec.claimRef` unset), phase `Available`.
    pub fn unclaimed(mut self) -> Self {
        self.0.spec.get_or_insert_with(Default::default).claim_ref = None;
        self.phase("Available")
    }
    /// Sets the resourceVersion, as a volume read from a server has (a
    /// create carrying one is refused).
    pub fn resource_version(mut self, rv: &str) -> Self {
        self.0.metadata.resource_version = Some(rv.into());
        self
    }
    /// The volume.
    pub fn build(self) -> PersistentVolume {
        self.0
    }
}

/// A request for volume `pv_name` from class `class` with `parameters`.
pub fn request<'a>(
    pv_name: &str,
    class_name: &str,
    parameters: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> ProvisionRequest {
    let mut k = class(class_name, "example.com/test");
    for (key, value) in parameters {
        k = k.parameter(key, value);
    }
    ProvisionRequest {
        pv_name: pv_name.into(),
        claim: Arc::new(claim("default", "data", "uid-1").class(class_name).build()),
        class: Arc::new(k.build()),
        selected_node: None,
        data_source: None,
    }
}
