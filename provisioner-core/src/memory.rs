//! **Unstable**: public so that the rules can be read, tested and reused, but
//! not covered by semver before 1.0; build provisioners on the crate root.
//!
//! What the engine remembers about one volume between passes: one record per
//! PV name, beside the caches, read by [`crate::decision::decide`] and
//! written by the engine after each of its actions.
//!
//! The caches say what the cluster looks like; the memory says what this
//! process did that the cluster may not show yet (a volume the API server
//! did not take, a backend already deleted, a warning already given), so
//! that a retry or a lagging watch never repeats a backend call.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::PersistentVolume;
use tokio::time::Instant;

use crate::own_writes::{Side, Writes};

/// The engine's memory of one volume.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// The cache key (`namespace/name`) of the claim this volume belongs to.
    pub claim: Option<Box<str>>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// The volume the backend returned that the API server has not taken yet
    /// (a transient error): the retry saves it without asking the backend again.
    pub unsaved: Option<Box<PersistentVolume>>,
    /// This process saved the volume: it never asks the backend to provision
    /// it again, whatever a lagging cache shows.
    pub saved: bool,
    /// The uid of the PersistentVolume whose backend this process deleted:
    /// kept until neither claim nor volume exists (or a re-list shows the uid
    /// gone), so that a pass working from a snapshot taken before the PV's
    /// deletion never deletes the backend again.
    pub backend_deleted: Option<String>,
    /// The (claim, class) resourceVersions at which the engine gave up.
    pub given_up: Option<(String, String)>,
    /// The uid of the claim last refused with a warning (block, selector,
    /// data source): warned once, never again for the same claim.
    pub warned: Option<String>,
    /// The engine's own writes to the claim and the volume that the cache
    /// has not shown yet (read through the snapshot's `cache_stale`).
    pub(crate) writes: Writes,
}

impl Memory {
    /// Whether the backend of the PersistentVolume with `uid` was deleted by this process.
    ///
    /// ```
    /// use provisioner_core::memory::Memory;
    /// let mut m = Memory::default();
    /// m.backend_deleted = Some("u1".into());
    /// assert!(m.backend_deleted_for(Some("u1")));
    /// assert!(!m.backend_deleted_for(Some("u2")));
    /// assert!(!m.backend_deleted_for(None));
    /// ```
    pub fn backend_deleted_for(&self, uid: Option<&str>) -> bool {
        uid.is_some_and(|u| !u.is_empty() && self.backend_deleted.as_deref() == Some(u))
    }

    /// Whether the record holds nothing worth keeping.
    pub fn is_empty(&self) -> bool {
        let Memory { claim, failures, unsaved, saved, backend_deleted, given_up, warned, writes } = self;
        claim.is_none()
            && *failures == 0
            && unsaved.is_none()
            && !saved
            && backend_deleted.is_none()
            && given_up.is_none()
            && warned.is_none()
            && writes.is_idle()
    }
}

/// The memory of every volume, by PV name. Empty records are not kept.
#[derive(Debug, Default)]
pub(crate) struct Memories {
    volumes: HashMap<String, Memory>,
}

impl Memories {
    /// The record of `key` (a default one when there is none).
    pub(crate) fn get(&self, key: &str) -> Memory {
        self.volumes.get(key).cloned().unwrap_or_default()
    }

    /// Reads `key`'s record without copying it.
    pub(crate) fn peek<T>(&self, key: &str, f: impl FnOnce(Option<&Memory>) -> T) -> T {
        f(self.volumes.get(key))
    }

    /// Changes `key`'s record; an emptied record is dropped.
    pub(crate) fn update<T>(&mut self, key: &str, f: impl FnOnce(&mut Memory) -> T) -> T {
        let record = self.volumes.entry(key.to_string()).or_default();
        let out = f(record);
        if record.is_empty() {
            self.volumes.remove(key);
        }
        out
    }

    /// Forgets `key` entirely.
    pub(crate) fn forget(&mut self, key: &str) {
        self.volumes.remove(key);
    }

    /// Works on `key`'s own writes; an emptied record is dropped.
    pub(crate) fn writes<T>(&mut self, key: &str, f: impl FnOnce(&mut Writes) -> T) -> T {
        self.update(key, |m| f(&mut m.writes))
    }

    /// Works on `key`'s own writes if it has a record (`None` otherwise:
    /// nothing written, nothing awaited); an emptied record is dropped.
    pub(crate) fn existing_writes<T>(&mut self, key: &str, f: impl FnOnce(&mut Writes) -> T) -> Option<T> {
        let record = self.volumes.get_mut(key)?;
        let out = f(&mut record.writes);
        if record.is_empty() {
            self.volumes.remove(key);
        }
        Some(out)
    }

    /// A re-list that started at `started` replaced the `side` cache: the
    /// keys whose held-back pass may now run.
    pub(crate) fn relisted(&mut self, side: Side, started: Instant) -> Vec<String> {
        let mut requeue = Vec::new();
        self.volumes.retain(|key, m| {
            if m.writes.relisted(side, started) {
                requeue.push(key.clone());
            }
            !m.is_empty()
        });
        requeue
    }

    /// Keys whose record holds a volume the API server has not taken yet.
    pub(crate) fn unsaved_keys(&self) -> Vec<String> {
        self.volumes.iter().filter(|(_, m)| m.unsaved.is_some()).map(|(k, _)| k.clone()).collect()
    }

    /// Whether any record marks a deleted backend.
    pub(crate) fn any_backend_deleted(&self) -> bool {
        self.volumes.values().any(|m| m.backend_deleted.is_some())
    }

    /// Drops the deleted-backend marks whose uid `keep` rejects.
    pub(crate) fn retain_backend_deleted(&mut self, keep: impl Fn(&str) -> bool) {
        self.volumes.retain(|_, m| {
            if m.backend_deleted.as_deref().is_some_and(|uid| !keep(uid)) {
                m.backend_deleted = None;
            }
            !m.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_record_is_dropped() {
        let mut m = Memories::default();
        m.update("pvc-1", |r| r.failures = 2);
        assert_eq!(m.get("pvc-1").failures, 2);
        m.update("pvc-1", |r| r.failures = 0);
        assert!(m.volumes.is_empty());
    }

    #[test]
    fn deleted_backend_marks_go_with_their_uid() {
        let mut m = Memories::default();
        m.update("a", |r| r.backend_deleted = Some("u1".into()));
        m.update("b", |r| {
            r.backend_deleted = Some("u2".into());
            r.failures = 1;
        });
        m.retain_backend_deleted(|uid| uid == "u2");
        assert!(m.peek("a", |r| r.is_none()));
        assert!(m.get("b").backend_deleted_for(Some("u2")));
    }
}
