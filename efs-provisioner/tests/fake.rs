//! The provisioner's decisions against the in-process EFS stand-in
//! ([`stand_in`]), which follows AWS's documented rules where moto is
//! lenient: lifecycle timing, zones and VPCs, tag and lifecycle-rule
//! validity, quotas, permissions, throttling, credential and network
//! failures, answers that never come. Timing runs under paused tokio time.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod stand_in;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use efs_provisioner::api::{
    EfsApi, ErrorKind, FileSystemLookup, FileSystemOptions, LifeCycle, NetworkApi, NewFileSystem, Operation,
    PerformanceMode,
};
use efs_provisioner::deadline::{DeadlineApi, Deadlines};
use efs_provisioner::limiter::{AdaptiveLimiter, LimitedApi, LimiterConfig};
use efs_provisioner::provisioner::{TAG_CLUSTER, TAG_MANAGED_BY, TAG_PV_NAME, TAG_ROLLBACK};
use efs_provisioner::volume::{ACCESS_POINT_ID, FILE_SYSTEM_ID, ZONE_LABEL};
use efs_provisioner::{Defaults, EfsProvisioner};
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use provisioner_core::testing::fixtures::{claim, request};
use provisioner_core::{DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
use stand_in::{Aws, Timing};
use tokio::time::Instant;

const CLUSTER: &str = "test-cluster";

fn defaults() -> Defaults {
    Defaults {
        region: "ap-southeast-2".into(),
        subnets: vec!["subnet-a".into(), "subnet-b".into()],
        security_groups: vec!["sg-1".into()],
        cluster_id: CLUSTER.into(),
        ..Defaults::default()
    }
}

/// The provisioner as it should run: EFS and the EC2 topology check.
fn provisioner(aws: &Arc<Aws>) -> EfsProvisioner<Arc<Aws>> {
    EfsProvisioner::new(aws.clone(), defaults()).with_network(aws.clone() as Arc<dyn NetworkApi>)
}

/// The provisioner without the EC2 check (the binary today).
fn provisioner_without_network(aws: &Arc<Aws>) -> EfsProvisioner<Arc<Aws>> {
    EfsProvisioner::new(aws.clone(), defaults())
}

fn request_with(pv: &str, params: &[(&str, &str)]) -> ProvisionRequest {
    let mut req = request(pv, "general", params.iter().copied());
    let mut k = (*req.class).clone();
    k.provisioner = "efs.aws.skpr.io/generalPurpose".into();
    req.class = Arc::new(k);
    req
}

fn seed_request(pv: &str) -> ProvisionRequest {
    request_with(pv, &[])
}

fn pv_of(v: &ProvisionedVolume, name: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(v.annotations.clone()),
            ..Default::default()
        },
        spec: Some(v.spec.clone()),
        ..Default::default()
    }
}

/// What the engine does: a round every `step`, holding no worker in
/// between, until a volume or `rounds` rounds. Returns the volume (if any)
/// and every answer that was not one.
async fn rounds<A: EfsApi>(
    p: &EfsProvisioner<A>,
    req: &ProvisionRequest,
    step: Duration,
    rounds: usize,
) -> (Option<ProvisionedVolume>, Vec<ProvisionError>) {
    let mut answers = Vec::new();
    for _ in 0..rounds {
        match p.provision(req).await {
            Ok(v) => return (Some(v), answers),
            // The engine parks an infeasible claim for minutes (or until the class changes).
            Err(e @ ProvisionError::Infeasible(_)) => {
                answers.push(e);
                break;
            }
            Err(e) => answers.push(e),
        }
        tokio::time::sleep(step).await;
    }
    (None, answers)
}

fn warnings(answers: &[ProvisionError]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in answers {
        if let ProvisionError::Final(m) | ProvisionError::Stalled(m) | ProvisionError::Infeasible(m) = a {
            *out.entry(m.chain()).or_default() += 1;
        }
    }
    out
}

// ---- the stand-in's own rules ----

#[tokio::test(start_paused = true)]
async fn stand_in_a_deleting_mount_target_holds_its_zone_and_its_file_system() {
    let aws = Aws::with(|w| w.timing = Timing::default());
    let spec = efs_provisioner::api::NewFileSystem {
        creation_token: "t".into(),
        performance_mode: efs_provisioner::api::PerformanceMode::GeneralPurpose,
        throughput: efs_provisioner::api::Throughput::Bursting,
        encrypted: true,
        kms_key_id: None,
        tags: BTreeMap::new(),
    };
    let fs = aws.create_file_system(&spec).await.unwrap();
    assert_eq!(fs.state, LifeCycle::Creating);
    let e = aws.create_mount_target(&fs.id, "subnet-a", &["sg-1".into()]).await.unwrap_err();
    assert_eq!(e.code, "IncorrectFileSystemLifeCycleState");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mt = aws.create_mount_target(&fs.id, "subnet-a", &["sg-1".into()]).await.unwrap();
    assert_eq!(aws.create_mount_target(&fs.id, "subnet-a2", &[]).await.unwrap_err().kind, ErrorKind::Conflict);
    assert_eq!(aws.create_mount_target(&fs.id, "subnet-x", &[]).await.unwrap_err().kind, ErrorKind::Conflict);
    assert_eq!(aws.create_mount_target(&fs.id, "subnet-nope", &[]).await.unwrap_err().code, "SubnetNotFound");
    aws.delete_mount_target(&mt.id).await.unwrap();
    assert_eq!(aws.describe_mount_targets(&fs.id).await.unwrap()[0].state, LifeCycle::Deleting);
    assert_eq!(aws.create_mount_target(&fs.id, "subnet-a2", &[]).await.unwrap_err().kind, ErrorKind::Conflict);
    assert_eq!(aws.delete_file_system(&fs.id).await.unwrap_err().kind, ErrorKind::InUse);
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert!(aws.describe_mount_targets(&fs.id).await.unwrap().is_empty());
    aws.delete_file_system(&fs.id).await.unwrap();
    let tags = BTreeMap::from([("Name".to_string(), "x".repeat(257))]);
    assert_eq!(aws.tag_resource(&fs.id, &tags).await.unwrap_err().kind, ErrorKind::BadRequest);
}

