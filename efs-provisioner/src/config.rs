//! What to create for a claim: the process-wide defaults (the seed's
//! environment variables) merged with the class's `parameters`. Pure
//! functions; a bad parameter is a [`ConfigError`] the provisioner reports
//! as infeasible.

use std::collections::BTreeMap;

use crate::api::{LifecycleRule, PerformanceMode, Throughput};

/// Process-wide defaults for every class.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    /// Performance mode for provisioner names that do not imply one (`EFS_PERFORMANCE`).
    pub performance_mode: PerformanceMode,
    /// The region (`AWS_REGION`), used in the NFS server name.
    pub region: String,
    /// Security groups of mount targets (`AWS_SECURITY_GROUP`).
    pub security_groups: Vec<String>,
    /// Subnets to put a mount target in (`AWS_SUBNETS`).
    pub subnets: Vec<String>,
    /// Tag value naming this cluster, to find orphans.
    pub cluster_id: String,
    /// Tags of the operator's own (`--tags`) on everything created, under
    /// the provisioner's; a class's `tags` add to them.
    pub tags: BTreeMap<String, String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            performance_mode: PerformanceMode::GeneralPurpose,
            region: "us-east-1".into(),
            security_groups: Vec::new(),
            subnets: Vec::new(),
            cluster_id: "kubernetes".into(),
            tags: BTreeMap::new(),
        }
    }
}

/// A bad class parameter (or combination).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Which volume source the PersistentVolume gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeSource {
    /// In-tree NFS (the seed's way; needs nothing on the nodes but an NFS client).
    Nfs,
    /// The `efs.csi.aws.com` CSI driver.
    Csi,
}

/// A file system per claim.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSystemClass {
    /// Performance mode.
    pub performance_mode: PerformanceMode,
    /// Throughput mode.
    pub throughput: Throughput,
    /// Encrypted at rest (default true).
    pub encrypted: bool,
    /// KMS key for encryption.
    pub kms_key_id: Option<String>,
    /// Subnets, one mount target each.
    pub subnets: Vec<String>,
    /// Security groups of the mount targets.
    pub security_groups: Vec<String>,
    /// Lifecycle rules (none: no `PutLifecycleConfiguration` call).
    pub lifecycle: Vec<LifecycleRule>,
    /// NFS or CSI.
    pub source: VolumeSource,
    /// AWS Backup's automatic backups (`backup`; `None`: EFS's default).
    pub backup: Option<bool>,
    /// One Zone: the availability zone (`availabilityZoneName`); the file
    /// system gets one mount target, in the class's subnet of that zone.
    pub availability_zone: Option<String>,
    /// Tags of the operator's: the flag's, then the class's `tags`.
    pub tags: BTreeMap<String, String>,
}

/// POSIX identity of an access point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Fixed uid and gid.
    Fixed {
        /// uid.
        uid: i64,
        /// gid.
        gid: i64,
    },
    /// A gid allocated from `start..=end` that no other access point of the file system has;
    /// uid is the given one, or the gid.
    Range {
        /// First gid.
        start: i64,
        /// Last gid.
        end: i64,
        /// A fixed uid, if given.
        uid: Option<i64>,
    },
}

/// An access point per claim on a shared file system.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessPointClass {
    /// The shared file system.
    pub file_system_id: String,
    /// POSIX identity.
    pub identity: Identity,
    /// Permissions of the root directory it creates, octal.
    pub directory_perms: String,
    /// The base path under which each claim gets a directory.
    pub base_path: String,
    /// The per-claim sub-path, with `${.PVC.namespace}`, `${.PVC.name}`, `${.PV.name}`.
    pub sub_path_pattern: String,
    /// Whether a directory is unique to its access point even when the
    /// pattern does not name the PV (default true): a re-created claim of
    /// the same name must not land on the old one's data.
    pub ensure_unique_directory: bool,
    /// Tags of the operator's: the flag's, then the class's `tags`.
    pub tags: BTreeMap<String, String>,
}

/// What a class asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum ClassConfig {
    /// A file system per claim.
    FileSystem(FileSystemClass),
    /// An access point per claim.
    AccessPoint(AccessPointClass),
}

/// The performance mode a provisioner name implies, if any (`.../maxIO`, `.../generalPurpose`).
pub fn implied_performance_mode(provisioner_name: &str) -> Option<PerformanceMode> {
    match provisioner_name.rsplit('/').next() {
        Some("maxIO") => Some(PerformanceMode::MaxIo),
        Some("generalPurpose") => Some(PerformanceMode::GeneralPurpose),
        _ => None,
    }
}

