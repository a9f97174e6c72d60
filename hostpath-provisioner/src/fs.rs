//! Every filesystem call this provisioner makes, in one place.
//!
//! All work below a base dir is done relative to open directory handles
//! (`openat`, `mkdirat`, `unlinkat`, `renameat`, `fstatat` with
//! `AT_SYMLINK_NOFOLLOW`), one validated component at a time, each opened with
//! `O_NOFOLLOW | O_DIRECTORY`. So:
//! - no path a user can influence is ever resolved through a symlink: a
//!   symlink planted inside a volume, or in place of the volume directory
//!   itself, is unlinked, never followed;
//! - special files (FIFOs, sockets, devices) are unlinked without being
//!   opened, so a FIFO cannot block the deletion;
//! - there is no window between checking a path and using it (the race
//!   behind CVE-2022-21658 in `std::fs::remove_dir_all`).
//!
//! The base dirs themselves are the operator's configuration and are opened
//! normally.
//!
//! Directories are plain directories: nothing limits how much a volume
//! writes, whatever its claim requested. The free-space check only keeps a
//! node from accepting claims it clearly cannot hold.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use crate::layout::RelPath;

mod ledger;
mod tree;

pub use ledger::{Entry, Ledger, LedgerError, Ledgers, LedgersGuard};
pub use tree::{Leftovers, MAX_OPEN_LEVELS, TreeError, remove_tree_at};

/// What tells one directory from another that later takes its path: the
/// inode number and, where the filesystem records it, the birth time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirIdentity {
    /// Inode number.
    pub ino: u64,
    /// Birth time (seconds, nanoseconds), if known.
    pub btime: Option<(i64, u32)>,
}

impl DirIdentity {
    fn of(st: &rustix::fs::Statx) -> DirIdentity {
        let btime = (st.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0)
            .then_some((st.stx_btime.tv_sec, st.stx_btime.tv_nsec));
        DirIdentity { ino: st.stx_ino, btime }
    }

    /// Whether `other` is the same directory (a missing birth time matches any).
    pub fn matches(&self, other: &DirIdentity) -> bool {
        self.ino == other.ino && (self.btime.is_none() || other.btime.is_none() || self.btime == other.btime)
    }
}

/// Why a volume directory was not made or removed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeDirError {
    /// A filesystem call failed.
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
    /// The directory there is not the one the ledger records.
    #[error("{} is not the directory the provisioner created there (it was replaced); left alone", path.display())]
    Replaced {
        /// The directory.
        path: PathBuf,
    },
    /// A directory with data was found where only an intent was recorded.
    #[error("{} exists with data, but the provisioner never recorded creating it; left alone", path.display())]
    NotCreatedHere {
        /// The directory.
        path: PathBuf,
    },
    /// Removing the tree failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

impl VolumeDirError {
    /// Whether it failed for want of space or inodes on the filesystem.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, VolumeDirError::Io { source, .. } if is_out_of_space(source))
    }
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeDirError + 'a {
    move |source| VolumeDirError::Io { op, path: path.to_path_buf(), source }
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    Ok(space(dir)?.free_bytes)
}

/// What the filesystem holding a base dir has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Which filesystem (the base dir's device), so base dirs sharing one are counted together.
    pub device: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes available to unprivileged users.
    pub free_bytes: u64,
    /// Inodes available to unprivileged users (`f_favail`); `None` where the
    /// filesystem reports no inode total (it allocates them as needed).
    pub free_inodes: Option<u64>,
}

/// What the filesystem holding `dir` has (`statvfs`, and `stat` for the device).
pub fn space(dir: &Path) -> io::Result<Space> {
    let st = rustix::fs::statvfs(dir)?;
    let device = rustix::fs::stat(dir)?.st_dev;
    Ok(Space {
        device,
        size: st.f_blocks.saturating_mul(st.f_frsize),
        free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
        free_inodes: (st.f_files != 0).then_some(st.f_favail),
    })
}

/// Whether `error` says the filesystem is out of space or inodes (or quota).
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(e) if e == Errno::NOSPC.raw_os_error() || e == Errno::DQUOT.raw_os_error())
}

