//! The claim lifecycle's rules, one behaviour per test, and the properties
//! that hold over every combination of claim, volume, class and memory.

use super::*;
use crate::provisioner::{Cause, ProvisionRequest, ProvisionedVolume};
use crate::testing::fixtures::{claim, class, volume};
use proptest::prelude::*;

const NAME: &str = "example.com/x";
const OTHER: &str = "other.io/x";

#[derive(Debug, Default)]
struct Hooks {
    block: bool,
    clones: bool,
    refuse_claims: bool,
    refuse_deletes: bool,
}

#[async_trait::async_trait]
impl Provisioner for Hooks {
    async fn provision(&self, _: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        Err(ProvisionError::failed("not called by decide"))
    }
    async fn delete(&self, _: &PersistentVolume) -> Result<(), DeleteError> {
        Err(DeleteError::failed("not called by decide"))
    }
    fn supports_block(&self, _: &StorageClass) -> bool {
        self.block
    }
    fn supports_data_source(&self, source: &DataSource, _: &StorageClass) -> bool {
        self.clones && source.is_clone()
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

fn ours() -> crate::testing::fixtures::ClaimBuilder {
    claim("ns", "data").as_stored("u1").class("fast").provisioner(NAME)
}

fn with(
    hooks: &Hooks,
    memory: &Memory,
    c: Option<&PersistentVolumeClaim>,
    v: Option<&PersistentVolume>,
    k: Option<&StorageClass>,
) -> Decision {
    let names = names();
    let rules = Rules { names: &names, provisioner: hooks, finalizer: true, give_up_after: None };
    decide("pvc-u1", &Snapshot { claim: c, volume: v, class: k, cache_stale: false, recorded: None }, memory, &rules)
}

fn run(c: Option<&PersistentVolumeClaim>, v: Option<&PersistentVolume>, k: Option<&StorageClass>) -> Decision {
    with(&Hooks::default(), &Memory::default(), c, v, k)
}

fn plan(record_intent: bool, finishing_only: bool, node: Option<&str>) -> Decision {
    Decision::Provision(ProvisionPlan {
        pv_name: "pvc-u1".into(),
        selected_node: node.map(Into::into),
        data_source: None,
        record_intent,
        finishing_only,
    })
}

fn delete(call_backend: bool, delete_object: bool) -> Decision {
    Decision::Delete(DeletePlan { call_backend, delete_object })
}

fn fast() -> StorageClass {
    class("fast", NAME).build()
}

// ---- when to provision ----

#[test]
fn annotated_claim_with_immediate_class_is_provisioned_with_an_intent_record() {
    assert_eq!(run(Some(&ours().build()), None, Some(&fast())), plan(true, false, None));
}

#[test]
fn additional_provisioner_names_are_ours_too() {
    let c = claim("ns", "data").as_stored("u1").class("fast").provisioner("example.com/second").build();
    let k = class("fast", "example.com/second").build();
    assert_eq!(run(Some(&c), None, Some(&k)), plan(true, false, None));
}

#[test]
fn beta_provisioner_annotation_is_a_fallback() {
    let c = claim("ns", "data").as_stored("u1").class("fast").annotation(keys::BETA_STORAGE_PROVISIONER, NAME).build();
    assert_eq!(run(Some(&c), None, Some(&fast())), plan(true, false, None));
}

#[test]
fn claims_of_other_provisioners_are_not_ours() {
    let c = claim("ns", "data").as_stored("u1").class("fast").provisioner(OTHER).build();
    let k = class("fast", OTHER).build();
    assert_eq!(run(Some(&c), None, Some(&k)), Decision::Idle(IdleReason::NotOurs));
}

#[test]
fn legacy_class_annotation_wins_over_the_spec_field() {
    let c = claim("ns", "data").as_stored("u1").class("spec-class").legacy_class("general").build();
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
fn provisioner_filter_can_decline_a_claim() {
    let hooks = Hooks { refuse_claims: true, ..Default::default() };
    let d = with(&hooks, &Memory::default(), Some(&ours().build()), None, Some(&fast()));
    assert_eq!(d, Decision::Idle(IdleReason::Filtered));
}

#[test]
fn bound_and_deleting_claims_without_intent_are_left_alone() {
    let k = fast();
    assert_eq!(run(Some(&ours().volume_name("pv-x").build()), None, Some(&k)), Decision::Idle(IdleReason::ClaimBound));
    assert_eq!(run(Some(&ours().deleting().build()), None, Some(&k)), Decision::Idle(IdleReason::ClaimDeleting));
}

// ---- claims the engine must not provision ----

#[test]
fn block_claim_is_refused_once_unless_the_provisioner_supports_block() {
    let c = ours().block().build();
    assert_eq!(run(Some(&c), None, Some(&fast())), Decision::Refuse(Refusal::Block));
    let warned = Memory { warned: Some("u1".into()), ..Default::default() };
    assert_eq!(with(&Hooks::default(), &warned, Some(&c), None, Some(&fast())), Decision::Idle(IdleReason::Refused));
    let block = Hooks { block: true, ..Default::default() };
    assert_eq!(with(&block, &Memory::default(), Some(&c), None, Some(&fast())), plan(true, false, None));
}

#[test]
fn claim_with_a_selector_is_refused_once_and_gets_no_volume() {
    let c = ours().selector("tier", "gold").build();
    let d = run(Some(&c), None, Some(&fast()));
    assert_eq!(d, Decision::Refuse(Refusal::Selector));
    assert_eq!(Refusal::Selector.message(NAME), "claim Selector is not supported");
    let warned = Memory { warned: Some("u1".into()), ..Default::default() };
    assert_eq!(with(&Hooks::default(), &warned, Some(&c), None, Some(&fast())), Decision::Idle(IdleReason::Refused));
}

#[test]
fn a_warning_for_an_earlier_claim_of_the_same_name_does_not_silence_a_new_one() {
    let c = ours().selector("tier", "gold").build();
    let warned = Memory { warned: Some("an-older-uid".into()), ..Default::default() };
    assert_eq!(with(&Hooks::default(), &warned, Some(&c), None, Some(&fast())), Decision::Refuse(Refusal::Selector));
}

#[test]
fn clone_and_snapshot_claims_are_refused_when_the_provisioner_cannot_fill_them() {
    for c in [ours().clone_of("db").build(), ours().from_snapshot("snap-1").build()] {
        let ds = DataSource::of_claim(&c).expect("a source");
        assert_eq!(run(Some(&c), None, Some(&fast())), Decision::Refuse(Refusal::DataSource(ds)));
    }
}

#[test]
fn populator_claims_are_left_to_their_populator() {
    let c = ours().data_source(Some("populator.example.com"), "Widget", "w1").build();
    assert_eq!(run(Some(&c), None, Some(&fast())), Decision::Idle(IdleReason::Populator));
}

#[test]
fn a_supported_data_source_reaches_the_provisioner() {
    let c = ours().clone_of("db").build();
    let hooks = Hooks { clones: true, ..Default::default() };
    let Decision::Provision(p) = with(&hooks, &Memory::default(), Some(&c), None, Some(&fast())) else {
        panic!("a clone the provisioner supports is provisioned");
    };
    assert_eq!(p.data_source.map(|d| (d.kind, d.name)), Some(("PersistentVolumeClaim".into(), "db".into())));
    // The snapshot is still refused: support is per source.
    let s = ours().from_snapshot("snap").build();
    assert!(matches!(with(&hooks, &Memory::default(), Some(&s), None, Some(&fast())), Decision::Refuse(_)));
}

#[test]
fn another_instances_claim_is_not_refused_by_this_one() {
    let c = ours().selector("tier", "gold").build();
    let hooks = Hooks { refuse_claims: true, ..Default::default() };
    assert_eq!(with(&hooks, &Memory::default(), Some(&c), None, Some(&fast())), Decision::Idle(IdleReason::Filtered));
}

// ---- the intent record ----

#[test]
fn claim_deleted_after_intent_is_finished_so_the_backend_can_be_cleaned_up() {
    let c = ours().intent_of(NAME, "pvc-u1").deleting().build();
    assert_eq!(run(Some(&c), None, Some(&fast())), plan(false, true, None));
}

#[test]
fn claim_with_intent_is_provisioned_without_a_second_record() {
    assert_eq!(run(Some(&ours().intent_of(NAME, "pvc-u1").build()), None, Some(&fast())), plan(false, false, None));
}

#[test]
fn intent_recorded_by_another_provisioners_engine_is_not_ours() {
    let k = class("fast", OTHER).build();
    let c = claim("ns", "data").as_stored("u1").class("fast").provisioner(OTHER).intent_of(OTHER, "pvc-u1").build();
    assert!(!claim_is_relevant(&c, &names()));
    assert_eq!(run(Some(&c), None, Some(&k)), Decision::Idle(IdleReason::NotOurs));
    let deleting = claim("ns", "data").as_stored("u1").class("fast").intent_of(OTHER, "pvc-u1").deleting().build();
    assert_eq!(run(Some(&deleting), None, Some(&k)), Decision::Idle(IdleReason::ClaimDeleting));
}

#[test]
fn intent_of_a_claim_another_instance_owns_is_left_alone() {
    let c = ours().intent_of(NAME, "pvc-u1").deleting().build();
    let hooks = Hooks { refuse_claims: true, ..Default::default() };
    assert_eq!(with(&hooks, &Memory::default(), Some(&c), None, Some(&fast())), Decision::Idle(IdleReason::Filtered));
}

#[test]
fn deleting_claim_with_a_saved_volume_has_its_intent_removed() {
    let c = ours().intent_of(NAME, "pvc-u1").deleting().build();
    let v = volume("pvc-u1", NAME, &c).build();
    assert_eq!(run(Some(&c), Some(&v), None), Decision::RemoveIntent);
}

// ---- the intent journal ----

fn recorded(
    memory: &Memory,
    live: Option<&PersistentVolumeClaim>,
    entry: &PersistentVolumeClaim,
    v: Option<&PersistentVolume>,
    k: Option<&StorageClass>,
) -> Decision {
    let names = names();
    let rules = Rules { names: &names, provisioner: &Hooks::default(), finalizer: true, give_up_after: None };
    let snap = Snapshot { claim: live, volume: v, class: k, cache_stale: false, recorded: Some(entry) };
    decide("pvc-u1", &snap, memory, &rules)
}

#[test]
fn a_journaled_volume_whose_claim_is_gone_is_finished_with_the_claim_as_recorded() {
    let entry = ours().build();
    assert_eq!(recorded(&Memory::default(), None, &entry, None, Some(&fast())), plan(false, true, None));
}

#[test]
fn a_journaled_volume_of_a_live_claim_is_provisioned_without_a_second_entry() {
    let c = ours().build();
    assert_eq!(recorded(&Memory::default(), Some(&c), &c, None, Some(&fast())), plan(false, false, None));
}

#[test]
fn a_journaled_volume_whose_claim_was_replaced_by_another_of_the_name_finishes_the_recorded_one() {
    let entry = ours().build();
    let newer = claim("ns", "data").as_stored("u2").class("fast").provisioner(NAME).build();
    assert_eq!(recorded(&Memory::default(), Some(&newer), &entry, None, Some(&fast())), plan(false, true, None));
}

#[test]
fn a_journaled_volume_of_a_deleting_or_otherwise_bound_claim_only_finishes() {
    let deleting = ours().deleting().build();
    assert_eq!(recorded(&Memory::default(), Some(&deleting), &deleting, None, Some(&fast())), plan(false, true, None));
    let elsewhere = ours().volume_name("pvc-static").build();
    assert_eq!(
        recorded(&Memory::default(), Some(&elsewhere), &elsewhere, None, Some(&fast())),
        plan(false, true, None)
    );
}

#[test]
fn a_journaled_volume_whose_class_is_gone_waits_for_it() {
    let entry = ours().build();
    assert_eq!(recorded(&Memory::default(), None, &entry, None, None), Decision::WaitForClass("fast".into()));
}

#[test]
fn the_journal_entry_goes_once_a_pv_of_ours_records_the_backend() {
    let c = ours().build();
    let v = volume("pvc-u1", NAME, &c).build();
    assert_eq!(recorded(&Memory::default(), Some(&c), &c, Some(&v), Some(&fast())), Decision::RemoveIntent);
    assert_eq!(recorded(&Memory::default(), None, &c, Some(&v), None), Decision::RemoveIntent);
    // Another provisioner's PV of that name records nothing of ours.
    let foreign = volume("pvc-u1", OTHER, &c).build();
    assert_ne!(recorded(&Memory::default(), Some(&c), &c, Some(&foreign), Some(&fast())), Decision::RemoveIntent);
}

#[test]
fn the_journal_entry_goes_once_this_process_saved_the_pv() {
    let c = ours().build();
    let saved = Memory { saved: true, ..Default::default() };
    assert_eq!(recorded(&saved, Some(&c), &c, None, Some(&fast())), Decision::RemoveIntent);
}

#[test]
fn a_journaled_volume_the_api_server_did_not_take_is_saved_with_the_recorded_claim() {
    let entry = ours().build();
    let unsaved = Memory { unsaved: Some(Box::default()), ..Default::default() };
    assert_eq!(recorded(&unsaved, None, &entry, None, Some(&fast())), Decision::SaveVolume);
}

// ---- the engine's memory ----

#[test]
fn a_volume_the_api_server_did_not_take_is_saved_before_anything_else() {
    let c = ours().intent_of(NAME, "pvc-u1").build();
    let unsaved = Memory { unsaved: Some(Box::default()), ..Default::default() };
    let names = names();
    let rules = Rules { names: &names, provisioner: &Hooks::default(), finalizer: true, give_up_after: None };
    let snap = Snapshot { claim: Some(&c), volume: None, class: Some(&fast()), cache_stale: true, recorded: None };
    assert_eq!(decide("pvc-u1", &snap, &unsaved, &rules), Decision::SaveVolume);
}

#[test]
fn a_volume_saved_by_this_process_is_never_provisioned_again() {
    let saved = Memory { saved: true, ..Default::default() };
    let c = ours().intent_of(NAME, "pvc-u1").build();
    assert_eq!(with(&Hooks::default(), &saved, Some(&c), None, Some(&fast())), Decision::Idle(IdleReason::Saved));
    let going = ours().intent_of(NAME, "pvc-u1").deleting().build();
    assert_eq!(with(&Hooks::default(), &saved, Some(&going), None, Some(&fast())), Decision::RemoveIntent);
}

#[test]
fn a_claim_given_up_on_waits_for_a_change_to_it_or_its_class() {
    let c = ours().build();
    let given_up = Memory { given_up: Some(("1".into(), "7".into())), ..Default::default() };
    let k = class("fast", NAME).resource_version("7").build();
    assert_eq!(with(&Hooks::default(), &given_up, Some(&c), None, Some(&k)), Decision::Idle(IdleReason::GaveUp));
    let edited = class("fast", NAME).resource_version("8").build();
    assert_eq!(with(&Hooks::default(), &given_up, Some(&c), None, Some(&edited)), plan(true, false, None));
}

#[test]
fn a_backend_this_process_deleted_is_not_deleted_again() {
    let c = ours().build();
    let v = volume("pvc-u1", NAME, &c).phase("Released").as_stored("uid-of-pvc-u1").build();
    let done = Memory { backend_deleted: v.metadata.uid.clone(), ..Default::default() };
    assert_eq!(with(&Hooks::default(), &done, None, Some(&v), None), delete(false, true));
    let other_uid = Memory { backend_deleted: Some("an-older-pv".into()), ..Default::default() };
    assert_eq!(with(&Hooks::default(), &other_uid, None, Some(&v), None), delete(true, true));
}

#[test]
fn stale_cache_waits() {
    let names = names();
    let rules = Rules { names: &names, provisioner: &Hooks::default(), finalizer: true, give_up_after: None };
    let c = ours().build();
    let snap = Snapshot { claim: Some(&c), class: Some(&fast()), cache_stale: true, ..Default::default() };
    assert_eq!(decide("pvc-u1", &snap, &Memory::default(), &rules), Decision::WaitForCache);
}

// ---- existing volumes and deleting ----

#[test]
fn existing_volume_is_never_provisioned_again() {
    let c = ours().intent_of(NAME, "pvc-u1").build();
    let v = volume("pvc-u1", NAME, &c).phase("Pending").build();
    assert_eq!(run(Some(&c), Some(&v), Some(&fast())), Decision::RemoveIntent);
    let done = ours().build();
    assert_eq!(run(Some(&done), Some(&v), Some(&fast())), Decision::Idle(IdleReason::VolumeSettled));
}

/// Until this rule the record stayed on every bound claim for its life:
/// with the provisioner uninstalled, deleting the claim (or its namespace)
/// hung Terminating.
#[test]
fn a_saved_volume_removes_the_intent_record_from_its_live_claim_at_once() {
    let c = ours().intent_of(NAME, "pvc-u1").volume_name("pvc-u1").build();
    let v = volume("pvc-u1", NAME, &c).build();
    assert_eq!(run(Some(&c), Some(&v), None), Decision::RemoveIntent);
    // Not for a volume of another claim (a re-created claim of the same name).
    let other = claim("ns", "data").as_stored("u2").class("fast").provisioner(NAME).intent_of(NAME, "pvc-u1").build();
    assert_ne!(run(Some(&other), Some(&v), None), Decision::RemoveIntent);
}

#[test]
fn released_volume_with_delete_policy_is_deleted() {
    let v = volume("pvc-u1", NAME, &ours().build()).phase("Released").build();
    assert_eq!(run(None, Some(&v), None), delete(true, true));
}

#[test]
fn released_volume_with_retain_policy_keeps_its_backend_and_loses_our_finalizer() {
    let v = volume("pvc-u1", NAME, &ours().build()).phase("Released").reclaim_policy("Retain").build();
    assert_eq!(run(None, Some(&v), None), Decision::RemoveVolumeFinalizer);
    let without = volume("pvc-u1", NAME, &ours().build()).reclaim_policy("Retain").without_finalizers().build();
    assert_eq!(run(None, Some(&without), None), Decision::Idle(IdleReason::VolumeSettled));
}

#[test]
fn our_delete_policy_volume_without_the_finalizer_gets_it() {
    let c = ours().build();
    let v = volume("pvc-u1", NAME, &c).without_finalizers().build();
    assert_eq!(run(Some(&c), Some(&v), None), Decision::AddVolumeFinalizer);
    let names = names();
    let off = Rules { names: &names, provisioner: &Hooks::default(), finalizer: false, give_up_after: None };
    let snap = Snapshot { claim: Some(&c), volume: Some(&v), ..Default::default() };
    assert_eq!(decide("pvc-u1", &snap, &Memory::default(), &off), Decision::Idle(IdleReason::VolumeSettled));
}

#[test]
fn released_volume_of_another_provisioner_is_not_deleted() {
    let v = volume("pvc-u1", OTHER, &ours().build()).phase("Released").build();
    assert_eq!(run(None, Some(&v), None), Decision::Idle(IdleReason::VolumeNotOurs));
}

#[test]
fn another_provisioners_deleting_volume_keeps_the_shared_finalizer() {
    let v = volume("pvc-u1", OTHER, &ours().build()).deleting().phase("Released").build();
    assert!(v.finalizers().contains(&keys::VOLUME_FINALIZER.to_string()));
    assert!(!volume_is_ours(&v, &names()));
    assert_eq!(run(None, Some(&v), None), Decision::Idle(IdleReason::VolumeNotOurs));
}

#[test]
fn statically_provisioned_volume_is_never_touched() {
    let v = volume("pv-static", NAME, &ours().build()).static_volume().deleting().phase("Released").build();
    assert_eq!(run(None, Some(&v), None), Decision::Idle(IdleReason::VolumeNotOurs));
}

#[test]
fn delete_filter_can_keep_a_released_volume() {
    let v = volume("pvc-u1", NAME, &ours().build()).phase("Released").build();
    let hooks = Hooks { refuse_deletes: true, ..Default::default() };
    assert_eq!(with(&hooks, &Memory::default(), None, Some(&v), None), Decision::Idle(IdleReason::Filtered));
    let deleting = volume("pvc-u1", NAME, &ours().build()).deleting().phase("Released").build();
    assert_eq!(
        with(&hooks, &Memory::default(), None, Some(&deleting), None),
        Decision::Idle(IdleReason::Filtered),
        "another instance's volume keeps its finalizer for that instance"
    );
}

/// Until this rule, every instance of a per-node DaemonSet removed our
/// finalizer from every node's `Retain` volumes: writes to other nodes'
/// volumes, refused where a policy confines each node to its own.
#[test]
fn retained_volume_of_another_instance_keeps_its_finalizer_for_that_instance() {
    let v = volume("pvc-u1", NAME, &ours().build()).phase("Released").reclaim_policy("Retain").build();
    let hooks = Hooks { refuse_deletes: true, ..Default::default() };
    assert_eq!(with(&hooks, &Memory::default(), None, Some(&v), None), Decision::Idle(IdleReason::Filtered));
    assert_eq!(with(&Hooks::default(), &Memory::default(), None, Some(&v), None), Decision::RemoveVolumeFinalizer);
}

/// Until this rule, a `kubectl delete pv` on a Bound volume deleted its
/// backend at once, under the running pods.
#[test]
fn volume_deleted_while_its_claim_exists_keeps_its_backend_until_the_claim_is_gone() {
    let c = ours().volume_name("pvc-u1").build();
    let bound = volume("pvc-u1", NAME, &c).deleting().build();
    assert_eq!(run(Some(&c), Some(&bound), None), Decision::Idle(IdleReason::ClaimStillExists));
    // The binder's phase is enough when the claim is not in the cache.
    assert_eq!(run(None, Some(&bound), None), Decision::Idle(IdleReason::ClaimStillExists));
    // A claim that is Terminating (a pod still uses it) still exists.
    let terminating = ours().volume_name("pvc-u1").deleting().build();
    let released_late = volume("pvc-u1", NAME, &c).deleting().phase("Bound").build();
    assert_eq!(run(Some(&terminating), Some(&released_late), None), Decision::Idle(IdleReason::ClaimStillExists));
    // Claim gone, binder marked it Released: backend delete, then the finalizer.
    let released = volume("pvc-u1", NAME, &c).deleting().phase("Released").build();
    assert_eq!(run(None, Some(&released), None), delete(true, false));
}

#[test]
fn a_claim_of_the_same_name_with_another_uid_does_not_hold_a_released_volume() {
    let old = ours().build();
    let new = claim("ns", "data").as_stored("u2").class("fast").provisioner(NAME).build();
    let v = volume("pvc-u1", NAME, &old).deleting().phase("Released").build();
    assert_eq!(run(Some(&new), Some(&v), None), delete(true, false));
}

#[test]
fn deleted_retain_volume_only_loses_the_finalizer() {
    let c = ours().build();
    let v = volume("pvc-u1", NAME, &c).deleting().reclaim_policy("Retain").build();
    assert_eq!(run(Some(&c), Some(&v), None), Decision::RemoveVolumeFinalizer);
}

// ---- what follows an answer ----

fn a_plan(node: Option<&str>, finishing_only: bool) -> ProvisionPlan {
    ProvisionPlan {
        pv_name: "pvc-u1".into(),
        selected_node: node.map(Into::into),
        data_source: None,
        record_intent: !finishing_only,
        finishing_only,
    }
}

#[test]
fn in_progress_says_provisioning_once_and_retries() {
    let err = ProvisionError::in_progress("creating");
    let first = after_provision_error(&err, &a_plan(None, false), "ns/data", 0, None);
    assert_eq!(first.then, Then::Retry);
    assert_eq!(first.note.map(|n| n.reason), Some("Provisioning"));
    assert!(!first.counts_as_failure);
    assert_eq!(after_provision_error(&err, &a_plan(None, false), "ns/data", 1, None).note, None);
}

#[test]
fn reschedule_with_a_node_removes_the_intent_and_the_node() {
    let err = ProvisionError::reschedule("full");
    let f = after_provision_error(&err, &a_plan(Some("n1"), false), "ns/data", 0, None);
    assert_eq!(f.then, Then::RemoveIntent { reschedule: true });
    assert!(f.note.is_some_and(|n| n.message.contains("another node")));
    // Without a node there is nothing to reschedule: a plain failure.
    assert_eq!(after_provision_error(&err, &a_plan(None, false), "ns/data", 0, None).then, Then::Retry);
}

#[test]
fn nothing_created_for_a_claim_going_away_removes_its_intent_quietly() {
    for err in [ProvisionError::failed("x"), ProvisionError::infeasible("x")] {
        let f = after_provision_error(&err, &a_plan(None, true), "ns/data", 3, None);
        assert_eq!((f.note, f.then), (None, Then::RemoveIntent { reschedule: false }));
    }
    let busy = after_provision_error(&ProvisionError::in_progress("x"), &a_plan(None, true), "ns/data", 3, None);
    assert_eq!(busy.then, Then::Retry, "work that may run is finished, never dropped");
}

#[test]
fn infeasible_retries_slowly_and_final_gives_up_at_the_limit() {
    let inf = after_provision_error(&ProvisionError::infeasible("bad"), &a_plan(None, false), "ns/d", 0, None);
    assert_eq!(inf.then, Then::RetryInfeasible);
    let fin = ProvisionError::failed("no");
    assert_eq!(after_provision_error(&fin, &a_plan(None, false), "ns/d", 1, Some(3)).then, Then::Retry);
    let last = after_provision_error(&fin, &a_plan(None, false), "ns/d", 2, Some(3));
    assert_eq!(last.then, Then::GiveUp);
    assert!(last.note.is_some_and(|n| n.message.contains("giving up after 3 attempts")));
}

#[test]
fn ignored_answers_leave_everything_alone() {
    let f = after_provision_error(&ProvisionError::Ignored, &a_plan(None, true), "ns/d", 0, None);
    assert_eq!((f.note, f.then), (None, Then::Done));
    let d = after_delete_error(&DeleteError::Ignored);
    assert_eq!((d.note, d.then), (None, Then::Done));
}

#[test]
fn a_failed_delete_warns_and_an_in_use_one_retries_quietly() {
    let failed = after_delete_error(&DeleteError::failed("denied"));
    assert_eq!(failed.note.map(|n| (n.reason, n.message)), Some(("VolumeFailedDelete", "denied".to_string())));
    assert_eq!(failed.then, Then::Retry);
    let busy = after_delete_error(&DeleteError::in_use("mounted"));
    assert_eq!((busy.note, busy.then, busy.counts_as_failure), (None, Then::Retry, false));
}

// ---- properties over every combination ----

// The generators lean towards the paths where the engine acts (a claim of
// ours, a class, an empty memory), so each property meets its dangerous case
// in hundreds of the 2048 runs, not in a handful.
fn often() -> proptest::bool::Weighted {
    proptest::bool::weighted(0.8)
}

fn rarely() -> proptest::bool::Weighted {
    proptest::bool::weighted(0.2)
}

fn arb_claim() -> impl Strategy<Value = Option<PersistentVolumeClaim>> {
    (
        (often(), prop_oneof![1 => Just(None), 4 => Just(Some(NAME)), 1 => Just(Some(OTHER))], any::<bool>(), rarely()),
        (
            rarely(),
            prop_oneof![2 => Just(None), 1 => Just(Some(NAME)), 1 => Just(Some(OTHER))],
            rarely(),
            any::<bool>(),
        ),
        (any::<bool>(), 0..4u8, prop_oneof![Just("u1"), Just("u9")]),
    )
        .prop_map(|((exists, prov, node, bound), (deleting, intent, block, legacy), (selector, source, uid))| {
            exists.then(|| {
                let mut b = claim("ns", "data").as_stored(uid);
                b = if legacy { b.legacy_class("fast") } else { b.class("fast") };
                if let Some(p) = prov {
                    b = b.provisioner(p);
                }
                if node {
                    b = b.selected_node("n1");
                }
                if bound {
                    b = b.volume_name("pvc-u1");
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
                if selector {
                    b = b.selector("tier", "gold");
                }
                b = match source {
                    1 => b.clone_of("db"),
                    2 => b.from_snapshot("snap"),
                    3 => b.data_source(Some("populator.example.com"), "Widget", "w"),
                    _ => b,
                };
                b.build()
            })
        })
}

fn arb_volume() -> impl Strategy<Value = Option<PersistentVolume>> {
    (
        often(),
        prop_oneof![Just("Pending"), Just("Available"), Just("Bound"), Just("Released"), Just("Failed")],
        prop_oneof![Just("Delete"), Just("Retain")],
        prop_oneof![Just(Some(NAME)), Just(Some(OTHER)), Just(None)],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just("u1"), Just("u9")],
    )
        .prop_map(|(exists, phase, policy, by, deleting, finalizer, claim_uid)| {
            exists.then(|| {
                let c = claim("ns", "data").as_stored(claim_uid).build();
                let mut b = volume("pvc-u1", by.unwrap_or(NAME), &c)
                    .phase(phase)
                    .reclaim_policy(policy)
                    .as_stored("uid-of-pvc-u1");
                if by.is_none() {
                    b = b.static_volume();
                }
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
    (often(), any::<bool>()).prop_map(|(exists, wffc)| {
        exists.then(|| {
            let b = class("fast", NAME).resource_version("1");
            if wffc { b.wait_for_first_consumer().build() } else { b.build() }
        })
    })
}

fn arb_memory() -> impl Strategy<Value = Memory> {
    (rarely(), rarely(), rarely(), rarely(), rarely()).prop_map(|(unsaved, saved, deleted, given_up, warned)| Memory {
        claim: None,
        failures: 0,
        unsaved: unsaved.then(Box::default),
        saved,
        backend_deleted: deleted.then(|| "uid-of-pvc-u1".to_string()),
        given_up: given_up.then(|| ("1".to_string(), "1".to_string())),
        warned: warned.then(|| "u1".to_string()),
        writes: Default::default(),
    })
}

fn arb_hooks() -> impl Strategy<Value = Hooks> {
    (any::<bool>(), any::<bool>(), rarely(), rarely()).prop_map(|(block, clones, refuse_claims, refuse_deletes)| {
        Hooks { block, clones, refuse_claims, refuse_deletes }
    })
}

/// Oracles written apart from the rules they check.
fn provisioned_by_us(v: &PersistentVolume) -> bool {
    let by = v.metadata.annotations.as_ref().and_then(|a| a.get(keys::PROVISIONED_BY));
    by.is_some_and(|p| names().all().contains(p))
}

fn bound_to_a_live_claim(v: &PersistentVolume, c: Option<&PersistentVolumeClaim>) -> bool {
    if v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
        return true;
    }
    let Some(c) = c else { return false };
    let same_claim =
        v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.as_ref()) == c.metadata.uid.as_ref();
    let elsewhere = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|n| !n.is_empty() && Some(n) != v.metadata.name.as_deref());
    same_claim && !elsewhere
}

fn decide_all(
    c: &Option<PersistentVolumeClaim>,
    v: &Option<PersistentVolume>,
    k: &Option<StorageClass>,
    m: &Memory,
    h: &Hooks,
    stale: bool,
) -> Decision {
    let names = names();
    let rules = Rules { names: &names, provisioner: h, finalizer: true, give_up_after: None };
    let snap =
        Snapshot { claim: c.as_ref(), volume: v.as_ref(), class: k.as_ref(), cache_stale: stale, recorded: None };
    decide("pvc-u1", &snap, m, &rules)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn an_existing_volume_is_never_provisioned_again(c in arb_claim(), v in arb_volume(), k in arb_class(), m in arb_memory(), h in arb_hooks(), stale in any::<bool>()) {
        let d = decide_all(&c, &v, &k, &m, &h, stale);
        if v.is_some() {
            prop_assert!(!matches!(d, Decision::Provision(_)), "provisioned over an existing volume: {d:?}");
        }
    }

    #[test]
    fn a_volume_not_provisioned_by_our_names_is_never_written_deleted_or_handed_to_the_backend(c in arb_claim(), v in arb_volume(), k in arb_class(), m in arb_memory(), h in arb_hooks()) {
        let d = decide_all(&c, &v, &k, &m, &h, false);
        // The oracle reads the annotation itself, not the rule under test.
        if let Some(v) = &v && !provisioned_by_us(v) {
            prop_assert!(
                !matches!(d, Decision::Delete(_) | Decision::RemoveVolumeFinalizer | Decision::AddVolumeFinalizer),
                "acted on another provisioner's volume: {d:?}"
            );
        }
    }

    #[test]
    fn a_backend_is_never_deleted_while_its_volume_is_bound_to_an_existing_claim(c in arb_claim(), v in arb_volume(), k in arb_class(), m in arb_memory(), h in arb_hooks()) {
        let d = decide_all(&c, &v, &k, &m, &h, false);
        if let Decision::Delete(plan) = d {
            let v = v.as_ref().expect("a delete needs a volume");
            prop_assert!(!bound_to_a_live_claim(v, c.as_ref()), "deleted a bound volume: {plan:?}");
            prop_assert!(provisioned_by_us(v));
            prop_assert_eq!(v.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()), Some("Delete"));
            let released = v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
            prop_assert!(released || (deleting(v) && has_finalizer(v, keys::VOLUME_FINALIZER)));
            prop_assert!(!h.refuse_deletes, "the delete filter declined");
            if plan.call_backend {
                prop_assert!(!m.backend_deleted_for(v.metadata.uid.as_deref()), "a backend deleted twice");
            }
        }
    }

    #[test]
    fn only_retain_volumes_lose_the_finalizer_before_their_backend_is_gone(c in arb_claim(), v in arb_volume(), k in arb_class(), m in arb_memory(), h in arb_hooks()) {
        if let Decision::RemoveVolumeFinalizer = decide_all(&c, &v, &k, &m, &h, false) {
            let v = v.as_ref().expect("a volume");
            prop_assert_eq!(v.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()), Some("Retain"));
        }
    }

    #[test]
    fn a_claim_with_a_selector_or_an_unsupported_source_is_never_provisioned(c in arb_claim(), k in arb_class(), m in arb_memory(), h in arb_hooks()) {
        let d = decide_all(&c, &None, &k, &m, &h, false);
        if let Decision::Provision(plan) = &d && plan.record_intent {
            let c = c.as_ref().expect("a plan needs a claim");
            prop_assert!(!has_selector(c), "provisioned a selector claim");
            if let Some(ds) = DataSource::of_claim(c) {
                prop_assert!(h.clones && ds.is_clone(), "provisioned an unsupported source {ds}");
                prop_assert_eq!(plan.data_source.as_ref(), Some(&ds), "the source reaches the provisioner");
            }
        }
        if let Decision::Refuse(_) = &d {
            let c = c.as_ref().expect("a refusal needs a claim");
            prop_assert!(m.warned.as_deref() != c.metadata.uid.as_deref(), "warned twice");
        }
    }

    #[test]
    fn provisioning_starts_only_for_live_unbound_claims_of_ours(c in arb_claim(), k in arb_class(), m in arb_memory(), h in arb_hooks()) {
        let d = decide_all(&c, &None, &k, &m, &h, false);
        if let Decision::Provision(plan) = &d {
            let c = c.as_ref().expect("a plan needs a claim");
            prop_assert!(!m.saved && m.unsaved.is_none(), "the backend asked again: {m:?}");
            prop_assert!(!h.refuse_claims);
            if plan.record_intent {
                prop_assert!(c.metadata.deletion_timestamp.is_none());
                prop_assert!(!bound(c));
                prop_assert_eq!(claim_provisioner(c), Some(NAME));
                let k = k.as_ref().expect("a plan needs a class");
                if k.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") {
                    prop_assert!(plan.selected_node.is_some());
                }
                if c.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
                    prop_assert!(h.block);
                }
            } else {
                prop_assert!(has_intent(c, &names()), "a call without a new record needs an old one");
            }
        }
    }

