//! Lease-based leader election against the real API server: one leader among
//! two electors, immediate failover when the leader releases the lease on
//! shutdown, and failover only after expiry when the leader vanishes without
//! releasing it.
//!
//! The timing is shortened (lease 6 s, renew deadline 4 s, retry 1 s) to keep
//! the tests short; the guarantees do not depend on the values.

use std::time::Duration;

use e2e_support::TestEnv;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::DeleteParams;
use provisioner_core::leader::{LeaderElectionConfig, LeaderElector};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const LEASE_DURATION: Duration = Duration::from_secs(6);
const RENEW_DEADLINE: Duration = Duration::from_secs(4);
const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// How long a first leader may take to appear on an idle plane.
const FIRST_LEADER_WITHIN: Duration = Duration::from_secs(10);

/// One elector, as a replica of the provisioner would run it.
struct Replica {
    identity: String,
    leading: watch::Receiver<bool>,
    task: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Replica {
    fn start(env: &TestEnv, lease: &str, identity: &str) -> Replica {
        let mut config = LeaderElectionConfig::new(lease, env.namespace.clone(), identity);
        config.lease_duration = LEASE_DURATION;
        config.renew_deadline = RENEW_DEADLINE;
        config.retry_period = RETRY_PERIOD;
        let elector = LeaderElector::new(env.client.clone(), config).expect("valid config");
        let shutdown = CancellationToken::new();
        let (leading, task) = elector.spawn(shutdown.clone());
        Replica { identity: identity.to_string(), leading, task, shutdown }
    }

    fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Waits (on the watch channel) until this replica leads; false on timeout.
    async fn becomes_leader_within(&mut self, within: Duration) -> bool {
        matches!(timeout(within, self.leading.wait_for(|leading| *leading)).await, Ok(Ok(_)))
    }

    /// Cancels the token and waits for the task: it publishes false and releases the lease.
    async fn shut_down(self) {
        self.shutdown.cancel();
        self.task.await.expect("election task ends cleanly");
        assert!(!*self.leading.borrow(), "{} still publishes leading after shutdown", self.identity);
    }
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    let lease = leases.get(name).await.expect("lease exists");
    lease.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty())
}

async fn delete_lease(leases: &Api<Lease>, name: &str) {
    // This plane runs no namespace controller, so objects in a deleted namespace would linger.
    let _ = leases.delete(name, &DeleteParams::default()).await;
}

#[tokio::test]
async fn two_electors_elect_exactly_one_leader() {
    let env = TestEnv::new("leader-two-electors").await;
    let leases = env.api::<Lease>();
    let lease = "two-electors";
    let mut a = Replica::start(&env, lease, "replica-a");
    let mut b = Replica::start(&env, lease, "replica-b");

    let a_first = timeout(FIRST_LEADER_WITHIN, async {
        tokio::select! {
            r = a.leading.wait_for(|l| *l) => { r.expect("a's channel open"); true }
            r = b.leading.wait_for(|l| *l) => { r.expect("b's channel open"); false }
        }
    })
    .await
    .expect("a leader within 10 s");
    let (leader, mut follower) = if a_first { (a, b) } else { (b, a) };
    assert!(leader.is_leading());
    assert!(!follower.is_leading(), "both {} and {} lead", leader.identity, follower.identity);
    assert_eq!(holder(&leases, lease).await.as_deref(), Some(leader.identity.as_str()));

    // For several retry periods the follower keeps trying and keeps failing, and the leader keeps renewing.
    let watch_for = RETRY_PERIOD * 4;
    assert!(!follower.becomes_leader_within(watch_for).await, "{} took over from a live leader", follower.identity);
    assert!(leader.is_leading());
    assert!(!leader.leading.has_changed().expect("leader's channel open"), "leadership flickered");
    let spec = leases.get(lease).await.expect("lease exists").spec.expect("lease has a spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(leader.identity.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(6));
    assert_eq!(spec.lease_transitions, Some(0), "nobody else ever held it");

    follower.shut_down().await;
    leader.shut_down().await;
    delete_lease(&leases, lease).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_shut_down_leader_releases_and_the_follower_takes_over_at_once() {
    let env = TestEnv::new("leader-release-on-shutdown").await;
    let leases = env.api::<Lease>();
    let lease = "release-on-shutdown";
    let mut a = Replica::start(&env, lease, "replica-a");
    assert!(a.becomes_leader_within(FIRST_LEADER_WITHIN).await, "a leads");
    let mut b = Replica::start(&env, lease, "replica-b");
    // Let b settle into following: wait (on a watch) for a renewal made after b started.
    let b_started = Timestamp::now();
    env.wait_for(&leases, lease, "a renewal after b started", |l| {
        l.and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0 > b_started)).unwrap_or(false)
    })
    .await;
    assert!(!b.is_leading());

    let shutdown_at = Instant::now();
    a.shut_down().await;
    let released_after = shutdown_at.elapsed();
    assert!(b.becomes_leader_within(LEASE_DURATION).await, "b did not take over within the lease duration");
    let takeover = shutdown_at.elapsed();
    println!("released in {released_after:?}; b took over {takeover:?} after a was told to shut down");
    assert!(takeover < Duration::from_secs(5), "takeover took {takeover:?}; a release should make it immediate");

    let spec = leases.get(lease).await.expect("lease exists").spec.expect("lease has a spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1), "one hand-over: a to b");

    b.shut_down().await;
    assert_eq!(holder(&leases, lease).await, None, "b released the lease too");
    delete_lease(&leases, lease).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_only_after_the_lease_expires() {
    let env = TestEnv::new("leader-crash").await;
    let leases = env.api::<Lease>();
    let lease = "crash";
    let mut a = Replica::start(&env, lease, "replica-a");
    assert!(a.becomes_leader_within(FIRST_LEADER_WITHIN).await, "a leads");
    let mut b = Replica::start(&env, lease, "replica-b");
    let b_started = Timestamp::now();
    env.wait_for(&leases, lease, "a renewal after b started", |l| {
        l.and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0 > b_started)).unwrap_or(false)
    })
    .await;

    // A crash: the task is gone without releasing anything.
    let crashed_at = Instant::now();
    a.task.abort();
    assert!(a.task.await.expect_err("aborted").is_cancelled());
    assert!(!*a.leading.borrow(), "an aborted elector still publishes false");
    // Any renewal still in flight can only be later than this one, which keeps the lower bound below sound.
    let spec = leases.get(lease).await.expect("lease exists").spec.expect("lease has a spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"), "the crashed leader did not release");
    let last_renew = spec.renew_time.expect("renewTime is set").0;

    let patience = LEASE_DURATION + RETRY_PERIOD * 5;
    assert!(b.becomes_leader_within(patience).await, "b did not take over within {patience:?}");
    let taken_at = Timestamp::now();
    let after_crash = crashed_at.elapsed();
    let after_renew = Duration::try_from(taken_at.duration_since(last_renew)).expect("takeover after the last renewal");
    println!("b took over {after_renew:?} after a's last renewal ({after_crash:?} after the crash)");
    assert!(
        after_renew >= LEASE_DURATION,
        "b took over {after_renew:?} after a's last renewal, before the lease duration {LEASE_DURATION:?}"
    );
    assert!(
        after_renew < LEASE_DURATION + RETRY_PERIOD * 3,
        "b took {after_renew:?} after a's last renewal; expected under the lease duration plus three retry periods"
    );
    assert_eq!(holder(&leases, lease).await.as_deref(), Some("replica-b"));

    b.shut_down().await;
    delete_lease(&leases, lease).await;
    env.cleanup().await;
}
