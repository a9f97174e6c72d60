//! [`EfsProvisioner`]: the claim → EFS decisions, over any [`EfsApi`].
//!
//! # File system per claim
//! One round of [`provision`](Provisioner::provision) moves the backend as
//! far as it can without waiting, and answers "in progress" when AWS is still
//! working, so no worker sits in a poll loop; the engine calls again with
//! backoff:
//!
//! 1. `CreateFileSystem` with the creation token of the PV name (tags in the
//!    same call). `FileSystemAlreadyExists` means an earlier round (or an
//!    earlier process) created it: look it up and go on. Within one process
//!    the id is remembered, so later rounds describe it directly instead
//!    (the memo is only a shortcut; correctness rests on the token).
//! 2. `creating` → in progress; `error` → roll back (delete it) and fail;
//!    `deleting` → in progress until it is gone and a new one can be made.
//! 3. A mount target in each listed subnet (`MountTargetConflict` for an
//!    existing one there is fine; for another subnet of the same zone it is
//!    a clear error), and the lifecycle policy, if any, in the same round.
//! 4. All mount targets `available` → the volume.
//!
//! Errors that no retry can fix once a file system exists (an unknown
//! subnet, a missing permission) roll the file system back, so a failed claim
//! never leaves one behind.
//!
//! # Access point per claim
//! The file system's access points are listed (needed for the gid range, and
//! the only reliable idempotency check where client tokens are ignored); the
//! one tagged with the PV name is reused, or one is created with the lowest
//! free gid. Allocation is serialised per file system inside the process, and
//! derived from AWS's state, so it survives restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use provisioner_core::{DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
use tracing::{debug, info, warn};

