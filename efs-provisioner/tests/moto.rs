//! The provisioner against moto on loopback: real HTTP, the real SDK.
//! Needs `AWS_ENDPOINT_URL_EFS` (from `tests/moto/up`). Tests share one moto
//! and run in parallel, so each uses unique PV names instead of resetting it.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;

use efs_provisioner::api::{CountingApi, EfsApi, FileSystemLookup, LifeCycle, NetworkApi, Operation};
use efs_provisioner::moto;
use efs_provisioner::provisioner::{TAG_CLUSTER, TAG_MANAGED_BY, TAG_PV_NAME, TAG_PVC_NAME, TAG_PVC_NAMESPACE};
use efs_provisioner::volume::{FILE_SYSTEM_ID, saved_volume};
use efs_provisioner::{Defaults, EfsProvisioner};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::ObjectMeta;
use provisioner_core::testing::fixtures::{claim, class};
use provisioner_core::{ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};

const REGION: &str = "us-east-1";

struct Moto {
    endpoint: String,
    subnets: Vec<(String, String)>,
    security_group: String,
}

fn moto() -> Moto {
    let endpoint = moto::endpoint_from_env().unwrap_or_else(|e| panic!("{e}"));
    let subnets = moto::default_subnets(&endpoint, REGION).expect("moto's default subnets");
    assert!(subnets.len() >= 2, "moto's default VPC has a subnet per zone: {subnets:?}");
    let security_group = moto::default_security_group(&endpoint, REGION).expect("moto's default security group");
    Moto { endpoint, subnets, security_group }
}

type Counted = Arc<CountingApi<aws_sdk_efs::Client>>;

