//! `efs-stand-in`: the EFS stand-in model (`efs-provisioner/tests/stand_in`)
//! served over HTTP, so the unchanged AWS SDK talks to it with its own
//! signing, retries, timeouts and error parsing. Started by
//! `tests/efs-stand-in/up` like moto; `--help` lists the flags.
//!
//! # Wire protocols
//! - EFS REST-JSON (restJson1) under `/2015-02-01/`: CreateFileSystem,
//!   DescribeFileSystems, DeleteFileSystem, PutLifecycleConfiguration,
//!   PutBackupPolicy, CreateMountTarget, DescribeMountTargets,
//!   DeleteMountTarget, CreateAccessPoint, DescribeAccessPoints,
//!   DeleteAccessPoint, TagResource. Errors as EFS sends them: the status of
//!   the API reference, header `x-amzn-ErrorType`, body `{"ErrorCode",
//!   "Message"}` (plus `FileSystemId` / `AccessPointId` on the
//!   `...AlreadyExists` errors).
//! - EC2 Query API on `POST /` (form-encoded): DescribeSubnets and
//!   DescribeSecurityGroups by id (`SubnetId.N`, `GroupId.N`) or by filter
//!   (`Filter.K.Name` `subnet-id` / `group-id` or `vpc-id`, with
//!   `Filter.K.Value.N`; what `efs-provisioner`'s EC2 client sends), answered
//!   in EC2's XML; unknown ids asked for by id are
//!   `InvalidSubnetID.NotFound` / `InvalidGroup.NotFound` in EC2's error XML
//!   (status 400), by filter simply left out, as EC2 does; another filter
//!   name is `InvalidParameterValue`. The call log's resource is the ids
//!   named either way.
//!
//! # Accounts
//! Every access key id (read from the SigV4 `Authorization` header) gets
//! its own region state, like an AWS account: tests that run in parallel
//! use one key each, so one test's faults and call log are not another's.
//! With `--access-key`, only the keys given are accepted.
//!
//! # Modelled rules
//! Those of the model (see its module docs): lifecycle states that change
//! over real time (`--time-scale` scales AWS's 30 s / 90 s), a `deleting`
//! mount target holding its zone and its file system (`FileSystemInUse`),
//! one mount target per zone and one VPC per file system, `SubnetNotFound`
//! and `SecurityGroupNotFound`, operations only on `available` file systems,
//! tag key/value limits and character set, lifecycle-rule validity
//! (`TransitionToArchive` needs Elastic throughput and General Purpose, and
//! comes after `TransitionToIA`), creation-token and client-token
//! idempotency (`...AlreadyExists` with the id), quotas (file systems per
//! region, access points per file system, 1 to 1,000 access points a page).
//! Added here: `CreationToken` 1 to 64 characters; provisioned throughput
//! needs `ProvisionedThroughputInMibps` (at least 1, at most
//! `--max-provisioned-mibps`, else `ThroughputLimitExceeded`);
//! PutBackupPolicy is recorded (`ENABLED` / `DISABLED`). CreateFileSystem's
//! `Backup` and `AvailabilityZoneName` reach the model as
//! `FileSystemOptions`, so its One Zone rules apply: a known zone
//! (`UnsupportedAvailabilityZone`), no maxIO, mount targets only in that
//! zone (`AvailabilityZonesMismatch`).
//!
//! # Faults (admin API, per account: `?account=<access key id>`)
//! `POST /_stand-in/faults` with a JSON object of any of:
//! `{"throttle": {"CreateFileSystem": 2}}` (the next n calls answer
//! `ThrottlingException`, 429, which the SDK retries), `{"hang":
//! {"DescribeFileSystems": 1}}` (the next n calls get no answer, the
//! connection is held), `{"deny": [{"operation": "CreateMountTarget",
//! "resource": "subnet-b"}]}` (`AccessDeniedException`, 403; no resource:
//! every one), `{"file_systems_fail": true}` (new file systems end in
//! `error`), `{"revoke": "UnrecognizedClientException"}` (or
//! `InvalidSignatureException`: every request of the key answers 403 with
//! that code, EC2 answers 401 `AuthFailure`), `{"time_scale": 0.01}`.
//! `GET /_stand-in/state`: the resources and their states; `GET
//! /_stand-in/calls`: every request (operation, milliseconds since the
//! account's first request, resource, file system, status, error code);
//! `POST /_stand-in/reset`: forget the account (without `account`: all).
//! `GET /_stand-in/` answers the server's settings (a health check).
//!
//! # Not modelled
//! Signatures are not verified (only the access key id is read); no
//! pagination of DescribeFileSystems / DescribeMountTargets (`Marker`);
//! DescribeFileSystems / DescribeAccessPoints without a filter list
//! everything without paging; no `updating` state (UpdateFileSystem is not
//! served), no replication, file system policies, account preferences,
//! UntagResource or ListTagsForResource; IP addresses are invented and
//! `IpAddressInUse` / `NoFreeAddressesInSubnet` never happen; EC2 filters
//! other than the ids and `vpc-id` are refused; the DNS name of a file
//! system is not served.

// The error side of a handler is the HTTP reply itself; its size does not matter here.
#![allow(clippy::result_large_err)]

#[path = "../../efs-provisioner/tests/stand_in/mod.rs"]
mod stand_in;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use efs_provisioner::api::{
    AccessPoint, ApiError, EfsApi, ErrorKind, FileSystem, FileSystemLookup, FileSystemOptions, LifecycleRule,
    MountTarget, NetworkApi, NewAccessPoint, NewFileSystem, Operation, PerformanceMode, SecurityGroup, Subnet,
    Throughput,
};
use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use stand_in::{Aws, Timing};
use tokio::net::TcpListener;

/// The EFS stand-in over HTTP (see the crate docs for the rules and the admin API).
#[derive(Parser, Debug, Clone)]
#[command(name = "efs-stand-in")]
struct Args {
    /// Address to listen on (port 0: a free one, written to --port-file).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// File to write the port to once listening.
    #[arg(long)]
    port_file: Option<std::path::PathBuf>,
    /// AWS's timings (file system 30 s, mount target 90 s) times this factor.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// The region in ARNs and owner ids.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// The account id in ARNs and owner ids.
    #[arg(long, default_value = "123456789012")]
    account_id: String,
    /// Accept only these access key ids (others: 403 UnrecognizedClientException). Default: any.
    #[arg(long = "access-key")]
    access_keys: Vec<String>,
    /// Subnets to pre-create, as `id:zone:vpc` (default: the model's `SUBNETS`).
    #[arg(long = "subnet")]
    subnets: Vec<String>,
    /// Security groups to pre-create, as `id:vpc` (default: `sg-1:vpc-1`, `sg-2:vpc-2`).
    #[arg(long = "security-group")]
    security_groups: Vec<String>,
    /// File systems per region.
    #[arg(long, default_value_t = 1000)]
    max_file_systems: usize,
    /// Access points per file system.
    #[arg(long, default_value_t = 10_000)]
    max_access_points: usize,
    /// The largest ProvisionedThroughputInMibps accepted.
    #[arg(long, default_value_t = 3414.0)]
    max_provisioned_mibps: f64,
}

