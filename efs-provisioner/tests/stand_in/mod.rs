//! An in-process stand-in for EFS (and the two EC2 lookups the provisioner
//! makes) that follows AWS's documented rules where moto is lenient, for
//! tests under paused tokio time. Use it from a test crate with
//! `#[path = "stand_in/mod.rs"] mod stand_in;` (or `mod stand_in;` from
//! `tests/`).
//!
//! Modelled rules (from the EFS API reference):
//! 1. **Lifecycle takes time**: a file system is `creating` for
//!    [`Timing::file_system_create`] (AWS: about 30 s), a mount target for
//!    [`Timing::mount_target_create`] (about 90 s); deleting takes as long,
//!    and a `deleting` resource is still listed until then.
//! 2. A `deleting` mount target **still holds its zone** (a new one there is
//!    a `MountTargetConflict`) and still **keeps `DeleteFileSystem`
//!    answering `FileSystemInUse`**, like any mount target.
//! 3. **One mount target per availability zone** and **all mount targets of
//!    a file system in one VPC**: otherwise `MountTargetConflict`. Subnets
//!    have a zone and a VPC ([`World::subnets`]).
//! 4. `SubnetNotFound` for an unknown subnet; `SecurityGroupNotFound` for a
//!    group that does not exist in the subnet's VPC; at most 5 groups
//!    (`SecurityGroupLimitExceeded`); none means the VPC's default group.
//! 5. Mount targets, lifecycle policies and access points only on an
//!    `available` file system (`IncorrectFileSystemLifeCycleState`).
//! 6. **Tags**: key 1 to 128 characters, value up to 256, characters from
//!    letters, digits, spaces and `_.:/=+-@`, no key starting with `aws:`,
//!    at most 50 per resource (`BadRequest` otherwise).
//! 7. **Lifecycle rules**: `TransitionToArchive` needs Elastic throughput and
//!    General Purpose performance, and must be later than `TransitionToIA`;
//!    Elastic throughput is not available with maxIO (`BadRequest`).
//! 8. **Idempotency**: a creation token in use (also by a `deleting` file
//!    system) is `FileSystemAlreadyExists` with its id; a client token in use
//!    is `AccessPointAlreadyExists` with the access point's id.
//! 9. **Quotas**: file systems per region ([`World::max_file_systems`], 1,000),
//!    access points per file system (10,000); `DescribeAccessPoints` pages
//!    of at most 1,000.
//! 10. **Eventual consistency** of access point listings: a new access point
//!     is listed only after [`Timing::access_point_listed`].
//! 11. Faults on demand: **AccessDenied** per operation (optionally for one
//!     resource only, e.g. one subnet), **throttling** (`ThrottlingException`
//!     for the next n calls of an operation), **credential** and
//!     **connection** failures as the SDK layer reports them
//!     ([`ErrorKind::Credentials`], [`ErrorKind::Unreachable`]), **a response
//!     that never comes**, and new file systems that end in `error`.
//!
//! 12. **One Zone** file systems (`AvailabilityZoneName`): the zone must be
//!     one of the region's (`UnsupportedAvailabilityZone`), Max I/O is not
//!     available (`BadRequest`), and the mount target must be in that zone
//!     (`AvailabilityZonesMismatch`; one per zone leaves room for one).
//!     `Backup` is recorded as asked ([`Fs::options`]).
//!
//! Every request is recorded ([`Aws::calls`]) with its time and resource.
#![allow(dead_code, clippy::unwrap_used)] // each test crate uses part of it

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use efs_provisioner::api::{
    AccessPoint, AccessPointPage, ApiError, EfsApi, ErrorKind, FileSystem, FileSystemLookup, FileSystemOptions,
    LifeCycle, LifecycleRule, MAX_ACCESS_POINT_PAGE, MountTarget, NetworkApi, NewAccessPoint, NewFileSystem, Operation,
    PerformanceMode, SecurityGroup, Subnet, Throughput,
};
use tokio::time::Instant;