// ---- the claim lifecycle ----

#[tokio::test(start_paused = true)]
async fn creating_file_system_reports_in_progress_until_available_without_a_second_create() {
    let aws = Aws::new();
    let p = provisioner(&aws);
    let req = seed_request("pvc-1");
    let started = Instant::now();
    let (volume, answers) = rounds(&p, &req, Duration::from_secs(5), 60).await;
    let volume = volume.expect("ready");
    // "AWS is still working" answers, each with a fixed poll interval.
    assert!(answers.iter().all(|a| matches!(a, ProvisionError::RetryAfter(..))), "{answers:?}");
    assert!(answers.iter().all(|a| matches!(a, ProvisionError::RetryAfter(_, d) if *d <= Duration::from_secs(10))));
    assert!(volume.annotations[FILE_SYSTEM_ID].starts_with("fs-"));
    assert_eq!(aws.calls(Operation::CreateFileSystem), 1, "the id is remembered between rounds");
    assert_eq!(aws.calls(Operation::CreateMountTarget), 2);
    // 30 s creating, then 90 s for the mount targets, each seen within a 5 s round.
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(120) && took <= Duration::from_secs(130), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_new_process_finds_a_creating_file_system_by_its_token() {
    let aws = Aws::new();
    let req = seed_request("pvc-1");
    let first = provisioner(&aws);
    assert!(matches!(first.provision(&req).await, Err(e) if e.may_have_created()));
    let second = provisioner(&aws);
    rounds(&second, &req, Duration::from_secs(5), 60).await.0.expect("ready");
    assert_eq!(aws.file_system_count(), 1, "no duplicate");
}

#[tokio::test(start_paused = true)]
async fn a_file_system_in_error_state_is_removed_and_the_claim_fails_with_a_message() {
    let aws = Aws::with(|w| w.new_file_systems_fail = true);
    let p = provisioner(&aws);
    let (_, answers) = rounds(&p, &seed_request("pvc-1"), Duration::from_secs(5), 20).await;
    let gone = answers.iter().find_map(|a| match a {
        ProvisionError::Infeasible(m) if m.chain().contains("was deleted") => Some(m.chain()),
        _ => None,
    });
    let gone = gone.unwrap_or_else(|| panic!("never deleted: {answers:?}"));
    assert!(gone.contains("failed (state error)"), "{gone}");
    assert_eq!(aws.calls(Operation::CreateMountTarget), 0);
}

#[tokio::test]
async fn the_file_system_quota_is_a_final_error_naming_the_quota() {
    let aws = Aws::with(|w| w.max_file_systems = 0);
    match provisioner(&aws).provision(&seed_request("pvc-1")).await {
        Err(ProvisionError::Final(msg)) => {
            assert!(msg.chain().contains("1,000") && msg.chain().contains("quota"), "{msg:#}")
        }
        other => panic!("expected Final, got {other:?}"),
    }
}

#[tokio::test]
async fn access_denied_names_the_missing_iam_action() {
    let aws = Aws::with(|w| {
        w.denied.insert((Operation::CreateFileSystem, None));
    });
    match provisioner(&aws).provision(&seed_request("pvc-1")).await {
        Err(ProvisionError::Final(msg)) => {
            assert!(
                msg.chain().contains("elasticfilesystem:CreateFileSystem") && msg.chain().contains("TagResource"),
                "{msg:#}"
            )
        }
        other => panic!("expected Final, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn throttling_slows_the_throttled_operation_down_and_reports_in_progress_not_failure() {
    let aws = Aws::with(|w| {
        w.timing = Timing::instant();
        w.throttle.insert(Operation::CreateFileSystem, 2);
    });
    let limiter =
        Arc::new(AdaptiveLimiter::new(LimiterConfig { max_rate: 10.0, min_rate: 0.5, burst: 1, recovery_step: 0.1 }));
    let p = EfsProvisioner::new(LimitedApi::new(aws.clone(), limiter.clone()), defaults());
    let req = seed_request("pvc-1");
    for _ in 0..2 {
        match p.provision(&req).await {
            Err(ProvisionError::InProgress(msg)) => assert!(msg.chain().contains("throttling"), "{msg:#}"),
            other => panic!("throttling must not fail the claim: {other:?}"),
        }
    }
    assert_eq!(limiter.throttled_of(Operation::CreateFileSystem), 2);
    let rate = limiter.rate_of(Operation::CreateFileSystem);
    assert!((rate - 2.5).abs() < 1e-9, "halved twice: {rate}");
    p.provision(&req).await.expect("succeeds once EFS accepts again");
    let calls = aws.world().calls.clone();
    let creates: Vec<Instant> = calls.iter().filter(|c| c.op == Operation::CreateFileSystem).map(|c| c.at).collect();
    assert!(creates[2] - creates[1] >= Duration::from_millis(400), "CreateFileSystem at its halved rate: {creates:?}");
    let mounts: Vec<Instant> = calls.iter().filter(|c| c.op == Operation::CreateMountTarget).map(|c| c.at).collect();
    assert!(mounts[1] - mounts[0] <= Duration::from_millis(100), "CreateMountTarget was not throttled: {mounts:?}");
}

#[tokio::test(start_paused = true)]
async fn throttling_create_access_point_does_not_slow_describe_file_systems() {
    let aws = Aws::with(|w| {
        w.timing = Timing::instant();
        w.throttle.insert(Operation::CreateAccessPoint, 5);
    });
    let shared = aws.add_file_system("shared", BTreeMap::new());
    let limiter =
        Arc::new(AdaptiveLimiter::new(LimiterConfig { max_rate: 10.0, min_rate: 0.2, burst: 1, recovery_step: 0.0 }));
    let p = EfsProvisioner::new(LimitedApi::new(aws.clone(), limiter.clone()), defaults());
    let ap = request_with("pvc-ap", &[("mode", "accessPoint"), ("fileSystemId", &shared)]);
    for _ in 0..5 {
        assert!(matches!(p.provision(&ap).await, Err(ProvisionError::InProgress(_))));
    }
    assert_eq!(limiter.throttled_of(Operation::CreateAccessPoint), 5);
    assert!(limiter.rate_of(Operation::CreateAccessPoint) <= 0.35, "{}", limiter.rate_of(Operation::CreateAccessPoint));
    // Another claim's file system, looked up 20 times: at the ceiling (10/s), not at 0.3/s.
    let start = Instant::now();
    for _ in 0..20 {
        p.api().describe_file_system(&FileSystemLookup::Id(shared.clone())).await.unwrap();
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(2100),
        "DescribeFileSystems slowed by CreateAccessPoint's throttling: {took:?}"
    );
    assert_eq!(limiter.rate_of(Operation::DescribeFileSystems), 10.0);
    p.provision(&ap).await.expect("the access point once EFS accepts again");
}

#[tokio::test(start_paused = true)]
async fn delete_waits_for_mount_targets_then_deletes_the_file_system() {
    let aws = Aws::new();
    let p = provisioner(&aws);
    let v = rounds(&p, &seed_request("pvc-1"), Duration::from_secs(5), 60).await.0.unwrap();
    let pv = pv_of(&v, "pvc-1");
    match p.delete(&pv).await {
        Err(DeleteError::InUse(msg)) => assert!(msg.chain().contains("mount targets"), "{msg:#}"),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(aws.calls(Operation::DeleteMountTarget), 2);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(matches!(p.delete(&pv).await, Err(DeleteError::InUse(_))), "still deleting");
    tokio::time::sleep(Duration::from_secs(31)).await;
    p.delete(&pv).await.expect("gone");
    assert_eq!(aws.calls(Operation::DeleteMountTarget), 2, "each mount target deleted once");
    p.delete(&pv).await.expect("not found is success");
}

// ---- finding 1: sticky rollback ----

/// Access denied on the second subnet's mount target, after the first exists.
fn denied_on_subnet_b() -> Arc<Aws> {
    Aws::with(|w| {
        w.denied.insert((Operation::CreateMountTarget, Some("subnet-b".into())));
    })
}

#[tokio::test(start_paused = true)]
async fn a_rollback_only_tears_down_until_the_file_system_is_gone_with_one_warning() {
    let aws = denied_on_subnet_b();
    let p = provisioner(&aws);
    let (_, answers) = rounds(&p, &seed_request("pvc-1"), Duration::from_secs(1), 200).await;
    // 1 in subnet-a (made), 1 denied in subnet-b; none again while rolling back.
    assert_eq!(aws.calls(Operation::CreateMountTarget), 2, "{answers:?}");
    assert_eq!(aws.calls(Operation::CreateFileSystem), 1);
    let w = warnings(&answers);
    let rolling: Vec<(&String, &usize)> = w.iter().filter(|(m, _)| m.contains("creating nothing new")).collect();
    assert_eq!(rolling.len(), 1, "one stable warning text while rolling back: {w:#?}");
    assert!(rolling[0].0.contains("elasticfilesystem:CreateMountTarget"), "names the cause: {}", rolling[0].0);
    assert!(*rolling[0].1 > 50, "repeated every round, so events aggregate");
    assert!(w.keys().any(|m| m.contains("was deleted")), "the rollback finished: {w:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_rollback_survives_a_restart() {
    let aws = denied_on_subnet_b();
    let req = seed_request("pvc-1");
    let first = provisioner(&aws);
    let (_, answers) = rounds(&first, &req, Duration::from_secs(5), 8).await;
    assert!(answers.iter().any(|a| a.chain().contains("creating nothing new")), "{answers:?}");
    let fs_id = aws.world().file_systems.keys().next().cloned().unwrap();
    assert!(aws.world().file_systems[&fs_id].tags.contains_key(TAG_ROLLBACK), "recorded on the file system");
    drop(first);
    let second = provisioner(&aws);
    let (_, answers) = rounds(&second, &req, Duration::from_secs(5), 40).await;
    assert_eq!(aws.calls(Operation::CreateMountTarget), 2, "the new process does not retry it: {answers:?}");
    assert!(answers.iter().any(|a| a.chain().contains("was deleted")), "{answers:?}");
}

#[tokio::test(start_paused = true)]
async fn a_rollback_goes_on_after_the_claim_is_deleted() {
    let aws = denied_on_subnet_b();
    let p = provisioner(&aws);
    let mut req = seed_request("pvc-1");
    rounds(&p, &req, Duration::from_secs(5), 8).await;
    let mut c = (*req.claim).clone();
    c.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    req.claim = Arc::new(c);
    // The engine keeps finishing only while the answer says work may exist
    // (InProgress, Stalled); Stalled also keeps the warning visible.
    match p.provision(&req).await {
        Err(ProvisionError::Stalled(m)) => assert!(m.chain().contains("creating nothing new"), "{m:#}"),
        other => panic!("expected Stalled while the file system exists, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn without_the_ec2_check_two_subnets_in_one_zone_roll_back_once() {
    let aws = Aws::new();
    let p = provisioner_without_network(&aws);
    let req = request_with("pvc-1", &[("subnets", "subnet-a,subnet-a2")]);
    let (_, answers) = rounds(&p, &req, Duration::from_secs(1), 200).await;
    assert_eq!(aws.calls(Operation::CreateMountTarget), 2, "{answers:?}");
    let w = warnings(&answers);
    assert!(w.keys().any(|m| m.contains("one mount target per availability zone")), "{w:#?}");
}

// ---- topology checked before anything is created ----

#[tokio::test]
async fn a_class_whose_network_efs_cannot_use_is_infeasible_and_nothing_is_created() {
    for (subnets, groups, needle) in [
        ("subnet-a,subnet-a2", "sg-1", "all in zone az-a"),
        ("subnet-a,subnet-x", "sg-1", "in one VPC"),
        ("subnet-a,subnet-gone", "sg-1", "subnet(s) subnet-gone do not exist"),
        ("subnet-a,subnet-b", "sg-9", "security group sg-9 does not exist"),
        ("subnet-a,subnet-b", "sg-2", "sg-2 is in vpc-2"),
    ] {
        let aws = Aws::new();
        let req = request_with("pvc-1", &[("subnets", subnets), ("securityGroups", groups)]);
        match provisioner(&aws).provision(&req).await {
            Err(ProvisionError::Infeasible(m)) => {
                assert!(
                    m.chain().contains(needle) && m.chain().contains("nothing was created"),
                    "{subnets} {groups}: {m:#}"
                )
            }
            other => panic!("{subnets} {groups}: expected Infeasible, got {other:?}"),
        }
        assert_eq!(aws.calls(Operation::CreateFileSystem), 0);
    }
}

// ---- finding 2: lifecycle rules ----

#[tokio::test(start_paused = true)]
async fn a_lifecycle_rule_efs_rejects_is_infeasible_and_nothing_is_created() {
    for params in [
        vec![("transitionToArchive", "AFTER_90_DAYS")],
        vec![
            ("throughputMode", "elastic"),
            ("transitionToIA", "AFTER_90_DAYS"),
            ("transitionToArchive", "AFTER_30_DAYS"),
        ],
    ] {
        let aws = Aws::new();
        let (_, answers) =
            rounds(&provisioner(&aws), &request_with("pvc-1", &params), Duration::from_secs(5), 40).await;
        assert!(
            matches!(answers.first(), Some(ProvisionError::Infeasible(m)) if m.chain().contains("transitionToArchive")),
            "{answers:?}"
        );
        assert_eq!(aws.calls(Operation::CreateFileSystem), 0, "{params:?}");
    }
    let aws = Aws::new();
    let ok =
        [("throughputMode", "elastic"), ("transitionToIA", "AFTER_30_DAYS"), ("transitionToArchive", "AFTER_90_DAYS")];
    rounds(&provisioner(&aws), &request_with("pvc-1", &ok), Duration::from_secs(5), 40).await.0.expect("valid rules");
}

// ---- finding 3: partition DNS suffix ----

#[tokio::test]
async fn a_china_region_volume_names_the_amazonaws_com_cn_server() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let p = EfsProvisioner::new(aws.clone(), Defaults { region: "cn-north-1".into(), ..defaults() });
    let v = p.provision(&seed_request("pvc-1")).await.unwrap();
    let server = v.spec.nfs.unwrap().server;
    assert!(server.ends_with(".efs.cn-north-1.amazonaws.com.cn"), "{server}");
}

// ---- finding 4: zone affinity ----

#[tokio::test]
async fn an_nfs_volume_is_pinned_to_the_zones_of_its_mount_targets() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let v = provisioner(&aws).provision(&seed_request("pvc-1")).await.unwrap();
    let terms = v.spec.node_affinity.and_then(|a| a.required).map(|r| r.node_selector_terms).unwrap_or_default();
    assert_eq!(terms.len(), 1, "one term");
    let expr = &terms[0].match_expressions.as_ref().unwrap()[0];
    assert_eq!(expr.key, ZONE_LABEL);
    assert_eq!(expr.operator, "In");
    assert_eq!(expr.values.as_deref(), Some(&["az-a".to_string(), "az-b".to_string()][..]));
}

// ---- finding 5: deleting only what is ours ----

#[tokio::test]
async fn an_access_point_volume_missing_its_access_point_never_deletes_the_shared_file_system() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let shared = aws.add_file_system("shared", BTreeMap::new());
    let p = provisioner(&aws);
    let req = request_with("pvc-1", &[("mode", "accessPoint"), ("fileSystemId", &shared)]);
    let v = p.provision(&req).await.unwrap();
    let mut pv = pv_of(&v, "pvc-1");
    pv.metadata.annotations.as_mut().unwrap().remove(ACCESS_POINT_ID);
    match p.delete(&pv).await {
        Err(DeleteError::Failed(m)) => assert!(m.chain().contains("never deleted"), "{m:#}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(aws.calls(Operation::DeleteFileSystem) + aws.calls(Operation::DeleteMountTarget), 0);
    assert!(aws.world().file_systems.contains_key(&shared));
}

#[tokio::test]
async fn a_file_system_whose_tags_do_not_prove_it_ours_is_not_deleted() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let p = provisioner(&aws);
    let v = p.provision(&seed_request("pvc-1")).await.unwrap();
    // Another cluster's provisioner (same account) and another PV's name.
    let other_cluster = EfsProvisioner::new(aws.clone(), Defaults { cluster_id: "other".into(), ..defaults() });
    for (who, pv) in [(&other_cluster, pv_of(&v, "pvc-1")), (&p, pv_of(&v, "pvc-2"))] {
        match who.delete(&pv).await {
            Err(DeleteError::Failed(m)) => {
                assert!(m.chain().contains("not deleting") && m.chain().contains("tags"), "{m:#}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(aws.calls(Operation::DeleteMountTarget), 0);
    // The seed's volumes (no tags at all) are left alone too.
    let seed = aws.add_file_system("seed", BTreeMap::new());
    let mut seed_pv = pv_of(&v, "pvc-seed");
    seed_pv.metadata.annotations.as_mut().unwrap().insert(FILE_SYSTEM_ID.into(), seed.clone());
    assert!(matches!(p.delete(&seed_pv).await, Err(DeleteError::Failed(_))));
    p.delete(&pv_of(&v, "pvc-1")).await.expect("ours: deleted");
    assert_eq!(aws.calls(Operation::DeleteMountTarget), 2);
}

// ---- finding 6: the Name tag ----

#[tokio::test]
async fn a_claim_with_a_long_name_gets_a_name_tag_efs_accepts() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let mut req = seed_request("pvc-1");
    req.claim = Arc::new(claim(&"n".repeat(63), &"c".repeat(253)).as_stored("uid-1").build());
    provisioner(&aws).provision(&req).await.expect("provisioned");
    let w = aws.world();
    let name = &w.file_systems.values().next().unwrap().tags["Name"];
    assert_eq!(name.chars().count(), 256);
}

// ---- finding 7: failures a user must see ----

#[tokio::test]
async fn broken_credentials_warn_on_the_claim_naming_irsa() {
    let aws = Aws::with(|w| w.credentials_broken = true);
    match provisioner_without_network(&aws).provision(&seed_request("pvc-1")).await {
        Err(ProvisionError::Stalled(m)) => {
            assert!(
                m.chain().contains("could not get AWS credentials") && m.chain().contains("IRSA role annotation"),
                "{m:#}"
            )
        }
        other => panic!("expected a warning (Stalled), got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_efs_warns_on_the_claim_naming_the_network() {
    let aws = Aws::with(|w| w.unreachable = true);
    match provisioner(&aws).provision(&seed_request("pvc-1")).await {
        Err(ProvisionError::Stalled(m)) => {
            assert!(m.chain().contains("could not reach EFS") && m.chain().contains("NAT"), "{m:#}")
        }
        other => panic!("expected a warning (Stalled), got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn permission_failures_after_the_file_system_exists_warn_too() {
    let aws = Aws::with(|w| {
        w.denied.insert((Operation::DescribeFileSystems, None));
    });
    let p = provisioner(&aws);
    let req = seed_request("pvc-1");
    assert!(
        matches!(p.provision(&req).await, Err(e) if e.may_have_created() && !matches!(e, ProvisionError::Stalled(_)))
    );
    match p.provision(&req).await {
        Err(ProvisionError::Stalled(m)) => {
            assert!(m.chain().contains("elasticfilesystem:DescribeFileSystems"), "{m:#}")
        }
        other => panic!("expected a warning, got {other:?}"),
    }
}

// ---- finding 8: answers that never come ----

#[tokio::test(start_paused = true)]
async fn an_answer_that_never_comes_frees_the_worker_and_the_allocation_lock() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let shared = aws.add_file_system("shared", BTreeMap::new());
    aws.world().hang.insert(Operation::DescribeAccessPoints, 1);
    let p = Arc::new(EfsProvisioner::new(DeadlineApi::new(aws.clone(), Deadlines::default()), defaults()));
    let params = [("mode", "accessPoint"), ("fileSystemId", shared.as_str())];
    let (a, b) = (request_with("pvc-1", &params), request_with("pvc-2", &params));
    let start = Instant::now();
    let (first, second) = tokio::join!(p.provision(&a), p.provision(&b));
    match first {
        Err(ProvisionError::InProgress(m)) => assert!(m.chain().contains("Timeout"), "{m:#}"),
        other => panic!("expected InProgress after the deadline, got {other:?}"),
    }
    second.expect("the next claim on the file system is not stuck behind it");
    assert_eq!(start.elapsed(), Deadlines::default().read, "bounded by the read deadline");
}

// ---- finding 9 and 10: access points ----

#[tokio::test]
async fn access_points_are_listed_a_thousand_per_page() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let shared = aws.add_file_system("shared", BTreeMap::new());
    for i in 0..2500 {
        aws.add_access_point(&shared, 50_000 + i, &format!("other-{i}"));
    }
    let req = request_with("pvc-1", &[("mode", "accessPoint"), ("fileSystemId", &shared)]);
    provisioner(&aws).provision(&req).await.unwrap();
    let w = aws.world();
    let pages: Vec<Option<u32>> =
        w.calls.iter().filter(|c| c.op == Operation::DescribeAccessPoints).map(|c| c.page_size).collect();
    assert_eq!(pages, vec![Some(1000); 3]);
}

#[tokio::test(start_paused = true)]
async fn access_point_already_exists_is_resolved_by_its_client_token() {
    let aws = Aws::with(|w| {
        w.timing = Timing::instant();
        w.timing.access_point_listed = Duration::from_secs(600);
    });
    let shared = aws.add_file_system("shared", BTreeMap::new());
    // The first create was carried out, but its answer was lost.
    aws.world().hang.insert(Operation::CreateAccessPoint, 0);
    let p = EfsProvisioner::new(DeadlineApi::new(aws.clone(), Deadlines::default()), defaults());
    let req = request_with("pvc-1", &[("mode", "accessPoint"), ("fileSystemId", &shared)]);
    let made = p.provision(&req).await.unwrap();
    let id = made.annotations[ACCESS_POINT_ID].clone();
    // A new process: the listing does not show it yet, the create says it exists.
    let again = EfsProvisioner::new(aws.clone(), defaults()).provision(&req).await.expect("resolved at once");
    assert_eq!(again.annotations[ACCESS_POINT_ID], id);
    assert_eq!(aws.calls(Operation::CreateAccessPoint), 2);
}

#[tokio::test]
async fn a_recreated_claim_gets_a_new_directory_by_default() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let shared = aws.add_file_system("shared", BTreeMap::new());
    let p = provisioner(&aws);
    let params = [
        ("mode", "accessPoint"),
        ("fileSystemId", shared.as_str()),
        ("subPathPattern", "${.PVC.namespace}/${.PVC.name}"),
    ];
    p.provision(&request_with("pvc-old", &params)).await.unwrap();
    p.provision(&request_with("pvc-new", &params)).await.unwrap();
    let w = aws.world();
    let paths: Vec<&String> = w.access_points.values().map(|a| &a.spec.path).collect();
    assert_eq!(paths.len(), 2);
    assert_ne!(paths[0], paths[1], "same namespace and name, new directory");
    assert!(paths.iter().all(|p| p.starts_with("/default/data-")), "{paths:?}");
}

#[tokio::test]
async fn a_file_system_found_by_token_without_our_tags_is_not_adopted() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    aws.add_file_system("pvc-1", BTreeMap::from([(TAG_MANAGED_BY.to_string(), "someone-else".to_string())]));
    match provisioner(&aws).provision(&seed_request("pvc-1")).await {
        Err(ProvisionError::Final(m)) => assert!(m.chain().contains("not using it"), "{m:#}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(aws.calls(Operation::CreateMountTarget), 0);
    let _ = aws.describe_file_system(&FileSystemLookup::CreationToken("pvc-1".into())).await.unwrap().unwrap();
}

// ---- options users of the CSI driver ask for ----

fn the_file_system(aws: &Aws) -> stand_in::Fs {
    aws.world().file_systems.values().next().cloned().expect("a file system")
}

#[tokio::test]
async fn backup_is_asked_for_in_the_create_call_only_when_the_class_says_so() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    provisioner(&aws).provision(&request_with("pvc-1", &[("backup", "true")])).await.unwrap();
    assert_eq!(the_file_system(&aws).options.backup, Some(true));
    let aws = Aws::with(|w| w.timing = Timing::instant());
    provisioner(&aws).provision(&seed_request("pvc-1")).await.unwrap();
    assert_eq!(the_file_system(&aws).options.backup, None, "EFS's default");
}

#[tokio::test]
async fn custom_tags_are_set_in_the_create_calls_and_never_override_ours() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let flag = BTreeMap::from([("team".to_string(), "storage".to_string()), ("env".to_string(), "prod".to_string())]);
    let p = EfsProvisioner::new(aws.clone(), Defaults { tags: flag, ..defaults() })
        .with_network(aws.clone() as Arc<dyn NetworkApi>);
    p.provision(&request_with("pvc-1", &[("tags", "env=staging,app=web")])).await.unwrap();
    let fs = the_file_system(&aws);
    assert_eq!(fs.tags["team"], "storage");
    assert_eq!(fs.tags["env"], "staging", "the class's over the flag's");
    assert_eq!(fs.tags["app"], "web");
    assert_eq!(fs.tags[TAG_CLUSTER], CLUSTER);
    assert_eq!(aws.calls(Operation::TagResource), 0, "in the create call");
    let ap = request_with("pvc-2", &[("mode", "accessPoint"), ("fileSystemId", &fs.id), ("tags", "app=db")]);
    p.provision(&ap).await.unwrap();
    let tags = aws.world().access_points.values().next().unwrap().spec.tags.clone();
    assert_eq!((tags["team"].as_str(), tags["app"].as_str(), tags[TAG_PV_NAME].as_str()), ("storage", "db", "pvc-2"));
    // Even tags that were never checked cannot replace ours.
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let sneaky = BTreeMap::from([
        (TAG_CLUSTER.to_string(), "other".to_string()),
        (TAG_MANAGED_BY.to_string(), "me".to_string()),
    ]);
    EfsProvisioner::new(aws.clone(), Defaults { tags: sneaky, ..defaults() })
        .provision(&seed_request("pvc-1"))
        .await
        .unwrap();
    let fs = the_file_system(&aws);
    assert_eq!((fs.tags[TAG_CLUSTER].as_str(), fs.tags[TAG_MANAGED_BY].as_str()), (CLUSTER, "efs-provisioner"));
}

#[tokio::test]
async fn a_class_tag_efs_would_reject_is_infeasible_and_nothing_is_created() {
    for tags in ["aws:owner=me", "team=a;b", "efs.aws.skpr.io/cluster=other"] {
        let aws = Aws::new();
        match provisioner(&aws).provision(&request_with("pvc-1", &[("tags", tags)])).await {
            Err(ProvisionError::Infeasible(m)) => assert!(m.chain().contains("tags"), "{tags}: {m:#}"),
            other => panic!("{tags}: expected Infeasible, got {other:?}"),
        }
        assert!(aws.world().calls.is_empty(), "{tags}: no request at all");
    }
}

#[tokio::test(start_paused = true)]
async fn a_one_zone_class_gets_one_mount_target_in_its_zone_and_volumes_pinned_to_it() {
    for source in ["nfs", "csi"] {
        let aws = Aws::new();
        let p = provisioner(&aws);
        let req = request_with("pvc-1", &[("availabilityZoneName", "az-b"), ("volumeSource", source)]);
        let v = engine_rounds(&p, &req, Duration::from_secs(600)).await.0.expect("ready");
        let fs = the_file_system(&aws);
        assert_eq!(fs.options.availability_zone_name.as_deref(), Some("az-b"));
        let mts: Vec<String> = aws.world().mount_targets.values().map(|m| m.subnet.id.clone()).collect();
        assert_eq!(mts, ["subnet-b"], "only the subnet in az-b, of subnet-a and subnet-b");
        assert_eq!(aws.calls(Operation::CreateMountTarget), 1);
        let terms = v.spec.node_affinity.and_then(|a| a.required).map(|r| r.node_selector_terms).unwrap_or_default();
        let expr = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (expr.key.as_str(), expr.values.as_deref()),
            (ZONE_LABEL, Some(&["az-b".to_string()][..])),
            "{source}"
        );
    }
}

#[tokio::test]
async fn a_one_zone_class_efs_cannot_serve_is_infeasible_and_nothing_is_created() {
    for (params, needle) in [
        (
            vec![("availabilityZoneName", "az-c")],
            "none of the subnets is in that zone (subnet-a (az-a), subnet-b (az-b))",
        ),
        (
            vec![("availabilityZoneName", "az-a"), ("performanceMode", "maxIO")],
            "not available with performanceMode maxIO",
        ),
        (vec![("availabilityZoneName", "az-a"), ("subnets", "subnet-b,subnet-x")], "in one VPC"),
    ] {
        let aws = Aws::new();
        match provisioner(&aws).provision(&request_with("pvc-1", &params)).await {
            Err(ProvisionError::Infeasible(m)) => assert!(m.chain().contains(needle), "{params:?}: {m:#}"),
            other => panic!("{params:?}: expected Infeasible, got {other:?}"),
        }
        assert_eq!(aws.calls(Operation::CreateFileSystem), 0, "{params:?}");
    }
    // Without the EC2 lookup, the zone's subnet must be the only one listed.
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let (_, answers) = rounds(
        &provisioner_without_network(&aws),
        &request_with("pvc-1", &[("availabilityZoneName", "az-a")]),
        Duration::from_secs(1),
        20,
    )
    .await;
    assert!(answers.iter().any(|a| a.chain().contains("list only that zone's subnet")), "{answers:?}");
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let one = request_with("pvc-1", &[("availabilityZoneName", "az-a"), ("subnets", "subnet-a")]);
    provisioner_without_network(&aws).provision(&one).await.expect("the one subnet listed");
}

#[tokio::test(start_paused = true)]
async fn stand_in_one_zone_and_tag_rules() {
    let aws = Aws::with(|w| w.timing = Timing::instant());
    let one_zone = |zone: &str, mode| {
        let spec = NewFileSystem {
            creation_token: format!("t-{zone}-{mode:?}"),
            performance_mode: mode,
            ..NewFileSystem::default()
        };
        (spec, FileSystemOptions { availability_zone_name: Some(zone.into()), ..FileSystemOptions::default() })
    };
    let (spec, options) = one_zone("az-z", PerformanceMode::GeneralPurpose);
    let e = aws.create_file_system_with(&spec, &options).await.unwrap_err();
    assert_eq!(e.code, "UnsupportedAvailabilityZone");
    let (spec, options) = one_zone("az-a", PerformanceMode::MaxIo);
    assert_eq!(aws.create_file_system_with(&spec, &options).await.unwrap_err().kind, ErrorKind::BadRequest);
    let (spec, options) = one_zone("az-a", PerformanceMode::GeneralPurpose);
    let fs = aws.create_file_system_with(&spec, &options).await.unwrap();
    let e = aws.create_mount_target(&fs.id, "subnet-b", &["sg-1".into()]).await.unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (ErrorKind::BadRequest, "AvailabilityZonesMismatch"));
    aws.create_mount_target(&fs.id, "subnet-a", &["sg-1".into()]).await.unwrap();
    assert_eq!(aws.create_mount_target(&fs.id, "subnet-a2", &[]).await.unwrap_err().kind, ErrorKind::Conflict);
    let aws_prefix = BTreeMap::from([("aws:owner".to_string(), "me".to_string())]);
    assert_eq!(aws.tag_resource(&fs.id, &aws_prefix).await.unwrap_err().kind, ErrorKind::BadRequest);
    let many: BTreeMap<String, String> = (0..51).map(|i| (format!("k{i}"), "v".to_string())).collect();
    assert_eq!(aws.tag_resource(&fs.id, &many).await.unwrap_err().kind, ErrorKind::BadRequest);
}

// ---- figures ----

/// Rounds as the engine paces them: the provisioner's "look again in"
/// when it gives one, 1 s after other "in progress" answers (the backoff's
/// first and shortest step), and its slow retry (5 min) after `Infeasible`;
/// for `run` of (paused) time or until a volume.
async fn engine_rounds<A: EfsApi>(
    p: &EfsProvisioner<A>,
    req: &ProvisionRequest,
    run: Duration,
) -> (Option<ProvisionedVolume>, Vec<ProvisionError>) {
    let start = Instant::now();
    let mut answers = Vec::new();
    while start.elapsed() < run {
        let wait = match p.provision(req).await {
            Ok(v) => return (Some(v), answers),
            Err(e) => {
                let wait = match &e {
                    ProvisionError::RetryAfter(_, d) => *d,
                    ProvisionError::Infeasible(_) => Duration::from_secs(300),
                    _ => Duration::from_secs(1),
                };
                answers.push(e);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
    (None, answers)
}

#[tokio::test(start_paused = true)]
async fn a_bad_subnet_creates_no_file_system_however_many_rounds() {
    for subnets in ["subnet-a,subnet-x", "subnet-a,subnet-a2", "subnet-a,subnet-gone"] {
        let aws = Aws::new();
        let p = provisioner(&aws);
        let req = request_with("pvc-1", &[("subnets", subnets)]);
        let (_, answers) = engine_rounds(&p, &req, Duration::from_secs(3600)).await;
        assert_eq!(aws.calls(Operation::CreateFileSystem), 0, "{subnets}");
        assert_eq!(aws.calls(Operation::CreateMountTarget), 0, "{subnets}");
        assert!(answers.iter().all(|a| matches!(a, ProvisionError::Infeasible(_))), "{subnets}: {answers:?}");
        println!("{subnets}: {} rounds in an hour, 0 file systems, 0 mount targets", answers.len());
    }
}

#[tokio::test(start_paused = true)]
async fn access_denied_on_the_second_mount_target_creates_one_file_system_per_slow_retry_at_most() {
    let aws = denied_on_subnet_b();
    let p = provisioner(&aws);
    let req = seed_request("pvc-1");
    let (_, answers) = engine_rounds(&p, &req, Duration::from_secs(300)).await;
    assert_eq!(aws.calls(Operation::CreateFileSystem), 1, "{answers:?}");
    assert!(answers.iter().any(|a| a.chain().contains("was deleted")), "rolled back within 5 min: {answers:?}");
    let (_, more) = engine_rounds(&p, &req, Duration::from_secs(3300)).await;
    let created = aws.calls(Operation::CreateFileSystem);
    println!(
        "AccessDenied on the second CreateMountTarget: 1 file system in the first 5 min ({} rounds), {created} in an \
         hour ({} rounds), {} left",
        answers.len(),
        answers.len() + more.len(),
        aws.file_system_count()
    );
    assert!(created <= 12, "at most one per slow retry: {created}");
}

fn per_volume(aws: &Aws, from: usize) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for c in &aws.world().calls[from..] {
        *out.entry(c.op.name()).or_default() += 1;
    }
    out
}

fn show(label: &str, counts: &BTreeMap<&'static str, usize>) -> usize {
    let total: usize = counts.values().sum();
    let each: Vec<String> = counts.iter().map(|(op, n)| format!("{op} {n}")).collect();
    println!("{label}: {} = {total}", each.join(", "));
    total
}

#[tokio::test(start_paused = true)]
async fn efs_calls_per_volume_with_aws_timings() {
    // File system per claim, two subnets, AWS's timings (30 s, 90 s), the EC2 check on.
    let aws = Aws::new();
    let p = provisioner(&aws);
    let start = Instant::now();
    let v = engine_rounds(&p, &seed_request("pvc-1"), Duration::from_secs(600)).await.0.expect("bound");
    let ready = start.elapsed();
    let provision = per_volume(&aws, 0);
    let mark = aws.world().calls.len();
    let pv = pv_of(&v, "pvc-1");
    let start = Instant::now();
    loop {
        match p.delete(&pv).await {
            Ok(()) => break,
            Err(DeleteError::InUse(_)) => tokio::time::sleep(Duration::from_secs(10)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    let gone = start.elapsed();
    let delete = per_volume(&aws, mark);
    println!("file system per claim, 2 subnets: ready after {ready:?} (simulated), deleted after {gone:?}");
    let fs_provision = show("  provision", &provision);
    let fs_delete = show("  delete", &delete);

    // Access point per claim on a shared file system.
    let aws = Aws::new();
    let shared = aws.add_file_system("shared", BTreeMap::new());
    let p = provisioner(&aws);
    let req = request_with("pvc-2", &[("mode", "accessPoint"), ("fileSystemId", &shared)]);
    let v = engine_rounds(&p, &req, Duration::from_secs(600)).await.0.expect("bound");
    let provision = per_volume(&aws, 0);
    let mark = aws.world().calls.len();
    p.delete(&pv_of(&v, "pvc-2")).await.expect("deleted");
    let delete = per_volume(&aws, mark);
    println!("access point per claim:");
    let ap_provision = show("  provision", &provision);
    let ap_delete = show("  delete", &delete);

    // The figures in the README: change both together.
    assert_eq!((fs_provision, fs_delete, ap_provision, ap_delete), (FIGURES.0, FIGURES.1, FIGURES.2, FIGURES.3));
    assert!(ready <= Duration::from_secs(130), "{ready:?}");
}

/// EFS and EC2 calls per volume (file system: provision, delete; access
/// point: provision, delete), as efs-provisioner/README.md states them.
const FIGURES: (usize, usize, usize, usize) = (30, 24, 2, 2);
