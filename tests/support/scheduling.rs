//! Nodes and pods for the real kube-scheduler of the test plane.
//!
//! There is no kubelet: a Node is an object the test creates and marks
//! Ready with allocatable resources (what a kubelet reports), and a pod is
//! scheduled and bound to a node but never runs. That is all the scheduler
//! needs to drive `WaitForFirstConsumer` claims as in a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, PersistentVolumeClaimVolumeSource, Pod, PodSpec, ResourceRequirements, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use serde_json::json;

use crate::TestEnv;

/// Creates Node `name` with the `kubernetes.io/hostname` label `hostname`
/// and this test's label, then reports it Ready with `cpu` allocatable
/// CPUs, 64 GiB of memory and room for 110 pods, as a kubelet would.
pub async fn schedulable_node(env: &TestEnv, name: &str, hostname: &str, cpu: &str) -> Node {
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("kubernetes.io/hostname".to_string(), hostname.to_string())])),
            ..Default::default()
        },
        ..Default::default()
    };
    env.create(&env.cluster_api::<Node>(), node).await;
    let resources = json!({ "cpu": cpu, "memory": "64Gi", "pods": "110" });
    let status = json!({ "status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "reported by the test", "lastHeartbeatTime": now(), "lastTransitionTime": now(),
        }],
    }});
    let nodes = env.cluster_api::<Node>();
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("reporting node {name} Ready: {e}"));
    // The API server gives a new Node the `node.kubernetes.io/not-ready`
    // taint; the node lifecycle controller lifts it once the node is Ready.
    // This plane does not run that controller (it would mark every node
    // without a kubelet unreachable): lift it as it would.
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": { "taints": null } })))
        .await
        .unwrap_or_else(|e| panic!("lifting the not-ready taint of node {name}: {e}"))
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Creates pod `name` that mounts claim `claim` and asks for one CPU, with a
/// node selector on this test's label, so that only this test's nodes can
/// take it.
pub async fn pod_using(env: &TestEnv, name: &str, claim: &str) -> Pod {
    pod_selecting(env, name, claim, env.labels()).await
}

/// Creates pod `name` that mounts claim `claim`, asks for one CPU, and may
/// go only to nodes with these labels.
pub async fn pod_selecting(env: &TestEnv, name: &str, claim: &str, node_selector: BTreeMap<String, String>) -> Pod {
    let pod = Pod {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(PodSpec {
            node_selector: Some(node_selector),
            containers: vec![Container {
                name: "app".into(),
                image: Some("registry.invalid/app:never-pulled".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([("cpu".to_string(), Quantity("1".into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    env.create(&env.api::<Pod>(), pod).await
}

/// Waits until the scheduler has bound pod `name` to a node, and returns the node's name.
pub async fn scheduled_node(env: &TestEnv, name: &str) -> String {
    let pod = env
        .wait_for(&env.api::<Pod>(), name, "the scheduler to bind the pod to a node", |p| {
            p.and_then(|p| p.spec.as_ref()).and_then(|s| s.node_name.as_ref()).is_some()
        })
        .await
        .expect("pod exists");
    pod.spec.and_then(|s| s.node_name).expect("node name")
}

/// Deletes pod `name` at once (no kubelet would confirm a graceful stop).
pub async fn delete_pod(env: &TestEnv, name: &str) {
    let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    env.api::<Pod>().delete(name, &now).await.unwrap_or_else(|e| panic!("deleting pod {name}: {e}"));
    env.wait_for(&env.api::<Pod>(), name, "the pod to be gone", |p| p.is_none()).await;
}