fn provisioner(m: &Moto) -> (EfsProvisioner<Counted>, Counted) {
    let api = Arc::new(CountingApi::new(moto::client(&m.endpoint, REGION)));
    let defaults = Defaults {
        region: REGION.into(),
        subnets: m.subnets.iter().map(|s| s.0.clone()).collect(),
        security_groups: vec![m.security_group.clone()],
        cluster_id: "moto-tests".into(),
        ..Defaults::default()
    };
    (EfsProvisioner::new(api.clone(), defaults), api)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

fn request(pv: &str, provisioner_name: &str, params: &[(&str, &str)]) -> ProvisionRequest {
    let mut req = provisioner_core::testing::fixtures::request(pv, "general", params.iter().copied());
    let mut k = class("general", provisioner_name).build();
    k.parameters = (!params.is_empty()).then(|| params.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect());
    req.class = Arc::new(k);
    req.claim = Arc::new(
        claim("test-project", "files")
            .as_stored("uid-1")
            .legacy_class("general")
            .access_modes(&["ReadWriteMany"])
            .build(),
    );
    req
}

fn pv_from(v: &ProvisionedVolume, name: &str) -> PersistentVolume {
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

#[tokio::test]
async fn general_purpose_claim_gets_an_encrypted_tagged_file_system_with_a_mount_target_per_zone() {
    let m = moto();
    let (p, api) = provisioner(&m);
    let pv = unique("pvc");
    let v = p.provision(&request(&pv, "efs.aws.skpr.io/generalPurpose", &[])).await.expect("provisioned");
    let fs_id = v.annotations[FILE_SYSTEM_ID].clone();
    let nfs = v.spec.nfs.clone().expect("nfs source");
    assert_eq!(nfs.server, format!("{fs_id}.efs.{REGION}.amazonaws.com"));
    assert_eq!(nfs.path, "/");
    assert_eq!(v.spec.capacity.as_ref().expect("capacity")["storage"].0, "8E");

    let fs = api.inner().describe_file_system(&FileSystemLookup::Id(fs_id.clone())).await.unwrap().expect("exists");
    assert_eq!(fs.creation_token, pv);
    assert_eq!(fs.performance_mode, "generalPurpose");
    assert!(fs.encrypted, "encrypted by default");
    assert_eq!(fs.tags.get(TAG_PV_NAME), Some(&pv));
    assert_eq!(fs.tags.get(TAG_PVC_NAMESPACE).map(String::as_str), Some("test-project"));
    assert_eq!(fs.tags.get(TAG_PVC_NAME).map(String::as_str), Some("files"));
    assert_eq!(fs.tags.get(TAG_CLUSTER).map(String::as_str), Some("moto-tests"));
    assert_eq!(fs.tags.get(TAG_MANAGED_BY).map(String::as_str), Some("efs-provisioner"));
    assert_eq!(fs.tags.get("Name").map(String::as_str), Some("test-project/files"));

    let mts = EfsApi::describe_mount_targets(api.inner(), &fs_id).await.unwrap();
    let mut subnets: Vec<&str> = mts.iter().map(|m| m.subnet_id.as_str()).collect();
    subnets.sort();
    let mut want: Vec<&str> = m.subnets.iter().map(|s| s.0.as_str()).collect();
    want.sort();
    assert_eq!(subnets, want, "one mount target in every subnet of the default VPC");
    assert!(mts.iter().all(|m| m.state == LifeCycle::Available));

    // The minimum: one create for the file system, one per mount target, no tagging call.
    let counts = api.counts();
    assert_eq!(counts.get(&Operation::CreateFileSystem), Some(&1));
    assert_eq!(counts.get(&Operation::CreateMountTarget), Some(&(m.subnets.len() as u64)));
    assert_eq!(counts.values().sum::<u64>(), 1 + m.subnets.len() as u64, "{counts:?}");
}

#[tokio::test]
async fn max_io_name_creates_max_io_and_lifecycle_and_throughput_are_applied() {
    let m = moto();
    let (p, api) = provisioner(&m);
    let pv = unique("pvc");
    let params =
        [("throughputMode", "provisioned"), ("provisionedThroughputInMibps", "16"), ("transitionToIA", "AFTER_7_DAYS")];
    let v = p.provision(&request(&pv, "efs.aws.skpr.io/maxIO", &params)).await.expect("provisioned");
    let fs_id = v.annotations[FILE_SYSTEM_ID].clone();
    let fs = api.inner().describe_file_system(&FileSystemLookup::Id(fs_id.clone())).await.unwrap().expect("exists");
    assert_eq!(fs.performance_mode, "maxIO");
    let lc = api.inner().describe_lifecycle_configuration().file_system_id(&fs_id).send().await.unwrap();
    let rules = lc.lifecycle_policies.unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].transition_to_ia.as_ref().map(|r| r.as_str()), Some("AFTER_7_DAYS"));
    let described = api.inner().describe_file_systems().file_system_id(&fs_id).send().await.unwrap();
    let d = &described.file_systems.unwrap()[0];
    assert_eq!(d.throughput_mode.as_ref().map(|t| t.as_str()), Some("provisioned"));
    assert_eq!(d.provisioned_throughput_in_mibps, Some(16.0));
}

#[tokio::test]
async fn a_repeated_provision_after_a_crash_returns_the_same_file_system() {
    let m = moto();
    let pv = unique("pvc");
    let req = request(&pv, "efs.aws.skpr.io/generalPurpose", &[]);
    let (first, _) = provisioner(&m);
    let a = first.provision(&req).await.expect("provisioned");
    drop(first); // the process "crashes": its memory is gone
    let (second, api) = provisioner(&m);
    let b = second.provision(&req).await.expect("provisioned again");
    assert_eq!(a.annotations[FILE_SYSTEM_ID], b.annotations[FILE_SYSTEM_ID]);
    let list = api.inner().describe_file_systems().creation_token(&pv).send().await.unwrap();
    assert_eq!(list.file_systems.unwrap_or_default().len(), 1, "no second file system");
    let mts = EfsApi::describe_mount_targets(api.inner(), &a.annotations[FILE_SYSTEM_ID]).await.unwrap();
    assert_eq!(mts.len(), m.subnets.len(), "no extra mount targets");
    let counts = api.counts();
    assert_eq!(counts.get(&Operation::CreateMountTarget), None, "existing mount targets are found, not re-created");
}

