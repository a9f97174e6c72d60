//! Removing a volume's directory tree, whatever a tenant built in it.
//!
//! The walk is iterative and holds at most [`MAX_OPEN_LEVELS`] directories
//! open, whatever the tree's depth: a subdirectory met below that depth is
//! not descended into but renamed (`renameat2` with `RENAME_NOREPLACE`) into
//! the volume's top directory, where a later pass of the top directory
//! reaches it. Renaming only ever moves an entry from one directory of the
//! volume to another, so nothing leaves the volume and no path needs to be
//! remembered to climb back up: memory is bounded by the open levels (each a
//! directory stream with one kernel-sized read buffer and the entry's name),
//! never by the tree's depth or width. Names are never collected: each entry
//! is removed as it is read, and a directory is read again from its start
//! until a pass removes nothing (entries a pass missed or that appeared
//! meanwhile are caught by the next pass).
//!
//! Mounts are never crossed: every directory is compared with the volume's
//! top directory by device and by mount ID (`statx` `STATX_MNT_ID`, which
//! also tells a bind mount of the same filesystem apart), before it is
//! opened and again on the opened descriptor, so a mount that appears in
//! between is not entered either. A mount point is left alone (with what
//! contains it) and reported in the error; a file bind-mounted inside the
//! volume is refused by the kernel (`EBUSY`) and reported the same way.
//!
//! As in the rest of [`crate::fs`], nothing is resolved through a symlink
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`) and anything but a directory is
//! unlinked without being opened.

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, RenameFlags, Statx, StatxAttributes, StatxFlags};
use rustix::io::Errno;

use super::{DIR_FLAGS, DirIdentity, Removed};

/// Most directories held open at once by one removal (and so, with the
/// parent, the descriptors it uses).
pub const MAX_OPEN_LEVELS: usize = 16;
/// Most problem paths named in one [`TreeError::Incomplete`].
const MAX_REPORTED: usize = 8;
/// Names of directories moved up into the volume's top directory.
const HOIST_PREFIX: &str = ".hostpath-provisioner-deleting-";
/// Tries at finding a free hoist name before giving up.
const HOIST_TRIES: u32 = 1000;

/// Why a tree was not removed completely.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The volume directory itself could not be examined or opened.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The volume directory is itself a mount point: left alone.
    #[error(
        "{} is a mount point (another filesystem or a bind mount); left alone: unmount it, the delete is then retried",
        path.display()
    )]
    MountedVolume {
        /// The volume directory.
        path: PathBuf,
    },
    /// The directory there is not the volume's (it was replaced).
    #[error("{} is not the directory the provisioner created there (it was replaced); left alone", path.display())]
    NotTheVolume {
        /// The directory.
        path: PathBuf,
    },
    /// Some entries could not be removed; everything else was.
    #[error("{0}")]
    Incomplete(Leftovers),
}

/// What a removal left behind, and why: at most a few paths of each kind
/// are kept, with a count of the others.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Mount points inside the volume, left alone.
    pub mounts: Vec<PathBuf>,
    /// Entries that could not be removed, and why.
    pub failures: Vec<(PathBuf, io::Error)>,
    /// Problems not listed above.
    pub more: u64,
}

impl Leftovers {
    fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.failures.is_empty() && self.more == 0
    }

    // A directory is read again until a pass changes nothing, so one entry
    // can be met more than once: it is listed once, and counted in `more`
    // only on the first pass over its directory (`first_pass`).
    fn mount(&mut self, path: PathBuf, first_pass: bool) {
        if self.mounts.contains(&path) {
            return;
        }
        if self.mounts.len() < MAX_REPORTED {
            self.mounts.push(path);
        } else if first_pass {
            self.more += 1;
        }
    }

    fn failure(&mut self, path: PathBuf, error: io::Error, first_pass: bool) {
        if self.failures.iter().any(|(p, _)| *p == path) {
            return;
        }
        if self.failures.len() < MAX_REPORTED {
            self.failures.push((path, error));
        } else if first_pass {
            self.more += 1;
        }
    }
}

impl fmt::Display for Leftovers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if !self.mounts.is_empty() {
            let paths: Vec<_> = self.mounts.iter().map(|p| p.display().to_string()).collect();
            write!(
                f,
                "mount points inside the volume, left alone (unmount them; the delete is then retried): {}",
                paths.join(", ")
            )?;
            sep = "; ";
        }
        for (path, error) in &self.failures {
            write!(f, "{sep}cannot remove {}: {error}", path.display())?;
            sep = "; ";
        }
        if self.more > 0 {
            write!(f, "{sep}and {} more", self.more)?;
        }
        Ok(())
    }
}

/// The mount the volume lives on: every directory removed must be on it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mount {
    dev: (u32, u32),
    id: u64,
}

impl Mount {
    fn of(st: &Statx) -> Mount {
        Mount { dev: (st.stx_dev_major, st.stx_dev_minor), id: st.stx_mnt_id }
    }
}

const STATX_WANT: StatxFlags =
    StatxFlags::TYPE.union(StatxFlags::INO).union(StatxFlags::MNT_ID).union(StatxFlags::BTIME);

fn statx_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Statx, Errno> {
    rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, STATX_WANT)
}

fn statx_fd(fd: BorrowedFd<'_>) -> Result<Statx, Errno> {
    rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, STATX_WANT)
}

fn is_dir(st: &Statx) -> bool {
    FileType::from_raw_mode(u32::from(st.stx_mode)) == FileType::Directory
}

/// Whether `st` (a directory) is another mount than `on`. Without a mount
/// ID from the kernel, the mount-root attribute and the device decide.
fn crosses(st: &Statx, on: Mount) -> bool {
    let has_id = st.stx_mask & StatxFlags::MNT_ID.bits() != 0;
    Mount::of(st).dev != on.dev
        || (has_id && st.stx_mnt_id != on.id)
        || (st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
            && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// One open directory of the walk.
struct Level {
    dir: Dir,
    /// Its name in the level above (the volume's top: its own name).
    name: Vec<u8>,
    /// Something was removed or moved in the current pass: read it again.
    progress: bool,
    /// Something in it must stay: it cannot be removed.
    blocked: bool,
    /// Passes over it finished so far.
    passes: u32,
}

impl Level {
    fn open(fd: OwnedFd, name: &[u8]) -> io::Result<Level> {
        // Owner-only permissions would stop a non-root provisioner listing it.
        let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700));
        Ok(Level { dir: Dir::new(fd)?, name: name.to_vec(), progress: false, blocked: false, passes: 0 })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // rustix's `Dir::fd` cannot fail; it returns a Result for portability.
        self.dir.fd().unwrap_or_else(|_| unreachable!("Dir::fd is infallible on Linux"))
    }
}

/// The removal of one tree: its open levels and what it left.
struct Walk<'a> {
    shown: &'a Path,
    mount: Mount,
    /// The open directories, the volume's top first; never empty while it runs.
    levels: Vec<Level>,
    left: Leftovers,
    hoisted: u64,
}

impl Walk<'_> {
    /// Where the deepest open level is, for messages.
    fn here(&self) -> PathBuf {
        let mut p = self.shown.to_path_buf();
        for level in &self.levels[1..] {
            p.push(OsStr::from_bytes(&level.name));
        }
        p
    }

    fn top(&self) -> &Level {
        &self.levels[self.levels.len() - 1]
    }

    fn top_mut(&mut self) -> &mut Level {
        let last = self.levels.len() - 1;
        &mut self.levels[last]
    }

    fn failure(&mut self, name: &[u8], error: io::Error) {
        let path = self.here().join(OsStr::from_bytes(name));
        let first = self.top().passes == 0;
        self.left.failure(path, error, first);
        self.top_mut().blocked = true;
    }

    fn mount_point(&mut self, name: &[u8]) {
        let path = self.here().join(OsStr::from_bytes(name));
        let first = self.top().passes == 0;
        self.left.mount(path, first);
        self.top_mut().blocked = true;
    }

    fn progress(&mut self) {
        self.top_mut().progress = true;
    }

    /// Handles one entry of the deepest level.
    fn entry(&mut self, name: &CStr, file_type: FileType) {
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            return;
        }
        if file_type != FileType::Directory && file_type != FileType::Unknown {
            match rustix::fs::unlinkat(self.top().fd(), name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => return self.progress(),
                // Replaced by a directory since it was listed: look at it as one.
                Err(Errno::ISDIR) | Err(Errno::PERM) => {}
                Err(Errno::BUSY) => return self.mount_point(bytes),
                Err(e) => return self.failure(bytes, e.into()),
            }
        }
        let st = match statx_at(self.top().fd(), name) {
            Ok(st) => st,
            Err(Errno::NOENT) => return,
            Err(e) => return self.failure(bytes, e.into()),
        };
        if !is_dir(&st) {
            return match rustix::fs::unlinkat(self.top().fd(), name, AtFlags::empty()) {
                // ISDIR: a directory again; the next pass looks at it once more.
                Ok(()) | Err(Errno::NOENT) | Err(Errno::ISDIR) => self.progress(),
                Err(Errno::BUSY) => self.mount_point(bytes),
                Err(e) => self.failure(bytes, e.into()),
            };
        }
        if crosses(&st, self.mount) {
            return self.mount_point(bytes);
        }
        if self.levels.len() >= MAX_OPEN_LEVELS {
            return self.hoist(name);
        }
        let fd = match rustix::fs::openat(self.top().fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return,
            // Replaced by a symlink or a file since the statx: the next pass unlinks it.
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => return self.progress(),
            Err(e) => return self.failure(bytes, e.into()),
        };
        // A mount may have appeared between the statx and the open.
        match statx_fd(fd.as_fd()) {
            Ok(st) if !crosses(&st, self.mount) => {}
            Ok(_) => return self.mount_point(bytes),
            Err(e) => return self.failure(bytes, e.into()),
        }
        match Level::open(fd, bytes) {
            Ok(level) => self.levels.push(level),
            Err(e) => self.failure(bytes, e),
        }
    }

    /// Moves the directory `name` of the deepest level up into the volume's
    /// top directory, so the walk never holds more than its open levels.
    fn hoist(&mut self, name: &CStr) {
        let bytes = name.to_bytes();
        for _ in 0..HOIST_TRIES {
            self.hoisted += 1;
            let target = format!("{HOIST_PREFIX}{}", self.hoisted);
            let moved = rustix::fs::renameat_with(
                self.top().fd(),
                name,
                self.levels[0].fd(),
                target.as_str(),
                RenameFlags::NOREPLACE,
            );
            match moved {
                Ok(()) => {
                    self.progress();
                    self.levels[0].progress = true;
                    return;
                }
                Err(Errno::EXIST) => continue,
                Err(Errno::NOENT) => return,
                Err(Errno::BUSY) => return self.mount_point(bytes),
                Err(e) => return self.failure(bytes, e.into()),
            }
        }
        self.failure(bytes, io::Error::other("no free name to move it up into the volume's top directory"));
    }

    /// The deepest level could not be listed: what is in it stays.
    fn unreadable(&mut self, error: io::Error) {
        let path = self.here();
        let first = self.top().passes == 0;
        self.left.failure(path, error, first);
        let top = self.top_mut();
        top.blocked = true;
        top.progress = false;
    }

    /// The deepest level was read to its end: read it again if the pass
    /// changed something, else remove it and return to the level above.
    /// `Some`: the walk is over.
    fn end_of_pass(&mut self, parent: BorrowedFd<'_>) -> Option<Result<Removed, TreeError>> {
        let top = self.top_mut();
        if top.progress {
            top.progress = false;
            top.passes += 1;
            top.dir.rewind();
            return None;
        }
        let done = self.levels.pop()?;
        drop(done.dir);
        if self.levels.is_empty() {
            if !done.blocked {
                match rustix::fs::unlinkat(parent, done.name.as_slice(), AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => self.left.failure(self.shown.to_path_buf(), e.into(), true),
                }
            }
            let left = std::mem::take(&mut self.left);
            return Some(if left.is_empty() { Ok(Removed::Done) } else { Err(TreeError::Incomplete(left)) });
        }
        if done.blocked {
            self.top_mut().blocked = true;
            return None;
        }
        match rustix::fs::unlinkat(self.top().fd(), done.name.as_slice(), AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => self.progress(),
            // Something was added since its last pass: someone is still writing.
            Err(Errno::BUSY) => self.mount_point(&done.name),
            Err(e) => self.failure(&done.name, e.into()),
        }
        None
    }
}

/// Removes the entry `name` in the directory `parent` (shown as `shown` in
/// messages): a directory with everything in it, anything else unlinked
/// without being opened. Missing: [`Removed::Missing`].
///
/// A mount point met inside is left alone with the directories holding it,
/// everything else is removed, and the error names what was left. With
/// `expected`, the directory must be that one, checked on the opened
/// descriptor before anything is changed.
pub fn remove_tree_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    shown: &Path,
    expected: Option<DirIdentity>,
) -> Result<Removed, TreeError> {
    let io_err = |op, source: io::Error| TreeError::Io { op, path: shown.to_path_buf(), source };
    let cname = CString::new(name.as_bytes()).map_err(|e| io_err("naming", e.into()))?;
    let st = match statx_at(parent, &cname) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(Removed::Missing),
        Err(e) => return Err(io_err("examining", e.into())),
    };
    let unlink_it = || match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) => Ok(Removed::Done),
        Err(Errno::NOENT) => Ok(Removed::Missing),
        Err(Errno::BUSY) => Err(TreeError::MountedVolume { path: shown.to_path_buf() }),
        Err(e) => Err(io_err("unlinking", e.into())),
    };
    if !is_dir(&st) {
        // A symlink or file in place of a volume directory the ledger records is not the volume.
        if expected.is_some() {
            return Err(TreeError::NotTheVolume { path: shown.to_path_buf() });
        }
        return unlink_it();
    }
    let parent_st = statx_fd(parent).map_err(|e| io_err("examining the directory holding", e.into()))?;
    let mount = Mount::of(&parent_st);
    if crosses(&st, mount) {
        return Err(TreeError::MountedVolume { path: shown.to_path_buf() });
    }
    let fd = match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Removed::Missing),
        // Replaced by a symlink or a file since the statx: unlink that instead.
        Err(Errno::LOOP) | Err(Errno::NOTDIR) => return unlink_it(),
        Err(e) => return Err(io_err("opening", e.into())),
    };
    match statx_fd(fd.as_fd()) {
        Ok(st) if expected.is_some_and(|e| !e.matches(&DirIdentity::of(&st))) => {
            return Err(TreeError::NotTheVolume { path: shown.to_path_buf() });
        }
        Ok(st) if !crosses(&st, mount) => {}
        Ok(_) => return Err(TreeError::MountedVolume { path: shown.to_path_buf() }),
        Err(e) => return Err(io_err("examining", e.into())),
    }
    let top = Level::open(fd, name.as_bytes()).map_err(|e| io_err("reading", e))?;
    let mut walk = Walk { shown, mount, levels: vec![top], left: Leftovers::default(), hoisted: 0 };
    loop {
        match walk.top_mut().dir.read() {
            Some(Ok(entry)) => {
                walk.entry(entry.file_name(), entry.file_type());
                continue;
            }
            Some(Err(e)) => walk.unreadable(e.into()),
            None => {}
        }
        if let Some(result) = walk.end_of_pass(parent) {
            return result;
        }
    }
}
