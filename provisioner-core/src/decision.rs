//! What to do about one volume: a pure function of object snapshots.
//!
//! The engine keys all work by PersistentVolume name, so the claim path and
//! the delete path of one volume are decided together and never run at once.
//! [`decide`] looks at the claim, the volume and the class as last seen (plus
//! whether the cache still shows the state from before the engine's own last
//! write) and returns a [`Decision`]; it does no I/O, so every case is a
//! plain unit test.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

use crate::keys;
use crate::provisioner::Provisioner;

/// The objects that one decision looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot<'a> {
    /// The claim whose volume this is, if it still exists.
    pub claim: Option<&'a PersistentVolumeClaim>,
    /// The volume, if it exists.
    pub volume: Option<&'a PersistentVolume>,
    /// The claim's class, if it exists.
    pub class: Option<&'a StorageClass>,
    /// The cache still shows the claim or the volume as they were before the
    /// engine's own last write to them: wait for the watch to catch up.
    pub cache_stale: bool,
}

/// What the engine should do next for one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing, for the reason given.
    Idle(IdleReason),
    /// Wait for the cache to show the engine's own last write.
    WaitForCache,
    /// The claim names a class that does not exist (yet); the class watch
    /// brings the claim back.
    WaitForClass(String),
    /// Call [`Provisioner::provision`] and save the volume.
    Provision(ProvisionPlan),
    /// The claim asks for a block volume that the provisioner cannot make:
    /// one warning, no retry.
    RejectBlock,
    /// The volume records the backend now, or nothing was ever created:
    /// remove the engine's intent finalizer from the claim.
    ReleaseClaim,
    /// Delete the backend volume, then (if `delete_object`) the PV object,
    /// then the PV's finalizer.
    DeleteBackend {
        /// Whether the PV object itself must still be deleted (it is not yet
        /// being deleted).
        delete_object: bool,
    },
    /// The PV is being deleted and its backend is not ours to delete (or is
    /// kept): only remove the engine's finalizer.
    RemoveVolumeFinalizer,
}

/// Why [`Decision::Idle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleReason {
    /// Neither claim nor volume exists.
    Nothing,
    /// The claim is bound or pre-bound to a volume.
    ClaimBound,
    /// The claim is being deleted and nothing was started for it.
    ClaimDeleting,
    /// The claim is not annotated for one of this engine's provisioner names.
    NotOurs,
    /// A `WaitForFirstConsumer` claim has no selected node yet.
    WaitingForNode,
    /// The provisioner's `should_provision` filter declined the claim.
    Filtered,
    /// The volume exists and needs nothing now.
    VolumeSettled,
}

/// The details of a [`Decision::Provision`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionPlan {
    /// The PV name (the idempotency key).
    pub pv_name: String,
    /// The node handed to the provisioner.
    pub selected_node: Option<String>,
    /// The claim has no intent record yet: write it before calling the backend.
    pub record_intent: bool,
    /// The claim is going away (or bound elsewhere): the call only finishes
    /// work that may have started, so the backend can then be cleaned up.
    pub finishing_only: bool,
}

/// The provisioner names one engine answers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names(Vec<String>);

impl Names {
    /// The primary name and any additional ones.
    ///
    /// ```
    /// use provisioner_core::decision::Names;
    /// let names = Names::new("efs.aws.skpr.io/generalPurpose", ["efs.aws.skpr.io/maxIO"]);
    /// assert!(names.contains("efs.aws.skpr.io/maxIO"));
    /// assert_eq!(names.primary(), "efs.aws.skpr.io/generalPurpose");
    /// ```
    pub fn new<S: Into<String>>(primary: impl Into<String>, more: impl IntoIterator<Item = S>) -> Self {
        let mut v = vec![primary.into()];
        v.extend(more.into_iter().map(Into::into));
        Names(v)
    }
    /// The first name.
    pub fn primary(&self) -> &str {
        &self.0[0]
    }
    /// Whether `name` is one of ours.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
    /// All names.
    pub fn all(&self) -> &[String] {
        &self.0
    }
}

/// The class a claim names: the legacy beta annotation wins over `spec.storageClassName`.
pub fn claim_class(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::BETA_STORAGE_CLASS))
        .map(String::as_str)
        .or_else(|| claim.spec.as_ref()?.storage_class_name.as_deref())
        .filter(|c| !c.is_empty())
}

