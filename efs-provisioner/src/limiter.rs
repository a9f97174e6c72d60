//! One adaptive rate limit for every EFS request the process makes, so that
//! throttling slows the whole provisioner down instead of failing claims.
//!
//! [`AdaptiveLimiter`] spaces requests at its current rate (with a small
//! burst). A throttled answer halves the rate (down to a floor) and pushes
//! the next slot out; every successful answer adds back a small step, so the
//! rate recovers slowly (additive increase, multiplicative decrease).
//! [`LimitedApi`] puts it in front of any [`EfsApi`].

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::api::{
    AccessPoint, AccessPointPage, ApiError, EfsApi, ErrorKind, FileSystem, FileSystemLookup, LifecycleRule,
    MountTarget, NewAccessPoint, NewFileSystem,
};

/// Settings of an [`AdaptiveLimiter`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterConfig {
    /// Requests per second when nothing is throttled (the ceiling).
    pub max_rate: f64,
    /// The floor the rate never drops below.
    pub min_rate: f64,
    /// How many requests may go at once after a quiet period.
    pub burst: u32,
    /// Requests per second added back per successful request.
    pub recovery_step: f64,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig { max_rate: 10.0, min_rate: 0.2, burst: 10, recovery_step: 0.05 }
    }
}

#[derive(Debug)]
struct State {
    rate: f64,
    /// Theoretical arrival time of the next request (GCRA).
    next: Instant,
    throttled: u64,
}

/// A shared, adaptive request rate limit (see the module docs).
#[derive(Debug)]
pub struct AdaptiveLimiter {
    config: LimiterConfig,
    state: Mutex<State>,
    throttled_total: Counter,
}

impl AdaptiveLimiter {
    /// A limiter starting at `config.max_rate`.
    pub fn new(config: LimiterConfig) -> Self {
        let config = LimiterConfig {
            max_rate: config.max_rate.max(config.min_rate).max(0.001),
            min_rate: config.min_rate.max(0.001),
            ..config
        };
        AdaptiveLimiter {
            config,
            state: Mutex::new(State { rate: config.max_rate, next: Instant::now(), throttled: 0 }),
            throttled_total: Counter::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current rate, in requests per second.
    pub fn rate(&self) -> f64 {
        self.state().rate
    }

    /// How many throttled answers were seen.
    pub fn throttled(&self) -> u64 {
        self.state().throttled
    }

    /// Registers `efs_throttled_requests_total` (throttled EFS answers) in
    /// `registry`, the figure the EFS throttling alert watches.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "efs_throttled_requests",
            "EFS answers that were throttling errors (each halves the request rate)",
            self.throttled_total.clone(),
        );
    }

    /// Waits for a slot for one request.
    pub async fn acquire(&self) {
        let at = {
            let mut s = self.state();
            let now = Instant::now();
            let interval = Duration::from_secs_f64(1.0 / s.rate);
            let tolerance = interval * self.config.burst.saturating_sub(1);
            let tat = s.next.max(now);
            s.next = tat + interval;
            tat.checked_sub(tolerance).map_or(now, |t| t.max(now))
        };
        tokio::time::sleep_until(at).await;
    }

