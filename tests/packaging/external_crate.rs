//! provisioner-core as a dependency of a crate outside the workspace: a
//! small provisioner that picks its own Kubernetes version (`v1_34`, not the
//! workspace's `v1_37`) and its own TLS stack must build, so the library can
//! never again impose a k8s-openapi version feature or a crypto provider.
//!
//! The crate is written to `target/external-crate/` and checked with the
//! workspace's lockfile (same dependency versions) and a target directory of
//! its own that later runs reuse.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the workspace").to_path_buf()
}

const MANIFEST: &str = r#"[package]
name = "outside-provisioner"
version = "0.1.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
provisioner-core = { path = "@CORE@", default-features = false, features = ["rustls-tls", "ring"] }
k8s-openapi = { version = "0.29", default-features = false, features = ["std", "v1_34"] }
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
"#;

const SOURCE: &str = r#"//! A provisioner written against provisioner-core alone, through its re-exports.
use std::sync::Arc;

use provisioner_core::k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeSpec};
use provisioner_core::{DeleteError, Engine, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner, async_trait};

struct Dirs;

#[async_trait]
impl Provisioner for Dirs {
    async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        Ok(ProvisionedVolume::new(PersistentVolumeSpec {
            host_path: Some(HostPathVolumeSource { path: format!("/srv/{}", req.pv_name), type_: None }),
            ..Default::default()
        }))
    }
    async fn delete(&self, _volume: &PersistentVolume) -> Result<(), DeleteError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = provisioner_core::kube::Client::try_default().await?;
    let engine = Engine::builder(client, "example.com/dirs", Arc::new(Dirs)).build()?;
    engine.run(provisioner_core::shutdown_on_signals()).await?;
    Ok(())
}
"#;

#[test]
fn a_crate_with_another_kubernetes_version_and_tls_stack_builds_against_provisioner_core() {
    let root = workspace_root();
    let dir = root.join("target/external-crate");
    std::fs::create_dir_all(dir.join("src")).expect("crate dir");
    let core = root.join("provisioner-core");
    std::fs::write(dir.join("Cargo.toml"), MANIFEST.replace("@CORE@", &core.display().to_string())).expect("manifest");
    std::fs::write(dir.join("src/main.rs"), SOURCE).expect("source");
    // The workspace's versions, so the check needs nothing the workspace has not fetched.
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).expect("lockfile");
    let out = Command::new(env!("CARGO"))
        .args(["check", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "the outside crate does not build:\n{}", String::from_utf8_lossy(&out.stderr));
}