/// How long AWS takes, by default AWS's own timings.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// `creating` → `available` of a file system.
    pub file_system_create: Duration,
    /// `deleting` → gone of a file system.
    pub file_system_delete: Duration,
    /// `creating` → `available` of a mount target.
    pub mount_target_create: Duration,
    /// `deleting` → gone of a mount target.
    pub mount_target_delete: Duration,
    /// How long a new access point is missing from listings.
    pub access_point_listed: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            file_system_create: Duration::from_secs(30),
            file_system_delete: Duration::from_secs(30),
            mount_target_create: Duration::from_secs(90),
            mount_target_delete: Duration::from_secs(90),
            access_point_listed: Duration::ZERO,
        }
    }
}

impl Timing {
    /// Everything at once (moto's timing).
    pub fn instant() -> Self {
        Timing {
            file_system_create: Duration::ZERO,
            file_system_delete: Duration::ZERO,
            mount_target_create: Duration::ZERO,
            mount_target_delete: Duration::ZERO,
            access_point_listed: Duration::ZERO,
        }
    }

    /// Every duration times `factor`.
    pub fn scaled(self, factor: f64) -> Self {
        let s = |d: Duration| d.mul_f64(factor);
        Timing {
            file_system_create: s(self.file_system_create),
            file_system_delete: s(self.file_system_delete),
            mount_target_create: s(self.mount_target_create),
            mount_target_delete: s(self.mount_target_delete),
            access_point_listed: s(self.access_point_listed),
        }
    }
}

/// A file system as the stand-in holds it.
#[derive(Clone, Debug)]
pub struct Fs {
    /// Its id.
    pub id: String,
    /// What it was created as.
    pub spec: NewFileSystem,
    /// Its tags (create-time and later ones).
    pub tags: BTreeMap<String, String>,
    /// Its lifecycle policy.
    pub lifecycle: Vec<LifecycleRule>,
    /// The options it was created with (backup, One Zone).
    pub options: FileSystemOptions,
    created: Instant,
    deleting_since: Option<Instant>,
    fails: bool,
}

/// A mount target as the stand-in holds it.
#[derive(Clone, Debug)]
pub struct Mt {
    /// Its id.
    pub id: String,
    /// Its file system.
    pub file_system_id: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// Its security groups.
    pub security_groups: Vec<String>,
    created: Instant,
    deleting_since: Option<Instant>,
}

/// An access point as the stand-in holds it.
#[derive(Clone, Debug)]
pub struct Ap {
    /// What it was created as.
    pub spec: NewAccessPoint,
    /// Its id.
    pub id: String,
    created: Instant,
}

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Call {
    /// The operation.
    pub op: Operation,
    /// When it arrived.
    pub at: Instant,
    /// The resource it named (file system, subnet, access point ...).
    pub resource: String,
    /// `DescribeAccessPoints`: the page size asked for.
    pub page_size: Option<u32>,
}

/// Everything the stand-in holds; tests may read and change it.
pub struct World {
    /// Timings.
    pub timing: Timing,
    /// The subnets that exist.
    pub subnets: BTreeMap<String, Subnet>,
    /// The security groups that exist.
    pub security_groups: BTreeMap<String, SecurityGroup>,
    /// File systems.
    pub file_systems: BTreeMap<String, Fs>,
    /// Mount targets.
    pub mount_targets: BTreeMap<String, Mt>,
    /// Access points.
    pub access_points: BTreeMap<String, Ap>,
    /// The file system quota of the region.
    pub max_file_systems: usize,
    /// The access point quota of a file system.
    pub max_access_points: usize,
    /// Denied operations: `(operation, None)` for every resource, `(operation, Some(id))` for one.
    pub denied: BTreeSet<(Operation, Option<String>)>,
    /// How many of the next calls of an operation are throttled.
    pub throttle: BTreeMap<Operation, u32>,
    /// How many of the next calls of an operation never get an answer.
    pub hang: BTreeMap<Operation, u32>,
    /// Credentials cannot be had: every call fails before it is sent.
    pub credentials_broken: bool,
    /// EFS cannot be reached: every call fails without an answer.
    pub unreachable: bool,
    /// New file systems end in `error` instead of `available`.
    pub new_file_systems_fail: bool,
    /// Every request so far.
    pub calls: Vec<Call>,
    next_id: u64,
}

