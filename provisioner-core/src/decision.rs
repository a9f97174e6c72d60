//! **Unstable**: public so that the rules can be read, tested and reused, but
//! not covered by semver before 1.0; build provisioners on the crate root.
//!
//! The claim lifecycle: every rule of what the engine does about one volume,
//! as pure functions of object snapshots and the engine's memory of the volume.
//!
//! The engine keys all work by PersistentVolume name, so the claim path and
//! the delete path of one volume are decided together and never run at once.
//! [`decide`] looks at the claim, the volume and the class as last seen, at
//! whether the cache still shows the state from before the engine's own last
//! write, and at the engine's [`Memory`] of the volume (a volume returned but
//! not saved yet, a backend already deleted, a warning already given, a claim
//! given up on), and returns a [`Decision`]. [`after_provision_error`] and
//! [`after_delete_error`] say what follows a provisioner's answer: the event,
//! the metric and the next step. None of them does I/O, so every rule is a
//! plain unit test and the property tests below cover them all.
//!
//! # Which volumes are ours
//! Only a PV whose `pv.kubernetes.io/provisioned-by` is one of our provisioner
//! names ([`volume_is_ours`]). The deletion finalizer
//! [`keys::VOLUME_FINALIZER`] is shared with every CSI external-provisioner
//! and the Go library, so its presence says nothing about ownership: a PV
//! that is not ours is never cached, written, deleted or handed to the backend.
//!
//! # Deleting
//! A backend is deleted when its PV is ours, has the `Delete` policy, the
//! provisioner's delete filter takes it, and either the PV is `Released`, or
//! the PV is being deleted and is no longer bound to a claim that exists: a
//! `kubectl delete pv` on a Bound volume leaves it Terminating until its claim
//! is gone, so storage is never pulled from under running pods.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

use crate::events::EventType;
use crate::keys;
use crate::memory::Memory;
use crate::provisioner::{DataSource, DeleteError, ProvisionError, Provisioner};

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
    /// The claim as the engine's intent journal recorded it, if the journal
    /// holds an entry for this volume: a backend volume may exist for it that
    /// no PV records yet (see [`crate::journal`]).
    pub recorded: Option<&'a PersistentVolumeClaim>,
}

/// What a decision knows of the engine: its names, its provisioner's hooks
/// and its options.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    /// The provisioner names the engine answers to.
    pub names: &'a Names,
    /// The provisioner, for its filters and capabilities (never called here).
    pub provisioner: &'a dyn Provisioner,
    /// Whether our Delete-policy volumes carry [`keys::VOLUME_FINALIZER`].
    pub finalizer: bool,
    /// Give up on a claim after this many failed attempts (`None`: never).
    pub give_up_after: Option<u32>,
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
    /// Save the volume the backend returned earlier, which the API server has
    /// not taken yet, without asking the backend again.
    SaveVolume,
    /// The claim asks for something this provisioner cannot give: one
    /// `ProvisioningFailed` warning, no volume, no retry.
    Refuse(Refusal),
    /// The volume records the backend now, or nothing was ever created:
    /// the journal entry goes (and a record an earlier version left on the
    /// claim, if any).
    RemoveIntent,
    /// Delete the backend volume and the PV object, as the plan says, then
    /// remove the PV's finalizer.
    Delete(DeletePlan),
    /// Our Delete-policy volume lacks the deletion finalizer: add it.
    AddVolumeFinalizer,
    /// Remove our deletion finalizer and touch nothing else: the PV keeps its
    /// backend (`Retain`).
    RemoveVolumeFinalizer,
}

