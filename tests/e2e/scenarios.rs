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