/// Parses a performance mode.
pub fn parse_performance_mode(s: &str) -> Result<PerformanceMode, ConfigError> {
    match s {
        "generalPurpose" => Ok(PerformanceMode::GeneralPurpose),
        "maxIO" => Ok(PerformanceMode::MaxIo),
        _ => Err(bad(format!("performanceMode {s:?} is not one of generalPurpose, maxIO"))),
    }
}

/// Splits a comma-separated list, dropping blanks.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect()
}

const KNOWN: &[&str] = &[
    "mode",
    "provisioningMode",
    "performanceMode",
    "throughputMode",
    "provisionedThroughputInMibps",
    "encrypted",
    "kmsKeyId",
    "subnets",
    "securityGroups",
    "transitionToIA",
    "transitionToArchive",
    "transitionToPrimaryStorageClass",
    "volumeSource",
    "fileSystemId",
    "uid",
    "gid",
    "gidRangeStart",
    "gidRangeEnd",
    "directoryPerms",
    "basePath",
    "subPathPattern",
    "ensureUniqueDirectory",
    "deleteAccessPointRootDir",
    "backup",
    "availabilityZoneName",
    "tags",
];

/// Tag keys the provisioner sets itself (and the prefixes it owns): an
/// operator's tags may not use them, so they can never override the tags
/// deletes rely on.
pub const OWN_TAG_KEYS: &[&str] = &["Name"];
/// Tag key prefixes the provisioner owns (see [`OWN_TAG_KEYS`]).
pub const OWN_TAG_PREFIXES: &[&str] = &["efs.aws.skpr.io/", "kubernetes.io/created-for/"];
/// How many tags of the operator's a resource may carry: EFS allows 50 per
/// resource, and the provisioner sets up to 7 of its own.
pub const MAX_OWN_TAGS: usize = 43;

fn tag_characters_ok(s: &str) -> bool {
    s.chars().all(|c| c.is_alphanumeric() || " _.:/=+-@".contains(c))
}

/// Parses `key=value,key=value` (split at each comma, then at the first
/// `=`; commas are not allowed in EFS tags) and checks each tag against
/// EFS's rules: key 1 to 128 characters, value up to 256, letters, digits,
/// spaces and `_.:/=+-@` only, no `aws:` prefix, and none of the keys the
/// provisioner sets itself ([`OWN_TAG_KEYS`], [`OWN_TAG_PREFIXES`]); at
/// most [`MAX_OWN_TAGS`].
///
/// ```
/// use efs_provisioner::config::parse_tags;
/// let tags = parse_tags("team=storage, cost-center=42").unwrap();
/// assert_eq!(tags["team"], "storage");
/// assert!(parse_tags("efs.aws.skpr.io/cluster=other").is_err());
/// ```
pub fn parse_tags(s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut tags = BTreeMap::new();
    for item in split_list(s) {
        let (key, value) = item.split_once('=').ok_or_else(|| bad(format!("tag {item:?} is not key=value")))?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || key.chars().count() > 128 || !tag_characters_ok(key) {
            return Err(bad(format!(
                "tag key {key:?} is not valid in EFS (1 to 128 letters, digits, spaces, _.:/=+-@)"
            )));
        }
        if value.chars().count() > 256 || !tag_characters_ok(value) {
            return Err(bad(format!(
                "tag value {value:?} of {key} is not valid in EFS (up to 256 letters, digits, spaces, _.:/=+-@)"
            )));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(bad(format!("tag key {key:?}: the aws: prefix is reserved for AWS")));
        }
        if OWN_TAG_KEYS.contains(&key) || OWN_TAG_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return Err(bad(format!(
                "tag key {key:?} is one the provisioner sets itself (Name, {}*)",
                OWN_TAG_PREFIXES.join("*, ")
            )));
        }
        if tags.insert(key.to_string(), value.to_string()).is_some() {
            return Err(bad(format!("tag key {key:?} is given twice")));
        }
    }
    if tags.len() > MAX_OWN_TAGS {
        return Err(bad(format!(
            "{} tags: EFS allows 50 per resource, and the provisioner sets 7 of its own; at most {MAX_OWN_TAGS}",
            tags.len()
        )));
    }
    Ok(tags)
}

/// The operator's tags for a class: the flag's, with the class's `tags` over them.
fn class_tags(defaults: &Defaults, params: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut tags = defaults.tags.clone();
    if let Some(v) = params.get("tags") {
        tags.extend(parse_tags(v).map_err(|e| bad(format!("tags: {e}")))?);
    }
    if tags.len() > MAX_OWN_TAGS {
        return Err(bad(format!(
            "tags: {} with the flag's (--tags); EFS allows 50 per resource, and the provisioner sets 7 of its own",
            tags.len()
        )));
    }
    Ok(tags)
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(format!("{key} {v:?} is not true or false"))),
    }
}

