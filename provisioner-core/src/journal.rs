//! **Unstable**: public so that operators' tools (and `release`) can read
//! it, but not covered by semver before 1.0.
//!
//! The intent journal: one ConfigMap per provisioner name (or per instance,
//! for node-local provisioners), in which the engine records, before it
//! touches the backend, every volume whose backend may exist without a
//! PersistentVolume. This module is its pure part: the object's name, how
//! an entry is written and read, how a commit's contents are computed from
//! what is on the server and what the engine holds, and the size budget.
//! The engine's `journal` task does the I/O.
//!
//! # Layout
//! `data` holds one key per entry, the PV name (the backend's idempotency
//! key), whose value is the claim as it was when the entry was written
//! (name, namespace, uid, labels, annotations and spec: what
//! `provision()` needs to finish the volume after the claim is gone) and
//! its class's name. The classes the entries name are kept once each under
//! [`CLASSES_KEY`], so that a volume can be finished even if its class was
//! deleted too. A key this version cannot read is kept as it is, never
//! dropped: an operator's note, or an entry of a newer version.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::keys;

/// The key holding the classes the entries name (a PV name cannot start
/// with `_`, so it never collides with an entry).
pub const CLASSES_KEY: &str = "_classes";
/// The key holding the layout's version.
pub const FORMAT_KEY: &str = "_format";
/// The layout written by this version.
pub const FORMAT: &str = "1";
/// On a journal: which engine it belongs to (the provisioner name, then the
/// instance if any, after a space). An engine refuses a journal of another.
pub const OWNER_ANNOTATION: &str = "provisioner.rs/journal-of";
/// The label every journal carries, for `kubectl get configmap -l`.
pub const LABEL: &str = "provisioner.rs/journal";

/// The most a ConfigMap may hold (the API server refuses more), less room
/// for metadata: past it, new provisions wait until entries leave.
pub const MAX_BYTES: usize = 1024 * 1024 - 64 * 1024;

/// The journal's object name for provisioner name `primary` and, for an
/// engine that runs one instance per node or shard without a leader, the
/// instance (each instance keeps a journal of its own). The readable part
/// is followed by a hash of the exact inputs, so names that read alike
/// (`a/b`, `a_b`, `A/B`) never share a journal.
///
/// ```
/// use provisioner_core::journal::name_for;
/// let efs = name_for("efs.aws.skpr.io/generalPurpose", None);
/// assert!(efs.starts_with("provisioner-journal-efs.aws.skpr.io-generalpurpose-"));
/// assert_ne!(name_for("example.com/dir", Some("node-1")), name_for("example.com/dir", Some("node-2")));
/// // Always a valid object name, however long or odd the inputs.
/// let long = name_for(&"x/".repeat(200), Some("Node_A"));
/// assert!(long.len() <= 253 && long.starts_with("provisioner-journal-"));
/// ```
pub fn name_for(primary: &str, instance: Option<&str>) -> String {
    let raw = match instance {
        Some(i) => format!("{primary}\n{i}"),
        None => primary.to_string(),
    };
    let readable: String = format!("provisioner-journal-{}", raw.replace('\n', "-"))
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .take(253 - 9)
        .collect();
    format!("{}-{:08x}", readable.trim_end_matches(['-', '.']), fnv(raw.as_bytes()) as u32)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// One entry: a volume whose backend may exist, and the claim it is for.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// The claim as it was when the entry was written.
    pub claim: Arc<PersistentVolumeClaim>,
    /// The name of its class.
    pub class: String,
}

#[derive(Serialize, Deserialize)]
struct EntryJson {
    claim: PersistentVolumeClaim,
    class: String,
}

/// The claim as an entry keeps it: what `provision()` may read, nothing
/// the API server adds.
pub fn trimmed_claim(claim: &PersistentVolumeClaim) -> PersistentVolumeClaim {
    let m = &claim.metadata;
    let mut annotations = m.annotations.clone();
    if let Some(a) = annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            labels: m.labels.clone(),
            annotations,
            ..Default::default()
        },
        spec: claim.spec.clone(),
        status: None,
    }
}