impl World {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{:08x}", self.next_id)
    }
}

/// The stand-in (see the module docs). Cheap to share: `Arc<Aws>` is an [`EfsApi`] and a [`NetworkApi`].
pub struct Aws {
    world: Mutex<World>,
}

/// The region's VPCs in [`Aws::new`]: `vpc-1` with `subnet-a` (zone `az-a`),
/// `subnet-b` (`az-b`), `subnet-c` (`az-c`) and `subnet-a2` (`az-a` again),
/// `vpc-2` with `subnet-x` (`az-b`); groups `sg-1` in `vpc-1`, `sg-2` in `vpc-2`.
pub const SUBNETS: [(&str, &str, &str); 5] = [
    ("subnet-a", "az-a", "vpc-1"),
    ("subnet-b", "az-b", "vpc-1"),
    ("subnet-c", "az-c", "vpc-1"),
    ("subnet-a2", "az-a", "vpc-1"),
    ("subnet-x", "az-b", "vpc-2"),
];

impl Aws {
    /// A region with [`SUBNETS`], AWS's timings and quotas, no faults.
    pub fn new() -> Arc<Aws> {
        Aws::with(|_| {})
    }

    /// [`Aws::new`], then `f` on the world.
    pub fn with(f: impl FnOnce(&mut World)) -> Arc<Aws> {
        let mut w = World {
            timing: Timing::default(),
            subnets: SUBNETS
                .iter()
                .map(|(id, az, vpc)| {
                    (
                        id.to_string(),
                        Subnet { id: id.to_string(), availability_zone: az.to_string(), vpc_id: vpc.to_string() },
                    )
                })
                .collect(),
            security_groups: [("sg-1", "vpc-1"), ("sg-2", "vpc-2")]
                .iter()
                .map(|(id, vpc)| (id.to_string(), SecurityGroup { id: id.to_string(), vpc_id: vpc.to_string() }))
                .collect(),
            file_systems: BTreeMap::new(),
            mount_targets: BTreeMap::new(),
            access_points: BTreeMap::new(),
            max_file_systems: 1000,
            max_access_points: 10_000,
            denied: BTreeSet::new(),
            throttle: BTreeMap::new(),
            hang: BTreeMap::new(),
            credentials_broken: false,
            unreachable: false,
            new_file_systems_fail: false,
            calls: Vec::new(),
            next_id: 0,
        };
        f(&mut w);
        Arc::new(Aws { world: Mutex::new(w) })
    }

    /// The world, to read or change.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many requests of `op` were made.
    pub fn calls(&self, op: Operation) -> usize {
        self.world().calls.iter().filter(|c| c.op == op).count()
    }

    /// File systems that exist (any state).
    pub fn file_system_count(&self) -> usize {
        let now = Instant::now();
        let mut w = self.world();
        w.sweep(now);
        w.file_systems.len()
    }

    /// Adds an access point directly (as another client would), available and listed.
    pub fn add_access_point(&self, file_system_id: &str, gid: i64, token: &str) -> String {
        let mut w = self.world();
        let id = w.id("fsap");
        let spec = NewAccessPoint {
            client_token: token.into(),
            file_system_id: file_system_id.into(),
            uid: gid,
            gid,
            path: format!("/{token}"),
            permissions: "0700".into(),
            tags: BTreeMap::new(),
        };
        let created = Instant::now().checked_sub(Duration::from_secs(3600)).unwrap_or_else(Instant::now);
        w.access_points.insert(id.clone(), Ap { spec, id: id.clone(), created });
        id
    }

    /// Adds an available file system directly (created an hour ago), with `tags`.
    pub fn add_file_system(&self, token: &str, tags: BTreeMap<String, String>) -> String {
        let mut w = self.world();
        let id = w.id("fs");
        let spec = NewFileSystem {
            creation_token: token.into(),
            performance_mode: PerformanceMode::GeneralPurpose,
            throughput: Throughput::Elastic,
            encrypted: true,
            kms_key_id: None,
            tags: tags.clone(),
        };
        let created = Instant::now().checked_sub(Duration::from_secs(3600)).unwrap_or_else(Instant::now);
        w.file_systems.insert(
            id.clone(),
            Fs {
                id: id.clone(),
                spec,
                tags,
                lifecycle: Vec::new(),
                options: FileSystemOptions::default(),
                created,
                deleting_since: None,
                fails: false,
            },
        );
        id
    }