use crate::api::{
    AccessPoint, ApiError, EfsApi, ErrorKind, FileSystem, FileSystemLookup, LifeCycle, MountTarget, NewAccessPoint,
    NewFileSystem,
};
use crate::config::{AccessPointClass, ClassConfig, Defaults, FileSystemClass, Identity, parse_class, root_directory};
use crate::volume::{SavedVolume, access_point_volume, file_system_volume, saved_volume};

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
    let ns = req.claim.namespace().unwrap_or_default();
    let name = req.claim.name_any();
    BTreeMap::from([
        ("Name".to_string(), format!("{ns}/{name}")),
        (TAG_PV_NAME.to_string(), req.pv_name.clone()),
        (TAG_PVC_NAMESPACE.to_string(), ns),
        (TAG_PVC_NAME.to_string(), name),
        (TAG_CLUSTER.to_string(), cluster_id.to_string()),
        (TAG_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ])
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

/// The message for an error that retrying will not fix.
pub fn explain(e: &ApiError) -> String {
    match (&e.kind, e.code.as_str()) {
        (ErrorKind::AccessDenied, _) => format!(
            "not authorized: the provisioner's IAM role needs {} ({}: {})",
            e.operation.iam_actions(),
            e.code,
            e.message
        ),
        (ErrorKind::LimitExceeded, "FileSystemLimitExceeded") => format!(
            "the AWS account has reached its quota of EFS file systems in this region (1,000 by default, \
             adjustable in Service Quotas): delete unused file systems or request an increase ({})",
            e.message
        ),
        (ErrorKind::LimitExceeded, "AccessPointLimitExceeded") => {
            format!("the file system has reached its quota of access points (10,000 per file system): {}", e.message)
        }
        _ => e.to_string(),
    }
}

fn retryable(e: &ApiError) -> bool {
    matches!(e.kind, ErrorKind::Throttled | ErrorKind::Transient)
}

fn in_progress(e: &ApiError, doing: &str) -> ProvisionError {
    match e.kind {
        ErrorKind::Throttled => {
            ProvisionError::InProgress(format!("EFS is throttling {} while {doing}; slowing down", e.operation))
        }
        _ => ProvisionError::InProgress(format!("{doing}: {e}; retrying")),
    }
}

/// The EFS provisioner (see the module docs).
pub struct EfsProvisioner<A> {
    api: A,
    defaults: Defaults,
    /// PV name → file system id, learnt in this process (a shortcut only).
    known: Mutex<HashMap<String, String>>,
    /// Serialises gid allocation per shared file system.
    allocation: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<A: EfsApi> EfsProvisioner<A> {
    /// A provisioner calling `api`, with `defaults` for every class.
    pub fn new(api: A, defaults: Defaults) -> Self {
        EfsProvisioner { api, defaults, known: Mutex::default(), allocation: Mutex::default() }
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
        self.known.lock().unwrap_or_else(|p| p.into_inner())
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
                .map_err(|e| in_progress(&e, "looking up the file system"))?,
            None => None,
        };
        let (fs, fresh) = match found {
            Some(fs) => (fs, false),
            None => self.create_file_system(req, class, &token).await?,
        };
        self.known().insert(req.pv_name.clone(), fs.id.clone());
        match fs.state {
            LifeCycle::Available | LifeCycle::Updating => {}
            LifeCycle::Creating => {
                return Err(ProvisionError::InProgress(format!("EFS file system {} is being created", fs.id)));
            }
            LifeCycle::Deleting | LifeCycle::Deleted => {
                self.known().remove(&req.pv_name);
                return Err(ProvisionError::InProgress(format!(
                    "EFS file system {} with creation token {token} is being deleted; a new one is created \
                     once it is gone",
                    fs.id
                )));
            }
            LifeCycle::Error => {
                let msg = format!("EFS file system {} failed (state error)", fs.id);
                return Err(self.roll_back(req, &fs.id, msg).await);
            }
        }
        let mut existing = if fresh {
            Vec::new()
        } else {
            self.api.describe_mount_targets(&fs.id).await.map_err(|e| in_progress(&e, "listing mount targets"))?
        };
        let mut plan = plan_mount_targets(&class.subnets, &existing);
        if !plan.missing.is_empty() {
            if !class.lifecycle.is_empty()
                && let Err(e) = self.api.put_lifecycle_configuration(&fs.id, &class.lifecycle).await
            {
                return Err(self.fail_after_create(req, &fs.id, &e, "setting the lifecycle policy").await);
            }
            let mut conflicts = Vec::new();
            for subnet in &plan.missing {
                match self.api.create_mount_target(&fs.id, subnet, &class.security_groups).await {
                    Ok(mt) => existing.push(mt),
                    Err(e) if e.kind == ErrorKind::Conflict => conflicts.push((subnet.clone(), e)),
                    Err(e) => {
                        let doing = format!("creating a mount target in {subnet}");
                        return Err(self.fail_after_create(req, &fs.id, &e, &doing).await);
                    }
                }
            }
            if !conflicts.is_empty() {
                existing = self
                    .api
                    .describe_mount_targets(&fs.id)
                    .await
                    .map_err(|e| in_progress(&e, "listing mount targets"))?;
                for (subnet, e) in conflicts {
                    if existing.iter().any(|m| m.subnet_id == subnet) {
                        continue; // Ours already: made by an earlier round.
                    }
                    let others: Vec<String> = existing
                        .iter()
                        .map(|m| {
                            format!("{} in {} ({})", m.id, m.subnet_id, m.availability_zone.as_deref().unwrap_or("?"))
                        })
                        .collect();
                    let msg = format!(
                        "cannot create a mount target in subnet {subnet}: {} ({}). EFS allows one mount target per \
                         availability zone, all in one VPC; existing: {}. List one subnet per zone",
                        e.code,
                        e.message,
                        if others.is_empty() { "none".to_string() } else { others.join(", ") }
                    );
                    return Err(self.roll_back(req, &fs.id, msg).await);
                }
            }
            plan = plan_mount_targets(&class.subnets, &existing);
        }
        if !plan.failed.is_empty() {
            let msg =
                format!("mount target(s) {} of EFS file system {} failed (state error)", plan.failed.join(", "), fs.id);
            return Err(self.roll_back(req, &fs.id, msg).await);
        }
        if !plan.ready() {
            return Err(ProvisionError::InProgress(format!(
                "waiting for mount targets {} of EFS file system {} to become available",
                plan.waiting.join(", "),
                fs.id
            )));
        }
        let class_mount_options = req.class.mount_options.as_ref().is_some_and(|m| !m.is_empty());
        info!(pv = req.pv_name, file_system = fs.id, "EFS file system ready");
        Ok(file_system_volume(&fs.id, &self.defaults.region, class.source, class_mount_options))
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
            tags: tags(req, &self.defaults.cluster_id),
        };
        match self.api.create_file_system(&spec).await {
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
                    Ok(Some(fs)) => Ok((fs, false)),
                    Ok(None) => Err(ProvisionError::InProgress(format!(
                        "EFS reports a file system with creation token {token} that it does not list yet"
                    ))),
                    Err(e) => Err(in_progress(&e, "looking up the existing file system")),
                }
            }
            // Nothing was created in these cases.
            Err(e) if e.kind == ErrorKind::Throttled => Err(in_progress(&e, "creating the file system")),
            Err(e) if e.kind == ErrorKind::BadRequest => Err(ProvisionError::Infeasible(format!(
                "EFS rejected the file system for StorageClass {}: {}: {}",
                req.class.name_any(),
                e.code,
                e.message
            ))),
            // The request may have been carried out before the answer was lost.
            Err(e) if e.kind == ErrorKind::Transient => Err(in_progress(&e, "creating the file system")),
            Err(e) => Err(ProvisionError::Final(explain(&e))),
        }
    }

    async fn fail_after_create(
        &self,
        req: &ProvisionRequest,
        fs_id: &str,
        e: &ApiError,
        doing: &str,
    ) -> ProvisionError {
        if retryable(e) {
            return in_progress(e, doing);
        }
        self.roll_back(req, fs_id, format!("{doing}: {}", explain(e))).await
    }

    /// Deletes a file system that can never become usable, reporting `msg`.
    async fn roll_back(&self, req: &ProvisionRequest, fs_id: &str, msg: String) -> ProvisionError {
        warn!(pv = req.pv_name, file_system = fs_id, msg, "removing the file system");
        match self.teardown(fs_id).await {
            Ok(Teardown::Gone) => {
                self.known().remove(&req.pv_name);
                ProvisionError::Final(format!(
                    "{msg}; the file system {fs_id} was deleted, and a new one is tried on the next attempt"
                ))
            }
            Ok(Teardown::Pending) => ProvisionError::InProgress(format!("{msg}; deleting the file system {fs_id}")),
            Err(e) => ProvisionError::InProgress(format!("{msg}; deleting the file system {fs_id} failed: {e}")),
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
        // Mount targets just asked to go may still hold the file system: then try next round.
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
        self.allocation.lock().unwrap_or_else(|p| p.into_inner()).entry(fs_id.to_string()).or_default().clone()
    }

    async fn list_access_points(&self, fs_id: &str) -> Result<Vec<AccessPoint>, ApiError> {
        let mut all = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self.api.describe_access_points(fs_id, next.as_deref()).await?;
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
        let path = root_directory(class, &req.pv_name, &ns, &req.claim.name_any())
            .map_err(|e| ProvisionError::Infeasible(format!("StorageClass {}: {e}", req.class.name_any())))?;
        let token = creation_token(&req.pv_name);
        let lock = self.allocation_lock(fs_id);
        let _serialised = lock.lock().await;
        let existing = match self.list_access_points(fs_id).await {
            Ok(list) => list,
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(ProvisionError::Infeasible(format!(
                    "StorageClass {}: fileSystemId {fs_id} does not exist in {}",
                    req.class.name_any(),
                    self.defaults.region
                )));
            }
            Err(e) if retryable(&e) => return Err(in_progress(&e, "listing access points")),
            Err(e) => return Err(ProvisionError::Final(explain(&e))),
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
                            ProvisionError::Final(format!(
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
                    tags: tags(req, &self.defaults.cluster_id),
                };
                match self.api.create_access_point(&spec).await {
                    Ok(ap) => {
                        info!(pv = req.pv_name, access_point = ap.id, gid, path, "created EFS access point");
                        ap
                    }
                    Err(e) if matches!(e.kind, ErrorKind::AlreadyExists(_)) || retryable(&e) => {
                        return Err(in_progress(&e, "creating the access point"));
                    }
                    Err(e) if e.kind == ErrorKind::BadRequest => {
                        return Err(ProvisionError::Infeasible(format!(
                            "EFS rejected the access point for StorageClass {}: {}: {}",
                            req.class.name_any(),
                            e.code,
                            e.message
                        )));
                    }
                    Err(e) => return Err(ProvisionError::Final(explain(&e))),
                }
            }
        };
        match ap.state {
            LifeCycle::Available | LifeCycle::Updating => Ok(access_point_volume(fs_id, &ap.id, &self.defaults.region)),
            LifeCycle::Creating => {
                Err(ProvisionError::InProgress(format!("EFS access point {} is being created", ap.id)))
            }
            LifeCycle::Deleting | LifeCycle::Deleted => Err(ProvisionError::InProgress(format!(
                "EFS access point {} for this volume is being deleted; a new one is created once it is gone",
                ap.id
            ))),
            LifeCycle::Error => {
                let _ = self.api.delete_access_point(&ap.id).await;
                Err(ProvisionError::Final(format!("EFS access point {} failed (state error); it was deleted", ap.id)))
            }
        }
    }
}