/// The provisioner the binder assigned to the claim.
pub fn claim_provisioner(claim: &PersistentVolumeClaim) -> Option<&str> {
    annotation(claim, keys::STORAGE_PROVISIONER).or_else(|| annotation(claim, keys::BETA_STORAGE_PROVISIONER))
}

/// The node the scheduler picked for the claim.
pub fn selected_node(claim: &PersistentVolumeClaim) -> Option<&str> {
    annotation(claim, keys::SELECTED_NODE).or_else(|| annotation(claim, keys::ALPHA_SELECTED_NODE))
}

/// Whether the claim carries an intent record written for one of `names`.
pub fn has_intent(claim: &PersistentVolumeClaim, names: &Names) -> bool {
    has_finalizer(claim, keys::INTENT_FINALIZER)
        && annotation(claim, keys::INTENT_PROVISIONER).is_some_and(|p| names.contains(p))
}

/// Whether the engine has any business with this claim: annotated for one of
/// our names, or carrying our intent record.
pub fn claim_is_relevant(claim: &PersistentVolumeClaim, names: &Names) -> bool {
    has_intent(claim, names) || claim_provisioner(claim).is_some_and(|p| names.contains(p))
}

/// Whether the engine has any business with this volume.
pub fn volume_is_relevant(volume: &PersistentVolume, names: &Names) -> bool {
    has_finalizer(volume, keys::VOLUME_FINALIZER)
        || annotation(volume, keys::PROVISIONED_BY).is_some_and(|p| names.contains(p))
}

fn annotation<'a, K: ResourceExt>(obj: &'a K, key: &str) -> Option<&'a str> {
    obj.meta().annotations.as_ref()?.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

fn has_finalizer<K: ResourceExt>(obj: &K, finalizer: &str) -> bool {
    obj.meta().finalizers.as_ref().is_some_and(|f| f.iter().any(|x| x == finalizer))
}

fn deleting<K: ResourceExt>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_some()
}

/// Decides what to do about the volume named `pv_name`.
///
/// ```
/// use provisioner_core::decision::{decide, Decision, Names, Snapshot};
/// use provisioner_core::fixtures::{claim, class};
/// # use provisioner_core::{DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
/// # use k8s_openapi::api::core::v1::PersistentVolume;
/// # struct P;
/// # #[async_trait::async_trait]
/// # impl Provisioner for P {
/// #     async fn provision(&self, _: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> { unimplemented!() }
/// #     async fn delete(&self, _: &PersistentVolume) -> Result<(), DeleteError> { unimplemented!() }
/// # }
/// let names = Names::new("example.com/x", Vec::<String>::new());
/// let c = claim("ns", "data", "u1").class("fast").provisioner("example.com/x").build();
/// let k = class("fast", "example.com/x").build();
/// let snap = Snapshot { claim: Some(&c), class: Some(&k), ..Default::default() };
/// assert!(matches!(decide("pvc-u1", &snap, &names, &P), Decision::Provision(p) if p.record_intent));
/// ```
pub fn decide(pv_name: &str, snap: &Snapshot<'_>, names: &Names, provisioner: &dyn Provisioner) -> Decision {
    if snap.cache_stale {
        return Decision::WaitForCache;
    }
    if let Some(volume) = snap.volume {
        return decide_existing_volume(volume, snap.claim, names, provisioner);
    }
    let Some(claim) = snap.claim else {
        return Decision::Idle(IdleReason::Nothing);
    };
    let node = selected_node(claim).map(str::to_string);

    if has_intent(claim, names) {
        // A backend volume may exist and no PV records it: finish the work
        // whatever happened to the claim, so it can be saved and then cleaned
        // up through the normal release path.
        let Some(class) = snap.class else {
            return Decision::WaitForClass(claim_class(claim).unwrap_or_default().to_string());
        };
        // Another instance of the same provisioner name (a node's, a
        // shard's) may own the record: only the one whose filter takes the
        // claim may finish it.
        if !provisioner.should_provision(claim, class) {
            return Decision::Idle(IdleReason::Filtered);
        }
        let finishing_only = deleting(claim) || bound(claim);
        return Decision::Provision(ProvisionPlan {
            pv_name: pv_name.into(),
            selected_node: node,
            record_intent: false,
            finishing_only,
        });
    }
    if deleting(claim) {
        return Decision::Idle(IdleReason::ClaimDeleting);
    }
    if bound(claim) {
        return Decision::Idle(IdleReason::ClaimBound);
    }
    if !claim_provisioner(claim).is_some_and(|p| names.contains(p)) {
        return Decision::Idle(IdleReason::NotOurs);
    }
    let Some(class) = snap.class else {
        return Decision::WaitForClass(claim_class(claim).unwrap_or_default().to_string());
    };
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") && node.is_none() {
        return Decision::Idle(IdleReason::WaitingForNode);
    }
    if claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block") && !provisioner.supports_block(class)
    {
        return Decision::RejectBlock;
    }
    if !provisioner.should_provision(claim, class) {
        return Decision::Idle(IdleReason::Filtered);
    }
    Decision::Provision(ProvisionPlan {
        pv_name: pv_name.into(),
        selected_node: node,
        record_intent: true,
        finishing_only: false,
    })
}