    /// Feeds back how a request ended.
    pub fn record<T>(&self, result: &Result<T, ApiError>) {
        let mut s = self.state();
        match result {
            Err(e) if e.kind == ErrorKind::Throttled => {
                s.rate = (s.rate / 2.0).max(self.config.min_rate);
                s.throttled += 1;
                self.throttled_total.inc();
                // Empty the burst: nobody goes for a full interval of the new rate.
                let pause = Duration::from_secs_f64(1.0 / s.rate);
                s.next = s.next.max(Instant::now() + pause * self.config.burst.max(1));
            }
            Err(_) => {}
            Ok(_) => s.rate = (s.rate + self.config.recovery_step).min(self.config.max_rate),
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

    async fn call<T, F: std::future::Future<Output = Result<T, ApiError>>>(&self, f: F) -> Result<T, ApiError> {
        self.limiter.acquire().await;
        let r = f.await;
        self.limiter.record(&r);
        r
    }
}

#[async_trait]
impl<A: EfsApi> EfsApi for LimitedApi<A> {
    async fn create_file_system(&self, spec: &NewFileSystem) -> Result<FileSystem, ApiError> {
        self.call(self.inner.create_file_system(spec)).await
    }
    async fn describe_file_system(&self, lookup: &FileSystemLookup) -> Result<Option<FileSystem>, ApiError> {
        self.call(self.inner.describe_file_system(lookup)).await
    }
    async fn delete_file_system(&self, id: &str) -> Result<(), ApiError> {
        self.call(self.inner.delete_file_system(id)).await
    }
    async fn put_lifecycle_configuration(&self, id: &str, rules: &[LifecycleRule]) -> Result<(), ApiError> {
        self.call(self.inner.put_lifecycle_configuration(id, rules)).await
    }
    async fn create_mount_target(&self, id: &str, subnet: &str, sgs: &[String]) -> Result<MountTarget, ApiError> {
        self.call(self.inner.create_mount_target(id, subnet, sgs)).await
    }
    async fn describe_mount_targets(&self, id: &str) -> Result<Vec<MountTarget>, ApiError> {
        self.call(self.inner.describe_mount_targets(id)).await
    }
    async fn delete_mount_target(&self, id: &str) -> Result<(), ApiError> {
        self.call(self.inner.delete_mount_target(id)).await
    }
    async fn create_access_point(&self, spec: &NewAccessPoint) -> Result<AccessPoint, ApiError> {
        self.call(self.inner.create_access_point(spec)).await
    }
    async fn describe_access_points(
        &self,
        id: &str,
        next: Option<&str>,
        page_size: u32,
    ) -> Result<AccessPointPage, ApiError> {
        self.call(self.inner.describe_access_points(id, next, page_size)).await
    }
    async fn describe_access_point(&self, id: &str) -> Result<Option<AccessPoint>, ApiError> {
        self.call(self.inner.describe_access_point(id)).await
    }
    async fn delete_access_point(&self, id: &str) -> Result<(), ApiError> {
        self.call(self.inner.delete_access_point(id)).await
    }
    async fn tag_resource(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
        self.call(self.inner.tag_resource(id, tags)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Operation;

    fn throttled() -> Result<(), ApiError> {
        Err(ApiError::new(Operation::CreateFileSystem, ErrorKind::Throttled, "ThrottlingException", "slow down"))
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_at_the_rate_after_the_burst() {
        let l = AdaptiveLimiter::new(LimiterConfig { max_rate: 10.0, burst: 2, ..Default::default() });
        let start = Instant::now();
        for _ in 0..12 {
            l.acquire().await;
        }
        // 2 at once, then 10 more at 100 ms each.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1000) && took < Duration::from_millis(1100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_and_success_recovers_it_slowly() {
        let l = AdaptiveLimiter::new(LimiterConfig { max_rate: 8.0, min_rate: 1.0, burst: 1, recovery_step: 0.5 });
        l.record(&throttled());
        assert_eq!(l.rate(), 4.0);
        l.record(&throttled());
        l.record(&throttled());
        l.record(&throttled());
        assert_eq!(l.rate(), 1.0, "never below the floor");
        l.record(&Ok::<(), ApiError>(()));
        assert_eq!(l.rate(), 1.5);
        for _ in 0..100 {
            l.record(&Ok::<(), ApiError>(()));
        }
        assert_eq!(l.rate(), 8.0, "never above the ceiling");
        assert_eq!(l.throttled(), 4);
        let mut registry = Registry::default();
        l.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("efs_throttled_requests_total 4"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn after_throttling_the_next_request_waits() {
        let l = AdaptiveLimiter::new(LimiterConfig { max_rate: 10.0, min_rate: 0.5, burst: 5, recovery_step: 0.0 });
        l.acquire().await;
        l.record(&throttled());
        let start = Instant::now();
        l.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(200), "waited {:?}", start.elapsed());
    }
}
