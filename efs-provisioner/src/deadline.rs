//! A deadline on every EFS request, so one answer that never comes cannot
//! hold a worker (or, in access-point mode, the file system's allocation
//! lock) for ever. The SDK itself only bounds the connection; the engine's
//! whole-call timeout is off by default.
//!
//! [`DeadlineApi`] puts [`Deadlines`] in front of any [`EfsApi`]. A request
//! that outlives its deadline ends as [`ErrorKind::Transient`] with code
//! `Timeout`: it may have been carried out, so the provisioner treats it as
//! "in progress" and looks again.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use crate::api::{
    AccessPoint, AccessPointPage, ApiError, EfsApi, ErrorKind, FileSystem, FileSystemLookup, FileSystemOptions,
    LifecycleRule, MountTarget, NetworkApi, NewAccessPoint, NewFileSystem, Operation, SecurityGroup, Subnet,
};

/// How long each kind of request may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// Describe calls (answered from EFS's index, quickly).
    pub read: Duration,
    /// Create, delete, tag and lifecycle calls.
    pub write: Duration,
}

impl Default for Deadlines {
    /// 10 s for reads, 30 s for writes: far above EFS's usual answer times
    /// (well under a second), far below a stuck worker's cost.
    fn default() -> Self {
        Deadlines { read: Duration::from_secs(10), write: Duration::from_secs(30) }
    }
}

impl Deadlines {
    /// The deadline of `op`.
    pub fn of(&self, op: Operation) -> Duration {
        match op {
            Operation::DescribeFileSystems
            | Operation::DescribeMountTargets
            | Operation::DescribeAccessPoints
            | Operation::DescribeSubnets
            | Operation::DescribeSecurityGroups => self.read,
            _ => self.write,
        }
    }
}

/// An [`EfsApi`] whose every request has a deadline.
pub struct DeadlineApi<A> {
    inner: A,
    deadlines: Deadlines,
}

impl<A> DeadlineApi<A> {
    /// Puts `deadlines` in front of `inner`.
    pub fn new(inner: A, deadlines: Deadlines) -> Self {
        DeadlineApi { inner, deadlines }
    }

    /// The wrapped API.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    async fn call<T>(&self, op: Operation, f: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
        let limit = self.deadlines.of(op);
        match tokio::time::timeout(limit, f).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::new(
                op,
                ErrorKind::Transient,
                "Timeout",
                format!("no answer within {limit:?}; the request may still have been carried out"),
            )),
        }
    }
}

#[async_trait]
impl<A: EfsApi> EfsApi for DeadlineApi<A> {
    async fn create_file_system(&self, spec: &NewFileSystem) -> Result<FileSystem, ApiError> {
        self.call(Operation::CreateFileSystem, self.inner.create_file_system(spec)).await
    }
    async fn create_file_system_with(
        &self,
        spec: &NewFileSystem,
        o: &FileSystemOptions,
    ) -> Result<FileSystem, ApiError> {
        self.call(Operation::CreateFileSystem, self.inner.create_file_system_with(spec, o)).await
    }
    async fn describe_file_system(&self, lookup: &FileSystemLookup) -> Result<Option<FileSystem>, ApiError> {
        self.call(Operation::DescribeFileSystems, self.inner.describe_file_system(lookup)).await
    }
    async fn delete_file_system(&self, id: &str) -> Result<(), ApiError> {
        self.call(Operation::DeleteFileSystem, self.inner.delete_file_system(id)).await
    }
    async fn put_lifecycle_configuration(&self, id: &str, rules: &[LifecycleRule]) -> Result<(), ApiError> {
        self.call(Operation::PutLifecycleConfiguration, self.inner.put_lifecycle_configuration(id, rules)).await
    }
    async fn create_mount_target(&self, id: &str, subnet: &str, sgs: &[String]) -> Result<MountTarget, ApiError> {
        self.call(Operation::CreateMountTarget, self.inner.create_mount_target(id, subnet, sgs)).await
    }
    async fn describe_mount_targets(&self, id: &str) -> Result<Vec<MountTarget>, ApiError> {
        self.call(Operation::DescribeMountTargets, self.inner.describe_mount_targets(id)).await
    }
    async fn delete_mount_target(&self, id: &str) -> Result<(), ApiError> {
        self.call(Operation::DeleteMountTarget, self.inner.delete_mount_target(id)).await
    }
    async fn create_access_point(&self, spec: &NewAccessPoint) -> Result<AccessPoint, ApiError> {
        self.call(Operation::CreateAccessPoint, self.inner.create_access_point(spec)).await
    }
    async fn describe_access_points(
        &self,
        id: &str,
        next: Option<&str>,
        page_size: u32,
    ) -> Result<AccessPointPage, ApiError> {
        self.call(Operation::DescribeAccessPoints, self.inner.describe_access_points(id, next, page_size)).await
    }
    async fn describe_access_point(&self, id: &str) -> Result<Option<AccessPoint>, ApiError> {
        self.call(Operation::DescribeAccessPoints, self.inner.describe_access_point(id)).await
    }
    async fn delete_access_point(&self, id: &str) -> Result<(), ApiError> {
        self.call(Operation::DeleteAccessPoint, self.inner.delete_access_point(id)).await
    }
    async fn tag_resource(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
        self.call(Operation::TagResource, self.inner.tag_resource(id, tags)).await
    }
}

#[async_trait]
impl<N: NetworkApi> NetworkApi for DeadlineApi<N> {
    async fn describe_subnets(&self, ids: &[String]) -> Result<Vec<Subnet>, ApiError> {
        self.call(Operation::DescribeSubnets, self.inner.describe_subnets(ids)).await
    }
    async fn describe_security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, ApiError> {
        self.call(Operation::DescribeSecurityGroups, self.inner.describe_security_groups(ids)).await
    }
}