    /// Records the call and applies the faults; `Some` for a response that never comes.
    fn enter(&self, op: Operation, resource: &str, page_size: Option<u32>) -> Result<bool, ApiError> {
        let mut w = self.world();
        w.calls.push(Call { op, at: Instant::now(), resource: resource.to_string(), page_size });
        if w.credentials_broken {
            return Err(ApiError::new(
                op,
                ErrorKind::Credentials,
                "CredentialsError",
                "failed to construct request: an error occurred while loading credentials: failed to load \
                 credentials from the web identity token file",
            ));
        }
        if w.unreachable {
            return Err(ApiError::new(
                op,
                ErrorKind::Unreachable,
                "ConnectionError",
                "dispatch failure: io error: error trying to connect: tcp connect error: Connection timed out",
            ));
        }
        if let Some(n) = w.hang.get_mut(&op).filter(|n| **n > 0) {
            *n -= 1;
            return Ok(true);
        }
        if let Some(n) = w.throttle.get_mut(&op).filter(|n| **n > 0) {
            *n -= 1;
            return Err(ApiError::new(op, ErrorKind::Throttled, "ThrottlingException", "Rate exceeded"));
        }
        if w.denied.contains(&(op, None)) || w.denied.contains(&(op, Some(resource.to_string()))) {
            return Err(ApiError::new(
                op,
                ErrorKind::AccessDenied,
                "AccessDeniedException",
                format!("User is not authorized to perform: elasticfilesystem:{op} on resource {resource}"),
            ));
        }
        Ok(false)
    }

