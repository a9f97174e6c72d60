//! The benchmark's side of the cluster: watching claims and volumes with a
//! timestamp on every event, creating claims (and, for the memory phase,
//! whole provisioned volumes), and removing everything afterwards.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use provisioner_core::keys;
use provisioner_core::volume::{VolumeOptions, build_volume};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::child::volume_for;
use crate::report::{ApiServerCounters, Secs, Timeline};

/// Seconds since the benchmark started.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    /// Starts the clock.
    pub fn start() -> Clock {
        Clock(Instant::now())
    }
    /// Seconds since the start.
    pub fn now(&self) -> Secs {
        self.0.elapsed().as_secs_f64()
    }
}

/// Prints a progress line to stderr, stamped with the benchmark's clock.
pub fn progress(clock: &Clock, msg: impl AsRef<str>) {
    eprintln!("[{:7.2}s] {}", clock.now(), msg.as_ref());
}

/// The names and labels of one benchmark run.
#[derive(Clone, Debug)]
pub struct RunNames {
    /// Unique id of this run.
    pub id: String,
    /// The namespace all claims live in.
    pub namespace: String,
    /// The StorageClass.
    pub class: String,
    /// The provisioner name the engine answers to.
    pub provisioner: String,
}

impl RunNames {
    /// Fresh names for a run.
    pub fn new() -> RunNames {
        Self::of(&format!("{:06x}", rand::random::<u32>() & 0xff_ffff))
    }
    /// The names of the run `id`.
    pub fn of(id: &str) -> RunNames {
        let id = id.to_string();
        RunNames {
            namespace: format!("engine-bench-{id}"),
            class: format!("engine-bench-{id}"),
            provisioner: format!("bench.provisioner-rs.io/{id}"),
            id,
        }
    }
    /// The label on the claims, the class and the namespace of this run.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("engine-bench.provisioner-rs.io/run".to_string(), self.id.clone())])
    }
}

/// How many claims reached each stage, as the watches saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Claims seen annotated for a provisioner.
    pub annotated: usize,
    /// PVs of the namespace's claims seen.
    pub volumes: usize,
    /// PVs whose name was not `pvc-<claim uid>`.
    pub misnamed: usize,
    /// Claims seen Bound.
    pub bound: usize,
    /// PVs seen deleted.
    pub volumes_gone: usize,
    /// Claims seen deleted.
    pub claims_gone: usize,
}

type Timelines = Arc<Mutex<HashMap<String, Timeline>>>;

/// Watches the claims of a namespace and their volumes, timestamping every
/// stage of every claim on receipt of the watch event.
pub struct Tracker {
    timelines: Timelines,
    counts: watch::Receiver<Counts>,
    clock: Clock,
    tasks: Vec<JoinHandle<()>>,
}

impl Tracker {
    /// Starts both watches and returns once both have listed.
    pub async fn start(client: &Client, namespace: &str, clock: Clock) -> Result<Tracker, String> {
        let timelines: Timelines = Arc::default();
        let (tx, counts) = watch::channel(Counts::default());
        let (claims_ready, claims_listed) = oneshot::channel();
        let (volumes_ready, volumes_listed) = oneshot::channel();
        let tasks = vec![
            tokio::spawn(watch_claims(
                Api::namespaced(client.clone(), namespace),
                timelines.clone(),
                tx.clone(),
                clock,
                claims_ready,
            )),
            tokio::spawn(watch_volumes(
                Api::all(client.clone()),
                namespace.to_string(),
                timelines.clone(),
                tx,
                clock,
                volumes_ready,
            )),
        ];
        let tracker = Tracker { timelines, counts, clock, tasks };
        let listed = async { claims_listed.await.and(volumes_listed.await) };
        tokio::time::timeout(Duration::from_secs(60), listed)
            .await
            .map_err(|_| "the claim and volume watches did not list within 60 s".to_string())?
            .map_err(|_| "a watch ended before it listed".to_string())?;
        Ok(tracker)
    }

    fn with(&self, claim: &str, f: impl FnOnce(&mut Timeline)) {
        f(self.timelines.lock().unwrap_or_else(|p| p.into_inner()).entry(claim.to_string()).or_default());
    }

    /// Records that the create request for `claim` goes out now.
    pub fn sent(&self, claim: &str) {
        let now = self.clock.now();
        self.with(claim, |t| t.create_sent = Some(now));
    }

    /// Records that the create request for `claim` returned now.
    pub fn created(&self, claim: &str) {
        let now = self.clock.now();
        self.with(claim, |t| t.created = Some(now));
    }

    /// The counts now.
    pub fn counts(&self) -> Counts {
        *self.counts.borrow()
    }