/// Why [`Decision::Idle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleReason {
    /// Neither claim nor volume exists: the engine may forget the volume.
    Nothing,
    /// The claim is bound or pre-bound to a volume.
    ClaimBound,
    /// The claim is being deleted and nothing was started for it.
    ClaimDeleting,
    /// The claim is not annotated for one of this engine's provisioner names.
    NotOurs,
    /// The volume was not provisioned under one of our names: never touched.
    VolumeNotOurs,
    /// A `WaitForFirstConsumer` claim has no selected node yet.
    WaitingForNode,
    /// The provisioner's `should_provision` or `should_delete` filter declined.
    Filtered,
    /// The claim asks for contents from a kind only a volume populator knows.
    Populator,
    /// The claim was refused and warned about already.
    Refused,
    /// The engine gave up on the claim; a change to it or its class retries.
    GaveUp,
    /// This process saved the volume; the cache has not shown it yet.
    Saved,
    /// The volume is being deleted but its claim still exists: its backend
    /// waits until the claim is gone.
    ClaimStillExists,
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
    /// The contents the claim asks for, handed to the provisioner.
    pub data_source: Option<DataSource>,
    /// The journal holds no entry for the volume yet: write one before
    /// calling the backend.
    pub record_intent: bool,
    /// The claim is going away (or bound elsewhere): the call only finishes
    /// work that may have started, so the backend can then be cleaned up.
    pub finishing_only: bool,
}

/// The details of a [`Decision::Delete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeletePlan {
    /// Call [`Provisioner::delete`] (`false`: this process deleted the
    /// backend already, a later write failed).
    pub call_backend: bool,
    /// Delete the PV object (`false`: it is being deleted already).
    pub delete_object: bool,
}

/// Why a claim gets no volume, with one warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `volumeMode: Block` from a provisioner without block support.
    Block,
    /// `spec.selector`: the claim asks for an existing volume.
    Selector,
    /// A clone or snapshot restore the provisioner cannot make.
    DataSource(DataSource),
}

impl Refusal {
    /// The `ProvisioningFailed` message, for a claim of provisioner name `provisioner`.
    ///
    /// ```
    /// use provisioner_core::decision::Refusal;
    /// assert_eq!(Refusal::Selector.message("example.com/x"), "claim Selector is not supported");
    /// ```
    pub fn message(&self, provisioner: &str) -> String {
        match self {
            Refusal::Block => format!("{provisioner} does not support block volume provisioning"),
            Refusal::Selector => "claim Selector is not supported".to_string(),
            Refusal::DataSource(ds) => format!(
                "{provisioner} does not support provisioning from data source {ds}; \
                 the claim gets no volume rather than an empty one"
            ),
        }
    }
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

/// Whether the volume is ours: provisioned under one of `names`. Only such
/// volumes are cached, written or handed to the backend.
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use provisioner_core::decision::{volume_is_ours, Names};
/// use provisioner_core::testing::fixtures::{claim, volume};
/// let names = Names::new("example.com/x", Vec::<String>::new());
/// let c = claim("ns", "data").build();
/// assert!(volume_is_ours(&volume("pvc-u1", "example.com/x", &c).build(), &names));
/// // Another provisioner's volume carries the same finalizer: still not ours.
/// assert!(!volume_is_ours(&volume("pvc-u2", "csi.example.com", &c).build(), &names));
/// # }
/// ```
pub fn volume_is_ours(volume: &PersistentVolume, names: &Names) -> bool {
    annotation(volume, keys::PROVISIONED_BY).is_some_and(|p| names.contains(p))
}

/// Whether the volume is bound to a claim that exists: its phase says
/// `Bound`, or `claim` (the claim its key names, if cached) is the one its
/// `claimRef` names and is not bound to another volume (the binder releases
/// a volume whose claim went to another).
pub fn bound_to_existing_claim(volume: &PersistentVolume, claim: Option<&PersistentVolumeClaim>) -> bool {
    let phase_bound = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let claims_it = |c: &PersistentVolumeClaim| {
        let bound_to = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or_default();
        refers_to(volume, c) && (bound_to.is_empty() || Some(bound_to) == volume.metadata.name.as_deref())
    };
    phase_bound || claim.is_some_and(claims_it)
}

fn refers_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let uid = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.as_deref());
    uid.is_some() && uid == claim.metadata.uid.as_deref()
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

fn bound(claim: &PersistentVolumeClaim) -> bool {
    claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).is_some_and(|v| !v.is_empty())
}

