//! Lease-based leader election: several replicas may run, exactly one acts.
//!
//! The replicas share a `coordination.k8s.io/v1` [`Lease`]. The holder renews
//! it every retry period; the others read it every retry period and take it
//! over once it has expired or been released. All writes are replacements
//! carrying the lease's `resourceVersion`, so of two replicas racing for the
//! same lease the API server lets exactly one win (the other gets a 409).
//!
//! # Why two replicas never act at once
//!
//! * A follower judges expiry by its **own** monotonic clock: a lease expires
//!   `leaseDurationSeconds` after the follower *observed* the lease record
//!   last change. Remote timestamps (`renewTime`) are written for humans and
//!   never trusted, so clock skew between nodes does not matter.
//! * The holder counts its leadership from the moment it *started* its last
//!   successful renewal and gives it up (publishes `false`) when the renew
//!   deadline has passed without another success. The write was committed
//!   after that start, and a follower observed it even later, so with
//!   `renew_deadline < lease_duration` the holder has stopped acting before
//!   any follower can consider the lease expired.
//! * On shutdown the holder first publishes `false`, then releases the lease
//!   (clears `holderIdentity`), so a follower takes over at its next retry
//!   instead of waiting out the lease duration.
//!
//! # Example
//!
//! ```no_run
//! use provisioner_core::leader::{LeaderElectionConfig, LeaderElector, lease_name_for};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let config = LeaderElectionConfig::new(lease_name_for("example.com/nfs"), "kube-system", "pod-a");
//! let shutdown = CancellationToken::new();
//! let (mut leading, task) = LeaderElector::new(client, config)?.spawn(shutdown.clone());
//! // Act only while `*leading.borrow()` is true.
//! leading.wait_for(|is_leader| *is_leader).await?;
//! // ... provision volumes ...
//! shutdown.cancel(); // publishes false, then releases the lease
//! task.await?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a lease stays valid after its holder last renewed it, unless configured otherwise.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the holder keeps acting without a successful renewal, unless configured otherwise.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often replicas try to acquire or renew the lease, unless configured otherwise.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Where the lease lives, who this replica is, and the election's timing.
///
/// ```
/// use std::time::Duration;
/// use provisioner_core::leader::LeaderElectionConfig;
///
/// let mut config = LeaderElectionConfig::new("example.com-nfs", "kube-system", "pod-a");
/// assert_eq!(config.lease_duration, Duration::from_secs(15));
/// assert!(config.validate().is_ok());
/// config.renew_deadline = Duration::from_secs(20);
/// assert!(config.validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    /// Name of the Lease object; see [`lease_name_for`].
    pub lease_name: String,
    /// Namespace of the Lease object.
    pub namespace: String,
    /// This replica's identity, written as the lease's `holderIdentity`. It
    /// must be unique among the replicas (a pod name is a good choice).
    pub identity: String,
    /// How long followers wait, after last seeing the lease change, before
    /// taking it over. Written to the lease rounded up to whole seconds.
    pub lease_duration: Duration,
    /// How long the holder keeps acting without a successful renewal. Must be
    /// shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// The interval between attempts to acquire or renew. Must be shorter
    /// than `renew_deadline`.
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// A configuration with the default timing: lease duration 15 s, renew
    /// deadline 10 s, retry period 2 s.
    pub fn new(lease_name: impl Into<String>, namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderElectionConfig {
            lease_name: lease_name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks the names and that `0 < retry_period < renew_deadline < lease_duration`.
    pub fn validate(&self) -> Result<(), LeaderElectionError> {
        if self.identity.is_empty() {
            // An empty holderIdentity means "released", so it cannot name a holder.
            return Err(LeaderElectionError::EmptyIdentity);
        }
        if !is_dns_subdomain(&self.lease_name) {
            return Err(LeaderElectionError::InvalidLeaseName { name: self.lease_name.clone() });
        }
        if !is_dns_label(&self.namespace) {
            return Err(LeaderElectionError::InvalidNamespace { namespace: self.namespace.clone() });
        }
        if self.retry_period.is_zero() {
            return Err(LeaderElectionError::ZeroRetryPeriod);
        }
        if self.retry_period >= self.renew_deadline {
            return Err(LeaderElectionError::RetryPeriodNotBelowRenewDeadline {
                retry_period: self.retry_period,
                renew_deadline: self.renew_deadline,
            });
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(LeaderElectionError::RenewDeadlineNotBelowLeaseDuration {
                renew_deadline: self.renew_deadline,
                lease_duration: self.lease_duration,
            });
        }
        if lease_duration_seconds(self.lease_duration).is_none() {
            return Err(LeaderElectionError::LeaseDurationTooLong { lease_duration: self.lease_duration });
        }
        Ok(())
    }
}

/// Why a leader election could not be set up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaderElectionError {
    /// The identity is empty; an empty `holderIdentity` means the lease is free.
    #[error("leader election: the identity must not be empty")]
    EmptyIdentity,
    /// The lease name is not a valid object name (a DNS-1123 subdomain).
    #[error("leader election: lease name {name:?} is not a valid DNS subdomain name (see lease_name_for)")]
    InvalidLeaseName {
        /// The rejected name.
        name: String,
    },
    /// The namespace is not a valid namespace name (a DNS-1123 label).
    #[error("leader election: namespace {namespace:?} is not a valid DNS label")]
    InvalidNamespace {
        /// The rejected namespace.
        namespace: String,
    },
    /// The retry period is zero, which would make the election spin.
    #[error("leader election: the retry period must be longer than zero")]
    ZeroRetryPeriod,
    /// The retry period is not shorter than the renew deadline, so a single
    /// failed renewal could cost the leadership.
    #[error(
        "leader election: retry period {retry_period:?} must be shorter than the renew deadline {renew_deadline:?}"
    )]
    RetryPeriodNotBelowRenewDeadline {
        /// The configured retry period.
        retry_period: Duration,
        /// The configured renew deadline.
        renew_deadline: Duration,
    },
    /// The renew deadline is not shorter than the lease duration, so a
    /// follower could take over while the old leader still acts.
    #[error(
        "leader election: renew deadline {renew_deadline:?} must be shorter than the lease duration {lease_duration:?}"
    )]
    RenewDeadlineNotBelowLeaseDuration {
        /// The configured renew deadline.
        renew_deadline: Duration,
        /// The configured lease duration.
        lease_duration: Duration,
    },
    /// The lease duration does not fit the lease's `leaseDurationSeconds` (an i32).
    #[error("leader election: lease duration {lease_duration:?} is too long for leaseDurationSeconds")]
    LeaseDurationTooLong {
        /// The configured lease duration.
        lease_duration: Duration,
    },
}