/// What the model does not hold: the server's own record of an account.
#[derive(Default)]
struct Extras {
    /// When each file system was created (Unix seconds), for `CreationTime`.
    created: BTreeMap<String, f64>,
    /// Backup policy status by file system.
    backup: BTreeMap<String, String>,
    /// Provisioned throughput by file system.
    mibps: BTreeMap<String, f64>,
    /// Every request.
    calls: Vec<Value>,
    /// 403 with this code for every request.
    revoked: Option<String>,
    first: Option<std::time::Instant>,
}

struct Account {
    aws: Arc<Aws>,
    extras: Mutex<Extras>,
}

impl Account {
    fn extras(&self) -> MutexGuard<'_, Extras> {
        self.extras.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Server {
    args: Args,
    subnets: Vec<Subnet>,
    security_groups: Vec<SecurityGroup>,
    accounts: Mutex<BTreeMap<String, Arc<Account>>>,
}

type Reply = Response<Full<Bytes>>;

const ALL_OPERATIONS: [Operation; 13] = [
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

fn operation(name: &str) -> Option<Operation> {
    ALL_OPERATIONS.iter().copied().find(|o| o.name() == name)
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = format!("{:016x}", rand::random::<u64>()).parse() {
        r.headers_mut().insert("x-amzn-RequestId", v);
    }
    r
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    reply(status, "application/json", body.to_string())
}

/// An EFS error as EFS sends it.
fn efs_error(status: u16, code: &str, message: &str, extra: Option<(&str, &str)>) -> Reply {
    let mut body = json!({ "ErrorCode": code, "Message": message });
    if let Some((k, v)) = extra {
        body[k] = json!(v);
    }
    let mut r = json_reply(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), &body);
    if let Ok(v) = code.parse() {
        r.headers_mut().insert("x-amzn-ErrorType", v);
    }
    r
}

/// The HTTP status EFS answers `code` with (the API reference's "Errors" sections).
fn efs_status(code: &str) -> u16 {
    match code {
        "BadRequest"
        | "SubnetNotFound"
        | "SecurityGroupNotFound"
        | "SecurityGroupLimitExceeded"
        | "UnsupportedAvailabilityZone"
        | "ThroughputLimitExceeded"
        | "AvailabilityZonesMismatch" => 400,
        "FileSystemNotFound" | "MountTargetNotFound" | "AccessPointNotFound" | "PolicyNotFound" => 404,
        "FileSystemAlreadyExists"
        | "AccessPointAlreadyExists"
        | "FileSystemInUse"
        | "MountTargetConflict"
        | "IncorrectFileSystemLifeCycleState"
        | "IncorrectMountTargetState"
        | "IpAddressInUse"
        | "NetworkInterfaceLimitExceeded"
        | "NoFreeAddressesInSubnet" => 409,
        "FileSystemLimitExceeded" | "AccessPointLimitExceeded" | "AccessDeniedException" => 403,
        "ThrottlingException" => 429,
        "InsufficientThroughputCapacity" => 503,
        _ => 500,
    }
}

fn api_error_reply(e: &ApiError) -> Reply {
    let extra = match (&e.kind, e.code.as_str()) {
        (ErrorKind::AlreadyExists(Some(id)), "FileSystemAlreadyExists") => Some(("FileSystemId", id.as_str())),
        (ErrorKind::AlreadyExists(Some(id)), "AccessPointAlreadyExists") => Some(("AccessPointId", id.as_str())),
        _ => None,
    };
    // The model's SDK-layer faults have no wire form; the admin API's
    // `revoke` and `hang` are their HTTP counterparts.
    let code = match e.kind {
        ErrorKind::Credentials => "UnrecognizedClientException",
        _ => e.code.as_str(),
    };
    let status = if code == "UnrecognizedClientException" { 403 } else { efs_status(code) };
    efs_error(status, code, &e.message, extra)
}

fn bad(message: impl AsRef<str>) -> Reply {
    efs_error(400, "BadRequest", message.as_ref(), None)
}

// ---- small parsers (no URL crate in the tree for this) ----

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_pairs(s: &str, plus_is_space: bool) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, plus_is_space), percent_decode(v, plus_is_space))
        })
        .collect()
}

/// The access key id of a SigV4 `Authorization` header.
fn access_key_id(authorization: &str) -> Option<String> {
    let cred = authorization.split("Credential=").nth(1)?;
    let key = cred.split('/').next()?.trim();
    (!key.is_empty()).then(|| key.to_string())
}

// ---- descriptions in the API's shapes ----

impl Server {
    fn zone_id(zone: &str) -> String {
        // `us-east-1a` -> `use1-az1`-like; only its presence matters to clients.
        format!("{}-az{}", zone.chars().filter(|c| c.is_ascii_alphanumeric()).take(4).collect::<String>(), zone.len())
    }

    fn fs_json(&self, a: &Account, fs: &FileSystem) -> Value {
        let w = a.aws.world();
        let x = a.extras();
        let held = w.file_systems.get(&fs.id);
        let mts = w.mount_targets.values().filter(|m| m.file_system_id == fs.id).count();
        let mut v = json!({
            "OwnerId": self.args.account_id,
            "CreationToken": fs.creation_token,
            "FileSystemId": fs.id,
            "FileSystemArn": format!("arn:aws:elasticfilesystem:{}:{}:file-system/{}", self.args.region, self.args.account_id, fs.id),
            "CreationTime": x.created.get(&fs.id).copied().unwrap_or_else(unix_now).floor(),
            "LifeCycleState": lifecycle(fs.state),
            "NumberOfMountTargets": mts,
            "SizeInBytes": { "Value": 6144 },
            "PerformanceMode": fs.performance_mode,
            "Encrypted": fs.encrypted,
            "Tags": tags_json(&fs.tags),
        });
        if let Some(name) = fs.tags.get("Name") {
            v["Name"] = json!(name);
        }
        if let Some(f) = held {
            v["ThroughputMode"] = json!(match f.spec.throughput {
                Throughput::Bursting => "bursting",
                Throughput::Elastic => "elastic",
                Throughput::Provisioned(_) => "provisioned",
            });
            if let Throughput::Provisioned(m) = f.spec.throughput {
                v["ProvisionedThroughputInMibps"] = json!(m);
            }
            if f.spec.encrypted {
                v["KmsKeyId"] = json!(f.spec.kms_key_id.clone().unwrap_or_else(|| format!(
                    "arn:aws:kms:{}:{}:alias/aws/elasticfilesystem",
                    self.args.region, self.args.account_id
                )));
            }
        }
        if let Some(zone) = held.and_then(|f| f.options.availability_zone_name.as_ref()) {
            v["AvailabilityZoneName"] = json!(zone);
            v["AvailabilityZoneId"] = json!(Self::zone_id(zone));
        }
        v
    }