fn has_selector(claim: &PersistentVolumeClaim) -> bool {
    claim.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|sel| {
        sel.match_labels.as_ref().is_some_and(|m| !m.is_empty())
            || sel.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
    })
}

/// Decides what to do about the volume named `pv_name`.
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use provisioner_core::decision::{decide, Decision, Names, Rules, Snapshot};
/// use provisioner_core::testing::fixtures::{claim, class};
/// use provisioner_core::memory::Memory;
/// # use provisioner_core::{DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
/// # use k8s_openapi::api::core::v1::PersistentVolume;
/// # struct P;
/// # #[async_trait::async_trait]
/// # impl Provisioner for P {
/// #     async fn provision(&self, _: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> { unimplemented!() }
/// #     async fn delete(&self, _: &PersistentVolume) -> Result<(), DeleteError> { unimplemented!() }
/// # }
/// let names = Names::new("example.com/x", Vec::<String>::new());
/// let rules = Rules { names: &names, provisioner: &P, finalizer: true, give_up_after: None };
/// let c = claim("ns", "data").as_stored("u1").class("fast").provisioner("example.com/x").build();
/// let k = class("fast", "example.com/x").build();
/// let snap = Snapshot { claim: Some(&c), class: Some(&k), ..Default::default() };
/// assert!(matches!(decide("pvc-u1", &snap, &Memory::default(), &rules), Decision::Provision(p) if p.record_intent));
/// # }
/// ```
pub fn decide(pv_name: &str, snap: &Snapshot<'_>, memory: &Memory, rules: &Rules<'_>) -> Decision {
    // A volume the backend returned and the API server has not taken yet is
    // saved whatever the cache shows: saving is idempotent, and waiting could
    // outlast this process (then the next one asks the backend again).
    if memory.unsaved.is_some() && (snap.claim.is_some() || snap.recorded.is_some()) && snap.class.is_some() {
        return Decision::SaveVolume;
    }
    if snap.cache_stale {
        return Decision::WaitForCache;
    }
    if let Some(volume) = snap.volume {
        // A PV of ours by this name records the backend: the journal entry
        // has done its job.
        if snap.recorded.is_some() && volume_is_ours(volume, rules.names) {
            return Decision::RemoveIntent;
        }
        return decide_existing_volume(volume, snap.claim, memory, rules);
    }
    if let Some(recorded) = snap.recorded {
        return decide_recorded(pv_name, recorded, snap, memory);
    }
    let Some(claim) = snap.claim else {
        return Decision::Idle(IdleReason::Nothing);
    };
    let names = rules.names;
    let provisioner = rules.provisioner;
    // A record on the claim itself, written by a version before the journal.
    let intent = has_intent(claim, names);
    if memory.saved {
        // The cache has not shown the saved volume yet, or it was deleted
        // since; either way the backend has done its part.
        if intent && deleting(claim) {
            return Decision::RemoveIntent;
        }
        return Decision::Idle(IdleReason::Saved);
    }
    if let (Some((claim_rv, class_rv)), Some(class)) = (&memory.given_up, snap.class)
        && !intent
        && claim.resource_version().as_ref() == Some(claim_rv)
        && class.resource_version().as_ref() == Some(class_rv)
    {
        return Decision::Idle(IdleReason::GaveUp);
    }
    let node = selected_node(claim).map(str::to_string);

    if intent {
        // A backend volume may exist and no PV records it: finish the work
        // whatever happened to the claim, so it can be saved and then cleaned
        // up through the normal delete path.
        let Some(class) = snap.class else {
            return Decision::WaitForClass(claim_class(claim).unwrap_or_default().to_string());
        };
        // Another instance of the same provisioner name (a node's, a
        // shard's) may own the record: only the one whose filter takes the
        // claim may finish it.
        if !provisioner.should_provision(claim, class) {
            return Decision::Idle(IdleReason::Filtered);
        }
        return Decision::Provision(ProvisionPlan {
            pv_name: pv_name.into(),
            selected_node: node,
            // The record was written for a source the provisioner took.
            data_source: DataSource::of_claim(claim),
            record_intent: false,
            finishing_only: deleting(claim) || bound(claim),
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
    // The filter first: where several instances share a name, only the
    // claim's own instance refuses it.
    if !provisioner.should_provision(claim, class) {
        return Decision::Idle(IdleReason::Filtered);
    }
    let data_source = DataSource::of_claim(claim);
    let refusal = if has_selector(claim) {
        Some(Refusal::Selector)
    } else if let Some(ds) = data_source.as_ref().filter(|ds| !provisioner.supports_data_source(ds, class)) {
        if !ds.is_provisioner_business() {
            // A volume populator fills this claim; it is not ours to answer.
            return Decision::Idle(IdleReason::Populator);
        }
        Some(Refusal::DataSource(ds.clone()))
    } else if claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block")
        && !provisioner.supports_block(class)
    {
        Some(Refusal::Block)
    } else {
        None
    };
    if let Some(refusal) = refusal {
        if memory.warned.is_some() && memory.warned.as_deref() == claim.metadata.uid.as_deref() {
            return Decision::Idle(IdleReason::Refused);
        }
        return Decision::Refuse(refusal);
    }
    Decision::Provision(ProvisionPlan {
        pv_name: pv_name.into(),
        selected_node: node,
        data_source,
        record_intent: true,
        finishing_only: false,
    })
}

/// The journal holds an entry for the volume and no PV records it: a
/// backend volume may exist. The work is finished whatever happened to the
/// claim (gone, deleted, bound elsewhere: then with the claim as recorded),
/// so that it is saved and then cleaned up by the normal delete path; the
/// entry is this engine's (each instance keeps its own journal), so no
/// filter is asked.
fn decide_recorded(pv_name: &str, recorded: &PersistentVolumeClaim, snap: &Snapshot<'_>, memory: &Memory) -> Decision {
    if memory.saved {
        // This process saved the PV; the cache has not shown it yet.
        return Decision::RemoveIntent;
    }
    let live = snap.claim.filter(|c| c.metadata.uid.is_some() && c.metadata.uid == recorded.metadata.uid);
    let Some(_class) = snap.class else {
        return Decision::WaitForClass(claim_class(live.unwrap_or(recorded)).unwrap_or_default().to_string());
    };
    let claim = live.unwrap_or(recorded);
    Decision::Provision(ProvisionPlan {
        pv_name: pv_name.into(),
        selected_node: selected_node(claim).map(str::to_string),
        data_source: DataSource::of_claim(claim),
        record_intent: false,
        finishing_only: live.is_none_or(|c| deleting(c) || bound(c)),
    })
}

fn decide_existing_volume(
    volume: &PersistentVolume,
    claim: Option<&PersistentVolumeClaim>,
    memory: &Memory,
    rules: &Rules<'_>,
) -> Decision {
    if !volume_is_ours(volume, rules.names) {
        return Decision::Idle(IdleReason::VolumeNotOurs);
    }
    let policy_delete =
        volume.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()).unwrap_or("Delete")
            == "Delete";
    let finalizer = has_finalizer(volume, keys::VOLUME_FINALIZER);

    // The PV now records the backend, so the claim's intent record has done
    // its job: it goes at once, so that a bound claim carries nothing of ours
    // that could block its deletion once the provisioner is gone.
    if let Some(claim) = claim
        && has_intent(claim, rules.names)
        && refers_to(volume, claim)
    {
        return Decision::RemoveIntent;
    }
    // Only the instance whose delete filter takes the volume writes it (a
    // node-local provisioner: the instance of the volume's node).
    let mine = || rules.provisioner.should_delete(volume);
    if !policy_delete {
        // The backend is kept: our finalizer has no work to guard.
        return match (finalizer, mine()) {
            (true, true) => Decision::RemoveVolumeFinalizer,
            (true, false) => Decision::Idle(IdleReason::Filtered),
            (false, _) => Decision::Idle(IdleReason::VolumeSettled),
        };
    }
    // From here on the backend goes with the volume.
    if !mine() {
        return Decision::Idle(IdleReason::Filtered);
    }
    let call_backend = !memory.backend_deleted_for(volume.metadata.uid.as_deref());
    if deleting(volume) {
        if !finalizer {
            return Decision::Idle(IdleReason::VolumeSettled);
        }
        if bound_to_existing_claim(volume, claim) {
            return Decision::Idle(IdleReason::ClaimStillExists);
        }
        return Decision::Delete(DeletePlan { call_backend, delete_object: false });
    }
    let released = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    if released {
        // The binder releases a volume once its claim is gone; a cache that
        // still shows the claim is behind, and its deletion event requeues.
        if bound_to_existing_claim(volume, claim) {
            return Decision::Idle(IdleReason::ClaimStillExists);
        }
        return Decision::Delete(DeletePlan { call_backend, delete_object: true });
    }
    if rules.finalizer && !finalizer {
        return Decision::AddVolumeFinalizer;
    }
    Decision::Idle(IdleReason::VolumeSettled)
}

/// An event the engine should publish about the claim or volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// The event reason (`ProvisioningFailed`, ...).
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

impl Note {
    fn warning(reason: &'static str, message: String) -> Note {
        Note { type_: EventType::Warning, reason, message }
    }
}

/// What happens to the volume's key after a failed or unfinished call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Retry with backoff, counting a failure.
    Retry,
    /// Retry after the slow infeasible delay (a class change retries at once).
    RetryInfeasible,
    /// Look again after this long: the provisioner's own poll interval.
    Poll(std::time::Duration),
    /// Nothing more until something changes.
    Done,
    /// Remove the claim's intent record (and with `reschedule`, its selected
    /// node, so the scheduler picks another).
    RemoveIntent {
        /// Also remove the selected node.
        reschedule: bool,
    },
    /// Stop retrying until the claim or its class changes.
    GiveUp,
}

/// The consequences of a provisioner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowUp {
    /// The event to publish, if any.
    pub note: Option<Note>,
    /// Whether the failure counts in the `..._failed_total` metric.
    pub counts_as_failure: bool,
    /// What the key does next.
    pub then: Then,
}