    /// Waits until `done` holds for the counts, printing progress every few
    /// seconds. On timeout, returns the counts reached as the error.
    pub async fn wait(&self, what: &str, timeout: Duration, done: impl Fn(&Counts) -> bool) -> Result<Counts, Counts> {
        let mut rx = self.counts.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next_note = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = *rx.borrow_and_update();
            if done(&now) {
                return Ok(now);
            }
            if tokio::time::Instant::now() >= next_note {
                progress(&self.clock, format!("waiting for {what}: {now:?}"));
                next_note += Duration::from_secs(5);
            }
            let until = next_note.min(deadline);
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(now),
                Err(_) if tokio::time::Instant::now() >= deadline => return Err(now),
                Err(_) => {}
            }
        }
    }

    /// Every claim's timeline.
    pub fn timelines(&self) -> Vec<Timeline> {
        self.timelines.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn watch_claims(
    api: Api<PersistentVolumeClaim>,
    timelines: Timelines,
    counts: watch::Sender<Counts>,
    clock: Clock,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let now = clock.now();
        match event {
            Ok(watcher::Event::InitDone) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                let annotated = c.annotations().contains_key(keys::STORAGE_PROVISIONER);
                let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
                let mut all = timelines.lock().unwrap_or_else(|p| p.into_inner());
                let t = all.entry(c.name_any()).or_default();
                counts.send_modify(|n| {
                    if annotated && t.annotated.is_none() {
                        t.annotated = Some(now);
                        n.annotated += 1;
                    }
                    if bound && t.bound.is_none() {
                        t.bound = Some(now);
                        n.bound += 1;
                    }
                });
            }
            Ok(watcher::Event::Delete(_)) => counts.send_modify(|n| n.claims_gone += 1),
            Ok(watcher::Event::Init) => {}
            Err(e) => progress(&clock, format!("claim watch error (retrying): {e}")),
        }
    }
}

async fn watch_volumes(
    api: Api<PersistentVolume>,
    namespace: String,
    timelines: Timelines,
    counts: watch::Sender<Counts>,
    clock: Clock,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let now = clock.now();
        let (v, gone) = match event {
            Ok(watcher::Event::InitDone) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                continue;
            }
            Ok(watcher::Event::Apply(v) | watcher::Event::InitApply(v)) => (v, false),
            Ok(watcher::Event::Delete(v)) => (v, true),
            Ok(watcher::Event::Init) => continue,
            Err(e) => {
                progress(&clock, format!("volume watch error (retrying): {e}"));
                continue;
            }
        };
        let Some(claim_ref) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else { continue };
        if claim_ref.namespace.as_deref() != Some(namespace.as_str()) {
            continue;
        }
        let Some(claim) = claim_ref.name.clone() else { continue };
        let well_named = claim_ref.uid.as_deref().is_some_and(|uid| v.name_any() == format!("pvc-{uid}"));
        let mut all = timelines.lock().unwrap_or_else(|p| p.into_inner());
        let t = all.entry(claim).or_default();
        counts.send_modify(|n| {
            if t.pv.is_none() {
                t.pv = Some(now);
                n.volumes += 1;
                if !well_named {
                    n.misnamed += 1;
                }
            }
            if gone && t.pv_gone.is_none() {
                t.pv_gone = Some(now);
                n.volumes_gone += 1;
            }
        });
    }
}

fn claim_object(name: &str, names: &RunNames) -> PersistentVolumeClaim {
    let mut c = e2e_support::fixtures::claim(name, &names.class, "1Gi");
    c.metadata.labels = Some(names.labels());
    c
}

/// Creates the namespace and the class of the run.
pub async fn create_namespace_and_class(client: &Client, names: &RunNames) -> Result<StorageClass, String> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(names.namespace.clone()),
            labels: Some(names.labels()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|e| format!("creating namespace {}: {e}", names.namespace))?;
    let mut class = e2e_support::fixtures::storage_class(&names.class, &names.provisioner);
    class.metadata.labels = Some(names.labels());
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .map_err(|e| format!("creating class {}: {e}", names.class))
}

