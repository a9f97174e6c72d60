//! [`EfsProvisioner`]: the claim → EFS decisions, over any [`EfsApi`].
//!
//! # File system per claim
//! One round of [`provision`](Provisioner::provision) moves the backend as
//! far as it can without waiting, and answers "in progress" when AWS is still
//! working, so no worker sits in a poll loop; the engine calls again with
//! backoff:
//!
//! 0. Before anything exists, the class's subnets and security groups are
//!    checked against EC2 ([`check_topology`]: every subnet exists, all in
//!    one VPC, one per zone; the security groups exist in that VPC). A class
//!    that fails is `Infeasible`, and nothing is created.
//! 1. `CreateFileSystem` with the creation token of the PV name (tags in the
//!    same call). `FileSystemAlreadyExists` means an earlier round (or an
//!    earlier process) created it: look it up, check its tags say it is
//!    this claim's, and go on. Within one process the id is remembered, so
//!    later rounds describe it directly instead (the memo is only a
//!    shortcut; correctness rests on the token).
//! 2. `creating` → in progress; `error` → roll back; `deleting` → in
//!    progress until it is gone and a new one can be made.
//! 3. A mount target in each listed subnet (`MountTargetConflict` for an
//!    existing one there is fine), and the lifecycle policy, if any, in the
//!    same round.
//! 4. All mount targets `available` → the volume, pinned to their zones.
//!
//! # Rolling back
//! An error no retry can fix once a file system exists (a permission, a
//! mount target in `error`) rolls the file system back, and the rollback is
//! sticky: the file system is tagged [`TAG_ROLLBACK`] with the reason, and
//! every later round (in this process or the next) only tears down until it
//! is gone, never creating a mount target again. Until then the claim gets
//! one warning, the same text every round, so events aggregate; once it is
//! gone, the answer is `Infeasible`, so the engine waits its slow retry (or
//! an edit of the class) before a new file system is tried.
//!
//! # Access point per claim
//! The file system's access points are listed, 1,000 per page (needed for
//! the gid range, and the idempotency check where client tokens are
//! ignored); the one tagged with the PV name is reused, or one is created
//! with the lowest free gid. Allocation is serialised per file system inside
//! the process, and derived from AWS's state, so it survives restarts.
//!
//! # Deleting
//! Only what the tags prove this provisioner created for this PV in this
//! cluster (`managed-by`, cluster id, PV name); an access-point volume never
//! leads to a file-system delete.
//!
//! # Failures a user must see
//! Credentials, permissions and an unreachable EFS are reported as a
//! warning on the claim naming the cause (see [`EfsProvisioner`]'s
//! `attention`), not as a silent "in progress".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use provisioner_core::{
    BoxError, Cause, DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner,
};
use tracing::{debug, info, warn};

use crate::api::{
    AccessPoint, ApiError, EfsApi, ErrorKind, FileSystem, FileSystemLookup, FileSystemOptions, LifeCycle,
    MAX_ACCESS_POINT_PAGE, MountTarget, NetworkApi, NewAccessPoint, NewFileSystem, SecurityGroup, Subnet,
};
use crate::config::{AccessPointClass, ClassConfig, Defaults, FileSystemClass, Identity, parse_class, root_directory};
use crate::volume::{SavedVolume, access_point_volume, file_system_volume, pin_to_zones, saved_volume_checked};

/// How often a file system that is `creating` is looked at again (AWS takes
/// about 30 s): a fixed poll, so a volume is ready soon after AWS is, instead
/// of after a backoff that has grown meanwhile.
const POLL_FILE_SYSTEM: std::time::Duration = std::time::Duration::from_secs(5);
/// How often mount targets that are `creating` are looked at again (about 90 s).
const POLL_MOUNT_TARGETS: std::time::Duration = std::time::Duration::from_secs(10);
/// How often an access point that is `creating` is looked at again (seconds).
const POLL_ACCESS_POINT: std::time::Duration = std::time::Duration::from_secs(2);

/// Tag: the PersistentVolume's name.
pub const TAG_PV_NAME: &str = "kubernetes.io/created-for/pv/name";
/// Tag: the claim's namespace.
pub const TAG_PVC_NAMESPACE: &str = "kubernetes.io/created-for/pvc/namespace";
/// Tag: the claim's name.
pub const TAG_PVC_NAME: &str = "kubernetes.io/created-for/pvc/name";
/// Tag: the cluster id.
pub const TAG_CLUSTER: &str = "efs.aws.skpr.io/cluster";
/// Tag: who manages the resource.
pub const TAG_MANAGED_BY: &str = "efs.aws.skpr.io/managed-by";
/// Value of [`TAG_MANAGED_BY`].
pub const MANAGED_BY: &str = "efs-provisioner";
/// Tag: set on a file system being rolled back, with the reason; makes the
/// rollback survive restarts.
pub const TAG_ROLLBACK: &str = "efs.aws.skpr.io/rollback";
/// EFS's limit on a tag key, in characters.
pub const TAG_KEY_MAX: usize = 128;
/// EFS's limit on a tag value, in characters.
pub const TAG_VALUE_MAX: usize = 256;

/// `value` cut to EFS's 256 characters.
pub fn tag_value(value: &str) -> String {
    value.chars().take(TAG_VALUE_MAX).collect()
}

