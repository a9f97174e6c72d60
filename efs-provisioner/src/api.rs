//! The EFS calls the provisioner makes, behind one small trait, [`EfsApi`],
//! with plain data types in and out.
//!
//! The real implementation is on [`aws_sdk_efs::Client`] (in [`crate::sdk`]);
//! tests use in-process fakes. Every method is exactly one EFS request (one
//! page for the listing calls), so wrappers such as [`CountingApi`] and the
//! adaptive limiter ([`crate::limiter::LimitedApi`]) see the real request count.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;

/// An EFS API operation (one request type), for errors, IAM hints and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// `CreateFileSystem`.
    CreateFileSystem,
    /// `DescribeFileSystems`.
    DescribeFileSystems,
    /// `DeleteFileSystem`.
    DeleteFileSystem,
    /// `PutLifecycleConfiguration`.
    PutLifecycleConfiguration,
    /// `CreateMountTarget`.
    CreateMountTarget,
    /// `DescribeMountTargets`.
    DescribeMountTargets,
    /// `DeleteMountTarget`.
    DeleteMountTarget,
    /// `CreateAccessPoint`.
    CreateAccessPoint,
    /// `DescribeAccessPoints`.
    DescribeAccessPoints,
    /// `DeleteAccessPoint`.
    DeleteAccessPoint,
    /// `TagResource` (only to mark a file system being rolled back).
    TagResource,
    /// EC2 `DescribeSubnets` (the topology check before a file system is created).
    DescribeSubnets,
    /// EC2 `DescribeSecurityGroups` (the same check).
    DescribeSecurityGroups,
}

