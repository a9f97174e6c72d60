//! An adaptive rate limit for the EFS requests the process makes, one per
//! API operation under one ceiling for all, so that throttling slows the
//! provisioner down instead of failing claims, and only where AWS asked.
//!
//! AWS throttles each API action on its own (a burst of `CreateAccessPoint`
//! calls says nothing about `DescribeFileSystems`), so each [`Operation`]
//! has its own rate: [`AdaptiveLimiter`] spaces an operation's requests at
//! that rate (with a small burst). A throttled answer halves that
//! operation's rate (down to a floor) and pushes its next slot out; every
//! successful answer adds back a small step, so it recovers slowly
//! (additive increase, multiplicative decrease). Every request also passes
//! the overall ceiling ([`LimiterConfig::max_rate`]), whatever its operation.
//! [`LimitedApi`] puts it in front of any [`EfsApi`] (and [`NetworkApi`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::api::{
    AccessPoint, AccessPointPage, ApiError, EfsApi, ErrorKind, FileSystem, FileSystemLookup, FileSystemOptions,
    LifecycleRule, MountTarget, NetworkApi, NewAccessPoint, NewFileSystem, Operation, SecurityGroup, Subnet,
};

/// Settings of an [`AdaptiveLimiter`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterConfig {
    /// Requests per second when nothing is throttled: the ceiling of every
    /// operation's rate, and of all requests together.
    pub max_rate: f64,
    /// The floor an operation's rate never drops below.
    pub min_rate: f64,
    /// How many requests may go at once after a quiet period.
    pub burst: u32,
    /// Requests per second added back to an operation's rate per successful request.
    pub recovery_step: f64,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig { max_rate: 10.0, min_rate: 0.2, burst: 10, recovery_step: 0.05 }
    }
}

/// One request schedule (GCRA): a rate and the theoretical arrival time of
/// the next request.
#[derive(Debug)]
struct Schedule {
    rate: f64,
    next: Instant,
}

impl Schedule {
    /// Books the next slot no earlier than `earliest`; returns when it is.
    fn book(&mut self, earliest: Instant, burst: u32) -> Instant {
        let interval = Duration::from_secs_f64(1.0 / self.rate);
        let tolerance = interval * burst.saturating_sub(1);
        let tat = self.next.max(earliest);
        self.next = tat + interval;
        tat.checked_sub(tolerance).map_or(earliest, |t| t.max(earliest))
    }
}

#[derive(Debug)]
struct State {
    /// Every request, whatever its operation, at the ceiling.
    overall: Schedule,
    /// Each operation's own adaptive schedule.
    operations: BTreeMap<Operation, Schedule>,
    throttled: BTreeMap<Operation, u64>,
}

/// The label of the throttling counter: the operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// A shared, adaptive request rate limit, per operation (see the module docs).
#[derive(Debug)]
pub struct AdaptiveLimiter {
    config: LimiterConfig,
    state: Mutex<State>,
    throttled_total: Family<OperationLabel, Counter>,
}

impl AdaptiveLimiter {
    /// A limiter with every operation starting at `config.max_rate`.
    pub fn new(config: LimiterConfig) -> Self {
        let config = LimiterConfig {
            max_rate: config.max_rate.max(config.min_rate).max(0.001),
            min_rate: config.min_rate.max(0.001),
            ..config
        };
        AdaptiveLimiter {
            config,
            state: Mutex::new(State {
                overall: Schedule { rate: config.max_rate, next: Instant::now() },
                operations: BTreeMap::new(),
                throttled: BTreeMap::new(),
            }),
            throttled_total: Family::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current rate of `op`, in requests per second.
    pub fn rate_of(&self, op: Operation) -> f64 {
        self.state().operations.get(&op).map_or(self.config.max_rate, |s| s.rate)
    }

    /// The lowest current rate of any operation (the ceiling while nothing is throttled).
    pub fn rate(&self) -> f64 {
        self.state().operations.values().map(|s| s.rate).fold(self.config.max_rate, f64::min)
    }

    /// How many throttled answers were seen, of every operation.
    pub fn throttled(&self) -> u64 {
        self.state().throttled.values().sum()
    }

    /// How many throttled answers `op` got.
    pub fn throttled_of(&self, op: Operation) -> u64 {
        self.state().throttled.get(&op).copied().unwrap_or(0)
    }

    /// Registers `efs_throttled_requests_total{operation}` (throttled EFS
    /// answers, by operation) in `registry`, the figure the EFS throttling
    /// alert watches.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "efs_throttled_requests",
            "EFS answers that were throttling errors, by operation (each halves that operation's request rate)",
            self.throttled_total.clone(),
        );
    }

