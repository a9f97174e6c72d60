//! Support for end-to-end tests that run against the real control plane
//! started by `tests/controlplane/up` (etcd, kube-apiserver and
//! kube-controller-manager on 127.0.0.1).
//!
//! Every test takes a [`TestEnv`]: its own namespace, a unique suffix for the
//! names of cluster-scoped objects, a label on everything it creates, and a
//! clean-up that runs even when the test panics. Tests wait on watch events
//! with [`wait_for`], never on sleeps.
//!
//! ```no_run
//! # async fn demo() {
//! use e2e_support::TestEnv;
//! let env = TestEnv::new("binds-claims").await;
//! let ns = env.namespace.clone();
//! // ... create objects with env.create(...) ...
//! env.cleanup().await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

/// Label put on every object a test creates, valued with the test's run id.
pub const RUN_LABEL: &str = "e2e.provisioner-rs.io/run";

/// How long [`TestEnv::wait_for`] waits unless told otherwise: `E2E_TIMEOUT_SECS`, default 60.
pub fn default_timeout() -> Duration {
    let secs = std::env::var("E2E_TIMEOUT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    Duration::from_secs(secs)
}

/// A client for the control plane named by `KUBECONFIG`.
///
/// # Panics
/// With instructions, when `KUBECONFIG` is unset or the plane cannot be reached.
pub async fn client() -> Client {
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!(
            "KUBECONFIG is not set: end-to-end tests need the local control plane.\n\
             Start it with: eval \"$(tests/controlplane/up)\""
        );
    }
    let client = Client::try_default().await.unwrap_or_else(|e| panic!("cannot load KUBECONFIG: {e}"));
    client.apiserver_version().await.unwrap_or_else(|e| panic!("the control plane in KUBECONFIG does not answer: {e}"));
    client
}

/// One test's slice of the cluster. Dropping it without calling
/// [`TestEnv::cleanup`] (for example because the test panicked) still
/// removes what it created, from a separate thread.
pub struct TestEnv {
    /// A client for the control plane.
    pub client: Client,
    /// The namespace made for this test.
    pub namespace: String,
    /// A short id unique to this run of this test.
    pub id: String,
    cleaned: Arc<Mutex<bool>>,
}

impl TestEnv {
    /// Creates a namespace `<test>-<id>` for the test named `test`.
    pub async fn new(test: &str) -> TestEnv {
        let client = client().await;
        let id = format!("{:08x}", rand::random::<u32>());
        let mut base: String =
            test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        base.truncate(40);
        let namespace = format!("{}-{id}", base.trim_matches('-'));
        let env = TestEnv { client, namespace, id, cleaned: Arc::new(Mutex::new(false)) };
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(env.namespace.clone()), ..Default::default() },
            ..Default::default()
        };
        env.create(&Api::all(env.client.clone()), ns).await;
        env
    }

    /// A cluster-unique name for a cluster-scoped object of this test.
    pub fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.id)
    }

    /// The labels that mark an object as this test's.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(RUN_LABEL.to_string(), self.id.clone())])
    }

    /// An API for a namespaced kind in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// An API for a cluster-scoped kind.
    pub fn cluster_api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::ClusterResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::all(self.client.clone())
    }

    /// Creates `obj` with this test's label, panicking with the API's answer on failure.
    pub async fn create<K>(&self, api: &Api<K>, mut obj: K) -> K
    where
        K: Resource + Clone + Debug + serde::de::DeserializeOwned + serde::Serialize,
        <K as Resource>::DynamicType: Default,
    {
        obj.meta_mut().labels.get_or_insert_with(BTreeMap::new).extend(self.labels());
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("creating {} {:?}: {e}", K::kind(&Default::default()), obj.meta().name))
    }

    /// Waits until `cond` holds for the object `name`, watching it rather than
    /// polling, with [`default_timeout`].
    pub async fn wait_for<K>(
        &self,
        api: &Api<K>,
        name: &str,
        what: &str,
        cond: impl Fn(Option<&K>) -> bool,
    ) -> Option<K>
    where
        K: Resource + Clone + Debug + Send + serde::de::DeserializeOwned + 'static,
        <K as Resource>::DynamicType: Default,
    {
        wait_for(api, name, what, default_timeout(), cond).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Removes everything this test created: claims in its namespace, the
    /// namespace, and cluster-scoped objects carrying its label.
    pub async fn cleanup(self) {
        cleanup(&self.client, &self.namespace, &self.id).await;
        *self.cleaned.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if *self.cleaned.lock().unwrap_or_else(|p| p.into_inner()) {
            return;
        }
        // The test's runtime may be unwinding: use a runtime and client of our own.
        let (namespace, id) = (self.namespace.clone(), self.id.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(client) = Client::try_default().await {
                    cleanup(&client, &namespace, &id).await;
                }
            });
        })
        .join();
    }
}