    fn mt_json(&self, a: &Account, mt: &MountTarget) -> Value {
        let w = a.aws.world();
        let vpc = w.mount_targets.get(&mt.id).map(|m| m.subnet.vpc_id.clone()).unwrap_or_default();
        let n = mt.id.chars().filter(char::is_ascii_hexdigit).collect::<String>();
        let n = u64::from_str_radix(&n[n.len().saturating_sub(4)..], 16).unwrap_or(0);
        let zone = mt.availability_zone.clone().unwrap_or_default();
        json!({
            "OwnerId": self.args.account_id,
            "MountTargetId": mt.id,
            "FileSystemId": mt.file_system_id,
            "SubnetId": mt.subnet_id,
            "LifeCycleState": lifecycle(mt.state),
            "IpAddress": format!("10.0.{}.{}", (n >> 8) & 0xff, n & 0xff),
            "NetworkInterfaceId": format!("eni-{}", mt.id.trim_start_matches("fsmt-")),
            "AvailabilityZoneId": Self::zone_id(&zone),
            "AvailabilityZoneName": zone,
            "VpcId": vpc,
        })
    }

    fn ap_json(&self, ap: &AccessPoint, permissions: Option<String>) -> Value {
        let mut v = json!({
            "ClientToken": ap.client_token,
            "Tags": tags_json(&ap.tags),
            "AccessPointId": ap.id,
            "AccessPointArn": format!("arn:aws:elasticfilesystem:{}:{}:access-point/{}", self.args.region, self.args.account_id, ap.id),
            "FileSystemId": ap.file_system_id,
            "OwnerId": self.args.account_id,
            "LifeCycleState": lifecycle(ap.state),
        });
        if let Some(name) = ap.tags.get("Name") {
            v["Name"] = json!(name);
        }
        if let Some((uid, gid)) = ap.posix_user {
            v["PosixUser"] = json!({ "Uid": uid, "Gid": gid });
            let mut root = json!({ "Path": ap.root_path.clone().unwrap_or_else(|| "/".into()) });
            if let Some(p) = permissions {
                root["CreationInfo"] = json!({ "OwnerUid": uid, "OwnerGid": gid, "Permissions": p });
            }
            v["RootDirectory"] = root;
        }
        v
    }
}

fn lifecycle(s: efs_provisioner::api::LifeCycle) -> &'static str {
    use efs_provisioner::api::LifeCycle::*;
    match s {
        Creating => "creating",
        Available => "available",
        Updating => "updating",
        Deleting => "deleting",
        Deleted => "deleted",
        Error => "error",
    }
}

fn tags_json(tags: &BTreeMap<String, String>) -> Value {
    Value::Array(tags.iter().map(|(k, v)| json!({ "Key": k, "Value": v })).collect())
}

fn tags_of(v: &Value) -> Result<BTreeMap<String, String>, Reply> {
    let mut out = BTreeMap::new();
    for t in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let (Some(k), Some(val)) = (t["Key"].as_str(), t["Value"].as_str()) else {
            return Err(bad("a tag needs Key and Value"));
        };
        out.insert(k.to_string(), val.to_string());
    }
    Ok(out)
}

/// The access point's creation permissions, which the model's `AccessPoint` does not carry.
fn permissions_of(a: &Account, ap_id: &str) -> Option<String> {
    a.aws.world().access_points.get(ap_id).map(|x| x.spec.permissions.clone())
}

// ---- the server ----

