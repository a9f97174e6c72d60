//! A complete custom provisioner: a directory `<base>/<pv name>` per claim,
//! handed out as a `hostPath` volume, removed when the volume is deleted.
//!
//! Run it against the local test control plane (from the repository root):
//!
//! ```sh
//! eval "$(tests/controlplane/up)"
//! cargo run -p provisioner-examples --example local-dir -- --base-dir /tmp/local-dir &
//! kubectl apply -f - <<EOF
//! apiVersion: storage.k8s.io/v1
//! kind: StorageClass
//! metadata: { name: local-dir }
//! provisioner: example.com/local-dir
//! ---
//! apiVersion: v1
//! kind: PersistentVolumeClaim
//! metadata: { name: data }
//! spec:
//!   storageClassName: local-dir
//!   accessModes: [ReadWriteOnce]
//!   resources: { requests: { storage: 1Gi } }
//! EOF
//! kubectl get pvc data        # Bound; /tmp/local-dir/pvc-<claim uid> exists
//! kubectl delete pvc data     # the directory goes, then the PV
//! ```
//!
//! (`kubectl` is in `$(tests/controlplane/build)`.)

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use clap::Parser;
use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeSpec};
use provisioner_core::{Cause, DeleteError, Engine, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
use tracing_subscriber::EnvFilter;

/// Directories under `base`, one per PersistentVolume.
struct LocalDir {
    base: PathBuf,
}

impl LocalDir {
    /// The directory of volume `pv_name`; `None` for a name that could point outside `base`.
    fn dir(&self, pv_name: &str) -> Option<PathBuf> {
        let safe = !pv_name.is_empty() && !pv_name.contains('/') && !pv_name.contains("..");
        safe.then(|| self.base.join(pv_name))
    }
}

#[async_trait]
impl Provisioner for LocalDir {
    async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        let dir = self.dir(&req.pv_name).ok_or_else(|| ProvisionError::infeasible("unsafe volume name"))?;
        // An existing directory is success: after a crash the engine asks
        // again for the same PV name and must get the same volume. The
        // io::Error is kept as the source: the event reads
        // "creating /tmp/local-dir/pvc-...: Permission denied (os error 13)".
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| ProvisionError::failed(Cause::context(format!("creating {}", dir.display()), e)))?;
        Ok(ProvisionedVolume::new(PersistentVolumeSpec {
            host_path: Some(HostPathVolumeSource {
                path: dir.display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Default::default()
        }))
    }

    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
        // Derived from the PV's name, never from its (editable) hostPath.
        let name = volume.metadata.name.as_deref().unwrap_or_default();
        let dir = self.dir(name).ok_or_else(|| DeleteError::failed(format!("unsafe volume name {name:?}")))?;
        let shown = dir.display().to_string();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        match removed.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()), // already gone
            Err(e) => Err(DeleteError::failed(Cause::context(format!("removing {shown}"), e))),
        }
    }
}

/// Provisions claims of classes naming `--name` as directories under `--base-dir`.
#[derive(Parser)]
struct Args {
    /// The provisioner name StorageClasses refer to.
    #[arg(long, default_value = "example.com/local-dir")]
    name: String,
    /// Where the directories are made.
    #[arg(long)]
    base_dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(log_filter).init();
    let args = Args::parse();
    std::fs::create_dir_all(&args.base_dir)?;
    let client = kube::Client::try_from(kube::Config::infer().await?)?;
    let engine = Engine::builder(client, args.name, Arc::new(LocalDir { base: args.base_dir })).build()?;

    // Ctrl-C or SIGTERM: stop taking work, let running operations finish.
    engine.run(provisioner_core::shutdown_on_signals()).await?;
    Ok(())
}
