//! A volume's directory made and removed under its base dir's ledger: the
//! blocking work behind [`provision`](crate::HostPathProvisioner) and
//! delete, in the order that keeps the ledger true across a crash.
//!
//! Making: the ledger is asked first (a retry of the same PV finds its
//! directory there, whatever the pattern says now); otherwise a base dir is
//! chosen ([`capacity`]: free bytes, free inodes, and what the ledgers
//! already promise on its filesystem), the pattern's path is placed against the ledger's live volumes
//! ([`placement`]: a taken path gives way to `<path>_<pv>`, a nested one is
//! refused), the intent is recorded, the directory is made, and its identity
//! is recorded.
//!
//! Removing: only a directory the ledger records for that PV, at that path,
//! with that identity; then the entry goes. The ledger lock is not held while
//! a tree is removed (that can take minutes), but the entry stays until the
//! directory is gone, so no new volume is placed there meanwhile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use provisioner_core::Cause;
use tracing::{info, warn};

use crate::capacity::{self, Candidate};
use crate::config::{ClassOptions, OnDelete};
use crate::fs::{self, Created, DirIdentity, Entry, Found, Ledgers, Removed, VolumeDirError};
use crate::layout::{RelPath, placement};

/// Why no directory was handed out; each maps to one engine answer, and
/// carries the error behind it (an I/O error, a ledger error) as its cause.
#[derive(Debug, PartialEq, Eq)]
pub enum NotMade {
    /// No base dir has room: another node may.
    NoRoom(Cause),
    /// The claim cannot be served as written (its path collides).
    Infeasible(Cause),
    /// Nothing of this PV is left on disk; a retry may succeed.
    Failed(Cause),
    /// Something of this PV may be left on disk: retry to finish or clean it.
    Unsure(Cause),
}

/// Which base dirs were found unusable, for the log and the
/// `hostpath_unusable_base_dirs` gauge. A base dir is logged when it becomes
/// unusable (a warning with the reason) and when it serves again, not at
/// every claim.
#[derive(Clone, Debug, Default)]
pub struct BaseDirHealth {
    unusable: Arc<Mutex<BTreeMap<PathBuf, String>>>,
    gauge: Gauge,
}

impl BaseDirHealth {
    /// The gauge counting the base dirs found unusable at their last look.
    pub fn gauge(&self) -> Gauge {
        self.gauge.clone()
    }

    /// The base dirs found unusable at their last look, with why.
    pub fn unusable(&self) -> BTreeMap<PathBuf, String> {
        self.unusable.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records what a look at `base` found: `Err` with the reason when unusable.
    pub fn observe(&self, base: &Path, result: Result<(), String>) {
        let mut unusable = self.unusable.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Err(why) => {
                if unusable.get(base) != Some(&why) {
                    warn!(base_dir = %base.display(), error = why, "base dir unusable; skipped until it serves again");
                    unusable.insert(base.to_path_buf(), why);
                }
            }
            Ok(()) => {
                if unusable.remove(base).is_some() {
                    info!(base_dir = %base.display(), "base dir usable again");
                }
            }
        }
        self.gauge.set(i64::try_from(unusable.len()).unwrap_or(i64::MAX));
    }

    /// Forgets base dirs that are no longer configured.
    pub fn retain(&self, configured: &[PathBuf]) {
        let mut unusable = self.unusable.lock().unwrap_or_else(|p| p.into_inner());
        unusable.retain(|base, _| configured.contains(base));
        self.gauge.set(i64::try_from(unusable.len()).unwrap_or(i64::MAX));
    }
}

/// Looks at every base dir in `bases` (its ledger and its filesystem) and
/// records in `health` which are unusable.
pub fn check_base_dirs(ledgers: &Ledgers, health: &BaseDirHealth, bases: &[PathBuf]) {
    let mut ledgers = ledgers.lock();
    for base in bases {
        let result = match ledgers.of(base) {
            Ok(_) => fs::space(base).map(|_| ()).map_err(|e| format!("statvfs: {e}")),
            Err(e) => Err(e.to_string()),
        };
        health.observe(base, result);
    }
    health.retain(bases);
}

/// A base dir that can be considered for a new volume.
struct Usable<'a> {
    base: &'a PathBuf,
    space: fs::Space,
}