fn parse_id(key: &str, v: &str) -> Result<i64, ConfigError> {
    v.parse::<i64>()
        .ok()
        .filter(|n| (0..=4_294_967_295).contains(n))
        .ok_or_else(|| bad(format!("{key} {v:?} is not a POSIX id (0 to 4294967295)")))
}

fn lifecycle_value(key: &str, v: &str, allowed: &[&str]) -> Result<String, ConfigError> {
    if allowed.contains(&v) {
        Ok(v.to_string())
    } else {
        Err(bad(format!("{key} {v:?} is not one of {}", allowed.join(", "))))
    }
}

const DAYS: &[&str] = &[
    "AFTER_1_DAY",
    "AFTER_7_DAYS",
    "AFTER_14_DAYS",
    "AFTER_30_DAYS",
    "AFTER_60_DAYS",
    "AFTER_90_DAYS",
    "AFTER_180_DAYS",
    "AFTER_270_DAYS",
    "AFTER_365_DAYS",
];

/// Merges `defaults`, the provisioner name's implied performance mode, and
/// the class's `parameters` (which win).
pub fn parse_class(
    defaults: &Defaults,
    provisioner_name: &str,
    params: &BTreeMap<String, String>,
) -> Result<ClassConfig, ConfigError> {
    let unknown: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|k| !KNOWN.contains(k) && !k.starts_with("csi.storage.k8s.io/"))
        .collect();
    if !unknown.is_empty() {
        return Err(bad(format!(
            "unknown StorageClass parameter(s) {}; known: {}",
            unknown.join(", "),
            KNOWN.join(", ")
        )));
    }
    let get = |k: &str| params.get(k).map(String::as_str);
    let mode = match (get("mode"), get("provisioningMode")) {
        (Some("filesystem") | None, None | Some("efs-fs")) => "filesystem",
        (Some("accessPoint") | None, Some("efs-ap")) | (Some("accessPoint"), None) => "accessPoint",
        (m, p) => {
            return Err(bad(format!(
                "mode {m:?} / provisioningMode {p:?}: use mode filesystem (default) or accessPoint"
            )));
        }
    };
    let source = match get("volumeSource") {
        None => None,
        Some("nfs") => Some(VolumeSource::Nfs),
        Some("csi") => Some(VolumeSource::Csi),
        Some(v) => return Err(bad(format!("volumeSource {v:?} is not nfs or csi"))),
    };
    let tags = class_tags(defaults, params)?;
    if mode == "accessPoint" {
        return parse_access_point(params, source, tags).map(ClassConfig::AccessPoint);
    }
    for k in
        ["fileSystemId", "uid", "gid", "gidRangeStart", "gidRangeEnd", "directoryPerms", "basePath", "subPathPattern"]
    {
        if params.contains_key(k) {
            return Err(bad(format!("{k} applies only to mode accessPoint")));
        }
    }
    let performance_mode = match get("performanceMode") {
        Some(v) => parse_performance_mode(v)?,
        None => implied_performance_mode(provisioner_name).unwrap_or(defaults.performance_mode),
    };
    let mibps = get("provisionedThroughputInMibps");
    let throughput = match get("throughputMode") {
        None | Some("bursting") => Throughput::Bursting,
        Some("elastic") => Throughput::Elastic,
        Some("provisioned") => {
            let v = mibps.ok_or_else(|| bad("throughputMode provisioned needs provisionedThroughputInMibps"))?;
            let n: f64 = v
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite() && *n >= 1.0)
                .ok_or_else(|| bad(format!("provisionedThroughputInMibps {v:?} is not a number >= 1")))?;
            Throughput::Provisioned(n)
        }
        Some(v) => return Err(bad(format!("throughputMode {v:?} is not one of bursting, provisioned, elastic"))),
    };
    if mibps.is_some() && !matches!(throughput, Throughput::Provisioned(_)) {
        return Err(bad("provisionedThroughputInMibps needs throughputMode provisioned"));
    }
    if performance_mode == PerformanceMode::MaxIo && throughput == Throughput::Elastic {
        return Err(bad("throughputMode elastic is not available with performanceMode maxIO"));
    }
    let encrypted = get("encrypted").map(|v| parse_bool("encrypted", v)).transpose()?.unwrap_or(true);
    let kms_key_id = get("kmsKeyId").filter(|v| !v.is_empty()).map(str::to_string);
    if kms_key_id.is_some() && !encrypted {
        return Err(bad("kmsKeyId needs encrypted true"));
    }
    let subnets = get("subnets").map(split_list).unwrap_or_else(|| defaults.subnets.clone());
    if subnets.is_empty() {
        return Err(bad("no subnets for mount targets: set AWS_SUBNETS (--subnets) or the class parameter subnets"));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = subnets.iter().find(|s| !seen.insert(*s)) {
        return Err(bad(format!("subnet {dup} is listed twice")));
    }
    let security_groups = get("securityGroups").map(split_list).unwrap_or_else(|| defaults.security_groups.clone());
    if security_groups.is_empty() {
        return Err(bad("no security groups for mount targets: set AWS_SECURITY_GROUP (--security-group) or the \
             class parameter securityGroups (without one, EFS uses the VPC's default group and mounts hang)"));
    }
    if security_groups.len() > 5 {
        return Err(bad("a mount target takes at most 5 security groups"));
    }
    let mut lifecycle = Vec::new();
    if let Some(v) = get("transitionToIA") {
        lifecycle.push(LifecycleRule::TransitionToIa(lifecycle_value("transitionToIA", v, DAYS)?));
    }
    if let Some(v) = get("transitionToArchive") {
        lifecycle.push(LifecycleRule::TransitionToArchive(lifecycle_value("transitionToArchive", v, DAYS)?));
    }
    if let Some(v) = get("transitionToPrimaryStorageClass") {
        lifecycle.push(LifecycleRule::TransitionToPrimaryStorageClass(lifecycle_value(
            "transitionToPrimaryStorageClass",
            v,
            &["AFTER_1_ACCESS"],
        )?));
    }
    check_lifecycle(&lifecycle, performance_mode, throughput)?;
    let backup = get("backup").map(|v| parse_bool("backup", v)).transpose()?;
    let availability_zone = match get("availabilityZoneName").map(str::trim) {
        None => None,
        Some("") => return Err(bad("availabilityZoneName is empty: name a zone (e.g. us-east-1a) or leave it out")),
        Some(zone) => Some(zone.to_string()),
    };
    if let Some(zone) = &availability_zone
        && performance_mode == PerformanceMode::MaxIo
    {
        return Err(bad(format!(
            "availabilityZoneName {zone} (a One Zone file system) is not available with performanceMode maxIO"
        )));
    }
    Ok(ClassConfig::FileSystem(FileSystemClass {
        performance_mode,
        throughput,
        encrypted,
        kms_key_id,
        subnets,
        security_groups,
        lifecycle,
        source: source.unwrap_or(VolumeSource::Nfs),
        backup,
        availability_zone,
        tags,
    }))
}

