//! The shared scenario suite (`e2e_support::scenarios`) against the testing
//! kit's `FakeCluster`, under paused Tokio time; `tests/e2e/scenarios.rs`
//! runs the same suite against the real control plane.

use std::time::Duration;

use e2e_support::scenarios::{self, Plane};
use provisioner_core::testing::FakeCluster;

fn kit() -> (FakeCluster, Plane) {
    let cluster = FakeCluster::with_binder();
    let engines = cluster.clone();
    // Paused time: a quiet period of minutes passes at once, with every
    // retry the engine would make in it.
    let plane = Plane::new(cluster.client(), "scenario", "kit", move || engines.client())
        .quiet_period(Duration::from_secs(300));
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

#[tokio::test(start_paused = true)]
async fn foreign_volumes_are_never_touched() {
    let (_cluster, plane) = kit();
    scenarios::foreign_volumes_are_never_touched(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn coexisting_with_another_provisioner() {
    let (_cluster, plane) = kit();
    scenarios::coexisting_with_another_provisioner(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn bound_volume_deleted_waits_for_its_claim() {
    let (_cluster, plane) = kit();
    scenarios::bound_volume_deleted_waits_for_its_claim(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn prebound_claim_is_never_provisioned() {
    let (_cluster, plane) = kit();
    scenarios::prebound_claim_is_never_provisioned(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn static_volumes_are_never_deleted() {
    let (_cluster, plane) = kit();
    scenarios::static_volumes_are_never_deleted(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn namespace_deleted_with_bound_claims() {
    let (_cluster, plane) = kit();
    scenarios::namespace_deleted_with_bound_claims(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn retain_volumes_carry_no_finalizer() {
    let (_cluster, plane) = kit();
    scenarios::retain_volumes_carry_no_finalizer(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn claims_wait_for_a_deleted_class() {
    let (_cluster, plane) = kit();
    scenarios::claims_wait_for_a_deleted_class(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn selector_claim_is_refused_once() {
    let (_cluster, plane) = kit();
    scenarios::selector_claim_is_refused_once(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn unsupported_data_sources_are_refused_once() {
    let (_cluster, plane) = kit();
    scenarios::unsupported_data_sources_are_refused_once(&plane).await;
}

#[tokio::test(start_paused = true)]
async fn clone_claim_to_a_provisioner_supporting_clones() {
    let (_cluster, plane) = kit();
    scenarios::clone_claim_to_a_provisioner_supporting_clones(&plane).await;
}