async fn cleanup(client: &Client, namespace: &str, id: &str) {
    let by_label = ListParams::default().labels(&format!("{RUN_LABEL}={id}"));
    let dp = DeleteParams::background();
    // Finalizers of engines that are no longer running would keep claims and
    // volumes forever: drop them, then delete.
    let no_finalizers = kube::api::Patch::Merge(json!({ "metadata": { "finalizers": null } }));
    let pp = kube::api::PatchParams::default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    if let Ok(list) = claims.list(&ListParams::default()).await {
        for c in list.items {
            let _ = claims.patch(&c.name_any(), &pp, &no_finalizers).await;
        }
    }
    let _ = claims.delete_collection(&dp, &ListParams::default()).await;
    // No kubelet confirms that a scheduled pod stopped: delete pods at once.
    let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::background() };
    let _ = Api::<Pod>::namespaced(client.clone(), namespace).delete_collection(&now, &ListParams::default()).await;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    if let Ok(list) = volumes.list(&ListParams::default()).await {
        for v in list.items {
            let of_test = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.namespace.as_deref())
                == Some(namespace);
            if of_test || v.labels().get(RUN_LABEL) == Some(&id.to_string()) {
                let _ = volumes.patch(&v.name_any(), &pp, &no_finalizers).await;
                let _ = volumes.delete(&v.name_any(), &dp).await;
            }
        }
    }
    let _ = Api::<StorageClass>::all(client.clone()).delete_collection(&dp, &by_label).await;
    let _ = Api::<Node>::all(client.clone()).delete_collection(&dp, &by_label).await;
    // This plane runs no namespace controller, so finalize the namespace ourselves.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(namespace, &dp).await;
    let finalize = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": namespace },
        "spec": { "finalizers": [] }
    });
    let _ = namespaces.replace_subresource("finalize", namespace, &PostParams::default(), &finalize).await;
}

/// Why [`wait_for`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The condition did not hold before the deadline; the last state seen is included.
    #[error("timed out after {timeout:?} waiting for {what} ({kind} {name}); last seen: {last}")]
    Timeout {
        /// What was awaited, in words.
        what: String,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// How long was waited.
        timeout: Duration,
        /// The object as last seen, or "absent".
        last: String,
    },
    /// The watch failed.
    #[error("watch for {what} failed: {source}")]
    Watch {
        /// What was awaited, in words.
        what: String,
        /// The watcher's error.
        #[source]
        source: watcher::Error,
    },
}

/// Waits until `cond` holds for the object `name` (`None`: it does not exist),
/// driven by a watch on that one object.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(Option<&K>) -> bool,
) -> Result<Option<K>, WaitError>
where
    K: Resource + Clone + Debug + Send + serde::de::DeserializeOwned + 'static,
    <K as Resource>::DynamicType: Default,
{
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api.clone(), cfg).boxed();
    let mut current: Option<K> = None;
    let mut listing: Option<K> = None;
    let mut listed = false;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if listed && cond(current.as_ref()) {
            return Ok(current);
        }
        let event = match tokio::time::timeout_at(deadline, stream.try_next()).await {
            Err(_) => {
                return Err(WaitError::Timeout {
                    what: what.to_string(),
                    kind: K::kind(&Default::default()).to_string(),
                    name: name.to_string(),
                    timeout,
                    last: current.map_or_else(|| "absent".to_string(), |o| summarize(&o)),
                });
            }
            Ok(Err(source)) => return Err(WaitError::Watch { what: what.to_string(), source }),
            Ok(Ok(None)) => continue,
            Ok(Ok(Some(event))) => event,
        };
        match event {
            watcher::Event::Init => listing = None,
            watcher::Event::InitApply(o) => listing = Some(o),
            watcher::Event::InitDone => {
                current = listing.take();
                listed = true;
            }
            watcher::Event::Apply(o) => current = Some(o),
            watcher::Event::Delete(_) => current = None,
        }
    }
}

fn summarize<K: Resource + Debug>(o: &K) -> String {
    let text = format!("{o:?}");
    let mut short: String = text.chars().take(2000).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    format!("{} (resourceVersion {})", short, o.resource_version().unwrap_or_default())
}

/// The objects the real-plane tests create, in the short forms they use:
/// thin wrappers over the testing kit's one vocabulary,
/// `provisioner_core::testing::fixtures` (what they build, a real API server
/// accepts on create).
pub mod fixtures {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::storage::v1::StorageClass;
    use provisioner_core::testing::fixtures::{self as kit};
    pub use provisioner_core::testing::fixtures::{claim_phase, claim_ref, volume_phase};

    /// A StorageClass `name` for `provisioner` with `Immediate` binding and the `Delete` policy.
    pub fn storage_class(name: &str, provisioner: &str) -> StorageClass {
        kit::class(name, provisioner).reclaim_policy("Delete").immediate().build()
    }

    /// A `ReadWriteOnce` claim `name` of `size` in class `class`, its
    /// namespace left to the API it is created through.
    pub fn claim(name: &str, class: &str, size: &str) -> PersistentVolumeClaim {
        kit::claim("", name).class(class).request(size).build()
    }

