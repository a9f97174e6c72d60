//! Deleting whatever a tenant built: very deep trees with few open files
//! allowed, very wide directories with bounded memory, mounts inside a
//! volume, and directories swapped with symlinks out of the volume while the
//! delete runs.
//!
//! Each depth or width case runs in a child process (this test binary run
//! again for one test, under `prlimit` for a lowered `RLIMIT_NOFILE`), so a
//! stack overflow is a failed test, not a dead test binary, and the peak
//! resident memory of the deletion alone can be read: the child resets its
//! high-water mark (`/proc/self/clear_refs`) after building the tree and
//! reads `VmHWM` after deleting it.
//!
//! The full-size figures (100,000 levels, 1,000,000 entries) are ignored by
//! default:
//! `cargo test --release -p hostpath-provisioner --test delete_bounds -- --ignored --nocapture figures`

#![allow(clippy::unwrap_used)]

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use hostpath_provisioner::fs::{self, DirAccess, Removed, TreeError};
use hostpath_provisioner::layout::RelPath;
use rustix::fs::{Mode, OFlags};

const CHILD_ENV: &str = "HOSTPATH_DELETE_BOUNDS_CHILD";
const ACCESS: DirAccess = DirAccess { mode: 0o750, uid: None, gid: None };
/// Open files the child may have: the test harness's own, and the walk's.
const CHILD_NOFILE: u32 = 64;