fn days(v: &str) -> u32 {
    v.trim_start_matches("AFTER_").split('_').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The lifecycle rules EFS accepts (`PutLifecycleConfiguration` rejects the
/// others, after the file system exists): `transitionToArchive` needs
/// throughput mode elastic and performance mode generalPurpose, and must
/// come later than `transitionToIA`.
pub fn check_lifecycle(
    rules: &[LifecycleRule],
    performance_mode: PerformanceMode,
    throughput: Throughput,
) -> Result<(), ConfigError> {
    let ia = rules.iter().find_map(|r| match r {
        LifecycleRule::TransitionToIa(v) => Some(v),
        _ => None,
    });
    let Some(archive) = rules.iter().find_map(|r| match r {
        LifecycleRule::TransitionToArchive(v) => Some(v),
        _ => None,
    }) else {
        return Ok(());
    };
    if throughput != Throughput::Elastic {
        return Err(bad("transitionToArchive needs throughputMode elastic"));
    }
    if performance_mode == PerformanceMode::MaxIo {
        return Err(bad("transitionToArchive is not available with performanceMode maxIO"));
    }
    if let Some(ia) = ia
        && days(archive) <= days(ia)
    {
        return Err(bad(format!("transitionToArchive {archive} must be later than transitionToIA {ia}")));
    }
    Ok(())
}

fn parse_access_point(
    params: &BTreeMap<String, String>,
    source: Option<VolumeSource>,
    tags: BTreeMap<String, String>,
) -> Result<AccessPointClass, ConfigError> {
    let get = |k: &str| params.get(k).map(String::as_str);
    for k in [
        "performanceMode",
        "throughputMode",
        "provisionedThroughputInMibps",
        "encrypted",
        "kmsKeyId",
        "subnets",
        "securityGroups",
        "transitionToIA",
        "transitionToArchive",
        "transitionToPrimaryStorageClass",
        "backup",
        "availabilityZoneName",
    ] {
        if params.contains_key(k) {
            return Err(bad(format!("{k} applies only to mode filesystem; the access point's file system is shared")));
        }
    }
    if source == Some(VolumeSource::Nfs) {
        return Err(bad("volumeSource nfs cannot enforce an access point: mode accessPoint needs volumeSource csi"));
    }
    if get("deleteAccessPointRootDir") == Some("true") {
        return Err(bad("deleteAccessPointRootDir true is not supported: removing a directory needs the file system \
             mounted, which this provisioner does not do (the EFS API cannot delete directories)"));
    }
    get("deleteAccessPointRootDir").map(|v| parse_bool("deleteAccessPointRootDir", v)).transpose()?;
    let file_system_id = get("fileSystemId")
        .filter(|v| v.starts_with("fs-") && v.len() > 3)
        .ok_or_else(|| bad("mode accessPoint needs fileSystemId (fs-...)"))?
        .to_string();
    let uid = get("uid").map(|v| parse_id("uid", v)).transpose()?;
    let gid = get("gid").map(|v| parse_id("gid", v)).transpose()?;
    let start = get("gidRangeStart").map(|v| parse_id("gidRangeStart", v)).transpose()?;
    let end = get("gidRangeEnd").map(|v| parse_id("gidRangeEnd", v)).transpose()?;
    let identity = match (uid, gid, start, end) {
        (Some(uid), Some(gid), None, None) => Identity::Fixed { uid, gid },
        (_, Some(_), _, _) => return Err(bad("gid and gidRangeStart/gidRangeEnd exclude each other; gid needs uid")),
        (uid, None, start, end) => {
            let (start, end) = (start.unwrap_or(50_000), end.unwrap_or(7_000_000));
            if start > end {
                return Err(bad(format!("gidRangeStart {start} is above gidRangeEnd {end}")));
            }
            Identity::Range { start, end, uid }
        }
    };
    let directory_perms = get("directoryPerms").unwrap_or("0700").to_string();
    if !(3..=4).contains(&directory_perms.len()) || !directory_perms.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(bad(format!("directoryPerms {directory_perms:?} is not octal like 0700")));
    }
    let base_path = get("basePath").unwrap_or("/").to_string();
    if !base_path.starts_with('/') || base_path.split('/').any(|p| p == ".." || p == ".") {
        return Err(bad(format!("basePath {base_path:?} must be absolute, without . or ..")));
    }
    let sub_path_pattern = get("subPathPattern").unwrap_or("${.PV.name}").to_string();
    let ensure_unique_directory =
        get("ensureUniqueDirectory").map(|v| parse_bool("ensureUniqueDirectory", v)).transpose()?.unwrap_or(true);
    Ok(AccessPointClass {
        file_system_id,
        identity,
        directory_perms,
        base_path,
        sub_path_pattern,
        ensure_unique_directory,
        tags,
    })
}

/// A short suffix unique to a PV name (FNV-1a, 64 bit, stable across versions).
pub fn unique_suffix(pv_name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pv_name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The access point's root directory for a claim: `<basePath>/<subPathPattern>` with
/// its variables filled in, and, when the pattern does not name the PV and
/// the class does not turn it off, `-<suffix unique to the PV>` on the last
/// part. EFS allows at most 100 characters and four levels.
pub fn root_directory(
    class: &AccessPointClass,
    pv_name: &str,
    claim_namespace: &str,
    claim_name: &str,
) -> Result<String, ConfigError> {
    let sub = class
        .sub_path_pattern
        .replace("${.PVC.namespace}", claim_namespace)
        .replace("${.PVC.name}", claim_name)
        .replace("${.PV.name}", pv_name);
    if sub.contains("${") {
        return Err(bad(format!(
            "subPathPattern {:?} has an unknown variable; known: ${{.PVC.namespace}}, ${{.PVC.name}}, ${{.PV.name}}",
            class.sub_path_pattern
        )));
    }
    let mut parts: Vec<String> =
        class.base_path.split('/').chain(sub.split('/')).filter(|p| !p.is_empty()).map(str::to_string).collect();
    if parts.iter().any(|p| p == ".." || p == ".") {
        return Err(bad(format!("the directory for this claim ({sub:?}) must stay inside basePath")));
    }
    if class.ensure_unique_directory && !class.sub_path_pattern.contains("${.PV.name}") {
        let suffix = unique_suffix(pv_name);
        match parts.last_mut() {
            Some(last) => *last = format!("{last}-{suffix}"),
            None => parts.push(suffix),
        }
    }
    let path = format!("/{}", parts.join("/"));
    if path.len() > 100 || parts.len() > 4 {
        return Err(bad(format!("access point path {path:?} exceeds EFS's 100 characters or 4 levels")));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn seed_defaults() -> Defaults {
        Defaults {
            subnets: vec!["subnet-a".into(), "subnet-b".into()],
            security_groups: vec!["sg-1".into()],
            region: "ap-southeast-2".into(),
            ..Defaults::default()
        }
    }

    fn fs(c: ClassConfig) -> FileSystemClass {
        match c {
            ClassConfig::FileSystem(f) => f,
            other => panic!("not filesystem: {other:?}"),
        }
    }

    #[test]
    fn the_seed_class_gets_the_environment_defaults_and_encryption() {
        let c = fs(parse_class(&seed_defaults(), "efs.aws.skpr.io/generalPurpose", &params(&[])).unwrap());
        assert_eq!(c.performance_mode, PerformanceMode::GeneralPurpose);
        assert_eq!(c.subnets, vec!["subnet-a", "subnet-b"]);
        assert_eq!(c.security_groups, vec!["sg-1"]);
        assert!(c.encrypted);
        assert_eq!(c.throughput, Throughput::Bursting);
        assert_eq!(c.source, VolumeSource::Nfs);
    }

    #[test]
    fn the_max_io_name_implies_max_io_unless_the_class_says_otherwise() {
        let d = seed_defaults();
        let c = fs(parse_class(&d, "efs.aws.skpr.io/maxIO", &params(&[])).unwrap());
        assert_eq!(c.performance_mode, PerformanceMode::MaxIo);
        let c =
            fs(parse_class(&d, "efs.aws.skpr.io/maxIO", &params(&[("performanceMode", "generalPurpose")])).unwrap());
        assert_eq!(c.performance_mode, PerformanceMode::GeneralPurpose);
        let d = Defaults { performance_mode: PerformanceMode::MaxIo, ..seed_defaults() };
        let c = fs(parse_class(&d, "example.com/efs", &params(&[])).unwrap());
        assert_eq!(c.performance_mode, PerformanceMode::MaxIo, "EFS_PERFORMANCE for other names");
    }

    #[test]
    fn class_parameters_override_everything() {
        let c = fs(parse_class(
            &seed_defaults(),
            "efs.aws.skpr.io/generalPurpose",
            &params(&[
                ("throughputMode", "provisioned"),
                ("provisionedThroughputInMibps", "64"),
                ("kmsKeyId", "alias/efs"),
                ("subnets", "subnet-x, subnet-y,subnet-z"),
                ("securityGroups", "sg-2,sg-3"),
                ("transitionToIA", "AFTER_30_DAYS"),
                ("volumeSource", "csi"),
            ]),
        )
        .unwrap());
        assert_eq!(c.throughput, Throughput::Provisioned(64.0));
        assert_eq!(c.kms_key_id.as_deref(), Some("alias/efs"));
        assert_eq!(c.subnets, vec!["subnet-x", "subnet-y", "subnet-z"]);
        assert_eq!(c.security_groups, vec!["sg-2", "sg-3"]);
        assert_eq!(c.lifecycle, vec![LifecycleRule::TransitionToIa("AFTER_30_DAYS".into())]);
        assert_eq!(c.source, VolumeSource::Csi);
    }

    #[test]
    fn bad_parameters_are_explained() {
        let d = seed_defaults();
        let n = "efs.aws.skpr.io/generalPurpose";
        for (kv, needle) in [
            (vec![("performanceMode", "fast")], "performanceMode"),
            (vec![("throughputMode", "provisioned")], "provisionedThroughputInMibps"),
            (vec![("provisionedThroughputInMibps", "5")], "needs throughputMode provisioned"),
            (vec![("encrypted", "yes")], "encrypted"),
            (vec![("encrypted", "false"), ("kmsKeyId", "k")], "kmsKeyId"),
            (vec![("transitionToIA", "AFTER_2_DAYS")], "transitionToIA"),
            (vec![("subnets", "a,a")], "twice"),
            (vec![("sizeGb", "5")], "unknown StorageClass parameter(s) sizeGb"),
            (vec![("performanceMode", "maxIO"), ("throughputMode", "elastic")], "elastic"),
            (vec![("uid", "1")], "only to mode accessPoint"),
        ] {
            let err = parse_class(&d, n, &params(&kv)).unwrap_err();
            assert!(err.0.contains(needle), "{kv:?}: {err}");
        }
        let no_subnets = Defaults { subnets: vec![], ..seed_defaults() };
        assert!(parse_class(&no_subnets, n, &params(&[])).unwrap_err().0.contains("AWS_SUBNETS"));
    }

    #[test]
    fn access_point_classes_parse_with_csi_defaults() {
        let c = parse_class(
            &seed_defaults(),
            "efs.aws.skpr.io/generalPurpose",
            &params(&[("provisioningMode", "efs-ap"), ("fileSystemId", "fs-1"), ("basePath", "/dynamic")]),
        )
        .unwrap();
        let ClassConfig::AccessPoint(ap) = c else { panic!("not an access point class") };
        assert_eq!(ap.identity, Identity::Range { start: 50_000, end: 7_000_000, uid: None });
        assert_eq!(ap.directory_perms, "0700");
        assert_eq!(root_directory(&ap, "pvc-1", "ns", "data").unwrap(), "/dynamic/pvc-1");
        let ap = AccessPointClass {
            sub_path_pattern: "${.PVC.namespace}/${.PVC.name}".into(),
            ensure_unique_directory: false,
            ..ap
        };
        assert_eq!(root_directory(&ap, "pvc-1", "ns", "data").unwrap(), "/dynamic/ns/data");
        let ap = AccessPointClass { sub_path_pattern: "../x".into(), ..ap };
        assert!(root_directory(&ap, "pvc-1", "ns", "data").is_err());
    }

    #[test]
    fn access_point_classes_reject_what_they_cannot_do() {
        let d = seed_defaults();
        let n = "efs.aws.skpr.io/generalPurpose";
        let base = [("mode", "accessPoint"), ("fileSystemId", "fs-1")];
        for (extra, needle) in [
            (("deleteAccessPointRootDir", "true"), "not supported"),
            (("volumeSource", "nfs"), "volumeSource nfs"),
            (("gidRangeStart", "10"), "gidRangeStart"),
            (("directoryPerms", "rwx"), "directoryPerms"),
            (("subnets", "s"), "only to mode filesystem"),
        ] {
            let mut kv = base.to_vec();
            kv.push(extra);
            if extra.0 == "gidRangeStart" {
                kv.push(("gidRangeEnd", "5"));
            }
            let err = parse_class(&d, n, &params(&kv)).unwrap_err();
            assert!(err.0.contains(needle), "{extra:?}: {err}");
        }
        assert!(parse_class(&d, n, &params(&[("mode", "accessPoint")])).unwrap_err().0.contains("fileSystemId"));
        let fixed = parse_class(
            &d,
            n,
            &params(&[("mode", "accessPoint"), ("fileSystemId", "fs-1"), ("uid", "1000"), ("gid", "2000")]),
        );
        assert!(matches!(
            fixed,
            Ok(ClassConfig::AccessPoint(AccessPointClass { identity: Identity::Fixed { uid: 1000, gid: 2000 }, .. }))
        ));
    }

    #[test]
    fn lifecycle_rules_efs_would_reject_are_infeasible_before_anything_is_created() {
        let d = seed_defaults();
        let n = "efs.aws.skpr.io/generalPurpose";
        for (kv, needle) in [
            (vec![("transitionToArchive", "AFTER_90_DAYS")], "needs throughputMode elastic"),
            (
                vec![
                    ("transitionToArchive", "AFTER_90_DAYS"),
                    ("performanceMode", "maxIO"),
                    ("throughputMode", "bursting"),
                ],
                "needs throughputMode elastic",
            ),
            (
                vec![
                    ("throughputMode", "elastic"),
                    ("transitionToIA", "AFTER_90_DAYS"),
                    ("transitionToArchive", "AFTER_30_DAYS"),
                ],
                "later than transitionToIA",
            ),
            (
                vec![
                    ("throughputMode", "elastic"),
                    ("transitionToIA", "AFTER_30_DAYS"),
                    ("transitionToArchive", "AFTER_30_DAYS"),
                ],
                "later than transitionToIA",
            ),
        ] {
            let err = parse_class(&d, n, &params(&kv)).unwrap_err();
            assert!(err.0.contains(needle), "{kv:?}: {err}");
        }
        let ok = [
            ("throughputMode", "elastic"),
            ("transitionToIA", "AFTER_30_DAYS"),
            ("transitionToArchive", "AFTER_90_DAYS"),
        ];
        assert!(parse_class(&d, n, &params(&ok)).is_ok());
        assert!(
            check_lifecycle(
                &[LifecycleRule::TransitionToArchive("AFTER_90_DAYS".into())],
                PerformanceMode::MaxIo,
                Throughput::Elastic
            )
            .unwrap_err()
            .0
            .contains("maxIO")
        );
    }

    #[test]
    fn backup_one_zone_and_tags_are_read_from_the_class() {
        let d = Defaults {
            tags: BTreeMap::from([("team".into(), "a".into()), ("env".into(), "prod".into())]),
            ..seed_defaults()
        };
        let c = fs(parse_class(
            &d,
            "efs.aws.skpr.io/generalPurpose",
            &params(&[("backup", "true"), ("availabilityZoneName", "ap-southeast-2a"), ("tags", "team=b,app=web")]),
        )
        .unwrap());
        assert_eq!(c.backup, Some(true));
        assert_eq!(c.availability_zone.as_deref(), Some("ap-southeast-2a"));
        let want: BTreeMap<String, String> = [("team", "b"), ("env", "prod"), ("app", "web")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(c.tags, want, "the class's over the flag's");
        let plain = fs(parse_class(&seed_defaults(), "efs.aws.skpr.io/generalPurpose", &params(&[])).unwrap());
        assert_eq!((plain.backup, plain.availability_zone, plain.tags.len()), (None, None, 0), "EFS's defaults");
        let ClassConfig::AccessPoint(ap) = parse_class(
            &d,
            "efs.aws.skpr.io/generalPurpose",
            &params(&[("mode", "accessPoint"), ("fileSystemId", "fs-1"), ("tags", "app=db")]),
        )
        .unwrap() else {
            panic!("access point class")
        };
        assert_eq!(ap.tags.get("app").map(String::as_str), Some("db"));
    }

    #[test]
    fn options_efs_would_refuse_are_explained() {
        let d = seed_defaults();
        let n = "efs.aws.skpr.io/generalPurpose";
        for (kv, needle) in [
            (vec![("backup", "yes")], "backup"),
            (
                vec![("availabilityZoneName", "us-east-1a"), ("performanceMode", "maxIO")],
                "not available with performanceMode maxIO",
            ),
            (vec![("availabilityZoneName", " ")], "availabilityZoneName is empty"),
            (vec![("tags", "efs.aws.skpr.io/cluster=other")], "sets itself"),
            (vec![("tags", "Name=mine")], "sets itself"),
            (vec![("tags", "kubernetes.io/created-for/pv/name=x")], "sets itself"),
            (vec![("tags", "aws:createdBy=me")], "reserved for AWS"),
            (vec![("tags", "team")], "not key=value"),
            (vec![("tags", "team=a;b")], "not valid in EFS"),
            (vec![("tags", &*format!("{}=x", "k".repeat(129)))], "1 to 128"),
            (vec![("tags", &*format!("k={}", "v".repeat(257)))], "up to 256"),
            (vec![("mode", "accessPoint"), ("fileSystemId", "fs-1"), ("backup", "true")], "only to mode filesystem"),
            (
                vec![("mode", "accessPoint"), ("fileSystemId", "fs-1"), ("availabilityZoneName", "a")],
                "only to mode filesystem",
            ),
        ] {
            let err = parse_class(&d, n, &params(&kv)).unwrap_err();
            assert!(err.0.contains(needle), "{kv:?}: {err}");
        }
        let many: Vec<String> = (0..44).map(|i| format!("k{i}=v")).collect();
        assert!(parse_tags(&many.join(",")).unwrap_err().0.contains("at most 43"));
        let flag = Defaults { tags: parse_tags(&many[..40].join(",")).unwrap(), ..seed_defaults() };
        let err = parse_class(&flag, n, &params(&[("tags", "a=1,b=2,c=3,d=4")])).unwrap_err();
        assert!(err.0.contains("EFS allows 50 per resource"), "{err}");
        assert_eq!(
            parse_tags("a==b, c=").unwrap(),
            BTreeMap::from([("a".into(), "=b".into()), ("c".into(), "".into())])
        );
    }

    #[test]
    fn an_empty_security_group_list_is_refused() {
        let d = Defaults { security_groups: vec![], ..seed_defaults() };
        let err = parse_class(&d, "efs.aws.skpr.io/generalPurpose", &params(&[])).unwrap_err();
        assert!(err.0.contains("AWS_SECURITY_GROUP") && err.0.contains("default group"), "{err}");
    }

    #[test]
    fn a_directory_is_unique_to_its_access_point_unless_turned_off() {
        let d = seed_defaults();
        let n = "efs.aws.skpr.io/generalPurpose";
        let kv =
            [("mode", "accessPoint"), ("fileSystemId", "fs-1"), ("subPathPattern", "${.PVC.namespace}/${.PVC.name}")];
        let ClassConfig::AccessPoint(ap) = parse_class(&d, n, &params(&kv)).unwrap() else { panic!("class") };
        let first = root_directory(&ap, "pvc-1", "ns", "data").unwrap();
        let again = root_directory(&ap, "pvc-2", "ns", "data").unwrap();
        assert!(first.starts_with("/ns/data-") && first != again, "{first} {again}");
        assert_eq!(first, root_directory(&ap, "pvc-1", "ns", "data").unwrap(), "stable per PV");
        let mut off = kv.to_vec();
        off.push(("ensureUniqueDirectory", "false"));
        let ClassConfig::AccessPoint(ap) = parse_class(&d, n, &params(&off)).unwrap() else { panic!("class") };
        assert_eq!(root_directory(&ap, "pvc-1", "ns", "data").unwrap(), "/ns/data");
    }
}