/// Permissions and ownership of a new volume directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirAccess {
    /// Permission bits, e.g. `0o770`.
    pub mode: u32,
    /// Owner, if it should be changed.
    pub uid: Option<u32>,
    /// Group, if it should be changed.
    pub gid: Option<u32>,
}

/// What [`create_volume_dir`] found or made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// A new directory.
    New,
    /// The directory existed and was empty (a retry after a crash).
    ExistingEmpty,
    /// The directory existed with content.
    ExistingWithData,
}

/// What [`remove_volume_dir`] or [`archive_volume_dir`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// Removed (or renamed to the archive name).
    Done,
    /// Nothing was there.
    Missing,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
/// Directories between a base dir and a volume directory.
const PARENT_MODE: u32 = 0o750;

fn open_base(base: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(CWD, base, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

fn open_child(parent: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::LOOP) | Err(Errno::NOTDIR) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name:?} is a symlink or not a directory; refusing to go through it"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory holding the last component of `rel` under `base`,
/// without following symlinks. `Ok(None)`: an intermediate directory is missing.
fn open_parent(base: &Path, rel: &RelPath) -> io::Result<Option<OwnedFd>> {
    let mut fd = open_base(base)?;
    let comps = rel.components();
    for c in &comps[..comps.len() - 1] {
        fd = match open_child(fd.as_fd(), c) {
            Ok(next) => next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
    }
    Ok(Some(fd))
}

fn last(rel: &RelPath) -> &str {
    rel.components().last().map(String::as_str).unwrap_or_default()
}

fn is_empty(dir: BorrowedFd<'_>) -> io::Result<bool> {
    for entry in Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What is at `base/rel`: nothing, a directory (and which), or something else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing (or a missing intermediate directory).
    Nothing,
    /// A directory.
    Dir(DirIdentity),
    /// A symlink, file or special file.
    Other,
}

/// What is at `base/rel`, without following symlinks.
pub fn examine(base: &Path, rel: &RelPath) -> io::Result<Found> {
    let Some(parent) = open_parent(base, rel)? else { return Ok(Found::Nothing) };
    let want = rustix::fs::StatxFlags::TYPE | rustix::fs::StatxFlags::INO | rustix::fs::StatxFlags::BTIME;
    match rustix::fs::statx(&parent, last(rel), AtFlags::SYMLINK_NOFOLLOW, want) {
        Ok(st) if FileType::from_raw_mode(u32::from(st.stx_mode)) == FileType::Directory => {
            Ok(Found::Dir(DirIdentity::of(&st)))
        }
        Ok(_) => Ok(Found::Other),
        Err(Errno::NOENT) => Ok(Found::Nothing),
        Err(e) => Err(e.into()),
    }
}

fn identity_of(fd: BorrowedFd<'_>) -> io::Result<DirIdentity> {
    let want = rustix::fs::StatxFlags::INO | rustix::fs::StatxFlags::BTIME;
    Ok(DirIdentity::of(&rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, want)?))
}

/// Creates `base/rel` (and missing intermediate directories, mode exactly
/// 0750) and gives it `access` exactly (whatever the umask). `recorded` is
/// what the ledger knows of the directory: an existing directory is taken
/// only if it is the recorded one, or, when only the intent was recorded
/// (a crash between the ledger write and `mkdir`), if it is empty.
pub fn create_volume_dir(
    base: &Path,
    rel: &RelPath,
    access: DirAccess,
    recorded: Option<DirIdentity>,
) -> Result<(Created, DirIdentity), VolumeDirError> {
    let shown = rel.under(base);
    let mut fd = open_base(base).map_err(io_at("opening the base dir of", &shown))?;
    let comps = rel.components();
    for c in &comps[..comps.len() - 1] {
        let made = match rustix::fs::mkdirat(&fd, c.as_str(), Mode::from_raw_mode(PARENT_MODE)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(io_at("creating a directory on the way to", &shown)(e.into())),
        };
        fd = open_child(fd.as_fd(), c).map_err(io_at("opening a directory on the way to", &shown))?;
        if made {
            // mkdir's mode was cut by the umask.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(PARENT_MODE))
                .map_err(|e| io_at("setting the mode of a directory on the way to", &shown)(e.into()))?;
        }
    }
    let name = last(rel);
    let created = match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(access.mode & 0o777)) {
        Ok(()) => Created::New,
        Err(Errno::EXIST) => Created::ExistingEmpty,
        Err(e) => return Err(io_at("creating", &shown)(e.into())),
    };
    let dir = open_child(fd.as_fd(), name).map_err(io_at("opening", &shown))?;
    let identity = identity_of(dir.as_fd()).map_err(io_at("examining", &shown))?;
    if created == Created::ExistingEmpty {
        let empty = is_empty(dir.as_fd()).map_err(io_at("listing", &shown))?;
        match recorded {
            Some(r) if r.matches(&identity) => {
                if !empty {
                    return Ok((Created::ExistingWithData, identity));
                }
            }
            Some(_) => return Err(VolumeDirError::Replaced { path: shown }),
            None if empty => {}
            None => return Err(VolumeDirError::NotCreatedHere { path: shown }),
        }
    }
    if access.uid.is_some() || access.gid.is_some() {
        rustix::fs::fchown(&dir, access.uid.map(Uid::from_raw), access.gid.map(Gid::from_raw))
            .map_err(|e| io_at("changing the owner of", &shown)(e.into()))?;
    }
    // After chown, which clears set-id bits; and mkdir's mode was cut by the umask.
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(access.mode))
        .map_err(|e| io_at("setting the mode of", &shown)(e.into()))?;
    Ok((created, identity))
}

