//! The guarded JSON patch every removal the engine makes goes through (its
//! intent record on a claim, its finalizer on a volume).

use kube::api::Patch;
use kube::{Api, Resource};
use tracing::warn;

use super::context::Ctx;
use super::runner::Next;
use crate::own_writes::{Expect, Side};

/// Sends `ops` as one JSON patch and records the state it produced. A failed
/// `test` (422) or a conflict means the object changed: its watch event
/// requeues the key, so that is not a failure; a missing object is done.
pub(super) async fn guarded_patch<K>(
    ctx: &Ctx,
    key: &str,
    side: Side,
    api: &Api<K>,
    name: &str,
    ops: Vec<serde_json::Value>,
    what: &str,
) -> Next
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let patch = match crate::removals::patch(ops) {
        Ok(p) => p,
        Err(e) => {
            warn!(volume = key, error = %e, "building the patch for {what} failed");
            return Next::Failed;
        }
    };
    ctx.writing(key, side);
    match api.patch(name, &crate::keys::patch_params(), &Patch::<()>::Json(patch)).await {
        Ok(updated) => {
            ctx.wrote_state(key, side, Expect::of_write(&updated));
            Next::Succeeded
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            ctx.wrote_state(key, side, Some(Expect::Gone));
            Next::Succeeded
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => Next::Done,
        Err(e) => {
            warn!(volume = key, error = %e, "{what} failed");
            Next::Failed
        }
    }
}
