//! Uninstalling a provisioner: with its engine stopped, remove everything
//! of ours from the cluster's claims and volumes, so nothing hangs
//! Terminating once the provisioner is gone, and say which backend volumes
//! that leaves to the operator.
//!
//! What the engine leaves on objects: the intent record on a claim whose
//! volume is being provisioned (a finalizer and two annotations, only until
//! its PV is saved), and the deletion finalizer on its Delete-policy PVs.
//! [`release`] removes both for the given provisioner names and nothing of
//! anybody else's (a PV is ours only by `pv.kubernetes.io/provisioned-by`).
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

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{ListParams, Patch};
use kube::{Api, Client, ResourceExt};

use crate::decision::{Names, has_intent, volume_is_ours};
use crate::{keys, removals};

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
    /// Nothing was written.
    pub dry_run: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would remove" } else { "removed" };
        writeln!(f, "release: {verb} the intent record from {} claim(s)", self.claims.len())?;
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
/// finalizer from every PV provisioned under `names`; with `dry_run`, only
/// reports what it would remove.
pub async fn release(client: Client, names: &Names, dry_run: bool) -> Result<Report, kube::Error> {
    let mut report = Report { dry_run, ..Report::default() };
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
