//! One pass over one volume: what the caches and the engine's memory say
//! about it, the decision the rules take ([`crate::decision::decide`]), and
//! the path that carries the decision out.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::context::{Ctx, claim_ref, decoded};
use super::delete::{add_volume_finalizer, delete, remove_volume_finalizer};
use super::intent::remove_intent;
use super::provision::{provision, save_pending};
use super::runner::Next;
use crate::decision::{self, Decision, IdleReason, Rules, Snapshot, decide};
use crate::events::EventType;
use crate::memory::Memory;

/// What one pass looks at: the cached objects of the key, and whether (and
/// for how long at most) the cache is behind the engine's own last write.
struct Seen {
    claim: Option<Arc<PersistentVolumeClaim>>,
    /// The claim as the journal recorded it, if it holds an entry.
    recorded: Option<Arc<PersistentVolumeClaim>>,
    volume: Option<Arc<PersistentVolume>>,
    class: Option<Arc<StorageClass>>,
    behind: Option<std::time::Duration>,
    memory: Memory,
}

/// Reads the caches and the memory of `key`. The snapshot and the check of
/// own writes against it happen under one lock: a watch event applied in
/// between (the store first, then `observed`, which takes this lock) would
/// otherwise count as shown while the snapshot predates it.
fn look(ctx: &Ctx, key: &str) -> Result<Seen, serde_json::Error> {
    let recorded = ctx.journal.recorded(key);
    let mut st = ctx.state();
    let memory = st.memory.get(key);
    let claim_key = memory.claim.clone().or_else(|| recorded.as_ref().map(|r| claim_ref(&r.claim)));
    let cached_claim = claim_key.as_ref().and_then(|r| ctx.claims.get_key(r));
    let cached_volume = ctx.volumes.get(None, key);
    let (claim, volume) = (decoded(cached_claim)?, decoded(cached_volume)?);
    // A claim of the same name may have been recreated (new uid, new key):
    // only the claim whose key this is belongs to this volume.
    let claim = claim.filter(|c| ctx.key_of_claim(c) == key);
    let claim_rv = claim.as_ref().and_then(|c| c.resource_version());
    let volume_rv = volume.as_ref().and_then(|v| v.resource_version());
    let now = Instant::now();
    let behind = st.memory.existing_writes(key, |w| w.behind(claim_rv.as_deref(), volume_rv.as_deref(), now)).flatten();
    drop(st);
    if let Some(wait) = behind {
        debug!(volume = key, ?wait, ?claim_rv, ?volume_rv, "the cache has not shown the engine's last write yet");
    }
    let class_name = claim
        .as_deref()
        .and_then(decision::claim_class)
        .map(str::to_string)
        .or_else(|| recorded.as_ref().map(|r| r.class.clone()))
        .or_else(|| volume.as_ref().and_then(|v| v.spec.as_ref()?.storage_class_name.clone()));
    let mut class = class_name.as_deref().and_then(|n| ctx.classes.get(&ObjectRef::new(n)));
    if class.is_none() && recorded.is_some() {
        // Deleted since: the volume is finished with the class as recorded.
        class = class_name.as_deref().and_then(|n| ctx.journal.class(n));
    }
    let recorded = recorded.map(|r| r.claim.clone());
    Ok(Seen { claim, recorded, volume, class, behind, memory })
}

pub(super) async fn reconcile(ctx: &Ctx, key: &str) -> Next {
    // Forgetting a journal entry writes nothing now: the pass goes on with
    // what follows it (at most once per entry).
    for _ in 0..2 {
        if let Some(next) = reconcile_decided(ctx, key).await {
            return next;
        }
    }
    Next::Done
}

/// One decision and its path; `None` when the journal entry was forgotten
/// and the pass should decide again.
async fn reconcile_decided(ctx: &Ctx, key: &str) -> Option<Next> {
    let seen = match look(ctx, key) {
        Ok(seen) => seen,
        Err(e) => {
            warn!(volume = key, error = %e, "a cached object does not decode; retrying later");
            return Some(Next::Failed);
        }
    };
    let Seen { claim, recorded, volume, class, behind, memory } = seen;
    let rules = Rules {
        names: &ctx.names,
        provisioner: ctx.provisioner.as_ref(),
        finalizer: ctx.config.volume.finalizer,
        give_up_after: ctx.config.give_up_after,
    };
    let snap = Snapshot {
        claim: claim.as_deref(),
        volume: volume.as_deref(),
        class: class.as_deref(),
        cache_stale: behind.is_some(),
        recorded: recorded.as_deref(),
    };
    let decision = decide(key, &snap, &memory, &rules);
    // The claim the work is for: the live one, or the one the journal
    // recorded when the live one is gone (or is another claim of the name).
    let subject = match (&recorded, &claim) {
        (Some(r), Some(c)) if c.metadata.uid == r.metadata.uid => Some(c.clone()),
        (Some(r), _) => Some(r.clone()),
        (None, c) => c.clone(),
    };
    debug!(volume = key, ?decision, "decided");
    let next = match decision {
        Decision::Idle(IdleReason::Nothing) => {
            // Claim and volume are gone: forget the volume (its own-write
            // expectations expire on their own).
            ctx.state().memory.forget(key);
            Next::Done
        }
        Decision::Idle(reason) => {
            debug!(volume = key, ?reason, "nothing to do");
            Next::Done
        }
        Decision::WaitForCache => Next::After(behind.unwrap_or_default()),
        Decision::WaitForClass(class) => {
            debug!(volume = key, class, "waiting for the class to exist");
            Next::Done
        }
        Decision::Refuse(refusal) => {
            let Some(claim) = claim else { return Some(Next::Done) };
            let name = class.as_deref().map(|k| k.provisioner.clone()).unwrap_or_else(|| ctx.names.primary().into());
            ctx.state().memory.update(key, |m| m.warned = claim.uid());
            ctx.claim_event(&claim, EventType::Warning, "ProvisioningFailed", refusal.message(&name));
            Next::Done
        }
        Decision::SaveVolume => match (subject, class) {
            (Some(claim), Some(class)) => save_pending(ctx, key, &claim, &class).await,
            _ => Next::Done,
        },
        Decision::Provision(plan) => match (subject, class) {
            (Some(claim), Some(class)) => provision(ctx, key, plan, claim, class, memory.failures).await,
            _ => Next::Done,
        },
        Decision::RemoveIntent => {
            let legacy = claim.filter(|c| decision::has_intent(c, &ctx.names));
            match legacy {
                Some(claim) => remove_intent(ctx, key, &claim, false).await,
                None => {
                    ctx.journal.forget(key);
                    return None;
                }
            }
        }
        Decision::Delete(plan) => match volume {
            Some(volume) => delete(ctx, key, &volume, plan).await,
            None => Next::Done,
        },
        Decision::AddVolumeFinalizer => match volume {
            Some(volume) => add_volume_finalizer(ctx, key, &volume).await,
            None => Next::Done,
        },
        Decision::RemoveVolumeFinalizer => match volume {
            Some(volume) => remove_volume_finalizer(ctx, key, &volume).await,
            None => Next::Done,
        },
    };
    Some(next)
}
