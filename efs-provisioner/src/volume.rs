//! The PersistentVolume the provisioner describes for a backend volume, and
//! what it records on it for deletion. Pure functions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, NFSVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolume, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use provisioner_core::ProvisionedVolume;

use crate::config::VolumeSource;

/// Annotation: the EFS file system id.
pub const FILE_SYSTEM_ID: &str = "efs.aws.skpr.io/file-system-id";
/// Annotation: the access point id (mode `accessPoint`).
pub const ACCESS_POINT_ID: &str = "efs.aws.skpr.io/access-point-id";
/// Annotation: the region.
pub const REGION: &str = "efs.aws.skpr.io/region";
/// Annotation: `filesystem` or `accessPoint`.
pub const MODE: &str = "efs.aws.skpr.io/mode";
/// The CSI driver's name.
pub const CSI_DRIVER: &str = "efs.csi.aws.com";
/// EFS is elastic: the capacity a PersistentVolume shows. `8E` (8×10^18
/// bytes), as in the seed's output: `8Ei` (2^63) overflows the API server's
/// int64 quantities and is stored as `9223372036854775807`.
pub const CAPACITY: &str = "8E";
/// AWS's recommended NFS mount options for EFS.
pub const NFS_MOUNT_OPTIONS: &[&str] =
    &["nfsvers=4.1", "rsize=1048576", "wsize=1048576", "hard", "timeo=600", "retrans=2", "noresvport"];

/// The label key of a node's availability zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The DNS suffix of the AWS partition a region belongs to.
///
/// ```
/// use efs_provisioner::volume::dns_suffix;
/// assert_eq!(dns_suffix("ap-southeast-2"), "amazonaws.com");
/// assert_eq!(dns_suffix("cn-north-1"), "amazonaws.com.cn");
/// ```
pub fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else if region.starts_with("us-isob-") {
        "sc2s.sgov.gov"
    } else if region.starts_with("us-iso-") {
        "c2s.ic.gov"
    } else {
        "amazonaws.com"
    }
}

/// The NFS server name of a file system (it resolves only in zones that
/// have one of its mount targets).
pub fn dns_name(file_system_id: &str, region: &str) -> String {
    format!("{file_system_id}.efs.{region}.{}", dns_suffix(region))
}

/// Node affinity to `zones` (none when empty: nothing known to restrict to).
fn zone_affinity(zones: &[String]) -> Option<VolumeNodeAffinity> {
    if zones.is_empty() {
        return None;
    }
    let mut values: Vec<String> = zones.to_vec();
    values.sort();
    values.dedup();
    Some(VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: ZONE_LABEL.into(),
                    operator: "In".into(),
                    values: Some(values),
                }]),
                match_fields: None,
            }],
        }),
    })
}

/// Pins `volume` to nodes in `zones` (node affinity on
/// `topology.kubernetes.io/zone`), whatever its source: for a One Zone file
/// system, whose only mount target is in one zone.
pub fn pin_to_zones(volume: &mut ProvisionedVolume, zones: &[String]) {
    volume.spec.node_affinity = zone_affinity(zones);
}

fn base(region: &str, mode: &str, fs: &str) -> ProvisionedVolume {
    let spec = PersistentVolumeSpec {
        capacity: Some(BTreeMap::from([("storage".to_string(), Quantity(CAPACITY.to_string()))])),
        ..Default::default()
    };
    ProvisionedVolume {
        spec,
        labels: BTreeMap::from([(FILE_SYSTEM_ID.to_string(), fs.to_string())]),
        annotations: BTreeMap::from([
            (FILE_SYSTEM_ID.to_string(), fs.to_string()),
            (REGION.to_string(), region.to_string()),
            (MODE.to_string(), mode.to_string()),
        ]),
    }
}

