//! Builders for claims, classes, volumes and nodes: one vocabulary for unit
//! tests of provisioners and of the engine's decisions, and for tests that
//! create the objects on an API server (the testing kit's or a real one).
//!
//! # Objects to create, and objects as a server returns them
//! What the builders make by default, a real kube-apiserver accepts on
//! create: no `resourceVersion` (a create carrying one is refused), no uid
//! and no `creationTimestamp` (the server sets both), a claim with access
//! modes and a storage request, a volume with a capacity, access modes and
//! exactly one volume source. (A server also drops what a create says of the
//! status and of `deletionTimestamp`: [`VolumeBuilder::phase`] and the
//! `deleting` methods matter only to objects that are not created.)
//!
//! Code under test that reads objects, such as the engine's decisions, sees
//! them as the server returns them. Only the `as_stored` methods (and
//! `resource_version`) add what the server sets; an object built with them
//! is refused on create, as it would be by a real server.
//!
//! ```
//! use provisioner_core::testing::fixtures::{claim, class};
//! // To create: no uid, no resourceVersion.
//! let c = claim("ns", "data").class("fast").request("1Gi").build();
//! assert_eq!((c.metadata.uid.as_deref(), c.metadata.resource_version.as_deref()), (None, None));
//! // As read from a server, for a decision that looks at uids.
//! let read = claim("ns", "data").class("fast").provisioner("example.com/x").as_stored("uid-1").build();
//! assert_eq!(read.metadata.uid.as_deref(), Some("uid-1"));
//! assert_eq!(read.metadata.resource_version.as_deref(), Some("1"));
//! let k = class("fast", "example.com/x").wait_for_first_consumer().build();
//! assert_eq!(k.volume_binding_mode.as_deref(), Some("WaitForFirstConsumer"));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeSpec, PersistentVolumeStatus, TypedLocalObjectReference, TypedObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;

use crate::keys;
use crate::provisioner::ProvisionRequest;

/// The `kubernetes.io/hostname` label a kubelet puts on its Node.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// What a server sets on an object it stores: `uid`, a `creationTimestamp`
/// and, unless one is set already, resourceVersion `1`.
fn stored(meta: &mut ObjectMeta, uid: &str) {
    meta.uid = Some(uid.into());
    meta.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    meta.resource_version.get_or_insert_with(|| "1".into());
}

fn add_label(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.labels.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
}

fn add_annotation(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
}

fn modes(access_modes: &[&str]) -> Vec<String> {
    access_modes.iter().map(|m| m.to_string()).collect()
}