/// What follows `provision()` answering `err` for `plan`, the claim `claim`
/// (`namespace/name`) having failed `failures` times before.
///
/// ```
/// use provisioner_core::decision::{after_provision_error, ProvisionPlan, Then};
/// use provisioner_core::ProvisionError;
/// let plan = ProvisionPlan { pv_name: "pvc-1".into(), selected_node: None, data_source: None, record_intent: true, finishing_only: false };
/// let f = after_provision_error(&ProvisionError::failed("no space"), &plan, "ns/data", 2, Some(3));
/// assert_eq!(f.then, Then::GiveUp);
/// ```
pub fn after_provision_error(
    err: &ProvisionError,
    plan: &ProvisionPlan,
    claim: &str,
    failures: u32,
    give_up_after: Option<u32>,
) -> FollowUp {
    let quiet = |then| FollowUp { note: None, counts_as_failure: false, then };
    let failed = |note, then| FollowUp { note: Some(note), counts_as_failure: true, then };
    match err {
        ProvisionError::InProgress(_) | ProvisionError::RetryAfter(..) => FollowUp {
            note: (failures == 0).then(|| Note {
                type_: EventType::Normal,
                reason: "Provisioning",
                message: format!("External provisioner is provisioning volume for claim \"{claim}\""),
            }),
            counts_as_failure: false,
            then: match err {
                ProvisionError::RetryAfter(_, after) => Then::Poll(*after),
                _ => Then::Retry,
            },
        },
        // Work may exist: warn, and keep finishing it whatever happens to the claim.
        ProvisionError::Stalled(cause) => failed(Note::warning("ProvisioningFailed", cause.chain()), Then::Retry),
        // Not this instance's claim: its record, if any, belongs to the
        // instance that wrote it (another node's, another shard's).
        ProvisionError::Ignored => quiet(Then::Done),
        // Nothing was created and the claim is going away: let it go.
        _ if plan.finishing_only => quiet(Then::RemoveIntent { reschedule: false }),
        ProvisionError::Reschedule(cause) if plan.selected_node.is_some() => failed(
            Note::warning("ProvisioningFailed", format!("{cause:#}; asking the scheduler for another node")),
            Then::RemoveIntent { reschedule: true },
        ),
        ProvisionError::Infeasible(cause) => {
            failed(Note::warning("ProvisioningFailed", cause.chain()), Then::RetryInfeasible)
        }
        // A variant added later that this engine does not know: work may
        // exist, so finish it like `InProgress` and say so.
        _ if err.may_have_created() => failed(Note::warning("ProvisioningFailed", err.chain()), Then::Retry),
        ProvisionError::Final(cause) | ProvisionError::Reschedule(cause) => {
            let attempts = failures.saturating_add(1);
            if give_up_after.is_some_and(|limit| attempts >= limit) {
                failed(
                    Note::warning(
                        "ProvisioningFailed",
                        format!(
                            "{cause:#}; giving up after {attempts} attempts: edit the claim or its class to try again"
                        ),
                    ),
                    Then::GiveUp,
                )
            } else {
                failed(Note::warning("ProvisioningFailed", cause.chain()), Then::Retry)
            }
        }
    }
}

