//! The provisioner's decisions against an in-process fake EFS: lifecycle
//! timing, failure states, throttling, quotas and permissions. Timing runs
//! under paused tokio time.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use efs_provisioner::api::{
    AccessPoint, AccessPointPage, ApiError, EfsApi, ErrorKind, FileSystem, FileSystemLookup, LifeCycle, LifecycleRule,
    MountTarget, NewAccessPoint, NewFileSystem, Operation,
};
use efs_provisioner::limiter::{AdaptiveLimiter, LimitedApi, LimiterConfig};
use efs_provisioner::volume::FILE_SYSTEM_ID;
use efs_provisioner::{Defaults, EfsProvisioner};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::ObjectMeta;
use provisioner_core::fixtures::request;
use provisioner_core::{DeleteError, ProvisionError, Provisioner};
use tokio::time::Instant;

/// A fake EFS: file systems become `available` after `creating_polls`
/// describes, mount targets after `mt_polls`; scripted errors per operation.
#[derive(Default)]
struct Fake {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    file_systems: BTreeMap<String, (FileSystem, u32)>,
    mount_targets: BTreeMap<String, (MountTarget, u32)>,
    creating_polls: u32,
    mt_polls: u32,
    end_state: Option<LifeCycle>,
    errors: BTreeMap<Operation, VecDeque<ErrorKind>>,
    codes: BTreeMap<Operation, String>,
    calls: Vec<(Operation, Instant)>,
    next_id: u32,
}

impl Fake {
    fn with(f: impl FnOnce(&mut State)) -> Arc<Fake> {
        let fake = Fake::default();
        f(&mut fake.state.lock().unwrap());
        Arc::new(fake)
    }
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
    fn calls(&self, op: Operation) -> usize {
        self.st().calls.iter().filter(|c| c.0 == op).count()
    }
    fn enter(&self, op: Operation) -> Result<(), ApiError> {
        let mut s = self.st();
        s.calls.push((op, Instant::now()));
        if let Some(kind) = s.errors.get_mut(&op).and_then(|q| q.pop_front()) {
            let code = s.codes.get(&op).cloned().unwrap_or_else(|| format!("{kind:?}"));
            return Err(ApiError::new(op, kind, &code, "scripted"));
        }
        Ok(())
    }
}

fn not_found(op: Operation) -> ApiError {
    ApiError::new(op, ErrorKind::NotFound, "FileSystemNotFound", "no such file system")
}