/// Starts a claim `namespace/name`: `ReadWriteOnce`, 1Gi, no class. An empty
/// `namespace` leaves `metadata.namespace` unset, for a claim created
/// through a namespaced `Api` (which names the namespace in the URL).
pub fn claim(namespace: &str, name: &str) -> ClaimBuilder {
    ClaimBuilder(PersistentVolumeClaim {
        metadata: ObjectMeta {
            namespace: (!namespace.is_empty()).then(|| namespace.into()),
            name: Some(name.into()),
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

/// Builds a [`PersistentVolumeClaim`]; see [`claim`].
#[derive(Clone, Debug)]
pub struct ClaimBuilder(PersistentVolumeClaim);

impl ClaimBuilder {
    fn spec(&mut self) -> &mut PersistentVolumeClaimSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }
    /// Sets an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        add_annotation(&mut self.0.metadata, key, value);
        self
    }
    /// Sets a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        add_label(&mut self.0.metadata, key, value);
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
    pub fn access_modes(mut self, access_modes: &[&str]) -> Self {
        self.spec().access_modes = Some(modes(access_modes));
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
    /// Marks the claim as being deleted (a create ignores this).
    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        self
    }
    /// Records the provisioning intent of `provisioner`'s engine for volume `pv`.
    pub fn intent_of(mut self, provisioner: &str, pv: &str) -> Self {
        self.0.metadata.finalizers.get_or_insert_with(Vec::new).push(keys::INTENT_FINALIZER.into());
        self.annotation(keys::INTENT_VOLUME, pv).annotation(keys::INTENT_PROVISIONER, provisioner)
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
    /// The claim as an API server returns it: with uid `uid`, a
    /// `creationTimestamp` and resourceVersion `1` (unless
    /// [`resource_version`](Self::resource_version) set another). A create
    /// of it is refused.
    pub fn as_stored(mut self, uid: &str) -> Self {
        stored(&mut self.0.metadata, uid);
        self
    }
    /// Sets the resourceVersion, as a claim read from a server has (a
    /// create carrying one is refused).
    pub fn resource_version(mut self, rv: &str) -> Self {
        self.0.metadata.resource_version = Some(rv.into());
        self
    }
    /// The claim.
    pub fn build(self) -> PersistentVolumeClaim {
        self.0
    }
}

/// Starts a class `name` for `provisioner`: no reclaim policy or binding
/// mode set (the server defaults them to `Delete` and `Immediate`).
pub fn class(name: &str, provisioner: &str) -> ClassBuilder {
    ClassBuilder(StorageClass {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        provisioner: provisioner.into(),
        ..Default::default()
    })
}

/// Builds a [`StorageClass`]; see [`class`].
#[derive(Clone, Debug)]
pub struct ClassBuilder(StorageClass);

impl ClassBuilder {
    /// `volumeBindingMode: WaitForFirstConsumer`.
    pub fn wait_for_first_consumer(mut self) -> Self {
        self.0.volume_binding_mode = Some("WaitForFirstConsumer".into());
        self
    }
    /// `volumeBindingMode: Immediate`, spelt out.
    pub fn immediate(mut self) -> Self {
        self.0.volume_binding_mode = Some("Immediate".into());
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
        self.0.mount_options = Some(modes(options));
        self
    }
    /// `allowVolumeExpansion: true`: bound claims of the class may grow.
    pub fn allow_volume_expansion(mut self) -> Self {
        self.0.allow_volume_expansion = Some(true);
        self
    }
    /// Sets a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        add_label(&mut self.0.metadata, key, value);
        self
    }
    /// The class as an API server returns it: with uid `uid`, a
    /// `creationTimestamp` and resourceVersion `1` (unless
    /// [`resource_version`](Self::resource_version) set another). A create
    /// of it is refused.
    pub fn as_stored(mut self, uid: &str) -> Self {
        stored(&mut self.0.metadata, uid);
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

/// A `spec.claimRef` to the claim `namespace/name`, by uid when given
/// (without one, a volume pre-bound by name: the binder fills the uid in).
pub fn claim_ref(namespace: &str, name: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid: uid.map(str::to_string),
        ..Default::default()
    }
}

/// The reference to `claim` a volume bound to it carries.
fn ref_to(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: claim.metadata.namespace.clone(),
        name: claim.metadata.name.clone(),
        uid: claim.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Starts a volume `name` that `provisioner` provisioned for `claim`: the
/// `pv.kubernetes.io/provisioned-by` annotation, the engine's deletion
/// finalizer, a `claimRef` to the claim (with its uid, if it has one),
/// policy `Delete`, phase `Bound`, the claim's request as its capacity (1Gi
/// without one), the claim's access modes (`ReadWriteOnce` without them)
/// and a `hostPath` source `/srv/volumes/<name>`.
pub fn volume(name: &str, provisioner: &str, claim: &PersistentVolumeClaim) -> VolumeBuilder {
    let claim_spec = claim.spec.as_ref();
    let request = claim_spec.and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage").cloned());
    let access_modes = claim_spec.and_then(|s| s.access_modes.clone()).filter(|m| !m.is_empty());
    VolumeBuilder(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(BTreeMap::from([(keys::PROVISIONED_BY.into(), provisioner.into())])),
            finalizers: Some(vec![keys::VOLUME_FINALIZER.into()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".into(), request.unwrap_or_else(|| Quantity("1Gi".into())))])),
            access_modes: Some(access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()])),
            host_path: Some(HostPathVolumeSource { path: format!("/srv/volumes/{name}"), type_: None }),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            claim_ref: Some(ref_to(claim)),
            ..Default::default()
        }),
        status: Some(PersistentVolumeStatus { phase: Some("Bound".into()), ..Default::default() }),
    })
}

/// Starts a statically provisioned volume `name`, as an admin creates one by
/// hand: no `pv.kubernetes.io/provisioned-by`, no finalizer, no `claimRef`,
/// no class, 1Gi `ReadWriteOnce`, policy `Retain` and a `hostPath` source
/// `/srv/static-volumes/<name>`.
pub fn static_volume(name: &str) -> VolumeBuilder {
    VolumeBuilder(PersistentVolume {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            host_path: Some(HostPathVolumeSource { path: format!("/srv/static-volumes/{name}"), type_: None }),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            ..Default::default()
        }),
        status: None,
    })
}

/// Builds a [`PersistentVolume`]; see [`volume`] and [`static_volume`].
#[derive(Clone, Debug)]
pub struct VolumeBuilder(PersistentVolume);

