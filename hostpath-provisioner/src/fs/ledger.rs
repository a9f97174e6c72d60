//! The ledger of a base dir: which PV created which directory.
//!
//! One file per PV in `<base>/.provisioner-ledger/` (mode 0700), named after
//! the PV and holding its directory's path and, once it is made, its
//! identity (inode number and birth time), and the bytes its claim
//! requested (what this filesystem promised it). No pattern can expand to that
//! directory ([`LEDGER_DIR`] is reserved), so it is inside no volume and no
//! tenant reaches it.
//!
//! Crash safety: an entry is written to a temporary file, `fsync`ed, renamed
//! over its name and the directory `fsync`ed, so it is either whole or
//! absent. The entry is written before the directory is made (without an
//! identity) and again after (with it): a crash in between leaves an entry
//! without identity, and the retry of the same PV finds its path there.
//!
//! The entries are kept in memory and read again whenever the ledger
//! directory's modification time changes (an operator removing an entry by
//! hand, say). Timestamps come from a coarse clock, so an edit by hand within
//! a few milliseconds of the provisioner's own write can go unseen until the
//! next change or restart; the provisioner is the ledger's only writer.

use std::collections::{BTreeMap, btree_map};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rustix::fs::{AtFlags, Dir, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::{DIR_FLAGS, DirIdentity, open_base};
use crate::layout::{LEDGER_DIR, LiveVolume, RelPath};

const LEDGER_MODE: u32 = 0o700;
/// The temporary file an entry is written to before its rename.
const WRITING: &str = ".writing";

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A filesystem call failed.
    #[error("ledger {}: {op}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The ledger directory or entry.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An entry does not parse.
    #[error("ledger entry {} is not valid: {source}", path.display())]
    Corrupt {
        /// The entry.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An entry parses but names an invalid path.
    #[error("ledger entry {} names the invalid path {text:?}", path.display())]
    BadPath {
        /// The entry.
        path: PathBuf,
        /// The path text.
        text: String,
    },
    /// A PV name that cannot be a file name.
    #[error("volume name {0:?} cannot name a ledger entry")]
    BadName(String),
}

impl LedgerError {
    /// Whether it failed for want of space or inodes on the filesystem.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, LedgerError::Io { source, .. } if super::is_out_of_space(source))
    }
}