    /// A `hostPath` volume `name` under `/tmp` pre-bound to `claim` (by uid),
    /// matching its class, size and access modes, with reclaim policy `policy`.
    pub fn volume_for(name: &str, claim: &PersistentVolumeClaim, policy: &str) -> PersistentVolume {
        kit::static_volume(name).for_claim(claim).reclaim_policy(policy).host_path(&format!("/tmp/{name}")).build()
    }

    /// A statically provisioned `hostPath` volume `name` (no
    /// `pv.kubernetes.io/provisioned-by`, no `claimRef`, no finalizers): what
    /// an admin creates by hand. Set `claim_ref`, annotations or finalizers
    /// on the result to make it pre-bound or another provisioner's. (Its path
    /// is not under `/tmp`: kube-controller-manager's in-tree hostPath
    /// deleter removes Released `Delete` volumes there itself.)
    pub fn static_volume(name: &str, class: &str, size: &str, access_modes: &[&str], policy: &str) -> PersistentVolume {
        kit::static_volume(name).class(class).capacity(size).access_modes(access_modes).reclaim_policy(policy).build()
    }
}

pub mod journal;
pub mod scenarios;
pub mod scheduling;

/// Running an engine inside a test.
pub mod engine {
    use std::sync::Arc;
    use std::time::Duration;

    use prometheus_client::registry::Registry;
    use provisioner_core::backoff::Backoff;
    use provisioner_core::engine::EngineStatus;
    use provisioner_core::metrics::Metrics;
    use provisioner_core::{Engine, EngineBuilder, EngineError, Provisioner};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use crate::TestEnv;

    /// An engine running as a task of the test.
    pub struct RunningEngine {
        /// Cancel to shut the engine down.
        pub token: CancellationToken,
        /// The engine's metrics.
        pub metrics: Metrics,
        /// The registry holding them.
        pub registry: Arc<Registry>,
        /// Requests the engine's own client sent.
        pub requests: Arc<provisioner_core::client::RequestCounts>,
        /// The engine's status.
        pub status: watch::Receiver<EngineStatus>,
        handle: tokio::task::JoinHandle<Result<(), EngineError>>,
    }

    /// The provisioner name of this test's engines: unique, so parallel
    /// tests never act on each other's claims.
    pub fn provisioner_name(env: &TestEnv) -> String {
        format!("e2e.provisioner-rs.io/{}", env.id)
    }

    /// Short retry delays, so failure tests take seconds.
    pub fn quick_backoff() -> Backoff {
        Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(2) }
    }

    /// Starts an engine for `name` backed by `backend`, after `customize`
    /// adjusts the builder, and waits until its caches are synced.
    pub async fn start(
        env: &TestEnv,
        name: &str,
        backend: Arc<dyn Provisioner>,
        customize: impl FnOnce(EngineBuilder) -> EngineBuilder,
    ) -> RunningEngine {
        let mut registry = Registry::default();
        let config = kube::Config::infer().await.expect("KUBECONFIG");
        let (client, requests) = provisioner_core::client::build_client(config, None).expect("client");
        let _ = env;
        let builder = Engine::builder(client, name, backend)
            .backoff(quick_backoff())
            .resync(None)
            .workers(16)
            .metrics(&mut registry);
        let engine = customize(builder).build().expect("valid engine configuration");
        let metrics = engine.metrics();
        let mut status = engine.status();
        let token = CancellationToken::new();
        let handle = tokio::spawn(engine.run(token.clone()));
        tokio::time::timeout(crate::default_timeout(), status.wait_for(|s| s.synced))
            .await
            .expect("engine caches synced in time")
            .expect("engine running");
        RunningEngine { token, metrics, registry: Arc::new(registry), requests, status, handle }
    }

    impl RunningEngine {
        /// Shuts the engine down and returns what `run` returned.
        pub async fn stop(self) -> Result<(), EngineError> {
            self.token.cancel();
            self.handle.await.expect("engine task")
        }

        /// The registry in Prometheus text format.
        pub fn metrics_text(&self) -> String {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encode metrics");
            text
        }
    }
}

/// Waits for an event with `reason` about the object `name` in `namespace`
/// (cluster-scoped objects' events are in `default`), driven by a watch, for
/// [`default_timeout`]: the testing kit's
/// [`provisioner_core::testing::wait_for_event`], panicking when it gives up.
pub async fn wait_for_event(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: &str,
) -> k8s_openapi::api::events::v1::Event {
    provisioner_core::testing::wait_for_event(client, namespace, name, reason, default_timeout())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Events about `name` in `namespace` with `reason`, as listed now (none if
/// the list fails): the testing kit's [`provisioner_core::testing::events_for`].
pub async fn events_for(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    provisioner_core::testing::events_for(client, namespace, name, reason).await.unwrap_or_default()
}
