//! One scenario suite for two backends: the real control plane
//! (`tests/e2e/scenarios.rs`) and the testing kit's `FakeCluster`
//! (`tests/kit/scenarios.rs`). Each scenario takes a [`Plane`] and asserts
//! the claim phases, volume fields and event reasons a user sees; that the
//! same assertions pass on both is the evidence that the kit tells the truth.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use provisioner_core::backoff::Backoff;
use provisioner_core::{Engine, ProvisionError, keys};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::backend::{FakeBackend, Scripted};
use crate::fixtures::{claim, claim_phase, storage_class, volume_phase};
use crate::{default_timeout, events_for, wait_for, wait_for_event};

/// Where a scenario runs: a client, a fresh namespace, and a way to give an
/// engine a client of its own.
pub struct Plane {
    /// The test's own client.
    pub client: Client,
    /// A namespace no other test uses.
    pub namespace: String,
    /// Appended to names of cluster-scoped objects (classes).
    pub suffix: String,
    /// The provisioner name of this scenario's engine (unique per test).
    pub provisioner: String,
    engine_client: Box<dyn Fn() -> Client + Send + Sync>,
}

impl Plane {
    /// A plane whose engines get clients from `engine_client`.
    pub fn new(
        client: Client,
        namespace: impl Into<String>,
        suffix: impl Into<String>,
        engine_client: impl Fn() -> Client + Send + Sync + 'static,
    ) -> Plane {
        let suffix = suffix.into();
        Plane {
            client,
            namespace: namespace.into(),
            provisioner: format!("e2e.provisioner-rs.io/{suffix}"),
            suffix,
            engine_client: Box::new(engine_client),
        }
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn volumes(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    async fn class(&self, base: &str, policy: &str, wffc: bool) -> String {
        let name = format!("{base}-{}", self.suffix);
        let mut k = storage_class(&name, &self.provisioner);
        k.reclaim_policy = Some(policy.into());
        if wffc {
            k.volume_binding_mode = Some("WaitForFirstConsumer".into());
        }
        k.metadata.labels = Some([(crate::RUN_LABEL.to_string(), self.suffix.clone())].into());
        Api::<StorageClass>::all(self.client.clone()).create(&PostParams::default(), &k).await.expect("class");
        name
    }

    async fn claim(&self, name: &str, class: &str, size: &str) -> PersistentVolumeClaim {
        self.claims().create(&PostParams::default(), &claim(name, class, size)).await.expect("claim")
    }

    async fn engine(&self, backend: &FakeBackend) -> RunningEngine {
        let engine = Engine::builder((self.engine_client)(), self.provisioner.clone(), Arc::new(backend.clone()))
            .backoff(Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(2) })
            .resync(None)
            .workers(16)
            .build()
            .expect("engine");
        let mut status = engine.status();
        let token = CancellationToken::new();
        let handle = tokio::spawn(engine.run(token.clone()));
        tokio::time::timeout(default_timeout(), status.wait_for(|s| s.synced))
            .await
            .expect("synced in time")
            .expect("engine running");
        RunningEngine { token, handle }
    }

    async fn bound(&self, name: &str) -> PersistentVolumeClaim {
        wait_for(&self.claims(), name, "the claim to be Bound", default_timeout(), |c| {
            c.is_some_and(|c| claim_phase(c) == "Bound")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("claim")
    }

    async fn volume_in_phase(&self, name: &str, phase: &str) -> PersistentVolume {
        wait_for(&self.volumes(), name, phase, default_timeout(), |v| v.is_some_and(|v| volume_phase(v) == phase))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("volume")
    }
}

struct RunningEngine {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), provisioner_core::EngineError>>,
}

impl RunningEngine {
    async fn stop(self) {
        self.token.cancel();
        self.handle.await.expect("engine task").expect("clean shutdown");
    }
}

fn pv_name(c: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", c.uid().expect("uid"))
}

fn annotation<'a>(o: &'a impl ResourceExt, key: &str) -> Option<&'a str> {
    o.annotations().get(key).map(String::as_str)
}