/// The Lease name for a provisioner name: `/` becomes `-`, upper case becomes
/// lower case, and anything else not allowed in a DNS subdomain name is
/// replaced or trimmed, so the result is always a valid object name.
///
/// Distinct provisioner names can map to the same lease name (for example
/// `a/b` and `a_b`); such provisioners would share one election.
///
/// ```
/// use provisioner_core::leader::lease_name_for;
///
/// assert_eq!(lease_name_for("example.com/nfs"), "example.com-nfs");
/// assert_eq!(lease_name_for("Example.COM/my_disk"), "example.com-my-disk");
/// ```
pub fn lease_name_for(provisioner_name: &str) -> String {
    const MAX_LEN: usize = 253;
    let mapped: String = provisioner_name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    // Each dot-separated part must start and end with an alphanumeric.
    let mut name = mapped
        .split('.')
        .map(|label| label.trim_matches('-'))
        .filter(|label| !label.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    // Only ASCII remains, so byte truncation is safe; it may expose a '-' or '.' at the end.
    name.truncate(MAX_LEN);
    let name = name.trim_end_matches(['-', '.']);
    if name.is_empty() { "leader-election".to_string() } else { name.to_string() }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label_shape)
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_label_shape(s)
}

fn is_label_shape(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(alnum) && b.last().is_some_and(alnum) && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// `lease_duration` as whole seconds, rounded up so followers never wait
/// less than the holder assumes; `None` if it does not fit an i32.
fn lease_duration_seconds(lease_duration: Duration) -> Option<i32> {
    let secs = lease_duration.as_secs() + u64::from(lease_duration.subsec_nanos() > 0);
    i32::try_from(secs).ok()
}

/// Runs the election for one replica; see the [module documentation](self).
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    lease_duration_seconds: i32,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector").field("config", &self.config).finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// An elector for `config`, after [validating](LeaderElectionConfig::validate) it.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use provisioner_core::leader::{LeaderElectionConfig, LeaderElector};
    /// let client = kube::Client::try_default().await?;
    /// let elector = LeaderElector::new(client, LeaderElectionConfig::new("my-lease", "default", "pod-a"))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(client: Client, config: LeaderElectionConfig) -> Result<Self, LeaderElectionError> {
        config.validate()?;
        let lease_duration_seconds = lease_duration_seconds(config.lease_duration)
            .ok_or(LeaderElectionError::LeaseDurationTooLong { lease_duration: config.lease_duration })?;
        Ok(LeaderElector { api: Api::namespaced(client, &config.namespace), config, lease_duration_seconds })
    }

    /// The configuration this elector runs with.
    pub fn config(&self) -> &LeaderElectionConfig {
        &self.config
    }

    /// Spawns the election loop on the current Tokio runtime; leadership is
    /// published on the watch channel (`true` = leading, initially `false`).
    ///
    /// When `shutdown` is cancelled the task publishes `false`, releases the
    /// lease if it holds it, and ends. If the task is aborted instead, it
    /// still publishes `false` (and closes the channel) but does not release
    /// the lease, which then expires after the lease duration.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo(elector: provisioner_core::leader::LeaderElector) {
    /// let shutdown = tokio_util::sync::CancellationToken::new();
    /// let (mut leading, task) = elector.spawn(shutdown.clone());
    /// while leading.changed().await.is_ok() {
    ///     println!("leading: {}", *leading.borrow());
    /// }
    /// # }
    /// ```
    pub fn spawn(self, shutdown: CancellationToken) -> (watch::Receiver<bool>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(self.run(Leadership(tx), shutdown));
        (rx, task)
    }

    async fn run(self, leadership: Leadership, shutdown: CancellationToken) {
        let cfg = &self.config;
        let mut state = Election::default();
        // After a conflict while leading, look again at once rather than after a retry period.
        let mut retried_conflict = false;
        loop {
            if state.leading_until.is_some_and(|until| Instant::now() >= until) {
                self.lose(&mut state, &leadership, "could not renew the lease within the renew deadline");
            }
            let start = Instant::now();
            // Half the renew deadline per attempt, so a leader whose request hangs still
            // has time for another; and never beyond the end of the leadership.
            let mut bound = start + cfg.renew_deadline / 2;
            if let Some(until) = state.leading_until {
                bound = bound.min(until);
            }
            let result = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                r = tokio::time::timeout_at(bound, self.attempt(&mut state)) => r,
            };
            let mut next = start + cfg.retry_period;
            match result {
                Ok(Ok(Attempt::Leading { transitions })) => {
                    retried_conflict = false;
                    // Counted from before the request: the write committed after `start`.
                    state.leading_until = Some(start + cfg.renew_deadline);
                    if leadership.set(true) {
                        info!(lease = %cfg.lease_name, namespace = %cfg.namespace, identity = %cfg.identity,
                            transitions, "acquired leadership");
                    }
                }
                Ok(Ok(Attempt::Following { holder, until })) => {
                    retried_conflict = false;
                    if state.leading_until.is_some() {
                        self.lose(&mut state, &leadership, &format!("the lease is now held by {holder:?}"));
                    }
                    debug!(lease = %cfg.lease_name, holder = %holder, "following");
                    // Look again as soon as the holder's lease would expire.
                    next = next.min(until);
                }
                Ok(Ok(Attempt::Conflict)) => {
                    debug!(lease = %cfg.lease_name, "another replica changed the lease first");
                    if state.leading_until.is_some() && !retried_conflict {
                        retried_conflict = true;
                        next = Instant::now();
                    }
                }
                Ok(Err(error)) => {
                    warn!(lease = %cfg.lease_name, namespace = %cfg.namespace, %error, "lease request failed");
                }
                Err(_elapsed) => {
                    warn!(lease = %cfg.lease_name, namespace = %cfg.namespace, "lease request timed out");
                }
            }
            if let Some(until) = state.leading_until {
                next = next.min(until);
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next) => {}
            }
        }
        // Stop acting before the lease can pass to anyone else.
        if leadership.set(false) {
            info!(lease = %cfg.lease_name, namespace = %cfg.namespace, identity = %cfg.identity,
                "stopped leading: shutting down");
        }
        if state.may_hold || state.leading_until.is_some() {
            self.release().await;
        }
    }

    fn lose(&self, state: &mut Election, leadership: &Leadership, why: &str) {
        state.leading_until = None;
        if leadership.set(false) {
            let cfg = &self.config;
            info!(lease = %cfg.lease_name, namespace = %cfg.namespace, identity = %cfg.identity, reason = why,
                "lost leadership");
        }
    }

    /// One read of the lease and, when [`decide`] says so, one write.
    async fn attempt(&self, state: &mut Election) -> Result<Attempt, kube::Error> {
        let cfg = &self.config;
        let current = self.api.get_opt(&cfg.lease_name).await?;
        let now = Instant::now();
        state.observed = current
            .as_ref()
            .map(|lease| observe(state.observed.take(), LeaseRecord::from_spec(lease.spec.as_ref()), now));
        let ours = state.observed.as_ref().is_some_and(|o| o.record.holder.as_deref() == Some(cfg.identity.as_str()));
        if !ours {
            state.may_hold = false;
        }
        let action = decide(state.observed.as_ref(), &cfg.identity, now, cfg.lease_duration);
        let written = match (action, current) {
            (LeaseAction::Wait { until }, _) => {
                let holder = state.observed.as_ref().and_then(|o| o.record.holder.clone()).unwrap_or_default();
                return Ok(Attempt::Following { holder, until });
            }
            (LeaseAction::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(cfg.lease_name.clone()),
                        namespace: Some(cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(claim_spec(None, &cfg.identity, self.lease_duration_seconds, Timestamp::now())),
                };
                state.may_hold = true;
                self.api.create(&crate::keys::post_params(), &lease).await
            }
            (LeaseAction::Acquire | LeaseAction::Renew, Some(mut lease)) => {
                // The fetched metadata carries the resourceVersion, making this a compare-and-swap.
                let spec =
                    claim_spec(lease.spec.as_ref(), &cfg.identity, self.lease_duration_seconds, Timestamp::now());
                lease.spec = Some(spec);
                state.may_hold = true;
                self.api.replace(&cfg.lease_name, &crate::keys::post_params(), &lease).await
            }
        };
        match written {
            Ok(lease) => {
                let record = LeaseRecord::from_spec(lease.spec.as_ref());
                let transitions = record.lease_transitions.unwrap_or(0);
                state.observed = Some(observe(state.observed.take(), record, Instant::now()));
                Ok(Attempt::Leading { transitions })
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Hands the lease back so a follower can take it at its next retry.
    async fn release(&self) {
        let cfg = &self.config;
        let work = async {
            // A conflict here is usually our own in-flight renewal landing; look again.
            for _ in 0..3 {
                let Some(mut lease) = self.api.get_opt(&cfg.lease_name).await? else { return Ok(false) };
                let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
                if holder != Some(cfg.identity.as_str()) {
                    return Ok(false);
                }
                lease.spec = Some(release_spec(lease.spec.as_ref(), Timestamp::now()));
                match self.api.replace(&cfg.lease_name, &crate::keys::post_params(), &lease).await {
                    Ok(_) => return Ok(true),
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, kube::Error>(false)
        };
        match tokio::time::timeout(cfg.renew_deadline, work).await {
            Ok(Ok(true)) => info!(lease = %cfg.lease_name, namespace = %cfg.namespace, identity = %cfg.identity,
                "released the lease"),
            Ok(Ok(false)) => debug!(lease = %cfg.lease_name, "not holding the lease; nothing to release"),
            Ok(Err(error)) => warn!(lease = %cfg.lease_name, %error,
                "could not release the lease; it will expire after the lease duration"),
            Err(_) => warn!(lease = %cfg.lease_name,
                "releasing the lease timed out; it will expire after the lease duration"),
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    // 409 covers both a stale resourceVersion and AlreadyExists on create.
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// Publishes leadership; dropping it (task ended, panicked or aborted) publishes `false`.
struct Leadership(watch::Sender<bool>);

impl Leadership {
    /// Sets the value, notifying receivers only on a change; returns whether it changed.
    fn set(&self, leading: bool) -> bool {
        self.0.send_if_modified(|value| std::mem::replace(value, leading) != leading)
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// What one replica's election loop carries between attempts.
#[derive(Debug, Default)]
struct Election {
    /// The lease record as last read, and when it was first seen in that form.
    observed: Option<Observed>,
    /// While leading: when leadership ends unless a renewal succeeds first.
    leading_until: Option<Instant>,
    /// Whether the lease may name this replica (set before any write, cleared
    /// when a read shows another holder); decides whether shutdown releases.
    may_hold: bool,
}

/// How one attempt ended.
#[derive(Debug)]
enum Attempt {
    /// The lease was created, acquired or renewed for this replica.
    Leading { transitions: i32 },
    /// Another replica holds a lease that has not expired by our clock.
    Following { holder: String, until: Instant },
    /// The write lost a race (409): the lease changed since it was read.
    Conflict,
}

/// The fields of a Lease the election reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LeaseRecord {
    /// `None` when empty: the lease is free.
    holder: Option<String>,
    lease_duration_seconds: Option<i32>,
    renew_time: Option<Timestamp>,
    acquire_time: Option<Timestamp>,
    lease_transitions: Option<i32>,
}

impl LeaseRecord {
    fn from_spec(spec: Option<&LeaseSpec>) -> Self {
        let Some(spec) = spec else { return LeaseRecord::default() };
        LeaseRecord {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            lease_duration_seconds: spec.lease_duration_seconds,
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            lease_transitions: spec.lease_transitions,
        }
    }

    /// How long the lease lasts after a change, as its holder declared it;
    /// `fallback` (our own configuration) when it declares nothing usable.
    fn duration(&self, fallback: Duration) -> Duration {
        match self.lease_duration_seconds.map(u64::try_from) {
            Some(Ok(secs)) if secs > 0 => Duration::from_secs(secs),
            _ => fallback,
        }
    }
}

/// A lease record and when this replica first saw it in that form, by its own clock.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    record: LeaseRecord,
    at: Instant,
}

/// Folds a fresh read into what was observed before. Only a change of the
/// record restarts the clock: a holder that stops renewing leaves the record
/// as it was, so it expires one duration after it was first seen.
fn observe(previous: Option<Observed>, record: LeaseRecord, now: Instant) -> Observed {
    match previous {
        Some(previous) if previous.record == record => previous,
        _ => Observed { record, at: now },
    }
}

/// What to do about the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseAction {
    /// There is no lease: create it, naming ourselves.
    Create,
    /// The lease is free or expired: take it over.
    Acquire,
    /// The lease is ours: renew it.
    Renew,
    /// Someone else holds a valid lease: it expires at `until` unless it changes.
    Wait { until: Instant },
}

/// The election's decision, without I/O: `lease` is the lease as observed
/// (`None`: it does not exist), judged at `now` by this replica's clock.
/// `fallback_duration` applies when the lease declares no duration.
fn decide(lease: Option<&Observed>, identity: &str, now: Instant, fallback_duration: Duration) -> LeaseAction {
    let Some(observed) = lease else { return LeaseAction::Create };
    match observed.record.holder.as_deref() {
        None => LeaseAction::Acquire,
        Some(holder) if holder == identity => LeaseAction::Renew,
        Some(_) => {
            let until = observed.at + observed.record.duration(fallback_duration);
            if now >= until { LeaseAction::Acquire } else { LeaseAction::Wait { until } }
        }
    }
}

/// The spec that makes `identity` the holder: a renewal when it already is
/// (keeping `acquireTime` and `leaseTransitions`), else an acquisition, which
/// counts a transition. `current` is `None` when creating the lease.
fn claim_spec(current: Option<&LeaseSpec>, identity: &str, lease_duration_seconds: i32, now: Timestamp) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    let renewing = spec.holder_identity.as_deref() == Some(identity);
    if renewing {
        spec.acquire_time.get_or_insert(MicroTime(now));
        spec.lease_transitions.get_or_insert(0);
    } else {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(match current {
            Some(old) => old.lease_transitions.unwrap_or(0).saturating_add(1),
            None => 0,
        });
    }
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(lease_duration_seconds);
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// The spec that frees the lease: no holder, and a one-second duration for
/// electors that look only at the duration.
fn release_spec(current: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(now));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ME: &str = "me";
    const OTHER: &str = "other";
    const FALLBACK: Duration = Duration::from_secs(15);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn record(holder: Option<&str>, duration_secs: Option<i32>, renewed_at: i64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_string),
            lease_duration_seconds: duration_secs,
            renew_time: Some(Timestamp::from_second(renewed_at).expect("valid timestamp")),
            acquire_time: None,
            lease_transitions: Some(0),
        }
    }

    fn seen(record: LeaseRecord, at: Instant) -> Option<Observed> {
        Some(Observed { record, at })
    }

    fn valid_config() -> LeaderElectionConfig {
        LeaderElectionConfig::new("example.com-nfs", "kube-system", "pod-a")
    }

    // --- decide ---

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, ME, Instant::now(), FALLBACK), LeaseAction::Create);
    }

    #[test]
    fn follower_takes_a_released_lease_at_once() {
        let t0 = Instant::now();
        let released = seen(record(None, Some(1), 100), t0);
        assert_eq!(decide(released.as_ref(), ME, t0, FALLBACK), LeaseAction::Acquire);
    }

    #[test]
    fn an_empty_holder_identity_counts_as_released() {
        let t0 = Instant::now();
        let spec =
            LeaseSpec { holder_identity: Some(String::new()), lease_duration_seconds: Some(15), ..Default::default() };
        let released = seen(LeaseRecord::from_spec(Some(&spec)), t0);
        assert_eq!(decide(released.as_ref(), ME, t0, FALLBACK), LeaseAction::Acquire);
    }

    #[test]
    fn holder_renews_its_own_lease_even_when_it_looks_expired() {
        let t0 = Instant::now();
        let mine = seen(record(Some(ME), Some(15), 0), t0);
        assert_eq!(decide(mine.as_ref(), ME, t0 + secs(3600), FALLBACK), LeaseAction::Renew);
    }

    #[test]
    fn follower_waits_on_a_freshly_seen_lease() {
        let t0 = Instant::now();
        let theirs = seen(record(Some(OTHER), Some(15), 0), t0);
        assert_eq!(decide(theirs.as_ref(), ME, t0 + secs(5), FALLBACK), LeaseAction::Wait { until: t0 + secs(15) });
    }

    #[test]
    fn follower_takes_an_expired_lease() {
        let t0 = Instant::now();
        let theirs = seen(record(Some(OTHER), Some(15), 0), t0);
        assert_eq!(decide(theirs.as_ref(), ME, t0 + secs(16), FALLBACK), LeaseAction::Acquire);
    }

    #[test]
    fn follower_takes_the_lease_exactly_when_it_expires() {
        let t0 = Instant::now();
        let theirs = seen(record(Some(OTHER), Some(15), 0), t0);
        let just_before = t0 + secs(15) - Duration::from_millis(1);
        assert_eq!(decide(theirs.as_ref(), ME, just_before, FALLBACK), LeaseAction::Wait { until: t0 + secs(15) });
        assert_eq!(decide(theirs.as_ref(), ME, t0 + secs(15), FALLBACK), LeaseAction::Acquire);
    }

    #[test]
    fn follower_waits_while_the_holder_renews() {
        let t0 = Instant::now();
        let mut observed = None;
        // The holder renews every 2 s for a minute: far longer than one lease duration.
        for i in 0..30u64 {
            let now = t0 + secs(2 * i);
            let renewed = i64::try_from(2 * i).expect("small");
            observed = Some(observe(observed, record(Some(OTHER), Some(15), renewed), now));
            assert_eq!(
                decide(observed.as_ref(), ME, now + secs(1), FALLBACK),
                LeaseAction::Wait { until: now + secs(15) },
                "renewal {i}"
            );
        }
    }

    #[test]
    fn a_stale_record_expires_one_duration_after_it_was_first_seen() {
        let t0 = Instant::now();
        let stale = record(Some(OTHER), Some(15), 0);
        let mut observed = Some(observe(None, stale.clone(), t0));
        // Reading the same record again does not restart the clock.
        for i in 1..8 {
            observed = Some(observe(observed, stale.clone(), t0 + secs(2 * i)));
        }
        assert_eq!(observed.as_ref().map(|o| o.at), Some(t0));
        assert_eq!(decide(observed.as_ref(), ME, t0 + secs(15), FALLBACK), LeaseAction::Acquire);
    }

    #[test]
    fn expiry_ignores_the_remote_renew_time() {
        let t0 = Instant::now();
        // A renewTime from 1970 (a skewed or lying clock) does not make a freshly seen lease expired...
        let ancient = seen(record(Some(OTHER), Some(15), 0), t0);
        assert_eq!(decide(ancient.as_ref(), ME, t0 + secs(1), FALLBACK), LeaseAction::Wait { until: t0 + secs(15) });
        // ...and one from the far future does not keep an unchanged lease alive.
        let future = seen(record(Some(OTHER), Some(15), 4_000_000_000), t0);
        assert_eq!(decide(future.as_ref(), ME, t0 + secs(15), FALLBACK), LeaseAction::Acquire);
    }

    #[test]
    fn a_newly_started_follower_waits_a_full_duration() {
        // It cannot know how long ago the holder renewed, so it counts from its first read.
        let started = Instant::now() + secs(100);
        let observed = Some(observe(None, record(Some(OTHER), Some(15), 0), started));
        assert_eq!(decide(observed.as_ref(), ME, started, FALLBACK), LeaseAction::Wait { until: started + secs(15) });
    }

    #[test]
    fn the_holders_declared_duration_wins_over_our_own() {
        let t0 = Instant::now();
        let theirs = seen(record(Some(OTHER), Some(40), 0), t0);
        assert_eq!(decide(theirs.as_ref(), ME, t0 + secs(20), FALLBACK), LeaseAction::Wait { until: t0 + secs(40) });
    }

    #[test]
    fn a_lease_without_a_usable_duration_uses_our_own() {
        let t0 = Instant::now();
        for duration in [None, Some(0), Some(-5)] {
            let theirs = seen(record(Some(OTHER), duration, 0), t0);
            assert_eq!(
                decide(theirs.as_ref(), ME, t0 + secs(1), FALLBACK),
                LeaseAction::Wait { until: t0 + FALLBACK },
                "{duration:?}"
            );
        }
    }

    #[test]
    fn a_change_of_holder_restarts_the_clock() {
        let t0 = Instant::now();
        let first = observe(None, record(Some(OTHER), Some(15), 0), t0);
        let second = observe(Some(first), record(Some("third"), Some(15), 0), t0 + secs(14));
        assert_eq!(second.at, t0 + secs(14));
        assert_eq!(decide(Some(&second), ME, t0 + secs(20), FALLBACK), LeaseAction::Wait { until: t0 + secs(29) });
    }

    // --- the specs written ---

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("valid timestamp")
    }

    #[test]
    fn creating_names_us_with_no_transitions() {
        let spec = claim_spec(None, ME, 15, ts(10));
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(10))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(10))));
    }

    #[test]
    fn acquiring_from_another_holder_counts_a_transition() {
        let old = claim_spec(None, OTHER, 15, ts(10));
        let spec = claim_spec(Some(&old), ME, 6, ts(30));
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(30))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(30))));
        assert_eq!(spec.lease_duration_seconds, Some(6));
    }

    #[test]
    fn acquiring_a_released_lease_counts_a_transition() {
        let released = release_spec(Some(&claim_spec(None, OTHER, 15, ts(10))), ts(20));
        let spec = claim_spec(Some(&released), ME, 15, ts(21));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(21))));
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions() {
        let mut old = claim_spec(None, ME, 15, ts(10));
        old.lease_transitions = Some(4);
        let spec = claim_spec(Some(&old), ME, 15, ts(12));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(10))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(12))));
    }

    #[test]
    fn releasing_clears_the_holder_and_keeps_the_history() {
        let mut held = claim_spec(None, ME, 15, ts(10));
        held.lease_transitions = Some(3);
        let spec = release_spec(Some(&held), ts(20));
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(20))));
        assert_eq!(spec.lease_transitions, Some(3));
        let t0 = Instant::now();
        let observed = seen(LeaseRecord::from_spec(Some(&spec)), t0);
        assert_eq!(decide(observed.as_ref(), OTHER, t0, FALLBACK), LeaseAction::Acquire);
    }

    #[test]
    fn lease_duration_is_written_rounded_up_to_whole_seconds() {
        assert_eq!(lease_duration_seconds(secs(15)), Some(15));
        assert_eq!(lease_duration_seconds(Duration::from_millis(6500)), Some(7));
        assert_eq!(lease_duration_seconds(Duration::from_millis(1)), Some(1));
        assert_eq!(lease_duration_seconds(secs(u64::from(u32::MAX))), None);
    }

    // --- configuration ---

    #[test]
    fn defaults_are_15s_lease_10s_renew_2s_retry() {
        let c = valid_config();
        assert_eq!((c.lease_duration, c.renew_deadline, c.retry_period), (secs(15), secs(10), secs(2)));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn renew_deadline_must_be_shorter_than_the_lease_duration() {
        let mut c = valid_config();
        c.renew_deadline = secs(15);
        assert_eq!(
            c.validate(),
            Err(LeaderElectionError::RenewDeadlineNotBelowLeaseDuration {
                renew_deadline: secs(15),
                lease_duration: secs(15)
            })
        );
    }

    #[test]
    fn retry_period_must_be_shorter_than_the_renew_deadline() {
        let mut c = valid_config();
        c.retry_period = secs(10);
        assert_eq!(
            c.validate(),
            Err(LeaderElectionError::RetryPeriodNotBelowRenewDeadline {
                retry_period: secs(10),
                renew_deadline: secs(10)
            })
        );
    }

    #[test]
    fn retry_period_must_not_be_zero() {
        let mut c = valid_config();
        c.retry_period = Duration::ZERO;
        assert_eq!(c.validate(), Err(LeaderElectionError::ZeroRetryPeriod));
    }

    #[test]
    fn an_absurd_lease_duration_is_rejected() {
        let mut c = valid_config();
        c.lease_duration = secs(u64::from(u32::MAX));
        assert!(matches!(c.validate(), Err(LeaderElectionError::LeaseDurationTooLong { .. })));
    }

    #[test]
    fn identity_and_names_are_checked() {
        let mut c = valid_config();
        c.identity = String::new();
        assert_eq!(c.validate(), Err(LeaderElectionError::EmptyIdentity));
        let mut c = valid_config();
        c.lease_name = "example.com/nfs".into();
        assert!(matches!(c.validate(), Err(LeaderElectionError::InvalidLeaseName { .. })));
        let mut c = valid_config();
        c.namespace = "Kube_System".into();
        assert!(matches!(c.validate(), Err(LeaderElectionError::InvalidNamespace { .. })));
    }

    // --- lease names ---

    #[test]
    fn lease_name_replaces_slashes() {
        assert_eq!(lease_name_for("example.com/nfs"), "example.com-nfs");
        assert_eq!(lease_name_for("kubernetes.io/aws-efs"), "kubernetes.io-aws-efs");
    }

    #[test]
    fn lease_name_lowercases_and_sanitises() {
        assert_eq!(lease_name_for("Example.COM/my_disk"), "example.com-my-disk");
        assert_eq!(lease_name_for("/a..b/"), "a.b");
        assert_eq!(lease_name_for("-x.-y-.z-"), "x.y.z");
        assert_eq!(lease_name_for("ünïcode/prov"), "n-code-prov");
    }

    #[test]
    fn lease_name_of_nothing_usable_falls_back() {
        assert_eq!(lease_name_for(""), "leader-election");
        assert_eq!(lease_name_for("/_/"), "leader-election");
    }

    #[test]
    fn lease_name_is_truncated_to_253_characters() {
        // Cut right after a dot: the dangling dot goes too.
        let name = lease_name_for(&format!("{}.{}", "a".repeat(252), "b".repeat(10)));
        assert_eq!(name, "a".repeat(252));
        let name = lease_name_for(&"x".repeat(400));
        assert_eq!(name.len(), 253);
    }

    proptest! {
        #[test]
        fn never_acquires_a_valid_lease_held_by_someone_else(
            seen_ms in 0u64..100_000,
            now_ms in 0u64..200_000,
            duration in prop::option::of(-5i32..100),
            renewed in any::<i32>(),
        ) {
            let base = Instant::now();
            let observed = seen(record(Some(OTHER), duration, i64::from(renewed)), base + Duration::from_millis(seen_ms));
            let now = base + Duration::from_millis(now_ms);
            let expiry = base + Duration::from_millis(seen_ms) + observed.as_ref().map_or(FALLBACK, |o| o.record.duration(FALLBACK));
            let action = decide(observed.as_ref(), ME, now, FALLBACK);
            if now < expiry {
                prop_assert_eq!(action, LeaseAction::Wait { until: expiry });
            } else {
                prop_assert_eq!(action, LeaseAction::Acquire);
            }
        }

        /// The timing contract: the holder stops acting `renew_deadline` after
        /// starting its last successful renewal; no follower, having seen that
        /// renewal at any later moment, may acquire before then.
        #[test]
        fn no_follower_acquires_while_the_holder_may_still_act(
            retry_ms in 1u64..5_000,
            renew_extra_ms in 1u64..20_000,
            lease_extra_ms in 1u64..20_000,
            seen_after_ms in 0u64..10_000,
            now_ms in 0u64..60_000,
        ) {
            let mut config = valid_config();
            config.retry_period = Duration::from_millis(retry_ms);
            config.renew_deadline = config.retry_period + Duration::from_millis(renew_extra_ms);
            config.lease_duration = config.renew_deadline + Duration::from_millis(lease_extra_ms);
            prop_assert_eq!(config.validate(), Ok(()));
            let written = lease_duration_seconds(config.lease_duration).expect("fits");

            let renew_started = Instant::now();
            let holder_stops = renew_started + config.renew_deadline;
            let spec = claim_spec(None, OTHER, written, ts(0));
            let observed = seen(LeaseRecord::from_spec(Some(&spec)), renew_started + Duration::from_millis(seen_after_ms));
            let now = renew_started + Duration::from_millis(now_ms);
            if now < holder_stops {
                let action = decide(observed.as_ref(), ME, now, config.lease_duration);
                prop_assert!(matches!(action, LeaseAction::Wait { .. }), "acquired at {:?}: {:?}", now - renew_started, action);
            }
        }

        #[test]
        fn observing_restarts_the_clock_only_on_a_change(
            a in prop::option::of("[a-c]"),
            b in prop::option::of("[a-c]"),
            ra in 0i64..3,
            rb in 0i64..3,
        ) {
            let t0 = Instant::now();
            let first = observe(None, record(a.as_deref(), Some(15), ra), t0);
            let second_record = record(b.as_deref(), Some(15), rb);
            let changed = first.record != second_record;
            let second = observe(Some(first), second_record, t0 + secs(5));
            prop_assert_eq!(second.at, if changed { t0 + secs(5) } else { t0 });
        }

        #[test]
        fn lease_names_are_always_valid(name in ".{0,300}") {
            let lease = lease_name_for(&name);
            prop_assert!(is_dns_subdomain(&lease), "{:?} -> {:?}", name, lease);
        }

        #[test]
        fn valid_lease_names_are_kept(name in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}") {
            prop_assert!(is_dns_subdomain(&name));
            prop_assert_eq!(lease_name_for(&name), name);
        }
    }

    /// The election loop against the testing kit's API server, under paused
    /// time: every instant below is exact.
    mod election_loop {
        use super::*;
        use crate::testing::{FakeCluster, HistoryEntry};
        use kube::api::PostParams;
        use tokio::time::timeout;

        const LEASE: &str = "lease";
        const NAMESPACE: &str = "default";
        /// A retry period, inclusive: the retry timer and the test's timeout may fire at the same instant.
        const WITHIN_A_RETRY: Duration = DEFAULT_RETRY_PERIOD.saturating_add(Duration::from_millis(1));

        fn spawn(client: Client, identity: &str) -> (watch::Receiver<bool>, JoinHandle<()>, CancellationToken) {
            let config = LeaderElectionConfig::new(LEASE, NAMESPACE, identity);
            let shutdown = CancellationToken::new();
            let (leading, task) = LeaderElector::new(client, config).expect("valid config").spawn(shutdown.clone());
            (leading, task, shutdown)
        }

        /// Waits on the channel until it reads `want`; false if it did not within `within`.
        async fn becomes(rx: &mut watch::Receiver<bool>, want: bool, within: Duration) -> bool {
            matches!(timeout(within, rx.wait_for(|v| *v == want)).await, Ok(Ok(_)))
        }

        fn lease(cluster: &FakeCluster) -> Option<Lease> {
            cluster.get::<Lease>(NAMESPACE, LEASE)
        }

        fn holder_of(lease: &Lease) -> Option<String> {
            lease.spec.as_ref()?.holder_identity.clone().filter(|h| !h.is_empty())
        }

        /// The lease's holder, if it has one.
        fn holder(cluster: &FakeCluster) -> Option<String> {
            lease(cluster).as_ref().and_then(holder_of)
        }

        /// When the last write naming `holder` landed.
        fn last_write_by(cluster: &FakeCluster, holder: &str) -> Option<Instant> {
            let history: Vec<HistoryEntry<Lease>> = cluster.history();
            history.iter().rev().find(|w| holder_of(&w.object).as_deref() == Some(holder)).map(|w| w.at)
        }

        #[tokio::test(start_paused = true)]
        async fn the_first_elector_creates_the_lease_and_the_second_follows() {
            let cluster = FakeCluster::new();
            let (mut a, _ta, _sa) = spawn(cluster.client(), "a");
            assert!(becomes(&mut a, true, secs(1)).await);
            let (mut b, _tb, _sb) = spawn(cluster.client(), "b");
            assert!(!becomes(&mut b, true, secs(60)).await, "b took over a live lease");
            assert!(*a.borrow());
            let spec = lease(&cluster).and_then(|l| l.spec).expect("lease");
            assert_eq!(spec.holder_identity.as_deref(), Some("a"));
            assert_eq!(spec.lease_transitions, Some(0));
            assert_eq!(spec.lease_duration_seconds, Some(15));
        }

        #[tokio::test(start_paused = true)]
        async fn a_partitioned_leader_steps_down_before_the_follower_takes_over() {
            let cluster = FakeCluster::new();
            let (client_a, link_a) = cluster.connect();
            let (mut a, _ta, _sa) = spawn(client_a, "a");
            assert!(becomes(&mut a, true, secs(1)).await);
            let (mut b, _tb, _sb) = spawn(cluster.client(), "b");
            assert!(!becomes(&mut b, true, secs(30)).await);

            link_a.sever();
            assert!(becomes(&mut a, false, secs(30)).await, "a never stepped down");
            let stepped_down = Instant::now();
            assert!(becomes(&mut b, true, secs(30)).await, "b never took over");
            let took_over = Instant::now();
            let last_renewal = last_write_by(&cluster, "a").expect("a wrote the lease");

            assert!(stepped_down <= last_renewal + DEFAULT_RENEW_DEADLINE, "a acted past its renew deadline");
            assert!(stepped_down < took_over);
            assert!(took_over >= last_renewal + DEFAULT_LEASE_DURATION, "b took an unexpired lease");
            assert!(took_over <= last_renewal + DEFAULT_LEASE_DURATION + DEFAULT_RETRY_PERIOD);
            assert_eq!(holder(&cluster).as_deref(), Some("b"));
        }

        #[tokio::test(start_paused = true)]
        async fn a_leader_rides_out_a_partition_shorter_than_its_renew_deadline() {
            let cluster = FakeCluster::new();
            let (client_a, link_a) = cluster.connect();
            let (mut a, _ta, _sa) = spawn(client_a, "a");
            assert!(becomes(&mut a, true, secs(1)).await);
            link_a.sever();
            assert!(timeout(secs(4), a.changed()).await.is_err(), "leadership changed during the partition");
            link_a.restore();
            assert!(timeout(secs(60), a.changed()).await.is_err(), "leadership changed after the partition");
            assert!(*a.borrow());
        }

        #[tokio::test(start_paused = true)]
        async fn a_leader_steps_down_at_once_when_it_sees_another_holder() {
            let cluster = FakeCluster::new();
            let (mut a, _ta, _sa) = spawn(cluster.client(), "a");
            assert!(becomes(&mut a, true, secs(1)).await);
            // Another party overwrites the lease (its write carries the current resourceVersion).
            let mut stolen = lease(&cluster).expect("lease");
            let spec = stolen.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some("intruder".into());
            spec.lease_transitions = Some(7);
            let leases: Api<Lease> = Api::namespaced(cluster.client(), NAMESPACE);
            leases.replace(LEASE, &PostParams::default(), &stolen).await.expect("the intruder's write");
            let stolen_at = Instant::now();

            assert!(becomes(&mut a, false, WITHIN_A_RETRY).await, "a kept leading");
            // Nobody renews for the intruder: a takes the lease back once it expires by a's clock.
            assert!(becomes(&mut a, true, secs(30)).await);
            let regained = Instant::now() - stolen_at;
            assert!(regained >= DEFAULT_LEASE_DURATION, "regained after {regained:?}");
            assert!(regained <= DEFAULT_LEASE_DURATION + DEFAULT_RETRY_PERIOD, "regained after {regained:?}");
            let spec = lease(&cluster).and_then(|l| l.spec).expect("lease");
            assert_eq!(spec.lease_transitions, Some(8));
        }

        #[tokio::test(start_paused = true)]
        async fn shutdown_publishes_false_and_releases_so_the_follower_takes_over_within_a_retry_period() {
            let cluster = FakeCluster::new();
            let (mut a, ta, sa) = spawn(cluster.client(), "a");
            assert!(becomes(&mut a, true, secs(1)).await);
            let (mut b, _tb, _sb) = spawn(cluster.client(), "b");
            assert!(!becomes(&mut b, true, secs(20)).await);

            sa.cancel();
            let cancelled_at = Instant::now();
            ta.await.expect("a ends cleanly");
            assert!(!*a.borrow());
            assert_eq!(holder(&cluster), None, "a did not release the lease");
            assert!(becomes(&mut b, true, WITHIN_A_RETRY).await, "b did not take over within a retry period");
            assert!(Instant::now() - cancelled_at <= DEFAULT_RETRY_PERIOD);
        }

        #[tokio::test(start_paused = true)]
        async fn an_aborted_elector_publishes_false_but_leaves_the_lease_to_expire() {
            let cluster = FakeCluster::new();
            let (mut a, ta, _sa) = spawn(cluster.client(), "a");
            assert!(becomes(&mut a, true, secs(1)).await);
            ta.abort();
            assert!(ta.await.expect_err("aborted").is_cancelled());
            assert!(!*a.borrow());
            assert!(a.has_changed().is_err(), "the channel closes with the task");
            assert_eq!(holder(&cluster).as_deref(), Some("a"));
        }

        #[tokio::test(start_paused = true)]
        async fn an_unreachable_api_server_makes_no_leader_until_it_answers() {
            let cluster = FakeCluster::new();
            let (client, link) = cluster.connect();
            link.sever();
            let (mut a, _ta, _sa) = spawn(client, "a");
            assert!(!becomes(&mut a, true, secs(60)).await);
            link.restore();
            // The hung request is abandoned after half the renew deadline, then a retry succeeds.
            assert!(becomes(&mut a, true, DEFAULT_RENEW_DEADLINE / 2 + DEFAULT_RETRY_PERIOD).await);
        }

        #[tokio::test(start_paused = true)]
        async fn of_two_electors_racing_for_a_new_lease_exactly_one_leads() {
            let cluster = FakeCluster::new();
            let (mut a, _ta, _sa) = spawn(cluster.client(), "a");
            let (mut b, _tb, _sb) = spawn(cluster.client(), "b");
            let (a_leads, b_leads) = (becomes(&mut a, true, secs(5)).await, becomes(&mut b, true, secs(5)).await);
            assert!(a_leads != b_leads, "exactly one leads: a {a_leads}, b {b_leads}");
            let created: Vec<HistoryEntry<Lease>> = cluster.history();
            assert_eq!(created.iter().filter(|w| w.change == crate::testing::ChangeType::Added).count(), 1);
            assert_eq!(holder(&cluster).as_deref(), Some(if a_leads { "a" } else { "b" }));
        }
    }
}