    #[test]
    fn a_claim_with_intent_and_no_volume_is_always_finished(c in arb_claim(), k in arb_class()) {
        let d = decide_all(&c, &None, &k, &Memory::default(), &Hooks::default(), false);
        if let (Some(c), Some(_)) = (c.as_ref(), k.as_ref()) && has_intent(c, &names()) {
            prop_assert!(matches!(d, Decision::Provision(_)), "intent without volume must be finished: {d:?}");
        }
    }
}

#[test]
fn a_released_volume_whose_claim_went_to_another_volume_is_deleted() {
    let c = ours().volume_name("pv-elsewhere").build();
    let v = volume("pvc-u1", NAME, &c).phase("Released").build();
    assert_eq!(run(Some(&c), Some(&v), None), delete(true, true));
}

#[test]
fn a_released_volume_whose_claim_the_cache_still_shows_waits_for_the_claim_to_go() {
    let c = ours().volume_name("pvc-u1").build();
    let v = volume("pvc-u1", NAME, &c).phase("Released").build();
    assert_eq!(run(Some(&c), Some(&v), None), Decision::Idle(IdleReason::ClaimStillExists));
}

#[test]
fn a_volume_the_api_server_rejects_says_whether_its_backend_was_removed() {
    let removed = after_save_failure("pvc-u1", &SaveFailure::Rejected { message: "bad", cleanup: Ok(()) });
    let note = removed.note.expect("a warning");
    assert_eq!(note.reason, "ProvisioningFailed");
    assert!(note.message.contains("its backend volume was removed"));
    let left = after_save_failure("pvc-u1", &SaveFailure::Rejected { message: "bad", cleanup: Err("denied".into()) });
    let note = left.note.expect("a warning");
    assert_eq!(note.reason, "ProvisioningCleanupFailed");
    assert!(note.message.contains("by hand"), "{}", note.message);
}