impl Server {
    fn new(args: Args) -> Result<Self, String> {
        let subnets = if args.subnets.is_empty() {
            stand_in::SUBNETS
                .iter()
                .map(|(id, az, vpc)| Subnet {
                    id: id.to_string(),
                    availability_zone: az.to_string(),
                    vpc_id: vpc.to_string(),
                })
                .collect()
        } else {
            args.subnets
                .iter()
                .map(|s| match s.split(':').collect::<Vec<_>>()[..] {
                    [id, az, vpc] => Ok(Subnet { id: id.into(), availability_zone: az.into(), vpc_id: vpc.into() }),
                    _ => Err(format!("--subnet {s}: expected id:zone:vpc")),
                })
                .collect::<Result<_, _>>()?
        };
        let security_groups = if args.security_groups.is_empty() {
            vec![
                SecurityGroup { id: "sg-1".into(), vpc_id: "vpc-1".into() },
                SecurityGroup { id: "sg-2".into(), vpc_id: "vpc-2".into() },
            ]
        } else {
            args.security_groups
                .iter()
                .map(|s| match s.split(':').collect::<Vec<_>>()[..] {
                    [id, vpc] => Ok(SecurityGroup { id: id.into(), vpc_id: vpc.into() }),
                    _ => Err(format!("--security-group {s}: expected id:vpc")),
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Server { args, subnets, security_groups, accounts: Mutex::new(BTreeMap::new()) })
    }

    fn account(&self, key: &str) -> Arc<Account> {
        let mut all = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(key.to_string())
            .or_insert_with(|| {
                let aws = Aws::with(|w| {
                    w.timing = Timing::default().scaled(self.args.time_scale);
                    w.subnets = self.subnets.iter().map(|s| (s.id.clone(), s.clone())).collect();
                    w.security_groups = self.security_groups.iter().map(|g| (g.id.clone(), g.clone())).collect();
                    w.max_file_systems = self.args.max_file_systems;
                    w.max_access_points = self.args.max_access_points;
                });
                Arc::new(Account { aws, extras: Mutex::new(Extras::default()) })
            })
            .clone()
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = parse_pairs(req.uri().query().unwrap_or(""), true);
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return bad(format!("cannot read the body: {e}")),
        };
        if let Some(admin) = path.strip_prefix("/_stand-in") {
            return self.admin(&method, admin, &query, &body);
        }
        let ec2 = !path.starts_with("/2015-02-01/");
        let Some(key) = auth.as_deref().and_then(access_key_id) else {
            return if ec2 {
                ec2_error(401, "AuthFailure", "AWS was not able to validate the provided access credentials")
            } else {
                efs_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token", None)
            };
        };
        if !self.args.access_keys.is_empty() && !self.args.access_keys.contains(&key) {
            return if ec2 {
                ec2_error(401, "AuthFailure", "AWS was not able to validate the provided access credentials")
            } else {
                efs_error(
                    403,
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                    None,
                )
            };
        }
        let account = self.account(&key);
        let revoked = account.extras().revoked.clone();
        if ec2 {
            let form = parse_pairs(&String::from_utf8_lossy(&body), true);
            let action = form.get("Action").cloned().unwrap_or_default();
            if revoked.is_some() {
                let entry = account.log(&action, "", None);
                account.finish(entry, 401, Some("AuthFailure"));
                return ec2_error(401, "AuthFailure", "AWS was not able to validate the provided access credentials");
            }
            return self.ec2(&account, &action, &form).await;
        }
        if let Some(code) = revoked {
            let (op, resource) = efs_route_name(&method, &path);
            let entry = account.log(op, &resource, None);
            account.finish(entry, 403, Some(&code));
            let message = if code == "InvalidSignatureException" {
                "The request signature we calculated does not match the signature you provided."
            } else {
                "The security token included in the request is invalid."
            };
            return efs_error(403, &code, message, None);
        }
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return bad(format!("the body is not JSON: {e}")),
            }
        };
        self.efs(&account, &method, &path, &query, &body).await
    }

    async fn efs(&self, a: &Account, method: &Method, path: &str, q: &BTreeMap<String, String>, body: &Value) -> Reply {
        let rest = path.trim_start_matches("/2015-02-01/");
        let parts: Vec<String> = rest.split('/').map(|p| percent_decode(p, false)).collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let (op, resource, fs_hint) = match (method, &parts[..]) {
            (&Method::POST, ["file-systems"]) => {
                (Operation::CreateFileSystem, body["CreationToken"].as_str().unwrap_or("").to_string(), None)
            }
            (&Method::GET, ["file-systems"]) => {
                let r = q.get("FileSystemId").or(q.get("CreationToken")).cloned().unwrap_or_default();
                (Operation::DescribeFileSystems, r, q.get("FileSystemId").cloned())
            }
            (&Method::DELETE, ["file-systems", id]) => {
                (Operation::DeleteFileSystem, id.to_string(), Some(id.to_string()))
            }
            (&Method::PUT, ["file-systems", id, "lifecycle-configuration"]) => {
                (Operation::PutLifecycleConfiguration, id.to_string(), Some(id.to_string()))
            }
            (&Method::PUT, ["file-systems", id, "backup-policy"]) => {
                return self.put_backup_policy(a, id, body);
            }
            (&Method::POST, ["mount-targets"]) => {
                let fs = body["FileSystemId"].as_str().map(str::to_string);
                (Operation::CreateMountTarget, body["SubnetId"].as_str().unwrap_or("").to_string(), fs)
            }
            (&Method::GET, ["mount-targets"]) => {
                let r = q.get("FileSystemId").or(q.get("MountTargetId")).cloned().unwrap_or_default();
                (Operation::DescribeMountTargets, r, q.get("FileSystemId").cloned())
            }
            (&Method::DELETE, ["mount-targets", id]) => {
                let fs = a.aws.world().mount_targets.get(*id).map(|m| m.file_system_id.clone());
                (Operation::DeleteMountTarget, id.to_string(), fs)
            }
            (&Method::POST, ["access-points"]) => {
                let fs = body["FileSystemId"].as_str().unwrap_or("").to_string();
                (Operation::CreateAccessPoint, fs.clone(), Some(fs))
            }
            (&Method::GET, ["access-points"]) => {
                let r = q.get("AccessPointId").or(q.get("FileSystemId")).cloned().unwrap_or_default();
                (Operation::DescribeAccessPoints, r, q.get("FileSystemId").cloned())
            }
            (&Method::DELETE, ["access-points", id]) => {
                let fs = a.aws.world().access_points.get(*id).map(|x| x.spec.file_system_id.clone());
                (Operation::DeleteAccessPoint, id.to_string(), fs)
            }
            (&Method::POST, ["resource-tags", id]) => {
                let fs = if id.starts_with("fs-") { Some(id.to_string()) } else { None };
                (Operation::TagResource, id.to_string(), fs)
            }
            _ => return efs_error(404, "UnknownOperationException", &format!("no operation at {method} {path}"), None),
        };
        let entry = a.log(op.name(), &resource, fs_hint);
        let r = self.efs_op(a, op, &parts, q, body).await;
        let (status, code, fs) = match &r {
            Ok((status, _, fs)) => (status.as_u16(), None, fs.clone()),
            Err(reply) => {
                let code = reply.headers().get("x-amzn-ErrorType").and_then(|v| v.to_str().ok()).map(str::to_string);
                (reply.status().as_u16(), code, None)
            }
        };
        if let Some(fs) = fs {
            a.extras().calls[entry]["file_system"] = json!(fs);
        }
        a.finish(entry, status, code.as_deref());
        match r {
            Ok((status, v, _)) => match v {
                Some(v) => json_reply(status, &v),
                None => reply(status, "application/json", ""),
            },
            Err(reply) => reply,
        }
    }

    /// One EFS operation: (status, body, the file system it made) or the error reply.
    async fn efs_op(
        &self,
        a: &Account,
        op: Operation,
        parts: &[&str],
        q: &BTreeMap<String, String>,
        body: &Value,
    ) -> Result<(StatusCode, Option<Value>, Option<String>), Reply> {
        let api = |e: ApiError| api_error_reply(&e);
        match op {
            Operation::CreateFileSystem => {
                let spec = self.new_file_system(body)?;
                // The model applies the One Zone rules (a known zone, no
                // maxIO, mount targets only in that zone).
                let options = FileSystemOptions {
                    backup: body["Backup"].as_bool(),
                    availability_zone_name: body["AvailabilityZoneName"].as_str().map(str::to_string),
                };
                let fs = a.aws.create_file_system_with(&spec, &options).await.map_err(api)?;
                {
                    let mut x = a.extras();
                    x.created.insert(fs.id.clone(), unix_now());
                    // One Zone file systems get automatic backups unless told otherwise.
                    let backup = options.backup.unwrap_or(options.availability_zone_name.is_some());
                    x.backup.insert(fs.id.clone(), if backup { "ENABLED" } else { "DISABLED" }.into());
                    if let Throughput::Provisioned(m) = spec.throughput {
                        x.mibps.insert(fs.id.clone(), m);
                    }
                }
                Ok((StatusCode::CREATED, Some(self.fs_json(a, &fs)), Some(fs.id)))
            }
            Operation::DescribeFileSystems => {
                let found = match (q.get("FileSystemId"), q.get("CreationToken")) {
                    (Some(id), _) => {
                        match a.aws.describe_file_system(&FileSystemLookup::Id(id.clone())).await.map_err(api)? {
                            Some(fs) => vec![fs],
                            None => {
                                return Err(efs_error(
                                    404,
                                    "FileSystemNotFound",
                                    &format!("File system '{id}' does not exist."),
                                    None,
                                ));
                            }
                        }
                    }
                    (None, Some(t)) => a
                        .aws
                        .describe_file_system(&FileSystemLookup::CreationToken(t.clone()))
                        .await
                        .map_err(api)?
                        .into_iter()
                        .collect(),
                    // No filter: one gated request, then every file system.
                    (None, None) => {
                        a.aws
                            .describe_file_system(&FileSystemLookup::CreationToken(String::new()))
                            .await
                            .map_err(api)?;
                        snapshot(a).0
                    }
                };
                let list: Vec<Value> = found.iter().map(|f| self.fs_json(a, f)).collect();
                Ok((StatusCode::OK, Some(json!({ "FileSystems": list })), None))
            }
            Operation::DeleteFileSystem => {
                a.aws.delete_file_system(parts[1]).await.map_err(api)?;
                Ok((StatusCode::NO_CONTENT, None, None))
            }
            Operation::PutLifecycleConfiguration => {
                let mut rules = Vec::new();
                for p in body["LifecyclePolicies"].as_array().map(Vec::as_slice).unwrap_or_default() {
                    let one = [
                        ("TransitionToIA", LifecycleRule::TransitionToIa as fn(String) -> LifecycleRule),
                        ("TransitionToArchive", LifecycleRule::TransitionToArchive),
                        ("TransitionToPrimaryStorageClass", LifecycleRule::TransitionToPrimaryStorageClass),
                    ];
                    let set: Vec<LifecycleRule> =
                        one.iter().filter_map(|(k, f)| p[*k].as_str().map(|v| f(v.to_string()))).collect();
                    if set.len() != 1 {
                        return Err(bad("each LifecyclePolicy names exactly one transition"));
                    }
                    rules.extend(set);
                }
                a.aws.put_lifecycle_configuration(parts[1], &rules).await.map_err(api)?;
                Ok((StatusCode::OK, Some(json!({ "LifecyclePolicies": body["LifecyclePolicies"].clone() })), None))
            }
            Operation::CreateMountTarget => {
                let (Some(fs), Some(subnet)) = (body["FileSystemId"].as_str(), body["SubnetId"].as_str()) else {
                    return Err(bad("FileSystemId and SubnetId are required"));
                };
                let sgs: Vec<String> = body["SecurityGroups"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                let mt = a.aws.create_mount_target(fs, subnet, &sgs).await.map_err(api)?;
                Ok((StatusCode::OK, Some(self.mt_json(a, &mt)), Some(fs.to_string())))
            }
            Operation::DescribeMountTargets => {
                let fs = match (q.get("FileSystemId"), q.get("MountTargetId")) {
                    (Some(fs), _) => fs.clone(),
                    (None, Some(mt)) => match a.aws.world().mount_targets.get(mt) {
                        Some(m) => m.file_system_id.clone(),
                        None => {
                            return Err(efs_error(
                                404,
                                "MountTargetNotFound",
                                &format!("Mount target '{mt}' does not exist."),
                                None,
                            ));
                        }
                    },
                    _ => return Err(bad("FileSystemId or MountTargetId is required")),
                };
                let mts = a.aws.describe_mount_targets(&fs).await.map_err(api)?;
                let only = q.get("MountTargetId");
                let list: Vec<Value> =
                    mts.iter().filter(|m| only.is_none_or(|o| &m.id == o)).map(|m| self.mt_json(a, m)).collect();
                Ok((StatusCode::OK, Some(json!({ "MountTargets": list })), None))
            }
            Operation::DeleteMountTarget => {
                a.aws.delete_mount_target(parts[1]).await.map_err(api)?;
                Ok((StatusCode::NO_CONTENT, None, None))
            }
            Operation::CreateAccessPoint => {
                let spec = new_access_point(body)?;
                let ap = a.aws.create_access_point(&spec).await.map_err(api)?;
                Ok((StatusCode::OK, Some(self.ap_json(&ap, Some(spec.permissions.clone()))), None))
            }
            Operation::DescribeAccessPoints => {
                if let Some(id) = q.get("AccessPointId") {
                    return match a.aws.describe_access_point(id).await.map_err(api)? {
                        Some(ap) => {
                            let p = permissions_of(a, &ap.id);
                            Ok((StatusCode::OK, Some(json!({ "AccessPoints": [self.ap_json(&ap, p)] })), None))
                        }
                        None => Err(efs_error(
                            404,
                            "AccessPointNotFound",
                            &format!("Access point '{id}' does not exist."),
                            None,
                        )),
                    };
                }
                let Some(fs) = q.get("FileSystemId") else {
                    return Err(bad("FileSystemId or AccessPointId is required"));
                };
                let page_size = match q.get("MaxResults") {
                    Some(m) => m.parse::<u32>().map_err(|_| bad("MaxResults must be a number"))?,
                    None => 100,
                };
                let page = a
                    .aws
                    .describe_access_points(fs, q.get("NextToken").map(String::as_str), page_size)
                    .await
                    .map_err(api)?;
                let list: Vec<Value> =
                    page.items.iter().map(|ap| self.ap_json(ap, permissions_of(a, &ap.id))).collect();
                let mut v = json!({ "AccessPoints": list });
                if let Some(t) = page.next_token {
                    v["NextToken"] = json!(t);
                }
                Ok((StatusCode::OK, Some(v), None))
            }
            Operation::DeleteAccessPoint => {
                a.aws.delete_access_point(parts[1]).await.map_err(api)?;
                Ok((StatusCode::NO_CONTENT, None, None))
            }
            Operation::TagResource => {
                let tags = tags_of(&body["Tags"])?;
                a.aws.tag_resource(parts[1], &tags).await.map_err(api)?;
                Ok((StatusCode::OK, None, None))
            }
            Operation::DescribeSubnets | Operation::DescribeSecurityGroups => Err(bad("not an EFS operation")),
        }
    }

    fn new_file_system(&self, body: &Value) -> Result<NewFileSystem, Reply> {
        let token = body["CreationToken"].as_str().unwrap_or("");
        if token.is_empty() || token.chars().count() > 64 {
            return Err(bad("CreationToken must be 1 to 64 characters"));
        }
        let performance_mode = match body["PerformanceMode"].as_str().unwrap_or("generalPurpose") {
            "generalPurpose" => PerformanceMode::GeneralPurpose,
            "maxIO" => PerformanceMode::MaxIo,
            other => return Err(bad(format!("PerformanceMode {other:?} is not generalPurpose or maxIO"))),
        };
        let throughput = match body["ThroughputMode"].as_str().unwrap_or("bursting") {
            "bursting" => Throughput::Bursting,
            "elastic" => Throughput::Elastic,
            "provisioned" => {
                let Some(m) = body["ProvisionedThroughputInMibps"].as_f64() else {
                    return Err(bad("ProvisionedThroughputInMibps is required with the provisioned throughput mode"));
                };
                if m < 1.0 {
                    return Err(bad("ProvisionedThroughputInMibps must be at least 1.0"));
                }
                if m > self.args.max_provisioned_mibps {
                    return Err(efs_error(
                        400,
                        "ThroughputLimitExceeded",
                        &format!("{m} MiB/s is above the account's limit of {} MiB/s", self.args.max_provisioned_mibps),
                        None,
                    ));
                }
                Throughput::Provisioned(m)
            }
            other => return Err(bad(format!("ThroughputMode {other:?} is not bursting, provisioned or elastic"))),
        };
        Ok(NewFileSystem {
            creation_token: token.to_string(),
            performance_mode,
            throughput,
            encrypted: body["Encrypted"].as_bool().unwrap_or(false),
            kms_key_id: body["KmsKeyId"].as_str().map(str::to_string),
            tags: tags_of(&body["Tags"])?,
        })
    }

    fn put_backup_policy(&self, a: &Account, id: &str, body: &Value) -> Reply {
        let entry = a.log("PutBackupPolicy", id, Some(id.to_string()));
        let status = body["BackupPolicy"]["Status"].as_str().unwrap_or("");
        let r = if !matches!(status, "ENABLED" | "DISABLED") {
            bad("BackupPolicy.Status must be ENABLED or DISABLED")
        } else if !a.aws.world().file_systems.contains_key(id) {
            efs_error(404, "FileSystemNotFound", &format!("File system '{id}' does not exist."), None)
        } else {
            a.extras().backup.insert(id.to_string(), status.to_string());
            json_reply(StatusCode::OK, &json!({ "BackupPolicy": { "Status": status } }))
        };
        let code = r.headers().get("x-amzn-ErrorType").and_then(|v| v.to_str().ok()).map(str::to_string);
        a.finish(entry, r.status().as_u16(), code.as_deref());
        r
    }

    async fn ec2(&self, a: &Account, action: &str, form: &BTreeMap<String, String>) -> Reply {
        let ids = |prefix: &str| -> Vec<String> {
            let mut v: Vec<(u32, String)> =
                form.iter().filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.parse().ok()?, v.clone()))).collect();
            v.sort();
            v.into_iter().map(|(_, id)| id).collect()
        };
        let (op, prefix, id_filter) = match action {
            "DescribeSubnets" => (Operation::DescribeSubnets, "SubnetId.", "subnet-id"),
            "DescribeSecurityGroups" => (Operation::DescribeSecurityGroups, "GroupId.", "group-id"),
            _ => {
                return ec2_error(
                    400,
                    "InvalidAction",
                    &format!("The action {action} is not valid for this web service."),
                );
            }
        };
        // By id (`SubnetId.N`: an unknown id is an error) and by filter
        // (`Filter.K.Name` / `Filter.K.Value.N`: what does not match is left out).
        let by_id = ids(prefix);
        let filters: Vec<(String, Vec<String>)> = (1..)
            .map_while(|k| {
                let name = form.get(&format!("Filter.{k}.Name"))?;
                Some((name.clone(), ids(&format!("Filter.{k}.Value."))))
            })
            .collect();
        let filtered_ids: Vec<String> =
            filters.iter().filter(|(n, _)| n == id_filter).flat_map(|(_, v)| v.clone()).collect();
        let named: Vec<String> = by_id.iter().chain(&filtered_ids).cloned().collect();
        let entry = a.log(action, &named.join(","), None);
        if let Some((name, _)) = filters.iter().find(|(n, _)| n != id_filter && n != "vpc-id") {
            let r = ec2_error(400, "InvalidParameterValue", &format!("The filter '{name}' is invalid"));
            a.finish(entry, 400, Some("InvalidParameterValue"));
            return r;
        }
        let matches = |id: &str, vpc: &str| {
            filters.iter().all(|(name, values)| {
                let have = if name == "vpc-id" { vpc } else { id };
                values.iter().any(|v| v == have)
            })
        };
        // The ids the model is asked for: those named, else every one.
        let mut wanted = if by_id.is_empty() { filtered_ids.clone() } else { by_id.clone() };
        if wanted.is_empty() {
            wanted = match op {
                Operation::DescribeSubnets => self.subnets.iter().map(|s| s.id.clone()).collect(),
                _ => self.security_groups.iter().map(|s| s.id.clone()).collect(),
            };
        }
        let result = match op {
            Operation::DescribeSubnets => a.aws.describe_subnets(&wanted).await.map(|s| {
                let found: BTreeSet<String> = s.iter().map(|x| x.id.clone()).collect();
                let items: String =
                    s.iter().filter(|x| matches(&x.id, &x.vpc_id)).map(|x| self.subnet_xml(x)).collect();
                (found, format!("<subnetSet>{items}</subnetSet>"))
            }),
            _ => a.aws.describe_security_groups(&wanted).await.map(|g| {
                let found: BTreeSet<String> = g.iter().map(|x| x.id.clone()).collect();
                let items: String = g.iter().filter(|x| matches(&x.id, &x.vpc_id)).map(|x| self.group_xml(x)).collect();
                (found, format!("<securityGroupInfo>{items}</securityGroupInfo>"))
            }),
        };
        let r = match result {
            Err(e) => {
                let (status, code) = match e.kind {
                    ErrorKind::Throttled => (503, "RequestLimitExceeded"),
                    ErrorKind::AccessDenied => (403, "UnauthorizedOperation"),
                    ErrorKind::Credentials => (401, "AuthFailure"),
                    _ => (500, "InternalError"),
                };
                ec2_error(status, code, &e.message)
            }
            Ok((found, items)) => {
                // Only ids asked for by id are errors when unknown.
                let missing: Vec<&String> = by_id.iter().filter(|i| !found.contains(*i)).collect();
                if let Some(first) = missing.first() {
                    let list = missing.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", ");
                    match op {
                        Operation::DescribeSubnets => ec2_error(
                            400,
                            "InvalidSubnetID.NotFound",
                            &if missing.len() == 1 {
                                format!("The subnet ID '{first}' does not exist")
                            } else {
                                format!("The subnet IDs {list} do not exist")
                            },
                        ),
                        _ => ec2_error(
                            400,
                            "InvalidGroup.NotFound",
                            &format!("The security group {list} does not exist"),
                        ),
                    }
                } else {
                    let body = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                         <requestId>{:08x}-stand-in</requestId>{items}</{action}Response>",
                        rand::random::<u32>()
                    );
                    reply(StatusCode::OK, "text/xml;charset=UTF-8", body)
                }
            }
        };
        let code = (!r.status().is_success()).then(|| {
            let b = ec2_code_of(&r);
            b.unwrap_or_default()
        });
        a.finish(entry, r.status().as_u16(), code.as_deref());
        r
    }

    fn subnet_xml(&self, s: &Subnet) -> String {
        format!(
            "<item><subnetId>{id}</subnetId><subnetArn>arn:aws:ec2:{r}:{acct}:subnet/{id}</subnetArn><state>available</state>\
             <vpcId>{vpc}</vpcId><ownerId>{acct}</ownerId><cidrBlock>10.0.0.0/20</cidrBlock>\
             <availableIpAddressCount>4091</availableIpAddressCount><availabilityZone>{az}</availabilityZone>\
             <availabilityZoneId>{azid}</availabilityZoneId><defaultForAz>false</defaultForAz>\
             <mapPublicIpOnLaunch>false</mapPublicIpOnLaunch></item>",
            id = xml_escape(&s.id),
            r = self.args.region,
            acct = self.args.account_id,
            vpc = xml_escape(&s.vpc_id),
            az = xml_escape(&s.availability_zone),
            azid = Self::zone_id(&s.availability_zone),
        )
    }

    fn group_xml(&self, g: &SecurityGroup) -> String {
        format!(
            "<item><ownerId>{acct}</ownerId><groupId>{id}</groupId><groupName>{id}</groupName>\
             <groupDescription>stand-in group</groupDescription><vpcId>{vpc}</vpcId>\
             <ipPermissions/><ipPermissionsEgress/></item>",
            acct = self.args.account_id,
            id = xml_escape(&g.id),
            vpc = xml_escape(&g.vpc_id),
        )
    }

    // ---- the admin API ----

    fn admin(&self, method: &Method, path: &str, q: &BTreeMap<String, String>, body: &[u8]) -> Reply {
        let path = path.trim_end_matches('/');
        let account = q.get("account").map(|k| self.account(k));
        let need = || json_reply(StatusCode::BAD_REQUEST, &json!({ "error": "?account=<access key id> is required" }));
        match (method, path) {
            (&Method::GET, "") => json_reply(
                StatusCode::OK,
                &json!({
                    "time_scale": self.args.time_scale,
                    "timing_ms": timing_json(&Timing::default().scaled(self.args.time_scale)),
                    "region": self.args.region,
                    "subnets": self.subnets.iter().map(|s| json!({"id": s.id, "zone": s.availability_zone, "vpc": s.vpc_id})).collect::<Vec<_>>(),
                    "security_groups": self.security_groups.iter().map(|g| json!({"id": g.id, "vpc": g.vpc_id})).collect::<Vec<_>>(),
                    "accounts": self.accounts.lock().unwrap_or_else(|p| p.into_inner()).len(),
                }),
            ),
            (&Method::POST, "/reset") => {
                let mut all = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
                match q.get("account") {
                    Some(k) => {
                        all.remove(k);
                    }
                    None => all.clear(),
                }
                json_reply(StatusCode::OK, &json!({}))
            }
            (&Method::GET, "/calls") => match account {
                Some(a) => json_reply(StatusCode::OK, &Value::Array(a.extras().calls.clone())),
                None => need(),
            },
            (&Method::GET, "/state") => match account {
                Some(a) => json_reply(StatusCode::OK, &self.state(&a)),
                None => need(),
            },
            (&Method::POST, "/faults") => {
                let Some(a) = account else { return need() };
                match serde_json::from_slice::<Value>(body)
                    .map_err(|e| e.to_string())
                    .and_then(|v| apply_faults(&a, &v))
                {
                    Ok(()) => json_reply(StatusCode::OK, &json!({})),
                    Err(e) => json_reply(StatusCode::BAD_REQUEST, &json!({ "error": e })),
                }
            }
            _ => json_reply(StatusCode::NOT_FOUND, &json!({ "error": format!("no admin endpoint {method} {path}") })),
        }
    }

    fn state(&self, a: &Account) -> Value {
        let (fss, mts, aps) = snapshot(a);
        let x_backup = a.extras().backup.clone();
        let w = a.aws.world();
        let lifecycle_rules = |id: &str| -> Value {
            w.file_systems
                .get(id)
                .map(|f| Value::Array(f.lifecycle.iter().map(|r| json!(format!("{r:?}"))).collect()))
                .unwrap_or(Value::Null)
        };
        json!({
            "timing_ms": timing_json(&w.timing),
            "file_systems": fss.iter().map(|f| json!({
                "id": f.id, "creation_token": f.creation_token, "state": lifecycle(f.state),
                "performance_mode": f.performance_mode, "encrypted": f.encrypted, "tags": f.tags,
                "lifecycle": lifecycle_rules(&f.id), "backup": x_backup.get(&f.id),
                "availability_zone_name": w.file_systems.get(&f.id).and_then(|x| x.options.availability_zone_name.clone()),
            })).collect::<Vec<_>>(),
            "mount_targets": mts.iter().map(|m| json!({
                "id": m.id, "file_system_id": m.file_system_id, "subnet_id": m.subnet_id,
                "zone": m.availability_zone, "state": lifecycle(m.state),
            })).collect::<Vec<_>>(),
            "access_points": aps.iter().map(|p| json!({
                "id": p.id, "file_system_id": p.file_system_id, "client_token": p.client_token,
                "posix_user": p.posix_user, "root_path": p.root_path, "tags": p.tags,
            })).collect::<Vec<_>>(),
        })
    }
}

