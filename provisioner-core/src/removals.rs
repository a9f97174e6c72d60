//! **Unstable**: public so that the rules can be read, tested and reused, but
//! not covered by semver before 1.0; build provisioners on the crate root.
//!
//! The JSON patches that remove the engine's marks from objects: its intent
//! record from a claim, its deletion finalizer from a volume. Each removal
//! is guarded by a `test` of the finalizer's position, so a patch built from
//! a stale copy fails (422) instead of removing someone else's finalizer.
//! The engine and the uninstall command ([`crate::release`]) send the same
//! patches. Pure: no I/O.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::keys;

/// Operations removing finalizer `name` from `obj`, guarded by a `test` of its position.
fn finalizer_ops<K: ResourceExt>(obj: &K, name: &str) -> Vec<Value> {
    match obj.finalizers().iter().position(|f| f == name) {
        Some(i) => {
            let path = format!("/metadata/finalizers/{i}");
            vec![json!({ "op": "test", "path": path, "value": name }), json!({ "op": "remove", "path": path })]
        }
        None => Vec::new(),
    }
}

fn annotation_op(key: &str) -> Value {
    json!({ "op": "remove", "path": format!("/metadata/annotations/{}", key.replace('~', "~0").replace('/', "~1")) })
}

/// The operations removing the intent record from `claim` (and with
/// `reschedule`, its selected node); empty when there is nothing to remove.
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use provisioner_core::testing::fixtures::claim;
/// let c = claim("ns", "data").intent_of("example.com/x", "pvc-u1").build();
/// let ops = provisioner_core::removals::intent_record(&c, false);
/// assert_eq!(ops.len(), 4, "test + remove of the finalizer, the two annotations");
/// assert!(provisioner_core::removals::intent_record(&claim("ns", "data").build(), false).is_empty());
/// # }
/// ```
pub fn intent_record(claim: &PersistentVolumeClaim, reschedule: bool) -> Vec<Value> {
    let mut ops = finalizer_ops(claim, keys::INTENT_FINALIZER);
    let mut annotations = vec![keys::INTENT_VOLUME, keys::INTENT_PROVISIONER];
    if reschedule {
        annotations.extend([keys::SELECTED_NODE, keys::ALPHA_SELECTED_NODE]);
    }
    ops.extend(annotations.into_iter().filter(|k| claim.annotations().contains_key(*k)).map(annotation_op));
    ops
}

/// The operations removing our deletion finalizer from `volume`; empty when it has none.
pub fn volume_finalizer(volume: &PersistentVolume) -> Vec<Value> {
    finalizer_ops(volume, keys::VOLUME_FINALIZER)
}

/// `ops` as a patch to send.
pub fn patch(ops: Vec<Value>) -> Result<json_patch::Patch, serde_json::Error> {
    serde_json::from_value(Value::Array(ops))
}