/// What follows `delete()` answering `err`.
///
/// ```
/// use provisioner_core::decision::{after_delete_error, Then};
/// use provisioner_core::DeleteError;
/// assert_eq!(after_delete_error(&DeleteError::Ignored).then, Then::Done);
/// assert!(after_delete_error(&DeleteError::failed("denied")).note.is_some());
/// ```
pub fn after_delete_error(err: &DeleteError) -> FollowUp {
    match err {
        DeleteError::Ignored => FollowUp { note: None, counts_as_failure: false, then: Then::Done },
        DeleteError::InUse(_) => FollowUp { note: None, counts_as_failure: false, then: Then::Retry },
        DeleteError::Failed(cause) => FollowUp {
            note: Some(Note::warning("VolumeFailedDelete", cause.chain())),
            counts_as_failure: true,
            then: Then::Retry,
        },
    }
}

/// Why the API server did not take a volume the backend returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaveFailure<'a> {
    /// A PV of that name exists and names another claim.
    TakenByAnotherClaim,
    /// The API server will never take it (invalid, 400/422) with this
    /// message; the backend volume was then deleted (`Ok`) or not (`Err`,
    /// with the delete's message).
    Rejected {
        /// The API server's message.
        message: &'a str,
        /// How undoing the backend volume went.
        cleanup: Result<(), String>,
    },
    /// Anything else (the API server unavailable, a timeout): the volume is
    /// kept in memory and saved on retry without asking the backend again.
    Unavailable,
}