/// Finds or makes the directory of volume `pv`, whose pattern gives
/// `wanted`, in one of `options.base_dirs`, for a claim of `needed` bytes.
/// Returns the base dir, the path (which differs from `wanted` when that was
/// taken) and what was found.
pub fn make(
    ledgers: &Ledgers,
    health: &BaseDirHealth,
    options: &ClassOptions,
    pv: &str,
    wanted: &RelPath,
    needed: u64,
) -> Result<(PathBuf, RelPath, Created), NotMade> {
    let mut ledgers = ledgers.lock();
    // An unusable base dir (missing, unreadable, a broken ledger) is skipped
    // so the others still serve.
    let mut usable = Vec::new();
    let mut unusable = Vec::new();
    // What the ledgers promise, per filesystem: base dirs sharing one share its size.
    let mut promised: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
    for base in &options.base_dirs {
        let ledger = match ledgers.of(base) {
            Ok(ledger) => ledger,
            Err(e) => {
                health.observe(base, Err(e.to_string()));
                unusable.push(format!("{}: {e}", base.display()));
                continue;
            }
        };
        if let Some(entry) = ledger.get(pv).cloned() {
            health.observe(base, Ok(()));
            let created = make_recorded(ledger, base, pv, &entry, options)?;
            return Ok((base.clone(), entry.path, created));
        }
        match fs::space(base) {
            Ok(space) => {
                health.observe(base, Ok(()));
                let (volumes, bytes) = ledger.promised();
                let sum = promised.entry(space.device).or_default();
                *sum = (sum.0 + volumes, sum.1.saturating_add(bytes));
                usable.push(Usable { base, space });
            }
            Err(e) => {
                health.observe(base, Err(format!("statvfs: {e}")));
                unusable.push(format!("{}: {e}", base.display()));
            }
        }
    }
    if usable.is_empty() {
        return Err(NotMade::Failed(format!("no usable base dir: {}", unusable.join("; ")).into()));
    }
    let candidates: Vec<Candidate> = usable
        .iter()
        .map(|u| {
            let (volumes, promised) = promised.get(&u.space.device).copied().unwrap_or_default();
            Candidate {
                free_bytes: u.space.free_bytes,
                free_inodes: u.space.free_inodes,
                size: u.space.size,
                promised,
                volumes,
            }
        })
        .collect();
    let rules = options.capacity;
    let i = capacity::choose(&candidates, needed, &rules).map_err(|refused| {
        let why: Vec<String> = usable
            .iter()
            .zip(&refused)
            .map(|(u, r)| format!("base dir {}: {}", u.base.display(), r.explain(needed, rules.overcommit_ratio)))
            .collect();
        NotMade::NoRoom(format!("no base dir can take the claim's {needed} bytes: {}", why.join("; ")).into())
    })?;
    let base = usable[i].base.clone();
    let ledger = ledgers.of(&base).map_err(|e| NotMade::Failed(Cause::new(e)))?;
    // Anything already there that the ledger does not record is not handed
    // out; a path that cannot be examined counts as taken.
    let unrecorded = |rel: &RelPath| !matches!(fs::examine(&base, rel), Ok(Found::Nothing));
    let path = placement(wanted, pv, &ledger.live(), unrecorded)
        .map_err(|e| NotMade::Infeasible(Cause::context(format!("in base dir {}", base.display()), e)))?;
    // The request is recorded with the intent: it is promised from then on, crash or not.
    let entry = Entry { path: path.clone(), identity: None, requested: Some(needed) };
    ledger.record(pv, entry.clone()).map_err(|e| {
        if e.is_out_of_space() {
            NotMade::NoRoom(Cause::context(format!("base dir {}: recording the volume", base.display()), e))
        } else {
            NotMade::Failed(Cause::new(e))
        }
    })?;
    let created = make_recorded(ledger, &base, pv, &entry, options)?;
    Ok((base, path, created))
}

/// Makes (or finds) the directory `entry` records for `pv`, and records its identity.
fn make_recorded(
    ledger: &mut fs::Ledger,
    base: &Path,
    pv: &str,
    entry: &Entry,
    options: &ClassOptions,
) -> Result<Created, NotMade> {
    match fs::create_volume_dir(base, &entry.path, options.access, entry.identity) {
        Ok((created, identity)) => {
            if entry.identity != Some(identity) {
                let done = Entry { identity: Some(identity), ..entry.clone() };
                if let Err(e) = ledger.record(pv, done) {
                    return Err(undo_when_full(ledger, base, pv, entry, created, identity, e));
                }
            }
            Ok(created)
        }
        // Not ours: nothing of this PV is there.
        Err(e @ (VolumeDirError::Replaced { .. } | VolumeDirError::NotCreatedHere { .. })) => {
            Err(NotMade::Failed(Cause::new(e)))
        }
        Err(e) => match (entry.identity, fs::examine(base, &entry.path)) {
            (None, Ok(Found::Nothing)) => match ledger.forget(pv) {
                // The filesystem is full (bytes or inodes): another node may have room.
                Ok(()) if e.is_out_of_space() => Err(NotMade::NoRoom(Cause::new(e))),
                Ok(()) => Err(NotMade::Failed(Cause::new(e))),
                // Two failures: the first is the answer, the second is why nothing was undone.
                Err(f) => Err(NotMade::Unsure(Cause::context(format!("{e}; and forgetting the intent failed"), f))),
            },
            _ => Err(NotMade::Unsure(Cause::new(e))),
        },
    }
}

