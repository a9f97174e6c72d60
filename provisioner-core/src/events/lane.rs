//! Events on their own lane: a bounded queue drained by one task at a rate
//! of its own, so that events never wait for, nor take from, the requests
//! that provision and delete volumes.
//!
//! - Warnings go before Normal events.
//! - An event identical to one already waiting (same object, type, reason
//!   and message) is coalesced into it: the recorder's series count would
//!   only have grown.
//! - When the queue is full, a Normal event is dropped; a Warning takes the
//!   place of the oldest waiting Normal event, or is dropped when only
//!   Warnings wait. Every drop and every coalesced event is counted
//!   ([`LaneCounts`], exported as metrics), never silent.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{EventRecorder, EventType};
use crate::client::{ApiRate, Bucket};

/// One event waiting to be published.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Pending {
    pub regarding: ObjectReference,
    pub type_: EventType,
    pub reason: String,
    pub action: String,
    pub note: String,
}

impl Pending {
    fn key(&self) -> (String, String, EventType, String, String) {
        let r = &self.regarding;
        (
            r.uid.clone().unwrap_or_else(|| format!("{:?}/{:?}", r.namespace, r.name)),
            r.kind.clone().unwrap_or_default(),
            self.type_,
            self.reason.clone(),
            self.note.clone(),
        )
    }
}

/// What became of an event offered to the lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Waiting to be published.
    Queued,
    /// The same event already waits.
    Coalesced,
    /// Queued, and the oldest waiting Normal event was dropped for it.
    QueuedDroppingNormal,
    /// Dropped: the queue is full.
    Dropped,
}

/// The lane's queue: pure, no I/O.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    capacity: usize,
    warnings: VecDeque<Pending>,
    normals: VecDeque<Pending>,
    waiting: HashSet<(String, String, EventType, String, String)>,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Queue { capacity: capacity.max(1), ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.warnings.len() + self.normals.len()
    }

    pub fn offer(&mut self, event: Pending) -> Offered {
        let key = event.key();
        if self.waiting.contains(&key) {
            return Offered::Coalesced;
        }
        let mut outcome = Offered::Queued;
        if self.len() >= self.capacity {
            if event.type_ == EventType::Normal {
                return Offered::Dropped;
            }
            match self.normals.pop_front() {
                Some(old) => {
                    self.waiting.remove(&old.key());
                    outcome = Offered::QueuedDroppingNormal;
                }
                None => return Offered::Dropped,
            }
        }
        self.waiting.insert(key);
        match event.type_ {
            EventType::Warning => self.warnings.push_back(event),
            EventType::Normal => self.normals.push_back(event),
        }
        outcome
    }

    /// The next event to publish: the oldest Warning, else the oldest Normal event.
    pub fn next(&mut self) -> Option<Pending> {
        let event = self.warnings.pop_front().or_else(|| self.normals.pop_front())?;
        self.waiting.remove(&event.key());
        Some(event)
    }
}

/// What the lane did, as metrics (clones of registered counters share them).
#[derive(Clone, Debug, Default)]
pub(crate) struct LaneCounts {
    /// Published, by type: `[Normal, Warning]`.
    pub published: [Counter; 2],
    /// Dropped, by type: `[Normal, Warning]`.
    pub dropped: [Counter; 2],
    /// The API server refused or did not answer.
    pub failed: Counter,
    /// Coalesced into an identical waiting event.
    pub coalesced: Counter,
    /// Events waiting.
    pub waiting: Gauge,
}

fn slot(t: EventType) -> usize {
    match t {
        EventType::Normal => 0,
        EventType::Warning => 1,
    }
}

/// The lane: clones share one queue.
#[derive(Clone)]
pub(crate) struct EventLane {
    queue: Arc<Mutex<Queue>>,
    ready: Arc<Notify>,
    /// Set while an event taken from the queue is being published.
    busy: Arc<std::sync::atomic::AtomicBool>,
    /// Woken whenever the lane becomes idle (nothing waiting, nothing in flight).
    idle: Arc<Notify>,
    counts: LaneCounts,
}