/// `text` as a tag value: characters EFS does not allow in tags (outside
/// letters, digits, spaces and `_.:/=+-@`) become spaces, runs of spaces
/// one, at most 256 characters.
pub fn tag_text(text: &str) -> String {
    let mapped: String =
        text.chars().map(|c| if c.is_alphanumeric() || " _.:/=+-@".contains(c) { c } else { ' ' }).collect();
    tag_value(&mapped.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The creation token (or client token) for a PV name: the name itself when
/// it fits EFS's 64 characters, else a prefix and a hash of the whole name.
///
/// ```
/// use efs_provisioner::provisioner::creation_token;
/// assert_eq!(creation_token("pvc-0b5e"), "pvc-0b5e");
/// let long = "x".repeat(100);
/// assert_eq!(creation_token(&long).len(), 64);
/// assert_eq!(creation_token(&long), creation_token(&long));
/// ```
pub fn creation_token(pv_name: &str) -> String {
    if !pv_name.is_empty() && pv_name.len() <= 64 {
        return pv_name.to_string();
    }
    // FNV-1a, 64 bit: stable across versions and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pv_name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let prefix: String = pv_name.chars().take(47).collect();
    format!("{prefix}-{hash:016x}")
}

/// The tags of everything created for a claim.
pub fn tags(req: &ProvisionRequest, cluster_id: &str) -> BTreeMap<String, String> {
    tags_with(req, cluster_id, &BTreeMap::new())
}

/// [`tags`] under the operator's own `extra` (`--tags`, a class's `tags`):
/// where a key is both, the provisioner's wins, so no configuration can
/// change the tags deletes rely on.
pub fn tags_with(
    req: &ProvisionRequest,
    cluster_id: &str,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let ns = req.claim.namespace().unwrap_or_default();
    let name = req.claim.name_any();
    let mut all = extra.clone();
    all.extend([
        ("Name".to_string(), tag_value(&format!("{ns}/{name}"))),
        (TAG_PV_NAME.to_string(), req.pv_name.clone()),
        (TAG_PVC_NAMESPACE.to_string(), ns),
        (TAG_PVC_NAME.to_string(), name),
        (TAG_CLUSTER.to_string(), cluster_id.to_string()),
        (TAG_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]);
    all
}

/// What is left to do about the mount targets of a file system.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountTargetPlan {
    /// Listed subnets without a mount target: create one.
    pub missing: Vec<String>,
    /// Mount targets not `available` yet: wait.
    pub waiting: Vec<String>,
    /// Mount targets in state `error`.
    pub failed: Vec<String>,
}

impl MountTargetPlan {
    /// Whether every listed subnet has an available mount target.
    pub fn ready(&self) -> bool {
        self.missing.is_empty() && self.waiting.is_empty() && self.failed.is_empty()
    }
}

/// Compares the subnets a class lists with the mount targets that exist.
pub fn plan_mount_targets(subnets: &[String], existing: &[MountTarget]) -> MountTargetPlan {
    let mut plan = MountTargetPlan::default();
    for subnet in subnets {
        match existing.iter().find(|m| &m.subnet_id == subnet && m.state != LifeCycle::Deleted) {
            None => plan.missing.push(subnet.clone()),
            Some(m) => match m.state {
                LifeCycle::Available | LifeCycle::Updating => {}
                LifeCycle::Error => plan.failed.push(m.id.clone()),
                _ => plan.waiting.push(m.id.clone()),
            },
        }
    }
    plan
}

/// The lowest gid in `start..=end` that no access point uses.
pub fn free_gid(start: i64, end: i64, access_points: &[AccessPoint]) -> Option<i64> {
    let used: BTreeSet<i64> = access_points.iter().filter_map(|a| a.posix_user.map(|(_, g)| g)).collect();
    (start..=end).find(|g| !used.contains(g))
}

/// How far a [`teardown`](EfsProvisioner::teardown) got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// The file system is gone (or being deleted, with nothing left to wait for).
    Gone,
    /// Mount targets are still being deleted.
    Pending,
}

/// The cause for an error that retrying will not fix: what it means for the
/// user, over the [`ApiError`] itself (its source).
pub fn explain(e: &ApiError) -> Cause {
    match (&e.kind, e.code.as_str()) {
        (ErrorKind::AccessDenied, _) => Cause::context(
            format!("not authorized: the provisioner's IAM role needs {}", e.operation.iam_actions()),
            e.clone(),
        ),
        (ErrorKind::LimitExceeded, "FileSystemLimitExceeded") => Cause::context(
            "the AWS account has reached its quota of EFS file systems in this region (1,000 by default, \
             adjustable in Service Quotas): delete unused file systems or request an increase",
            e.clone(),
        ),
        (ErrorKind::LimitExceeded, "AccessPointLimitExceeded") => {
            Cause::context("the file system has reached its quota of access points (10,000 per file system)", e.clone())
        }
        _ => Cause::new(e.clone()),
    }
}

fn retryable(e: &ApiError) -> bool {
    matches!(e.kind, ErrorKind::Throttled | ErrorKind::Transient)
}

/// Whether tags prove a resource was created by this provisioner for
/// `pv_name` in cluster `cluster_id`; the mismatch, if not.
pub fn owned(tags: &BTreeMap<String, String>, pv_name: &str, cluster_id: &str) -> Result<(), String> {
    let want = [(TAG_MANAGED_BY, MANAGED_BY), (TAG_CLUSTER, cluster_id), (TAG_PV_NAME, pv_name)];
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| tags.get(*k).map(String::as_str) != Some(*v))
        .map(|(k, v)| format!("{k}={v} (found {})", tags.get(*k).map_or("none", String::as_str)))
        .collect();
    if wrong.is_empty() { Ok(()) } else { Err(wrong.join(", ")) }
}

