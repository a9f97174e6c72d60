//! The delete path (backend, then PV object, then our finalizer) and the
//! upkeep of our finalizer on volumes whose reclaim policy changed.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, Preconditions};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};

use super::context::Ctx;
use super::runner::Next;
use super::writes::guarded_patch;
use crate::decision::{DeletePlan, Then, after_delete_error};
use crate::keys;
use crate::own_writes::{Expect, Side};
use crate::provisioner::DeleteError;
use crate::removals;

/// Carries out a [`DeletePlan`]: the backend (unless this process deleted it
/// already), the PV object (unless it is being deleted), then our finalizer.
pub(super) async fn delete(ctx: &Ctx, key: &str, volume: &PersistentVolume, plan: DeletePlan) -> Next {
    if plan.call_backend {
        // A journal entry for this volume must be gone from the server first:
        // one left behind would make a restart provision the backend again.
        if !ctx.journal.settled(key).await {
            return Next::Failed;
        }
        if let Err(next) = delete_backend(ctx, key, volume).await {
            return next;
        }
        // A pass after a failed or conflicting write below finds the mark.
        if let Some(uid) = volume.uid().filter(|u| !u.is_empty()) {
            ctx.state().memory.update(key, |m| m.backend_deleted = Some(uid));
        }
    }
    let mut current = volume.clone();
    if plan.delete_object {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: volume.uid(), resource_version: None }),
            ..DeleteParams::default()
        };
        ctx.writing(key, Side::Volume);
        match ctx.volume_api().delete(key, &dp).await {
            Ok(either) => match either.left() {
                // Held by the finalizer, which goes next.
                Some(still_there) => {
                    ctx.wrote_state(key, Side::Volume, Expect::of_write(&still_there));
                    current = still_there;
                }
                None => {
                    ctx.wrote_state(key, Side::Volume, Some(Expect::Gone));
                    return Next::Succeeded;
                }
            },
            Err(kube::Error::Api(e)) if e.code == 404 => {
                ctx.wrote_state(key, Side::Volume, Some(Expect::Gone));
                return Next::Succeeded;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => return Next::Done,
            Err(e) => {
                warn!(volume = key, error = %e, "deleting the volume object failed");
                return Next::Failed;
            }
        }
    }
    remove_volume_finalizer(ctx, key, &current).await
}

/// Calls [`Provisioner::delete`] for `volume`: `Ok` when the backend volume
/// is gone, otherwise what the pass should answer.
pub(super) async fn delete_backend(ctx: &Ctx, key: &str, volume: &PersistentVolume) -> Result<(), Next> {
    let label = volume.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
    let started = Instant::now();
    let result = ctx
        .backend_call(ctx.config.delete_timeout, ctx.provisioner.delete(volume), |t| {
            Err(DeleteError::failed(format!("delete call timed out after {t:?}")))
        })
        .await;
    if let Err(err) = result {
        let follow = after_delete_error(&err);
        tracing::debug!(volume = key, err = %format_args!("{err:#}"), ?follow, "the backend volume was not deleted");
        if follow.counts_as_failure {
            ctx.metrics.delete_failed(&label);
        }
        if let Some(note) = follow.note {
            ctx.volume_note(volume, note);
        }
        return Err(match follow.then {
            Then::Done => Next::Done,
            _ => Next::Failed,
        });
    }
    ctx.metrics.delete_succeeded(&label, started.elapsed());
    info!(volume = key, "deleted the backend volume");
    Ok(())
}

pub(super) async fn remove_volume_finalizer(ctx: &Ctx, key: &str, volume: &PersistentVolume) -> Next {
    let ops = removals::volume_finalizer(volume);
    if ops.is_empty() {
        return Next::Succeeded;
    }
    guarded_patch(ctx, key, Side::Volume, &ctx.volume_api(), key, ops, "removing the volume finalizer").await
}

/// Adds our finalizer to a Delete-policy volume of ours that lacks it (saved
/// before the option was on, or by an older provisioner of the same name),
/// in a merge patch guarded by the volume's resourceVersion.
pub(super) async fn add_volume_finalizer(ctx: &Ctx, key: &str, volume: &PersistentVolume) -> Next {
    let mut finalizers = volume.finalizers().to_vec();
    finalizers.push(keys::VOLUME_FINALIZER.to_string());
    let patch = json!({
        "metadata": { "resourceVersion": volume.resource_version(), "finalizers": finalizers }
    });
    ctx.writing(key, Side::Volume);
    match ctx.volume_api().patch(key, &crate::keys::patch_params(), &Patch::Merge(&patch)).await {
        Ok(updated) => {
            ctx.wrote_state(key, Side::Volume, Expect::of_write(&updated));
            info!(volume = key, "added the deletion finalizer");
            Next::Succeeded
        }
        // Changed or gone meanwhile: its watch event requeues the key.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 || e.code == 422 => Next::Done,
        Err(e) => {
            warn!(volume = key, error = %e, "adding the deletion finalizer failed");
            Next::Failed
        }
    }
}