/// The class as the journal keeps it.
pub fn trimmed_class(class: &StorageClass) -> StorageClass {
    let mut c = class.clone();
    c.metadata = ObjectMeta {
        name: class.metadata.name.clone(),
        labels: class.metadata.labels.clone(),
        annotations: class.metadata.annotations.clone().map(|mut a| {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
            a
        }),
        ..Default::default()
    };
    c
}

/// Writes an entry's value.
///
/// A tenant may put up to 256 KiB of labels and annotations on a claim; a few
/// such claims would fill the journal and make every provision wait. An
/// entry larger than [`MAX_ENTRY_BYTES`] keeps only the annotations the
/// engine itself reads (the provisioner, the selected node, the class) and
/// no labels: enough to finish the volume and clean it up if the claim is
/// gone, which is all the record is read for.
///
/// ```
/// use provisioner_core::journal::{encode_entry, decode_entry, MAX_ENTRY_BYTES};
/// use provisioner_core::k8s_openapi::api::core::v1::PersistentVolumeClaim;
/// let mut c = PersistentVolumeClaim::default();
/// c.metadata.uid = Some("u1".into());
/// c.metadata.annotations = Some([
///     ("huge".to_string(), "x".repeat(200_000)),
///     ("volume.kubernetes.io/selected-node".to_string(), "node-a".to_string()),
/// ].into());
/// let entry = encode_entry(&c, "fast");
/// assert!(entry.len() <= MAX_ENTRY_BYTES);
/// let kept = decode_entry(&entry).unwrap().claim.metadata.annotations.clone().unwrap();
/// assert_eq!(kept.get("volume.kubernetes.io/selected-node").map(String::as_str), Some("node-a"));
/// assert!(!kept.contains_key("huge"));
/// ```
pub fn encode_entry(claim: &PersistentVolumeClaim, class: &str) -> String {
    let mut entry = EntryJson { claim: trimmed_claim(claim), class: class.to_string() };
    let full = serde_json::to_string(&entry).unwrap_or_default();
    if full.len() <= MAX_ENTRY_BYTES {
        return full;
    }
    const READ_BY_THE_ENGINE: &[&str] = &[
        keys::STORAGE_PROVISIONER,
        keys::BETA_STORAGE_PROVISIONER,
        keys::SELECTED_NODE,
        keys::ALPHA_SELECTED_NODE,
        keys::BETA_STORAGE_CLASS,
    ];
    let meta = &mut entry.claim.metadata;
    meta.labels = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| READ_BY_THE_ENGINE.contains(&k.as_str()));
    }
    serde_json::to_string(&entry).unwrap_or_default()
}

/// The largest entry kept whole (see [`encode_entry`]).
pub const MAX_ENTRY_BYTES: usize = 8 * 1024;

/// Reads an entry's value.
pub fn decode_entry(value: &str) -> Option<Recorded> {
    let e: EntryJson = serde_json::from_str(value).ok()?;
    e.claim.metadata.uid.as_ref()?;
    Some(Recorded { claim: Arc::new(e.claim), class: e.class })
}

/// The journal's contents, read: the entries, the classes, and what could
/// not be read (kept as it is).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    /// Entries by PV name, as their values are written.
    pub entries: BTreeMap<String, String>,
    /// Classes by name, as written.
    pub classes: BTreeMap<String, String>,
    /// Keys that are neither an entry nor a class this version can read.
    pub unreadable: BTreeMap<String, String>,
}

