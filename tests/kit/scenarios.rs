//! The shared scenario suite (`e2e_support::scenarios`) against the testing
//! kit's `FakeCluster`, under paused Tokio time; `tests/e2e/scenarios.rs`
//! runs the same suite against the real control plane.

use e2e_support::scenarios::{self, Plane};
use provisioner_core::testing::FakeCluster;

fn kit() -> (FakeCluster, Plane) {
    let cluster = FakeCluster::with_binder();
    let engines = cluster.clone();
    let plane = Plane::new(cluster.client(), "scenario", "kit", move || engines.client());
    (cluster, plane)
}

#[tokio::test(start_paused = true)]
async fn immediate_bind() {
    let (_cluster, plane) = kit();
    scenarios::immediate_bind(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn wait_for_first_consumer() {
    let (_cluster, plane) = kit();
    scenarios::wait_for_first_consumer(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn released_and_deleted() {
    let (_cluster, plane) = kit();
    scenarios::released_and_deleted(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn released_and_retained() {
    let (_cluster, plane) = kit();
    scenarios::released_and_retained(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn failing_then_succeeding() {
    let (_cluster, plane) = kit();
    scenarios::failing_then_succeeding(&plane).await;
}
