//! The fake PV binder: the parts of kube-controller-manager's
//! PersistentVolume controller (and its protection controllers) that
//! provisioning touches. It runs as a task woken by every write to the
//! store, and brings claims and volumes to their next state in passes until
//! nothing changes.

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use serde_json::{Value, json};

use super::Inner;
use super::store::{CLASS, CORE_EVENT, PV, PV_PROTECTION, PVC, PVC_PROTECTION, Part, Store, finalizers};
use crate::keys;

const COMPONENT: &str = "persistentvolume-controller";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// Passes per wake-up, a guard against two rules undoing each other forever.
const MAX_PASSES: usize = 100;

/// Starts the binder for the cluster behind `inner`; it stops when the cluster is dropped.
pub(crate) fn spawn(inner: &Arc<Inner>) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let mut changed = inner.changed.subscribe();
    tokio::spawn(async move {
        let mut said = HashSet::new();
        loop {
            changed.borrow_and_update();
            {
                let Some(inner) = weak.upgrade() else { return };
                let mut wrote = false;
                {
                    let mut store = inner.lock();
                    for _ in 0..MAX_PASSES {
                        if !pass(&mut store, &mut said) {
                            break;
                        }
                        wrote = true;
                    }
                }
                if wrote {
                    inner.notify();
                }
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_str().unwrap_or_default()
}

fn annotation<'a>(v: &'a Value, key: &str) -> &'a str {
    v["metadata"]["annotations"][key].as_str().unwrap_or_default()
}

fn deleting(v: &Value) -> bool {
    v["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null())
}

fn phase(v: &Value) -> &str {
    s(v, &["status", "phase"])
}

fn set_annotation(v: &mut Value, key: &str, value: &str) {
    if !v["metadata"]["annotations"].is_object() {
        v["metadata"]["annotations"] = json!({});
    }
    v["metadata"]["annotations"][key] = json!(value);
}

fn set_finalizer(v: &mut Value, name: &str, present: bool) {
    let mut list = finalizers(v);
    list.retain(|f| f != name);
    if present {
        list.push(name.to_string());
    }
    v["metadata"]["finalizers"] = json!(list);
}

/// The claim's class: the legacy annotation wins over the field.
fn claim_class(claim: &Value) -> &str {
    let beta = annotation(claim, keys::BETA_STORAGE_CLASS);
    if beta.is_empty() { s(claim, &["spec", "storageClassName"]) } else { beta }
}

/// One pass over all claims and volumes; whether anything was written.
fn pass(store: &mut Store, said: &mut HashSet<(String, &'static str)>) -> bool {
    let mut wrote = false;
    for claim in store.all(&PVC) {
        wrote |= sync_claim(store, &claim, said);
    }
    for volume in store.all(&PV) {
        wrote |= sync_volume(store, &volume);
    }
    wrote
}

fn sync_claim(store: &mut Store, claim: &Value, said: &mut HashSet<(String, &'static str)>) -> bool {
    let ns = s(claim, &["metadata", "namespace"]).to_string();
    let name = s(claim, &["metadata", "name"]).to_string();
    let uid = s(claim, &["metadata", "uid"]).to_string();
    let has_protection = finalizers(claim).iter().any(|f| f == PVC_PROTECTION);
    if deleting(claim) {
        // No pods in this cluster: a claim being deleted is never in use.
        if has_protection {
            return store.modify(&PVC, &ns, &name, Part::Main, |c| set_finalizer(c, PVC_PROTECTION, false));
        }
        // Otherwise go on: the real PV controller's syncClaim does not look
        // at deletionTimestamp, so a claim held by another finalizer (a
        // provisioner's intent record) is still bound to the volume made for
        // it, and provisioners rely on that update to see the volume saved.
    } else if !has_protection && store.protection {
        return store.modify(&PVC, &ns, &name, Part::Main, |c| set_finalizer(c, PVC_PROTECTION, true));
    }
    let volume_name = s(claim, &["spec", "volumeName"]).to_string();
    if volume_name.is_empty() {
        let prebound = store.all(&PV).into_iter().find(|pv| {
            s(pv, &["spec", "claimRef", "namespace"]) == ns
                && s(pv, &["spec", "claimRef", "name"]) == name
                && [uid.as_str(), ""].contains(&s(pv, &["spec", "claimRef", "uid"]))
                && !deleting(pv)
        });
        if let Some(pv) = prebound {
            return bind(store, &pv, claim);
        }
        let class_name = claim_class(claim).to_string();
        if class_name.is_empty() {
            return false;
        }
        let Some(class) = store.all(&CLASS).into_iter().find(|k| s(k, &["metadata", "name"]) == class_name) else {
            let message = format!("storageclass.storage.k8s.io \"{class_name}\" not found");
            return say(store, said, claim, "Warning", "ProvisioningFailed", &message);
        };
        let provisioner = s(&class, &["provisioner"]).to_string();
        if provisioner == "kubernetes.io/no-provisioner" {
            return false;
        }
        let node = [keys::SELECTED_NODE, keys::ALPHA_SELECTED_NODE].iter().any(|k| !annotation(claim, k).is_empty());
        if s(&class, &["volumeBindingMode"]) == "WaitForFirstConsumer" && !node {
            let message = "waiting for first consumer to be created before binding";
            return say(store, said, claim, "Normal", "WaitForFirstConsumer", message);
        }
        let mut wrote = false;
        if annotation(claim, keys::STORAGE_PROVISIONER) != provisioner
            || annotation(claim, keys::BETA_STORAGE_PROVISIONER) != provisioner
        {
            wrote |= store.modify(&PVC, &ns, &name, Part::Main, |c| {
                set_annotation(c, keys::STORAGE_PROVISIONER, &provisioner);
                set_annotation(c, keys::BETA_STORAGE_PROVISIONER, &provisioner);
            });
        }
        let message = format!(
            "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by \
             the system administrator. If volume creation is delayed, please verify that the provisioner is \
             running and correctly registered."
        );
        wrote |= say(store, said, claim, "Normal", "ExternalProvisioning", &message);
        return wrote;
    }
    match store.get(&PV, "", &volume_name) {
        Ok(pv) if s(&pv, &["spec", "claimRef", "uid"]) == uid => bind(store, &pv, claim),
        _ => {
            if phase(claim) == "Lost" {
                return false;
            }
            let wrote = store.modify(&PVC, &ns, &name, Part::Status, |c| c["status"] = json!({ "phase": "Lost" }));
            let message = "Bound claim has lost its PersistentVolume. Data on the volume is lost!";
            say(store, said, claim, "Warning", "ClaimLost", message) || wrote
        }
    }
}

/// Binds `pv` and `claim` to each other, as far as they are not yet.
fn bind(store: &mut Store, pv: &Value, claim: &Value) -> bool {
    let pv_name = s(pv, &["metadata", "name"]).to_string();
    let ns = s(claim, &["metadata", "namespace"]).to_string();
    let name = s(claim, &["metadata", "name"]).to_string();
    let uid = s(claim, &["metadata", "uid"]).to_string();
    let mut wrote = false;
    if s(pv, &["spec", "claimRef", "uid"]).is_empty() {
        wrote |= store.modify(&PV, "", &pv_name, Part::Main, |v| {
            v["spec"]["claimRef"]["uid"] = json!(uid);
            set_annotation(v, BOUND_BY_CONTROLLER, "yes");
        });
    }
    wrote |= set_volume_phase(store, &pv_name, "Bound");
    wrote |= store.modify(&PVC, &ns, &name, Part::Main, |c| {
        c["spec"]["volumeName"] = json!(pv_name);
        set_annotation(c, BIND_COMPLETED, "yes");
        set_annotation(c, BOUND_BY_CONTROLLER, "yes");
    });
    let (modes, capacity) = (pv["spec"]["accessModes"].clone(), pv["spec"]["capacity"].clone());
    wrote |= store.modify(&PVC, &ns, &name, Part::Status, |c| {
        c["status"]["phase"] = json!("Bound");
        c["status"]["accessModes"] = modes;
        c["status"]["capacity"] = capacity;
    });
    wrote
}

fn set_volume_phase(store: &mut Store, pv_name: &str, to: &str) -> bool {
    let now = store.now();
    let Ok(pv) = store.get(&PV, "", pv_name) else { return false };
    if phase(&pv) == to {
        return false;
    }
    store.modify(&PV, "", pv_name, Part::Status, |v| {
        v["status"] = json!({ "phase": to, "lastPhaseTransitionTime": now });
    })
}

fn sync_volume(store: &mut Store, pv: &Value) -> bool {
    let name = s(pv, &["metadata", "name"]).to_string();
    let has_protection = finalizers(pv).iter().any(|f| f == PV_PROTECTION);
    if deleting(pv) {
        if has_protection && phase(pv) != "Bound" {
            return store.modify(&PV, "", &name, Part::Main, |v| set_finalizer(v, PV_PROTECTION, false));
        }
    } else if !has_protection && store.protection {
        return store.modify(&PV, "", &name, Part::Main, |v| set_finalizer(v, PV_PROTECTION, true));
    }
    if pv["spec"]["claimRef"].is_null() {
        return set_volume_phase(store, &name, "Available");
    }
    let (ns, claim_name) = (s(pv, &["spec", "claimRef", "namespace"]), s(pv, &["spec", "claimRef", "name"]));
    let ref_uid = s(pv, &["spec", "claimRef", "uid"]);
    let claim =
        store.get(&PVC, ns, claim_name).ok().filter(|c| ref_uid.is_empty() || s(c, &["metadata", "uid"]) == ref_uid);
    match claim {
        Some(c) if s(&c, &["spec", "volumeName"]) == name => set_volume_phase(store, &name, "Bound"),
        // Waiting for the claim's side (bound in the claim's sync), or pre-bound by name only.
        Some(_) => false,
        None if ref_uid.is_empty() => set_volume_phase(store, &name, "Available"),
        None if matches!(phase(pv), "Released" | "Failed") => false,
        None => set_volume_phase(store, &name, "Released"),
    }
}

/// Records a core/v1 event about `claim` once per claim and reason.
fn say(
    store: &mut Store,
    said: &mut HashSet<(String, &'static str)>,
    claim: &Value,
    type_: &str,
    reason: &'static str,
    message: &str,
) -> bool {
    let uid = s(claim, &["metadata", "uid"]).to_string();
    if !said.insert((uid.clone(), reason)) {
        return false;
    }
    let ns = s(claim, &["metadata", "namespace"]).to_string();
    let name = s(claim, &["metadata", "name"]);
    let now = store.now();
    let event = json!({
        "metadata": { "generateName": format!("{name}.") },
        "involvedObject": {
            "kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": name, "uid": uid,
            "resourceVersion": claim["metadata"]["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "source": { "component": COMPONENT },
        "reportingComponent": COMPONENT,
        "reportingInstance": "",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "eventTime": null,
    });
    store.create_quietly(&CORE_EVENT, &ns, event);
    true
}