/// Checks the subnets and security groups a class names against what EC2
/// reports, before any file system exists: every subnet exists, all are in
/// one VPC, at most one per zone (EFS allows one mount target per zone, all
/// in one VPC), and every security group exists in that VPC. The reason, if
/// not.
pub fn check_topology(
    subnets: &[String],
    security_groups: &[String],
    found_subnets: &[Subnet],
    found_groups: &[SecurityGroup],
) -> Result<(), String> {
    let missing: Vec<&str> =
        subnets.iter().filter(|s| !found_subnets.iter().any(|f| &f.id == *s)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(format!("subnet(s) {} do not exist", missing.join(", ")));
    }
    let listed: Vec<&Subnet> = subnets.iter().filter_map(|s| found_subnets.iter().find(|f| &f.id == s)).collect();
    let vpcs: BTreeSet<&str> = listed.iter().map(|s| s.vpc_id.as_str()).collect();
    if vpcs.len() > 1 {
        let each: Vec<String> = listed.iter().map(|s| format!("{} in {}", s.id, s.vpc_id)).collect();
        return Err(format!(
            "the subnets are in {} VPCs ({}); all mount targets of an EFS file system must be in one VPC",
            vpcs.len(),
            each.join(", ")
        ));
    }
    let mut by_zone: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in &listed {
        by_zone.entry(s.availability_zone.as_str()).or_default().push(s.id.as_str());
    }
    if let Some((zone, ids)) = by_zone.iter().find(|(_, ids)| ids.len() > 1) {
        return Err(format!(
            "subnets {} are all in zone {zone}; EFS allows one mount target per availability zone: list one \
             subnet per zone",
            ids.join(", ")
        ));
    }
    let vpc = vpcs.into_iter().next().unwrap_or_default();
    for g in security_groups {
        match found_groups.iter().find(|f| &f.id == g) {
            None => return Err(format!("security group {g} does not exist")),
            Some(f) if f.vpc_id != vpc => {
                return Err(format!("security group {g} is in {}, the subnets in {vpc}", f.vpc_id));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The subnet of a One Zone file system in `zone`: the one of `subnets`
/// that EC2 reports in that zone. The reason, if there is none.
pub fn one_zone_subnet(zone: &str, subnets: &[String], found_subnets: &[Subnet]) -> Result<String, String> {
    let listed: Vec<&Subnet> = subnets.iter().filter_map(|s| found_subnets.iter().find(|f| &f.id == s)).collect();
    let mut in_zone = listed.iter().filter(|s| s.availability_zone == zone);
    match (in_zone.next(), in_zone.next()) {
        (Some(s), None) => Ok(s.id.clone()),
        (Some(a), Some(b)) => Err(format!(
            "subnets {} and {} are both in zone {zone}; a One Zone file system takes one mount target: list one \
             subnet per zone",
            a.id, b.id
        )),
        (None, _) => {
            let each: Vec<String> = listed.iter().map(|s| format!("{} ({})", s.id, s.availability_zone)).collect();
            Err(format!(
                "availabilityZoneName {zone}: none of the subnets is in that zone ({}); a One Zone file system \
                 takes its one mount target there: add a subnet of {zone} to the class's subnets or AWS_SUBNETS",
                if each.is_empty() { "none found".to_string() } else { each.join(", ") }
            ))
        }
    }
}

/// The hint for an error a user has to fix outside the cluster's objects,
/// over the [`ApiError`] itself (its source).
pub fn explain_setup(e: &ApiError, region: &str) -> Option<Cause> {
    match e.kind {
        // No request was sent: the SDK's credential chain found nothing usable.
        ErrorKind::Credentials if e.code == "CredentialsError" => Some(Cause::context(
            "could not get AWS credentials; check the IRSA role annotation (eks.amazonaws.com/role-arn) on the \
             provisioner's ServiceAccount, or its EKS Pod Identity association",
            e.clone(),
        )),
        // Sent, and refused for the credentials themselves, not for a permission.
        ErrorKind::Credentials => Some(Cause::context(
            format!(
                "AWS refused the provisioner's credentials ({}: an unknown access key, a wrong secret or an \
                 expired session token), so this is not a missing IAM permission; check the IRSA role \
                 annotation or Pod Identity association, any AWS_ACCESS_KEY_ID set on the Deployment, and the \
                 node's clock",
                e.code
            ),
            e.clone(),
        )),
        ErrorKind::Unreachable => Some(Cause::context(
            format!(
                "could not reach EFS in {region}; check the network path from the provisioner's pods (NAT or a VPC \
                 endpoint for elasticfilesystem) and AWS_ENDPOINT_URL_EFS"
            ),
            e.clone(),
        )),
        ErrorKind::AccessDenied => Some(explain(e)),
        _ => None,
    }
}

/// The EFS provisioner (see the module docs).
pub struct EfsProvisioner<A> {
    api: A,
    network: Option<Arc<dyn NetworkApi>>,
    defaults: Defaults,
    /// PV name → file system id, learnt in this process (a shortcut only).
    known: Mutex<HashMap<String, String>>,
    /// PV name → why its file system is being rolled back, in case the
    /// [`TAG_ROLLBACK`] tag could not be set.
    rolling_back: Mutex<HashMap<String, String>>,
    /// Serialises gid allocation per shared file system.
    allocation: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<A: EfsApi> EfsProvisioner<A> {
    /// A provisioner calling `api`, with `defaults` for every class.
    pub fn new(api: A, defaults: Defaults) -> Self {
        EfsProvisioner {
            api,
            network: None,
            defaults,
            known: Mutex::default(),
            rolling_back: Mutex::default(),
            allocation: Mutex::default(),
        }
    }

    /// Checks each class's subnets and security groups with `network`
    /// before a file system is created (without it, a bad subnet shows only
    /// once a file system exists, which is then rolled back).
    pub fn with_network(mut self, network: Arc<dyn NetworkApi>) -> Self {
        self.network = Some(network);
        self
    }

    /// The API it calls.
    pub fn api(&self) -> &A {
        &self.api
    }

    /// The defaults.
    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        lock(&self.known)
    }

    /// A failure the user must see while backend work may exist: `Stalled`,
    /// a warning on the claim and a retry that finishes the work even after
    /// the claim is deleted.
    fn attention(&self, _req: &ProvisionRequest, cause: impl Into<BoxError>) -> ProvisionError {
        ProvisionError::stalled(cause)
    }

    /// What a failed call means for the claim, when no rollback follows.
    fn after_error(&self, req: &ProvisionRequest, e: &ApiError, doing: &str) -> ProvisionError {
        if let Some(setup) = explain_setup(e, &self.defaults.region) {
            return self.attention(req, Cause::context(doing, setup));
        }
        match e.kind {
            ErrorKind::Throttled => ProvisionError::in_progress(Cause::context(
                format!("EFS is throttling {} while {doing}; slowing down", e.operation),
                e.clone(),
            )),
            _ => ProvisionError::in_progress(Cause::context(doing, e.clone())),
        }
    }

    /// Checks the class's network before anything is created.
    async fn check_network(&self, req: &ProvisionRequest, class: &FileSystemClass) -> Result<(), ProvisionError> {
        let Some(network) = &self.network else { return Ok(()) };
        let doing = "checking the class's subnets and security groups";
        let subnets = network.describe_subnets(&class.subnets).await.map_err(|e| self.after_error(req, &e, doing))?;
        let groups = network
            .describe_security_groups(&class.security_groups)
            .await
            .map_err(|e| self.after_error(req, &e, doing))?;
        check_topology(&class.subnets, &class.security_groups, &subnets, &groups)
            .and_then(|()| match &class.availability_zone {
                Some(zone) => one_zone_subnet(zone, &class.subnets, &subnets).map(|_| ()),
                None => Ok(()),
            })
            .map_err(|reason| {
                ProvisionError::infeasible(format!(
                    "StorageClass {}: {reason} (region {}); nothing was created",
                    req.class.name_any(),
                    self.defaults.region
                ))
            })
    }

    /// The subnets that get a mount target: every listed one, or, for a One
    /// Zone file system, the one in its zone (the existing mount target's,
    /// else the one EC2 reports there). `Err(Ok(reason))`: none can be
    /// chosen; `Err(Err(answer))`: the lookup failed.
    async fn mount_target_subnets(
        &self,
        req: &ProvisionRequest,
        class: &FileSystemClass,
        existing: &[MountTarget],
    ) -> Result<Vec<String>, Result<String, ProvisionError>> {
        let Some(zone) = &class.availability_zone else { return Ok(class.subnets.clone()) };
        if let Some(m) = existing.iter().find(|m| m.state != LifeCycle::Deleted && class.subnets.contains(&m.subnet_id))
        {
            return Ok(vec![m.subnet_id.clone()]);
        }
        let Some(network) = &self.network else {
            return match class.subnets.as_slice() {
                [one] => Ok(vec![one.clone()]),
                _ => Err(Ok(format!(
                    "availabilityZoneName {zone}: without the EC2 lookup (ec2:DescribeSubnets) the subnet of that \
                     zone is not known; list only that zone's subnet in the class's subnets"
                ))),
            };
        };
        let found = network
            .describe_subnets(&class.subnets)
            .await
            .map_err(|e| Err(self.after_error(req, &e, "looking up the subnet of the One Zone file system")))?;
        one_zone_subnet(zone, &class.subnets, &found).map(|s| vec![s]).map_err(Ok)
    }

    async fn provision_file_system(
        &self,
        req: &ProvisionRequest,
        class: &FileSystemClass,
    ) -> Result<ProvisionedVolume, ProvisionError> {
        let token = creation_token(&req.pv_name);
        let remembered = self.known().get(&req.pv_name).cloned();
        let found = match remembered {
            Some(id) => self
                .api
                .describe_file_system(&FileSystemLookup::Id(id))
                .await
                .map_err(|e| self.after_error(req, &e, "looking up the file system"))?,
            None => None,
        };
        let (fs, fresh) = match found {
            Some(fs) => (fs, false),
            None => {
                if let Err(infeasible) = self.check_network(req, class).await {
                    // A file system from an earlier round (before the class
                    // changed) is rolled back rather than left behind.
                    let earlier = self
                        .api
                        .describe_file_system(&FileSystemLookup::CreationToken(token.clone()))
                        .await
                        .map_err(|e| self.after_error(req, &e, "looking up the file system"))?;
                    return match earlier {
                        Some(fs) if owned(&fs.tags, &req.pv_name, &self.defaults.cluster_id).is_ok() => {
                            Err(self.start_rollback(req, &fs, infeasible.chain()).await)
                        }
                        _ => Err(infeasible),
                    };
                }
                self.create_file_system(req, class, &token).await?
            }
        };
        self.known().insert(req.pv_name.clone(), fs.id.clone());
        if let Some(reason) = self.rollback_reason(req, &fs) {
            return Err(self.continue_rollback(req, &fs.id, &reason).await);
        }
        match fs.state {
            LifeCycle::Available | LifeCycle::Updating => {}
            LifeCycle::Creating => {
                return Err(ProvisionError::retry_after(
                    format!("EFS file system {} is being created", fs.id),
                    POLL_FILE_SYSTEM,
                ));
            }
            LifeCycle::Deleting | LifeCycle::Deleted => {
                self.known().remove(&req.pv_name);
                return Err(ProvisionError::in_progress(format!(
                    "EFS file system {} with creation token {token} is being deleted; a new one is created \
                     once it is gone",
                    fs.id
                )));
            }
            LifeCycle::Error => {
                let reason = format!("EFS file system {} failed (state error)", fs.id);
                return Err(self.start_rollback(req, &fs, reason).await);
            }
        }
        let mut existing = if fresh {
            Vec::new()
        } else {
            self.api
                .describe_mount_targets(&fs.id)
                .await
                .map_err(|e| self.after_error(req, &e, "listing mount targets"))?
        };
        let subnets = match self.mount_target_subnets(req, class, &existing).await {
            Ok(subnets) => subnets,
            Err(Ok(reason)) => return Err(self.start_rollback(req, &fs, reason).await),
            Err(Err(answer)) => return Err(answer),
        };
        let mut plan = plan_mount_targets(&subnets, &existing);
        if !plan.missing.is_empty() {
            if !class.lifecycle.is_empty()
                && let Err(e) = self.api.put_lifecycle_configuration(&fs.id, &class.lifecycle).await
            {
                return Err(self.fail_after_create(req, &fs, &e, "setting the lifecycle policy").await);
            }
            let mut conflicts = Vec::new();
            for subnet in &plan.missing {
                match self.api.create_mount_target(&fs.id, subnet, &class.security_groups).await {
                    Ok(mt) => existing.push(mt),
                    Err(e) if e.kind == ErrorKind::Conflict => conflicts.push((subnet.clone(), e)),
                    Err(e) => {
                        let doing = format!("creating a mount target in {subnet}");
                        return Err(self.fail_after_create(req, &fs, &e, &doing).await);
                    }
                }
            }
            if !conflicts.is_empty() {
                existing = self
                    .api
                    .describe_mount_targets(&fs.id)
                    .await
                    .map_err(|e| self.after_error(req, &e, "listing mount targets"))?;
                for (subnet, e) in conflicts {
                    if existing.iter().any(|m| m.subnet_id == subnet) {
                        continue; // Ours already: made by an earlier round.
                    }
                    let others: Vec<String> = existing
                        .iter()
                        .map(|m| format!("{} ({})", m.subnet_id, m.availability_zone.as_deref().unwrap_or("?")))
                        .collect();
                    let reason = format!(
                        "cannot create a mount target in subnet {subnet}: {}. EFS allows one mount target per \
                         availability zone, all in one VPC; existing in: {}. List one subnet per zone",
                        e.code,
                        if others.is_empty() { "none".to_string() } else { others.join(" ") }
                    );
                    return Err(self.start_rollback(req, &fs, reason).await);
                }
            }
            plan = plan_mount_targets(&subnets, &existing);
        }
        if !plan.failed.is_empty() {
            let reason =
                format!("mount target(s) {} of EFS file system {} failed (state error)", plan.failed.join(" "), fs.id);
            return Err(self.start_rollback(req, &fs, reason).await);
        }
        if !plan.ready() {
            return Err(ProvisionError::retry_after(
                format!(
                    "waiting for mount targets {} of EFS file system {} to become available",
                    plan.waiting.join(", "),
                    fs.id
                ),
                POLL_MOUNT_TARGETS,
            ));
        }
        let zones: Vec<String> = existing
            .iter()
            .filter(|m| subnets.contains(&m.subnet_id))
            .filter_map(|m| m.availability_zone.clone())
            .collect();
        let class_mount_options = req.class.mount_options.as_ref().is_some_and(|m| !m.is_empty());
        info!(pv = req.pv_name, file_system = fs.id, "EFS file system ready");
        let mut volume = file_system_volume(&fs.id, &self.defaults.region, class.source, class_mount_options, &zones);
        if let Some(zone) = &class.availability_zone {
            // One Zone: only that zone has a mount target, whatever the source.
            pin_to_zones(&mut volume, std::slice::from_ref(zone));
        }
        Ok(volume)
    }

    /// Creates the file system, or finds the one an earlier attempt created.
    async fn create_file_system(
        &self,
        req: &ProvisionRequest,
        class: &FileSystemClass,
        token: &str,
    ) -> Result<(FileSystem, bool), ProvisionError> {
        let spec = NewFileSystem {
            creation_token: token.to_string(),
            performance_mode: class.performance_mode,
            throughput: class.throughput,
            encrypted: class.encrypted,
            kms_key_id: class.kms_key_id.clone(),
            tags: tags_with(req, &self.defaults.cluster_id, &class.tags),
        };
        let options =
            FileSystemOptions { backup: class.backup, availability_zone_name: class.availability_zone.clone() };
        match self.api.create_file_system_with(&spec, &options).await {
            Ok(fs) => {
                info!(pv = req.pv_name, file_system = fs.id, "created EFS file system");
                Ok((fs, true))
            }
            Err(ApiError { kind: ErrorKind::AlreadyExists(id), .. }) => {
                let lookup = match id {
                    Some(id) => FileSystemLookup::Id(id),
                    None => FileSystemLookup::CreationToken(token.to_string()),
                };
                match self.api.describe_file_system(&lookup).await {
                    Ok(Some(fs)) => match owned(&fs.tags, &req.pv_name, &self.defaults.cluster_id) {
                        Ok(()) => Ok((fs, false)),
                        // Not ours: nothing of ours exists under this token.
                        Err(wrong) => Err(ProvisionError::failed(format!(
                            "EFS file system {} already has creation token {token}, but its tags do not show this \
                             provisioner created it for this volume ({wrong}); not using it",
                            fs.id
                        ))),
                    },
                    Ok(None) => Err(ProvisionError::in_progress(format!(
                        "EFS reports a file system with creation token {token} that it does not list yet"
                    ))),
                    Err(e) => Err(self.after_error(req, &e, "looking up the existing file system")),
                }
            }
            // Nothing was created in these cases.
            Err(e) if e.kind == ErrorKind::Throttled => Err(self.after_error(req, &e, "creating the file system")),
            Err(e) if e.kind == ErrorKind::BadRequest => Err(ProvisionError::infeasible(Cause::context(
                format!("EFS rejected the file system for StorageClass {}", req.class.name_any()),
                e,
            ))),
            // The request may have been carried out before the answer was lost.
            Err(e) if matches!(e.kind, ErrorKind::Transient | ErrorKind::Unreachable | ErrorKind::Credentials) => {
                Err(self.after_error(req, &e, "creating the file system"))
            }
            Err(e) => Err(ProvisionError::failed(explain(&e))),
        }
    }

    async fn fail_after_create(
        &self,
        req: &ProvisionRequest,
        fs: &FileSystem,
        e: &ApiError,
        doing: &str,
    ) -> ProvisionError {
        if retryable(e) || matches!(e.kind, ErrorKind::Credentials | ErrorKind::Unreachable) {
            return self.after_error(req, e, doing);
        }
        self.start_rollback(req, fs, Cause::context(doing, explain(e)).chain()).await
    }

    /// Why `fs` is being rolled back, if it is: this process's memo (the
    /// full text), else the tag (an earlier process's, in tag characters).
    fn rollback_reason(&self, req: &ProvisionRequest, fs: &FileSystem) -> Option<String> {
        lock(&self.rolling_back).get(&req.pv_name).cloned().or_else(|| fs.tags.get(TAG_ROLLBACK).cloned())
    }

    /// Starts rolling back a file system that can never become usable:
    /// records why (the tag, so the next process knows too), then tears down.
    async fn start_rollback(&self, req: &ProvisionRequest, fs: &FileSystem, reason: String) -> ProvisionError {
        warn!(pv = req.pv_name, file_system = fs.id, reason, "rolling back the file system");
        lock(&self.rolling_back).insert(req.pv_name.clone(), reason.clone());
        let mark = BTreeMap::from([(TAG_ROLLBACK.to_string(), tag_text(&reason))]);
        if let Err(e) = self.api.tag_resource(&fs.id, &mark).await {
            warn!(file_system = fs.id, error = %e, "could not tag the file system as rolled back; a restart may retry it");
        }
        self.continue_rollback(req, &fs.id, &reason).await
    }

    /// One round of a rollback: tear down, nothing else.
    async fn continue_rollback(&self, req: &ProvisionRequest, fs_id: &str, reason: &str) -> ProvisionError {
        match self.teardown(fs_id).await {
            // Nothing is left, and the next attempt would most likely fail
            // the same way: the engine's slow retry (or an edit of the
            // class) paces new file systems, not every backoff step.
            Ok(Teardown::Gone) => {
                self.known().remove(&req.pv_name);
                lock(&self.rolling_back).remove(&req.pv_name);
                ProvisionError::infeasible(format!(
                    "{reason}; the file system {fs_id} was deleted; a new one is tried after the retry delay or \
                     when the StorageClass changes"
                ))
            }
            Ok(Teardown::Pending) => self.attention(req, rolling_back_message(reason, fs_id)),
            Err(e) if retryable(&e) => {
                debug!(file_system = fs_id, error = %e, "rollback round failed; retrying");
                self.attention(req, rolling_back_message(reason, fs_id))
            }
            Err(e) => self.attention(
                req,
                Cause::context(format!("{}; removing it failed", rolling_back_message(reason, fs_id)), explain(&e)),
            ),
        }
    }

    /// Deletes a file system's mount targets and then the file system; one
    /// round, never waiting.
    pub async fn teardown(&self, fs_id: &str) -> Result<Teardown, ApiError> {
        let mount_targets = match self.api.describe_mount_targets(fs_id).await {
            Ok(m) => m,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(Teardown::Gone),
            Err(e) => return Err(e),
        };
        let mut still_deleting = false;
        for mt in &mount_targets {
            match mt.state {
                LifeCycle::Deleted => {}
                LifeCycle::Deleting => still_deleting = true,
                _ => match self.api.delete_mount_target(&mt.id).await {
                    Ok(()) => debug!(file_system = fs_id, mount_target = mt.id, "deleting mount target"),
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                },
            }
        }
        if still_deleting {
            return Ok(Teardown::Pending);
        }
        // Mount targets just asked to go may still hold the file system
        // (FileSystemInUse while any exists, deleting ones included): then next round.
        match self.api.delete_file_system(fs_id).await {
            Ok(()) => {
                info!(file_system = fs_id, "deleted EFS file system");
                Ok(Teardown::Gone)
            }
            Err(e) if e.kind == ErrorKind::NotFound => Ok(Teardown::Gone),
            Err(e) if e.kind == ErrorKind::InUse => Ok(Teardown::Pending),
            Err(e) => Err(e),
        }
    }

    fn allocation_lock(&self, fs_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.allocation).entry(fs_id.to_string()).or_default().clone()
    }

    async fn list_access_points(&self, fs_id: &str) -> Result<Vec<AccessPoint>, ApiError> {
        let mut all = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self.api.describe_access_points(fs_id, next.as_deref(), MAX_ACCESS_POINT_PAGE).await?;
            all.extend(page.items);
            match page.next_token {
                Some(t) => next = Some(t),
                None => return Ok(all),
            }
        }
    }

    async fn provision_access_point(
        &self,
        req: &ProvisionRequest,
        class: &AccessPointClass,
    ) -> Result<ProvisionedVolume, ProvisionError> {
        let fs_id = &class.file_system_id;
        let ns = req.claim.namespace().unwrap_or_default();
        let path = root_directory(class, &req.pv_name, &ns, &req.claim.name_any()).map_err(|e| {
            ProvisionError::infeasible(Cause::context(format!("StorageClass {}", req.class.name_any()), e))
        })?;
        let token = creation_token(&req.pv_name);
        let lock = self.allocation_lock(fs_id);
        let _serialised = lock.lock().await;
        let existing = match self.list_access_points(fs_id).await {
            Ok(list) => list,
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(ProvisionError::infeasible(Cause::context(
                    format!(
                        "StorageClass {}: fileSystemId {fs_id} does not exist in {}",
                        req.class.name_any(),
                        self.defaults.region
                    ),
                    e,
                )));
            }
            Err(e) => return Err(self.after_error(req, &e, "listing access points")),
        };
        let ours = existing.iter().find(|a| {
            a.tags.get(TAG_PV_NAME) == Some(&req.pv_name) || a.client_token.as_deref() == Some(token.as_str())
        });
        let ap = match ours {
            Some(ap) => ap.clone(),
            None => {
                let (uid, gid) = match class.identity {
                    Identity::Fixed { uid, gid } => (uid, gid),
                    Identity::Range { start, end, uid } => {
                        let gid = free_gid(start, end, &existing).ok_or_else(|| {
                            ProvisionError::failed(format!(
                                "no free gid in gidRangeStart..gidRangeEnd {start}..{end}: every one is used by an \
                                 access point of {fs_id}; widen the range"
                            ))
                        })?;
                        (uid.unwrap_or(gid), gid)
                    }
                };
                let spec = NewAccessPoint {
                    client_token: token.clone(),
                    file_system_id: fs_id.clone(),
                    uid,
                    gid,
                    path: path.clone(),
                    permissions: class.directory_perms.clone(),
                    tags: tags_with(req, &self.defaults.cluster_id, &class.tags),
                };
                match self.api.create_access_point(&spec).await {
                    Ok(ap) => {
                        info!(pv = req.pv_name, access_point = ap.id, gid, path, "created EFS access point");
                        ap
                    }
                    Err(ApiError { kind: ErrorKind::AlreadyExists(id), .. }) => {
                        self.existing_access_point(req, id.as_deref(), &token).await?
                    }
                    Err(e) if e.kind == ErrorKind::BadRequest => {
                        return Err(ProvisionError::infeasible(Cause::context(
                            format!("EFS rejected the access point for StorageClass {}", req.class.name_any()),
                            e,
                        )));
                    }
                    Err(e) if retryable(&e) || explain_setup(&e, &self.defaults.region).is_some() => {
                        return Err(self.after_error(req, &e, "creating the access point"));
                    }
                    Err(e) => return Err(ProvisionError::failed(explain(&e))),
                }
            }
        };
        match ap.state {
            LifeCycle::Available | LifeCycle::Updating => Ok(access_point_volume(fs_id, &ap.id, &self.defaults.region)),
            LifeCycle::Creating => Err(ProvisionError::retry_after(
                format!("EFS access point {} is being created", ap.id),
                POLL_ACCESS_POINT,
            )),
            LifeCycle::Deleting | LifeCycle::Deleted => Err(ProvisionError::in_progress(format!(
                "EFS access point {} for this volume is being deleted; a new one is created once it is gone",
                ap.id
            ))),
            LifeCycle::Error => {
                let _ = self.api.delete_access_point(&ap.id).await;
                Err(ProvisionError::failed(format!("EFS access point {} failed (state error); it was deleted", ap.id)))
            }
        }
    }

    /// The access point an `AccessPointAlreadyExists` answer points at,
    /// once its token or tags show it is this claim's.
    async fn existing_access_point(
        &self,
        req: &ProvisionRequest,
        id: Option<&str>,
        token: &str,
    ) -> Result<AccessPoint, ProvisionError> {
        let Some(id) = id else {
            return Err(ProvisionError::in_progress(format!(
                "EFS reports an access point with client token {token} that it does not list yet"
            )));
        };
        match self.api.describe_access_point(id).await {
            Ok(Some(ap))
                if ap.client_token.as_deref() == Some(token)
                    || owned(&ap.tags, &req.pv_name, &self.defaults.cluster_id).is_ok() =>
            {
                info!(pv = req.pv_name, access_point = ap.id, "found the access point an earlier attempt created");
                Ok(ap)
            }
            Ok(Some(ap)) => Err(ProvisionError::failed(format!(
                "EFS says access point {} already has client token {token}, but neither its token nor its tags \
                 show it was created for this volume; not using it",
                ap.id
            ))),
            Ok(None) => Err(ProvisionError::in_progress(format!(
                "EFS reports access point {id} with client token {token}, which it does not list yet"
            ))),
            Err(e) => Err(self.after_error(req, &e, "looking up the existing access point")),
        }
    }

    async fn delete_file_system_volume(&self, volume: &PersistentVolume, fs_id: &str) -> Result<(), DeleteError> {
        let pv_name = volume.name_any();
        let fs = match self.api.describe_file_system(&FileSystemLookup::Id(fs_id.to_string())).await {
            Ok(Some(fs)) => fs,
            Ok(None) => return Ok(()),
            Err(e) => return Err(delete_error(e)),
        };
        if let Err(wrong) = owned(&fs.tags, &pv_name, &self.defaults.cluster_id) {
            return Err(DeleteError::failed(format!(
                "not deleting EFS file system {fs_id} for volume {pv_name}: its tags do not show this provisioner \
                 created it for this volume in cluster {} ({wrong}); delete it by hand if it should go",
                self.defaults.cluster_id
            )));
        }
        match self.teardown(fs_id).await {
            Ok(Teardown::Gone) => {
                self.known().retain(|_, id| id != fs_id);
                Ok(())
            }
            Ok(Teardown::Pending) => Err(DeleteError::in_use(format!(
                "waiting for the mount targets of EFS file system {fs_id} to be deleted"
            ))),
            Err(e) => Err(delete_error(e)),
        }
    }

    async fn delete_access_point_volume(&self, volume: &PersistentVolume, ap_id: &str) -> Result<(), DeleteError> {
        let pv_name = volume.name_any();
        let ap = match self.api.describe_access_point(ap_id).await {
            Ok(Some(ap)) => ap,
            Ok(None) => return Ok(()),
            Err(e) => return Err(delete_error(e)),
        };
        if let Err(wrong) = owned(&ap.tags, &pv_name, &self.defaults.cluster_id) {
            return Err(DeleteError::failed(format!(
                "not deleting EFS access point {ap_id} for volume {pv_name}: its tags do not show this provisioner \
                 created it for this volume in cluster {} ({wrong})",
                self.defaults.cluster_id
            )));
        }
        match self.api.delete_access_point(ap_id).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(delete_error(e)),
        }
    }
}

