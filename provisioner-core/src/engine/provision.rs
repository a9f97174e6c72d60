//! The provision path: the backend call, the PV saved for what it returned,
//! and what follows each of the provisioner's answers.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::context::Ctx;
use super::intent::remove_intent;
use super::journal::JournalError;
use super::runner::Next;
use crate::decision::{self, FollowUp, ProvisionPlan, SaveFailure, Then, after_provision_error, after_save_failure};
use crate::events::EventType;
use crate::own_writes::{Expect, Side};
use crate::provisioner::{DeleteError, ProvisionError, ProvisionRequest};
use crate::volume::build_volume;

fn class_label(class: &StorageClass) -> String {
    class.name_any()
}

/// Records the intent if the plan says so, calls the backend, and saves the
/// volume or carries out what the rules say follows the answer.
/// `failures`: the key's failed attempts so far.
pub(super) async fn provision(
    ctx: &Ctx,
    key: &str,
    plan: ProvisionPlan,
    claim: Arc<PersistentVolumeClaim>,
    class: Arc<StorageClass>,
    failures: u32,
) -> Next {
    if plan.record_intent {
        match ctx.journal.record(key, &claim, &class).await {
            Ok(()) => {}
            Err(e @ JournalError::Full(_)) => {
                debug!(volume = key, error = %e, "waiting for room in the intent journal");
                return Next::After(Duration::from_secs(1));
            }
            Err(JournalError::NotLeading) => return Next::Failed,
            Err(e) => {
                let why = crate::Cause::new(e).chain();
                warn!(volume = key, error = %why, "recording the provisioning intent failed; will retry");
                return Next::Failed;
            }
        }
    }
    let request = ProvisionRequest {
        pv_name: plan.pv_name.clone(),
        claim: claim.clone(),
        class: class.clone(),
        selected_node: plan.selected_node.clone(),
        data_source: plan.data_source.clone(),
    };
    let started = Instant::now();
    let result = ctx
        .backend_call(ctx.config.provision_timeout, ctx.provisioner.provision(&request), |t| {
            Err(ProvisionError::in_progress(format!("provision call timed out after {t:?}")))
        })
        .await;

    let err = match result {
        Ok(provisioned) => {
            let pv = build_volume(&plan.pv_name, provisioned, &claim, &class, &ctx.config.volume);
            return save_volume(ctx, key, &claim, &class, pv, started.elapsed()).await;
        }
        Err(err) => err,
    };
    let name = format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any());
    let follow = after_provision_error(&err, &plan, &name, failures, ctx.config.give_up_after);
    debug!(volume = key, err = %format_args!("{err:#}"), ?follow, "provisioning did not return a volume");
    if follow.counts_as_failure {
        ctx.metrics.provision_failed(&class_label(&class));
    }
    if let Some(note) = follow.note {
        ctx.claim_note(&claim, note);
    }
    match follow.then {
        Then::Retry => Next::Failed,
        Then::RetryInfeasible => Next::After(ctx.config.infeasible_retry),
        Then::Poll(after) => Next::Poll(after),
        Then::Done => Next::Done,
        Then::RemoveIntent { reschedule } => remove_intent(ctx, key, &claim, reschedule).await,
        Then::GiveUp => {
            let at = (claim.resource_version().unwrap_or_default(), class.resource_version().unwrap_or_default());
            ctx.state().memory.update(key, |m| {
                m.given_up = Some(at);
                m.failures = 0;
            });
            Next::Done
        }
    }
}

