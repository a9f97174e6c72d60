//! One scenario suite for two backends: the real control plane
//! (`tests/e2e/scenarios.rs`) and the testing kit's `FakeCluster`
//! (`tests/kit/scenarios.rs`). Each scenario takes a [`Plane`] and asserts
//! the claim phases, volume fields and event reasons a user sees; that the
//! same assertions pass on both is the evidence that the kit tells the truth.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use provisioner_core::backoff::Backoff;
use provisioner_core::provisioner::DataSource;
use provisioner_core::{Engine, ProvisionError, keys};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{default_timeout, events_for, wait_for, wait_for_event};
use provisioner_core::testing::fixtures::{claim, claim_phase, claim_ref, class, static_volume, volume_phase};
use provisioner_core::testing::{ProvisionAnswer, ScriptedBackend};

/// The pv-protection controller's finalizer.
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

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
    quiet: Duration,
    peer: Option<PathBuf>,
    probes: std::sync::atomic::AtomicUsize,
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
            quiet: Duration::from_secs(3),
            peer: None,
            probes: Default::default(),
        }
    }

    /// How long "nothing happens" is watched for in the no-retry-loop and
    /// no-repeated-warning checks (default 3 s, with the engines' 200 ms to
    /// 2 s backoff). Under the kit's paused time make it minutes: every retry
    /// the engine would make passes in an instant. (Checks that the engine
    /// left an object alone wait on a barrier instead.)
    pub fn quiet_period(mut self, quiet: Duration) -> Plane {
        self.quiet = quiet;
        self
    }

    /// Play "another provisioner in the same cluster" with this Go peer
    /// binary (`tests/peer`, the Go library v13 with its finalizer option
    /// on) rather than with a second engine of ours.
    pub fn with_peer(mut self, binary: PathBuf) -> Plane {
        self.peer = Some(binary);
        self
    }

    /// The name of the other provisioner sharing the cluster (unique per test).
    pub fn other_provisioner(&self) -> String {
        format!("other.example.com/csi-{}", self.suffix)
    }

    /// Lets the quiet period pass: time for the engine to retry or repeat
    /// a warning, which it must not.
    async fn settle(&self) {
        tokio::time::sleep(self.quiet).await;
    }

    /// Waits until the engine has caught up with the volumes written so
    /// far, so that "it did nothing to that volume" can be asserted without a
    /// sleep: a probe volume of ours (`Delete` policy, no finalizer, bound to
    /// nothing, of a class no claim uses) is created after them, and the
    /// engine adds its finalizer. No backend call.
    async fn volume_barrier(&self) {
        let n = self.probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("probe-{n}-{}", self.suffix);
        let v = static_volume(&name)
            .class(&format!("probe-{}", self.suffix))
            .access_modes(&["ReadWriteMany"])
            .reclaim_policy("Delete")
            .provisioned_by(&self.provisioner);
        self.create_volume(v.build()).await;
        self.volume_where(&name, "the engine to add its finalizer to a probe volume (a barrier)", |v| {
            has_finalizer(v, keys::VOLUME_FINALIZER)
        })
        .await;
    }

    /// Waits until the engine has caught up with the claims written so far,
    /// so that "it did not provision that claim" can be asserted without a
    /// sleep: a probe claim of `class` (ours) asking for a selector is
    /// created after them, and the engine refuses it with its warning. No
    /// backend call.
    async fn claim_barrier(&self, class: &str) {
        let n = self.probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("probe-{n}");
        self.create_claim(claim("", &name).class(class).selector("probe", "barrier").build()).await;
        self.our_event(&name, "ProvisioningFailed").await;
    }

    fn run_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(crate::RUN_LABEL.to_string(), self.suffix.clone())])
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn volumes(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    fn classes(&self) -> Api<StorageClass> {
        Api::all(self.client.clone())
    }

    async fn class(&self, base: &str, policy: &str, wffc: bool) -> String {
        self.class_of(base, &self.provisioner, policy, wffc).await
    }

    /// A class `<base>-<suffix>` of `provisioner`.
    async fn class_of(&self, base: &str, provisioner: &str, policy: &str, wffc: bool) -> String {
        let name = format!("{base}-{}", self.suffix);
        let k = class(&name, provisioner).reclaim_policy(policy).label(crate::RUN_LABEL, &self.suffix);
        let k = if wffc { k.wait_for_first_consumer() } else { k.immediate() }.build();
        self.classes().create(&PostParams::default(), &k).await.expect("class");
        name
    }

    async fn claim(&self, name: &str, class: &str, size: &str) -> PersistentVolumeClaim {
        self.create_claim(claim("", name).class(class).request(size).build()).await
    }

    async fn create_claim(&self, c: PersistentVolumeClaim) -> PersistentVolumeClaim {
        let name = c.name_any();
        self.claims().create(&PostParams::default(), &c).await.unwrap_or_else(|e| panic!("claim {name}: {e}"))
    }

    /// Creates a volume made by hand (an admin's, another provisioner's),
    /// labelled as this run's so that clean-up on the real plane finds it.
    async fn create_volume(&self, mut v: PersistentVolume) -> PersistentVolume {
        v.metadata.labels.get_or_insert_with(BTreeMap::new).extend(self.run_labels());
        let name = v.name_any();
        self.volumes().create(&PostParams::default(), &v).await.unwrap_or_else(|e| panic!("volume {name}: {e}"))
    }

    async fn engine(&self, backend: &ScriptedBackend) -> RunningEngine {
        self.engine_named(&self.provisioner, backend).await
    }

    /// An engine for provisioner name `name` (another provisioner's, when
    /// it is not [`Plane::provisioner`]).
    async fn engine_named(&self, name: &str, backend: &ScriptedBackend) -> RunningEngine {
        let engine = Engine::builder((self.engine_client)(), name.to_string(), Arc::new(backend.clone()))
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

    async fn volume_where(&self, name: &str, what: &str, cond: impl Fn(&PersistentVolume) -> bool) -> PersistentVolume {
        wait_for(&self.volumes(), name, what, default_timeout(), |v| v.is_some_and(&cond))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("volume")
    }

    async fn claim_where(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&PersistentVolumeClaim) -> bool,
    ) -> PersistentVolumeClaim {
        wait_for(&self.claims(), name, what, default_timeout(), |c| c.is_some_and(&cond))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("claim")
    }

    /// Waits until the binder has handed the claim to `provisioner`.
    async fn handed_to(&self, name: &str, provisioner: &str) -> PersistentVolumeClaim {
        self.claim_where(name, &format!("the claim to be handed to {provisioner}"), |c| {
            annotation(c, keys::STORAGE_PROVISIONER) == Some(provisioner)
        })
        .await
    }

    async fn gone<K>(&self, api: &Api<K>, name: &str, what: &str)
    where
        K: Resource + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + 'static,
        <K as Resource>::DynamicType: Default,
    {
        wait_for(api, name, what, default_timeout(), |o| o.is_none()).await.unwrap_or_else(|e| panic!("{e}"));
    }

    async fn volume_exists(&self, name: &str) -> bool {
        self.volumes().get_opt(name).await.expect("get volume").is_some()
    }

    /// Events our engine published about `name` (in the plane's namespace,
    /// or `default` for volumes), with `reason` if given.
    async fn our_events(&self, namespace: &str, name: &str, reason: Option<&str>) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let list = api.list(&ListParams::default()).await.expect("list events").items;
        list.into_iter().filter(|e| self.is_ours_about(e, name, reason)).collect()
    }

    fn is_ours_about(&self, e: &Event, name: &str, reason: Option<&str>) -> bool {
        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            && e.reporting_controller.as_deref() == Some(self.provisioner.as_str())
            && reason.is_none_or(|r| e.reason.as_deref() == Some(r))
    }

    /// Waits for an event from our engine about the claim `name` with `reason`.
    async fn our_event(&self, name: &str, reason: &str) -> Event {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        let deadline = tokio::time::Instant::now() + default_timeout();
        loop {
            match tokio::time::timeout_at(deadline, stream.try_next()).await {
                Ok(Ok(Some(watcher::Event::Apply(e) | watcher::Event::InitApply(e)))) => {
                    if self.is_ours_about(&e, name, Some(reason)) {
                        return e;
                    }
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => panic!("event watch ended"),
                Ok(Err(e)) => panic!("event watch failed: {e}"),
                Err(_) => panic!("timed out waiting for our {reason} event on {name}"),
            }
        }
    }

    /// Asserts that the claim got exactly one `ProvisioningFailed` warning
    /// from us, never repeated (no series), and nothing else from us.
    async fn warned_once(&self, name: &str) -> Event {
        let failed = self.our_events(&self.namespace, name, Some("ProvisioningFailed")).await;
        assert_eq!(failed.len(), 1, "one ProvisioningFailed event about {name}: {failed:#?}");
        let ev = failed.into_iter().next().expect("event");
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert!(ev.series.is_none(), "the warning about {name} was repeated: {:?}", ev.series);
        let all = self.our_events(&self.namespace, name, None).await;
        assert_eq!(all.len(), 1, "no other event from us about {name}: {all:#?}");
        ev
    }

    /// Asserts that the claim is still Pending with no volume of ours.
    async fn unprovisioned(&self, name: &str) {
        let c = self.claims().get(name).await.expect("claim");
        assert_eq!(claim_phase(&c), "Pending", "{name} stays Pending");
        assert_eq!(c.spec.as_ref().and_then(|s| s.volume_name.as_deref()), None, "{name} has no volume");
        assert!(!self.volume_exists(&pv_name(&c)).await, "no volume was made for {name}");
    }

    /// Starts the other provisioner: the Go peer if the plane has one, or
    /// else a second engine of ours under the other name.
    async fn other_side(&self) -> OtherSide {
        let name = self.other_provisioner();
        match &self.peer {
            Some(bin) => {
                let counts = std::env::temp_dir().join(format!("peer-counts-{}.json", self.suffix));
                let log = std::env::temp_dir().join(format!("peer-{}.log", self.suffix));
                let _ = std::fs::remove_file(&counts);
                let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG");
                let child = tokio::process::Command::new(bin)
                    .arg("--provisioner")
                    .arg(&name)
                    .arg("--kubeconfig")
                    .arg(kubeconfig)
                    .arg("--add-finalizer")
                    .arg("--kube-api-qps=100")
                    .arg("--kube-api-burst=200")
                    .arg("--counts-file")
                    .arg(&counts)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap_or_else(|e| panic!("starting the Go peer {}: {e}", bin.display()));
                OtherSide::Peer { child: Box::new(child), counts, log }
            }
            None => {
                let backend = ScriptedBackend::new();
                let engine = self.engine_named(&name, &backend).await;
                OtherSide::Engine { engine, backend }
            }
        }
    }
}