    /// Waits for a slot for one request of `op`: its operation's and the ceiling's.
    pub async fn acquire(&self, op: Operation) {
        let at = {
            let mut s = self.state();
            let now = Instant::now();
            let burst = self.config.burst;
            let max_rate = self.config.max_rate;
            let own = s.operations.entry(op).or_insert_with(|| Schedule { rate: max_rate, next: now }).book(now, burst);
            s.overall.book(own, burst)
        };
        tokio::time::sleep_until(at).await;
    }

    /// Feeds back how a request of `op` ended.
    pub fn record<T>(&self, op: Operation, result: &Result<T, ApiError>) {
        let mut s = self.state();
        let now = Instant::now();
        let max_rate = self.config.max_rate;
        let schedule = s.operations.entry(op).or_insert_with(|| Schedule { rate: max_rate, next: now });
        match result {
            Err(e) if e.kind == ErrorKind::Throttled => {
                schedule.rate = (schedule.rate / 2.0).max(self.config.min_rate);
                // Empty the operation's burst: none of it goes for a while at the new rate.
                let pause = Duration::from_secs_f64(1.0 / schedule.rate);
                schedule.next = schedule.next.max(now + pause * self.config.burst.max(1));
                *s.throttled.entry(op).or_default() += 1;
                self.throttled_total.get_or_create(&OperationLabel { operation: op.name() }).inc();
            }
            Err(_) => {}
            Ok(_) => schedule.rate = (schedule.rate + self.config.recovery_step).min(self.config.max_rate),
        }
    }
}

/// An [`EfsApi`] whose requests all pass one [`AdaptiveLimiter`].
pub struct LimitedApi<A> {
    inner: A,
    limiter: std::sync::Arc<AdaptiveLimiter>,
}

impl<A> LimitedApi<A> {
    /// Puts `limiter` in front of `inner`.
    pub fn new(inner: A, limiter: std::sync::Arc<AdaptiveLimiter>) -> Self {
        LimitedApi { inner, limiter }
    }

    /// The limiter.
    pub fn limiter(&self) -> &std::sync::Arc<AdaptiveLimiter> {
        &self.limiter
    }

    async fn call<T, F: std::future::Future<Output = Result<T, ApiError>>>(
        &self,
        op: Operation,
        f: F,
    ) -> Result<T, ApiError> {
        self.limiter.acquire(op).await;
        let r = f.await;
        self.limiter.record(op, &r);
        r
    }
}

#[async_trait]
impl<A: EfsApi> EfsApi for LimitedApi<A> {
    async fn create_file_system(&self, spec: &NewFileSystem) -> Result<FileSystem, ApiError> {
        self.call(Operation::CreateFileSystem, self.inner.create_file_system(spec)).await
    }
    async fn create_file_system_with(
        &self,
        spec: &NewFileSystem,
        o: &FileSystemOptions,
    ) -> Result<FileSystem, ApiError> {
        self.call(Operation::CreateFileSystem, self.inner.create_file_system_with(spec, o)).await
    }
    async fn describe_file_system(&self, lookup: &FileSystemLookup) -> Result<Option<FileSystem>, ApiError> {
        self.call(Operation::DescribeFileSystems, self.inner.describe_file_system(lookup)).await
    }
    async fn delete_file_system(&self, id: &str) -> Result<(), ApiError> {
        self.call(Operation::DeleteFileSystem, self.inner.delete_file_system(id)).await
    }
    async fn put_lifecycle_configuration(&self, id: &str, rules: &[LifecycleRule]) -> Result<(), ApiError> {
        self.call(Operation::PutLifecycleConfiguration, self.inner.put_lifecycle_configuration(id, rules)).await
    }
    async fn create_mount_target(&self, id: &str, subnet: &str, sgs: &[String]) -> Result<MountTarget, ApiError> {
        self.call(Operation::CreateMountTarget, self.inner.create_mount_target(id, subnet, sgs)).await
    }
    async fn describe_mount_targets(&self, id: &str) -> Result<Vec<MountTarget>, ApiError> {
        self.call(Operation::DescribeMountTargets, self.inner.describe_mount_targets(id)).await
    }
    async fn delete_mount_target(&self, id: &str) -> Result<(), ApiError> {
        self.call(Operation::DeleteMountTarget, self.inner.delete_mount_target(id)).await
    }
    async fn create_access_point(&self, spec: &NewAccessPoint) -> Result<AccessPoint, ApiError> {
        self.call(Operation::CreateAccessPoint, self.inner.create_access_point(spec)).await
    }
    async fn describe_access_points(
        &self,
        id: &str,
        next: Option<&str>,
        page_size: u32,
    ) -> Result<AccessPointPage, ApiError> {
        self.call(Operation::DescribeAccessPoints, self.inner.describe_access_points(id, next, page_size)).await
    }
    async fn describe_access_point(&self, id: &str) -> Result<Option<AccessPoint>, ApiError> {
        self.call(Operation::DescribeAccessPoints, self.inner.describe_access_point(id)).await
    }
    async fn delete_access_point(&self, id: &str) -> Result<(), ApiError> {
        self.call(Operation::DeleteAccessPoint, self.inner.delete_access_point(id)).await
    }
    async fn tag_resource(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
        self.call(Operation::TagResource, self.inner.tag_resource(id, tags)).await
    }
}

