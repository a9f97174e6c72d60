//! [`EfsApi`] on the AWS SDK's [`Client`]: the only place that speaks the SDK's
//! types, and where its errors are sorted into [`ErrorKind`]s.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_efs::Client;
use aws_sdk_efs::config::http::HttpResponse;
use aws_sdk_efs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_efs::operation::create_access_point::CreateAccessPointError;
use aws_sdk_efs::operation::create_file_system::CreateFileSystemError;
use aws_sdk_efs::types::{
    AccessPointDescription, CreationInfo, FileSystemDescription, LifecyclePolicy, MountTargetDescription,
    PerformanceMode as SdkPerformance, PosixUser, RootDirectory, Tag, ThroughputMode, TransitionToArchiveRules,
    TransitionToIaRules, TransitionToPrimaryStorageClassRules,
};

use crate::api::{
    AccessPoint, AccessPointPage, ApiError, EfsApi, ErrorKind, FileSystem, FileSystemLookup, FileSystemOptions,
    LifeCycle, LifecycleRule, MountTarget, NewAccessPoint, NewFileSystem, Operation, PerformanceMode, Throughput,
};

/// Sorts an error code (and HTTP status) into what it means for the provisioner.
pub fn classify_code(code: &str, status: Option<u16>, message: &str) -> ErrorKind {
    match code {
        "FileSystemNotFound" | "MountTargetNotFound" | "AccessPointNotFound" => ErrorKind::NotFound,
        "FileSystemAlreadyExists" | "AccessPointAlreadyExists" => ErrorKind::AlreadyExists(None),
        "MountTargetConflict" => ErrorKind::Conflict,
        "FileSystemInUse" => ErrorKind::InUse,
        "FileSystemLimitExceeded"
        | "AccessPointLimitExceeded"
        | "NetworkInterfaceLimitExceeded"
        | "NoFreeAddressesInSubnet"
        | "SecurityGroupLimitExceeded"
        | "ThroughputLimitExceeded"
        | "InsufficientThroughputCapacity" => ErrorKind::LimitExceeded,
        // The request was refused for its credentials (an unknown access key,
        // a wrong secret, an expired session token), not for a missing IAM
        // permission: the same 403, but the fix is elsewhere.
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "RequestExpired"
        | "AuthFailure" => ErrorKind::Credentials,
        "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" | "UnauthorizedAccess" => {
            ErrorKind::AccessDenied
        }
        "ThrottlingException" | "Throttling" | "TooManyRequestsException" | "RequestLimitExceeded" | "SlowDown" => {
            ErrorKind::Throttled
        }
        "BadRequest"
        | "ValidationException"
        | "SubnetNotFound"
        | "SecurityGroupNotFound"
        | "IpAddressInUse"
        | "UnsupportedAvailabilityZone"
        | "AvailabilityZonesMismatch"
        | "InvalidParameterValue"
        | "InvalidSubnetID.Malformed"
        | "InvalidGroupId.Malformed" => ErrorKind::BadRequest,
        _ if message.to_ascii_lowercase().contains("retry quota exceeded") => ErrorKind::Throttled,
        _ => match status {
            Some(429 | 503) => ErrorKind::Throttled,
            Some(403) => ErrorKind::AccessDenied,
            _ => ErrorKind::Transient,
        },
    }
}

/// What a request that got no answer from EFS means, from the error and its
/// sources' messages (outermost first). The SDK reports a credential
/// failure (no request sent) and a connection failure alike, as a dispatch
/// failure; only the chain tells them apart.
pub fn classify_no_answer(chain: &[String], io: bool, timeout: bool) -> ErrorKind {
    const CREDENTIALS: [&str; 5] = [
        "the credential provider was not enabled",
        "the credentials provider was not properly configured",
        "an error occurred while loading credentials",
        "unexpected credentials error",
        "no identity resolver",
    ];
    if chain.iter().any(|m| CREDENTIALS.iter().any(|c| m.contains(c))) {
        return ErrorKind::Credentials;
    }
    if chain.iter().any(|m| m.to_ascii_lowercase().contains("retry quota exceeded")) {
        return ErrorKind::Throttled;
    }
    if timeout {
        return ErrorKind::Transient;
    }
    if io {
        return ErrorKind::Unreachable;
    }
    ErrorKind::Transient
}

fn source_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        out.push(e.to_string());
        next = e.source();
    }
    out
}