fn timing_json(t: &Timing) -> Value {
    json!({
        "file_system_create": t.file_system_create.as_millis() as u64,
        "file_system_delete": t.file_system_delete.as_millis() as u64,
        "mount_target_create": t.mount_target_create.as_millis() as u64,
        "mount_target_delete": t.mount_target_delete.as_millis() as u64,
    })
}

/// Everything an account holds, with states, read through the model with
/// its faults set aside. The runtime has one thread and every call below
/// finishes at its first poll, so no request sees the faults missing.
fn snapshot(a: &Account) -> (Vec<FileSystem>, Vec<MountTarget>, Vec<AccessPoint>) {
    let (saved, ids, ap_ids, calls) = {
        let mut w = a.aws.world();
        let saved = (
            std::mem::take(&mut w.denied),
            std::mem::take(&mut w.throttle),
            std::mem::take(&mut w.hang),
            std::mem::replace(&mut w.credentials_broken, false),
            std::mem::replace(&mut w.unreachable, false),
        );
        let ids: Vec<String> = w.file_systems.keys().cloned().collect();
        let ap_ids: Vec<String> = w.access_points.keys().cloned().collect();
        (saved, ids, ap_ids, w.calls.len())
    };
    let mut fss = Vec::new();
    let mut mts = Vec::new();
    for id in &ids {
        if let Some(Ok(Some(fs))) = a.aws.describe_file_system(&FileSystemLookup::Id(id.clone())).now_or_never() {
            fss.push(fs);
        }
        if let Some(Ok(list)) = a.aws.describe_mount_targets(id).now_or_never() {
            mts.extend(list);
        }
    }
    let aps: Vec<AccessPoint> =
        ap_ids.iter().filter_map(|id| a.aws.describe_access_point(id).now_or_never()?.ok()?).collect();
    let mut w = a.aws.world();
    (w.denied, w.throttle, w.hang, w.credentials_broken, w.unreachable) = saved;
    // These reads are not requests: keep the model's log as the clients made it.
    w.calls.truncate(calls);
    (fss, mts, aps)
}