fn open_dir(at: &OwnedFd, name: &str) -> OwnedFd {
    rustix::fs::openat(at, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .unwrap()
}

/// `levels` nested directories below `top`, holding two descriptors at a time.
fn build_deep(top: &Path, levels: usize) {
    let mut fd = rustix::fs::open(top, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap();
    for i in 0..levels {
        rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        if i % 1000 == 0 {
            // A file now and then, so the levels are not all alike.
            let f =
                rustix::fs::openat(&fd, "f", OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC, Mode::RUSR).unwrap();
            drop(f);
        }
        fd = open_dir(&fd, "d");
    }
}

/// `entries` empty files with 250-byte names in `top`.
fn build_wide(top: &Path, entries: usize) {
    let fd = rustix::fs::open(top, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap();
    for i in 0..entries {
        let name = format!("{i:010}{}", "x".repeat(240));
        let f = rustix::fs::openat(&fd, name.as_str(), OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC, Mode::RUSR)
            .unwrap();
        drop(f);
    }
}

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs in the child: builds one tree, deletes it, prints the figures.
fn child_run(spec: &str) {
    let (kind, n) = spec.split_once(':').unwrap();
    let n: usize = n.parse().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    std::fs::create_dir(&base).unwrap();
    let rel = RelPath::parse("pvc-1").unwrap();
    fs::create_volume_dir(&base, &rel, ACCESS, None).unwrap();
    let vol = base.join("pvc-1");
    let started = Instant::now();
    match kind {
        "deep" => build_deep(&vol, n),
        "wide" => build_wide(&vol, n),
        other => panic!("unknown tree kind {other}"),
    }
    let built = started.elapsed();
    // Reset the peak resident size to the current one: the peak now measured is the deletion's.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let rss_before = status_kib("VmRSS:");
    let started = Instant::now();
    let removed = fs::remove_volume_dir(&base, &rel, None);
    let took = started.elapsed();
    let peak = status_kib("VmHWM:");
    assert_eq!(removed.unwrap(), Removed::Done);
    assert!(!vol.exists());
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let nofile = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().split_whitespace().nth(3).unwrap();
    println!(
        "FIGURES kind={kind} n={n} build_s={:.2} delete_s={:.2} rss_before_kib={rss_before} peak_kib={peak} growth_kib={} max_open_files={nofile}",
        built.as_secs_f64(),
        took.as_secs_f64(),
        peak.saturating_sub(rss_before)
    );
}

/// The entry point of the child process; does nothing unless asked by [`in_child`].
#[test]
#[ignore = "runs only as the child of another test in this file"]
fn child_process() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_run(&spec);
    }
}

/// Figures parsed from the child's `FIGURES` line.
struct Figures {
    line: String,
    growth_kib: u64,
}

/// Runs `spec` in a child process with at most `nofile` open files; `None`
/// when `prlimit` is missing (the test then says so and passes).
fn in_child(spec: &str, nofile: u32) -> Option<Figures> {
    let exe = std::env::current_exe().unwrap();
    let limit = format!("--nofile={nofile}:{nofile}");
    let out = match Command::new("prlimit")
        .arg(&limit)
        .arg(&exe)
        .args(["--exact", "child_process", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED: cannot run prlimit (util-linux) to lower RLIMIT_NOFILE: {e}");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child deleting a {spec} tree failed ({}):\n{stdout}\n{stderr}", out.status);
    let line = stdout.lines().find_map(|l| l.find("FIGURES").map(|i| l[i..].to_string())).unwrap();
    let growth_kib = line.split_whitespace().find_map(|w| w.strip_prefix("growth_kib=")).unwrap().parse().unwrap();
    Some(Figures { line, growth_kib })
}

#[test]
fn a_tree_5000_levels_deep_is_deleted_with_64_open_files_allowed() {
    // The recursive delete overflowed the stack at about 2,000 levels and ran
    // out of descriptors at the open-file limit.
    if let Some(f) = in_child("deep:5000", CHILD_NOFILE) {
        println!("{}", f.line);
    }
}

#[test]
fn a_directory_of_50000_long_names_is_deleted_in_bounded_memory() {
    // The recursive delete first collected every name: about 12 MiB here.
    if let Some(f) = in_child("wide:50000", CHILD_NOFILE) {
        println!("{}", f.line);
        assert!(f.growth_kib < 4 * 1024, "deleting grew the resident set by {} KiB: {}", f.growth_kib, f.line);
    }
}

#[test]
#[ignore = "minutes of filesystem work; prints the figures"]
fn figures_for_100000_levels_and_1000000_entries() {
    for spec in ["deep:100000", "wide:1000000"] {
        if let Some(f) = in_child(spec, 32) {
            println!("{}", f.line);
            assert!(f.growth_kib < 4 * 1024, "deleting grew the resident set by {} KiB: {}", f.growth_kib, f.line);
        }
    }
}

/// A mount made by a test, unmounted (lazily) when dropped.
struct Mounted(PathBuf);

impl Mounted {
    /// `mount <args> <target>`; `None` (with a message) where mounting is not permitted.
    fn new(args: &[&str], target: &Path) -> Option<Mounted> {
        match Command::new("mount").args(args).arg(target).output() {
            Ok(out) if out.status.success() => Some(Mounted(target.to_path_buf())),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: mount {args:?} not permitted here: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_bind_mount_inside_a_volume_is_left_alone_and_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("inner")).unwrap();
    std::fs::write(outside.join("inner/keep"), b"keep me").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outside_file = tmp.path().join("outside-file");
    std::fs::write(&outside_file, b"keep me too").unwrap();
    std::fs::create_dir(&base).unwrap();
    let rel = RelPath::parse("pvc-1").unwrap();
    fs::create_volume_dir(&base, &rel, ACCESS, None).unwrap();
    let vol = base.join("pvc-1");
    std::fs::create_dir_all(vol.join("a/b")).unwrap();
    std::fs::write(vol.join("a/data"), b"tenant data").unwrap();
    std::fs::write(vol.join("a/file-mount"), b"").unwrap();
    // The same filesystem: only the mount ID tells it apart.
    let Some(_dir_mount) = Mounted::new(&["--bind", outside.to_str().unwrap()], &vol.join("a/b")) else { return };
    let Some(_file_mount) = Mounted::new(&["--bind", outside_file.to_str().unwrap()], &vol.join("a/file-mount")) else {
        return;
    };
    let err = fs::remove_volume_dir(&base, &rel, None).unwrap_err();
    let TreeError::Incomplete(left) = &err else { panic!("expected leftovers, got {err:?}") };
    let text = err.to_string();
    assert!(text.contains(&vol.join("a/b").display().to_string()), "{text}");
    assert!(text.contains(&vol.join("a/file-mount").display().to_string()), "{text}");
    assert_eq!(left.mounts.len(), 2, "{text}");
    assert_eq!(std::fs::read(outside.join("inner/keep")).unwrap(), b"keep me");
    assert_eq!(std::fs::read(&outside_file).unwrap(), b"keep me too");
    assert_eq!(mode(&outside), 0o755, "the mounted directory's mode is unchanged");
    assert!(!vol.join("a/data").exists(), "everything else is removed");
    assert!(vol.join("a/b/inner/keep").exists(), "the mount is still there");
}

#[test]
fn a_mount_of_another_filesystem_inside_a_volume_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    std::fs::create_dir(&base).unwrap();
    let rel = RelPath::parse("pvc-1").unwrap();
    fs::create_volume_dir(&base, &rel, ACCESS, None).unwrap();
    let target = base.join("pvc-1/scratch");
    std::fs::create_dir(&target).unwrap();
    let Some(_m) = Mounted::new(&["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"], &target) else { return };
    std::fs::write(target.join("keep"), b"x").unwrap();
    let err = fs::remove_volume_dir(&base, &rel, None).unwrap_err();
    assert!(err.to_string().contains(&target.display().to_string()), "{err}");
    assert!(target.join("keep").exists());
    assert_eq!(mode(&target), 0o755);
}

#[test]
fn a_volume_directory_that_is_itself_a_mount_point_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"x").unwrap();
    std::fs::create_dir(&base).unwrap();
    let rel = RelPath::parse("pvc-1").unwrap();
    fs::create_volume_dir(&base, &rel, ACCESS, None).unwrap();
    let vol = base.join("pvc-1");
    let Some(_m) = Mounted::new(&["--bind", outside.to_str().unwrap()], &vol) else { return };
    let err = fs::remove_volume_dir(&base, &rel, None).unwrap_err();
    assert!(matches!(err, TreeError::MountedVolume { .. }), "{err:?}");
    assert!(outside.join("keep").exists());
}