/// An SDK error as an [`ApiError`]. A service error is its code and message
/// (the SDK's error says nothing more); for a request that got no usable
/// answer (dispatch failure, timeout, unreadable response) the SDK error is
/// kept as the [`source`](std::error::Error::source), so the chain names the
/// cause underneath (connection refused, the credential provider's reason).
/// Shared with [`crate::ec2`]: both SDKs return the same error type.
pub(crate) fn to_api_error<E>(op: Operation, err: SdkError<E, HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let text = aws_sdk_efs::error::DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("Unknown").to_string();
            let message = ctx.err().message().unwrap_or_default().to_string();
            let status = Some(ctx.raw().status().as_u16());
            let kind = classify_code(&code, status, &text);
            ApiError::new(op, kind, &code, message)
        }
        SdkError::TimeoutError(_) => ApiError::new(op, ErrorKind::Transient, "Timeout", "").with_source(err),
        SdkError::ConstructionFailure(_) => {
            ApiError::new(op, ErrorKind::BadRequest, "ConstructionFailure", "").with_source(err)
        }
        SdkError::DispatchFailure(d) => {
            let chain = source_chain(&err);
            let kind = classify_no_answer(&chain, d.is_io(), d.is_timeout());
            let code = match kind {
                ErrorKind::Credentials => "CredentialsError",
                ErrorKind::Unreachable => "ConnectionError",
                _ => "DispatchFailure",
            };
            ApiError::new(op, kind, code, "").with_source(err)
        }
        _ => {
            let kind = classify_code("", None, &text);
            ApiError::new(op, kind, "RequestFailed", "").with_source(err)
        }
    }
}

fn tags_of(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect()
}

fn sdk_tags(tags: &BTreeMap<String, String>, op: Operation) -> Result<Vec<Tag>, ApiError> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| ApiError::new(op, ErrorKind::BadRequest, "InvalidTag", e.to_string()))
        })
        .collect()
}

fn file_system(d: FileSystemDescription) -> FileSystem {
    FileSystem {
        id: d.file_system_id,
        creation_token: d.creation_token,
        state: LifeCycle::parse(d.life_cycle_state.as_str()),
        performance_mode: d.performance_mode.as_str().to_string(),
        encrypted: d.encrypted.unwrap_or(false),
        tags: tags_of(&d.tags),
    }
}

fn mount_target(d: MountTargetDescription) -> MountTarget {
    MountTarget {
        id: d.mount_target_id,
        file_system_id: d.file_system_id,
        subnet_id: d.subnet_id,
        availability_zone: d.availability_zone_name,
        state: LifeCycle::parse(d.life_cycle_state.as_str()),
    }
}

fn access_point(d: AccessPointDescription) -> AccessPoint {
    AccessPoint {
        id: d.access_point_id.unwrap_or_default(),
        file_system_id: d.file_system_id.unwrap_or_default(),
        posix_user: d.posix_user.map(|p| (p.uid, p.gid)),
        root_path: d.root_directory.and_then(|r| r.path),
        client_token: d.client_token,
        tags: tags_of(d.tags.as_deref().unwrap_or_default()),
        state: d.life_cycle_state.map_or(LifeCycle::Creating, |s| LifeCycle::parse(s.as_str())),
    }
}

fn lifecycle_policy(rule: &LifecycleRule) -> LifecyclePolicy {
    match rule {
        LifecycleRule::TransitionToIa(v) => {
            LifecyclePolicy::builder().transition_to_ia(TransitionToIaRules::from(v.as_str())).build()
        }
        LifecycleRule::TransitionToArchive(v) => {
            LifecyclePolicy::builder().transition_to_archive(TransitionToArchiveRules::from(v.as_str())).build()
        }
        LifecycleRule::TransitionToPrimaryStorageClass(v) => LifecyclePolicy::builder()
            .transition_to_primary_storage_class(TransitionToPrimaryStorageClassRules::from(v.as_str()))
            .build(),
    }
}

#[async_trait]
impl EfsApi for Client {
    async fn create_file_system(&self, spec: &NewFileSystem) -> Result<FileSystem, ApiError> {
        self.create_file_system_with(spec, &FileSystemOptions::default()).await
    }

