//! The shared scenario suite (`e2e_support::scenarios`) against the real
//! control plane; `tests/kit/scenarios.rs` runs the same suite against the
//! testing kit.

use e2e_support::TestEnv;
use e2e_support::scenarios::{self, Plane};

async fn real(test: &str) -> (TestEnv, Plane) {
    let env = TestEnv::new(test).await;
    let config = kube::Config::infer().await.expect("KUBECONFIG");
    let plane = Plane::new(env.client.clone(), env.namespace.clone(), env.id.clone(), move || {
        kube::Client::try_from(config.clone()).expect("client")
    });
    (env, plane)
}

/// The Go peer (`tests/peer`, the Go library v13), built if need be.
fn go_peer() -> std::path::PathBuf {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/build");
    let out = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(out.status.success(), "{} failed (is Go installed?)", script.display());
    std::path::PathBuf::from(String::from_utf8(out.stdout).expect("path").trim())
}

#[tokio::test]
async fn immediate_bind() {
    let (env, plane) = real("sc-immediate").await;
    scenarios::immediate_bind(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn wait_for_first_consumer() {
    let (env, plane) = real("sc-wffc").await;
    scenarios::wait_for_first_consumer(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn released_and_deleted() {
    let (env, plane) = real("sc-delete").await;
    scenarios::released_and_deleted(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn released_and_retained() {
    let (env, plane) = real("sc-retain").await;
    scenarios::released_and_retained(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn failing_then_succeeding() {
    let (env, plane) = real("sc-flaky").await;
    scenarios::failing_then_succeeding(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn foreign_volumes_are_never_touched() {
    let (env, plane) = real("sc-foreign").await;
    scenarios::foreign_volumes_are_never_touched(&plane).await;
    env.cleanup().await;
}

/// The other provisioner is the Go library (`tests/peer`), for real.
#[tokio::test]
async fn coexisting_with_another_provisioner() {
    let peer = tokio::task::spawn_blocking(go_peer).await.expect("build the Go peer");
    let (env, plane) = real("sc-coexist").await;
    let plane = plane.with_peer(peer);
    scenarios::coexisting_with_another_provisioner(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn bound_volume_deleted_waits_for_its_claim() {
    let (env, plane) = real("sc-pv-deleted").await;
    scenarios::bound_volume_deleted_waits_for_its_claim(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn prebound_claim_is_never_provisioned() {
    let (env, plane) = real("sc-prebound").await;
    scenarios::prebound_claim_is_never_provisioned(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn static_volumes_are_never_deleted() {
    let (env, plane) = real("sc-static").await;
    scenarios::static_volumes_are_never_deleted(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn namespace_deleted_with_bound_claims() {
    let (env, plane) = real("sc-ns-deleted").await;
    scenarios::namespace_deleted_with_bound_claims(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn retain_volumes_carry_no_finalizer() {
    let (env, plane) = real("sc-retain-fin").await;
    scenarios::retain_volumes_carry_no_finalizer(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn claims_wait_for_a_deleted_class() {
    let (env, plane) = real("sc-class-gone").await;
    scenarios::claims_wait_for_a_deleted_class(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn selector_claim_is_refused_once() {
    let (env, plane) = real("sc-selector").await;
    scenarios::selector_claim_is_refused_once(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn unsupported_data_sources_are_refused_once() {
    let (env, plane) = real("sc-sources").await;
    scenarios::unsupported_data_sources_are_refused_once(&plane).await;
    env.cleanup().await;
}

#[tokio::test]
async fn clone_claim_to_a_provisioner_supporting_clones() {
    let (env, plane) = real("sc-clones").await;
    scenarios::clone_claim_to_a_provisioner_supporting_clones(&plane).await;
    env.cleanup().await;
}