fn bound(claim: &PersistentVolumeClaim) -> bool {
    claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).is_some_and(|v| !v.is_empty())
}

fn decide_existing_volume(
    volume: &PersistentVolume,
    claim: Option<&PersistentVolumeClaim>,
    names: &Names,
    provisioner: &dyn Provisioner,
) -> Decision {
    let ours = annotation(volume, keys::PROVISIONED_BY).is_some_and(|p| names.contains(p));
    let spec = volume.spec.as_ref();
    let policy_delete =
        spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()).unwrap_or("Delete") == "Delete";

    // The PV now records the backend, so the claim's intent record has done
    // its job. It is removed lazily, once the claim is going away, which
    // keeps the normal path at one claim write.
    if let Some(claim) = claim {
        let refers_to_claim =
            spec.and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.as_deref()) == claim.uid().as_deref();
        if has_intent(claim, names) && refers_to_claim && deleting(claim) {
            return Decision::ReleaseClaim;
        }
    }

    if deleting(volume) {
        if !has_finalizer(volume, keys::VOLUME_FINALIZER) {
            return Decision::Idle(IdleReason::VolumeSettled);
        }
        if ours && policy_delete && provisioner.should_delete(volume) {
            return Decision::DeleteBackend { delete_object: false };
        }
        return Decision::RemoveVolumeFinalizer;
    }
    let released = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    if released && ours && policy_delete && provisioner.should_delete(volume) {
        return Decision::DeleteBackend { delete_object: true };
    }
    Decision::Idle(IdleReason::VolumeSettled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{claim, class, volume};
    use crate::provisioner::{DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume};
    use proptest::prelude::*;

    const NAME: &str = "example.com/x";

    #[derive(Default)]
    struct Hooks {
        block: bool,
        refuse_claims: bool,
        refuse_deletes: bool,
    }

    #[async_trait::async_trait]
    impl Provisioner for Hooks {
        async fn provision(&self, _: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
            Err(ProvisionError::Final("not called by decide".into()))
        }
        async fn delete(&self, _: &PersistentVolume) -> Result<(), DeleteError> {
            Err(DeleteError::Failed("not called by decide".into()))
        }
        fn supports_block(&self, _: &StorageClass) -> bool {
            self.block
        }
        fn should_provision(&self, _: &PersistentVolumeClaim, _: &StorageClass) -> bool {
            !self.refuse_claims
        }
        fn should_delete(&self, _: &PersistentVolume) -> bool {
            !self.refuse_deletes
        }
    }

    fn names() -> Names {
        Names::new(NAME, ["example.com/second"])
    }

    fn ours() -> crate::fixtures::ClaimBuilder {
        claim("ns", "data", "u1").class("fast").provisioner(NAME)
    }

    fn run(c: Option<&PersistentVolumeClaim>, v: Option<&PersistentVolume>, k: Option<&StorageClass>) -> Decision {
        decide("pvc-u1", &Snapshot { claim: c, volume: v, class: k, cache_stale: false }, &names(), &Hooks::default())
    }

    fn plan(record_intent: bool, finishing_only: bool, node: Option<&str>) -> Decision {
        Decision::Provision(ProvisionPlan {
            pv_name: "pvc-u1".into(),
            selected_node: node.map(Into::into),
            record_intent,
            finishing_only,
        })
    }

    #[test]
    fn annotated_claim_with_immediate_class_is_provisioned_with_an_intent_record() {
        let k = class("fast", NAME).build();
        assert_eq!(run(Some(&ours().build()), None, Some(&k)), plan(true, false, None));
    }

    #[test]
    fn additional_provisioner_names_are_ours_too() {
        let c = claim("ns", "data", "u1").class("fast").provisioner("example.com/second").build();
        let k = class("fast", "example.com/second").build();
        assert_eq!(run(Some(&c), None, Some(&k)), plan(true, false, None));
    }

    #[test]
    fn beta_provisioner_annotation_is_a_fallback() {
        let c = claim("ns", "data", "u1").class("fast").annotation(keys::BETA_STORAGE_PROVISIONER, NAME).build();
        let k = class("fast", NAME).build();
        assert_eq!(run(Some(&c), None, Some(&k)), plan(true, false, None));
    }

    #[test]
    fn claims_of_other_provisioners_are_not_ours() {
        let c = claim("ns", "data", "u1").class("fast").provisioner("other.io/x").build();
        let k = class("fast", "other.io/x").build();
        assert_eq!(run(Some(&c), None, Some(&k)), Decision::Idle(IdleReason::NotOurs));
    }

    #[test]
    fn legacy_class_annotation_wins_over_the_spec_field() {
        let c = claim("ns", "data", "u1").class("spec-class").legacy_class("general").build();
        assert_eq!(claim_class(&c), Some("general"));
    }

    #[test]
    fn claim_whose_class_is_missing_waits_for_the_class() {
        assert_eq!(run(Some(&ours().build()), None, None), Decision::WaitForClass("fast".into()));
    }

    #[test]
    fn wait_for_first_consumer_claim_waits_for_a_selected_node() {
        let k = class("fast", NAME).wait_for_first_consumer().build();
        assert_eq!(run(Some(&ours().build()), None, Some(&k)), Decision::Idle(IdleReason::WaitingForNode));
        let c = ours().selected_node("node-a").build();
        assert_eq!(run(Some(&c), None, Some(&k)), plan(true, false, Some("node-a")));
        let alpha = ours().annotation(keys::ALPHA_SELECTED_NODE, "node-b").build();
        assert_eq!(run(Some(&alpha), None, Some(&k)), plan(true, false, Some("node-b")));
    }

    #[test]
    fn block_claim_is_rejected_unless_the_provisioner_supports_block() {
        let k = class("fast", NAME).build();
        let c = ours().block().build();
        assert_eq!(run(Some(&c), None, Some(&k)), Decision::RejectBlock);
        let snap = Snapshot { claim: Some(&c), class: Some(&k), ..Default::default() };
        let d = decide("pvc-u1", &snap, &names(), &Hooks { block: true, ..Default::default() });
        assert_eq!(d, plan(true, false, None));
    }

    #[test]
    fn provisioner_filter_can_decline_a_claim() {
        let k = class("fast", NAME).build();
        let c = ours().build();
        let snap = Snapshot { claim: Some(&c), class: Some(&k), ..Default::default() };
        let d = decide("pvc-u1", &snap, &names(), &Hooks { refuse_claims: true, ..Default::default() });
        assert_eq!(d, Decision::Idle(IdleReason::Filtered));
    }

    #[test]
    fn bound_and_deleting_claims_without_intent_are_left_alone() {
        let k = class("fast", NAME).build();
        assert_eq!(
            run(Some(&ours().volume_name("pv-x").build()), None, Some(&k)),
            Decision::Idle(IdleReason::ClaimBound)
        );
        assert_eq!(run(Some(&ours().deleting().build()), None, Some(&k)), Decision::Idle(IdleReason::ClaimDeleting));
    }

    #[test]
    fn claim_deleted_after_intent_is_finished_so_the_backend_can_be_cleaned_up() {
        let k = class("fast", NAME).build();
        let c = ours().intent_of(NAME, "pvc-u1").deleting().build();
        assert_eq!(run(Some(&c), None, Some(&k)), plan(false, true, None));
    }

    #[test]
    fn claim_with_intent_is_provisioned_without_a_second_record() {
        let k = class("fast", NAME).build();
        assert_eq!(run(Some(&ours().intent_of(NAME, "pvc-u1").build()), None, Some(&k)), plan(false, false, None));
    }

    #[test]
    fn intent_recorded_by_another_provisioners_engine_is_not_ours() {
        let k = class("fast", "other.io/x").build();
        let c =
            claim("ns", "data", "u1").class("fast").provisioner("other.io/x").intent_of("other.io/x", "pvc-u1").build();
        assert!(!claim_is_relevant(&c, &names()));
        assert_eq!(run(Some(&c.clone()), None, Some(&k)), Decision::Idle(IdleReason::NotOurs));
        let deleting = claim("ns", "data", "u1").class("fast").intent_of("other.io/x", "pvc-u1").deleting().build();
        assert_eq!(run(Some(&deleting), None, Some(&k)), Decision::Idle(IdleReason::ClaimDeleting));
    }

    #[test]
    fn intent_of_a_claim_another_instance_owns_is_left_alone() {
        let k = class("fast", NAME).build();
        let c = ours().intent_of(NAME, "pvc-u1").deleting().build();
        let snap = Snapshot { claim: Some(&c), class: Some(&k), ..Default::default() };
        let d = decide("pvc-u1", &snap, &names(), &Hooks { refuse_claims: true, ..Default::default() });
        assert_eq!(d, Decision::Idle(IdleReason::Filtered));
    }

    #[test]
    fn existing_volume_is_never_provisioned_again() {
        let k = class("fast", NAME).build();
        let c = ours().intent_of(NAME, "pvc-u1").build();
        let v = volume("pvc-u1", NAME, &c).phase("Pending").build();
        assert_eq!(run(Some(&c), Some(&v), Some(&k)), Decision::Idle(IdleReason::VolumeSettled));
    }

    #[test]
    fn deleting_claim_with_a_saved_volume_releases_its_intent() {
        let c = ours().intent_of(NAME, "pvc-u1").deleting().build();
        let v = volume("pvc-u1", NAME, &c).build();
        assert_eq!(run(Some(&c), Some(&v), None), Decision::ReleaseClaim);
    }

    #[test]
    fn released_volume_with_delete_policy_is_deleted() {
        let c = ours().build();
        let v = volume("pvc-u1", NAME, &c).phase("Released").build();
        assert_eq!(run(None, Some(&v), None), Decision::DeleteBackend { delete_object: true });
    }

    #[test]
    fn released_volume_with_retain_policy_is_kept() {
        let c = ours().build();
        let v = volume("pvc-u1", NAME, &c).phase("Released").reclaim_policy("Retain").build();
        assert_eq!(run(None, Some(&v), None), Decision::Idle(IdleReason::VolumeSettled));
    }

    #[test]
    fn released_volume_of_another_provisioner_is_not_deleted() {
        let c = ours().build();
        let v = volume("pvc-u1", "other.io/x", &c).phase("Released").build();
        assert_eq!(run(None, Some(&v), None), Decision::Idle(IdleReason::VolumeSettled));
    }

    #[test]
    fn delete_filter_can_keep_a_released_volume() {
        let c = ours().build();
        let v = volume("pvc-u1", NAME, &c).phase("Released").build();
        let snap = Snapshot { volume: Some(&v), ..Default::default() };
        let d = decide("pvc-u1", &snap, &names(), &Hooks { refuse_deletes: true, ..Default::default() });
        assert_eq!(d, Decision::Idle(IdleReason::VolumeSettled));
    }

    #[test]
    fn volume_deleted_before_its_claim_has_its_backend_deleted() {
        let c = ours().build();
        let v = volume("pvc-u1", NAME, &c).deleting().build();
        assert_eq!(run(Some(&c), Some(&v), None), Decision::DeleteBackend { delete_object: false });
    }

    #[test]
    fn deleted_retain_volume_only_loses_the_finalizer() {
        let c = ours().build();
        let v = volume("pvc-u1", NAME, &c).deleting().reclaim_policy("Retain").build();
        assert_eq!(run(Some(&c), Some(&v), None), Decision::RemoveVolumeFinalizer);
    }

    #[test]
    fn stale_cache_waits() {
        let k = class("fast", NAME).build();
        let c = ours().build();
        let snap = Snapshot { claim: Some(&c), class: Some(&k), cache_stale: true, ..Default::default() };
        assert_eq!(decide("pvc-u1", &snap, &names(), &Hooks::default()), Decision::WaitForCache);
    }

    fn arb_claim() -> impl Strategy<Value = Option<PersistentVolumeClaim>> {
        (
            any::<bool>(),
            prop_oneof![Just(None), Just(Some(NAME)), Just(Some("other.io/x"))],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(None), Just(Some(NAME)), Just(Some("other.io/x"))],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(exists, prov, node, bound, deleting, intent, block, legacy)| {
                exists.then(|| {
                    let mut b = claim("ns", "data", "u1");
                    b = if legacy { b.legacy_class("fast") } else { b.class("fast") };
                    if let Some(p) = prov {
                        b = b.provisioner(p);
                    }
                    if node {
                        b = b.selected_node("n1");
                    }
                    if bound {
                        b = b.volume_name("pv-other");
                    }
                    if deleting {
                        b = b.deleting();
                    }
                    if let Some(owner) = intent {
                        b = b.intent_of(owner, "pvc-u1");
                    }
                    if block {
                        b = b.block();
                    }
                    b.build()
                })
            })
    }

    fn arb_volume() -> impl Strategy<Value = Option<PersistentVolume>> {
        (
            any::<bool>(),
            prop_oneof![Just("Pending"), Just("Bound"), Just("Released"), Just("Failed")],
            prop_oneof![Just("Delete"), Just("Retain")],
            prop_oneof![Just(NAME), Just("other.io/x")],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(exists, phase, policy, by, deleting, finalizer)| {
                exists.then(|| {
                    let c = claim("ns", "data", "u1").build();
                    let mut b = volume("pvc-u1", by, &c).phase(phase).reclaim_policy(policy);
                    if deleting {
                        b = b.deleting();
                    }
                    if !finalizer {
                        b = b.without_finalizers();
                    }
                    b.build()
                })
            })
    }

    fn arb_class() -> impl Strategy<Value = Option<StorageClass>> {
        (any::<bool>(), any::<bool>()).prop_map(|(exists, wffc)| {
            exists.then(|| {
                let b = class("fast", NAME);
                if wffc { b.wait_for_first_consumer().build() } else { b.build() }
            })
        })
    }

    proptest! {
        #[test]
        fn an_existing_volume_is_never_provisioned_again(c in arb_claim(), v in arb_volume(), k in arb_class(), block in any::<bool>()) {
            let d = decide("pvc-u1", &Snapshot { claim: c.as_ref(), volume: v.as_ref(), class: k.as_ref(), cache_stale: false }, &names(), &Hooks { block, ..Default::default() });
            if v.is_some() {
                prop_assert!(!matches!(d, Decision::Provision(_)), "provisioned over an existing volume: {d:?}");
            }
        }

        #[test]
        fn provisioning_starts_only_for_live_unbound_claims_of_ours(c in arb_claim(), k in arb_class(), block in any::<bool>()) {
            let d = decide("pvc-u1", &Snapshot { claim: c.as_ref(), volume: None, class: k.as_ref(), cache_stale: false }, &names(), &Hooks { block, ..Default::default() });
            if let Decision::Provision(plan) = &d {
                let c = c.as_ref().expect("a plan needs a claim");
                if plan.record_intent {
                    prop_assert!(c.metadata.deletion_timestamp.is_none());
                    prop_assert!(!bound(c));
                    prop_assert_eq!(claim_provisioner(c), Some(NAME));
                    let k = k.as_ref().expect("a plan needs a class");
                    if k.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") {
                        prop_assert!(plan.selected_node.is_some());
                    }
                    if c.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
                        prop_assert!(block);
                    }
                } else {
                    prop_assert!(has_intent(c, &names()), "a call without a new record needs an old one");
                }
            }
        }

        #[test]
        fn a_claim_with_intent_and_no_volume_is_always_finished(c in arb_claim(), k in arb_class()) {
            let d = decide("pvc-u1", &Snapshot { claim: c.as_ref(), volume: None, class: k.as_ref(), cache_stale: false }, &names(), &Hooks::default());
            if let (Some(c), Some(_)) = (c.as_ref(), k.as_ref())
                && has_intent(c, &names()) {
                    prop_assert!(matches!(d, Decision::Provision(_)), "intent without volume must be finished: {d:?}");
                }
        }

        #[test]
        fn backends_are_deleted_only_for_our_delete_policy_volumes(c in arb_claim(), v in arb_volume()) {
            let d = decide("pvc-u1", &Snapshot { claim: c.as_ref(), volume: v.as_ref(), class: None, cache_stale: false }, &names(), &Hooks::default());
            if let Decision::DeleteBackend { .. } = d {
                let v = v.as_ref().expect("a delete needs a volume");
                prop_assert_eq!(annotation(v, keys::PROVISIONED_BY), Some(NAME));
                prop_assert_eq!(v.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()), Some("Delete"));
                let released = v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
                prop_assert!(released || (deleting(v) && has_finalizer(v, keys::VOLUME_FINALIZER)));
            }
        }
    }
}