    async fn create_file_system_with(
        &self,
        spec: &NewFileSystem,
        options: &FileSystemOptions,
    ) -> Result<FileSystem, ApiError> {
        let op = Operation::CreateFileSystem;
        let mut req = self
            .create_file_system()
            .creation_token(&spec.creation_token)
            .performance_mode(match spec.performance_mode {
                PerformanceMode::GeneralPurpose => SdkPerformance::GeneralPurpose,
                PerformanceMode::MaxIo => SdkPerformance::MaxIo,
            })
            .encrypted(spec.encrypted)
            .set_kms_key_id(spec.kms_key_id.clone())
            .set_backup(options.backup)
            .set_availability_zone_name(options.availability_zone_name.clone())
            .set_tags(Some(sdk_tags(&spec.tags, op)?));
        req = match spec.throughput {
            Throughput::Bursting => req.throughput_mode(ThroughputMode::Bursting),
            Throughput::Elastic => req.throughput_mode(ThroughputMode::Elastic),
            Throughput::Provisioned(mibps) => {
                req.throughput_mode(ThroughputMode::Provisioned).provisioned_throughput_in_mibps(mibps)
            }
        };
        match req.send().await {
            Ok(out) => Ok(FileSystem {
                id: out.file_system_id,
                creation_token: out.creation_token,
                state: LifeCycle::parse(out.life_cycle_state.as_str()),
                performance_mode: out.performance_mode.as_str().to_string(),
                encrypted: out.encrypted.unwrap_or(false),
                tags: tags_of(&out.tags),
            }),
            Err(err) => {
                let existing = match err.as_service_error() {
                    Some(CreateFileSystemError::FileSystemAlreadyExists(e)) if !e.file_system_id.is_empty() => {
                        Some(e.file_system_id.clone())
                    }
                    _ => None,
                };
                let mut e = to_api_error(op, err);
                if let ErrorKind::AlreadyExists(id) = &mut e.kind {
                    *id = existing;
                }
                Err(e)
            }
        }
    }

    async fn describe_file_system(&self, lookup: &FileSystemLookup) -> Result<Option<FileSystem>, ApiError> {
        let req = self.describe_file_systems();
        let req = match lookup {
            FileSystemLookup::Id(id) => req.file_system_id(id),
            FileSystemLookup::CreationToken(token) => req.creation_token(token),
        };
        match req.send().await {
            Ok(out) => Ok(out.file_systems.unwrap_or_default().into_iter().next().map(file_system)),
            Err(err) => {
                let e = to_api_error(Operation::DescribeFileSystems, err);
                if e.kind == ErrorKind::NotFound { Ok(None) } else { Err(e) }
            }
        }
    }

    async fn delete_file_system(&self, file_system_id: &str) -> Result<(), ApiError> {
        self.delete_file_system()
            .file_system_id(file_system_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| to_api_error(Operation::DeleteFileSystem, e))
    }

