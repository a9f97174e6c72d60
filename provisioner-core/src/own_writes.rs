//! The engine's memory of its own writes, so that it never acts on a cache
//! that has not caught up with them. Pure bookkeeping, no I/O.
//!
//! For every key (a PV name) it records what the engine's last write to the
//! claim and to the volume produced: a resourceVersion, or the object's
//! deletion. A pass over the key waits until the cache shows that state.
//! Watch events arrive in order, so once the event of the write has arrived,
//! every later state is newer than the write, whoever else wrote in between.
//! (Remembering only the states a write *replaced* is not enough: another
//! writer's change in between, such as the PV protection controller removing
//! its finalizer during every delete, shows the cache a state the engine has
//! not seen, which is just as outdated.)
//!
//! A write's own watch event can overtake its HTTP response, so events that
//! arrive while a write is on its way are kept and checked when the response
//! comes.

use std::collections::HashMap;
use std::time::Duration;

use kube::Resource;
use tokio::time::Instant;

/// How long an awaited state may hold back a key before it is given up (a
/// watch that lags this much has other problems; acting is then safer than
/// waiting forever).
pub(crate) const AWAIT_LIMIT: Duration = Duration::from_secs(60);

/// Which object of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Claim,
    Volume,
}

/// The state an own write produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// The object at this resourceVersion.
    Version(String),
    /// The object deleted.
    Gone,
}

impl Expect {
    /// The state a write produced, from the object the API server returned.
    /// A write that removed the last finalizer of an object being deleted
    /// deleted it; the object returned then still carries an older version.
    pub(crate) fn of_write<K: Resource>(returned: &K) -> Option<Expect> {
        let meta = returned.meta();
        if meta.deletion_timestamp.is_some() && meta.finalizers.as_ref().is_none_or(|f| f.is_empty()) {
            return Some(Expect::Gone);
        }
        meta.resource_version.clone().map(Expect::Version)
    }

    /// Whether the cache, holding the object at `cached` (`None`: absent),
    /// shows exactly the written state.
    fn shown_by(&self, cached: Option<&str>) -> bool {
        match (self, cached) {
            (Expect::Gone, None) => true,
            (Expect::Version(want), Some(rv)) => want == rv,
            _ => false,
        }
    }

    /// Whether a watch event (a resourceVersion, or `None` for a deletion)
    /// brings the cache to the written state or past it.
    fn reached_by(&self, event: Option<&str>) -> bool {
        match (self, event) {
            // The object existed when it was written; any deletion comes after.
            (_, None) => true,
            (Expect::Version(want), Some(rv)) => want == rv,
            (Expect::Gone, Some(_)) => false,
        }
    }
}

#[derive(Debug, Default)]
enum Slot {
    #[default]
    Free,
    /// A write is on its way; the watch events that arrived meanwhile.
    Writing(Vec<Option<String>>),
    /// The cache has not shown the write's result yet.
    Awaiting(Expect),
}

#[derive(Debug, Default)]
struct KeyWrites {
    claim: Slot,
    volume: Slot,
    since: Option<Instant>,
    /// A pass found the cache behind and did nothing: it must run again
    /// once the cache has caught up (the awaited event may be an echo, which
    /// queues nothing by itself).
    deferred: bool,
}

impl KeyWrites {
    fn slot(&mut self, side: Side) -> &mut Slot {
        match side {
            Side::Claim => &mut self.claim,
            Side::Volume => &mut self.volume,
        }
    }

    fn settled(&self) -> bool {
        matches!((&self.claim, &self.volume), (Slot::Free, Slot::Free))
    }
}

/// The engine's own writes, by key. Methods that answer `true` mean: queue
/// the key again, a pass was held back and may now run.
#[derive(Debug, Default)]
pub(crate) struct OwnWrites {
    keys: HashMap<String, KeyWrites>,
}

impl OwnWrites {
    /// A write to the claim or volume of `key` is about to be sent.
    pub(crate) fn writing(&mut self, key: &str, side: Side) {
        *self.keys.entry(key.to_string()).or_default().slot(side) = Slot::Writing(Vec::new());
    }