fn apply_faults(a: &Account, v: &Value) -> Result<(), String> {
    let counts = |key: &str| -> Result<Vec<(Operation, u32)>, String> {
        let Some(m) = v.get(key) else { return Ok(Vec::new()) };
        let m = m.as_object().ok_or(format!("{key}: expected {{\"Operation\": n}}"))?;
        m.iter()
            .map(|(k, n)| {
                let op = operation(k).ok_or(format!("{key}: unknown operation {k}"))?;
                Ok((op, n.as_u64().ok_or(format!("{key}.{k}: expected a count"))? as u32))
            })
            .collect()
    };
    let throttle = counts("throttle")?;
    let hang = counts("hang")?;
    let mut deny = Vec::new();
    for d in v.get("deny").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let name = d["operation"].as_str().ok_or("deny: each needs an operation")?;
        let op = operation(name).ok_or(format!("deny: unknown operation {name}"))?;
        deny.push((op, d["resource"].as_str().map(str::to_string)));
    }
    let revoke = match v.get("revoke") {
        None => None,
        Some(Value::Null) | Some(Value::Bool(false)) => Some(None),
        Some(Value::String(code))
            if matches!(code.as_str(), "UnrecognizedClientException" | "InvalidSignatureException") =>
        {
            Some(Some(code.clone()))
        }
        Some(other) => {
            return Err(format!("revoke: {other} is not UnrecognizedClientException or InvalidSignatureException"));
        }
    };
    let mut w = a.aws.world();
    w.throttle.extend(throttle);
    w.hang.extend(hang);
    w.denied.extend(deny);
    if let Some(f) = v.get("file_systems_fail").and_then(Value::as_bool) {
        w.new_file_systems_fail = f;
    }
    if let Some(s) = v.get("time_scale").and_then(Value::as_f64) {
        w.timing = Timing::default().scaled(s);
    }
    drop(w);
    if let Some(r) = revoke {
        a.extras().revoked = r;
    }
    Ok(())
}