impl Operation {
    /// The operation's name in the EFS API.
    pub fn name(self) -> &'static str {
        match self {
            Operation::CreateFileSystem => "CreateFileSystem",
            Operation::DescribeFileSystems => "DescribeFileSystems",
            Operation::DeleteFileSystem => "DeleteFileSystem",
            Operation::PutLifecycleConfiguration => "PutLifecycleConfiguration",
            Operation::CreateMountTarget => "CreateMountTarget",
            Operation::DescribeMountTargets => "DescribeMountTargets",
            Operation::DeleteMountTarget => "DeleteMountTarget",
            Operation::CreateAccessPoint => "CreateAccessPoint",
            Operation::DescribeAccessPoints => "DescribeAccessPoints",
            Operation::DeleteAccessPoint => "DeleteAccessPoint",
            Operation::TagResource => "TagResource",
            Operation::DescribeSubnets => "DescribeSubnets",
            Operation::DescribeSecurityGroups => "DescribeSecurityGroups",
        }
    }

    /// The service that answers it: `EFS`, or `EC2` for the topology lookups.
    pub fn service(self) -> &'static str {
        match self {
            Operation::DescribeSubnets | Operation::DescribeSecurityGroups => "EC2",
            _ => "EFS",
        }
    }

    /// Every operation, in declaration order.
    pub const ALL: [Operation; 13] = [
        Operation::CreateFileSystem,
        Operation::DescribeFileSystems,
        Operation::DeleteFileSystem,
        Operation::PutLifecycleConfiguration,
        Operation::CreateMountTarget,
        Operation::DescribeMountTargets,
        Operation::DeleteMountTarget,
        Operation::CreateAccessPoint,
        Operation::DescribeAccessPoints,
        Operation::DeleteAccessPoint,
        Operation::TagResource,
        Operation::DescribeSubnets,
        Operation::DescribeSecurityGroups,
    ];

    /// The IAM actions a caller needs for this operation as the provisioner
    /// makes it (tags are set in the create calls, which needs `TagResource`).
    pub fn iam_actions(self) -> &'static str {
        match self {
            Operation::CreateFileSystem => "elasticfilesystem:CreateFileSystem and elasticfilesystem:TagResource",
            Operation::CreateAccessPoint => "elasticfilesystem:CreateAccessPoint and elasticfilesystem:TagResource",
            Operation::CreateMountTarget => {
                "elasticfilesystem:CreateMountTarget (with ec2:DescribeSubnets, ec2:CreateNetworkInterface, \
                 ec2:DescribeNetworkInterfaces)"
            }
            Operation::DescribeFileSystems => "elasticfilesystem:DescribeFileSystems",
            Operation::DeleteFileSystem => "elasticfilesystem:DeleteFileSystem",
            Operation::PutLifecycleConfiguration => "elasticfilesystem:PutLifecycleConfiguration",
            Operation::DescribeMountTargets => "elasticfilesystem:DescribeMountTargets",
            Operation::DeleteMountTarget => "elasticfilesystem:DeleteMountTarget (with ec2:DeleteNetworkInterface)",
            Operation::DescribeAccessPoints => "elasticfilesystem:DescribeAccessPoints",
            Operation::DeleteAccessPoint => "elasticfilesystem:DeleteAccessPoint",
            Operation::TagResource => "elasticfilesystem:TagResource",
            Operation::DescribeSubnets => "ec2:DescribeSubnets",
            Operation::DescribeSecurityGroups => "ec2:DescribeSecurityGroups",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The lifecycle state of a file system, mount target or access point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifeCycle {
    /// Being created.
    Creating,
    /// Ready.
    Available,
    /// Being changed (throughput); usable.
    Updating,
    /// Being deleted.
    Deleting,
    /// Deleted (still listed for a while).
    Deleted,
    /// Failed and unrecoverable.
    Error,
}

impl LifeCycle {
    /// Parses the API's spelling; unknown states count as `Creating` (wait and look again).
    pub fn parse(s: &str) -> LifeCycle {
        match s {
            "available" => LifeCycle::Available,
            "updating" => LifeCycle::Updating,
            "deleting" => LifeCycle::Deleting,
            "deleted" => LifeCycle::Deleted,
            "error" => LifeCycle::Error,
            _ => LifeCycle::Creating,
        }
    }
}

/// A file system as the API describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSystem {
    /// `fs-...`.
    pub id: String,
    /// The creation token it was created with.
    pub creation_token: String,
    /// Its state.
    pub state: LifeCycle,
    /// `generalPurpose` or `maxIO`.
    pub performance_mode: String,
    /// Whether it is encrypted at rest.
    pub encrypted: bool,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

/// A mount target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountTarget {
    /// `fsmt-...`.
    pub id: String,
    /// The file system it belongs to.
    pub file_system_id: String,
    /// The subnet it is in.
    pub subnet_id: String,
    /// The availability zone of that subnet, when reported.
    pub availability_zone: Option<String>,
    /// Its state.
    pub state: LifeCycle,
}

/// An access point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessPoint {
    /// `fsap-...`.
    pub id: String,
    /// The file system it belongs to.
    pub file_system_id: String,
    /// The POSIX user (uid, gid) it enforces, if any.
    pub posix_user: Option<(i64, i64)>,
    /// Its root directory path.
    pub root_path: Option<String>,
    /// The client token it was created with (AWS echoes it; moto too).
    pub client_token: Option<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Its state.
    pub state: LifeCycle,
}

/// Performance mode of a file system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PerformanceMode {
    /// `generalPurpose` (the API's default).
    #[default]
    GeneralPurpose,
    /// `maxIO`.
    MaxIo,
}

impl PerformanceMode {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PerformanceMode::GeneralPurpose => "generalPurpose",
            PerformanceMode::MaxIo => "maxIO",
        }
    }
}

/// Throughput mode of a file system.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Throughput {
    /// `bursting` (the API's default).
    #[default]
    Bursting,
    /// `provisioned`, with MiB/s.
    Provisioned(f64),
    /// `elastic`.
    Elastic,
}

/// What a new file system should look like. `Default` is the API's
/// defaults (unencrypted, bursting, generalPurpose, Regional) with an empty
/// token, for building one field by field.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewFileSystem {
    /// The idempotency key (1 to 64 characters).
    pub creation_token: String,
    /// Performance mode.
    pub performance_mode: PerformanceMode,
    /// Throughput mode.
    pub throughput: Throughput,
    /// Encrypted at rest.
    pub encrypted: bool,
    /// A KMS key (id, ARN or alias) when not the default `aws/elasticfilesystem`.
    pub kms_key_id: Option<String>,
    /// Tags set in the create call.
    pub tags: BTreeMap<String, String>,
}