#[tokio::test]
async fn delete_removes_mount_targets_then_the_file_system_and_not_found_is_success() {
    let m = moto();
    let (p, api) = provisioner(&m);
    let pv = unique("pvc");
    let v = p.provision(&request(&pv, "efs.aws.skpr.io/generalPurpose", &[])).await.expect("provisioned");
    let fs_id = v.annotations[FILE_SYSTEM_ID].clone();
    let volume = pv_from(&v, &pv);
    api.reset();
    p.delete(&volume).await.expect("deleted");
    let counts = api.counts();
    assert_eq!(counts.get(&Operation::DeleteMountTarget), Some(&(m.subnets.len() as u64)));
    assert_eq!(counts.get(&Operation::DeleteFileSystem), Some(&1));
    assert_eq!(api.inner().describe_file_system(&FileSystemLookup::Id(fs_id.clone())).await.unwrap(), None);
    // moto refuses DeleteFileSystem while mount targets exist, so the order was right.
    p.delete(&volume).await.expect("a second delete finds nothing and succeeds");
}

#[tokio::test]
async fn access_points_get_distinct_gids_tags_paths_and_are_found_again_after_a_restart() {
    let m = moto();
    let (p, api) = provisioner(&m);
    // The shared file system, as an admin would make it.
    let shared = p.provision(&request(&unique("shared"), "efs.aws.skpr.io/generalPurpose", &[])).await.unwrap();
    let fs_id = shared.annotations[FILE_SYSTEM_ID].clone();
    let params = [
        ("mode", "accessPoint"),
        ("fileSystemId", fs_id.as_str()),
        ("gidRangeStart", "1000"),
        ("gidRangeEnd", "1002"),
        ("basePath", "/dynamic"),
        ("directoryPerms", "0750"),
    ];
    let names: Vec<String> = (0..3).map(|_| unique("pvc")).collect();
    let mut handles = BTreeMap::new();
    for pv in &names {
        let v = p.provision(&request(pv, "efs.aws.skpr.io/generalPurpose", &params)).await.expect("access point");
        let csi = v.spec.csi.clone().expect("csi source");
        assert_eq!(csi.driver, "efs.csi.aws.com");
        assert!(csi.volume_handle.starts_with(&format!("{fs_id}::fsap-")), "{}", csi.volume_handle);
        handles.insert(pv.clone(), (csi.volume_handle, v));
    }
    let aps = api.inner().describe_access_points().file_system_id(&fs_id).send().await.unwrap();
    let aps = aps.access_points.unwrap_or_default();
    assert_eq!(aps.len(), 3);
    let mut gids: Vec<i64> = aps.iter().map(|a| a.posix_user.as_ref().unwrap().gid).collect();
    gids.sort();
    assert_eq!(gids, vec![1000, 1001, 1002], "no two live volumes share a gid");
    for a in &aps {
        let pv = a.tags.as_ref().unwrap().iter().find(|t| t.key == TAG_PV_NAME).unwrap().value.clone();
        let root = a.root_directory.as_ref().unwrap();
        assert_eq!(root.path.as_deref(), Some(format!("/dynamic/{pv}").as_str()));
        let ci = root.creation_info.as_ref().unwrap();
        assert_eq!(ci.permissions, "0750");
        assert_eq!(ci.owner_gid, a.posix_user.as_ref().unwrap().gid);
    }
    // The range is full: a fourth claim fails clearly and creates nothing.
    let err = p.provision(&request(&unique("pvc"), "efs.aws.skpr.io/generalPurpose", &params)).await.unwrap_err();
    assert!(err.message().contains("no free gid"), "{err}");
    // A new process finds the same access point (moto ignores client tokens; the tag finds it).
    let (restarted, _) = provisioner(&m);
    let again = restarted.provision(&request(&names[1], "efs.aws.skpr.io/generalPurpose", &params)).await.unwrap();
    assert_eq!(again.spec.csi.unwrap().volume_handle, handles[&names[1]].0);
    // Deleting one frees its gid for the next claim.
    let (_, v) = &handles[&names[0]];
    p.delete(&pv_from(v, &names[0])).await.expect("access point deleted");
    p.delete(&pv_from(v, &names[0])).await.expect("not found is success");
    let next =
        p.provision(&request(&unique("pvc"), "efs.aws.skpr.io/generalPurpose", &params)).await.expect("gid freed");
    let ap_id = next.spec.csi.unwrap().volume_handle.split("::").nth(1).unwrap().to_string();
    let ap = api.inner().describe_access_points().access_point_id(&ap_id).send().await.unwrap();
    let freed = handles[&names[0]].1.annotations.get("efs.aws.skpr.io/access-point-id").cloned();
    assert_ne!(Some(ap_id.clone()), freed);
    let gid = ap.access_points.unwrap()[0].posix_user.as_ref().unwrap().gid;
    let old_gids: Vec<i64> = aps
        .iter()
        .filter(|a| Some(a.access_point_id.clone().unwrap()) == freed)
        .map(|a| a.posix_user.as_ref().unwrap().gid)
        .collect();
    assert_eq!(vec![gid], old_gids, "the freed gid is reused");
    assert!(saved_volume(&pv_from(&handles[&names[2]].1, "x")).is_some());
}

