//! Ending an intent: the journal entry is forgotten (it leaves in a coming
//! commit), and a record an earlier version wrote on the claim, or the
//! claim's selected node for a reschedule, is removed.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;

use super::context::Ctx;
use super::runner::Next;
use super::writes::guarded_patch;
use crate::own_writes::Side;
use crate::removals;

/// Forgets the journal entry of `key`, and removes from the claim an
/// earlier version's intent record (and, when `reschedule`, the selected
/// node), in one JSON patch guarded by `test` operations.
pub(super) async fn remove_intent(ctx: &Ctx, key: &str, claim: &PersistentVolumeClaim, reschedule: bool) -> Next {
    ctx.journal.forget(key);
    let ops = removals::intent_record(claim, reschedule);
    if ops.is_empty() {
        return Next::Succeeded;
    }
    let ns = claim.namespace().unwrap_or_default();
    let api = ctx.claim_api(&ns);
    guarded_patch(ctx, key, Side::Claim, &api, &claim.name_any(), ops, "removing the provisioning intent").await
}