    /// The write announced by [`writing`](OwnWrites::writing) produced
    /// `expect` (`None`: nothing to wait for, as after a failed write).
    pub(crate) fn wrote(&mut self, key: &str, side: Side, expect: Option<Expect>, now: Instant) -> bool {
        let writes = self.keys.entry(key.to_string()).or_default();
        let seen = match std::mem::take(writes.slot(side)) {
            Slot::Writing(seen) => seen,
            _ => Vec::new(),
        };
        if let Some(expect) = expect
            && !seen.iter().any(|rv| expect.reached_by(rv.as_deref()))
        {
            *writes.slot(side) = Slot::Awaiting(expect);
            writes.since = Some(now);
        }
        self.settle(key)
    }

    /// The watch delivered a state of the claim or volume of `key`: its
    /// resourceVersion, or `None` for a deletion.
    pub(crate) fn observed(&mut self, key: &str, side: Side, rv: Option<&str>) -> bool {
        let Some(writes) = self.keys.get_mut(key) else { return false };
        let slot = writes.slot(side);
        match slot {
            Slot::Free => false,
            Slot::Writing(seen) => {
                seen.push(rv.map(str::to_string));
                false
            }
            Slot::Awaiting(expect) => {
                if expect.reached_by(rv) {
                    *slot = Slot::Free;
                    self.settle(key)
                } else {
                    false
                }
            }
        }
    }

    /// A re-list that started at `started` replaced the `side` cache: it
    /// shows every write that had finished by then, and the individual
    /// events of those writes may never come. Returns the keys to queue.
    pub(crate) fn relisted(&mut self, side: Side, started: Instant) -> Vec<String> {
        let mut requeue = Vec::new();
        let keys: Vec<String> = self.keys.keys().cloned().collect();
        for key in keys {
            let Some(writes) = self.keys.get_mut(&key) else { continue };
            if writes.since.is_some_and(|t| t <= started) && matches!(writes.slot(side), Slot::Awaiting(_)) {
                *writes.slot(side) = Slot::Free;
                if self.settle(&key) {
                    requeue.push(key);
                }
            }
        }
        requeue
    }

    /// A pass over `key` ended: a write whose result it did not record failed.
    pub(crate) fn pass_ended(&mut self, key: &str) -> bool {
        let Some(writes) = self.keys.get_mut(key) else { return false };
        for side in [Side::Claim, Side::Volume] {
            if matches!(writes.slot(side), Slot::Writing(_)) {
                *writes.slot(side) = Slot::Free;
            }
        }
        self.settle(key)
    }

    /// Whether a pass over `key` must wait because the cache (holding the
    /// claim and the volume at these resourceVersions, `None`: absent) has
    /// not shown the engine's last writes yet; then for how long at most.
    pub(crate) fn behind(
        &mut self,
        key: &str,
        claim: Option<&str>,
        volume: Option<&str>,
        now: Instant,
    ) -> Option<Duration> {
        let writes = self.keys.get_mut(key)?;
        let waited = writes.since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let shown = |slot: &Slot, cached: Option<&str>| match slot {
            Slot::Awaiting(expect) => expect.shown_by(cached),
            _ => true,
        };
        if waited >= AWAIT_LIMIT || (shown(&writes.claim, claim) && shown(&writes.volume, volume)) {
            self.keys.remove(key);
            return None;
        }
        writes.deferred = true;
        Some(AWAIT_LIMIT - waited)
    }

    /// Forgets `key` once nothing is awaited; whether a held-back pass must run.
    fn settle(&mut self, key: &str) -> bool {
        if self.keys.get(key).is_some_and(KeyWrites::settled) {
            return self.keys.remove(key).is_some_and(|w| w.deferred);
        }
        false
    }

    /// Keys with something awaited (for tests and debugging).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PersistentVolume;
    use kube::api::ObjectMeta;

    const KEY: &str = "pvc-1";

    fn v(rv: &str) -> Option<Expect> {
        Some(Expect::Version(rv.to_string()))
    }