#[async_trait]
impl EfsApi for Fake {
    async fn create_file_system(&self, spec: &NewFileSystem) -> Result<FileSystem, ApiError> {
        self.enter(Operation::CreateFileSystem)?;
        let mut s = self.st();
        if let Some((fs, _)) = s.file_systems.values().find(|(f, _)| f.creation_token == spec.creation_token) {
            let id = fs.id.clone();
            return Err(ApiError::new(
                Operation::CreateFileSystem,
                ErrorKind::AlreadyExists(Some(id)),
                "FileSystemAlreadyExists",
                "exists",
            ));
        }
        s.next_id += 1;
        let fs = FileSystem {
            id: format!("fs-{}", s.next_id),
            creation_token: spec.creation_token.clone(),
            state: if s.creating_polls == 0 {
                s.end_state.unwrap_or(LifeCycle::Available)
            } else {
                LifeCycle::Creating
            },
            performance_mode: spec.performance_mode.as_str().into(),
            encrypted: spec.encrypted,
            tags: spec.tags.clone(),
        };
        let polls = s.creating_polls;
        s.file_systems.insert(fs.id.clone(), (fs.clone(), polls));
        Ok(fs)
    }
    async fn describe_file_system(&self, lookup: &FileSystemLookup) -> Result<Option<FileSystem>, ApiError> {
        self.enter(Operation::DescribeFileSystems)?;
        let mut s = self.st();
        let end = s.end_state.unwrap_or(LifeCycle::Available);
        let found = s.file_systems.values_mut().find(|(f, _)| match lookup {
            FileSystemLookup::Id(id) => &f.id == id,
            FileSystemLookup::CreationToken(t) => &f.creation_token == t,
        });
        Ok(found.map(|(fs, polls)| {
            if *polls > 0 {
                *polls -= 1;
            }
            if *polls == 0 && fs.state == LifeCycle::Creating {
                fs.state = end;
            }
            fs.clone()
        }))
    }
    async fn delete_file_system(&self, id: &str) -> Result<(), ApiError> {
        self.enter(Operation::DeleteFileSystem)?;
        let mut s = self.st();
        if s.mount_targets.values().any(|(m, _)| m.file_system_id == id) {
            return Err(ApiError::new(
                Operation::DeleteFileSystem,
                ErrorKind::InUse,
                "FileSystemInUse",
                "has mount targets",
            ));
        }
        s.file_systems.remove(id).map(|_| ()).ok_or_else(|| not_found(Operation::DeleteFileSystem))
    }
    async fn put_lifecycle_configuration(&self, _: &str, _: &[LifecycleRule]) -> Result<(), ApiError> {
        self.enter(Operation::PutLifecycleConfiguration)
    }
    async fn create_mount_target(&self, fs: &str, subnet: &str, _: &[String]) -> Result<MountTarget, ApiError> {
        self.enter(Operation::CreateMountTarget)?;
        let mut s = self.st();
        s.next_id += 1;
        let mt = MountTarget {
            id: format!("fsmt-{}", s.next_id),
            file_system_id: fs.into(),
            subnet_id: subnet.into(),
            availability_zone: Some(format!("zone-of-{subnet}")),
            state: if s.mt_polls == 0 { LifeCycle::Available } else { LifeCycle::Creating },
        };
        let polls = s.mt_polls;
        s.mount_targets.insert(mt.id.clone(), (mt.clone(), polls));
        Ok(mt)
    }
    async fn describe_mount_targets(&self, fs: &str) -> Result<Vec<MountTarget>, ApiError> {
        self.enter(Operation::DescribeMountTargets)?;
        let mut s = self.st();
        if !s.file_systems.contains_key(fs) {
            return Err(not_found(Operation::DescribeMountTargets));
        }
        let mut out = Vec::new();
        for (mt, polls) in s.mount_targets.values_mut().filter(|(m, _)| m.file_system_id == fs) {
            if *polls > 0 {
                *polls -= 1;
            } else if mt.state == LifeCycle::Creating {
                mt.state = LifeCycle::Available;
            }
            out.push(mt.clone());
        }
        // Deleting mount targets disappear after being seen once.
        s.mount_targets.retain(|_, (m, _)| m.state != LifeCycle::Deleting);
        Ok(out)
    }
    async fn delete_mount_target(&self, id: &str) -> Result<(), ApiError> {
        self.enter(Operation::DeleteMountTarget)?;
        let mut s = self.st();
        match s.mount_targets.get_mut(id) {
            Some((m, _)) => {
                m.state = LifeCycle::Deleting;
                Ok(())
            }
            None => Err(ApiError::new(Operation::DeleteMountTarget, ErrorKind::NotFound, "MountTargetNotFound", "")),
        }
    }
    async fn create_access_point(&self, _: &NewAccessPoint) -> Result<AccessPoint, ApiError> {
        self.enter(Operation::CreateAccessPoint)?;
        Err(ApiError::new(Operation::CreateAccessPoint, ErrorKind::Transient, "NotFaked", ""))
    }
    async fn describe_access_points(&self, _: &str, _: Option<&str>) -> Result<AccessPointPage, ApiError> {
        self.enter(Operation::DescribeAccessPoints)?;
        Ok(AccessPointPage::default())
    }
    async fn delete_access_point(&self, _: &str) -> Result<(), ApiError> {
        self.enter(Operation::DeleteAccessPoint)
    }
}

fn defaults() -> Defaults {
    Defaults {
        region: "ap-southeast-2".into(),
        subnets: vec!["subnet-a".into(), "subnet-b".into()],
        security_groups: vec!["sg-1".into()],
        ..Defaults::default()
    }
}

fn seed_request(pv: &str) -> provisioner_core::ProvisionRequest {
    let mut req = request(pv, "general", std::iter::empty::<(&str, &str)>());
    let mut k = (*req.class).clone();
    k.provisioner = "efs.aws.skpr.io/generalPurpose".into();
    req.class = Arc::new(k);
    req
}