/// The volume for a file system of its own. `class_mount_options`: whether
/// the class sets mount options (then the engine copies those, and the
/// recommended ones are not added). `zones`: the zones of its mount targets;
/// an NFS volume is pinned to them, since the server name resolves nowhere else.
pub fn file_system_volume(
    file_system_id: &str,
    region: &str,
    source: VolumeSource,
    class_mount_options: bool,
    zones: &[String],
) -> ProvisionedVolume {
    let mut v = base(region, "filesystem", file_system_id);
    match source {
        VolumeSource::Nfs => {
            v.spec.nfs =
                Some(NFSVolumeSource { server: dns_name(file_system_id, region), path: "/".into(), read_only: None });
            v.spec.node_affinity = zone_affinity(zones);
            if !class_mount_options {
                v.spec.mount_options = Some(NFS_MOUNT_OPTIONS.iter().map(|s| s.to_string()).collect());
            }
        }
        VolumeSource::Csi => v.spec.csi = Some(csi(file_system_id.to_string())),
    }
    v
}

/// The volume for an access point on a shared file system (always CSI: only
/// the EFS mount helper enforces an access point).
pub fn access_point_volume(file_system_id: &str, access_point_id: &str, region: &str) -> ProvisionedVolume {
    let mut v = base(region, "accessPoint", file_system_id);
    v.annotations.insert(ACCESS_POINT_ID.to_string(), access_point_id.to_string());
    v.spec.csi = Some(csi(format!("{file_system_id}::{access_point_id}")));
    v
}

fn csi(handle: String) -> CSIPersistentVolumeSource {
    CSIPersistentVolumeSource { driver: CSI_DRIVER.into(), volume_handle: handle, ..Default::default() }
}

/// What deleting a saved volume needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SavedVolume {
    /// A file system of its own.
    FileSystem {
        /// Its id.
        file_system_id: String,
        /// Its region, when recorded.
        region: Option<String>,
    },
    /// An access point.
    AccessPoint {
        /// The shared file system.
        file_system_id: String,
        /// The access point.
        access_point_id: String,
        /// Its region, when recorded.
        region: Option<String>,
    },
}

/// Why a saved volume cannot be deleted safely.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SavedVolumeError {
    /// Nothing on the volume names a file system.
    #[error("volume {0} names no EFS file system (annotation efs.aws.skpr.io/file-system-id)")]
    NoFileSystem(String),
    /// The volume says it is an access point but names none: deleting its
    /// file system instead would cut off every other tenant.
    #[error(
        "volume {0} is an access-point volume (annotation efs.aws.skpr.io/mode) but names no access point; \
         its shared file system is never deleted for it"
    )]
    NoAccessPoint(String),
}

/// What deleting `pv` concerns, refusing volumes whose record is contradictory.
pub fn saved_volume_checked(pv: &PersistentVolume) -> Result<SavedVolume, SavedVolumeError> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    let ann = pv.metadata.annotations.clone().unwrap_or_default();
    let saved = saved_volume(pv).ok_or_else(|| SavedVolumeError::NoFileSystem(name.clone()))?;
    let says_access_point = ann.get(MODE).is_some_and(|m| m == "accessPoint")
        || pv.spec.as_ref().and_then(|s| s.csi.as_ref()).is_some_and(|c| c.volume_handle.contains("::"));
    match saved {
        SavedVolume::FileSystem { .. } if says_access_point => Err(SavedVolumeError::NoAccessPoint(name)),
        other => Ok(other),
    }
}