impl EventLane {
    /// A lane holding at most `capacity` waiting events, counting into `counts`.
    pub fn new(capacity: usize, counts: LaneCounts) -> Self {
        EventLane {
            queue: Arc::new(Mutex::new(Queue::new(capacity))),
            ready: Arc::new(Notify::new()),
            busy: Arc::default(),
            idle: Arc::new(Notify::new()),
            counts,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no event waits and none is being published.
    pub fn is_idle(&self) -> bool {
        // The queue's lock orders this with `run` taking an event and setting `busy`.
        let q = self.queue();
        q.len() == 0 && !self.busy.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once the lane is idle.
    pub async fn flushed(&self) {
        loop {
            let woken = self.idle.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_idle() {
                return;
            }
            woken.await;
        }
    }

    /// Offers an event; never waits.
    pub fn offer(&self, event: Pending) -> Offered {
        let type_ = event.type_;
        let (outcome, len) = {
            let mut q = self.queue();
            let outcome = q.offer(event);
            (outcome, q.len())
        };
        match outcome {
            Offered::Queued => {}
            Offered::Coalesced => {
                self.counts.coalesced.inc();
            }
            Offered::QueuedDroppingNormal => {
                self.counts.dropped[slot(EventType::Normal)].inc();
            }
            Offered::Dropped => {
                self.counts.dropped[slot(type_)].inc();
            }
        }
        self.counts.waiting.set(len as i64);
        if matches!(outcome, Offered::Queued | Offered::QueuedDroppingNormal) {
            self.ready.notify_one();
        }
        outcome
    }

    /// Publishes waiting events through `recorder`, paced at `rate` (none:
    /// as fast as the API server answers), until `stop`. Events still
    /// waiting then are counted as dropped.
    pub async fn run(self, recorder: EventRecorder, rate: Option<ApiRate>, stop: CancellationToken) {
        let mut pace = rate.filter(|r| r.qps > 0.0).map(Bucket::new);
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let next = {
                let mut q = self.queue();
                let next = q.next();
                self.busy.store(next.is_some(), SeqCst);
                next
            };
            let Some(event) = next else {
                self.idle.notify_waiters();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = self.ready.notified() => continue,
                }
            };
            if let Some(p) = pace.as_mut() {
                let wait = p.take(Instant::now());
                if !wait.is_zero() {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            self.counts.dropped[slot(event.type_)].inc();
                            break;
                        }
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
            let published = tokio::select! {
                _ = stop.cancelled() => None,
                r = recorder.publish(&event.regarding, event.type_, &event.reason, &event.action, &event.note) => Some(r),
            };
            match published {
                None => {
                    self.counts.dropped[slot(event.type_)].inc();
                    break;
                }
                Some(Ok(())) => {
                    self.counts.published[slot(event.type_)].inc();
                }
                Some(Err(e)) => {
                    self.counts.failed.inc();
                    debug!(error = %e, reason = event.reason, "event not recorded");
                }
            }
            let len = self.queue().len();
            self.counts.waiting.set(len as i64);
        }
        let mut q = self.queue();
        self.busy.store(false, SeqCst);
        while let Some(e) = q.next() {
            self.counts.dropped[slot(e.type_)].inc();
        }
        self.counts.waiting.set(0);
        drop(q);
        self.idle.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, type_: EventType, note: &str) -> Pending {
        Pending {
            regarding: ObjectReference { uid: Some(name.into()), name: Some(name.into()), ..Default::default() },
            type_,
            reason: "Reason".into(),
            action: "Provision".into(),
            note: note.into(),
        }
    }

    #[test]
    fn warnings_are_published_before_normal_events() {
        let mut q = Queue::new(10);
        q.offer(event("a", EventType::Normal, "ok"));
        q.offer(event("b", EventType::Warning, "bad"));
        q.offer(event("c", EventType::Normal, "ok"));
        q.offer(event("d", EventType::Warning, "bad"));
        let order: Vec<_> = std::iter::from_fn(|| q.next()).map(|e| e.regarding.name.unwrap_or_default()).collect();
        assert_eq!(order, ["b", "d", "a", "c"]);
    }

    #[test]
    fn an_event_identical_to_a_waiting_one_is_coalesced() {
        let mut q = Queue::new(10);
        assert_eq!(q.offer(event("a", EventType::Warning, "x")), Offered::Queued);
        assert_eq!(q.offer(event("a", EventType::Warning, "x")), Offered::Coalesced);
        assert_eq!(q.offer(event("a", EventType::Warning, "y")), Offered::Queued, "another message is another event");
        assert_eq!(q.len(), 2);
        q.next();
        q.next();
        assert_eq!(q.offer(event("a", EventType::Warning, "x")), Offered::Queued, "once published, it may come again");
    }

    #[test]
    fn a_full_queue_drops_normal_events_and_makes_room_for_warnings() {
        let mut q = Queue::new(2);
        q.offer(event("n1", EventType::Normal, ""));
        q.offer(event("n2", EventType::Normal, ""));
        assert_eq!(q.offer(event("n3", EventType::Normal, "")), Offered::Dropped);
        assert_eq!(q.offer(event("w1", EventType::Warning, "")), Offered::QueuedDroppingNormal);
        assert_eq!(q.offer(event("w2", EventType::Warning, "")), Offered::QueuedDroppingNormal);
        assert_eq!(q.offer(event("w3", EventType::Warning, "")), Offered::Dropped, "only warnings wait");
        let order: Vec<_> = std::iter::from_fn(|| q.next()).map(|e| e.regarding.name.unwrap_or_default()).collect();
        assert_eq!(order, ["w1", "w2"]);
    }

    #[test]
    fn every_drop_and_coalesced_event_is_counted() {
        let lane = EventLane::new(1, LaneCounts::default());
        lane.offer(event("n1", EventType::Normal, ""));
        lane.offer(event("n1", EventType::Normal, ""));
        lane.offer(event("n2", EventType::Normal, ""));
        lane.offer(event("w1", EventType::Warning, ""));
        lane.offer(event("w2", EventType::Warning, ""));
        assert_eq!(lane.counts.coalesced.get(), 1);
        assert_eq!(lane.counts.dropped[slot(EventType::Normal)].get(), 2, "n2 refused, n1 evicted");
        assert_eq!(lane.counts.dropped[slot(EventType::Warning)].get(), 1, "w2 refused");
        assert_eq!(lane.counts.waiting.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lane_publishes_at_its_own_rate_and_drops_what_waits_at_stop() {
        use std::time::Duration;
        let cluster = crate::testing::FakeCluster::new();
        let recorder = EventRecorder::new(cluster.client(), "test", "test-1");
        let lane = EventLane::new(10, LaneCounts::default());
        for i in 0..4 {
            let mut e = event(&format!("e{i}"), EventType::Normal, "");
            e.regarding.namespace = Some("default".into());
            lane.offer(e);
        }
        let stop = CancellationToken::new();
        let run = tokio::spawn(lane.clone().run(recorder, Some(ApiRate { qps: 1.0, burst: 1 }), stop.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(lane.counts.published[0].get(), 1, "the burst of one at once");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(lane.counts.published[0].get(), 2, "then one per second");
        stop.cancel();
        run.await.expect("lane task");
        assert_eq!(lane.counts.dropped[0].get(), 2, "what still waited at stop is counted as dropped");
        assert!(lane.is_idle());
    }
}