impl Account {
    /// Records a request; its index for [`Account::finish`].
    fn log(&self, op: &str, resource: &str, file_system: Option<String>) -> usize {
        let mut x = self.extras();
        let first = *x.first.get_or_insert_with(std::time::Instant::now);
        x.calls.push(json!({
            "operation": op,
            "at_ms": first.elapsed().as_secs_f64() * 1000.0,
            "resource": resource,
            "file_system": file_system,
            "status": Value::Null,
            "error": Value::Null,
        }));
        x.calls.len() - 1
    }

    fn finish(&self, entry: usize, status: u16, error: Option<&str>) {
        if let Some(c) = self.extras().calls.get_mut(entry) {
            c["status"] = json!(status);
            c["error"] = json!(error);
        }
    }
}

fn new_access_point(body: &Value) -> Result<NewAccessPoint, Reply> {
    let token = body["ClientToken"].as_str().unwrap_or("");
    if token.is_empty() || token.chars().count() > 64 {
        return Err(bad("ClientToken must be 1 to 64 characters"));
    }
    let fs = body["FileSystemId"].as_str().ok_or_else(|| bad("FileSystemId is required"))?;
    let (uid, gid) = match (body["PosixUser"]["Uid"].as_i64(), body["PosixUser"]["Gid"].as_i64()) {
        (Some(u), Some(g)) => (u, g),
        (None, None) if body["PosixUser"].is_null() => (0, 0),
        _ => return Err(bad("PosixUser needs Uid and Gid")),
    };
    let root = &body["RootDirectory"];
    Ok(NewAccessPoint {
        client_token: token.to_string(),
        file_system_id: fs.to_string(),
        uid,
        gid,
        path: root["Path"].as_str().unwrap_or("/").to_string(),
        permissions: root["CreationInfo"]["Permissions"].as_str().unwrap_or("0755").to_string(),
        tags: tags_of(&body["Tags"])?,
    })
}

