//! An in-memory backend for engine tests: it does no I/O, records every
//! call, counts the backend volumes it really creates and deletes, and can
//! be scripted to answer with any outcome.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeSpec};
use k8s_openapi::api::storage::v1::StorageClass;
use provisioner_core::provisioner::DataSource;
use provisioner_core::{DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
use tokio::sync::Notify;

/// A scripted answer for the next provision call.
#[derive(Clone, Debug)]
pub enum Scripted {
    /// Answer with this error (nothing created unless `InProgress`).
    Fail(ProvisionError),
    /// Create the backend volume but answer "in progress".
    CreateButInProgress(String),
}

#[derive(Default)]
struct State {
    volumes: BTreeMap<String, Option<String>>,
    created: u64,
    deleted: u64,
    provision_calls: Vec<String>,
    delete_calls: Vec<String>,
    script: VecDeque<Scripted>,
    delete_script: VecDeque<DeleteError>,
    data_sources: BTreeMap<String, DataSource>,
}

/// The fake backend. Clones share state.
#[derive(Clone, Default)]
pub struct FakeBackend {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    block: bool,
    clones: bool,
}

impl FakeBackend {
    /// A backend that succeeds at everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend that also serves block volumes.
    pub fn with_block() -> Self {
        FakeBackend { block: true, ..Self::default() }
    }

    /// A backend that can fill a new volume from a clone of a claim (a
    /// `PersistentVolumeClaim` data source), and records the source of each
    /// volume it was asked for ([`FakeBackend::data_sources`]).
    pub fn with_clones() -> Self {
        FakeBackend { clones: true, ..Self::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue answers for the next provision calls, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.lock().script.extend(answers);
    }

    /// Queue answers for the next delete calls, in order.
    pub fn script_deletes(&self, answers: impl IntoIterator<Item = DeleteError>) {
        self.lock().delete_script.extend(answers);
    }

    /// Backend volumes that exist now, by PV name, with the node they were made for.
    pub fn volumes(&self) -> BTreeMap<String, Option<String>> {
        self.lock().volumes.clone()
    }

    /// Whether the backend volume for `pv` exists.
    pub fn has(&self, pv: &str) -> bool {
        self.lock().volumes.contains_key(pv)
    }

    /// Backend volumes created so far (a repeat call for an existing one does not count).
    pub fn created(&self) -> u64 {
        self.lock().created
    }

    /// Backend volumes deleted so far (a delete of a missing one does not count).
    pub fn deleted(&self) -> u64 {
        self.lock().deleted
    }

    /// Every provision call, by PV name.
    pub fn provision_calls(&self) -> Vec<String> {
        self.lock().provision_calls.clone()
    }

    /// The data source each provision call was handed, by PV name (calls
    /// without one are not listed).
    pub fn data_sources(&self) -> BTreeMap<String, DataSource> {
        self.lock().data_sources.clone()
    }

    /// Every delete call, by PV name.
    pub fn delete_calls(&self) -> Vec<String> {
        self.lock().delete_calls.clone()
    }

    /// Waits until `cond` holds for this backend, woken by its own calls.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&FakeBackend) -> bool) {
        let deadline = tokio::time::Instant::now() + crate::default_timeout();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for the backend: {what}; volumes {:?}, provision calls {:?}, delete calls {:?}",
                    self.volumes(),
                    self.provision_calls(),
                    self.delete_calls()
                );
            }
        }
    }

    fn create(&self, s: &mut State, pv: &str, node: Option<String>) {
        if !s.volumes.contains_key(pv) {
            s.volumes.insert(pv.to_string(), node);
            s.created += 1;
        }
    }
}

#[async_trait]
impl Provisioner for FakeBackend {
    async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        let result = {
            let mut s = self.lock();
            s.provision_calls.push(req.pv_name.clone());
            if let Some(source) = &req.data_source {
                s.data_sources.insert(req.pv_name.clone(), source.clone());
            }
            match s.script.pop_front() {
                Some(Scripted::Fail(e)) => Err(e),
                Some(Scripted::CreateButInProgress(msg)) => {
                    self.create(&mut s, &req.pv_name, req.selected_node.clone());
                    Err(ProvisionError::in_progress(msg))
                }
                None => {
                    self.create(&mut s, &req.pv_name, req.selected_node.clone());
                    Ok(ProvisionedVolume::new(PersistentVolumeSpec {
                        host_path: Some(HostPathVolumeSource { path: format!("/fake/{}", req.pv_name), type_: None }),
                        ..Default::default()
                    }))
                }
            }
        };
        self.changed.notify_waiters();
        result
    }

    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
        let name = volume.metadata.name.clone().unwrap_or_default();
        let result = {
            let mut s = self.lock();
            s.delete_calls.push(name.clone());
            match s.delete_script.pop_front() {
                Some(e) => Err(e),
                None => {
                    if s.volumes.remove(&name).is_some() {
                        s.deleted += 1;
                    }
                    Ok(())
                }
            }
        };
        self.changed.notify_waiters();
        result
    }

    fn supports_block(&self, _class: &StorageClass) -> bool {
        self.block
    }

    fn supports_data_source(&self, source: &DataSource, _class: &StorageClass) -> bool {
        self.clones && source.is_clone()
    }
}
