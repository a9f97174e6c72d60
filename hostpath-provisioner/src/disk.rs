//! A volume's directory made and removed under its base dir's ledger: the
//! blocking work behind [`provision`](crate::HostPathProvisioner) and
//! delete, in the order that keeps the ledger true across a crash.
//!
//! Making: the ledger is asked first (a retry of the same PV finds its
//! directory there, whatever the pattern says now); otherwise a base dir is
//! chosen, the pattern's path is placed against the ledger's live volumes
//! ([`placement`]: a taken path gives way to `<path>_<pv>`, a nested one is
//! refused), the intent is recorded, the directory is made, and its identity
//! is recorded.
//!
//! Removing: only a directory the ledger records for that PV, at that path,
//! with that identity; then the entry goes. The ledger lock is not held while
//! a tree is removed (that can take minutes), but the entry stays until the
//! directory is gone, so no new volume is placed there meanwhile.

use std::path::{Path, PathBuf};

use tracing::warn;

use crate::config::{ClassOptions, OnDelete};
use crate::fs::{self, Created, DirIdentity, Entry, Found, Ledgers, Removed, VolumeDirError};
use crate::layout::{RelPath, placement};
use crate::provisioner::choose_base_dir;

/// Why no directory was handed out; each maps to one engine answer.
#[derive(Debug, PartialEq, Eq)]
pub enum NotMade {
    /// No base dir has room: another node may.
    NoRoom(String),
    /// The claim cannot be served as written (its path collides).
    Infeasible(String),
    /// Nothing of this PV is left on disk; a retry may succeed.
    Failed(String),
    /// Something of this PV may be left on disk: retry to finish or clean it.
    Unsure(String),
}

/// Finds or makes the directory of volume `pv`, whose pattern gives
/// `wanted`, in one of `options.base_dirs`. Returns the base dir, the path
/// (which differs from `wanted` when that was taken) and what was found.
pub fn make(
    ledgers: &Ledgers,
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
    for base in &options.base_dirs {
        let ledger = match ledgers.of(base) {
            Ok(ledger) => ledger,
            Err(e) => {
                warn!(base_dir = %base.display(), error = %e, "base dir unusable; skipped");
                unusable.push(format!("{}: {e}", base.display()));
                continue;
            }
        };
        if let Some(entry) = ledger.get(pv).cloned() {
            let created = make_recorded(ledger, base, pv, &entry, options)?;
            return Ok((base.clone(), entry.path, created));
        }
        usable.push(base);
    }
    let mut free = Vec::new();
    for base in usable {
        match fs::free_bytes(base) {
            Ok(bytes) => free.push((base, bytes)),
            Err(e) => {
                warn!(base_dir = %base.display(), error = %e, "base dir unusable; skipped");
                unusable.push(format!("{}: {e}", base.display()));
            }
        }
    }
    if free.is_empty() {
        return Err(NotMade::Failed(format!("no usable base dir: {}", unusable.join("; "))));
    }
    let Some(i) = choose_base_dir(&free, needed) else {
        let most = free.iter().map(|(_, b)| *b).max().unwrap_or(0);
        return Err(NotMade::NoRoom(format!(
            "the claim requests {needed} bytes but the most free space in a base dir is {most} bytes"
        )));
    };
    let base = free[i].0.clone();
    let ledger = ledgers.of(&base).map_err(|e| NotMade::Failed(e.to_string()))?;
    // Anything already there that the ledger does not record is not handed
    // out; a path that cannot be examined counts as taken.
    let unrecorded = |rel: &RelPath| !matches!(fs::examine(&base, rel), Ok(Found::Nothing));
    let path = placement(wanted, pv, &ledger.live(), unrecorded)
        .map_err(|e| NotMade::Infeasible(format!("in base dir {}: {e}", base.display())))?;
    let entry = Entry { path: path.clone(), identity: None };
    ledger.record(pv, entry.clone()).map_err(|e| NotMade::Failed(e.to_string()))?;
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
                let done = Entry { path: entry.path.clone(), identity: Some(identity) };
                ledger.record(pv, done).map_err(|e| NotMade::Unsure(e.to_string()))?;
            }
            Ok(created)
        }
        // Not ours: nothing of this PV is there.
        Err(e @ (VolumeDirError::Replaced { .. } | VolumeDirError::NotCreatedHere { .. })) => {
            Err(NotMade::Failed(e.to_string()))
        }
        Err(e) => match (entry.identity, fs::examine(base, &entry.path)) {
            (None, Ok(Found::Nothing)) => match ledger.forget(pv) {
                Ok(()) => Err(NotMade::Failed(e.to_string())),
                Err(f) => Err(NotMade::Unsure(format!("{e}; and {f}"))),
            },
            _ => Err(NotMade::Unsure(e.to_string())),
        },
    }
}

/// Removes (or archives as `archive_name`) the directory of volume `pv`
/// at `base/rel`, if the ledger says `pv` made it there; then forgets it.
/// The error is a message for a `VolumeFailedDelete` event.
pub fn remove(
    ledgers: &Ledgers,
    base: &Path,
    rel: &RelPath,
    pv: &str,
    on_delete: OnDelete,
    archive_name: &str,
) -> Result<Removed, String> {
    let shown = rel.under(base);
    let identity = {
        let mut guard = ledgers.lock();
        let ledger = guard.of(base).map_err(|e| e.to_string())?;
        match ledger.get(pv).cloned() {
            None => {
                return match fs::examine(base, rel) {
                    Ok(Found::Nothing) => Ok(Removed::Missing),
                    Ok(_) => Err(format!(
                        "{} was not created by this provisioner for volume {pv} (the ledger of {} has no entry \
                         for it); left alone",
                        shown.display(),
                        base.display()
                    )),
                    Err(e) => Err(format!("examining {}: {e}", shown.display())),
                };
            }
            Some(entry) if entry.path != *rel => {
                return Err(format!(
                    "volume {pv} names {}, but the ledger records its directory at {}; nothing was deleted",
                    shown.display(),
                    entry.path.under(base).display()
                ));
            }
            Some(Entry { identity: Some(identity), .. }) => identity,
            Some(Entry { identity: None, .. }) => {
                // Only the intent was recorded: no volume was handed out.
                return match fs::examine(base, rel) {
                    Ok(Found::Nothing) => ledger.forget(pv).map(|()| Removed::Missing).map_err(|e| e.to_string()),
                    Ok(_) => Err(format!(
                        "{} exists, but the provisioner never recorded creating it for volume {pv}; left alone",
                        shown.display()
                    )),
                    Err(e) => Err(format!("examining {}: {e}", shown.display())),
                };
            }
        }
    };
    let removed = remove_recorded(base, rel, on_delete, archive_name, identity)?;
    let mut guard = ledgers.lock();
    let ledger = guard.of(base).map_err(|e| e.to_string())?;
    ledger.forget(pv).map_err(|e| e.to_string())?;
    fs::prune_parents(base, rel);
    Ok(removed)
}

fn remove_recorded(
    base: &Path,
    rel: &RelPath,
    on_delete: OnDelete,
    archive_name: &str,
    identity: DirIdentity,
) -> Result<Removed, String> {
    let shown = rel.under(base);
    match on_delete {
        OnDelete::Delete => fs::remove_volume_dir(base, rel, Some(identity)).map_err(|e| e.to_string()),
        OnDelete::Archive => fs::archive_volume_dir(base, rel, archive_name, Some(identity))
            .map_err(|e| format!("archive {}: {e}", shown.display())),
    }
}