/// Removes `base/rel` and everything in it without following any symlink
/// and without opening anything but directories; then removes intermediate
/// A symlink or special file in place of the volume directory is unlinked
/// (unless `expected` names a directory). Missing: [`Removed::Missing`].
///
/// With `expected`, the directory there must be that one (else
/// [`TreeError::NotTheVolume`], and nothing is touched).
pub fn remove_volume_dir(base: &Path, rel: &RelPath, expected: Option<DirIdentity>) -> Result<Removed, TreeError> {
    let shown = rel.under(base);
    let parent = open_parent(base, rel).map_err(|source| TreeError::Io {
        op: "opening the directory holding",
        path: shown.clone(),
        source,
    })?;
    let Some(parent) = parent else { return Ok(Removed::Missing) };
    remove_tree_at(parent.as_fd(), OsStr::new(last(rel)), &shown, expected)
}

/// Renames `base/rel` to `base/<archive_name>` (never following a symlink:
/// `renameat` moves the entry itself). Missing: [`Removed::Missing`].
/// With `expected`, the directory there must be that one.
pub fn archive_volume_dir(
    base: &Path,
    rel: &RelPath,
    archive_name: &str,
    expected: Option<DirIdentity>,
) -> io::Result<Removed> {
    let Some(parent) = open_parent(base, rel)? else { return Ok(Removed::Missing) };
    if let Some(expected) = expected {
        let want = rustix::fs::StatxFlags::INO | rustix::fs::StatxFlags::BTIME;
        match rustix::fs::statx(&parent, last(rel), AtFlags::SYMLINK_NOFOLLOW, want) {
            Ok(st) if expected.matches(&DirIdentity::of(&st)) => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not the directory the provisioner created there; left alone",
                    rel.under(base).display()
                )));
            }
            Err(Errno::NOENT) => return Ok(Removed::Missing),
            Err(e) => return Err(e.into()),
        }
    }
    let base_fd = open_base(base)?;
    match rustix::fs::statat(&base_fd, archive_name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{archive_name} already exists"))),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match rustix::fs::renameat(&parent, last(rel), &base_fd, archive_name) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(Removed::Missing),
        Err(e) => return Err(e.into()),
    }
    Ok(Removed::Done)
}

