//! Testing a custom provisioner end to end, in milliseconds and without a
//! cluster: `provisioner_core::testing::FakeCluster` plays the API server and
//! kube-controller-manager's PV binder.
//!
//! Run it with `cargo run -p provisioner-examples --example testing_kit`; in
//! a real project the same lines go in a `#[tokio::test(start_paused = true)]`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec};
use kube::api::{Api, DeleteParams, PostParams};
use provisioner_core::testing::{FakeCluster, Fault, Verb, fixtures};
use provisioner_core::{DeleteError, Engine, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};

/// The provisioner under test: "directories" in a set.
#[derive(Default)]
struct Dirs {
    dirs: Mutex<BTreeSet<String>>,
}

#[async_trait::async_trait]
impl Provisioner for Dirs {
    async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(req.pv_name.clone());
        Ok(ProvisionedVolume::new(PersistentVolumeSpec {
            host_path: Some(HostPathVolumeSource { path: format!("/srv/{}", req.pv_name), type_: None }),
            ..Default::default()
        }))
    }

    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
        let name = volume.metadata.name.clone().unwrap_or_default();
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        Ok(())
    }
}

const NAME: &str = "example.com/dirs";

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = FakeCluster::with_binder();
    let client = cluster.client();
    let dirs = Arc::new(Dirs::default());

    // A class and a running engine; the first PV create fails, as an API server might.
    Api::all(client.clone()).create(&PostParams::default(), &fixtures::class("fast", NAME).build()).await?;
    cluster.fail_next::<PersistentVolume>(Verb::Create, Fault::InternalError, 1);
    let engine = cluster.spawn_engine(|c| Engine::builder(c, NAME, dirs.clone()).build())?;

    // A claim: the binder hands it to us, the engine provisions, the binder binds.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, "default");
    claims.create(&PostParams::default(), &fixtures::claim("default", "data").class("fast").build()).await?;
    let phase = |c: Option<&PersistentVolumeClaim>| c.and_then(|c| c.status.as_ref()?.phase.clone());
    let bound = cluster.wait_for("default", "data", |c| phase(c).as_deref() == Some("Bound")).await?;
    let volume = bound.and_then(|c| c.spec?.volume_name).unwrap_or_default();
    println!("claim bound to {volume}; backend holds {:?}", dirs.dirs.lock().unwrap_or_else(|p| p.into_inner()));

    // Deleting the claim releases the volume; the engine deletes it and its directory.
    claims.delete("data", &DeleteParams::default()).await?;
    cluster.wait_for::<PersistentVolume>("", &volume, |v| v.is_none()).await?;
    assert!(dirs.dirs.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
    println!("volume {volume} and its directory are gone");
    engine.stop().await?;
    Ok(())
}
