//! A Kubernetes client with a request rate limit (`--kube-api-qps`,
//! `--kube-api-burst`) and per-kind request counts, as a tower layer under
//! `kube::Client`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use provisioner_core::client::{ApiRate, build_client};
//! let config = kube::Config::infer().await?;
//! let (client, counts) = build_client(config, Some(ApiRate { qps: 50.0, burst: 100 }))?;
//! let _ = client.apiserver_version().await?;
//! println!("reads so far: {}", counts.reads());
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request};
use kube::client::ClientBuilder;
use kube::{Client, Config};
use std::future::Future;
use std::pin::Pin;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// Client-side request rate: a token bucket refilled at `qps` holding up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApiRate {
    /// Sustained requests per second.
    pub qps: f64,
    /// Requests that may go at once after a quiet period.
    pub burst: u32,
}

/// Requests sent so far, by kind. Shared by all clones of a client.
#[derive(Debug, Default)]
pub struct RequestCounts {
    reads: AtomicU64,
    writes: AtomicU64,
    watches: AtomicU64,
}

impl RequestCounts {
    /// GET requests (gets and lists), not counting watches.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
    /// POST, PUT, PATCH and DELETE requests.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    /// Watch requests started.
    pub fn watches(&self) -> u64 {
        self.watches.load(Ordering::Relaxed)
    }
    fn record(&self, method: &Method, query: Option<&str>) {
        let counter = if method == Method::GET {
            if query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1")) {
                &self.watches
            } else {
                &self.reads
            }
        } else {
            &self.writes
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A token bucket: the client's request pacing, and the event lane's.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: ApiRate,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket for `rate`.
    pub(crate) fn new(rate: ApiRate) -> Self {
        Bucket { rate, tokens: f64::from(rate.burst.max(1)), last: Instant::now() }
    }

    /// Takes a token, returning how long the caller must wait for it.
    pub(crate) fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate.qps).min(f64::from(self.rate.burst.max(1)));
        self.tokens -= 1.0;
        if self.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.tokens / self.rate.qps) }
    }
}

/// The tower layer: counts every request and, with a rate, paces them.
#[derive(Clone, Debug)]
pub struct ApiLayer {
    bucket: Option<Arc<Mutex<Bucket>>>,
    counts: Arc<RequestCounts>,
}

impl ApiLayer {
    /// A layer pacing requests at `rate` (none: unlimited).
    pub fn new(rate: Option<ApiRate>) -> Self {
        let bucket = rate.filter(|r| r.qps > 0.0).map(|rate| Arc::new(Mutex::new(Bucket::new(rate))));
        ApiLayer { bucket, counts: Arc::default() }
    }
    /// The counts of requests that went through this layer.
    pub fn counts(&self) -> Arc<RequestCounts> {
        self.counts.clone()
    }
}

impl<S> Layer<S> for ApiLayer {
    type Service = ApiService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiService { inner, layer: self.clone(), pause: None, permitted: false }
    }
}

/// The service [`ApiLayer`] wraps around the client's transport. The client
/// sends through it one request at a time (kube's buffer), so pacing in
/// `poll_ready` paces every request in order.
pub struct ApiService<S> {
    inner: S,
    layer: ApiLayer,
    pause: Option<Pin<Box<Sleep>>>,
    permitted: bool,
}

impl<S, B> Service<Request<B>> for ApiService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.permitted {
            if self.pause.is_none() {
                let wait = match &self.layer.bucket {
                    Some(b) => b.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now()),
                    None => Duration::ZERO,
                };
                if !wait.is_zero() {
                    self.pause = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
            if let Some(pause) = self.pause.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
            }
            self.permitted = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.permitted = false;
        self.layer.counts.record(req.method(), req.uri().query());
        self.inner.call(req)
    }
}

/// Builds a client for `config` with an optional request rate, and returns
/// the request counts alongside.
pub fn build_client(config: Config, rate: Option<ApiRate>) -> Result<(Client, Arc<RequestCounts>), kube::Error> {
    let layer = ApiLayer::new(rate);
    let counts = layer.counts();
    let client = ClientBuilder::try_from(config)?.with_layer(&layer).build();
    Ok((client, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_lets_a_burst_through_then_paces_at_qps() {
        let mut b = Bucket { rate: ApiRate { qps: 10.0, burst: 3 }, tokens: 3.0, last: Instant::now() };
        let now = Instant::now();
        let waits: Vec<_> = (0..5).map(|_| b.take(now).as_millis()).collect();
        assert_eq!(waits, vec![0, 0, 0, 100, 200]);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_refill_over_time_up_to_the_burst() {
        let mut b = Bucket { rate: ApiRate { qps: 10.0, burst: 2 }, tokens: 0.0, last: Instant::now() };
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(b.take(later), Duration::ZERO);
        assert_eq!(b.take(later), Duration::ZERO);
        assert_eq!(b.take(later), Duration::from_millis(100));
    }

    #[test]
    fn requests_are_counted_by_kind() {
        let c = RequestCounts::default();
        c.record(&Method::GET, Some("watch=true&resourceVersion=1"));
        c.record(&Method::GET, Some("limit=500"));
        c.record(&Method::GET, None);
        c.record(&Method::POST, None);
        c.record(&Method::PATCH, None);
        c.record(&Method::DELETE, None);
        assert_eq!((c.watches(), c.reads(), c.writes()), (1, 2, 3));
    }
}