#[async_trait]
impl<N: NetworkApi> NetworkApi for LimitedApi<N> {
    async fn describe_subnets(&self, ids: &[String]) -> Result<Vec<Subnet>, ApiError> {
        self.call(Operation::DescribeSubnets, self.inner.describe_subnets(ids)).await
    }
    async fn describe_security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, ApiError> {
        self.call(Operation::DescribeSecurityGroups, self.inner.describe_security_groups(ids)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: Operation = Operation::CreateFileSystem;

    fn throttled() -> Result<(), ApiError> {
        Err(ApiError::new(CREATE, ErrorKind::Throttled, "ThrottlingException", "slow down"))
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_at_the_rate_after_the_burst() {
        let l = AdaptiveLimiter::new(LimiterConfig { max_rate: 10.0, burst: 2, ..Default::default() });
        let start = Instant::now();
        for _ in 0..12 {
            l.acquire(CREATE).await;
        }
        // 2 at once, then 10 more at 100 ms each.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1000) && took < Duration::from_millis(1100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_ceiling_holds_for_all_operations_together() {
        let l = AdaptiveLimiter::new(LimiterConfig { max_rate: 10.0, burst: 2, ..Default::default() });
        let start = Instant::now();
        for i in 0..12 {
            l.acquire(Operation::ALL[i % Operation::ALL.len()]).await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1000) && took < Duration::from_millis(1100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_and_success_recovers_it_slowly() {
        let l = AdaptiveLimiter::new(LimiterConfig { max_rate: 8.0, min_rate: 1.0, burst: 1, recovery_step: 0.5 });
        l.record(CREATE, &throttled());
        assert_eq!(l.rate_of(CREATE), 4.0);
        l.record(CREATE, &throttled());
        l.record(CREATE, &throttled());
        l.record(CREATE, &throttled());
        assert_eq!(l.rate_of(CREATE), 1.0, "never below the floor");
        assert_eq!(l.rate(), 1.0, "the lowest of any operation");
        l.record(CREATE, &Ok::<(), ApiError>(()));
        assert_eq!(l.rate_of(CREATE), 1.5);
        for _ in 0..100 {
            l.record(CREATE, &Ok::<(), ApiError>(()));
        }
        assert_eq!(l.rate_of(CREATE), 8.0, "never above the ceiling");
        assert_eq!((l.throttled(), l.throttled_of(CREATE)), (4, 4));
        l.record(Operation::CreateAccessPoint, &throttled());
        let mut registry = Registry::default();
        l.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"efs_throttled_requests_total{operation="CreateFileSystem"} 4"#), "{text}");
        assert!(text.contains(r#"efs_throttled_requests_total{operation="CreateAccessPoint"} 1"#), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn after_throttling_the_next_request_of_that_operation_waits() {
        let l = AdaptiveLimiter::new(LimiterConfig { max_rate: 10.0, min_rate: 0.5, burst: 5, recovery_step: 0.0 });
        l.acquire(CREATE).await;
        l.record(CREATE, &throttled());
        let start = Instant::now();
        l.acquire(CREATE).await;
        assert!(start.elapsed() >= Duration::from_millis(200), "waited {:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_one_operation_does_not_slow_another() {
        let l = AdaptiveLimiter::new(LimiterConfig { max_rate: 10.0, min_rate: 0.2, burst: 1, recovery_step: 0.0 });
        for _ in 0..5 {
            l.acquire(Operation::CreateAccessPoint).await;
            l.record(Operation::CreateAccessPoint, &throttled());
        }
        assert!(l.rate_of(Operation::CreateAccessPoint) < 0.5);
        assert_eq!(l.rate_of(Operation::DescribeFileSystems), 10.0);
        let start = Instant::now();
        for _ in 0..10 {
            l.acquire(Operation::DescribeFileSystems).await;
            l.record(Operation::DescribeFileSystems, &Ok::<(), ApiError>(()));
        }
        assert!(start.elapsed() < Duration::from_millis(1100), "at the ceiling: {:?}", start.elapsed());
    }
}