pub(super) async fn save_volume(
    ctx: &Ctx,
    key: &str,
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    pv: PersistentVolume,
    took: Duration,
) -> Next {
    let label = class_label(class);
    ctx.writing(key, Side::Volume);
    let failure = match ctx.volume_api().create(&crate::keys::post_params(), &pv).await {
        Ok(saved) => {
            ctx.expect_echo(&saved);
            return saved_volume(ctx, key, claim, &label, Some(&saved), took);
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Ours from an earlier attempt (same claim uid) is success.
            match ctx.volume_api().get_opt(key).await {
                Ok(Some(existing)) => {
                    let uid = existing.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone());
                    if uid == claim.uid() {
                        return saved_volume(ctx, key, claim, &label, Some(&existing), took);
                    }
                    SaveFailure::TakenByAnotherClaim
                }
                _ => {
                    ctx.state().memory.update(key, |m| m.unsaved = Some(Box::new(pv)));
                    return Next::Failed;
                }
            }
        }
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
            // The API server will never take this volume: undo the backend.
            ctx.state().memory.update(key, |m| m.unsaved = None);
            let cleanup = match ctx.provisioner.delete(&pv).await {
                Ok(()) | Err(DeleteError::Ignored) => Ok(()),
                Err(de) => Err(format!("{de:#}")),
            };
            if cleanup.is_ok() {
                ctx.journal.forget(key);
            }
            let follow = after_save_failure(key, &SaveFailure::Rejected { message: &e.message, cleanup });
            return carry_out(ctx, claim, &label, follow);
        }
        Err(e) => {
            warn!(volume = key, error = %e, "saving the volume failed; will retry");
            ctx.state().memory.update(key, |m| m.unsaved = Some(Box::new(pv)));
            SaveFailure::Unavailable
        }
    };
    carry_out(ctx, claim, &label, after_save_failure(key, &failure))
}

/// Publishes and counts what the rules say follows a failed save.
fn carry_out(ctx: &Ctx, claim: &PersistentVolumeClaim, label: &str, follow: FollowUp) -> Next {
    if follow.counts_as_failure {
        ctx.metrics.provision_failed(label);
    }
    if let Some(note) = follow.note {
        ctx.claim_note(claim, note);
    }
    match follow.then {
        Then::Done => Next::Done,
        _ => Next::Failed,
    }
}

/// The API server took the volume (`saved`: as it returned it).
fn saved_volume(
    ctx: &Ctx,
    key: &str,
    claim: &PersistentVolumeClaim,
    label: &str,
    saved: Option<&PersistentVolume>,
    took: Duration,
) -> Next {
    ctx.state().memory.update(key, |m| {
        m.unsaved = None;
        m.saved = true;
    });
    // The PV records the backend now: the entry leaves in a coming commit.
    ctx.journal.forget(key);
    if let Some(saved) = saved {
        ctx.wrote_state(key, Side::Volume, Expect::of_write(saved));
    }
    ctx.metrics.provision_succeeded(label, took);
    ctx.claim_event(
        claim,
        EventType::Normal,
        "ProvisioningSucceeded",
        format!("Successfully provisioned volume {key}"),
    );
    info!(volume = key, claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any()), "provisioned");
    Next::Succeeded
}

/// Saves the volume the backend returned for `key` that the API server has
/// not taken yet, if any.
pub(super) async fn save_pending(ctx: &Ctx, key: &str, claim: &PersistentVolumeClaim, class: &StorageClass) -> Next {
    let Some(pv) = ctx.state().memory.peek(key, |m| m.and_then(|m| m.unsaved.clone())) else { return Next::Done };
    debug!(volume = key, "saving the volume the backend returned earlier");
    save_volume(ctx, key, claim, class, *pv, Duration::ZERO).await
}

/// On a graceful stop, after the workers: one attempt to save each volume
/// the backend returned and the API server has not taken yet, so the next
/// leader need not ask the backend for it again.
pub(super) async fn save_unsaved(ctx: &Ctx) {
    let keys = ctx.state().memory.unsaved_keys();
    for key in keys {
        let claim_ref = ctx.state().memory.peek(&key, |m| m.and_then(|m| m.claim.clone()));
        let claim = claim_ref.and_then(|r| ctx.claims.get_key(&r)).and_then(|c| c.decode().ok());
        let class = claim.as_ref().and_then(decision::claim_class).and_then(|n| ctx.classes.get(&ObjectRef::new(n)));
        if let (Some(claim), Some(class)) = (claim, class) {
            let _ = save_pending(ctx, &key, &claim, &class).await;
        }
    }
}