/// Options of `CreateFileSystem` beyond [`NewFileSystem`]'s, for
/// [`EfsApi::create_file_system_with`] (kept apart so that code building a
/// `NewFileSystem` by hand is unaffected). `Default` is EFS's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileSystemOptions {
    /// AWS Backup's automatic daily backups (`Backup`): `Some(true)` on,
    /// `Some(false)` off, `None` EFS's default (off, but on for One Zone).
    pub backup: Option<bool>,
    /// A One Zone file system in this availability zone (`AvailabilityZoneName`,
    /// e.g. `us-east-1a`); `None` for a Regional one. It takes one mount
    /// target, in that zone.
    pub availability_zone_name: Option<String>,
}

/// One lifecycle rule (`PutLifecycleConfiguration` takes a list of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecycleRule {
    /// Move files to Infrequent Access after, e.g., `AFTER_30_DAYS`.
    TransitionToIa(String),
    /// Move files to Archive after, e.g., `AFTER_90_DAYS`.
    TransitionToArchive(String),
    /// Move files back to primary storage, e.g., `AFTER_1_ACCESS`.
    TransitionToPrimaryStorageClass(String),
}

/// What a new access point should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccessPoint {
    /// The idempotency key (1 to 64 characters).
    pub client_token: String,
    /// The file system.
    pub file_system_id: String,
    /// The POSIX uid all access is made as.
    pub uid: i64,
    /// The POSIX gid all access is made as.
    pub gid: i64,
    /// The root directory (created on first mount if missing).
    pub path: String,
    /// Permissions of a created root directory, octal (e.g. `0700`).
    pub permissions: String,
    /// Tags set in the create call.
    pub tags: BTreeMap<String, String>,
}

/// How an API call failed, as far as the provisioner's decisions care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The resource does not exist (`FileSystemNotFound`, `MountTargetNotFound`, `AccessPointNotFound`).
    NotFound,
    /// The creation token is taken (`FileSystemAlreadyExists`, `AccessPointAlreadyExists`), with the
    /// id of the existing resource when the API says it.
    AlreadyExists(Option<String>),
    /// `MountTargetConflict`: a mount target exists in that subnet's zone (or another VPC's).
    Conflict,
    /// `FileSystemInUse`: mount targets still exist.
    InUse,
    /// A quota is reached (`FileSystemLimitExceeded`, `AccessPointLimitExceeded`, no free addresses, ...).
    LimitExceeded,
    /// The caller lacks an IAM permission.
    AccessDenied,
    /// The API asks to slow down (throttling, HTTP 429/503, retry quota exhausted).
    Throttled,
    /// The request is invalid as written (bad parameter, unknown subnet or security group).
    BadRequest,
    /// The credentials are the problem, not a permission: the SDK could not
    /// get any (IRSA, Pod Identity, instance profile; code
    /// `CredentialsError`, no request was sent), or AWS refused the ones it
    /// got (`UnrecognizedClientException`, `InvalidClientTokenId`,
    /// `InvalidSignatureException`, `SignatureDoesNotMatch`,
    /// `ExpiredToken(Exception)`, EC2's `AuthFailure`). Retrying will not
    /// help until the set-up is fixed.
    Credentials,
    /// EFS could not be reached (DNS, no route, connection refused): nothing
    /// was answered, and the request may or may not have been carried out.
    Unreachable,
    /// Anything else (timeouts, server errors): may succeed if tried again.
    Transient,
}

