//! The intent journal's I/O (its layout and merge rules are in
//! [`crate::journal`]): the group commit, the load at the start of each
//! term, and the watch that repairs a journal edited or deleted by hand.
//!
//! Workers ask for an entry with [`Journal::record`] and wait: one task
//! writes every entry waiting at that moment in one replace of the
//! ConfigMap, so under load an entry costs a small share of a write.
//! Finished entries ([`Journal::forget`]) leave in the next commit, or after
//! [`JournalConfig::linger`] if none comes; a backend delete first waits
//! until its volume's entry is gone from the server ([`Journal::settled`]),
//! so that no entry outlives the backend it records (a restart would then
//! provision it again).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::journal::{self, Contents, OWNER_ANNOTATION, Recorded};
use crate::metrics::Metrics;

/// Where the journal is and how it commits.
#[derive(Clone, Debug, Default)]
pub struct JournalConfig {
    /// The namespace of the journal's ConfigMap (default: the client's
    /// default namespace, the pod's own in a cluster).
    pub namespace: Option<String>,
    /// For engines that run one instance per node or shard without a
    /// leader: this instance's name. Each instance keeps its own journal.
    pub instance: Option<String>,
    /// How long finished entries may wait for a commit that writes new ones
    /// before they get one of their own (default 10 s).
    pub linger: Option<Duration>,
    /// The most the journal may hold, in bytes of keys and values (default
    /// and at most [`journal::MAX_BYTES`], under the API server's 1 MiB per
    /// ConfigMap). Past it new provisions wait for entries to leave.
    pub max_bytes: Option<usize>,
}

/// Why an entry could not be written.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum JournalError {
    /// The ConfigMap is full: the provision waits for entries to leave.
    #[error("the intent journal is full ({0} bytes)")]
    Full(usize),
    /// The journal could not be written.
    #[error("writing the intent journal failed")]
    Write(#[source] Arc<kube::Error>),
    /// The engine stopped leading or is stopping.
    #[error("not leading")]
    NotLeading,
}

struct Waiting {
    key: String,
    value: String,
    class: (String, String),
    done: oneshot::Sender<Result<(), JournalError>>,
}

#[derive(Default)]
struct Inner {
    /// The server's contents at `rv`, as last written or seen (`None`: no object).
    remote: Option<Contents>,
    rv: Option<String>,
    /// The entries this engine holds (key → value), and the same read.
    entries: BTreeMap<String, String>,
    view: HashMap<String, Arc<Recorded>>,
    /// Class snapshots of the held entries.
    classes: BTreeMap<String, String>,
    adds: Vec<Waiting>,
    removed: BTreeSet<String>,
    removed_since: Option<Instant>,
    /// Waiters for the commit that writes the removals pending now.
    flushes: Vec<oneshot::Sender<bool>>,
    repair: bool,
    own: HashSet<String>,
    /// The size of the data last written or read.
    bytes: usize,
}

/// The journal of one engine.
pub(crate) struct Journal {
    api: Api<ConfigMap>,
    name: String,
    owner: String,
    linger: Duration,
    max_bytes: usize,
    /// When "the journal is full" was last logged at warning level.
    full_warned: Mutex<Option<Instant>>,
    inner: Mutex<Inner>,
    wake: Notify,
    leading: AtomicBool,
    metrics: Metrics,
}