/// Another provisioner in the same cluster, putting the same deletion
/// finalizer on its volumes.
enum OtherSide {
    /// A second engine of ours under the other name (on the kit).
    Engine { engine: RunningEngine, backend: ScriptedBackend },
    /// The Go library (`tests/peer`), as a child process, with the file it
    /// writes its call counts to and its log (kept when it fails).
    Peer { child: Box<tokio::process::Child>, counts: PathBuf, log: PathBuf },
}

impl OtherSide {
    /// Stops it; how many (provision, delete) calls its backend got.
    async fn stop(self) -> (u64, u64) {
        match self {
            OtherSide::Engine { engine, backend } => {
                engine.stop().await;
                (backend.provision_calls().len() as u64, backend.delete_calls().len() as u64)
            }
            OtherSide::Peer { mut child, counts, log } => {
                let pid = child.id().expect("the Go peer is running");
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
                let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .expect("peer exits")
                    .expect("wait");
                assert!(status.success(), "the Go peer exited with {status}; its log: {}", log.display());
                let line = std::fs::read_to_string(&counts).expect("the Go peer's counts");
                let _ = std::fs::remove_file(&counts);
                let _ = std::fs::remove_file(&log);
                let v: serde_json::Value = serde_json::from_str(line.trim()).expect("counts JSON");
                let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
                (n("provision_calls"), n("delete_calls"))
            }
        }
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
    let backend = ScriptedBackend::new();
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

    // Nothing of ours stays on the bound claim: with the provisioner gone,
    // its deletion (and its namespace's) cannot hang on us.
    wait_for(&p.claims(), "data", "the intent record to leave the bound claim", default_timeout(), |c| {
        c.is_some_and(|c| {
            c.finalizers() == ["kubernetes.io/pvc-protection".to_string()]
                && !c.annotations().keys().any(|k| k.starts_with("provisioner.rs/"))
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

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
    let backend = ScriptedBackend::new();
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
    let backend = ScriptedBackend::new();
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
    let backend = ScriptedBackend::new();
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
    let backend = ScriptedBackend::new();
    let busy = ProvisionError::failed("backend busy");
    backend.script([ProvisionAnswer::Fail(busy.clone()), ProvisionAnswer::Fail(busy)]);
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

fn has_finalizer(o: &impl ResourceExt, f: &str) -> bool {
    o.finalizers().iter().any(|x| x == f)
}

fn claim_volume(c: &PersistentVolumeClaim) -> Option<&str> {
    c.spec.as_ref().and_then(|s| s.volume_name.as_deref())
}

/// Another provisioner's volumes carry the same deletion finalizer as ours
/// (`external-provisioner.volume.kubernetes.io/finalizer`) but are not ours:
/// one bound to its claim and one `Released`, both with the `Delete` policy
/// and both then deleted with `kubectl delete pv` (and the bound one's claim
/// deleted). The engine never removes that finalizer, never deletes them
/// and never calls the backend for them: they stay Terminating with the
/// finalizer, while the engine provisions its own claim as usual. The other
/// provisioner is played by hand (it is not running).
pub async fn foreign_volumes_are_never_touched(p: &Plane) {
    let other = p.other_provisioner();
    let mine = p.class("mine", "Delete", false).await;
    let theirs_class = p.class_of("theirs", &other, "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = p.engine(&backend).await;

    // Their bound volume: the binder hands the claim to them, "they" save a PV for it.
    let theirs = p.claim("theirs", &theirs_class, "1Gi").await;
    p.handed_to("theirs", &other).await;
    let bound_pv = pv_name(&theirs);
    let v = static_volume(&bound_pv)
        .class(&theirs_class)
        .reclaim_policy("Delete")
        .claim_ref(claim_ref(&p.namespace, "theirs", theirs.uid().as_deref()))
        .provisioned_by(&other)
        .finalizer(keys::VOLUME_FINALIZER);
    p.create_volume(v.build()).await;
    p.bound("theirs").await;
    p.volume_in_phase(&bound_pv, "Bound").await;

    // Their released volume: its claim is long gone.
    let released_pv = format!("theirs-released-{}", p.suffix);
    let v = static_volume(&released_pv)
        .class(&theirs_class)
        .reclaim_policy("Delete")
        .claim_ref(claim_ref(&p.namespace, "gone", Some("00000000-0000-4000-8000-000000000000")))
        .provisioned_by(&other)
        .finalizer(keys::VOLUME_FINALIZER);
    p.create_volume(v.build()).await;
    p.volume_in_phase(&released_pv, "Released").await;

    // Our own claim meanwhile: the engine is at work.
    let ours = p.claim("mine", &mine, "1Gi").await;
    p.bound("mine").await;

    // kubectl delete pv on both, and the bound one's claim.
    p.volumes().delete(&bound_pv, &DeleteParams::default()).await.expect("delete their bound volume");
    p.volumes().delete(&released_pv, &DeleteParams::default()).await.expect("delete their released volume");
    p.claims().delete("theirs", &DeleteParams::default()).await.expect("delete their claim");
    p.gone(&p.claims(), "theirs", "their claim to be gone").await;
    // The binder has done its part (Released, pv-protection dropped); only the shared finalizer holds them.
    for name in [&bound_pv, &released_pv] {
        p.volume_where(name, "the binder to release it and drop pv-protection", |v| {
            v.metadata.deletion_timestamp.is_some() && !has_finalizer(v, PV_PROTECTION) && volume_phase(v) != "Bound"
        })
        .await;
    }
    p.volume_barrier().await;
    for name in [&bound_pv, &released_pv] {
        let v = p.volumes().get(name).await.unwrap_or_else(|e| panic!("{name} must still exist: {e}"));
        assert!(v.metadata.deletion_timestamp.is_some(), "{name} stays Terminating");
        assert_eq!(v.finalizers(), [keys::VOLUME_FINALIZER.to_string()], "{name} keeps the shared finalizer");
        assert_eq!(annotation(&v, keys::PROVISIONED_BY), Some(other.as_str()));
        let ours_about = p.our_events("default", name, None).await;
        assert!(ours_about.is_empty(), "no event from us about {name}: {ours_about:#?}");
    }
    assert_eq!(backend.provision_calls(), vec![pv_name(&ours)], "only our own claim reached the backend");
    assert!(backend.delete_calls().is_empty(), "no backend delete: {:?}", backend.delete_calls());
    engine.stop().await;
}

/// Another provisioner runs beside ours (on the real plane the Go library,
/// `tests/peer`, with its finalizer option on; on the kit a second engine
/// under the other name), both putting the same finalizer on their volumes.
/// Each provisions and deletes only its own claims' volumes: our backend
/// sees exactly our volumes, theirs exactly theirs.
pub async fn coexisting_with_another_provisioner(p: &Plane) {
    let other = p.other_provisioner();
    let mine = p.class("mine", "Delete", false).await;
    let theirs_class = p.class_of("theirs", &other, "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = p.engine(&backend).await;
    let them = p.other_side().await;

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..2 {
        ours.push(pv_name(&p.claim(&format!("mine-{i}"), &mine, "1Gi").await));
        theirs.push(pv_name(&p.claim(&format!("theirs-{i}"), &theirs_class, "1Gi").await));
    }
    for i in 0..2 {
        p.bound(&format!("mine-{i}")).await;
        p.bound(&format!("theirs-{i}")).await;
    }
    for pv in &theirs {
        let v = p
            .volume_where(pv, "their volume to carry the shared finalizer", |v| {
                has_finalizer(v, keys::VOLUME_FINALIZER)
            })
            .await;
        assert_eq!(annotation(&v, keys::PROVISIONED_BY), Some(other.as_str()));
    }
    for pv in &ours {
        let v = p.volume_in_phase(pv, "Bound").await;
        assert!(has_finalizer(&v, keys::VOLUME_FINALIZER));
        assert_eq!(annotation(&v, keys::PROVISIONED_BY), Some(p.provisioner.as_str()));
    }
    let mut calls = backend.provision_calls();
    calls.sort();
    let mut expected = ours.clone();
    expected.sort();
    assert_eq!(calls, expected, "our backend provisioned exactly our claims");

    for i in 0..2 {
        p.claims().delete(&format!("mine-{i}"), &DeleteParams::default()).await.expect("delete");
        p.claims().delete(&format!("theirs-{i}"), &DeleteParams::default()).await.expect("delete");
    }
    for pv in ours.iter().chain(&theirs) {
        p.gone(&p.volumes(), pv, "the volume to be deleted by its own provisioner").await;
    }
    let mut deleted = backend.delete_calls();
    deleted.sort();
    assert_eq!(deleted, expected, "our backend deleted exactly our volumes, once each");
    assert_eq!(backend.deleted(), 2);
    let (their_provisions, their_deletes) = them.stop().await;
    assert_eq!(their_provisions, 2, "the other provisioner provisioned exactly its own");
    // At least once each: the Go library may repeat a delete from a stale
    // cache (its issue 176); ours may not, as asserted above.
    assert!(their_deletes >= 2, "the other provisioner deleted its own: {their_deletes} delete calls");
    engine.stop().await;
}

/// `kubectl delete pv` on a Bound volume of ours does not pull the storage
/// from under its claim: the backend is not deleted while the claim exists
/// and the volume waits, Terminating, with our finalizer. Once the claim is
/// deleted, the backend is deleted once and the volume disappears.
pub async fn bound_volume_deleted_waits_for_its_claim(p: &Plane) {
    let class = p.class("pvdel", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = p.engine(&backend).await;
    let created = p.claim("data", &class, "1Gi").await;
    p.bound("data").await;
    let pv = pv_name(&created);
    p.volumes().delete(&pv, &DeleteParams::default()).await.expect("delete volume");
    p.volume_where(&pv, "the volume to be Terminating", |v| v.metadata.deletion_timestamp.is_some()).await;
    p.volume_barrier().await;
    let v = p.volumes().get(&pv).await.expect("the volume waits for its claim");
    assert!(v.metadata.deletion_timestamp.is_some());
    assert!(has_finalizer(&v, keys::VOLUME_FINALIZER), "our finalizer holds it: {:?}", v.finalizers());
    assert_eq!(volume_phase(&v), "Bound");
    assert!(backend.has(&pv), "the backend stays while the claim exists");
    assert!(backend.delete_calls().is_empty(), "no backend delete yet: {:?}", backend.delete_calls());
    assert_eq!(claim_phase(&p.claims().get("data").await.expect("claim")), "Bound");

    p.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    p.gone(&p.claims(), "data", "the claim to be gone").await;
    p.gone(&p.volumes(), &pv, "the volume to be gone").await;
    assert_eq!(backend.delete_calls(), vec![pv.clone()], "exactly one backend delete");
    assert_eq!(backend.deleted(), 1);
    assert!(!backend.has(&pv));
    engine.stop().await;
}

/// A claim pre-bound by its `spec.volumeName` to an admin's volume is never
/// provisioned, even when annotated for our provisioner (handed to us before
/// the admin pre-bound it): no backend call and no `pvc-<uid>` volume while
/// the admin's volume does not exist yet. Once the admin creates it (with a
/// `claimRef` to the claim) the two bind. When the claim is deleted, that
/// `Delete`-policy volume (no `provisioned-by`) is not ours: never deleted,
/// never given our finalizer, its backend never called. (The binder may
/// mark it `Failed` on the real plane, having no deleter for it.)
pub async fn prebound_claim_is_never_provisioned(p: &Plane) {
    let class = p.class("prebound", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = p.engine(&backend).await;
    let admin_pv = format!("admin-prebound-{}", p.suffix);
    let c = claim("", "prebound")
        .class(&class)
        .volume_name(&admin_pv)
        .provisioner(&p.provisioner)
        .annotation(keys::BETA_STORAGE_PROVISIONER, &p.provisioner);
    let created = p.create_claim(c.build()).await;
    p.claim_barrier(&class).await;
    assert!(backend.provision_calls().is_empty(), "no provision call: {:?}", backend.provision_calls());
    assert!(!p.volume_exists(&pv_name(&created)).await, "no volume of ours for a pre-bound claim");

    let v = static_volume(&admin_pv).class(&class).reclaim_policy("Delete");
    p.create_volume(v.claim_ref(claim_ref(&p.namespace, "prebound", created.uid().as_deref())).build()).await;
    let c = p.bound("prebound").await;
    assert_eq!(claim_volume(&c), Some(admin_pv.as_str()));
    let v = p.volume_in_phase(&admin_pv, "Bound").await;
    assert!(!has_finalizer(&v, keys::VOLUME_FINALIZER), "not ours: no finalizer of ours");

    p.claims().delete("prebound", &DeleteParams::default()).await.expect("delete claim");
    p.gone(&p.claims(), "prebound", "the claim to be gone").await;
    p.volume_where(&admin_pv, "the volume to be Released (or Failed)", |v| {
        matches!(volume_phase(v), "Released" | "Failed")
    })
    .await;
    p.volume_barrier().await;
    let v = p.volumes().get(&admin_pv).await.expect("the admin's volume is not deleted by us");
    assert!(v.metadata.deletion_timestamp.is_none());
    assert!(!has_finalizer(&v, keys::VOLUME_FINALIZER), "never given our finalizer: {:?}", v.finalizers());
    assert!(annotation(&v, keys::PROVISIONED_BY).is_none());
    assert!(backend.provision_calls().is_empty(), "no provision call: {:?}", backend.provision_calls());
    assert!(backend.delete_calls().is_empty(), "no delete call: {:?}", backend.delete_calls());
    assert!(p.our_events("default", &admin_pv, None).await.is_empty(), "no event from us about the admin's volume");
    engine.stop().await;
}

/// Statically provisioned volumes (no `provisioned-by`) of our class: one
/// pre-bound by its `claimRef` (by name) binds its claim, which is then not
/// provisioned; one free (`ReadWriteMany`, so no claim here matches) stays
/// Available. Neither ever gets our finalizer. When the claim is deleted the
/// `Delete`-policy volume is Released (or, on the real plane, `Failed` by the
/// binder's own deleter) and never deleted by us; the free one, deleted by
/// the admin, goes at once (nothing of ours holds it). The backend is never
/// called.
pub async fn static_volumes_are_never_deleted(p: &Plane) {
    let class = p.class("static", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = p.engine(&backend).await;
    let prebound = format!("admin-static-{}", p.suffix);
    let free = format!("admin-free-{}", p.suffix);
    let v = static_volume(&prebound).class(&class).reclaim_policy("Delete");
    p.create_volume(v.claim_ref(claim_ref(&p.namespace, "data", None)).build()).await;
    let v = static_volume(&free).class(&class).access_modes(&["ReadWriteMany"]).reclaim_policy("Delete");
    p.create_volume(v.build()).await;
    p.volume_in_phase(&free, "Available").await;

    let created = p.claim("data", &class, "1Gi").await;
    let c = p.bound("data").await;
    assert_eq!(claim_volume(&c), Some(prebound.as_str()), "bound to the admin's volume");
    p.volume_in_phase(&prebound, "Bound").await;
    p.claim_barrier(&class).await;
    p.volume_barrier().await;
    assert!(!p.volume_exists(&pv_name(&created)).await, "no volume of ours for it");
    for name in [&prebound, &free] {
        let v = p.volumes().get(name).await.expect("volume");
        assert!(!has_finalizer(&v, keys::VOLUME_FINALIZER), "{name}: never given our finalizer");
    }

    p.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    p.gone(&p.claims(), "data", "the claim to be gone").await;
    p.volume_where(&prebound, "the volume to be Released (or Failed)", |v| {
        matches!(volume_phase(v), "Released" | "Failed")
    })
    .await;
    p.volume_barrier().await;
    let v = p.volumes().get(&prebound).await.expect("the static volume is not deleted by us");
    assert!(v.metadata.deletion_timestamp.is_none());
    assert!(!has_finalizer(&v, keys::VOLUME_FINALIZER));
    let free_now = p.volumes().get(&free).await.expect("the free static volume stays");
    assert_eq!(volume_phase(&free_now), "Available");

    p.volumes().delete(&free, &DeleteParams::default()).await.expect("delete the free volume");
    p.gone(&p.volumes(), &free, "the free static volume to go at once").await;
    assert!(backend.provision_calls().is_empty(), "no provision call: {:?}", backend.provision_calls());
    assert!(backend.delete_calls().is_empty(), "no delete call: {:?}", backend.delete_calls());
    for name in [&prebound, &free] {
        assert!(p.our_events("default", name, None).await.is_empty(), "no event from us about {name}");
    }
    engine.stop().await;
}

/// A namespace deleted with ten bound claims of our class in it: every
/// volume is Released and deleted, each backend volume exactly once, and
/// nothing is left holding the claims, the volumes or the namespace. Neither
/// plane runs the namespace controller (nor does the kit cascade), so its
/// part is played here: the claims are deleted with one delete-collection,
/// then the namespace is finalized.
pub async fn namespace_deleted_with_bound_claims(p: &Plane) {
    const CLAIMS: usize = 10;
    let class = p.class("nsdel", "Delete", false).await;
    let namespaces: Api<Namespace> = Api::all(p.client.clone());
    if namespaces.get_opt(&p.namespace).await.expect("get namespace").is_none() {
        let ns = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(p.namespace.clone()), ..Default::default() },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &ns).await.expect("namespace");
    }
    let backend = ScriptedBackend::new();
    let engine = p.engine(&backend).await;
    let mut pvs = Vec::new();
    for i in 0..CLAIMS {
        pvs.push(pv_name(&p.claim(&format!("data-{i}"), &class, "1Gi").await));
    }
    for i in 0..CLAIMS {
        p.bound(&format!("data-{i}")).await;
    }
    pvs.sort();

    namespaces.delete(&p.namespace, &DeleteParams::default()).await.expect("delete namespace");
    // The namespace controller's part: delete everything in it.
    p.claims().delete_collection(&DeleteParams::default(), &ListParams::default()).await.expect("delete claims");
    for i in 0..CLAIMS {
        p.gone(&p.claims(), &format!("data-{i}"), "the claim to be gone").await;
    }
    for pv in &pvs {
        p.gone(&p.volumes(), pv, "the volume to be deleted").await;
    }
    let finalize = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": p.namespace },
        "spec": { "finalizers": [] }
    });
    // The kit removes a namespace at once and serves no `finalize`.
    let _ = namespaces.replace_subresource("finalize", &p.namespace, &PostParams::default(), &finalize).await;
    p.gone(&namespaces, &p.namespace, "the namespace to finish deleting").await;

    let mut deleted = backend.delete_calls();
    deleted.sort();
    assert_eq!(deleted, pvs, "one backend delete per volume");
    assert_eq!(backend.deleted(), CLAIMS as u64);
    assert_eq!(backend.created(), CLAIMS as u64);
    assert!(backend.volumes().is_empty(), "no backend volume left: {:?}", backend.volumes());
    engine.stop().await;
}

/// `Retain` volumes keep their backend and never carry our finalizer: the
/// one provisioned for a `Retain` class has none, stays `Released` with its
/// backend after its claim is deleted, and a `Retain` volume of ours left
/// with the finalizer (by an older provisioner) has it removed. A
/// `Delete`-policy volume of ours lacking the finalizer gets it, and then
/// `kubectl delete pv` on it (bound to no claim) deletes its backend first.
pub async fn retain_volumes_carry_no_finalizer(p: &Plane) {
    let retain = p.class("keep", "Retain", false).await;
    let delete = p.class("gain", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = p.engine(&backend).await;

    let created = p.claim("kept", &retain, "1Gi").await;
    p.bound("kept").await;
    let pv = pv_name(&created);
    let v = p.volume_in_phase(&pv, "Bound").await;
    assert!(!has_finalizer(&v, keys::VOLUME_FINALIZER), "a Retain volume has no finalizer: {:?}", v.finalizers());

    // Volumes of ours made by an older provisioner under our name
    // (`ReadWriteMany`, so the binder matches no claim to them).
    let old_retain = format!("old-retain-{}", p.suffix);
    let v = static_volume(&old_retain).class(&retain).access_modes(&["ReadWriteMany"]).reclaim_policy("Retain");
    p.create_volume(v.provisioned_by(&p.provisioner).finalizer(keys::VOLUME_FINALIZER).build()).await;
    let old_delete = format!("old-delete-{}", p.suffix);
    let v = static_volume(&old_delete).class(&delete).access_modes(&["ReadWriteMany"]).reclaim_policy("Delete");
    p.create_volume(v.provisioned_by(&p.provisioner).build()).await;
    p.volume_where(&old_retain, "our finalizer removed from the Retain volume", |v| {
        !has_finalizer(v, keys::VOLUME_FINALIZER)
    })
    .await;
    p.volume_where(&old_delete, "our finalizer added to the Delete volume", |v| {
        has_finalizer(v, keys::VOLUME_FINALIZER)
    })
    .await;

    p.claims().delete("kept", &DeleteParams::default()).await.expect("delete claim");
    p.volume_in_phase(&pv, "Released").await;
    p.volume_barrier().await;
    for name in [&pv, &old_retain] {
        let v = p.volumes().get(name).await.expect("a Retain volume stays");
        assert!(v.metadata.deletion_timestamp.is_none(), "{name} is not deleted");
        assert!(!has_finalizer(&v, keys::VOLUME_FINALIZER), "{name}: no finalizer: {:?}", v.finalizers());
    }
    assert_eq!(volume_phase(&p.volumes().get(&pv).await.expect("volume")), "Released");
    assert!(backend.has(&pv), "the Retain volume keeps its backend");
    assert!(backend.delete_calls().is_empty(), "no backend delete: {:?}", backend.delete_calls());

    p.volumes().delete(&old_delete, &DeleteParams::default()).await.expect("delete the Delete-policy volume");
    p.gone(&p.volumes(), &old_delete, "the Delete-policy volume to go, backend first").await;
    assert_eq!(backend.delete_calls(), vec![old_delete.clone()], "its backend deleted, once");
    p.volumes().delete(&old_retain, &DeleteParams::default()).await.expect("delete the Retain volume");
    p.gone(&p.volumes(), &old_retain, "the Retain volume to go").await;
    assert_eq!(backend.delete_calls(), vec![old_delete], "no backend delete for a Retain volume");
    assert!(backend.has(&pv));
    assert_eq!(backend.provision_calls(), vec![pv]);
    engine.stop().await;
}

/// Claims handed to us whose class is then deleted stay Pending with no
/// volume and no backend call; creating the class again provisions them
/// at once (the engine watches classes).
pub async fn claims_wait_for_a_deleted_class(p: &Plane) {
    let class = p.class("gone", "Delete", false).await;
    let a = p.claim("a", &class, "1Gi").await;
    let b = p.claim("b", &class, "1Gi").await;
    p.handed_to("a", &p.provisioner).await;
    p.handed_to("b", &p.provisioner).await;
    p.classes().delete(&class, &DeleteParams::default()).await.expect("delete class");
    p.gone(&p.classes(), &class, "the class to be gone").await;

    let backend = ScriptedBackend::new();
    let engine = p.engine(&backend).await;
    let probes = p.class("probes", "Delete", false).await;
    p.claim_barrier(&probes).await;
    p.unprovisioned("a").await;
    p.unprovisioned("b").await;
    assert!(backend.provision_calls().is_empty(), "no provision call: {:?}", backend.provision_calls());

    let again = p.class("gone", "Delete", false).await;
    assert_eq!(again, class);
    p.bound("a").await;
    p.bound("b").await;
    let mut calls = backend.provision_calls();
    calls.sort();
    let mut expected = vec![pv_name(&a), pv_name(&b)];
    expected.sort();
    assert_eq!(calls, expected, "one provision call each");
    engine.stop().await;
}

/// A claim with `spec.selector` asks for an existing volume: exactly one
/// Warning `ProvisioningFailed` "claim Selector is not supported", no volume,
/// no backend call, and no repeat of the warning as time passes.
pub async fn selector_claim_is_refused_once(p: &Plane) {
    let class = p.class("selector", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = p.engine(&backend).await;
    p.create_claim(claim("", "picky").class(&class).selector("tier", "gold").build()).await;
    let ev = p.our_event("picky", "ProvisioningFailed").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.note.as_deref(), Some("claim Selector is not supported"));
    p.settle().await;
    p.warned_once("picky").await;
    p.unprovisioned("picky").await;
    assert!(backend.provision_calls().is_empty(), "no provision call: {:?}", backend.provision_calls());
    engine.stop().await;
}

/// A provisioner that supports no data source: a clone claim (`dataSource`
/// kind `PersistentVolumeClaim`) and a snapshot restore (`VolumeSnapshot`
/// of `snapshot.storage.k8s.io`) each get exactly one Warning
/// `ProvisioningFailed`, no volume, no backend call and no retry loop (an
/// empty volume would be data loss); a claim for a volume populator's kind
/// (`dataSourceRef` `Widget` of `populator.example.com`) gets no event from
/// us at all, no volume and no backend call.
pub async fn unsupported_data_sources_are_refused_once(p: &Plane) {
    let class = p.class("sources", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = p.engine(&backend).await;
    p.create_claim(claim("", "copy").class(&class).clone_of("origin").build()).await;
    p.create_claim(claim("", "restore").class(&class).from_snapshot("snap-1").build()).await;
    p.create_claim(
        claim("", "populated").class(&class).data_source(Some("populator.example.com"), "Widget", "w-1").build(),
    )
    .await;
    for name in ["copy", "restore"] {
        let ev = p.our_event(name, "ProvisioningFailed").await;
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert!(ev.note.as_deref().is_some_and(|n| !n.is_empty()), "a message: {ev:?}");
    }
    p.handed_to("populated", &p.provisioner).await;
    p.settle().await;
    for name in ["copy", "restore"] {
        p.warned_once(name).await;
        p.unprovisioned(name).await;
    }
    let about_populated = p.our_events(&p.namespace, "populated", None).await;
    assert!(about_populated.is_empty(), "no event from us for a populator's claim: {about_populated:#?}");
    p.unprovisioned("populated").await;
    assert!(backend.provision_calls().is_empty(), "no provision call: {:?}", backend.provision_calls());
    engine.stop().await;
}

/// A provisioner that supports clones: a claim cloning another claim is
/// provisioned and bound, and the backend was handed the source (kind
/// `PersistentVolumeClaim`, the source's name, core group, same
/// namespace); the source's own volume was provisioned without one. A
/// snapshot restore, which this provisioner does not support, still gets
/// one warning and no volume.
pub async fn clone_claim_to_a_provisioner_supporting_clones(p: &Plane) {
    let class = p.class("clones", "Delete", false).await;
    let backend = ScriptedBackend::new().supporting_clones();
    let engine = p.engine(&backend).await;
    let origin = p.claim("origin", &class, "1Gi").await;
    p.bound("origin").await;
    let copy = p.create_claim(claim("", "copy").class(&class).clone_of("origin").build()).await;
    p.bound("copy").await;
    let expected =
        DataSource { api_group: None, kind: "PersistentVolumeClaim".into(), name: "origin".into(), namespace: None };
    assert_eq!(backend.data_sources(), BTreeMap::from([(pv_name(&copy), expected)]), "the clone's source, only");
    assert!(backend.has(&pv_name(&origin)) && backend.has(&pv_name(&copy)));

    p.create_claim(claim("", "restore").class(&class).from_snapshot("snap-1").build()).await;
    p.our_event("restore", "ProvisioningFailed").await;
    p.settle().await;
    p.warned_once("restore").await;
    p.unprovisioned("restore").await;
    let mut calls = backend.provision_calls();
    calls.sort();
    let mut want = vec![pv_name(&origin), pv_name(&copy)];
    want.sort();
    assert_eq!(calls, want);
    engine.stop().await;
}