/// The error an [`ApiError`] was made from (the SDK's, with its own
/// sources), shared so that `ApiError` stays `Clone`.
pub type ApiErrorSource = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A failed EFS (or EC2) call.
///
/// Its [`source`](std::error::Error::source) is the error the SDK returned,
/// when there is one, so a report that walks the chain (the engine's events
/// and logs, through `provisioner_core::Cause`) shows what lies under the
/// code: the connection error under a dispatch failure, the credential
/// provider's reason under a credentials error. Equality ignores the source.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The call.
    pub operation: Operation,
    /// What the failure means.
    pub kind: ErrorKind,
    /// The API's error code (or a short description for transport errors).
    pub code: String,
    /// The API's message.
    pub message: String,
    /// The underlying error, if any (see the type's docs).
    pub source: Option<ApiErrorSource>,
}

impl ApiError {
    /// An error of `kind` from `operation`, without a source.
    pub fn new(operation: Operation, kind: ErrorKind, code: &str, message: impl Into<String>) -> Self {
        ApiError { operation, kind, code: code.to_string(), message: message.into(), source: None }
    }

    /// The same error, with `source` as what lies under it.
    pub fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        self.source = Some(ApiErrorSource::from(source.into()));
        self
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} failed: {}", self.operation.service(), self.operation, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for ApiError {
    fn eq(&self, other: &Self) -> bool {
        (self.operation, &self.kind, &self.code, &self.message)
            == (other.operation, &other.kind, &other.code, &other.message)
    }
}

impl Eq for ApiError {}

/// Where a file system is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSystemLookup {
    /// By id.
    Id(String),
    /// By creation token.
    CreationToken(String),
}

/// One page of access points.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPointPage {
    /// The access points.
    pub items: Vec<AccessPoint>,
    /// The token of the next page, if any.
    pub next_token: Option<String>,
}

/// The EFS requests the provisioner makes. Each method is one request.
#[async_trait]
pub trait EfsApi: Send + Sync + 'static {
    /// `CreateFileSystem` with tags.
    async fn create_file_system(&self, spec: &NewFileSystem) -> Result<FileSystem, ApiError>;
    /// `CreateFileSystem` with tags and `options`. The provisioner calls
    /// this one. The default implementation is [`create_file_system`](EfsApi::create_file_system)
    /// when the options are EFS's defaults, and refuses others (`BadRequest`)
    /// rather than drop them; implementations that know them override it.
    async fn create_file_system_with(
        &self,
        spec: &NewFileSystem,
        options: &FileSystemOptions,
    ) -> Result<FileSystem, ApiError> {
        if *options == FileSystemOptions::default() {
            return self.create_file_system(spec).await;
        }
        Err(ApiError::new(
            Operation::CreateFileSystem,
            ErrorKind::BadRequest,
            "Unsupported",
            "this EFS client does not implement backup or One Zone options",
        ))
    }
    /// `DescribeFileSystems` for one file system; `None` when it does not exist.
    async fn describe_file_system(&self, lookup: &FileSystemLookup) -> Result<Option<FileSystem>, ApiError>;
    /// `DeleteFileSystem`.
    async fn delete_file_system(&self, file_system_id: &str) -> Result<(), ApiError>;
    /// `PutLifecycleConfiguration` (replaces the file system's rules).
    async fn put_lifecycle_configuration(&self, file_system_id: &str, rules: &[LifecycleRule]) -> Result<(), ApiError>;
    /// `CreateMountTarget` in `subnet_id` with `security_groups`.
    async fn create_mount_target(
        &self,
        file_system_id: &str,
        subnet_id: &str,
        security_groups: &[String],
    ) -> Result<MountTarget, ApiError>;
    /// `DescribeMountTargets` of a file system (one page holds every zone's).
    async fn describe_mount_targets(&self, file_system_id: &str) -> Result<Vec<MountTarget>, ApiError>;
    /// `DeleteMountTarget`.
    async fn delete_mount_target(&self, mount_target_id: &str) -> Result<(), ApiError>;
    /// `CreateAccessPoint` with tags.
    async fn create_access_point(&self, spec: &NewAccessPoint) -> Result<AccessPoint, ApiError>;
    /// One page of `DescribeAccessPoints` of a file system, of at most
    /// `page_size` items (EFS allows up to [`MAX_ACCESS_POINT_PAGE`]; 100 when not asked).
    async fn describe_access_points(
        &self,
        file_system_id: &str,
        next_token: Option<&str>,
        page_size: u32,
    ) -> Result<AccessPointPage, ApiError>;
    /// `DescribeAccessPoints` of one access point; `None` when it does not exist.
    async fn describe_access_point(&self, access_point_id: &str) -> Result<Option<AccessPoint>, ApiError>;
    /// `DeleteAccessPoint`.
    async fn delete_access_point(&self, access_point_id: &str) -> Result<(), ApiError>;
    /// `TagResource`: adds (or overwrites) `tags` on a file system or access point.
    async fn tag_resource(&self, resource_id: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError>;
}