fn pv_of(v: &provisioner_core::ProvisionedVolume) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some("pv".into()),
            annotations: Some(v.annotations.clone()),
            ..Default::default()
        },
        spec: Some(v.spec.clone()),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn creating_file_system_reports_in_progress_until_available_without_a_second_create() {
    let fake = Fake::with(|s| {
        s.creating_polls = 3;
        s.mt_polls = 2;
    });
    let p = EfsProvisioner::new(fake.clone(), defaults());
    let req = seed_request("pvc-1");
    let mut rounds = 0;
    let volume = loop {
        rounds += 1;
        match p.provision(&req).await {
            Ok(v) => break v,
            Err(ProvisionError::InProgress(msg)) => assert!(msg.contains("fs-1"), "{msg}"),
            Err(e) => panic!("unexpected {e}"),
        }
        // What the engine does between rounds: back off, holding no worker.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rounds < 20, "never became ready");
    };
    assert_eq!(volume.annotations[FILE_SYSTEM_ID], "fs-1");
    assert_eq!(fake.calls(Operation::CreateFileSystem), 1, "the id is remembered between rounds");
    assert_eq!(fake.calls(Operation::CreateMountTarget), 2);
    // 1 create, 3 rounds while `creating`, the round that creates the mount targets, 2 waiting on them.
    assert_eq!(rounds, 7, "rounds");
}

#[tokio::test]
async fn a_new_process_finds_a_creating_file_system_by_its_token() {
    let fake = Fake::with(|s| s.creating_polls = 1);
    let req = seed_request("pvc-1");
    let first = EfsProvisioner::new(fake.clone(), defaults());
    assert!(matches!(first.provision(&req).await, Err(ProvisionError::InProgress(_))));
    let second = EfsProvisioner::new(fake.clone(), defaults());
    second.provision(&req).await.expect("ready");
    assert_eq!(fake.st().file_systems.len(), 1, "no duplicate");
}

#[tokio::test]
async fn a_file_system_in_error_state_is_removed_and_the_claim_fails_with_a_message() {
    let fake = Fake::with(|s| {
        s.creating_polls = 1;
        s.end_state = Some(LifeCycle::Error);
    });
    let p = EfsProvisioner::new(fake.clone(), defaults());
    let req = seed_request("pvc-1");
    assert!(matches!(p.provision(&req).await, Err(ProvisionError::InProgress(_))));
    match p.provision(&req).await {
        Err(ProvisionError::Final(msg)) => {
            assert!(msg.contains("fs-1 failed (state error)") && msg.contains("was deleted"), "{msg}")
        }
        other => panic!("expected Final, got {other:?}"),
    }
    assert!(fake.st().file_systems.is_empty(), "the failed file system does not leak");
}

#[tokio::test]
async fn the_file_system_quota_is_a_final_error_naming_the_quota() {
    let fake = Fake::with(|s| {
        s.errors.insert(Operation::CreateFileSystem, VecDeque::from([ErrorKind::LimitExceeded]));
        s.codes.insert(Operation::CreateFileSystem, "FileSystemLimitExceeded".into());
    });
    let p = EfsProvisioner::new(fake, defaults());
    match p.provision(&seed_request("pvc-1")).await {
        Err(ProvisionError::Final(msg)) => assert!(msg.contains("1,000") && msg.contains("quota"), "{msg}"),
        other => panic!("expected Final, got {other:?}"),
    }
}

#[tokio::test]
async fn access_denied_names_the_missing_iam_action() {
    let fake = Fake::with(|s| {
        s.errors.insert(Operation::CreateFileSystem, VecDeque::from([ErrorKind::AccessDenied]));
        s.codes.insert(Operation::CreateFileSystem, "AccessDeniedException".into());
    });
    let p = EfsProvisioner::new(fake, defaults());
    match p.provision(&seed_request("pvc-1")).await {
        Err(ProvisionError::Final(msg)) => {
            assert!(msg.contains("elasticfilesystem:CreateFileSystem") && msg.contains("TagResource"), "{msg}")
        }
        other => panic!("expected Final, got {other:?}"),
    }
}

#[tokio::test]
async fn access_denied_on_a_mount_target_rolls_the_file_system_back() {
    let fake = Fake::with(|s| {
        s.errors.insert(Operation::CreateMountTarget, VecDeque::from([ErrorKind::AccessDenied]));
        s.codes.insert(Operation::CreateMountTarget, "UnauthorizedOperation".into());
    });
    let p = EfsProvisioner::new(fake.clone(), defaults());
    match p.provision(&seed_request("pvc-1")).await {
        Err(ProvisionError::Final(msg)) => assert!(msg.contains("ec2:CreateNetworkInterface"), "{msg}"),
        other => panic!("expected Final, got {other:?}"),
    }
    assert!(fake.st().file_systems.is_empty());
}

