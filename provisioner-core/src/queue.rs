//! A keyed work queue: each key is processed by at most one worker at a
//! time, a key added while it is being processed is processed again after,
//! and keys can be scheduled for later (backoff). Timers use tokio's clock,
//! so tests run under paused time.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
struct State {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    dirty: HashSet<String>,
    delayed: BTreeSet<(Instant, String)>,
    due: HashMap<String, Instant>,
    closed: bool,
}

impl State {
    fn push(&mut self, key: String) {
        if self.active.contains(&key) {
            self.dirty.insert(key);
        } else if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    fn promote_due(&mut self, now: Instant) {
        while let Some((at, _)) = self.delayed.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.delayed.pop_first() else { break };
            self.due.remove(&key);
            self.push(key);
        }
    }
}

/// The work queue shared by the watch tasks and the workers.
#[derive(Clone, Default)]
pub struct WorkQueue {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

impl WorkQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` now (a pending delayed entry for it is dropped).
    pub fn add(&self, key: &str) {
        let mut s = self.lock();
        if let Some(at) = s.due.remove(key) {
            s.delayed.remove(&(at, key.to_string()));
        }
        s.push(key.to_string());
        drop(s);
        self.wake.notify_one();
    }

    /// Queues `key` after `delay`, unless it is already due sooner.
    pub fn add_after(&self, key: &str, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let mut s = self.lock();
        if s.queued.contains(key) {
            return;
        }
        match s.due.get(key) {
            Some(existing) if *existing <= at => return,
            Some(existing) => {
                let existing = *existing;
                s.delayed.remove(&(existing, key.to_string()));
            }
            None => {}
        }
        s.due.insert(key.to_string(), at);
        s.delayed.insert((at, key.to_string()));
        drop(s);
        self.wake.notify_one();
    }

    /// Waits for the next key and marks it active; `None` once closed.
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registered before the state check, so no wake-up is lost.
            notified.as_mut().enable();
            let wait_until = {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                s.promote_due(Instant::now());
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    s.active.insert(key.clone());
                    let more = !s.ready.is_empty();
                    drop(s);
                    if more {
                        // Let another idle worker pick up the rest.
                        self.wake.notify_one();
                    }
                    return Some(key);
                }
                s.delayed.first().map(|(at, _)| *at)
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` finished; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &str) {
        let mut s = self.lock();
        s.active.remove(key);
        if s.dirty.remove(key) {
            s.push(key.to_string());
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Marks `key` finished and schedules it after `delay`. Changes seen
    /// while it was processed do not bring it back sooner: after a failure
    /// the backoff wins over the echo of the attempt's own writes.
    pub fn done_after(&self, key: &str, delay: Duration) {
        {
            let mut s = self.lock();
            s.active.remove(key);
            s.dirty.remove(key);
        }
        self.add_after(key, delay);
    }

    /// Keys waiting now (not counting delayed or active ones).
    pub fn ready_len(&self) -> usize {
        self.lock().ready.len()
    }

    /// Keys scheduled for later.
    pub fn delayed_len(&self) -> usize {
        self.lock().delayed.len()
    }

    /// Stops handing out keys: every waiting and future `next` returns
    /// `None` until [`reopen`](WorkQueue::reopen). Keys can still be added.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_waiters();
    }

    /// Hands out keys again after [`close`](WorkQueue::close).
    pub fn reopen(&self) {
        self.lock().closed = false;
        self.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_added_twice_is_processed_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        assert_eq!(q.next().await.as_deref(), Some("a"));
        assert_eq!(q.ready_len(), 0);
    }

    #[tokio::test]
    async fn a_key_added_while_active_runs_again_after_done() {
        let q = WorkQueue::new();
        q.add("a");
        let key = q.next().await.expect("key");
        q.add("a");
        assert_eq!(q.ready_len(), 0, "not handed to a second worker while active");
        q.done(&key);
        assert_eq!(q.next().await.as_deref(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_keys_arrive_after_their_delay() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.add_after("late", Duration::from_secs(30));
        q.add_after("early", Duration::from_secs(10));
        assert_eq!(q.next().await.as_deref(), Some("early"));
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(q.next().await.as_deref(), Some("late"));
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn adding_now_overrides_a_pending_delay() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(60));
        q.add("a");
        assert_eq!(q.next().await.as_deref(), Some("a"));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(q.delayed_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sooner_delay_replaces_a_later_one() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(60));
        q.add_after("a", Duration::from_secs(5));
        q.add_after("a", Duration::from_secs(90));
        assert_eq!(q.next().await.as_deref(), Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_key_waits_its_backoff_even_if_it_changed_meanwhile() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.add("a");
        let key = q.next().await.expect("key");
        q.add("a");
        q.done_after(&key, Duration::from_secs(3));
        assert_eq!(q.next().await.as_deref(), Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn close_wakes_waiting_workers() {
        let q = WorkQueue::new();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(waiter.await.expect("join"), None);
    }
}