    #[test]
    fn a_pass_waits_until_the_cache_shows_the_write_and_then_runs_again() {
        let now = Instant::now();
        let mut w = OwnWrites::default();
        w.writing(KEY, Side::Volume);
        assert!(!w.wrote(KEY, Side::Volume, v("10"), now));
        assert!(w.behind(KEY, None, None, now).is_some(), "the created volume is not in the cache yet");
        assert!(w.observed(KEY, Side::Volume, Some("10")), "the held-back pass runs again");
        assert_eq!(w.behind(KEY, None, Some("10"), now), None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn another_writers_state_before_the_write_reaches_the_cache_is_still_behind() {
        // The engine deletes a PV (10 -> 11), the PV protection controller
        // drops its finalizer (12), the engine drops its own and the PV goes.
        let now = Instant::now();
        let mut w = OwnWrites::default();
        w.writing(KEY, Side::Volume);
        w.wrote(KEY, Side::Volume, v("11"), now);
        w.writing(KEY, Side::Volume);
        w.wrote(KEY, Side::Volume, Some(Expect::Gone), now);
        w.observed(KEY, Side::Volume, Some("11"));
        w.observed(KEY, Side::Volume, Some("12"));
        assert!(w.behind(KEY, None, Some("12"), now).is_some(), "12 still shows the engine's finalizer");
        assert!(w.observed(KEY, Side::Volume, None));
        assert_eq!(w.behind(KEY, None, None, now), None);
    }

    #[test]
    fn an_event_that_overtakes_the_response_of_its_write_counts() {
        let now = Instant::now();
        let mut w = OwnWrites::default();
        w.writing(KEY, Side::Claim);
        w.observed(KEY, Side::Claim, Some("7"));
        assert!(!w.wrote(KEY, Side::Claim, v("7"), now));
        assert_eq!(w.behind(KEY, Some("8"), None, now), None, "7 passed already: 8 is newer");
    }

    #[test]
    fn a_deletion_that_overtakes_the_response_counts_for_any_write() {
        let now = Instant::now();
        let mut w = OwnWrites::default();
        w.writing(KEY, Side::Claim);
        w.observed(KEY, Side::Claim, None);
        w.wrote(KEY, Side::Claim, v("7"), now);
        assert_eq!(w.behind(KEY, None, None, now), None);
    }

    #[test]
    fn a_failed_write_awaits_nothing() {
        let now = Instant::now();
        let mut w = OwnWrites::default();
        w.writing(KEY, Side::Claim);
        assert!(!w.pass_ended(KEY));
        assert_eq!(w.behind(KEY, Some("1"), None, now), None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_relist_shows_writes_that_finished_before_it() {
        let now = Instant::now();
        let mut w = OwnWrites::default();
        w.writing(KEY, Side::Volume);
        w.wrote(KEY, Side::Volume, v("5"), now);
        assert!(w.behind(KEY, None, None, now).is_some());
        assert!(w.relisted(Side::Claim, now + Duration::from_secs(1)).is_empty(), "another kind's re-list");
        assert_eq!(w.relisted(Side::Volume, now + Duration::from_secs(1)), vec![KEY.to_string()]);
        assert_eq!(w.behind(KEY, None, Some("9"), now), None);
    }

    #[test]
    fn a_cache_that_never_catches_up_holds_a_key_back_for_a_limited_time() {
        let now = Instant::now();
        let mut w = OwnWrites::default();
        w.writing(KEY, Side::Volume);
        w.wrote(KEY, Side::Volume, v("5"), now);
        assert_eq!(w.behind(KEY, None, Some("4"), now + Duration::from_secs(20)), Some(Duration::from_secs(40)));
        assert_eq!(w.behind(KEY, None, Some("4"), now + AWAIT_LIMIT), None);
    }

    #[test]
    fn removing_the_last_finalizer_of_a_deleted_object_awaits_its_absence() {
        let meta = |finalizers: Vec<&str>| ObjectMeta {
            resource_version: Some("3".into()),
            deletion_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default())),
            finalizers: Some(finalizers.into_iter().map(String::from).collect()),
            ..Default::default()
        };
        let gone = PersistentVolume { metadata: meta(vec![]), ..Default::default() };
        assert_eq!(Expect::of_write(&gone), Some(Expect::Gone));
        let held = PersistentVolume { metadata: meta(vec!["kubernetes.io/pv-protection"]), ..Default::default() };
        assert_eq!(Expect::of_write(&held), v("3"));
    }
}
