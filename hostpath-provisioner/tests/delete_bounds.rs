//! Deleting whatever a tenant built: very deep trees with few open files
//! allowed, very wide directories with bounded memory, and mounts inside a
//! volume.
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
