//! The EFS provisioner end to end: the real control plane, moto on loopback
//! as EFS, and the engine configured as in the seed's Deployment (its
//! environment variables, its two provisioner names served by one process).
//! Needs KUBECONFIG (tests/controlplane/up) and AWS_ENDPOINT_URL_EFS (tests/moto/up).
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::sync::Arc;

use e2e_support::TestEnv;
use e2e_support::engine::start;
use e2e_support::fixtures::claim_phase;
use efs_provisioner::api::{EfsApi, FileSystemLookup};
use efs_provisioner::cli::{EfsArgs, SEED_NAMES};
use efs_provisioner::limiter::{AdaptiveLimiter, LimitedApi};
use efs_provisioner::{EfsProvisioner, moto};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};

/// The seed's region: moto has a default VPC in every region.
const REGION: &str = "ap-southeast-2";

fn seed_class(name: &str, provisioner: &str) -> StorageClass {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": { "name": name },
        "provisioner": provisioner,
    }))
    .expect("class")
}

fn seed_claim(name: &str, class: &str) -> PersistentVolumeClaim {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": name, "annotations": { "volume.beta.kubernetes.io/storage-class": class } },
        "spec": { "accessModes": ["ReadWriteMany"], "resources": { "requests": { "storage": "1Mi" } } },
    }))
    .expect("claim")
}

fn kubectl() -> String {
    if let Ok(k) = std::env::var("KUBECTL") {
        return k;
    }
    let build = concat!(env!("CARGO_MANIFEST_DIR"), "/controlplane/build");
    let out = std::process::Command::new(build).output().expect("tests/controlplane/build runs");
    format!("{}/kubectl", String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test]
async fn seed_claims_bind_show_8e_rwx_and_their_file_systems_go_with_them() {
    efs_provisioner::cli::install_crypto_provider();
    let endpoint = moto::endpoint_from_env().unwrap_or_else(|e| panic!("{e}"));
    let env = TestEnv::new("efs-seed").await;
    let subnets = moto::default_subnets(&endpoint, REGION).expect("moto subnets");
    let sg = moto::default_security_group(&endpoint, REGION).expect("moto security group");

    // The seed's Deployment environment, as the binary's flags read it.
    let args = EfsArgs {
        provisioner_names: SEED_NAMES.map(String::from).to_vec(),
        efs_performance: "generalPurpose".into(),
        region: Some(REGION.into()),
        security_group: sg,
        subnets: subnets.iter().map(|s| s.0.as_str()).collect::<Vec<_>>().join(","),
        endpoint_url: Some(endpoint.clone()),
        cluster_id: env.id.clone(),
        efs_api_rate: 10.0,
    };
    let efs = moto::client(&endpoint, REGION);
    let limiter = Arc::new(AdaptiveLimiter::new(args.limiter()));
    let provisioner =
        Arc::new(EfsProvisioner::new(LimitedApi::new(efs.clone(), limiter), args.defaults(REGION).expect("defaults")));

    // The seed's classes (suffixed: class names are cluster-wide and tests may run side by side).
    let general = env.name("general");
    let fast = env.name("fast");
    env.create(&env.cluster_api(), seed_class(&general, SEED_NAMES[0])).await;
    env.create(&env.cluster_api(), seed_class(&fast, SEED_NAMES[1])).await;
    let engine = start(&env, SEED_NAMES[0], provisioner, |b| b.additional_names([SEED_NAMES[1].to_string()])).await;

    let claims = env.api::<PersistentVolumeClaim>();
    let files = env.create(&claims, seed_claim("files", &general)).await;
    let files_fast = env.create(&claims, seed_claim("files-fast", &fast)).await;
    for name in ["files", "files-fast"] {
        env.wait_for(&claims, name, "the claim to be Bound", |c| c.is_some_and(|c| claim_phase(c) == "Bound")).await;
    }

    let out = std::process::Command::new(kubectl())
        .args(["-n", &env.namespace, "get", "pvc"])
        .output()
        .expect("kubectl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{text}");
    assert!(out.status.success(), "kubectl failed: {}", String::from_utf8_lossy(&out.stderr));
    for (claim, class) in [("files ", &general), ("files-fast ", &fast)] {
        let line = text.lines().find(|l| l.starts_with(claim)).unwrap_or_else(|| panic!("{claim} in {text}"));
        for want in ["Bound", "8E", "RWX", class.as_str()] {
            assert!(line.split_whitespace().any(|w| w.starts_with(want)), "{want} in {line:?}");
        }
    }

    // One file system per claim, with the performance mode of its provisioner name.
    let mut file_systems = Vec::new();
    for (c, mode) in [(&files, "generalPurpose"), (&files_fast, "maxIO")] {
        let token = format!("pvc-{}", c.uid().expect("uid"));
        let fs = efs.describe_file_system(&FileSystemLookup::CreationToken(token)).await.unwrap().expect("fs");
        assert_eq!(fs.performance_mode, mode);
        let pv = env.cluster_api::<PersistentVolume>().get(&format!("pvc-{}", c.uid().unwrap())).await.unwrap();
        let nfs = pv.spec.unwrap().nfs.expect("nfs source");
        assert_eq!(nfs.server, format!("{}.efs.{REGION}.amazonaws.com", fs.id));
        file_systems.push(fs.id);
    }

    // Deleting the claims removes the volumes and the file systems.
    for name in ["files", "files-fast"] {
        claims.delete(name, &DeleteParams::default()).await.expect("delete claim");
    }
    let volumes: Api<PersistentVolume> = env.cluster_api();
    for c in [&files, &files_fast] {
        let pv = format!("pvc-{}", c.uid().unwrap());
        env.wait_for(&volumes, &pv, "the volume to be deleted", |v| v.is_none()).await;
    }
    for id in file_systems {
        assert_eq!(efs.describe_file_system(&FileSystemLookup::Id(id.clone())).await.unwrap(), None, "{id} deleted");
    }
    engine.stop().await.expect("engine stopped cleanly");
    env.cleanup().await;
}