#[tokio::test(start_paused = true)]
async fn throttling_slows_every_call_down_and_reports_in_progress_not_failure() {
    let fake = Fake::with(|s| {
        s.errors.insert(Operation::CreateFileSystem, VecDeque::from([ErrorKind::Throttled, ErrorKind::Throttled]));
    });
    let limiter =
        Arc::new(AdaptiveLimiter::new(LimiterConfig { max_rate: 10.0, min_rate: 0.5, burst: 1, recovery_step: 0.1 }));
    let p = EfsProvisioner::new(LimitedApi::new(fake.clone(), limiter.clone()), defaults());
    let req = seed_request("pvc-1");
    for _ in 0..2 {
        match p.provision(&req).await {
            Err(ProvisionError::InProgress(msg)) => assert!(msg.contains("throttling"), "{msg}"),
            other => panic!("throttling must not fail the claim: {other:?}"),
        }
    }
    assert_eq!(limiter.throttled(), 2);
    assert!((limiter.rate() - 2.5).abs() < 1e-9, "halved twice: {}", limiter.rate());
    let start = Instant::now();
    p.provision(&req).await.expect("succeeds once EFS accepts again");
    // The next calls waited at the lower rate (2.5/s and recovering), not the 10/s ceiling.
    let calls = fake.st().calls.clone();
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(gaps.iter().skip(1).all(|g| *g >= Duration::from_millis(300)), "{gaps:?}");
    assert!(start.elapsed() >= Duration::from_millis(900), "{:?}", start.elapsed());
}

#[tokio::test]
async fn delete_waits_for_mount_targets_then_deletes_the_file_system() {
    let fake = Fake::with(|_| {});
    let p = EfsProvisioner::new(fake.clone(), defaults());
    let v = p.provision(&seed_request("pvc-1")).await.unwrap();
    let pv = pv_of(&v);
    // AWS refuses DeleteFileSystem while the mount targets are still deleting.
    match p.delete(&pv).await {
        Err(DeleteError::InUse(msg)) => assert!(msg.contains("mount targets"), "{msg}"),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(fake.calls(Operation::DeleteMountTarget), 2);
    assert!(matches!(p.delete(&pv).await, Err(DeleteError::InUse(_))), "still deleting");
    p.delete(&pv).await.expect("gone");
    assert_eq!(fake.calls(Operation::DeleteMountTarget), 2, "each mount target deleted once");
    assert!(fake.st().file_systems.is_empty());
    p.delete(&pv).await.expect("not found is success");
}

#[tokio::test]
async fn file_system_in_use_on_delete_is_in_use_not_a_failure() {
    let fake = Fake::with(|s| {
        s.errors.insert(Operation::DeleteFileSystem, VecDeque::from([ErrorKind::InUse]));
    });
    let p = EfsProvisioner::new(fake.clone(), Defaults { subnets: vec!["subnet-a".into()], ..defaults() });
    let v = p.provision(&seed_request("pvc-1")).await.unwrap();
    fake.st().mount_targets.clear();
    assert!(matches!(p.delete(&pv_of(&v)).await, Err(DeleteError::InUse(_))));
    p.delete(&pv_of(&v)).await.expect("deleted on the retry");
}

#[tokio::test]
async fn two_subnets_in_one_zone_are_explained() {
    let fake = Fake::with(|s| {
        s.errors.insert(Operation::CreateMountTarget, VecDeque::from([ErrorKind::Conflict]));
        s.codes.insert(Operation::CreateMountTarget, "MountTargetConflict".into());
    });
    let p = EfsProvisioner::new(fake.clone(), Defaults { subnets: vec!["subnet-a".into()], ..defaults() });
    match p.provision(&seed_request("pvc-1")).await {
        Err(ProvisionError::Final(msg)) => {
            assert!(msg.contains("one mount target per") && msg.contains("subnet-a"), "{msg}")
        }
        other => panic!("expected Final, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_class_parameters_are_infeasible() {
    let p = EfsProvisioner::new(Fake::with(|_| {}), defaults());
    let req = request("pvc-1", "general", [("performanceMode", "turbo")]);
    match p.provision(&req).await {
        Err(ProvisionError::Infeasible(msg)) => {
            assert!(msg.contains("StorageClass general") && msg.contains("turbo"), "{msg}")
        }
        other => panic!("expected Infeasible, got {other:?}"),
    }
}
