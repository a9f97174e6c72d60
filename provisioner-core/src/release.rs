//! Uninstalling a provisioner: with its engine stopped, remove everything
//! of ours from the cluster's claims and volumes, so nothing hangs
//! Terminating once the provisioner is gone, and say which backend volumes
//! that leaves to the operator.
//!
//! What the engine leaves in the cluster: the deletion finalizer on its
//! Delete-policy PVs, and its intent journals (ConfigMaps labelled
//! [`journal::LABEL`]) whose entries name volumes being provisioned;
//! versions before the journal also left an intent record on such claims (a
//! finalizer and two annotations). [`release`] removes all of them for the
//! given provisioner names and nothing of anybody else's (a PV is ours only
//! by `pv.kubernetes.io/provisioned-by`, a journal by its owner annotation).
//! Run it only once no replica of the provisioner runs: a running engine
//! would write them again.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), kube::Error> {
//! use provisioner_core::decision::Names;
//! let names = Names::new("example.com/dirs", Vec::<String>::new());
//! let report = provisioner_core::release::release(client, &names, false).await?;
//! print!("{report}");
//! # Ok(()) }
//! ```

use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim};
use kube::api::{ListParams, Patch};
use kube::{Api, Client, ResourceExt};

use crate::decision::{Names, has_intent, volume_is_ours};
use crate::{journal, keys, removals};

/// A claim whose intent record was removed: a backend volume may exist for
/// its PV name that no PersistentVolume records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasedClaim {
    /// `namespace/name`.
    pub claim: String,
    /// The PV name the record named (the backend volume's idempotency key).
    pub volume: String,
}

/// A volume of ours whose deletion finalizer was removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasedVolume {
    /// The PV name.
    pub name: String,
    /// Its phase.
    pub phase: String,
    /// Whether it was already being deleted (its backend will not be).
    pub deleting: bool,
}

/// What [`release`] did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Claims whose intent record was removed.
    pub claims: Vec<ReleasedClaim>,
    /// Volumes whose deletion finalizer was removed.
    pub volumes: Vec<ReleasedVolume>,
    /// Our volumes without the finalizer: untouched, listed because their
    /// backends are the operator's from now on too.
    pub other_volumes: Vec<String>,
    /// The intent journals of these names (`namespace/name`), deleted.
    pub journals: Vec<String>,
    /// Nothing was written.
    pub dry_run: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would remove" } else { "removed" };
        let journals = if self.dry_run { "would delete" } else { "deleted" };
        writeln!(f, "release: {journals} {} intent journal(s) {}", self.journals.len(), self.journals.join(", "))?;
        writeln!(
            f,
            "release: {} volume(s) recorded as being provisioned (journal entries and claim records)",
            self.claims.len()
        )?;
        for c in &self.claims {
            writeln!(
                f,
                "  claim {}: a backend volume for {} may exist that no PersistentVolume records; delete it by hand",
                c.claim, c.volume
            )?;
        }
        writeln!(f, "release: {verb} the deletion finalizer from {} volume(s)", self.volumes.len())?;
        for v in &self.volumes {
            let note = if v.deleting { "being deleted: its backend volume will NOT be deleted" } else { &v.phase };
            writeln!(f, "  volume {} ({note})", v.name)?;
        }
        let kept = self.volumes.iter().filter(|v| !v.deleting).map(|v| v.name.as_str());
        let all: Vec<&str> = kept.chain(self.other_volumes.iter().map(String::as_str)).collect();
        if !all.is_empty() {
            writeln!(
                f,
                "release: nothing deletes the backend volumes of these {} volume(s) any more; they are yours to \
                 delete or keep: {}",
                all.len(),
                all.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Sends a removal patch; `false` when the object is gone meanwhile.
async fn send<K>(api: &Api<K>, name: &str, ops: Vec<serde_json::Value>) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let patch = removals::patch(ops).map_err(kube::Error::SerdeError)?;
    match api.patch(name, &keys::patch_params(), &Patch::<()>::Json(patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the intent records of `names` from every claim and the deletion
/// finalizer from every PV provisioned under `names`, and deletes their
/// intent journals after listing the volumes they record that no PV does;
/// with `dry_run`, only reports what it would remove.
pub async fn release(client: Client, names: &Names, dry_run: bool) -> Result<Report, kube::Error> {
    let mut report = Report { dry_run, ..Report::default() };
    let pv_names: std::collections::BTreeSet<String> = Api::<PersistentVolume>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|v| v.name_any())
        .collect();
    let journals: Api<ConfigMap> = Api::all(client.clone());
    for cm in journals.list(&ListParams::default().labels(&format!("{}=true", journal::LABEL))).await? {
        let owner = cm.annotations().get(journal::OWNER_ANNOTATION).cloned().unwrap_or_default();
        if !owner.split(' ').next().is_some_and(|n| names.contains(n)) {
            continue;
        }
        let ns = cm.namespace().unwrap_or_default();
        let contents = journal::Contents::read(cm.data.as_ref().unwrap_or(&Default::default()));
        for (volume, value) in &contents.entries {
            if pv_names.contains(volume) {
                continue;
            }
            let claim = journal::decode_entry(value)
                .map(|r| format!("{}/{}", r.claim.namespace().unwrap_or_default(), r.claim.name_any()))
                .unwrap_or_default();
            report.claims.push(ReleasedClaim { claim, volume: volume.clone() });
        }
        if !dry_run {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            match api.delete(&cm.name_any(), &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        report.journals.push(format!("{ns}/{}", cm.name_any()));
    }
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    for claim in claims.list(&ListParams::default()).await? {
        if !has_intent(&claim, names) {
            continue;
        }
        let ns = claim.namespace().unwrap_or_default();
        let volume = claim.annotations().get(keys::INTENT_VOLUME).cloned().unwrap_or_default();
        if !dry_run {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            if !send(&api, &claim.name_any(), removals::intent_record(&claim, false)).await? {
                continue;
            }
        }
        report.claims.push(ReleasedClaim { claim: format!("{ns}/{}", claim.name_any()), volume });
    }
    let volumes: Api<PersistentVolume> = Api::all(client);
    for volume in volumes.list(&ListParams::default()).await? {
        if !volume_is_ours(&volume, names) {
            continue;
        }
        let name = volume.name_any();
        if !volume.finalizers().iter().any(|f| f == keys::VOLUME_FINALIZER) {
            report.other_volumes.push(name);
            continue;
        }
        if !dry_run && !send(&volumes, &name, removals::volume_finalizer(&volume)).await? {
            continue;
        }
        let phase = volume.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        report.volumes.push(ReleasedVolume { name, phase, deleting: volume.metadata.deletion_timestamp.is_some() });
    }
    Ok(report)
}