/// The directory was made but its identity could not be recorded. When the
/// filesystem is full and the directory is the empty one just made, it is
/// removed and the entry forgotten, so the claim can go to another node;
/// otherwise the retry finishes the record.
fn undo_when_full(
    ledger: &mut fs::Ledger,
    base: &Path,
    pv: &str,
    entry: &Entry,
    created: Created,
    identity: DirIdentity,
    error: fs::LedgerError,
) -> NotMade {
    if !error.is_out_of_space() || created != Created::New {
        return NotMade::Unsure(Cause::new(error));
    }
    let undone = fs::remove_volume_dir(base, &entry.path, Some(identity))
        .map_err(Cause::new)
        .and_then(|_| ledger.forget(pv).map_err(Cause::new));
    match undone {
        Ok(()) => {
            fs::prune_parents(base, &entry.path);
            NotMade::NoRoom(Cause::context(format!("base dir {}: recording the volume", base.display()), error))
        }
        Err(e) => NotMade::Unsure(Cause::context(format!("{error}; and undoing the new directory"), e)),
    }
}

/// Removes (or archives as `archive_name`) the directory of volume `pv`
/// at `base/rel`, if the ledger says `pv` made it there; then forgets it.
/// The error is the cause of a `VolumeFailedDelete` event.
pub fn remove(
    ledgers: &Ledgers,
    base: &Path,
    rel: &RelPath,
    pv: &str,
    on_delete: OnDelete,
    archive_name: &str,
) -> Result<Removed, Cause> {
    let shown = rel.under(base);
    let identity = {
        let mut guard = ledgers.lock();
        let ledger = guard.of(base).map_err(Cause::new)?;
        match ledger.get(pv).cloned() {
            None => {
                return match fs::examine(base, rel) {
                    Ok(Found::Nothing) => Ok(Removed::Missing),
                    Ok(_) => Err(format!(
                        "{} was not created by this provisioner for volume {pv} (the ledger of {} has no entry \
                         for it); left alone",
                        shown.display(),
                        base.display()
                    )
                    .into()),
                    Err(e) => Err(Cause::context(format!("examining {}", shown.display()), e)),
                };
            }
            Some(entry) if entry.path != *rel => {
                return Err(format!(
                    "volume {pv} names {}, but the ledger records its directory at {}; nothing was deleted",
                    shown.display(),
                    entry.path.under(base).display()
                )
                .into());
            }
            Some(Entry { identity: Some(identity), .. }) => identity,
            Some(Entry { identity: None, .. }) => {
                // Only the intent was recorded: no volume was handed out.
                return match fs::examine(base, rel) {
                    Ok(Found::Nothing) => ledger.forget(pv).map(|()| Removed::Missing).map_err(Cause::new),
                    Ok(_) => Err(format!(
                        "{} exists, but the provisioner never recorded creating it for volume {pv}; left alone",
                        shown.display()
                    )
                    .into()),
                    Err(e) => Err(Cause::context(format!("examining {}", shown.display()), e)),
                };
            }
        }
    };
    let removed = remove_recorded(base, rel, on_delete, archive_name, identity)?;
    let mut guard = ledgers.lock();
    let ledger = guard.of(base).map_err(Cause::new)?;
    ledger.forget(pv).map_err(Cause::new)?;
    fs::prune_parents(base, rel);
    Ok(removed)
}

fn remove_recorded(
    base: &Path,
    rel: &RelPath,
    on_delete: OnDelete,
    archive_name: &str,
    identity: DirIdentity,
) -> Result<Removed, Cause> {
    let shown = rel.under(base);
    match on_delete {
        OnDelete::Delete => fs::remove_volume_dir(base, rel, Some(identity)).map_err(Cause::new),
        OnDelete::Archive => fs::archive_volume_dir(base, rel, archive_name, Some(identity))
            .map_err(|e| Cause::context(format!("archive {}", shown.display()), e)),
    }
}