/// A claim of an `Immediate` class is annotated by the binder, provisioned,
/// and bound; the volume carries every field the engine fills in.
pub async fn immediate_bind(p: &Plane) {
    let class = p.class("immediate", "Delete", false).await;
    let backend = FakeBackend::new();
    let engine = p.engine(&backend).await;
    let created = p.claim("data", &class, "2Gi").await;
    assert_eq!(claim_phase(&created), "Pending");
    assert!(created.finalizers().contains(&"kubernetes.io/pvc-protection".to_string()));

    let c = p.bound("data").await;
    let pv_name = pv_name(&created);
    assert_eq!(c.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some(pv_name.as_str()));
    assert_eq!(annotation(&c, keys::STORAGE_PROVISIONER), Some(p.provisioner.as_str()));
    assert_eq!(annotation(&c, keys::BETA_STORAGE_PROVISIONER), Some(p.provisioner.as_str()));
    assert_eq!(annotation(&c, "pv.kubernetes.io/bind-completed"), Some("yes"));
    let status = c.status.clone().expect("status");
    assert_eq!(status.capacity.expect("capacity")["storage"].0, "2Gi");
    assert_eq!(status.access_modes, Some(vec!["ReadWriteOnce".to_string()]));

    let pv = p.volume_in_phase(&pv_name, "Bound").await;
    let spec = pv.spec.clone().expect("spec");
    let claim_ref = spec.claim_ref.clone().expect("claimRef");
    assert_eq!(claim_ref.uid, created.uid());
    assert_eq!((claim_ref.namespace.as_deref(), claim_ref.name.as_deref()), (Some(p.namespace.as_str()), Some("data")));
    assert_eq!(annotation(&pv, keys::PROVISIONED_BY), Some(p.provisioner.as_str()));
    assert_eq!(spec.storage_class_name.as_deref(), Some(class.as_str()));
    assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(spec.capacity.expect("capacity")["storage"].0, "2Gi");
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
    let mut finalizers = pv.finalizers().to_vec();
    finalizers.sort();
    assert_eq!(finalizers, vec![keys::VOLUME_FINALIZER.to_string(), "kubernetes.io/pv-protection".to_string()]);

    let ev = wait_for_event(&p.client, &p.namespace, "data", "ProvisioningSucceeded").await;
    assert_eq!(ev.note.as_deref(), Some(format!("Successfully provisioned volume {pv_name}").as_str()));
    let external = wait_for_event(&p.client, &p.namespace, "data", "ExternalProvisioning").await;
    assert_eq!(external.type_.as_deref(), Some("Normal"));
    assert!(external.note.as_deref().is_some_and(|n| n.contains(&p.provisioner)));
    assert_eq!(backend.provision_calls(), vec![pv_name]);
    engine.stop().await;
}

/// A `WaitForFirstConsumer` claim waits, with the binder's event, until a
/// node is selected; the node reaches the backend.
pub async fn wait_for_first_consumer(p: &Plane) {
    let class = p.class("wffc", "Delete", true).await;
    let backend = FakeBackend::new();
    let engine = p.engine(&backend).await;
    let created = p.claim("data", &class, "1Gi").await;
    let ev = wait_for_event(&p.client, &p.namespace, "data", "WaitForFirstConsumer").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    let c = p.claims().get("data").await.expect("claim");
    assert_eq!(annotation(&c, keys::STORAGE_PROVISIONER), None, "not handed to a provisioner before a node");
    assert_eq!(claim_phase(&c), "Pending");
    assert!(backend.provision_calls().is_empty());

    let patch = json!({ "metadata": { "annotations": { keys::SELECTED_NODE: "node-a" } } });
    p.claims().patch("data", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("select node");
    p.bound("data").await;
    assert_eq!(backend.volumes().get(&pv_name(&created)), Some(&Some("node-a".to_string())));
    engine.stop().await;
}

/// Deleting the claim of a `Delete` volume releases it; the engine deletes
/// the backend volume and then the volume object.
pub async fn released_and_deleted(p: &Plane) {
    let class = p.class("delete", "Delete", false).await;
    let backend = FakeBackend::new();
    let engine = p.engine(&backend).await;
    let created = p.claim("data", &class, "1Gi").await;
    p.bound("data").await;
    let pv_name = pv_name(&created);
    p.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    wait_for(&p.volumes(), &pv_name, "the volume to be deleted", default_timeout(), |v| v.is_none())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(&p.claims(), "data", "the claim to be gone", default_timeout(), |c| c.is_none())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backend.deleted(), 1);
    assert!(!backend.has(&pv_name));
    assert_eq!(backend.delete_calls(), vec![pv_name]);
    engine.stop().await;
}

/// Deleting the claim of a `Retain` volume leaves it `Released`, with its backend.
pub async fn released_and_retained(p: &Plane) {
    let class = p.class("retain", "Retain", false).await;
    let backend = FakeBackend::new();
    let engine = p.engine(&backend).await;
    let created = p.claim("data", &class, "1Gi").await;
    p.bound("data").await;
    let pv_name = pv_name(&created);
    p.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    let pv = p.volume_in_phase(&pv_name, "Released").await;
    assert_eq!(pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()), Some("Retain"));
    assert_eq!(pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone()), created.uid());
    assert!(pv.metadata.deletion_timestamp.is_none());
    assert!(backend.has(&pv_name));
    assert!(backend.delete_calls().is_empty());
    engine.stop().await;
}

/// A provisioner failing twice and then succeeding: two `ProvisioningFailed`
/// warnings with its message, then `ProvisioningSucceeded` and a bound claim.
pub async fn failing_then_succeeding(p: &Plane) {
    let class = p.class("flaky", "Delete", false).await;
    let backend = FakeBackend::new();
    let busy = ProvisionError::Final("backend busy".into());
    backend.script([Scripted::Fail(busy.clone()), Scripted::Fail(busy)]);
    let engine = p.engine(&backend).await;
    p.claim("data", &class, "1Gi").await;
    p.bound("data").await;
    wait_for_event(&p.client, &p.namespace, "data", "ProvisioningSucceeded").await;
    let failed = events_for(&p.client, &p.namespace, "data", "ProvisioningFailed").await;
    assert!(!failed.is_empty(), "a ProvisioningFailed event");
    assert!(failed.iter().all(|e| e.type_.as_deref() == Some("Warning") && e.note.as_deref() == Some("backend busy")));
    // Identical repeats aggregate into one event with a series.
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(backend.provision_calls().len(), 3);
    assert_eq!(backend.created(), 1);
    engine.stop().await;
}