    async fn put_lifecycle_configuration(&self, file_system_id: &str, rules: &[LifecycleRule]) -> Result<(), ApiError> {
        self.put_lifecycle_configuration()
            .file_system_id(file_system_id)
            .set_lifecycle_policies(Some(rules.iter().map(lifecycle_policy).collect()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| to_api_error(Operation::PutLifecycleConfiguration, e))
    }

    async fn create_mount_target(
        &self,
        file_system_id: &str,
        subnet_id: &str,
        security_groups: &[String],
    ) -> Result<MountTarget, ApiError> {
        let out = self
            .create_mount_target()
            .file_system_id(file_system_id)
            .subnet_id(subnet_id)
            .set_security_groups((!security_groups.is_empty()).then(|| security_groups.to_vec()))
            .send()
            .await
            .map_err(|e| to_api_error(Operation::CreateMountTarget, e))?;
        Ok(MountTarget {
            id: out.mount_target_id,
            file_system_id: out.file_system_id,
            subnet_id: out.subnet_id,
            availability_zone: out.availability_zone_name,
            state: LifeCycle::parse(out.life_cycle_state.as_str()),
        })
    }

    async fn describe_mount_targets(&self, file_system_id: &str) -> Result<Vec<MountTarget>, ApiError> {
        let out = self
            .describe_mount_targets()
            .file_system_id(file_system_id)
            .send()
            .await
            .map_err(|e| to_api_error(Operation::DescribeMountTargets, e))?;
        Ok(out.mount_targets.unwrap_or_default().into_iter().map(mount_target).collect())
    }

    async fn delete_mount_target(&self, mount_target_id: &str) -> Result<(), ApiError> {
        self.delete_mount_target()
            .mount_target_id(mount_target_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| to_api_error(Operation::DeleteMountTarget, e))
    }

    async fn create_access_point(&self, spec: &NewAccessPoint) -> Result<AccessPoint, ApiError> {
        let op = Operation::CreateAccessPoint;
        let bad =
            |e: aws_sdk_efs::error::BuildError| ApiError::new(op, ErrorKind::BadRequest, "Invalid", e.to_string());
        let posix = PosixUser::builder().uid(spec.uid).gid(spec.gid).build().map_err(bad)?;
        let creation = CreationInfo::builder()
            .owner_uid(spec.uid)
            .owner_gid(spec.gid)
            .permissions(&spec.permissions)
            .build()
            .map_err(bad)?;
        let root = RootDirectory::builder().path(&spec.path).creation_info(creation).build();
        let res = self
            .create_access_point()
            .client_token(&spec.client_token)
            .file_system_id(&spec.file_system_id)
            .posix_user(posix)
            .root_directory(root)
            .set_tags(Some(sdk_tags(&spec.tags, op)?))
            .send()
            .await;
        match res {
            Ok(out) => Ok(AccessPoint {
                id: out.access_point_id.unwrap_or_default(),
                file_system_id: out.file_system_id.unwrap_or_default(),
                posix_user: out.posix_user.map(|p| (p.uid, p.gid)),
                root_path: out.root_directory.and_then(|r| r.path),
                client_token: out.client_token,
                tags: tags_of(out.tags.as_deref().unwrap_or_default()),
                state: out.life_cycle_state.map_or(LifeCycle::Creating, |s| LifeCycle::parse(s.as_str())),
            }),
            Err(err) => {
                let existing = match err.as_service_error() {
                    Some(CreateAccessPointError::AccessPointAlreadyExists(e)) if !e.access_point_id.is_empty() => {
                        Some(e.access_point_id.clone())
                    }
                    _ => None,
                };
                let mut e = to_api_error(op, err);
                if let ErrorKind::AlreadyExists(id) = &mut e.kind {
                    *id = existing;
                }
                Err(e)
            }
        }
    }

    async fn describe_access_points(
        &self,
        file_system_id: &str,
        next_token: Option<&str>,
        page_size: u32,
    ) -> Result<AccessPointPage, ApiError> {
        let out = self
            .describe_access_points()
            .file_system_id(file_system_id)
            .max_results(page_size.clamp(1, crate::api::MAX_ACCESS_POINT_PAGE) as i32)
            .set_next_token(next_token.map(str::to_string))
            .send()
            .await
            .map_err(|e| to_api_error(Operation::DescribeAccessPoints, e))?;
        Ok(AccessPointPage {
            items: out.access_points.unwrap_or_default().into_iter().map(access_point).collect(),
            next_token: out.next_token.filter(|t| !t.is_empty()),
        })
    }

    async fn describe_access_point(&self, access_point_id: &str) -> Result<Option<AccessPoint>, ApiError> {
        match self.describe_access_points().access_point_id(access_point_id).send().await {
            Ok(out) => Ok(out.access_points.unwrap_or_default().into_iter().next().map(access_point)),
            Err(err) => {
                let e = to_api_error(Operation::DescribeAccessPoints, err);
                if e.kind == ErrorKind::NotFound { Ok(None) } else { Err(e) }
            }
        }
    }

    async fn delete_access_point(&self, access_point_id: &str) -> Result<(), ApiError> {
        self.delete_access_point()
            .access_point_id(access_point_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| to_api_error(Operation::DeleteAccessPoint, e))
    }

    async fn tag_resource(&self, resource_id: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
        let op = Operation::TagResource;
        self.tag_resource()
            .resource_id(resource_id)
            .set_tags(Some(sdk_tags(tags, op)?))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| to_api_error(op, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_codes_statuses_and_retry_quota_are_throttled() {
        assert_eq!(classify_code("ThrottlingException", Some(400), ""), ErrorKind::Throttled);
        assert_eq!(classify_code("Whatever", Some(429), ""), ErrorKind::Throttled);
        assert_eq!(classify_code("Whatever", Some(503), ""), ErrorKind::Throttled);
        assert_eq!(classify_code("", None, "dispatch failure: retry quota exceeded"), ErrorKind::Throttled);
    }

    #[test]
    fn refused_credentials_are_credentials_not_a_missing_permission() {
        for (code, status) in [
            ("UnrecognizedClientException", 403),
            ("InvalidClientTokenId", 403),
            ("InvalidSignatureException", 403),
            ("SignatureDoesNotMatch", 403),
            ("ExpiredToken", 403),
            ("ExpiredTokenException", 403),
            ("AuthFailure", 401),
        ] {
            assert_eq!(classify_code(code, Some(status), ""), ErrorKind::Credentials, "{code}");
        }
        assert_eq!(classify_code("AccessDeniedException", Some(403), ""), ErrorKind::AccessDenied);
    }

    #[test]
    fn permission_and_quota_codes_are_sorted() {
        assert_eq!(classify_code("AccessDeniedException", Some(403), ""), ErrorKind::AccessDenied);
        assert_eq!(classify_code("UnauthorizedOperation", Some(403), ""), ErrorKind::AccessDenied);
        assert_eq!(classify_code("FileSystemLimitExceeded", Some(403), ""), ErrorKind::LimitExceeded);
        assert_eq!(classify_code("FileSystemInUse", Some(409), ""), ErrorKind::InUse);
        assert_eq!(classify_code("InternalServerError", Some(500), ""), ErrorKind::Transient);
    }

    fn client_at(endpoint: &str, credentials: Option<aws_sdk_efs::config::SharedCredentialsProvider>) -> Client {
        let mut b = aws_sdk_efs::Config::builder()
            .behavior_version(aws_sdk_efs::config::BehaviorVersion::latest())
            .region(aws_sdk_efs::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .retry_config(aws_sdk_efs::config::retry::RetryConfig::disabled());
        b = match credentials {
            Some(c) => b.credentials_provider(c),
            None => b.credentials_provider(aws_sdk_efs::config::Credentials::new("a", "b", None, None, "test")),
        };
        Client::from_conf(b.build())
    }

    /// A port on loopback that nothing listens on.
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn a_missing_irsa_token_is_a_credentials_error_not_a_transient_one() {
        // IRSA as EKS sets it up, with the token file missing: what a broken
        // ServiceAccount annotation or projected volume looks like.
        let provider = aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
            .static_configuration(aws_config::web_identity_token::StaticConfiguration {
                web_identity_token_file: "/nonexistent/eks.amazonaws.com/serviceaccount/token".into(),
                role_arn: "arn:aws:iam::123456789012:role/efs-provisioner".into(),
                session_name: "efs-provisioner".into(),
            })
            .build();
        let shared = aws_sdk_efs::config::SharedCredentialsProvider::new(provider);
        let client = client_at(&closed_port(), Some(shared));
        let e = EfsApi::delete_file_system(&client, "fs-1").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Credentials, "{e}");
        assert_eq!(e.code, "CredentialsError");
    }

    #[tokio::test]
    async fn no_route_to_efs_is_unreachable_not_transient() {
        let client = client_at(&closed_port(), None);
        let e = EfsApi::delete_file_system(&client, "fs-1").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
        assert_eq!(e.code, "ConnectionError");
    }

    #[tokio::test]
    async fn a_dispatch_failure_keeps_the_sdk_error_so_the_message_names_the_refused_connection() {
        let client = client_at(&closed_port(), None);
        let e = EfsApi::delete_file_system(&client, "fs-1").await.unwrap_err();
        assert_eq!(e.to_string(), "EFS DeleteFileSystem failed: ConnectionError", "the cause is in the chain, once");
        let sdk = std::error::Error::source(&e).expect("the SDK error is the source");
        assert!(sdk.downcast_ref::<SdkError<aws_sdk_efs::operation::delete_file_system::DeleteFileSystemError, HttpResponse>>().is_some());
        // What the engine writes into the claim's event and the log.
        let message = crate::provisioner::explain_setup(&e, "us-east-1").expect("a set-up problem").chain();
        assert!(message.starts_with("could not reach EFS in us-east-1"), "{message}");
        assert!(message.contains("EFS DeleteFileSystem failed: ConnectionError: dispatch failure"), "{message}");
        assert!(message.to_ascii_lowercase().contains("connection refused"), "the io error at the end: {message}");
        let credentials = crate::provisioner::explain_setup(
            &ApiError::new(Operation::DeleteFileSystem, ErrorKind::Credentials, "CredentialsError", "")
                .with_source(std::io::Error::other("the web identity token file is missing")),
            "us-east-1",
        )
        .unwrap()
        .chain();
        assert!(credentials.ends_with("CredentialsError: the web identity token file is missing"), "{credentials}");
    }
}