/// Creates `n` claims `claim-00000`..., `concurrency` requests at a time,
/// as fast as the API server takes them.
pub async fn create_claims(
    client: &Client,
    names: &RunNames,
    n: usize,
    concurrency: usize,
    tracker: &Tracker,
) -> Result<(), String> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &names.namespace);
    let pp = PostParams::default();
    stream::iter(0..n)
        .map(|i| {
            let (api, pp) = (&api, &pp);
            async move {
                let name = format!("claim-{i:05}");
                let claim = claim_object(&name, names);
                tracker.sent(&name);
                api.create(pp, &claim).await.map_err(|e| format!("creating claim {name}: {e}"))?;
                tracker.created(&name);
                Ok::<_, String>(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
}

/// Creates `n` claims and, for each, exactly what the engine would have
/// written: the PersistentVolume `pvc-<uid>` built by the engine's own
/// [`build_volume`] from the bench backend's answer. Nothing of the engine's
/// goes on the claim (its intents are in its journal, and gone once the PV is
/// saved). The binder then binds them as it binds the engine's.
pub async fn create_provisioned(
    client: &Client,
    names: &RunNames,
    class: &StorageClass,
    n: usize,
    concurrency: usize,
    clock: &Clock,
) -> Result<(), String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &names.namespace);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let pp = PostParams::default();
    stream::iter(0..n)
        .map(|i| {
            let (claims, volumes, done, pp) = (&claims, &volumes, &done, &pp);
            async move {
                let name = format!("cached-{i:05}");
                let mut claim = claim_object(&name, names);
                // As the binder leaves it before the engine acts.
                claim.metadata.annotations = Some(BTreeMap::from([
                    (keys::STORAGE_PROVISIONER.to_string(), names.provisioner.clone()),
                    (keys::BETA_STORAGE_PROVISIONER.to_string(), names.provisioner.clone()),
                ]));
                let created = claims.create(pp, &claim).await.map_err(|e| format!("creating claim {name}: {e}"))?;
                let pv_name = format!("pvc-{}", created.uid().unwrap_or_default());
                let pv = build_volume(&pv_name, volume_for(&pv_name), &created, class, &VolumeOptions::default());
                volumes.create(pp, &pv).await.map_err(|e| format!("creating volume {pv_name}: {e}"))?;
                let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if k % 1000 == 0 {
                    progress(clock, format!("{k} of {n} claims with volumes created"));
                }
                Ok::<_, String>(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
}

/// The API server's own counters, from its `/metrics` (`None` if it will not tell).
pub async fn apiserver_counters(client: &Client) -> Option<ApiServerCounters> {
    let request = http::Request::get("/metrics").body(Vec::new()).ok()?;
    client.request_text(request).await.ok().map(|text| ApiServerCounters::parse(&text))
}

/// Deletes all claims of the namespace in one request.
pub async fn delete_all_claims(client: &Client, namespace: &str) -> Result<(), String> {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .delete_collection(&DeleteParams::background(), &ListParams::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("deleting the claims: {e}"))
}

/// Removes everything of the run, finalizers first (no engine may be
/// running to remove its own): claims, their volumes, the class, the namespace.
pub async fn remove_everything(client: &Client, names: &RunNames, concurrency: usize) -> Result<(), String> {
    let no_finalizers = Patch::Merge(json!({ "metadata": { "finalizers": null } }));
    let pp = PatchParams::default();
    let dp = DeleteParams::background();
    let concurrency = concurrency.max(1);

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &names.namespace);
    let listed = claims.list(&ListParams::default()).await.map_err(|e| format!("listing claims: {e}"))?;
    stream::iter(listed.items.iter().filter(|c| !c.finalizers().is_empty()))
        .for_each_concurrent(concurrency, |c| {
            let (claims, pp, patch) = (&claims, &pp, &no_finalizers);
            async move {
                let _ = claims.patch(&c.name_any(), pp, patch).await;
            }
        })
        .await;
    claims.delete_collection(&dp, &ListParams::default()).await.map_err(|e| format!("deleting claims: {e}"))?;

    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let listed = volumes.list(&ListParams::default()).await.map_err(|e| format!("listing volumes: {e}"))?;
    let ours = listed.items.iter().filter(|v| {
        v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.namespace.as_deref())
            == Some(names.namespace.as_str())
    });
    stream::iter(ours)
        .for_each_concurrent(concurrency, |v| {
            let (volumes, pp, dp, patch) = (&volumes, &pp, &dp, &no_finalizers);
            async move {
                if !v.finalizers().is_empty() {
                    let _ = volumes.patch(&v.name_any(), pp, patch).await;
                }
                let _ = volumes.delete(&v.name_any(), dp).await;
            }
        })
        .await;

    let _ = Api::<StorageClass>::all(client.clone()).delete(&names.class, &dp).await;
    // The test plane runs no namespace controller: finalize the namespace directly.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(&names.namespace, &dp).await;
    let finalize = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": names.namespace },
        "spec": { "finalizers": [] }
    });
    let _ = namespaces.replace_subresource("finalize", &names.namespace, &PostParams::default(), &finalize).await;
    Ok(())
}