/// The largest page `DescribeAccessPoints` returns.
pub const MAX_ACCESS_POINT_PAGE: u32 = 1000;

/// A subnet, as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// `subnet-...`.
    pub id: String,
    /// Its availability zone (`us-east-1a`).
    pub availability_zone: String,
    /// Its VPC.
    pub vpc_id: String,
}

/// A security group, as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityGroup {
    /// `sg-...`.
    pub id: String,
    /// Its VPC.
    pub vpc_id: String,
}

/// The EC2 lookups of the topology check made before a file system is
/// created (see [`crate::provisioner::check_topology`]). Ids that do not
/// exist are left out of the answer, not an error.
#[async_trait]
pub trait NetworkApi: Send + Sync + 'static {
    /// `DescribeSubnets` of `ids`.
    async fn describe_subnets(&self, ids: &[String]) -> Result<Vec<Subnet>, ApiError>;
    /// `DescribeSecurityGroups` of `ids`.
    async fn describe_security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, ApiError>;
}

/// Counts the requests made through it, by operation: for benchmarks and tests.
#[derive(Debug, Default)]
pub struct CountingApi<A> {
    inner: A,
    counts: Mutex<BTreeMap<Operation, u64>>,
}

impl<A> CountingApi<A> {
    /// Wraps `inner`.
    pub fn new(inner: A) -> Self {
        CountingApi { inner, counts: Mutex::new(BTreeMap::new()) }
    }

    /// The requests made so far, by operation.
    pub fn counts(&self) -> BTreeMap<Operation, u64> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the counts.
    pub fn reset(&self) {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The wrapped API.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    fn count(&self, op: Operation) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()).entry(op).or_default() += 1;
    }
}

#[async_trait]
impl<A: EfsApi> EfsApi for CountingApi<A> {
    async fn create_file_system(&self, spec: &NewFileSystem) -> Result<FileSystem, ApiError> {
        self.count(Operation::CreateFileSystem);
        self.inner.create_file_system(spec).await
    }
    async fn create_file_system_with(
        &self,
        spec: &NewFileSystem,
        o: &FileSystemOptions,
    ) -> Result<FileSystem, ApiError> {
        self.count(Operation::CreateFileSystem);
        self.inner.create_file_system_with(spec, o).await
    }
    async fn describe_file_system(&self, lookup: &FileSystemLookup) -> Result<Option<FileSystem>, ApiError> {
        self.count(Operation::DescribeFileSystems);
        self.inner.describe_file_system(lookup).await
    }
    async fn delete_file_system(&self, id: &str) -> Result<(), ApiError> {
        self.count(Operation::DeleteFileSystem);
        self.inner.delete_file_system(id).await
    }
    async fn put_lifecycle_configuration(&self, id: &str, rules: &[LifecycleRule]) -> Result<(), ApiError> {
        self.count(Operation::PutLifecycleConfiguration);
        self.inner.put_lifecycle_configuration(id, rules).await
    }
    async fn create_mount_target(&self, id: &str, subnet: &str, sgs: &[String]) -> Result<MountTarget, ApiError> {
        self.count(Operation::CreateMountTarget);
        self.inner.create_mount_target(id, subnet, sgs).await
    }
    async fn describe_mount_targets(&self, id: &str) -> Result<Vec<MountTarget>, ApiError> {
        self.count(Operation::DescribeMountTargets);
        self.inner.describe_mount_targets(id).await
    }
    async fn delete_mount_target(&self, id: &str) -> Result<(), ApiError> {
        self.count(Operation::DeleteMountTarget);
        self.inner.delete_mount_target(id).await
    }
    async fn create_access_point(&self, spec: &NewAccessPoint) -> Result<AccessPoint, ApiError> {
        self.count(Operation::CreateAccessPoint);
        self.inner.create_access_point(spec).await
    }
    async fn describe_access_points(
        &self,
        id: &str,
        next: Option<&str>,
        page_size: u32,
    ) -> Result<AccessPointPage, ApiError> {
        self.count(Operation::DescribeAccessPoints);
        self.inner.describe_access_points(id, next, page_size).await
    }
    async fn describe_access_point(&self, id: &str) -> Result<Option<AccessPoint>, ApiError> {
        self.count(Operation::DescribeAccessPoints);
        self.inner.describe_access_point(id).await
    }
    async fn delete_access_point(&self, id: &str) -> Result<(), ApiError> {
        self.count(Operation::DeleteAccessPoint);
        self.inner.delete_access_point(id).await
    }
    async fn tag_resource(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
        self.count(Operation::TagResource);
        self.inner.tag_resource(id, tags).await
    }
}