/// Reads what [`file_system_volume`] / [`access_point_volume`] recorded;
/// falls back to the volume source for volumes without the annotations.
pub fn saved_volume(pv: &PersistentVolume) -> Option<SavedVolume> {
    let ann = pv.metadata.annotations.clone().unwrap_or_default();
    let region = ann.get(REGION).cloned();
    let spec = pv.spec.as_ref();
    let from_source = || -> Option<(String, Option<String>)> {
        if let Some(csi) = spec.and_then(|s| s.csi.as_ref()) {
            let mut parts = csi.volume_handle.split("::");
            let fs = parts.next()?.to_string();
            return Some((fs, parts.next().map(str::to_string)));
        }
        let server = &spec?.nfs.as_ref()?.server;
        let fs = server.split('.').next()?;
        fs.starts_with("fs-").then(|| (fs.to_string(), None))
    };
    let (fs, ap) = match ann.get(FILE_SYSTEM_ID) {
        Some(fs) => (fs.clone(), ann.get(ACCESS_POINT_ID).cloned()),
        None => from_source()?,
    };
    if fs.is_empty() {
        return None;
    }
    Some(match ap {
        Some(ap) if !ap.is_empty() => SavedVolume::AccessPoint { file_system_id: fs, access_point_id: ap, region },
        _ => SavedVolume::FileSystem { file_system_id: fs, region },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn pv_of(v: ProvisionedVolume) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta { annotations: Some(v.annotations), ..Default::default() },
            spec: Some(v.spec),
            ..Default::default()
        }
    }

    #[test]
    fn nfs_volume_has_the_regional_server_root_path_8e_and_recommended_options() {
        let v = file_system_volume("fs-123", "ap-southeast-2", VolumeSource::Nfs, false, &[]);
        let nfs = v.spec.nfs.clone().unwrap();
        assert_eq!(nfs.server, "fs-123.efs.ap-southeast-2.amazonaws.com");
        assert_eq!(nfs.path, "/");
        assert_eq!(v.spec.capacity.as_ref().unwrap()["storage"].0, "8E");
        assert_eq!(
            v.spec.mount_options.clone().unwrap().join(","),
            "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
        );
        assert_eq!(v.spec.access_modes, None, "the engine copies the claim's");
        assert_eq!(
            saved_volume(&pv_of(v)),
            Some(SavedVolume::FileSystem { file_system_id: "fs-123".into(), region: Some("ap-southeast-2".into()) })
        );
    }

    #[test]
    fn a_class_with_mount_options_gets_only_its_own() {
        let v = file_system_volume("fs-123", "us-east-1", VolumeSource::Nfs, true, &[]);
        assert_eq!(v.spec.mount_options, None);
    }

    #[test]
    fn csi_volumes_carry_the_handle_and_round_trip() {
        let v = file_system_volume("fs-1", "us-east-1", VolumeSource::Csi, false, &[]);
        assert_eq!(v.spec.csi.as_ref().unwrap().volume_handle, "fs-1");
        assert_eq!(v.spec.csi.as_ref().unwrap().driver, "efs.csi.aws.com");
        let v = access_point_volume("fs-1", "fsap-2", "us-east-1");
        assert_eq!(v.spec.csi.as_ref().unwrap().volume_handle, "fs-1::fsap-2");
        let mut pv = pv_of(v);
        pv.metadata.annotations = None;
        assert_eq!(
            saved_volume(&pv),
            Some(SavedVolume::AccessPoint {
                file_system_id: "fs-1".into(),
                access_point_id: "fsap-2".into(),
                region: None
            })
        );
    }

    #[test]
    fn the_server_name_has_the_partition_suffix() {
        assert_eq!(dns_name("fs-1", "cn-northwest-1"), "fs-1.efs.cn-northwest-1.amazonaws.com.cn");
        assert_eq!(dns_name("fs-1", "us-gov-west-1"), "fs-1.efs.us-gov-west-1.amazonaws.com");
        assert_eq!(dns_name("fs-1", "us-iso-east-1"), "fs-1.efs.us-iso-east-1.c2s.ic.gov");
        assert_eq!(dns_name("fs-1", "us-isob-east-1"), "fs-1.efs.us-isob-east-1.sc2s.sgov.gov");
    }

    #[test]
    fn an_access_point_volume_without_its_access_point_is_refused_not_read_as_a_file_system() {
        let mut pv = pv_of(access_point_volume("fs-1", "fsap-2", "us-east-1"));
        pv.metadata.name = Some("pv-1".into());
        pv.metadata.annotations.as_mut().unwrap().remove(ACCESS_POINT_ID);
        assert_eq!(saved_volume_checked(&pv), Err(SavedVolumeError::NoAccessPoint("pv-1".into())));
    }
}
