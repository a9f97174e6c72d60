//! A node's disks as they really fill up: inodes running out, requests
//! promised beyond the disk's size, and directory modes under a hostile
//! umask.
//!
//! The inode and capacity cases run on a small tmpfs mounted by the test
//! (root; skipped with a message where `mount` is not permitted), so the
//! figures do not depend on the machine's disk. The umask case runs this test
//! binary again as a child under `sh -c 'umask 077; exec ...'`.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use hostpath_provisioner::capacity::OvercommitRatio;
use hostpath_provisioner::fs::{self, DirAccess};
use hostpath_provisioner::layout::{LEDGER_DIR, RelPath};
use hostpath_provisioner::provisioner::DEFAULT_PROVISIONER_NAME;
use hostpath_provisioner::{HostPathProvisioner, NodeIdentity, Settings, SharedSettings};
use k8s_openapi::api::core::v1::PersistentVolume;
use provisioner_core::testing::fixtures;
use provisioner_core::{ProvisionError, ProvisionRequest, Provisioner};

const CHILD_ENV: &str = "HOSTPATH_NODE_HEALTH_CHILD";

/// A tmpfs mounted by a test, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// A tmpfs with `options` at `target`; `None` (with a message) where mounting is not permitted.
    fn new(options: &str, target: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(target).unwrap();
        match Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(target).output() {
            Ok(out) if out.status.success() => Some(Tmpfs(target.to_path_buf())),
            Ok(out) => {
                eprintln!("SKIPPED: mounting a tmpfs is not permitted here: {}", String::from_utf8_lossy(&out.stderr));
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn provisioner(bases: &[&Path], tune: impl FnOnce(&mut Settings)) -> HostPathProvisioner {
    let dirs: Vec<String> = bases.iter().map(|b| b.display().to_string()).collect();
    let mut s = Settings::from_values(&dirs, None, "0770", None, None, "local", "delete").unwrap();
    tune(&mut s);
    let node = NodeIdentity { name: "node-a".into(), hostname: "host-a".into() };
    HostPathProvisioner::new(node, SharedSettings::new(s))
}

fn request(pv: &str, bytes: u64) -> ProvisionRequest {
    let class = fixtures::class("local", DEFAULT_PROVISIONER_NAME).wait_for_first_consumer();
    ProvisionRequest::new(
        pv,
        Arc::new(fixtures::claim("ns", pv).as_stored(pv).request(&bytes.to_string()).build()),
        Arc::new(class.build()),
    )
    .with_selected_node(Some("node-a".into()))
}

fn saved(pv: &str, v: provisioner_core::ProvisionedVolume) -> PersistentVolume {
    PersistentVolume {
        metadata: kube::api::ObjectMeta {
            name: Some(pv.into()),
            annotations: Some(v.annotations),
            ..Default::default()
        },
        spec: Some(v.spec),
        ..Default::default()
    }
}

fn reschedule_message(result: Result<provisioner_core::ProvisionedVolume, ProvisionError>) -> String {
    match result {
        Err(ProvisionError::Reschedule(m)) => m.chain(),
        other => panic!("expected Reschedule, got {other:?}"),
    }
}

/// Creates files in `dir` until the filesystem has no inode left; returns how many.
fn use_up_inodes(dir: &Path) -> usize {
    std::fs::create_dir(dir).unwrap();
    let mut n = 0;
    loop {
        match std::fs::File::create(dir.join(n.to_string())) {
            Ok(_) => n += 1,
            Err(e) if fs::is_out_of_space(&e) => return n,
            Err(e) => panic!("filling inodes: {e}"),
        }
    }
}

#[tokio::test]
async fn a_filesystem_out_of_inodes_sends_the_claim_to_another_node() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("small");
    let Some(_mounted) = Tmpfs::new("size=16m,nr_inodes=64", &base) else { return };
    let p = provisioner(&[&base], |s| s.capacity.min_free_inodes = 16);
    p.provision(&request("pvc-1", 1024)).await.unwrap();
    let filled = use_up_inodes(&base.join("tenant-files"));
    assert!(fs::space(&base).unwrap().free_bytes > 1 << 20, "bytes are still free");

    // Below the minimum: refused before anything is written.
    let m = reschedule_message(p.provision(&request("pvc-2", 1024)).await);
    assert!(m.contains("not enough free inodes"), "the reason is given: {m}");
    println!("after {filled} files: {m}");

    // With no minimum, the filesystem itself says no: still another node's job, and nothing is left.
    let p = provisioner(&[&base], |s| s.capacity.min_free_inodes = 0);
    let m = reschedule_message(p.provision(&request("pvc-2", 1024)).await);
    assert!(m.contains("No space left"), "{m}");
    assert!(!base.join("pvc-2").exists());
    assert!(!base.join(LEDGER_DIR).join("pvc-2").exists());

    // A second base dir with inodes serves the claim.
    let roomy = tmp.path().join("roomy");
    std::fs::create_dir(&roomy).unwrap();
    let p = provisioner(&[&base, &roomy], |_| {});
    p.provision(&request("pvc-2", 1024)).await.unwrap();
    assert!(roomy.join("pvc-2").is_dir());
}

#[tokio::test]
async fn five_claims_each_asking_60_percent_of_the_disk_do_not_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("disk");
    let Some(_mounted) = Tmpfs::new("size=64m", &base) else { return };
    let size = fs::space(&base).unwrap().size;
    let each = size / 10 * 6;
    let p = provisioner(&[&base], |_| {});
    let mut made = Vec::new();
    let mut refused = Vec::new();
    for i in 0..5 {
        let pv = format!("pvc-{i}");
        match p.provision(&request(&pv, each)).await {
            Ok(v) => made.push(saved(&pv, v)),
            Err(ProvisionError::Reschedule(m)) => refused.push(m.chain()),
            Err(e) => panic!("{pv}: {e:?}"),
        }
    }
    println!("disk of {size} bytes, claims of {each}: {} made, {} sent elsewhere", made.len(), refused.len());
    assert_eq!(made.len(), 1);
    assert!(refused[0].contains("already promised to 1 volumes"), "{}", refused[0]);

    // Deleting the volume gives its promise back.
    p.delete(&made.pop().unwrap()).await.unwrap();
    p.provision(&request("pvc-again", each)).await.unwrap();

    // An overcommit ratio of 2 promises twice the disk: three of them fit in all.
    let p = provisioner(&[&base], |s| s.capacity.overcommit_ratio = OvercommitRatio::new(2.0).unwrap());
    let mut more = 0;
    for i in 0..4 {
        if p.provision(&request(&format!("pvc-x{i}"), each)).await.is_ok() {
            more += 1;
        }
    }
    assert_eq!(more, 2, "with the one already there");
}

/// The mode bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Runs in the child, under the umask the parent set.
fn child_make_dirs(dir: &Path) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let umask = status.lines().find_map(|l| l.strip_prefix("Umask:")).unwrap().trim().to_string();
    println!("child umask {umask}");
    let base = dir.join("base");
    std::fs::create_dir(&base).unwrap();
    let access = DirAccess { mode: 0o2770, uid: None, gid: None };
    fs::create_volume_dir(&base, &RelPath::parse("a/b/c/pvc-1").unwrap(), access, None).unwrap();
    fs::Ledger::open(&base).unwrap();
    for dir in ["a", "a/b", "a/b/c", "a/b/c/pvc-1", LEDGER_DIR] {
        println!("mode {dir} {:o}", mode(&base.join(dir)));
    }
}

#[test]
#[ignore = "runs only as the child of another test in this file"]
fn child_process() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child_make_dirs(Path::new(&dir));
    }
}

#[test]
fn intermediate_directories_get_exact_modes_whatever_the_umask() {
    for umask in ["077", "777", "022"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "child_process", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, tmp.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "umask {umask}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("child umask 0{umask}")), "the child ran under umask {umask}: {stdout}");
        let base = tmp.path().join("base");
        for dir in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&base.join(dir)), 0o750, "{dir} under umask {umask}");
        }
        assert_eq!(mode(&base.join("a/b/c/pvc-1")), 0o2770, "the volume under umask {umask}");
        assert_eq!(mode(&base.join(LEDGER_DIR)), 0o700, "the ledger under umask {umask}");
    }
}
