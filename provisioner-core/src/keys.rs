//! The annotation, label and finalizer names the engine reads and writes.
//! Most are Kubernetes' own, shared with kube-controller-manager and every
//! other external provisioner; the `INTENT_*` names are this engine's, and
//! only read now: versions before the intent journal ([`crate::journal`])
//! wrote them on claims, and the engine finishes and removes such records.

/// Set on a claim by the PV binder: the provisioner that must provision it.
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The legacy spelling of [`STORAGE_PROVISIONER`], still written by the binder.
pub const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// Set on a claim by the scheduler for `WaitForFirstConsumer` classes.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The legacy spelling of [`SELECTED_NODE`].
pub const ALPHA_SELECTED_NODE: &str = "volume.alpha.kubernetes.io/selected-node";
/// The legacy way of naming a claim's class, which takes precedence over
/// `spec.storageClassName` (the seed's manifests use it).
pub const BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// On a PersistentVolume: the provisioner name that created it.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// On a PersistentVolume: its backend must be deleted before the object goes.
pub const VOLUME_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";

/// On a claim: the provisioner name whose engine recorded the intent, so
/// that engines for other names leave the record alone.
pub const INTENT_PROVISIONER: &str = "provisioner.rs/provisioner";
/// On a claim: the name of the PersistentVolume this engine is provisioning
/// for it. Written by versions before the journal, together with
/// [`INTENT_FINALIZER`], before the backend was touched.
pub const INTENT_VOLUME: &str = "provisioner.rs/volume-name";
/// On a claim: a backend volume may exist for it that no PersistentVolume
/// records yet, so the claim must not disappear unnoticed.
pub const INTENT_FINALIZER: &str = "provisioner.rs/provisioning";

/// The name of the field manager the engine writes with: every create,
/// replace and patch it sends names it, so `managedFields` say which fields
/// the engine wrote.
pub const FIELD_MANAGER: &str = "provisioner-core";

/// Parameters for a create or replace, naming [`FIELD_MANAGER`].
pub(crate) fn post_params() -> kube::api::PostParams {
    kube::api::PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

/// Parameters for a patch, naming [`FIELD_MANAGER`].
pub(crate) fn patch_params() -> kube::api::PatchParams {
    kube::api::PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}
