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

#[derive(Clone, Debug, Default)]
enum Slot {
    #[default]
    Free,
    /// A write is on its way; the watch events that arrived meanwhile.
    Writing(Vec<Option<String>>),
    /// The cache has not shown the write's result yet.
    Awaiting(Expect),
}

/// The engine's own writes to one volume's claim and volume, kept in the
/// volume's memory record ([`crate::memory::Memory`]). Methods that answer
/// `true` mean: queue the key again, a pass was held back and may now run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Writes {
    claim: Slot,
    volume: Slot,
    since: Option<Instant>,
    /// A pass found the cache behind and did nothing: it must run again
    /// once the cache has caught up (the awaited event may be an echo, which
    /// queues nothing by itself).
    deferred: bool,
}

impl Writes {
    fn slot(&mut self, side: Side) -> &mut Slot {
        match side {
            Side::Claim => &mut self.claim,
            Side::Volume => &mut self.volume,
        }
    }

    fn settled(&self) -> bool {
        matches!((&self.claim, &self.volume), (Slot::Free, Slot::Free))
    }

    /// Nothing written, nothing awaited, nothing held back.
    pub(crate) fn is_idle(&self) -> bool {
        self.settled() && self.since.is_none() && !self.deferred
    }

    /// A write to the claim or volume is about to be sent.
    pub(crate) fn writing(&mut self, side: Side) {
        *self.slot(side) = Slot::Writing(Vec::new());
    }

    /// The write announced by [`writing`](Writes::writing) produced
    /// `expect` (`None`: nothing to wait for, as after a failed write).
    pub(crate) fn wrote(&mut self, side: Side, expect: Option<Expect>, now: Instant) -> bool {
        let seen = match std::mem::take(self.slot(side)) {
            Slot::Writing(seen) => seen,
            _ => Vec::new(),
        };
        if let Some(expect) = expect
            && !seen.iter().any(|rv| expect.reached_by(rv.as_deref()))
        {
            *self.slot(side) = Slot::Awaiting(expect);
            self.since = Some(now);
        }
        self.settle()
    }

    /// The watch delivered a state of the claim or volume: its
    /// resourceVersion, or `None` for a deletion.
    pub(crate) fn observed(&mut self, side: Side, rv: Option<&str>) -> bool {
        let slot = self.slot(side);
        match slot {
            Slot::Free => false,
            Slot::Writing(seen) => {
                seen.push(rv.map(str::to_string));
                false
            }
            Slot::Awaiting(expect) => {
                if expect.reached_by(rv) {
                    *slot = Slot::Free;
                    self.settle()
                } else {
                    false
                }
            }
        }
    }

    /// A re-list that started at `started` replaced the `side` cache: it
    /// shows every write that had finished by then, and the individual
    /// events of those writes may never come.
    pub(crate) fn relisted(&mut self, side: Side, started: Instant) -> bool {
        if self.since.is_some_and(|t| t <= started) && matches!(self.slot(side), Slot::Awaiting(_)) {
            *self.slot(side) = Slot::Free;
            return self.settle();
        }
        false
    }

    /// A pass ended: a write whose result it did not record failed.
    pub(crate) fn pass_ended(&mut self) -> bool {
        for side in [Side::Claim, Side::Volume] {
            if matches!(self.slot(side), Slot::Writing(_)) {
                *self.slot(side) = Slot::Free;
            }
        }
        self.settle()
    }

    /// Whether a pass must wait because the cache (holding the claim and the
    /// volume at these resourceVersions, `None`: absent) has not shown the
    /// engine's last writes yet; then for how long at most.
    pub(crate) fn behind(&mut self, claim: Option<&str>, volume: Option<&str>, now: Instant) -> Option<Duration> {
        if self.is_idle() {
            return None;
        }
        let waited = self.since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let shown = |slot: &Slot, cached: Option<&str>| match slot {
            Slot::Awaiting(expect) => expect.shown_by(cached),
            _ => true,
        };
        if waited >= AWAIT_LIMIT || (shown(&self.claim, claim) && shown(&self.volume, volume)) {
            *self = Writes::default();
            return None;
        }
        self.deferred = true;
        Some(AWAIT_LIMIT - waited)
    }

