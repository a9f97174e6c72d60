//! The engine as a process for crash tests (`tests/e2e/crash.rs`), with a
//! file backend that journals every real effect, so a test can kill it with
//! SIGKILL anywhere and check afterwards that nothing leaked and nothing was
//! done twice.
//!
//! Everything lives in `--dir`:
//! - `volumes/<pv name>`: one file per backend volume;
//! - `journal`: `created <pv>` when a volume file is made that did not exist,
//!   `deleted <pv>` when one that existed is removed;
//! - `calls`: `provision <pv> <pid>` / `delete <pv> <pid>` for every call,
//!   with the process id of the engine that made it (and `abort <pv> <pid>`
//!   when a trigger file made it die mid-call);
//! - `abort-before-backend` / `abort-after-backend`: trigger files a test
//!   drops; the next provision call takes one and aborts the process right
//!   after the engine's intent is recorded (before the backend), or right
//!   after the backend volume exists (before its PV).
//!
//! Lines are appended to files opened in append mode, each with one
//! `write_all`, without fsync: the page cache outlives a killed process, and
//! the machine is not what these tests crash.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeSpec};
use provisioner_core::backoff::Backoff;
use provisioner_core::{Cause, DeleteError, Engine, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Runs the engine for one provisioner name against a journaled file backend.
#[derive(Parser)]
struct Args {
    /// The provisioner name to act for.
    #[arg(long)]
    name: String,
    /// The backend's directory (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// How long `provision` waits after creating the volume file and before
    /// returning: the window in which a crash leaves a backend volume that no
    /// PersistentVolume records.
    #[arg(long, default_value_t = 0)]
    provision_delay_ms: u64,
    /// How long `delete` waits after removing the volume file and before
    /// returning: the window in which a crash leaves a PersistentVolume
    /// whose backend volume is gone.
    #[arg(long, default_value_t = 0)]
    delete_delay_ms: u64,
    /// Run as one of several replicas: elect a leader with a Lease in
    /// namespace `default` (short timings: lease 4 s, renew 3 s, retry 1 s,
    /// so failover tests stay quick). Replicas may share `--dir`.
    #[arg(long, default_value_t = false)]
    leader_elect: bool,
    /// This replica's identity (default: the engine's own).
    #[arg(long)]
    identity: Option<String>,
}

/// Backend volumes as files, with a journal of real effects.
struct FileBackend {
    dir: PathBuf,
    provision_delay: Duration,
    delete_delay: Duration,
    /// A file operation and its journal line happen under this lock, so the
    /// journal's order is the order of the effects.
    effects: Mutex<()>,
}

impl FileBackend {
    fn open(args: &Args) -> std::io::Result<FileBackend> {
        std::fs::create_dir_all(args.dir.join("volumes"))?;
        let backend = FileBackend {
            dir: args.dir.clone(),
            provision_delay: Duration::from_millis(args.provision_delay_ms),
            delete_delay: Duration::from_millis(args.delete_delay_ms),
            effects: Mutex::new(()),
        };
        backend.repair_journal()?;
        Ok(backend)
    }

    fn volume_file(&self, pv: &str) -> Result<PathBuf, String> {
        if pv.is_empty() || pv.contains('/') || pv.contains("..") {
            return Err(format!("unsafe volume name {pv:?}"));
        }
        Ok(self.dir.join("volumes").join(pv))
    }

    fn append(&self, file: &str, line: String) -> std::io::Result<()> {
        let mut f = OpenOptions::new().create(true).append(true).open(self.dir.join(file))?;
        f.write_all(format!("{line}\n").as_bytes())
    }

    /// A kill between a file operation and its journal line leaves the two
    /// one step apart; the next process records the effect that happened.
    /// No engine runs yet, so nothing else touches the files.
    fn repair_journal(&self) -> std::io::Result<()> {
        let journal = match std::fs::read_to_string(self.dir.join("journal")) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut journaled: BTreeMap<String, bool> = BTreeMap::new();
        for line in journal.lines() {
            match line.split_once(' ') {
                Some(("created", pv)) => journaled.insert(pv.to_string(), true),
                Some(("deleted", pv)) => journaled.insert(pv.to_string(), false),
                _ => None,
            };
        }
        let mut on_disk = BTreeSet::new();
        for entry in std::fs::read_dir(self.dir.join("volumes"))? {
            on_disk.insert(entry?.file_name().to_string_lossy().into_owned());
        }
        for pv in &on_disk {
            if journaled.get(pv) != Some(&true) {
                eprintln!("crash-target: journaling the creation of {pv}, cut short by the last crash");
                self.append("journal", format!("created {pv}"))?;
            }
        }
        for (pv, exists) in journaled {
            if exists && !on_disk.contains(&pv) {
                eprintln!("crash-target: journaling the deletion of {pv}, cut short by the last crash");
                self.append("journal", format!("deleted {pv}"))?;
            }
        }
        Ok(())
    }

    /// Creates the volume file unless it exists; journals a real creation.
    fn create(&self, pv: &str) -> Result<(), String> {
        let path = self.volume_file(pv)?;
        let _effects = self.effects.lock().unwrap_or_else(|p| p.into_inner());
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => self.append("journal", format!("created {pv}")).map_err(|e| e.to_string()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(format!("creating {}: {e}", path.display())),
        }
    }

    /// Removes the volume file if it exists; journals a real deletion.
    fn remove(&self, pv: &str) -> Result<(), String> {
        let path = self.volume_file(pv)?;
        let _effects = self.effects.lock().unwrap_or_else(|p| p.into_inner());
        match std::fs::remove_file(&path) {
            Ok(()) => self.append("journal", format!("deleted {pv}")).map_err(|e| e.to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", path.display())),
        }
    }
}

/// Trigger files a test drops in `--dir`: the next provision call that
/// takes one (by renaming it, so only one process does) aborts the process
/// at that point, as a SIGKILL would.
const ABORT_BEFORE_BACKEND: &str = "abort-before-backend";
const ABORT_AFTER_BACKEND: &str = "abort-after-backend";

impl FileBackend {
    fn abort_if_asked(&self, trigger: &str, pv: &str) {
        let taken = self.dir.join(format!("{trigger}.taken-{}", std::process::id()));
        if std::fs::rename(self.dir.join(trigger), &taken).is_ok() {
            eprintln!("crash-target: aborting at {trigger} while provisioning {pv}");
            let _ = self.append("calls", format!("abort {pv} {}", std::process::id()));
            std::process::abort();
        }
    }
}

// The file operations are a few microseconds on a local disk, so they run
// inline rather than on the blocking pool.
#[async_trait]
impl Provisioner for FileBackend {
    async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        let call = self.append("calls", format!("provision {} {}", req.pv_name, std::process::id()));
        call.map_err(|e| ProvisionError::failed(Cause::context("recording the call", e)))?;
        // The engine recorded its intent before this call: dying here is
        // the window between the journal's commit and the backend.
        self.abort_if_asked(ABORT_BEFORE_BACKEND, &req.pv_name);
        // A failure after the file may exist counts as "in progress": the
        // engine must finish it, never forget it.
        self.create(&req.pv_name).map_err(ProvisionError::in_progress)?;
        // And here, between the backend volume and its PV.
        self.abort_if_asked(ABORT_AFTER_BACKEND, &req.pv_name);
        tokio::time::sleep(self.provision_delay).await;
        Ok(ProvisionedVolume::new(PersistentVolumeSpec {
            host_path: Some(HostPathVolumeSource {
                path: self.dir.join("volumes").join(&req.pv_name).display().to_string(),
                type_: None,
            }),
            ..Default::default()
        }))
    }

    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
        let pv = volume.metadata.name.clone().unwrap_or_default();
        let call = self.append("calls", format!("delete {pv} {}", std::process::id()));
        call.map_err(|e| DeleteError::failed(Cause::context("recording the call", e)))?;
        self.remove(&pv).map_err(DeleteError::failed)?;
        tokio::time::sleep(self.delete_delay).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let backend = FileBackend::open(&args)?;
    let (client, _) = provisioner_core::client::build_client(kube::Config::infer().await?, None)?;
    let mut builder = Engine::builder(client, args.name.clone(), Arc::new(backend))
        .workers(50)
        .backoff(Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2) })
        .resync(None);
    if let Some(identity) = &args.identity {
        builder = builder.identity(identity.clone());
    }
    if args.leader_elect {
        let identity = args.identity.clone().unwrap_or_else(|| format!("crash-target-{}", std::process::id()));
        let mut election = provisioner_core::leader::LeaderElectionConfig::new(
            provisioner_core::leader::lease_name_for(&args.name),
            "default",
            identity,
        );
        election.lease_duration = Duration::from_secs(4);
        election.renew_deadline = Duration::from_secs(3);
        election.retry_period = Duration::from_secs(1);
        builder = builder.leader_election(election);
    }
    let engine = builder.build()?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    });
    engine.run(shutdown).await?;
    Ok(())
}