/// Best effort: removes the now-empty intermediate directories of `rel`
/// (after [`remove_volume_dir`] or [`archive_volume_dir`]).
pub fn prune_parents(base: &Path, rel: &RelPath) {
    let comps = rel.components();
    for depth in (1..comps.len()).rev() {
        let Ok(Some(parent)) = open_parent(base, &sub(rel, depth)) else { return };
        if rustix::fs::unlinkat(&parent, comps[depth - 1].as_str(), AtFlags::REMOVEDIR).is_err() {
            return;
        }
    }
}

fn sub(rel: &RelPath, depth: usize) -> RelPath {
    // A prefix of a valid path is valid.
    RelPath::parse(&rel.components()[..depth].join("/")).unwrap_or_else(|_| rel.clone())
}

/// A UTC timestamp like `20260102T030405Z` for archive names.
pub fn timestamp(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::process::Command;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    const ACCESS: DirAccess = DirAccess { mode: 0o750, uid: None, gid: None };

    /// A base dir, and outside it a directory with a sentinel file.
    fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&base).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let sentinel = outside.join("sentinel");
        std::fs::write(&sentinel, b"keep me").unwrap();
        (tmp, base, sentinel)
    }

    #[test]
    fn creates_nested_directories_with_the_mode_asked_for() {
        let (_tmp, base, _) = setup();
        let r = rel("ns/claim");
        assert_eq!(create_volume_dir(&base, &r, ACCESS, None).unwrap().0, Created::New);
        let meta = std::fs::metadata(base.join("ns/claim")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        let Found::Dir(id) = examine(&base, &r).unwrap() else { panic!("made a directory") };
        assert_eq!(
            create_volume_dir(&base, &r, ACCESS, Some(id)).unwrap().0,
            Created::ExistingEmpty,
            "a retry reuses it"
        );
        std::fs::write(base.join("ns/claim/data"), b"x").unwrap();
        assert_eq!(create_volume_dir(&base, &r, ACCESS, Some(id)).unwrap().0, Created::ExistingWithData);
        assert!(
            matches!(create_volume_dir(&base, &r, ACCESS, None), Err(VolumeDirError::NotCreatedHere { .. })),
            "data where only an intent was recorded is not taken"
        );
    }

    #[test]
    fn creation_refuses_to_go_through_a_planted_symlink() {
        let (_tmp, base, sentinel) = setup();
        symlink(sentinel.parent().unwrap(), base.join("ns")).unwrap();
        assert!(create_volume_dir(&base, &rel("ns/claim"), ACCESS, None).is_err());
        assert!(!sentinel.parent().unwrap().join("claim").exists());
        symlink(sentinel.parent().unwrap(), base.join("pvc-1")).unwrap();
        assert!(create_volume_dir(&base, &rel("pvc-1"), ACCESS, None).is_err());
        assert_eq!(examine(&base, &rel("pvc-1")).unwrap(), Found::Other, "a symlink is not a volume directory");
    }

    #[test]
    fn deletion_never_follows_a_symlink_inside_the_volume() {
        let (_tmp, base, sentinel) = setup();
        let r = rel("pvc-1");
        create_volume_dir(&base, &r, ACCESS, None).unwrap();
        let vol = base.join("pvc-1");
        std::fs::create_dir_all(vol.join("sub/deeper")).unwrap();
        std::fs::write(vol.join("sub/file"), b"data").unwrap();
        symlink(sentinel.parent().unwrap(), vol.join("escape")).unwrap();
        symlink(sentinel.parent().unwrap(), vol.join("sub/deeper/escape")).unwrap();
        symlink(&sentinel, vol.join("file-link")).unwrap();
        assert_eq!(remove_volume_dir(&base, &r, None).unwrap(), Removed::Done);
        assert!(!vol.exists());
        assert_eq!(std::fs::read(&sentinel).unwrap(), b"keep me");
        assert!(sentinel.parent().unwrap().exists());
    }

    #[test]
    fn deletion_unlinks_a_symlink_planted_in_place_of_the_volume() {
        let (_tmp, base, sentinel) = setup();
        symlink(sentinel.parent().unwrap(), base.join("pvc-1")).unwrap();
        assert_eq!(remove_volume_dir(&base, &rel("pvc-1"), None).unwrap(), Removed::Done);
        assert!(std::fs::symlink_metadata(base.join("pvc-1")).is_err(), "the link is gone");
        assert_eq!(std::fs::read(&sentinel).unwrap(), b"keep me");
    }

    #[test]
    fn deletion_refuses_a_symlinked_intermediate_directory() {
        let (_tmp, base, sentinel) = setup();
        let outside = sentinel.parent().unwrap();
        std::fs::create_dir(outside.join("claim")).unwrap();
        symlink(outside, base.join("ns")).unwrap();
        assert!(remove_volume_dir(&base, &rel("ns/claim"), None).is_err());
        assert!(outside.join("claim").exists());
        assert!(sentinel.exists());
    }

    #[test]
    fn a_fifo_inside_the_volume_is_removed_without_blocking() {
        let (_tmp, base, _) = setup();
        let r = rel("pvc-1");
        create_volume_dir(&base, &r, ACCESS, None).unwrap();
        let fifo = base.join("pvc-1/pipe");
        let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
        assert!(status.success());
        // Opening a FIFO with no writer would block forever: a hung test is the failure.
        let (tx, rx) = std::sync::mpsc::channel();
        let b = base.clone();
        std::thread::spawn(move || tx.send(remove_volume_dir(&b, &r, None).map_err(|e| e.to_string())));
        let result = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("deletion did not block");
        assert_eq!(result.unwrap(), Removed::Done);
        assert!(!base.join("pvc-1").exists());
    }

    #[test]
    fn missing_volume_is_reported_not_an_error() {
        let (_tmp, base, _) = setup();
        assert_eq!(remove_volume_dir(&base, &rel("pvc-x"), None).unwrap(), Removed::Missing);
        assert_eq!(remove_volume_dir(&base, &rel("ns/pvc-x"), None).unwrap(), Removed::Missing);
        assert_eq!(archive_volume_dir(&base, &rel("pvc-x"), "archived-pvc-x-1", None).unwrap(), Removed::Missing);
    }

    #[test]
    fn empty_pattern_directories_are_pruned_after_delete() {
        let (_tmp, base, _) = setup();
        create_volume_dir(&base, &rel("ns/a"), ACCESS, None).unwrap();
        create_volume_dir(&base, &rel("ns/b"), ACCESS, None).unwrap();
        remove_volume_dir(&base, &rel("ns/a"), None).unwrap();
        prune_parents(&base, &rel("ns/a"));
        assert!(base.join("ns").exists(), "still holds b");
        remove_volume_dir(&base, &rel("ns/b"), None).unwrap();
        prune_parents(&base, &rel("ns/b"));
        assert!(!base.join("ns").exists());
    }

    #[test]
    fn archive_renames_inside_the_base_dir() {
        let (_tmp, base, _) = setup();
        create_volume_dir(&base, &rel("ns/pvc-1"), ACCESS, None).unwrap();
        std::fs::write(base.join("ns/pvc-1/data"), b"x").unwrap();
        assert_eq!(archive_volume_dir(&base, &rel("ns/pvc-1"), "archived-pvc-1-t", None).unwrap(), Removed::Done);
        assert_eq!(std::fs::read(base.join("archived-pvc-1-t/data")).unwrap(), b"x");
        create_volume_dir(&base, &rel("pvc-2"), ACCESS, None).unwrap();
        assert!(
            archive_volume_dir(&base, &rel("pvc-2"), "archived-pvc-1-t", None).is_err(),
            "never overwrites an archive"
        );
    }

    #[test]
    fn free_space_is_reported() {
        let (_tmp, base, _) = setup();
        assert!(free_bytes(&base).unwrap() > 0);
    }

    #[test]
    fn timestamps_are_utc_calendar_times() {
        assert_eq!(timestamp(0), "19700101T000000Z");
        assert_eq!(timestamp(951_782_400), "20000229T000000Z");
        assert_eq!(timestamp(1_767_323_045), "20260102T030405Z");
    }
}