impl Contents {
    /// Reads a ConfigMap's `data`.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use provisioner_core::journal::Contents;
    /// let data = BTreeMap::from([("note".to_string(), "hand-written".to_string())]);
    /// let c = Contents::read(&data);
    /// assert!(c.entries.is_empty());
    /// // What cannot be read is kept, and written back unchanged.
    /// assert_eq!(c.to_data().get("note").map(String::as_str), Some("hand-written"));
    /// ```
    pub fn read(data: &BTreeMap<String, String>) -> Contents {
        let mut c = Contents::default();
        for (k, v) in data {
            if k == FORMAT_KEY {
                continue;
            }
            if k == CLASSES_KEY {
                match serde_json::from_str::<BTreeMap<String, serde_json::Value>>(v) {
                    Ok(classes) => {
                        c.classes.extend(classes.into_iter().map(|(n, v)| (n, v.to_string())));
                    }
                    Err(_) => {
                        c.unreadable.insert(k.clone(), v.clone());
                    }
                }
            } else if decode_entry(v).is_some() {
                c.entries.insert(k.clone(), v.clone());
            } else {
                c.unreadable.insert(k.clone(), v.clone());
            }
        }
        c
    }

    /// The ConfigMap `data` for these contents: classes no entry names are left out.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let mut data = self.unreadable.clone();
        // Only the class names are needed here: the claims are skipped, not built.
        #[derive(Deserialize)]
        struct ClassOf {
            class: String,
        }
        let named: BTreeSet<String> =
            self.entries.values().filter_map(|v| serde_json::from_str::<ClassOf>(v).ok()).map(|c| c.class).collect();
        let classes: BTreeMap<&String, serde_json::Value> = self
            .classes
            .iter()
            .filter(|(n, _)| named.contains(*n))
            .filter_map(|(n, v)| Some((n, serde_json::from_str(v).ok()?)))
            .collect();
        if !classes.is_empty() {
            data.insert(CLASSES_KEY.to_string(), serde_json::to_string(&classes).unwrap_or_default());
        }
        data.extend(self.entries.iter().map(|(k, v)| (k.clone(), v.clone())));
        data.insert(FORMAT_KEY.to_string(), FORMAT.to_string());
        data
    }

    /// The class an entry names, as recorded.
    pub fn class(&self, name: &str) -> Option<StorageClass> {
        serde_json::from_str(self.classes.get(name)?).ok()
    }
}

