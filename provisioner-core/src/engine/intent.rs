//! The intent record on the claim: written before the backend is touched,
//! removed once a PV records the backend or nothing was created (see the
//! crash-safety argument in the engine's documentation).

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::Patch;
use serde_json::json;
use tracing::warn;

use super::context::Ctx;
use super::runner::Next;
use super::writes::guarded_patch;
use crate::keys;
use crate::own_writes::{Expect, Side};
use crate::removals;

/// Writes the intent record for volume `pv_name` on the claim: our
/// finalizer and the PV and provisioner names, in one patch guarded by the
/// claim's resourceVersion (so it also confirms that the cached claim is
/// current). `Ok` with the updated claim, or what the pass should answer.
pub(super) async fn record_intent(
    ctx: &Ctx,
    key: &str,
    pv_name: &str,
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
) -> Result<Arc<PersistentVolumeClaim>, Next> {
    let mut finalizers = claim.finalizers().to_vec();
    finalizers.push(keys::INTENT_FINALIZER.to_string());
    let patch = json!({
        "metadata": {
            "resourceVersion": claim.resource_version(),
            "finalizers": finalizers,
            "annotations": {
                keys::INTENT_VOLUME: pv_name,
                keys::INTENT_PROVISIONER: class.provisioner,
            },
        }
    });
    let ns = claim.namespace().unwrap_or_default();
    ctx.writing(key, Side::Claim);
    match ctx.claim_api(&ns).patch(&claim.name_any(), &crate::keys::patch_params(), &Patch::Merge(&patch)).await {
        Ok(updated) => {
            ctx.wrote_state(key, Side::Claim, Expect::of_write(&updated));
            ctx.expect_echo(&updated);
            Ok(Arc::new(updated))
        }
        // The cache was behind; the newer claim is on its way and will requeue the key.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Err(Next::Done),
        Err(e) => {
            warn!(volume = key, error = %e, "recording the provisioning intent failed");
            Err(Next::Failed)
        }
    }
}

/// Removes the intent record from the claim (and, when `reschedule`, the
/// selected node), in one JSON patch guarded by `test` operations.
pub(super) async fn remove_intent(ctx: &Ctx, key: &str, claim: &PersistentVolumeClaim, reschedule: bool) -> Next {
    let ops = removals::intent_record(claim, reschedule);
    if ops.is_empty() {
        return Next::Succeeded;
    }
    let ns = claim.namespace().unwrap_or_default();
    let api = ctx.claim_api(&ns);
    guarded_patch(ctx, key, Side::Claim, &api, &claim.name_any(), ops, "removing the provisioning intent").await
}
