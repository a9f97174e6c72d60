//! provisioner-core as a dependency of a crate outside the workspace: a
//! small provisioner that picks its own Kubernetes version (`v1_34`, not the
//! workspace's `v1_37`) and its own TLS stack must build, so the library can
//! never again impose a k8s-openapi version feature or a crypto provider.
//!
//! Its test uses the testing kit (`provisioner-core`'s `testing` feature, as
//! a dev-dependency): the kit, too, builds with the crate's choices.
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

[dev-dependencies]
provisioner-core = { path = "@CORE@", default-features = false, features = ["rustls-tls", "ring", "testing"] }
tokio = { version = "1", features = ["macros", "rt-multi-thread", "test-util"] }
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

const KIT_TEST: &str = r#"//! The testing kit from outside the workspace: a fake cluster, a scripted
//! backend, fixtures and an event wait, through provisioner-core alone.
use std::sync::Arc;

use provisioner_core::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use provisioner_core::kube::api::{Api, PostParams};
use provisioner_core::testing::{FakeCluster, Fault, ProvisionAnswer, ScriptedBackend, Verb, fixtures};
use provisioner_core::{Engine, ProvisionError};

#[tokio::test(start_paused = true)]
async fn a_failing_backend_is_retried_until_the_claim_binds() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = FakeCluster::with_binder();
    let client = cluster.client();
    Api::all(client.clone()).create(&PostParams::default(), &fixtures::class("fast", "example.com/dirs").build()).await?;
    let backend = ScriptedBackend::new();
    backend.script([ProvisionAnswer::Fail(ProvisionError::failed("quota exceeded"))]);
    cluster.fail_next::<PersistentVolume>(Verb::Create, Fault::InternalError, 1);
    let engine = cluster.spawn_engine(|c| Engine::builder(c, "example.com/dirs", Arc::new(backend.clone())).build())?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, "default");
    claims.create(&PostParams::default(), &fixtures::claim("default", "data").class("fast").build()).await?;
    cluster.wait_for_event("default", "data", "ProvisioningFailed").await?;
    backend.wait_until(|s| s.created == 1).await?;
    cluster.wait_for::<PersistentVolumeClaim>("default", "data", |c| c.is_some_and(|c| fixtures::claim_phase(c) == "Bound")).await?;
    engine.stop().await?;
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
    std::fs::create_dir_all(dir.join("tests")).expect("tests dir");
    std::fs::write(dir.join("tests/kit.rs"), KIT_TEST).expect("kit test");
    // The workspace's versions, so the check needs nothing the workspace has not fetched.
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).expect("lockfile");
    let out = Command::new(env!("CARGO"))
        // All targets: the binary, and a test on the testing kit (a dev-dependency feature).
        .args(["check", "--quiet", "--all-targets", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "the outside crate does not build:\n{}", String::from_utf8_lossy(&out.stderr));
}