#[test]
fn an_unavailable_api_server_retries_quietly_and_a_taken_name_warns() {
    let down = after_save_failure("pvc-u1", &SaveFailure::Unavailable);
    assert_eq!((down.note, down.then, down.counts_as_failure), (None, Then::Retry, true));
    let taken = after_save_failure("pvc-u1", &SaveFailure::TakenByAnotherClaim);
    assert!(taken.note.is_some_and(|n| n.message.contains("belongs to another claim")));
}

#[test]
fn a_stalled_answer_warns_and_keeps_finishing_even_for_a_claim_going_away() {
    let err = ProvisionError::stalled("could not get AWS credentials");
    for finishing_only in [false, true] {
        let f = after_provision_error(&err, &a_plan(None, finishing_only), "ns/d", 7, Some(3));
        assert_eq!(f.then, Then::Retry, "work that may exist is never dropped nor given up on");
        assert_eq!(f.note.map(|n| (n.type_, n.reason)), Some((EventType::Warning, "ProvisioningFailed")));
    }
}

#[test]
fn a_retry_after_answer_polls_at_the_provisioners_pace() {
    let err = ProvisionError::retry_after("creating", std::time::Duration::from_secs(5));
    let first = after_provision_error(&err, &a_plan(None, false), "ns/d", 0, None);
    assert_eq!(first.then, Then::Poll(std::time::Duration::from_secs(5)));
    assert_eq!(first.note.map(|n| n.reason), Some("Provisioning"));
    let going = after_provision_error(&err, &a_plan(None, true), "ns/d", 4, None);
    assert_eq!((going.note, going.then), (None, Then::Poll(std::time::Duration::from_secs(5))));
}