#[tokio::test]
async fn the_ec2_client_finds_motos_subnets_and_security_group_and_leaves_unknown_ids_out() {
    let m = moto();
    let ec2 = moto::ec2_client(&m.endpoint, REGION);
    let unknown = "subnet-0123456789abcdef0".to_string();
    let mut ids: Vec<String> = m.subnets.iter().map(|s| s.0.clone()).collect();
    ids.push(unknown.clone());
    let found = ec2.describe_subnets(&ids).await.expect("DescribeSubnets");
    assert_eq!(found.len(), m.subnets.len(), "every one of moto's, not the unknown one: {found:?}");
    for (id, zone) in &m.subnets {
        let s = found.iter().find(|s| &s.id == id).unwrap_or_else(|| panic!("{id} in {found:?}"));
        assert_eq!(&s.availability_zone, zone);
    }
    let vpcs: std::collections::BTreeSet<&str> = found.iter().map(|s| s.vpc_id.as_str()).collect();
    assert_eq!(vpcs.len(), 1, "moto's default VPC: {vpcs:?}");
    assert!(ec2.describe_subnets(std::slice::from_ref(&unknown)).await.unwrap().is_empty());
    let groups = ec2
        .describe_security_groups(&[m.security_group.clone(), "sg-0123456789abcdef0".into()])
        .await
        .expect("DescribeSecurityGroups");
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        (groups[0].id.as_str(), groups[0].vpc_id.as_str()),
        (m.security_group.as_str(), found[0].vpc_id.as_str())
    );
}

#[tokio::test]
async fn with_the_ec2_check_a_claim_binds_and_an_unknown_subnet_creates_nothing() {
    let m = moto();
    let network: Arc<dyn NetworkApi> = Arc::new(moto::ec2_client(&m.endpoint, REGION));
    let (p, api) = provisioner(&m);
    let p = p.with_network(network);
    p.provision(&request(&unique("pvc"), "efs.aws.skpr.io/generalPurpose", &[])).await.expect("provisioned");
    api.reset();
    let subnets = format!("{},subnet-0123456789abcdef0", m.subnets[0].0);
    let req = request(&unique("pvc"), "efs.aws.skpr.io/generalPurpose", &[("subnets", subnets.as_str())]);
    match p.provision(&req).await {
        Err(ProvisionError::Infeasible(c)) => {
            assert!(c.chain().contains("subnet-0123456789abcdef0 do not exist"), "{c:#}")
        }
        other => panic!("expected Infeasible, got {other:?}"),
    }
    assert_eq!(api.counts().get(&Operation::CreateFileSystem), None, "nothing created");
}