    async fn gate(&self, op: Operation, resource: &str, page_size: Option<u32>) -> Result<(), ApiError> {
        if self.enter(op, resource, page_size)? {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

fn err(op: Operation, kind: ErrorKind, code: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(op, kind, code, message)
}

fn not_available(op: Operation, id: &str) -> ApiError {
    // Status 409 with a code the provisioner does not special-case: "try again".
    err(op, ErrorKind::Transient, "IncorrectFileSystemLifeCycleState", format!("{id} is not available"))
}

/// Rule 6.
pub fn check_tags(op: Operation, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let allowed = |s: &str| s.chars().all(|c| c.is_alphanumeric() || " _.:/=+-@".contains(c));
    if tags.len() > 50 {
        return Err(err(
            op,
            ErrorKind::BadRequest,
            "BadRequest",
            format!("{} tags: at most 50 per resource", tags.len()),
        ));
    }
    for (k, v) in tags {
        let klen = k.chars().count();
        if klen == 0 || klen > 128 || !allowed(k) || k.to_ascii_lowercase().starts_with("aws:") {
            return Err(err(op, ErrorKind::BadRequest, "BadRequest", format!("invalid tag key {k:?}")));
        }
        if v.chars().count() > 256 || !allowed(v) {
            return Err(err(
                op,
                ErrorKind::BadRequest,
                "BadRequest",
                format!("1 validation error detected: Value at 'tags.{k}.value' failed to satisfy constraint"),
            ));
        }
    }
    Ok(())
}

fn days(v: &str) -> u32 {
    v.trim_start_matches("AFTER_").split('_').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Rule 7.
pub fn check_lifecycle(op: Operation, fs: &NewFileSystem, rules: &[LifecycleRule]) -> Result<(), ApiError> {
    let bad = |m: &str| Err(err(op, ErrorKind::BadRequest, "BadRequest", m.to_string()));
    let ia = rules.iter().find_map(|r| if let LifecycleRule::TransitionToIa(v) = r { Some(days(v)) } else { None });
    let archive =
        rules.iter().find_map(|r| if let LifecycleRule::TransitionToArchive(v) = r { Some(days(v)) } else { None });
    if let Some(archive) = archive {
        if fs.throughput != Throughput::Elastic {
            return bad("TransitionToArchive requires Elastic throughput");
        }
        if fs.performance_mode == PerformanceMode::MaxIo {
            return bad("TransitionToArchive is not supported for Max I/O file systems");
        }
        if ia.is_some_and(|ia| archive <= ia) {
            return bad("TransitionToArchive must be later than TransitionToIA");
        }
    }
    Ok(())
}

impl World {
    fn fs_state(&self, fs: &Fs, now: Instant) -> Option<LifeCycle> {
        if let Some(since) = fs.deleting_since {
            return (now - since < self.timing.file_system_delete).then_some(LifeCycle::Deleting);
        }
        if now - fs.created < self.timing.file_system_create {
            return Some(LifeCycle::Creating);
        }
        Some(if fs.fails { LifeCycle::Error } else { LifeCycle::Available })
    }

    fn mt_state(&self, mt: &Mt, now: Instant) -> Option<LifeCycle> {
        if let Some(since) = mt.deleting_since {
            return (now - since < self.timing.mount_target_delete).then_some(LifeCycle::Deleting);
        }
        Some(if now - mt.created < self.timing.mount_target_create {
            LifeCycle::Creating
        } else {
            LifeCycle::Available
        })
    }

    /// Forgets what finished deleting.
    fn sweep(&mut self, now: Instant) {
        let gone_mts: Vec<String> =
            self.mount_targets.values().filter(|m| self.mt_state(m, now).is_none()).map(|m| m.id.clone()).collect();
        for id in gone_mts {
            self.mount_targets.remove(&id);
        }
        let gone_fs: Vec<String> =
            self.file_systems.values().filter(|f| self.fs_state(f, now).is_none()).map(|f| f.id.clone()).collect();
        for id in gone_fs {
            self.file_systems.remove(&id);
        }
    }

    fn describe_fs(&self, fs: &Fs, now: Instant) -> FileSystem {
        FileSystem {
            id: fs.id.clone(),
            creation_token: fs.spec.creation_token.clone(),
            state: self.fs_state(fs, now).unwrap_or(LifeCycle::Deleted),
            performance_mode: fs.spec.performance_mode.as_str().into(),
            encrypted: fs.spec.encrypted,
            tags: fs.tags.clone(),
        }
    }

    fn describe_mt(&self, mt: &Mt, now: Instant) -> MountTarget {
        MountTarget {
            id: mt.id.clone(),
            file_system_id: mt.file_system_id.clone(),
            subnet_id: mt.subnet.id.clone(),
            availability_zone: Some(mt.subnet.availability_zone.clone()),
            state: self.mt_state(mt, now).unwrap_or(LifeCycle::Deleted),
        }
    }

    fn available_fs(&mut self, op: Operation, id: &str, now: Instant) -> Result<Fs, ApiError> {
        self.sweep(now);
        let fs = self
            .file_systems
            .get(id)
            .cloned()
            .ok_or_else(|| err(op, ErrorKind::NotFound, "FileSystemNotFound", format!("{id} does not exist")))?;
        match self.fs_state(&fs, now) {
            Some(LifeCycle::Available) => Ok(fs),
            _ => Err(not_available(op, id)),
        }
    }
}

fn describe_ap(ap: &Ap) -> AccessPoint {
    AccessPoint {
        id: ap.id.clone(),
        file_system_id: ap.spec.file_system_id.clone(),
        posix_user: Some((ap.spec.uid, ap.spec.gid)),
        root_path: Some(ap.spec.path.clone()),
        client_token: Some(ap.spec.client_token.clone()),
        tags: ap.spec.tags.clone(),
        state: LifeCycle::Available,
    }
}

#[async_trait]
impl EfsApi for Aws {
    async fn create_file_system(&self, spec: &NewFileSystem) -> Result<FileSystem, ApiError> {
        self.create_file_system_with(spec, &FileSystemOptions::default()).await
    }

    async fn create_file_system_with(
        &self,
        spec: &NewFileSystem,
        options: &FileSystemOptions,
    ) -> Result<FileSystem, ApiError> {
        let op = Operation::CreateFileSystem;
        self.gate(op, &spec.creation_token, None).await?;
        let now = Instant::now();
        let mut w = self.world();
        w.sweep(now);
        if let Some(fs) = w.file_systems.values().find(|f| f.spec.creation_token == spec.creation_token) {
            return Err(err(op, ErrorKind::AlreadyExists(Some(fs.id.clone())), "FileSystemAlreadyExists", "exists"));
        }
        check_tags(op, &spec.tags)?;
        if spec.performance_mode == PerformanceMode::MaxIo && spec.throughput == Throughput::Elastic {
            return Err(err(op, ErrorKind::BadRequest, "BadRequest", "Elastic throughput is not supported for maxIO"));
        }
        if let Some(zone) = &options.availability_zone_name {
            if !w.subnets.values().any(|s| &s.availability_zone == zone) {
                return Err(err(
                    op,
                    ErrorKind::BadRequest,
                    "UnsupportedAvailabilityZone",
                    format!("{zone} is not an availability zone of this region"),
                ));
            }
            if spec.performance_mode == PerformanceMode::MaxIo {
                return Err(err(
                    op,
                    ErrorKind::BadRequest,
                    "BadRequest",
                    "One Zone file systems support only the General Purpose performance mode",
                ));
            }
        }
        if w.file_systems.len() >= w.max_file_systems {
            return Err(err(op, ErrorKind::LimitExceeded, "FileSystemLimitExceeded", "quota reached"));
        }
        let id = w.id("fs");
        let fs = Fs {
            id: id.clone(),
            spec: spec.clone(),
            tags: spec.tags.clone(),
            lifecycle: Vec::new(),
            options: options.clone(),
            created: now,
            deleting_since: None,
            fails: w.new_file_systems_fail,
        };
        let out = w.describe_fs(&fs, now);
        w.file_systems.insert(id, fs);
        Ok(out)
    }

    async fn describe_file_system(&self, lookup: &FileSystemLookup) -> Result<Option<FileSystem>, ApiError> {
        let key = match lookup {
            FileSystemLookup::Id(id) | FileSystemLookup::CreationToken(id) => id.clone(),
        };
        self.gate(Operation::DescribeFileSystems, &key, None).await?;
        let now = Instant::now();
        let mut w = self.world();
        w.sweep(now);
        let found = w.file_systems.values().find(|f| match lookup {
            FileSystemLookup::Id(id) => &f.id == id,
            FileSystemLookup::CreationToken(t) => &f.spec.creation_token == t,
        });
        Ok(found.map(|f| w.describe_fs(f, now)))
    }

    async fn delete_file_system(&self, id: &str) -> Result<(), ApiError> {
        let op = Operation::DeleteFileSystem;
        self.gate(op, id, None).await?;
        let now = Instant::now();
        let mut w = self.world();
        w.sweep(now);
        let Some(fs) = w.file_systems.get(id).cloned() else {
            return Err(err(op, ErrorKind::NotFound, "FileSystemNotFound", format!("{id} does not exist")));
        };
        // Rule 2: any mount target, deleting ones included.
        if w.mount_targets.values().any(|m| m.file_system_id == id) {
            return Err(err(op, ErrorKind::InUse, "FileSystemInUse", format!("{id} has mount targets")));
        }
        match w.fs_state(&fs, now) {
            Some(LifeCycle::Creating) => Err(not_available(op, id)),
            Some(LifeCycle::Deleting) => Ok(()),
            _ => {
                if let Some(f) = w.file_systems.get_mut(id) {
                    f.deleting_since = Some(now);
                }
                Ok(())
            }
        }
    }

    async fn put_lifecycle_configuration(&self, id: &str, rules: &[LifecycleRule]) -> Result<(), ApiError> {
        let op = Operation::PutLifecycleConfiguration;
        self.gate(op, id, None).await?;
        let now = Instant::now();
        let mut w = self.world();
        let fs = w.available_fs(op, id, now)?;
        check_lifecycle(op, &fs.spec, rules)?;
        if let Some(f) = w.file_systems.get_mut(id) {
            f.lifecycle = rules.to_vec();
        }
        Ok(())
    }

    async fn create_mount_target(&self, fs_id: &str, subnet: &str, sgs: &[String]) -> Result<MountTarget, ApiError> {
        let op = Operation::CreateMountTarget;
        self.gate(op, subnet, None).await?;
        let now = Instant::now();
        let mut w = self.world();
        let fs = w.available_fs(op, fs_id, now)?;
        let subnet = w
            .subnets
            .get(subnet)
            .cloned()
            .ok_or_else(|| err(op, ErrorKind::BadRequest, "SubnetNotFound", format!("{subnet} does not exist")))?;
        if let Some(zone) = fs.options.availability_zone_name.as_ref().filter(|z| **z != subnet.availability_zone) {
            return Err(err(
                op,
                ErrorKind::BadRequest,
                "AvailabilityZonesMismatch",
                format!(
                    "{fs_id} is a One Zone file system in {zone}; subnet {} is in {}",
                    subnet.id, subnet.availability_zone
                ),
            ));
        }
        if sgs.len() > 5 {
            return Err(err(op, ErrorKind::LimitExceeded, "SecurityGroupLimitExceeded", "at most 5"));
        }
        for g in sgs {
            if w.security_groups.get(g).is_none_or(|sg| sg.vpc_id != subnet.vpc_id) {
                return Err(err(
                    op,
                    ErrorKind::BadRequest,
                    "SecurityGroupNotFound",
                    format!("{g} does not exist in {}", subnet.vpc_id),
                ));
            }
        }
        for m in w.mount_targets.values().filter(|m| m.file_system_id == fs_id) {
            if m.subnet.availability_zone == subnet.availability_zone {
                return Err(err(
                    op,
                    ErrorKind::Conflict,
                    "MountTargetConflict",
                    format!("{fs_id} already has mount target {} in {}", m.id, subnet.availability_zone),
                ));
            }
            if m.subnet.vpc_id != subnet.vpc_id {
                return Err(err(
                    op,
                    ErrorKind::Conflict,
                    "MountTargetConflict",
                    format!("{fs_id} has mount targets in {}, not {}", m.subnet.vpc_id, subnet.vpc_id),
                ));
            }
        }
        let id = w.id("fsmt");
        let mt = Mt {
            id: id.clone(),
            file_system_id: fs_id.into(),
            subnet,
            security_groups: sgs.to_vec(),
            created: now,
            deleting_since: None,
        };
        let out = w.describe_mt(&mt, now);
        w.mount_targets.insert(id, mt);
        Ok(out)
    }

    async fn describe_mount_targets(&self, fs_id: &str) -> Result<Vec<MountTarget>, ApiError> {
        let op = Operation::DescribeMountTargets;
        self.gate(op, fs_id, None).await?;
        let now = Instant::now();
        let mut w = self.world();
        w.sweep(now);
        if !w.file_systems.contains_key(fs_id) {
            return Err(err(op, ErrorKind::NotFound, "FileSystemNotFound", format!("{fs_id} does not exist")));
        }
        Ok(w.mount_targets.values().filter(|m| m.file_system_id == fs_id).map(|m| w.describe_mt(m, now)).collect())
    }

    async fn delete_mount_target(&self, id: &str) -> Result<(), ApiError> {
        let op = Operation::DeleteMountTarget;
        self.gate(op, id, None).await?;
        let now = Instant::now();
        let mut w = self.world();
        w.sweep(now);
        match w.mount_targets.get_mut(id) {
            Some(m) => {
                m.deleting_since.get_or_insert(now);
                Ok(())
            }
            None => Err(err(op, ErrorKind::NotFound, "MountTargetNotFound", format!("{id} does not exist"))),
        }
    }

    async fn create_access_point(&self, spec: &NewAccessPoint) -> Result<AccessPoint, ApiError> {
        let op = Operation::CreateAccessPoint;
        self.gate(op, &spec.file_system_id, None).await?;
        let now = Instant::now();
        let mut w = self.world();
        w.available_fs(op, &spec.file_system_id, now)?;
        if let Some(ap) = w.access_points.values().find(|a| a.spec.client_token == spec.client_token) {
            return Err(err(op, ErrorKind::AlreadyExists(Some(ap.id.clone())), "AccessPointAlreadyExists", "exists"));
        }
        check_tags(op, &spec.tags)?;
        if spec.path.len() > 100 {
            return Err(err(op, ErrorKind::BadRequest, "BadRequest", "path longer than 100 characters"));
        }
        if w.access_points.values().filter(|a| a.spec.file_system_id == spec.file_system_id).count()
            >= w.max_access_points
        {
            return Err(err(op, ErrorKind::LimitExceeded, "AccessPointLimitExceeded", "quota reached"));
        }
        let id = w.id("fsap");
        let ap = Ap { spec: spec.clone(), id: id.clone(), created: now };
        let out = describe_ap(&ap);
        w.access_points.insert(id, ap);
        Ok(out)
    }

    async fn describe_access_points(
        &self,
        fs_id: &str,
        next: Option<&str>,
        page_size: u32,
    ) -> Result<AccessPointPage, ApiError> {
        let op = Operation::DescribeAccessPoints;
        self.gate(op, fs_id, Some(page_size)).await?;
        if page_size == 0 || page_size > MAX_ACCESS_POINT_PAGE {
            return Err(err(op, ErrorKind::BadRequest, "BadRequest", "MaxResults must be 1 to 1000"));
        }
        let now = Instant::now();
        let mut w = self.world();
        w.sweep(now);
        if !w.file_systems.contains_key(fs_id) {
            return Err(err(op, ErrorKind::NotFound, "FileSystemNotFound", format!("{fs_id} does not exist")));
        }
        let lag = w.timing.access_point_listed;
        let listed: Vec<&Ap> =
            w.access_points.values().filter(|a| a.spec.file_system_id == fs_id && now - a.created >= lag).collect();
        let start: usize = next.and_then(|t| t.parse().ok()).unwrap_or(0);
        let end = (start + page_size as usize).min(listed.len());
        Ok(AccessPointPage {
            items: listed[start.min(end)..end].iter().map(|a| describe_ap(a)).collect(),
            next_token: (end < listed.len()).then(|| end.to_string()),
        })
    }

    async fn describe_access_point(&self, id: &str) -> Result<Option<AccessPoint>, ApiError> {
        self.gate(Operation::DescribeAccessPoints, id, None).await?;
        Ok(self.world().access_points.get(id).map(describe_ap))
    }

    async fn delete_access_point(&self, id: &str) -> Result<(), ApiError> {
        let op = Operation::DeleteAccessPoint;
        self.gate(op, id, None).await?;
        match self.world().access_points.remove(id) {
            Some(_) => Ok(()),
            None => Err(err(op, ErrorKind::NotFound, "AccessPointNotFound", format!("{id} does not exist"))),
        }
    }

    async fn tag_resource(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
        let op = Operation::TagResource;
        self.gate(op, id, None).await?;
        check_tags(op, tags)?;
        let now = Instant::now();
        let mut w = self.world();
        w.sweep(now);
        if let Some(f) = w.file_systems.get_mut(id) {
            let mut merged = f.tags.clone();
            merged.extend(tags.clone());
            check_tags(op, &merged)?;
            f.tags = merged;
            return Ok(());
        }
        if let Some(a) = w.access_points.get_mut(id) {
            a.spec.tags.extend(tags.clone());
            return Ok(());
        }
        Err(err(op, ErrorKind::NotFound, "FileSystemNotFound", format!("{id} does not exist")))
    }
}

#[async_trait]
impl NetworkApi for Aws {
    async fn describe_subnets(&self, ids: &[String]) -> Result<Vec<Subnet>, ApiError> {
        self.gate(Operation::DescribeSubnets, &ids.join(","), None).await?;
        let w = self.world();
        Ok(ids.iter().filter_map(|i| w.subnets.get(i).cloned()).collect())
    }

    async fn describe_security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, ApiError> {
        self.gate(Operation::DescribeSecurityGroups, &ids.join(","), None).await?;
        let w = self.world();
        Ok(ids.iter().filter_map(|i| w.security_groups.get(i).cloned()).collect())
    }
}