#[test]
fn the_provisioning_failed_event_shows_every_level_of_the_chain() {
    use crate::cause::tests::{FULL, backend_error};
    let cases = [
        (ProvisionError::failed(backend_error()), a_plan(None, false), None),
        (ProvisionError::failed(backend_error()), a_plan(None, false), Some(1)),
        (ProvisionError::stalled(backend_error()), a_plan(None, false), None),
        (ProvisionError::infeasible(backend_error()), a_plan(None, false), None),
        (ProvisionError::reschedule(backend_error()), a_plan(Some("node-a"), false), None),
    ];
    for (err, plan, give_up_after) in cases {
        let f = after_provision_error(&err, &plan, "ns/data", 0, give_up_after);
        let note = f.note.unwrap_or_else(|| panic!("{err:?}: a warning"));
        assert_eq!(note.reason, "ProvisioningFailed");
        assert!(note.message.starts_with(FULL), "{err:?}: {}", note.message);
    }
}

#[test]
fn the_delete_failed_event_shows_every_level_of_the_chain() {
    use crate::cause::tests::{FULL, backend_error};
    let f = after_delete_error(&DeleteError::failed(Cause::context("deleting pvc-1", backend_error())));
    let note = f.note.expect("a warning");
    assert_eq!(note.reason, "VolumeFailedDelete");
    assert_eq!(note.message, format!("deleting pvc-1: {FULL}"));
}