impl VolumeBuilder {
    fn spec(&mut self) -> &mut PersistentVolumeSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }
    /// Sets the phase (`Bound`, `Released`, ...; a create ignores it).
    pub fn phase(mut self, phase: &str) -> Self {
        self.0.status.get_or_insert_with(Default::default).phase = Some(phase.into());
        self
    }
    /// Sets the reclaim policy.
    pub fn reclaim_policy(mut self, policy: &str) -> Self {
        self.spec().persistent_volume_reclaim_policy = Some(policy.into());
        self
    }
    /// Sets `spec.storageClassName`.
    pub fn class(mut self, class: &str) -> Self {
        self.spec().storage_class_name = Some(class.into());
        self
    }
    /// Sets the `storage` capacity.
    pub fn capacity(mut self, size: &str) -> Self {
        self.spec().capacity.get_or_insert_with(BTreeMap::new).insert("storage".into(), Quantity(size.into()));
        self
    }
    /// Sets the access modes.
    pub fn access_modes(mut self, access_modes: &[&str]) -> Self {
        self.spec().access_modes = Some(modes(access_modes));
        self
    }
    /// Sets the `hostPath` source's path.
    pub fn host_path(mut self, path: &str) -> Self {
        self.spec().host_path = Some(HostPathVolumeSource { path: path.into(), type_: None });
        self
    }
    /// Sets `spec.claimRef` (see [`claim_ref`]).
    pub fn claim_ref(mut self, claim_ref: ObjectReference) -> Self {
        self.spec().claim_ref = Some(claim_ref);
        self
    }
    /// Made to match `claim`, and pre-bound to it: the claim's requests as
    /// its capacity, its access modes and class, and a `claimRef` to it
    /// (with its uid, if it has one).
    pub fn for_claim(mut self, claim: &PersistentVolumeClaim) -> Self {
        let spec = claim.spec.clone().unwrap_or_default();
        let capacity = spec.resources.and_then(|r| r.requests).unwrap_or_default();
        let s = self.spec();
        s.capacity = Some(capacity);
        s.access_modes = spec.access_modes;
        s.storage_class_name = spec.storage_class_name;
        s.claim_ref = Some(ref_to(claim));
        self
    }
    /// Sets an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        add_annotation(&mut self.0.metadata, key, value);
        self
    }
    /// Marks the volume as provisioned by `provisioner` (the
    /// `pv.kubernetes.io/provisioned-by` annotation).
    pub fn provisioned_by(self, provisioner: &str) -> Self {
        self.annotation(keys::PROVISIONED_BY, provisioner)
    }
    /// Adds a finalizer.
    pub fn finalizer(mut self, finalizer: &str) -> Self {
        self.0.metadata.finalizers.get_or_insert_with(Vec::new).push(finalizer.into());
        self
    }
    /// Sets a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        add_label(&mut self.0.metadata, key, value);
        self
    }
    /// Marks the volume as being deleted (a create ignores this).
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
        self.spec().claim_ref = None;
        self.phase("Available")
    }
    /// The volume as an API server returns it: with uid `uid`, a
    /// `creationTimestamp` and resourceVersion `1` (unless
    /// [`resource_version`](Self::resource_version) set another). A create
    /// of it is refused.
    pub fn as_stored(mut self, uid: &str) -> Self {
        stored(&mut self.0.metadata, uid);
        self
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

/// Starts a Node `name` whose `kubernetes.io/hostname` label is its name
/// (set another with [`NodeBuilder::hostname`]; on real clusters the two
/// can differ). No status: a create ignores it.
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(HOSTNAME_LABEL.into(), name.into())])),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Builds a [`Node`]; see [`node`].
#[derive(Clone, Debug)]
pub struct NodeBuilder(Node);

impl NodeBuilder {
    /// Sets the `kubernetes.io/hostname` label.
    pub fn hostname(self, hostname: &str) -> Self {
        self.label(HOSTNAME_LABEL, hostname)
    }
    /// Sets a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        add_label(&mut self.0.metadata, key, value);
        self
    }
    /// The node as an API server returns it: with uid `uid`, a
    /// `creationTimestamp` and resourceVersion `1`. A create of it is refused.
    pub fn as_stored(mut self, uid: &str) -> Self {
        stored(&mut self.0.metadata, uid);
        self
    }
    /// The node.
    pub fn build(self) -> Node {
        self.0
    }
}

/// A request for volume `pv_name` from class `class_name` (provisioner
/// `example.com/test`) with `parameters`, for claim `default/data` as
/// stored (uid `uid-1`).
pub fn request<'a>(
    pv_name: &str,
    class_name: &str,
    parameters: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> ProvisionRequest {
    let mut k = class(class_name, "example.com/test");
    for (key, value) in parameters {
        k = k.parameter(key, value);
    }
    let c = claim("default", "data").class(class_name).as_stored("uid-1");
    ProvisionRequest::new(pv_name, Arc::new(c.build()), Arc::new(k.build()))
}

/// The claim's phase, or `""` when it has none yet.
pub fn claim_phase(c: &PersistentVolumeClaim) -> &str {
    c.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// The volume's phase, or `""` when it has none yet.
pub fn volume_phase(v: &PersistentVolume) -> &str {
    v.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}