/// The size the API server counts for `data` (keys and values).
pub fn size(data: &BTreeMap<String, String>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// What one commit writes: the server's contents (`remote`, or none if the
/// object is missing) with this engine's changes applied. `live` are the
/// entries the engine holds (written before or now: they are written again
/// if a hand edit or a deletion lost them), `removed` the ones it has
/// finished with; `classes` the class snapshots for the entries it adds.
/// Entries of others (another replica's, from before a restart) are kept.
///
/// ```
/// use std::collections::{BTreeMap, BTreeSet};
/// use provisioner_core::journal::{commit_contents, Contents};
/// let remote = Contents { entries: BTreeMap::from([("pvc-old".into(), "x".into()), ("pvc-done".into(), "y".into())]), ..Default::default() };
/// let live = BTreeMap::from([("pvc-new".to_string(), "z".to_string())]);
/// let removed = BTreeSet::from(["pvc-done".to_string()]);
/// let out = commit_contents(Some(&remote), &live, &removed, &BTreeMap::new());
/// assert_eq!(out.entries.keys().collect::<Vec<_>>(), ["pvc-new", "pvc-old"]);
/// ```
pub fn commit_contents(
    remote: Option<&Contents>,
    live: &BTreeMap<String, String>,
    removed: &BTreeSet<String>,
    classes: &BTreeMap<String, String>,
) -> Contents {
    let mut out = remote.cloned().unwrap_or_default();
    out.entries.retain(|k, _| !removed.contains(k) || live.contains_key(k));
    out.entries.extend(live.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.classes.extend(classes.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(uid: &str) -> PersistentVolumeClaim {
        let mut c = PersistentVolumeClaim::default();
        c.metadata.name = Some("data".into());
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some(uid.into());
        c.metadata.resource_version = Some("12".into());
        c.metadata.annotations = Some(BTreeMap::from([
            ("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{big}".to_string()),
            ("keep".to_string(), "me".to_string()),
        ]));
        c
    }

    #[test]
    fn an_entry_keeps_what_provision_reads_and_drops_what_the_server_adds() {
        let v = encode_entry(&claim("u1"), "fast");
        let r = decode_entry(&v).expect("readable");
        assert_eq!(r.class, "fast");
        assert_eq!(r.claim.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(r.claim.metadata.resource_version, None);
        let a = r.claim.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(a.get("keep").map(String::as_str), Some("me"));
        assert!(!a.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    }

    #[test]
    fn an_entry_without_a_claim_uid_is_not_an_entry() {
        let mut c = claim("u1");
        c.metadata.uid = None;
        assert!(decode_entry(&encode_entry(&c, "fast")).is_none());
        assert!(decode_entry("garbage").is_none());
    }

    #[test]
    fn unreadable_keys_survive_a_round_trip_and_unnamed_classes_go() {
        let mut data = BTreeMap::new();
        data.insert("pvc-1".to_string(), encode_entry(&claim("u1"), "fast"));
        data.insert("pvc-2".to_string(), "not json".to_string());
        data.insert(CLASSES_KEY.to_string(), r#"{"fast":{"provisioner":"x"},"gone":{"provisioner":"y"}}"#.to_string());
        let c = Contents::read(&data);
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.unreadable.get("pvc-2").map(String::as_str), Some("not json"));
        let out = c.to_data();
        assert_eq!(out.get("pvc-2").map(String::as_str), Some("not json"));
        assert!(out[CLASSES_KEY].contains("fast") && !out[CLASSES_KEY].contains("gone"));
        assert_eq!(out[FORMAT_KEY], FORMAT);
    }

    #[test]
    fn a_commit_puts_back_live_entries_a_hand_edit_removed_and_keeps_others_entries() {
        let live = BTreeMap::from([("pvc-mine".to_string(), "m".to_string())]);
        // The journal was emptied by hand except for another replica's entry.
        let remote = Contents { entries: BTreeMap::from([("pvc-theirs".into(), "t".into())]), ..Default::default() };
        let out = commit_contents(Some(&remote), &live, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!(out.entries.keys().cloned().collect::<Vec<_>>(), ["pvc-mine", "pvc-theirs"]);
        // Deleted by hand: written again from what the engine holds.
        let out = commit_contents(None, &live, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!(out.entries.keys().cloned().collect::<Vec<_>>(), ["pvc-mine"]);
    }

    #[test]
    fn a_removed_entry_recorded_again_in_the_same_commit_stays() {
        let live = BTreeMap::from([("pvc-1".to_string(), "again".to_string())]);
        let remote = Contents { entries: BTreeMap::from([("pvc-1".into(), "first".into())]), ..Default::default() };
        let out = commit_contents(Some(&remote), &live, &BTreeSet::from(["pvc-1".to_string()]), &BTreeMap::new());
        assert_eq!(out.entries.get("pvc-1").map(String::as_str), Some("again"));
    }

    #[test]
    fn journal_names_are_valid_and_distinct_per_instance() {
        let a = name_for("example.com/dir", Some("node-a"));
        let b = name_for("example.com/dir", Some("node-b"));
        assert_ne!(a, b);
        for n in [a, b, name_for("Example.COM/X_y", None), name_for(&"a".repeat(300), Some(&"b".repeat(300)))] {
            assert!(n.len() <= 253, "{n}");
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'), "{n}");
            assert!(!n.ends_with('-') && !n.ends_with('.'), "{n}");
        }
        // Long names that differ only at the end stay distinct.
        assert_ne!(name_for(&"a".repeat(300), Some("1")), name_for(&"a".repeat(300), Some("2")));
    }
}