/// The operation name and resource of an EFS request, for the log of refused requests.
fn efs_route_name(method: &Method, path: &str) -> (&'static str, String) {
    let rest = path.trim_start_matches("/2015-02-01/");
    let parts: Vec<&str> = rest.split('/').collect();
    let id = parts.get(1).map(|s| s.to_string()).unwrap_or_default();
    let name = match (method, parts.first().copied().unwrap_or(""), parts.len()) {
        (&Method::POST, "file-systems", 1) => "CreateFileSystem",
        (&Method::GET, "file-systems", 1) => "DescribeFileSystems",
        (&Method::DELETE, "file-systems", _) => "DeleteFileSystem",
        (&Method::PUT, "file-systems", _) if path.ends_with("backup-policy") => "PutBackupPolicy",
        (&Method::PUT, "file-systems", _) => "PutLifecycleConfiguration",
        (&Method::POST, "mount-targets", _) => "CreateMountTarget",
        (&Method::GET, "mount-targets", _) => "DescribeMountTargets",
        (&Method::DELETE, "mount-targets", _) => "DeleteMountTarget",
        (&Method::POST, "access-points", _) => "CreateAccessPoint",
        (&Method::GET, "access-points", _) => "DescribeAccessPoints",
        (&Method::DELETE, "access-points", _) => "DeleteAccessPoint",
        (&Method::POST, "resource-tags", _) => "TagResource",
        _ => "Unknown",
    };
    (name, id)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn ec2_error(status: u16, code: &str, message: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors>\
         <RequestID>{:08x}-stand-in</RequestID></Response>",
        xml_escape(code),
        xml_escape(message),
        rand::random::<u32>()
    );
    let mut r = reply(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), "text/xml;charset=UTF-8", body);
    if let Ok(v) = code.parse() {
        // Not on EC2's wire; lets the call log name the code.
        r.headers_mut().insert("x-stand-in-error", v);
    }
    r
}

fn ec2_code_of(r: &Reply) -> Option<String> {
    r.headers().get("x-stand-in-error").and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.time_scale >= 0.0 && args.time_scale.is_finite()) {
        eprintln!("efs-stand-in: --time-scale must be a finite number, 0 or more");
        return ExitCode::from(2);
    }
    let server = match Server::new(args.clone()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("efs-stand-in: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("efs-stand-in: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    if let Some(p) = &args.port_file
        && let Err(e) = std::fs::write(p, format!("{}\n", addr.port()))
    {
        eprintln!("efs-stand-in: cannot write {}: {e}", p.display());
        return ExitCode::FAILURE;
    }
    eprintln!("efs-stand-in: listening on http://{addr} (time scale {})", args.time_scale);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("efs-stand-in: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