/// One PV's directory, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its directory, relative to the base dir.
    pub path: RelPath,
    /// The directory's identity; `None` until the directory is made.
    pub identity: Option<DirIdentity>,
    /// The bytes its claim requested, promised on this filesystem; `None`
    /// in entries written before requests were recorded (counted as 0).
    pub requested: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Record {
    pv: String,
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ino: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    btime: Option<(i64, u32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requested_bytes: Option<u64>,
}

/// The ledger of one base dir.
#[derive(Debug)]
pub struct Ledger {
    dir_path: PathBuf,
    dir: OwnedFd,
    entries: BTreeMap<String, Entry>,
    /// The ledger directory's modification time when `entries` was read or last written.
    seen: Option<(i64, u32)>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> LedgerError + 'a {
    move |e| LedgerError::Io { op, path: path.to_path_buf(), source: e.into() }
}

fn valid_name(pv: &str) -> Result<(), LedgerError> {
    let ok = !pv.is_empty() && pv.len() <= 253 && !pv.starts_with('.') && !pv.contains(['/', '\0']);
    if ok { Ok(()) } else { Err(LedgerError::BadName(pv.into())) }
}

impl Ledger {
    /// Opens (creating it if needed, mode 0700) the ledger of `base` and reads it.
    pub fn open(base: &Path) -> Result<Ledger, LedgerError> {
        let dir_path = base.join(LEDGER_DIR);
        let base_fd = open_base(base).map_err(|source| LedgerError::Io {
            op: "opening the base dir",
            path: base.to_path_buf(),
            source,
        })?;
        match rustix::fs::mkdirat(&base_fd, LEDGER_DIR, Mode::from_raw_mode(LEDGER_MODE)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_err("creating", &dir_path)(e)),
        }
        let dir = rustix::fs::openat(&base_fd, LEDGER_DIR, DIR_FLAGS, Mode::empty())
            .map_err(io_err("opening (it must be a directory, not a symlink)", &dir_path))?;
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(LEDGER_MODE)).map_err(io_err("setting the mode of", &dir_path))?;
        let mut ledger = Ledger { dir_path, dir, entries: BTreeMap::new(), seen: None };
        ledger.reload()?;
        Ok(ledger)
    }

    fn mtime(&self) -> Result<(i64, u32), LedgerError> {
        let st = rustix::fs::statx(&self.dir, c"", AtFlags::EMPTY_PATH, StatxFlags::MTIME)
            .map_err(io_err("examining", &self.dir_path))?;
        Ok((st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec))
    }

    fn reload(&mut self) -> Result<(), LedgerError> {
        let seen = self.mtime()?;
        let mut entries = BTreeMap::new();
        let listing = Dir::read_from(&self.dir).map_err(io_err("listing", &self.dir_path))?;
        for item in listing {
            let item = item.map_err(io_err("listing", &self.dir_path))?;
            let Ok(name) = item.file_name().to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let path = self.dir_path.join(name);
            let fd =
                rustix::fs::openat(&self.dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                    .map_err(io_err("opening", &path))?;
            let text = io::read_to_string(std::fs::File::from(fd)).map_err(|source| LedgerError::Io {
                op: "reading",
                path: path.clone(),
                source,
            })?;
            let record: Record =
                serde_json::from_str(&text).map_err(|source| LedgerError::Corrupt { path: path.clone(), source })?;
            let rel = RelPath::parse(&record.path)
                .map_err(|_| LedgerError::BadPath { path: path.clone(), text: record.path.clone() })?;
            let identity = record.ino.map(|ino| DirIdentity { ino, btime: record.btime });
            entries.insert(record.pv, Entry { path: rel, identity, requested: record.requested_bytes });
        }
        self.entries = entries;
        self.seen = Some(seen);
        Ok(())
    }

    /// Reads the entries again if the ledger directory changed since they were read.
    pub fn refresh(&mut self) -> Result<(), LedgerError> {
        if self.seen != Some(self.mtime()?) { self.reload() } else { Ok(()) }
    }

    /// The entry of `pv`.
    pub fn get(&self, pv: &str) -> Option<&Entry> {
        self.entries.get(pv)
    }

    /// Every recorded volume.
    pub fn live(&self) -> Vec<LiveVolume<'_>> {
        self.entries.iter().map(|(pv, e)| LiveVolume { pv, path: &e.path }).collect()
    }

    /// How many volumes are recorded, and the bytes their claims requested.
    pub fn promised(&self) -> (usize, u64) {
        let bytes = self.entries.values().map(|e| e.requested.unwrap_or(0)).fold(0u64, u64::saturating_add);
        (self.entries.len(), bytes)
    }

    /// Writes (or replaces) the entry of `pv`, durably.
    pub fn record(&mut self, pv: &str, entry: Entry) -> Result<(), LedgerError> {
        valid_name(pv)?;
        let record = Record {
            pv: pv.to_string(),
            path: entry.path.to_string(),
            ino: entry.identity.map(|i| i.ino),
            btime: entry.identity.and_then(|i| i.btime),
            requested_bytes: entry.requested,
        };
        let text = serde_json::to_vec(&record)
            .map_err(|source| LedgerError::Corrupt { path: self.dir_path.join(pv), source })?;
        let tmp = self.dir_path.join(WRITING);
        let fd = rustix::fs::openat(
            &self.dir,
            WRITING,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io_err("creating", &tmp))?;
        let mut file = std::fs::File::from(fd);
        io::Write::write_all(&mut file, &text).map_err(|source| LedgerError::Io {
            op: "writing",
            path: tmp.clone(),
            source,
        })?;
        file.sync_all().map_err(|source| LedgerError::Io { op: "syncing", path: tmp.clone(), source })?;
        drop(file);
        rustix::fs::renameat(&self.dir, WRITING, &self.dir, pv).map_err(io_err("renaming into place", &tmp))?;
        self.sync()?;
        self.entries.insert(pv.to_string(), entry);
        Ok(())
    }

    /// Removes the entry of `pv`, durably. A missing entry is not an error.
    pub fn forget(&mut self, pv: &str) -> Result<(), LedgerError> {
        valid_name(pv)?;
        match rustix::fs::unlinkat(&self.dir, pv, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err("removing an entry of", &self.dir_path)(e)),
        }
        self.sync()?;
        self.entries.remove(pv);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LedgerError> {
        rustix::fs::fsync(self.dir.as_fd()).map_err(io_err("syncing", &self.dir_path))?;
        self.seen = Some(self.mtime()?);
        Ok(())
    }
}

/// The ledgers of a node's base dirs, opened on first use. Holding the
/// lock serialises every change to volume directories in this process.
#[derive(Debug, Default)]
pub struct Ledgers(Mutex<BTreeMap<PathBuf, Ledger>>);

/// The locked ledgers.
#[derive(Debug)]
pub struct LedgersGuard<'a>(MutexGuard<'a, BTreeMap<PathBuf, Ledger>>);

impl Ledgers {
    /// Locks the ledgers.
    pub fn lock(&self) -> LedgersGuard<'_> {
        LedgersGuard(self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl LedgersGuard<'_> {
    /// The ledger of `base`, opened and read if needed, refreshed otherwise.
    pub fn of(&mut self, base: &Path) -> Result<&mut Ledger, LedgerError> {
        match self.0.entry(base.to_path_buf()) {
            btree_map::Entry::Vacant(slot) => Ok(slot.insert(Ledger::open(base)?)),
            btree_map::Entry::Occupied(slot) => {
                let ledger = slot.into_mut();
                ledger.refresh()?;
                Ok(ledger)
            }
        }
    }
}