#[tokio::test]
async fn one_zone_backup_and_custom_tags_reach_efs_through_the_sdk() {
    let m = moto();
    let network: Arc<dyn NetworkApi> = Arc::new(moto::ec2_client(&m.endpoint, REGION));
    let (p, api) = provisioner(&m);
    let p = p.with_network(network);
    let (subnet, zone) = m.subnets[1].clone();
    let params = [("availabilityZoneName", zone.as_str()), ("backup", "true"), ("tags", "team=storage")];
    let v =
        p.provision(&request(&unique("pvc"), "efs.aws.skpr.io/generalPurpose", &params)).await.expect("provisioned");
    let fs_id = v.annotations[FILE_SYSTEM_ID].clone();
    let d = api.inner().describe_file_systems().file_system_id(&fs_id).send().await.unwrap();
    let d = &d.file_systems.unwrap()[0];
    assert_eq!(d.availability_zone_name.as_deref(), Some(zone.as_str()));
    assert!(d.tags.iter().any(|t| t.key == "team" && t.value == "storage"), "{:?}", d.tags);
    let mts = EfsApi::describe_mount_targets(api.inner(), &fs_id).await.unwrap();
    assert_eq!(mts.iter().map(|m| m.subnet_id.as_str()).collect::<Vec<_>>(), [subnet.as_str()]);
    let backup = api.inner().describe_backup_policy().file_system_id(&fs_id).send().await.unwrap();
    assert_eq!(backup.backup_policy.map(|b| b.status.as_str().to_string()).as_deref(), Some("ENABLED"));
}

/// The binary's wiring (`cli::build` from the seed's variables): EFS at
/// `AWS_ENDPOINT_URL_EFS`, EC2 at the same endpoint (no `AWS_ENDPOINT_URL_EC2`),
/// `PROVISIONER_TAGS` on what it creates, and an unknown subnet refused by the
/// EC2 check before anything exists.
#[test]
fn the_binarys_wiring_checks_subnets_with_ec2_on_the_efs_endpoint() {
    let m = moto();
    let subnets = m.subnets.iter().map(|s| s.0.as_str()).collect::<Vec<_>>().join(",");
    let env = [
        ("AWS_ENDPOINT_URL_EFS", m.endpoint.as_str()),
        ("AWS_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_SUBNETS", subnets.as_str()),
        ("AWS_SECURITY_GROUP", m.security_group.as_str()),
        ("PROVISIONER_CLUSTER_ID", "moto-tests"),
        ("PROVISIONER_TAGS", "team=storage"),
    ];
    provisioner_core::cli::in_child_process(
        "the_binarys_wiring_checks_subnets_with_ec2_on_the_efs_endpoint",
        &env,
        || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                use efs_provisioner::cli::{Args, SEED_NAMES, build, install_crypto_provider, renamed_variables};
                install_crypto_provider();
                let (args, _) =
                    provisioner_core::cli::try_parse_from::<Args, _, _>(["efs-provisioner"], &renamed_variables())
                        .unwrap();
                let (p, limiter) = build(&args.efs, &args.deadlines, &args.tagging).await.expect("built");
                let v = p.provision(&request(&unique("pvc"), SEED_NAMES[0], &[])).await.expect("provisioned");
                let fs_id = v.annotations[FILE_SYSTEM_ID].clone();
                let fs = moto::client(&m.endpoint, REGION)
                    .describe_file_system(&FileSystemLookup::Id(fs_id))
                    .await
                    .unwrap()
                    .expect("exists");
                assert_eq!(fs.tags.get("team").map(String::as_str), Some("storage"));
                let bad = request(&unique("pvc"), SEED_NAMES[0], &[("subnets", "subnet-0123456789abcdef0")]);
                match p.provision(&bad).await {
                    Err(ProvisionError::Infeasible(c)) => assert!(c.chain().contains("do not exist"), "{c:#}"),
                    other => panic!("expected Infeasible, got {other:?}"),
                }
                assert_eq!(limiter.throttled(), 0);
            });
        },
    );
}