    /// Forgets everything once nothing is awaited; whether a held-back pass must run.
    fn settle(&mut self) -> bool {
        if self.settled() {
            return std::mem::take(self).deferred;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PersistentVolume;
    use kube::api::ObjectMeta;

    fn v(rv: &str) -> Option<Expect> {
        Some(Expect::Version(rv.to_string()))
    }

    #[test]
    fn a_pass_waits_until_the_cache_shows_the_write_and_then_runs_again() {
        let now = Instant::now();
        let mut w = Writes::default();
        w.writing(Side::Volume);
        assert!(!w.wrote(Side::Volume, v("10"), now));
        assert!(w.behind(None, None, now).is_some(), "the created volume is not in the cache yet");
        assert!(w.observed(Side::Volume, Some("10")), "the held-back pass runs again");
        assert_eq!(w.behind(None, Some("10"), now), None);
        assert!(w.is_idle());
    }

    #[test]
    fn another_writers_state_before_the_write_reaches_the_cache_is_still_behind() {
        // The engine deletes a PV (10 -> 11), the PV protection controller
        // drops its finalizer (12), the engine drops its own and the PV goes.
        let now = Instant::now();
        let mut w = Writes::default();
        w.writing(Side::Volume);
        w.wrote(Side::Volume, v("11"), now);
        w.writing(Side::Volume);
        w.wrote(Side::Volume, Some(Expect::Gone), now);
        w.observed(Side::Volume, Some("11"));
        w.observed(Side::Volume, Some("12"));
        assert!(w.behind(None, Some("12"), now).is_some(), "12 still shows the engine's finalizer");
        assert!(w.observed(Side::Volume, None));
        assert_eq!(w.behind(None, None, now), None);
    }

    #[test]
    fn an_event_that_overtakes_the_response_of_its_write_counts() {
        let now = Instant::now();
        let mut w = Writes::default();
        w.writing(Side::Claim);
        w.observed(Side::Claim, Some("7"));
        assert!(!w.wrote(Side::Claim, v("7"), now));
        assert_eq!(w.behind(Some("8"), None, now), None, "7 passed already: 8 is newer");
    }

    #[test]
    fn a_deletion_that_overtakes_the_response_counts_for_any_write() {
        let now = Instant::now();
        let mut w = Writes::default();
        w.writing(Side::Claim);
        w.observed(Side::Claim, None);
        w.wrote(Side::Claim, v("7"), now);
        assert_eq!(w.behind(None, None, now), None);
    }

    #[test]
    fn a_failed_write_awaits_nothing() {
        let now = Instant::now();
        let mut w = Writes::default();
        w.writing(Side::Claim);
        assert!(!w.pass_ended());
        assert_eq!(w.behind(Some("1"), None, now), None);
        assert!(w.is_idle());
    }

    #[test]
    fn a_relist_shows_writes_that_finished_before_it() {
        let now = Instant::now();
        let mut w = Writes::default();
        w.writing(Side::Volume);
        w.wrote(Side::Volume, v("5"), now);
        assert!(w.behind(None, None, now).is_some());
        assert!(!w.relisted(Side::Claim, now + Duration::from_secs(1)), "another kind's re-list");
        assert!(w.relisted(Side::Volume, now + Duration::from_secs(1)));
        assert_eq!(w.behind(None, Some("9"), now), None);
    }

    #[test]
    fn a_cache_that_never_catches_up_holds_a_key_back_for_a_limited_time() {
        let now = Instant::now();
        let mut w = Writes::default();
        w.writing(Side::Volume);
        w.wrote(Side::Volume, v("5"), now);
        assert_eq!(w.behind(None, Some("4"), now + Duration::from_secs(20)), Some(Duration::from_secs(40)));
        assert_eq!(w.behind(None, Some("4"), now + AWAIT_LIMIT), None);
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
