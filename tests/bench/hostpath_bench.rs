//! Provisions 1,000 claims on one node with the hostpath provisioner against
//! the real control plane and prints volumes per second and latency
//! percentiles, from the binder's `storage-provisioner` annotation on a claim
//! to its PersistentVolume being seen by a watch.
//!
//! ```sh
//! KUBECONFIG=... cargo run --release -p provisioner-e2e --bin hostpath-bench [-- <claims>]
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_support::TestEnv;
use e2e_support::engine::{provisioner_name, start};
use e2e_support::fixtures::{claim, storage_class};
use futures::{StreamExt, TryStreamExt};
use hostpath_provisioner::provisioner::HOSTNAME_LABEL;
use hostpath_provisioner::{HostPathProvisioner, NodeIdentity, Settings, SharedSettings};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::ObjectMeta;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use provisioner_core::{DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner, keys};

/// The hostpath provisioner, timing its own `provision()` calls (the
/// directory work), to set beside the end-to-end latency.
struct Timed {
    inner: HostPathProvisioner,
    calls: Mutex<Vec<Duration>>,
}

#[async_trait::async_trait]
impl Provisioner for Timed {
    async fn provision(&self, request: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        let started = Instant::now();
        let result = self.inner.provision(request).await;
        self.calls.lock().expect("lock").push(started.elapsed());
        result
    }
    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
        self.inner.delete(volume).await
    }
    fn should_provision(&self, claim: &PersistentVolumeClaim, class: &StorageClass) -> bool {
        self.inner.should_provision(claim, class)
    }
    fn should_delete(&self, volume: &PersistentVolume) -> bool {
        self.inner.should_delete(volume)
    }
}

#[derive(Default)]
struct Times {
    annotated: HashMap<String, Instant>,
    volume_seen: HashMap<String, Instant>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let env = TestEnv::new("hostpath-bench").await;
    let base = tempfile::tempdir().expect("tempdir");
    let node_name = env.name("bench-node");
    let node = Node {
        metadata: ObjectMeta {
            name: Some(node_name.clone()),
            labels: Some([(HOSTNAME_LABEL.to_string(), node_name.clone())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    env.create(&env.cluster_api(), node).await;
    let class = env.name("bench");
    let mut k = storage_class(&class, &provisioner_name(&env));
    k.volume_binding_mode = Some("WaitForFirstConsumer".into());
    env.create(&env.cluster_api(), k).await;

    let settings =
        Settings::from_values(&[base.path().display().to_string()], None, "0770", None, None, "local", "delete")
            .expect("settings");
    let provisioner = HostPathProvisioner::new(
        NodeIdentity { name: node_name.clone(), hostname: node_name.clone() },
        SharedSettings::new(settings),
    );
    let timed = Arc::new(Timed { inner: provisioner, calls: Mutex::new(Vec::new()) });
    let engine = start(&env, &provisioner_name(&env), timed.clone(), |b| b.workers(100)).await;

    let times = Arc::new(Mutex::new(Times::default()));
    let claims: Api<PersistentVolumeClaim> = env.api();
    let t = times.clone();
    let claim_watch = tokio::spawn(watcher(claims.clone(), watcher::Config::default()).try_for_each(move |ev| {
        if let watcher::Event::Apply(c) | watcher::Event::InitApply(c) = ev
            && c.annotations().contains_key(keys::STORAGE_PROVISIONER)
        {
            t.lock().expect("lock").annotated.entry(c.name_any()).or_insert_with(Instant::now);
        }
        futures::future::ready(Ok(()))
    }));
    let ns = env.namespace.clone();
    let t = times.clone();
    let volumes: Api<PersistentVolume> = env.cluster_api();
    let volume_watch = tokio::spawn(watcher(volumes, watcher::Config::default()).try_for_each(move |ev| {
        if let watcher::Event::Apply(v) | watcher::Event::InitApply(v) = ev {
            let r = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
            if let Some(r) = r.filter(|r| r.namespace.as_deref() == Some(ns.as_str())) {
                let name = r.name.clone().unwrap_or_default();
                t.lock().expect("lock").volume_seen.entry(name).or_insert_with(Instant::now);
            }
        }
        futures::future::ready(Ok(()))
    }));

    eprintln!("creating {count} claims in {} on node {node_name}", env.namespace);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(50, |i| {
            let env = &env;
            let (class, node_name) = (&class, &node_name);
            async move {
                let mut c = claim(&format!("claim-{i:04}"), class, "1Mi");
                c.metadata.annotations = Some([(keys::SELECTED_NODE.to_string(), node_name.clone())].into());
                env.create(&env.api(), c).await;
            }
        })
        .await;
    let created = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let seen = times.lock().expect("lock").volume_seen.len();
        if seen >= count {
            break;
        }
        assert!(Instant::now() < deadline, "only {seen} of {count} volumes after 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = started.elapsed();
    claim_watch.abort();
    volume_watch.abort();

    let t = std::mem::take(&mut *times.lock().expect("lock"));
    let mut latencies: Vec<Duration> = t
        .volume_seen
        .iter()
        .filter_map(|(name, seen)| t.annotated.get(name).map(|a| seen.saturating_duration_since(*a)))
        .collect();
    latencies.sort();
    let first_annotation = t.annotated.values().min().copied().unwrap_or(started);
    let last_volume = t.volume_seen.values().max().copied().unwrap_or(started);
    let window = last_volume.saturating_duration_since(first_annotation);
    let dirs = std::fs::read_dir(base.path()).expect("base dir").count();
    println!("hostpath-bench: {count} claims on one node, {dirs} directories made");
    println!("  claims created in         {:.2} s", created.as_secs_f64());
    println!("  all volumes seen after    {:.2} s (from the first create)", total.as_secs_f64());
    println!(
        "  throughput                {:.1} volumes/s (first annotation to last PV)",
        count as f64 / window.as_secs_f64()
    );
    println!(
        "  latency annotation -> PV  p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples)",
        percentile(&latencies, 50.0).as_secs_f64() * 1000.0,
        percentile(&latencies, 90.0).as_secs_f64() * 1000.0,
        percentile(&latencies, 99.0).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        latencies.len()
    );
    let mut calls = timed.calls.lock().expect("lock").clone();
    calls.sort();
    let busy: Duration = calls.iter().sum();
    println!(
        "  provision() calls         {} (directory work: p50 {:.2} ms, p99 {:.2} ms, {:.2} s in total)",
        calls.len(),
        percentile(&calls, 50.0).as_secs_f64() * 1000.0,
        percentile(&calls, 99.0).as_secs_f64() * 1000.0,
        busy.as_secs_f64()
    );
    println!("  volumes saved             {}", engine.metrics.provisioned(&class));
    engine.stop().await.expect("clean shutdown");
    env.cleanup().await;
}