/// What follows a failed save of volume `pv_name`.
///
/// ```
/// use provisioner_core::decision::{after_save_failure, SaveFailure, Then};
/// let f = after_save_failure("pvc-1", &SaveFailure::Rejected { message: "invalid", cleanup: Err("denied".into()) });
/// assert_eq!(f.note.map(|n| n.reason), Some("ProvisioningCleanupFailed"));
/// assert_eq!(f.then, Then::Retry);
/// ```
pub fn after_save_failure(pv_name: &str, failure: &SaveFailure<'_>) -> FollowUp {
    let failed = |note| FollowUp { note, counts_as_failure: true, then: Then::Retry };
    match failure {
        SaveFailure::TakenByAnotherClaim => failed(Some(Note::warning(
            "ProvisioningFailed",
            format!("volume {pv_name} already exists and belongs to another claim"),
        ))),
        SaveFailure::Rejected { message, cleanup: Ok(()) } => failed(Some(Note::warning(
            "ProvisioningFailed",
            format!("the API server rejected volume {pv_name}: {message}; its backend volume was removed"),
        ))),
        SaveFailure::Rejected { message, cleanup: Err(why) } => failed(Some(Note::warning(
            "ProvisioningCleanupFailed",
            format!(
                "the API server rejected volume {pv_name} ({message}) and deleting its backend volume failed \
                 ({why}); delete the backend volume for {pv_name} by hand"
            ),
        ))),
        SaveFailure::Unavailable => failed(None),
    }
}

#[cfg(test)]
mod tests;