fn delete_error(e: ApiError) -> DeleteError {
    match e.kind {
        ErrorKind::Throttled => DeleteError::InUse(format!("EFS is throttling {}; slowing down", e.operation)),
        ErrorKind::InUse => DeleteError::InUse(e.to_string()),
        _ => DeleteError::Failed(explain(&e)),
    }
}

#[async_trait]
impl<A: EfsApi> Provisioner for EfsProvisioner<A> {
    async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        let config = parse_class(&self.defaults, &req.class.provisioner, req.parameters())
            .map_err(|e| ProvisionError::Infeasible(format!("StorageClass {}: {e}", req.class.name_any())))?;
        match config {
            ClassConfig::FileSystem(c) => self.provision_file_system(req, &c).await,
            ClassConfig::AccessPoint(c) => self.provision_access_point(req, &c).await,
        }
    }

    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
        let saved = saved_volume(volume).ok_or_else(|| {
            DeleteError::Failed(format!(
                "volume {} names no EFS file system (annotation efs.aws.skpr.io/file-system-id); delete its \
                 backend by hand",
                volume.name_any()
            ))
        })?;
        let region = match &saved {
            SavedVolume::FileSystem { region, .. } | SavedVolume::AccessPoint { region, .. } => region.clone(),
        };
        if let Some(r) = region.filter(|r| *r != self.defaults.region) {
            return Err(DeleteError::Failed(format!(
                "volume {} is in region {r}, this provisioner works in {}",
                volume.name_any(),
                self.defaults.region
            )));
        }
        match saved {
            SavedVolume::FileSystem { file_system_id, .. } => match self.teardown(&file_system_id).await {
                Ok(Teardown::Gone) => {
                    if let Some(claim) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                        debug!(claim = ?claim.name, "file system deleted");
                    }
                    self.known().retain(|_, id| *id != file_system_id);
                    Ok(())
                }
                Ok(Teardown::Pending) => Err(DeleteError::InUse(format!(
                    "waiting for the mount targets of EFS file system {file_system_id} to be deleted"
                ))),
                Err(e) => Err(delete_error(e)),
            },
            SavedVolume::AccessPoint { access_point_id, .. } => {
                match self.api.delete_access_point(&access_point_id).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(delete_error(e)),
                }
            }
        }
    }
}