/// Every path below `dir` with its mode and, for files, content: what must not change.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        out.push((d.clone(), mode(&d), Vec::new()));
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), mode(&p), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Keeps exchanging `dir` and `link` (a symlink out of the volume) in the
/// directory `parent` with `renameat2(RENAME_EXCHANGE)` until `stop` is set
/// or `until`; returns how many exchanges were made, `Err` if the kernel
/// does not support them.
fn swap_until(parent: OwnedFd, stop: &AtomicBool, until: Instant) -> Result<u64, rustix::io::Errno> {
    let mut swaps = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        match rustix::fs::renameat_with(&parent, "dir", &parent, "link", rustix::fs::RenameFlags::EXCHANGE) {
            Ok(()) => swaps += 1,
            Err(e @ (rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS)) if swaps == 0 => return Err(e),
            // One of the two is gone (the walk removed it): the race at this place is over.
            Err(_) => return Ok(swaps),
        }
    }
    Ok(swaps)
}

/// `dir` (a directory with a file, and `depth` more levels below it) and
/// `link` (a symlink to `outside`) in `parent`.
fn plant_swap_pair(parent: &Path, outside: &Path, depth: usize) -> PathBuf {
    let mut d = parent.join("dir");
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::symlink(outside, parent.join("link")).unwrap();
    for i in 0..depth {
        std::fs::write(d.join("f"), i.to_string()).unwrap();
        d = d.join("d");
        std::fs::create_dir(&d).unwrap();
    }
    d
}

#[test]
fn a_directory_swapped_with_a_symlink_out_of_the_volume_during_delete_never_lets_it_reach_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("sub/deeper")).unwrap();
    std::fs::write(outside.join("keep"), b"keep me").unwrap();
    std::fs::write(outside.join("sub/deeper/keep"), b"keep me too").unwrap();
    std::fs::set_permissions(outside.join("sub"), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir(&base).unwrap();
    let before = snapshot(&outside);
    let rel = RelPath::parse("pvc-1").unwrap();
    let vol = base.join("pvc-1");
    let deadline = Instant::now() + std::time::Duration::from_secs(3);
    let (mut rounds, mut swaps) = (0u64, 0u64);
    while Instant::now() < deadline {
        rounds += 1;
        fs::create_volume_dir(&base, &rel, ACCESS, None).unwrap();
        // One swap pair just inside the volume, one below the open-level limit,
        // where the walk moves directories up instead of descending.
        let deep_parent = plant_swap_pair(&vol, &outside, fs::MAX_OPEN_LEVELS + 4);
        plant_swap_pair(&deep_parent, &outside, 3);
        let stop = AtomicBool::new(false);
        let until = Instant::now() + std::time::Duration::from_millis(200);
        let open = |p: &Path| {
            rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap()
        };
        let (top, deep) = (open(&vol), open(&deep_parent));
        let (first, result, second) = std::thread::scope(|s| {
            let a = s.spawn(|| swap_until(top, &stop, until));
            let b = s.spawn(|| swap_until(deep, &stop, until));
            let result = fs::remove_volume_dir(&base, &rel, None);
            stop.store(true, Ordering::Relaxed);
            (a.join().unwrap(), result, b.join().unwrap())
        });
        let (Ok(a), Ok(b)) = (first, second) else {
            eprintln!("SKIPPED: renameat2(RENAME_EXCHANGE) is not supported on this filesystem");
            return;
        };
        swaps += a + b;
        assert_eq!(snapshot(&outside), before, "round {rounds}: outside the base dir was changed ({result:?})");
        // Whatever the racers left (a delete racing a tenant may leave some), a retry removes.
        let again = fs::remove_volume_dir(&base, &rel, None).unwrap();
        assert!(matches!(again, Removed::Done | Removed::Missing));
        assert!(!vol.exists());
    }
    assert_eq!(snapshot(&outside), before);
    println!("FIGURES racer rounds={rounds} exchanges={swaps}");
}