fn rolling_back_message(reason: &str, fs_id: &str) -> String {
    format!(
        "{reason}; removing the EFS file system {fs_id} created for this claim (its mount targets first), and \
         creating nothing new for it until it is gone"
    )
}

fn delete_error(e: ApiError) -> DeleteError {
    match e.kind {
        ErrorKind::Throttled => {
            DeleteError::in_use(Cause::context(format!("EFS is throttling {}; slowing down", e.operation), e))
        }
        ErrorKind::InUse | ErrorKind::Transient => DeleteError::in_use(e),
        _ => DeleteError::failed(explain_setup(&e, "").unwrap_or_else(|| explain(&e))),
    }
}

#[async_trait]
impl<A: EfsApi> Provisioner for EfsProvisioner<A> {
    async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        let config = parse_class(&self.defaults, &req.class.provisioner, req.parameters()).map_err(|e| {
            ProvisionError::infeasible(Cause::context(format!("StorageClass {}", req.class.name_any()), e))
        })?;
        match config {
            ClassConfig::FileSystem(c) => self.provision_file_system(req, &c).await,
            ClassConfig::AccessPoint(c) => self.provision_access_point(req, &c).await,
        }
    }

    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
        let saved = saved_volume_checked(volume).map_err(|e| {
            DeleteError::failed(Cause::context("not deleting anything; delete the EFS resources by hand", e))
        })?;
        let region = match &saved {
            SavedVolume::FileSystem { region, .. } | SavedVolume::AccessPoint { region, .. } => region.clone(),
        };
        if let Some(r) = region.filter(|r| *r != self.defaults.region) {
            return Err(DeleteError::failed(format!(
                "volume {} is in region {r}, this provisioner works in {}",
                volume.name_any(),
                self.defaults.region
            )));
        }
        match saved {
            SavedVolume::FileSystem { file_system_id, .. } => {
                self.delete_file_system_volume(volume, &file_system_id).await
            }
            SavedVolume::AccessPoint { access_point_id, .. } => {
                self.delete_access_point_volume(volume, &access_point_id).await
            }
        }
    }
}
