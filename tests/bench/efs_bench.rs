//! `efs-bench`: EFS API calls per provisioned volume, by call type, and
//! volumes per second, against moto on loopback (AWS_ENDPOINT_URL_EFS).
//!
//! It drives the provisioner layer (`EfsProvisioner::provision` / `delete`
//! over the real SDK client), not the Kubernetes engine, so the figures are
//! EFS's alone. Volumes are provisioned CONCURRENCY at a time; the adaptive
//! limiter is set high (EFS_BENCH_RATE, default 1000 requests/s) so that moto,
//! not the limiter, is measured. Usage: `cargo run -p provisioner-e2e --bin efs-bench [claims]`.
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use efs_provisioner::api::{CountingApi, Operation};
use efs_provisioner::limiter::{AdaptiveLimiter, LimitedApi, LimiterConfig};
use efs_provisioner::{Defaults, EfsProvisioner, moto};
use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::ObjectMeta;
use provisioner_core::testing::fixtures::{claim, class};
use provisioner_core::{ProvisionRequest, Provisioner};

const REGION: &str = "us-east-1";
const CONCURRENCY: usize = 16;

type Api = LimitedApi<Arc<CountingApi<aws_sdk_efs::Client>>>;

fn request(pv: &str, params: &[(&str, String)]) -> ProvisionRequest {
    let mut k = class("general", "efs.aws.skpr.io/generalPurpose").build();
    k.parameters = (!params.is_empty()).then(|| params.iter().map(|(a, b)| (a.to_string(), b.clone())).collect());
    ProvisionRequest::new(
        pv,
        Arc::new(claim("bench", pv).as_stored(pv).access_modes(&["ReadWriteMany"]).build()),
        Arc::new(k),
    )
}

fn print(title: &str, counts: &BTreeMap<Operation, u64>, volumes: usize, secs: f64) {
    println!("{title}: {volumes} volumes in {secs:.2} s = {:.1} volumes/s", volumes as f64 / secs);
    let total: u64 = counts.values().sum();
    for (op, n) in counts {
        println!("  {:<28} {:>6}  {:.2} per volume", op.name(), n, *n as f64 / volumes as f64);
    }
    println!("  {:<28} {:>6}  {:.2} per volume", "total", total, total as f64 / volumes as f64);
}

async fn run(
    p: &Arc<EfsProvisioner<Api>>,
    counting: &CountingApi<aws_sdk_efs::Client>,
    reqs: Vec<ProvisionRequest>,
    title: &str,
) -> Vec<PersistentVolume> {
    counting.reset();
    let n = reqs.len();
    let start = Instant::now();
    let volumes: Vec<PersistentVolume> = futures::stream::iter(reqs)
        .map(|r| {
            let p = p.clone();
            async move {
                let v = p.provision(&r).await.unwrap_or_else(|e| panic!("{}: {e}", r.pv_name));
                PersistentVolume {
                    metadata: ObjectMeta {
                        name: Some(r.pv_name.clone()),
                        annotations: Some(v.annotations),
                        ..Default::default()
                    },
                    spec: Some(v.spec),
                    ..Default::default()
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    print(&format!("{title} provision"), &counting.counts(), n, start.elapsed().as_secs_f64());
    counting.reset();
    let start = Instant::now();
    futures::stream::iter(volumes.clone())
        .map(|v| {
            let p = p.clone();
            async move {
                // Mount targets take one more round to go in AWS; moto drops them at once.
                while let Err(e) = p.delete(&v).await {
                    assert!(matches!(e, provisioner_core::DeleteError::InUse(_)), "{e}");
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .for_each(|_| async {})
        .await;
    print(&format!("{title} delete"), &counting.counts(), n, start.elapsed().as_secs_f64());
    volumes
}

#[tokio::main]
async fn main() {
    let claims: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let rate: f64 = std::env::var("EFS_BENCH_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(1000.0);
    let endpoint = moto::endpoint_from_env().unwrap_or_else(|e| panic!("{e}"));
    let subnets = moto::default_subnets(&endpoint, REGION).expect("moto subnets");
    let sg = moto::default_security_group(&endpoint, REGION).expect("moto security group");
    let counting = Arc::new(CountingApi::new(moto::client(&endpoint, REGION)));
    let limiter =
        Arc::new(AdaptiveLimiter::new(LimiterConfig { max_rate: rate, burst: rate as u32, ..Default::default() }));
    let defaults = Defaults {
        region: REGION.into(),
        subnets: subnets.iter().map(|s| s.0.clone()).collect(),
        security_groups: vec![sg],
        cluster_id: "efs-bench".into(),
        ..Defaults::default()
    };
    let p = Arc::new(EfsProvisioner::new(LimitedApi::new(counting.clone(), limiter), defaults));
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
    );
    println!(
        "moto {endpoint}, {} subnets (one mount target each), concurrency {CONCURRENCY}, limiter {rate}/s",
        subnets.len()
    );

    let reqs = (0..claims).map(|i| request(&format!("pvc-bench-{run_id}-{i}"), &[])).collect();
    run(&p, &counting, reqs, "file system per claim").await;

    // Access points on one shared file system.
    let shared = p.provision(&request(&format!("shared-{run_id}"), &[])).await.expect("shared file system");
    let fs_id = shared.annotations["efs.aws.skpr.io/file-system-id"].clone();
    let params = vec![("mode", "accessPoint".to_string()), ("fileSystemId", fs_id)];
    let reqs = (0..claims).map(|i| request(&format!("pvc-bench-ap-{run_id}-{i}"), &params)).collect();
    run(&p, &counting, reqs, "access point per claim").await;
}