#[async_trait]
impl<A: EfsApi + ?Sized> EfsApi for std::sync::Arc<A> {
    async fn create_file_system(&self, spec: &NewFileSystem) -> Result<FileSystem, ApiError> {
        (**self).create_file_system(spec).await
    }
    async fn create_file_system_with(
        &self,
        spec: &NewFileSystem,
        o: &FileSystemOptions,
    ) -> Result<FileSystem, ApiError> {
        (**self).create_file_system_with(spec, o).await
    }
    async fn describe_file_system(&self, lookup: &FileSystemLookup) -> Result<Option<FileSystem>, ApiError> {
        (**self).describe_file_system(lookup).await
    }
    async fn delete_file_system(&self, id: &str) -> Result<(), ApiError> {
        (**self).delete_file_system(id).await
    }
    async fn put_lifecycle_configuration(&self, id: &str, rules: &[LifecycleRule]) -> Result<(), ApiError> {
        (**self).put_lifecycle_configuration(id, rules).await
    }
    async fn create_mount_target(&self, id: &str, subnet: &str, sgs: &[String]) -> Result<MountTarget, ApiError> {
        (**self).create_mount_target(id, subnet, sgs).await
    }
    async fn describe_mount_targets(&self, id: &str) -> Result<Vec<MountTarget>, ApiError> {
        (**self).describe_mount_targets(id).await
    }
    async fn delete_mount_target(&self, id: &str) -> Result<(), ApiError> {
        (**self).delete_mount_target(id).await
    }
    async fn create_access_point(&self, spec: &NewAccessPoint) -> Result<AccessPoint, ApiError> {
        (**self).create_access_point(spec).await
    }
    async fn describe_access_points(
        &self,
        id: &str,
        next: Option<&str>,
        page_size: u32,
    ) -> Result<AccessPointPage, ApiError> {
        (**self).describe_access_points(id, next, page_size).await
    }
    async fn describe_access_point(&self, id: &str) -> Result<Option<AccessPoint>, ApiError> {
        (**self).describe_access_point(id).await
    }
    async fn delete_access_point(&self, id: &str) -> Result<(), ApiError> {
        (**self).delete_access_point(id).await
    }
    async fn tag_resource(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
        (**self).tag_resource(id, tags).await
    }
}

#[async_trait]
impl<N: NetworkApi + ?Sized> NetworkApi for std::sync::Arc<N> {
    async fn describe_subnets(&self, ids: &[String]) -> Result<Vec<Subnet>, ApiError> {
        (**self).describe_subnets(ids).await
    }
    async fn describe_security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, ApiError> {
        (**self).describe_security_groups(ids).await
    }
}