impl Journal {
    pub(crate) fn new(client: kube::Client, primary: &str, config: &JournalConfig, metrics: Metrics) -> Journal {
        let namespace = config.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        let owner = match &config.instance {
            Some(i) => format!("{primary} {i}"),
            None => primary.to_string(),
        };
        Journal {
            api: Api::namespaced(client, &namespace),
            name: journal::name_for(primary, config.instance.as_deref()),
            owner,
            linger: config.linger.unwrap_or(Duration::from_secs(10)),
            max_bytes: config.max_bytes.unwrap_or(journal::MAX_BYTES).min(journal::MAX_BYTES),
            full_warned: Mutex::new(None),
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            leading: AtomicBool::new(false),
            metrics,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `namespace/name`, for messages.
    pub(crate) fn describe(&self) -> String {
        format!("{}/{}", self.api.namespace().unwrap_or_default(), self.name)
    }

    /// The entry for volume `key`, if the journal holds one.
    pub(crate) fn recorded(&self, key: &str) -> Option<Arc<Recorded>> {
        self.inner().view.get(key).cloned()
    }

    /// The class an entry was recorded with.
    pub(crate) fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        let inner = self.inner();
        let value = inner.classes.get(name)?;
        serde_json::from_str(value).ok().map(Arc::new)
    }

    /// Reads the journal afresh, at the start of a term: what the server
    /// holds replaces what this replica knew. Returns the keys of every
    /// entry (to be looked at), or an error naming a journal that belongs
    /// to another engine.
    pub(crate) async fn load(&self) -> Result<Vec<String>, String> {
        let mut delay = Duration::from_millis(200);
        let got = loop {
            match bounded(self.api.get_opt(&self.name)).await {
                Ok(got) => break got,
                // Not allowed: no retry will change that, and the engine
                // cannot run safely without its journal.
                Err(kube::Error::Api(e)) if e.code == 401 || e.code == 403 => {
                    return Err(format!(
                        "reading the intent journal {} was refused ({}): grant configmaps get, list, watch, create \
                         and update in namespace {} (the charts do), or give the namespace with --lease-namespace",
                        self.describe(),
                        e.message,
                        self.api.namespace().unwrap_or_default()
                    ));
                }
                Err(e) => {
                    warn!(journal = %self.describe(), error = %e, "reading the intent journal failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        if let Some(cm) = &got
            && let Some(other) = cm.annotations().get(OWNER_ANNOTATION).filter(|o| **o != self.owner)
        {
            let msg = format!(
                "the intent journal {} belongs to {other:?}, not {:?}: give this engine another provisioner name or instance",
                self.describe(),
                self.owner
            );
            return Err(msg);
        }
        let mut inner = self.inner();
        inner.rv = got.as_ref().and_then(|cm| cm.resource_version());
        let contents = got.map(|cm| Contents::read(&cm.data.unwrap_or_default()));
        inner.entries = contents.as_ref().map(|c| c.entries.clone()).unwrap_or_default();
        inner.classes = contents.as_ref().map(|c| c.classes.clone()).unwrap_or_default();
        inner.bytes = contents.as_ref().map(|c| journal::size(&c.to_data())).unwrap_or_default();
        inner.remote = contents;
        inner.removed.clear();
        inner.view = decode_all(&inner.entries);
        self.metrics.journal_entries.set(inner.entries.len() as i64);
        if !inner.view.is_empty() {
            info!(journal = %self.describe(), entries = inner.view.len(), "intent journal loaded");
        }
        Ok(inner.view.keys().cloned().collect())
    }

    /// Whether this replica may write the journal (it leads).
    pub(crate) fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        if !leading {
            let mut inner = self.inner();
            for w in inner.adds.drain(..) {
                let _ = w.done.send(Err(JournalError::NotLeading));
            }
            inner.flushes.clear();
        }
        self.wake.notify_one();
    }

    /// Writes an entry for volume `key` of `claim` (class `class`) and
    /// returns once a commit holding it succeeded. An entry already held
    /// for the same claim costs nothing.
    pub(crate) async fn record(
        &self,
        key: &str,
        claim: &PersistentVolumeClaim,
        class: &StorageClass,
    ) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.inner();
            if inner.view.get(key).is_some_and(|r| r.claim.metadata.uid == claim.metadata.uid) {
                inner.removed.remove(key);
                return Ok(());
            }
            let value = journal::encode_entry(claim, &class.name_any());
            let size = inner.bytes + inner.adds.iter().map(|w| w.key.len() + w.value.len()).sum::<usize>();
            if size + key.len() + value.len() > self.max_bytes {
                self.metrics.journal_full.inc();
                // Finished entries make room: they go now, not after the linger.
                let room_coming = !inner.removed.is_empty();
                if room_coming {
                    inner.repair = true;
                }
                drop(inner);
                if room_coming {
                    self.wake.notify_one();
                }
                self.warn_full(size);
                return Err(JournalError::Full(size));
            }
            let snapshot = serde_json::to_string(&journal::trimmed_class(class)).unwrap_or_default();
            inner.removed.remove(key);
            inner.adds.push(Waiting { key: key.to_string(), value, class: (class.name_any(), snapshot), done: tx });
        }
        self.wake.notify_one();
        rx.await.unwrap_or(Err(JournalError::NotLeading))
    }

    /// Says once a minute, at warning level, that provisions wait for room.
    fn warn_full(&self, size: usize) {
        let mut last = self.full_warned.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            warn!(
                journal = %self.describe(),
                bytes = size,
                "the intent journal is full: new provisions wait until volumes in progress are saved"
            );
        }
    }

    /// The entry for `key` has done its job (a PV records the backend, or
    /// nothing was created): it leaves in a coming commit.
    pub(crate) fn forget(&self, key: &str) {
        let mut inner = self.inner();
        if inner.view.remove(key).is_some() || inner.entries.contains_key(key) {
            inner.entries.remove(key);
            inner.removed.insert(key.to_string());
            inner.removed_since.get_or_insert_with(Instant::now);
            drop(inner);
            // The committer sets its timer for the linger.
            self.wake.notify_one();
        }
    }

    /// Returns once the server holds no entry for `key` that this engine
    /// has finished with (`false` if that could not be written now).
    pub(crate) async fn settled(&self, key: &str) -> bool {
        let rx = {
            let mut inner = self.inner();
            let on_server = inner.remote.as_ref().is_some_and(|r| r.entries.contains_key(key));
            if !inner.removed.contains(key) || !on_server {
                return true;
            }
            let (tx, rx) = oneshot::channel();
            inner.flushes.push(tx);
            rx
        };
        self.wake.notify_one();
        rx.await.unwrap_or(false)
    }

    /// The committer: runs for the engine's life, writes only while leading.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let wait = self.next_commit();
            match wait {
                Some(d) if d.is_zero() => {}
                Some(d) => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.wake.notified() => continue,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.wake.notified() => continue,
                    }
                }
            }
            if !self.leading.load(Ordering::SeqCst) {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.wake.notified() => continue,
                }
            }
            self.commit().await;
        }
    }

    /// When the next commit is due (`None`: nothing to write).
    fn next_commit(&self) -> Option<Duration> {
        let inner = self.inner();
        if !inner.adds.is_empty() || inner.repair || !inner.flushes.is_empty() {
            return Some(Duration::ZERO);
        }
        let since = inner.removed_since?;
        if inner.removed.is_empty() {
            return None;
        }
        Some((since + self.linger).saturating_duration_since(Instant::now()))
    }

    /// One group commit of everything waiting, retried on conflicts.
    async fn commit(&self) {
        let (adds, removed, flushes) = {
            let mut inner = self.inner();
            inner.repair = false;
            inner.removed_since = None;
            (std::mem::take(&mut inner.adds), inner.removed.clone(), std::mem::take(&mut inner.flushes))
        };
        let mut live = self.inner().entries.clone();
        let mut classes = BTreeMap::new();
        for w in &adds {
            live.insert(w.key.clone(), w.value.clone());
            classes.insert(w.class.0.clone(), w.class.1.clone());
        }
        let mut result = Err(JournalError::NotLeading);
        for attempt in 0..5 {
            if !self.leading.load(Ordering::SeqCst) {
                result = Err(JournalError::NotLeading);
                break;
            }
            let (remote, rv) = {
                let inner = self.inner();
                (inner.remote.clone(), inner.rv.clone())
            };
            let mut all_classes = self.inner().classes.clone();
            all_classes.extend(classes.clone());
            let contents = journal::commit_contents(remote.as_ref(), &live, &removed, &all_classes);
            let data = contents.to_data();
            if journal::size(&data) > self.max_bytes + 64 * 1024 {
                result = Err(JournalError::Full(journal::size(&data)));
                break;
            }
            let cm = self.object(data.clone(), rv.clone());
            self.metrics.api_writes.inc();
            self.metrics.journal_commits.inc();
            let written = match &rv {
                Some(_) => bounded(self.api.replace(&self.name, &crate::keys::post_params(), &cm)).await,
                None => bounded(self.api.create(&crate::keys::post_params(), &cm)).await,
            };
            match written {
                Ok(saved) => {
                    let mut inner = self.inner();
                    inner.rv = saved.resource_version();
                    if let Some(rv) = inner.rv.clone() {
                        inner.own.insert(rv);
                    }
                    for k in &removed {
                        inner.removed.remove(k);
                    }
                    inner.repair = false;
                    inner.bytes = journal::size(&data);
                    for w in &adds {
                        inner.entries.insert(w.key.clone(), w.value.clone());
                        if let Some(r) = journal::decode_entry(&w.value) {
                            inner.view.insert(w.key.clone(), Arc::new(r));
                        }
                    }
                    inner.classes = contents.classes.clone();
                    inner.remote = Some(contents);
                    self.metrics.journal_entries.set(inner.entries.len() as i64);
                    debug!(journal = %self.describe(), added = adds.len(), removed = removed.len(), "journal committed");
                    result = Ok(());
                    break;
                }
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                    debug!(journal = %self.describe(), attempt, code = e.code, "journal changed on the server; merging");
                    self.metrics.journal_conflicts.inc();
                    if let Err(msg) = self.reread().await {
                        warn!(journal = %self.describe(), error = %msg, "re-reading the journal failed");
                    }
                }
                Err(e) => {
                    warn!(journal = %self.describe(), error = %e, "writing the intent journal failed");
                    result = Err(JournalError::Write(Arc::new(e)));
                    break;
                }
            }
        }
        let ok = result.is_ok();
        if !ok {
            // Removals and repairs stay pending; entries fail their provisions (retried).
            let mut inner = self.inner();
            inner.removed_since.get_or_insert_with(Instant::now);
        }
        for w in adds {
            let _ = w.done.send(result.clone());
        }
        for f in flushes {
            let _ = f.send(ok);
        }
    }

    fn object(&self, data: BTreeMap<String, String>, rv: Option<String>) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(self.name.clone());
        cm.metadata.resource_version = rv;
        cm.metadata.labels = Some(BTreeMap::from([(journal::LABEL.to_string(), "true".to_string())]));
        cm.metadata.annotations = Some(BTreeMap::from([(OWNER_ANNOTATION.to_string(), self.owner.clone())]));
        cm.data = Some(data);
        cm
    }

    /// Reads the server's journal after a conflict, learning entries this
    /// engine did not know (another replica's).
    async fn reread(&self) -> Result<(), String> {
        let got = bounded(self.api.get_opt(&self.name)).await.map_err(|e| e.to_string())?;
        self.learn(got.as_ref());
        Ok(())
    }

    /// Takes in the server's state (`None`: the object is gone): new
    /// entries are learned (and returned, to be looked at); entries this
    /// engine holds that the server lost are written again.
    fn learn(&self, got: Option<&ConfigMap>) -> Vec<String> {
        let mut inner = self.inner();
        if let Some(cm) = got
            && let Some(rv) = cm.resource_version()
            && (inner.own.remove(&rv) || inner.rv.as_deref() == Some(rv.as_str()))
        {
            return Vec::new();
        }
        inner.rv = got.and_then(|cm| cm.resource_version());
        let contents = got.map(|cm| Contents::read(cm.data.as_ref().unwrap_or(&BTreeMap::new())));
        let mut new = Vec::new();
        if let Some(c) = &contents {
            for (k, v) in &c.entries {
                if !inner.entries.contains_key(k) && !inner.removed.contains(k) {
                    inner.entries.insert(k.clone(), v.clone());
                    if let Some(r) = journal::decode_entry(v) {
                        inner.view.insert(k.clone(), Arc::new(r));
                    }
                    new.push(k.clone());
                }
            }
            for (k, v) in &c.classes {
                inner.classes.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let lost = inner.entries.keys().any(|k| !contents.as_ref().is_some_and(|c| c.entries.contains_key(k)));
        if lost {
            inner.repair = true;
        }
        inner.bytes = contents.as_ref().map(|c| journal::size(&c.to_data())).unwrap_or_default();
        inner.remote = contents;
        self.metrics.journal_entries.set(inner.entries.len() as i64);
        drop(inner);
        if lost {
            warn!(journal = %self.describe(), "the intent journal lost entries this engine holds (edited or deleted by hand); writing them again");
            self.wake.notify_one();
        }
        new
    }

    /// Watches the journal's object for changes made by others, so that a
    /// journal edited or deleted by hand is repaired at once. Keys of
    /// entries learned are handed to `queue`.
    pub(crate) async fn watch(self: Arc<Self>, queue: impl Fn(&str), stop: CancellationToken) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name)).timeout(60);
        let mut stream = Box::pin(watcher(self.api.clone(), config));
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = stream.try_next() => e,
            };
            match event {
                Ok(Some(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                    if !self.leading.load(Ordering::SeqCst) {
                        continue;
                    }
                    for k in self.learn(Some(&cm)) {
                        queue(&k);
                    }
                }
                Ok(Some(watcher::Event::Delete(_))) => {
                    if self.leading.load(Ordering::SeqCst) {
                        self.learn(None);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    stream = Box::pin(watcher(
                        self.api.clone(),
                        watcher::Config::default().fields(&format!("metadata.name={}", self.name)).timeout(60),
                    ));
                }
                Err(e) => {
                    debug!(journal = %self.describe(), error = %e, "journal watch error; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// How long one journal request may take. A request on a connection that
/// died with its API server can otherwise hang for minutes, and with it
/// every provision and delete waiting for a commit; a request cut short is
/// retried (a write that landed anyway is written again, which is harmless).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<T>(call: impl std::future::Future<Output = Result<T, kube::Error>>) -> Result<T, kube::Error> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer in {REQUEST_TIMEOUT:?}"),
        )))),
    }
}

fn decode_all(entries: &BTreeMap<String, String>) -> HashMap<String, Arc<Recorded>> {
    entries.iter().filter_map(|(k, v)| Some((k.clone(), Arc::new(journal::decode_entry(v)?)))).collect()
}
