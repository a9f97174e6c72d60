//! [`ScriptedBackend`]: a [`Provisioner`] for tests whose answers are
//! scripted call by call, that records its calls and the volumes it holds,
//! and that tests can wait on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeSpec};
use k8s_openapi::api::storage::v1::StorageClass;
use tokio::sync::{Notify, watch};

use super::WAIT_TIMEOUT;
use crate::provisioner::DataSource;
use crate::{DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};

/// A scripted answer to one provision call (see [`ScriptedBackend::script`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ProvisionAnswer {
    /// Create the backend volume (if it does not exist yet) and answer with
    /// it: what every call without a scripted answer does.
    Succeed,
    /// Create nothing and answer with this error.
    Fail(ProvisionError),
    /// Create the backend volume, then answer with this error: a backend
    /// that did the work but could not say so (an "in progress" answer, a
    /// timeout after the request went out).
    CreateThenFail(ProvisionError),
}

/// A scripted answer to one delete call (see [`ScriptedBackend::script_deletes`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum DeleteAnswer {
    /// Delete the backend volume (if it exists) and succeed: what every call
    /// without a scripted answer does.
    Succeed,
    /// Delete nothing and answer with this error.
    Fail(DeleteError),
    /// Delete the backend volume, then answer with this error.
    DeleteThenFail(DeleteError),
}

/// What a [`ScriptedBackend`] holds and has been asked, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendState {
    /// The backend volumes that exist, by PV name, with the node each was
    /// made for (the request's selected node).
    pub volumes: BTreeMap<String, Option<String>>,
    /// Backend volumes created so far (a call for one that exists does not count).
    pub created: u64,
    /// Backend volumes deleted so far (a call for one that does not exist does not count).
    pub deleted: u64,
    /// Every provision call, by PV name, in order, counted when the call
    /// starts (so a paused call is listed).
    pub provision_calls: Vec<String>,
    /// Every delete call, by PV name, in order, counted when the call starts.
    pub delete_calls: Vec<String>,
    /// The data source each provision call was handed, by PV name (calls
    /// without one are not listed).
    pub data_sources: BTreeMap<String, DataSource>,
}

impl BackendState {
    /// Whether the backend volume for `pv` exists.
    pub fn has(&self, pv: &str) -> bool {
        self.volumes.contains_key(pv)
    }
}

#[derive(Default)]
struct Script {
    provisions: VecDeque<ProvisionAnswer>,
    deletes: VecDeque<DeleteAnswer>,
}

struct Shared {
    state: Mutex<BackendState>,
    script: Mutex<Script>,
    /// Woken after every change of `state`.
    changed: Notify,
    /// `true` while calls are paused.
    paused: watch::Sender<bool>,
    block: AtomicBool,
    clones: AtomicBool,
}

/// A [`Provisioner`] for tests: an in-memory backend that does no I/O.
///
/// - **Answers.** A provision call takes the next answer queued with
///   [`script`](Self::script), a delete call the next one queued with
///   [`script_deletes`](Self::script_deletes); with none queued it succeeds.
///   A successful provision creates the backend volume named after the PV
///   (a second call for the same PV creates nothing new, as an idempotent
///   backend must) and answers with a `hostPath` volume `/fake/<pv name>`;
///   a successful delete removes it (deleting one that does not exist
///   succeeds).
/// - **Records.** Every call is recorded when it starts, with the volumes
///   that exist and how many were created and deleted: [`state`](Self::state)
///   and the shortcuts beside it.
/// - **Waits.** [`wait_until`](Self::wait_until) waits for a state, woken by
///   the backend's own calls (no polling), so it works under paused time.
/// - **Pauses.** After [`pause`](Self::pause), calls are recorded and then
///   wait until [`resume`](Self::resume), for tests of what happens while a
///   call is in flight.
/// - **Capabilities.** Neither block volumes nor data sources are supported
///   unless [`supporting_block`](Self::supporting_block) or
///   [`supporting_clones`](Self::supporting_clones) says so.
///
/// Clones share the backend, so a test keeps one and hands the engine
/// another; engines started one after another with clones of it share its
/// volumes, as replicas or restarts share a real backend.
///
/// ```
/// use provisioner_core::testing::{ProvisionAnswer, ScriptedBackend, fixtures};
/// use provisioner_core::{ProvisionError, Provisioner};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let backend = ScriptedBackend::new();
/// backend.script([ProvisionAnswer::Fail(ProvisionError::failed("quota exceeded"))]);
/// let req = fixtures::request("pvc-1", "fast", []);
/// assert!(backend.provision(&req).await.is_err());
/// assert!(backend.provision(&req).await.is_ok());
/// let state = backend.state();
/// assert_eq!(state.provision_calls, ["pvc-1", "pvc-1"]);
/// assert!(state.has("pvc-1"));
/// assert_eq!(state.created, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct ScriptedBackend {
    shared: Arc<Shared>,
}

impl Default for ScriptedBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ScriptedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedBackend").field("state", &self.state()).finish_non_exhaustive()
    }
}

/// [`ScriptedBackend::wait_until`] gave up.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for the backend; last state: {last:?}")]
pub struct BackendTimeout {
    /// How long was waited, on the Tokio clock.
    pub timeout: Duration,
    /// The state when it gave up.
    pub last: BackendState,
}

impl ScriptedBackend {
    /// A backend that succeeds at everything and holds no volume.
    pub fn new() -> Self {
        let (paused, _) = watch::channel(false);
        ScriptedBackend {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                script: Mutex::default(),
                changed: Notify::new(),
                paused,
                block: AtomicBool::new(false),
                clones: AtomicBool::new(false),
            }),
        }
    }

    /// Also serves raw block volumes (`supports_block` answers true).
    pub fn supporting_block(self) -> Self {
        self.shared.block.store(true, Ordering::SeqCst);
        self
    }

    /// Also fills new volumes from clones of claims: `supports_data_source`
    /// answers true for a `PersistentVolumeClaim` source (and false for any
    /// other). The source of each call is recorded in
    /// [`BackendState::data_sources`].
    pub fn supporting_clones(self) -> Self {
        self.shared.clones.store(true, Ordering::SeqCst);
        self
    }

    fn lock(&self) -> MutexGuard<'_, BackendState> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn script_lock(&self) -> MutexGuard<'_, Script> {
        self.shared.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues answers for the next provision calls, in order, after any
    /// already queued.
    pub fn script(&self, answers: impl IntoIterator<Item = ProvisionAnswer>) {
        self.script_lock().provisions.extend(answers);
    }

    /// Queues answers for the next delete calls, in order, after any
    /// already queued.
    pub fn script_deletes(&self, answers: impl IntoIterator<Item = DeleteAnswer>) {
        self.script_lock().deletes.extend(answers);
    }

    /// Calls from now on are recorded and then wait, until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Lets paused calls, and later ones, go on.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// What the backend holds and has been asked, now.
    pub fn state(&self) -> BackendState {
        self.lock().clone()
    }

    /// The backend volumes that exist now, by PV name, with the node each was made for.
    pub fn volumes(&self) -> BTreeMap<String, Option<String>> {
        self.lock().volumes.clone()
    }

    /// Whether the backend volume for `pv` exists.
    pub fn has(&self, pv: &str) -> bool {
        self.lock().has(pv)
    }

    /// Backend volumes created so far.
    pub fn created(&self) -> u64 {
        self.lock().created
    }

    /// Backend volumes deleted so far.
    pub fn deleted(&self) -> u64 {
        self.lock().deleted
    }

    /// Every provision call so far, by PV name.
    pub fn provision_calls(&self) -> Vec<String> {
        self.lock().provision_calls.clone()
    }

    /// Every delete call so far, by PV name.
    pub fn delete_calls(&self) -> Vec<String> {
        self.lock().delete_calls.clone()
    }

    /// The data source each provision call was handed, by PV name.
    pub fn data_sources(&self) -> BTreeMap<String, DataSource> {
        self.lock().data_sources.clone()
    }

    /// Waits until `cond` holds for the backend's state and returns that
    /// state. It is woken by the backend's own calls, not by polling, for at
    /// most [`WAIT_TIMEOUT`] on the Tokio clock (so under paused time a
    /// state that never comes fails at once, not after minutes).
    pub async fn wait_until(&self, cond: impl Fn(&BackendState) -> bool) -> Result<BackendState, BackendTimeout> {
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so no change is missed.
            notified.as_mut().enable();
            let state = self.state();
            if cond(&state) {
                return Ok(state);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(BackendTimeout { timeout: WAIT_TIMEOUT, last: self.state() });
            }
        }
    }

    fn change<T>(&self, f: impl FnOnce(&mut BackendState) -> T) -> T {
        let out = f(&mut self.lock());
        self.shared.changed.notify_waiters();
        out
    }

    async fn wait_while_paused(&self) {
        let mut paused = self.shared.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
    }
}

fn create(s: &mut BackendState, pv: &str, node: Option<String>) {
    if !s.volumes.contains_key(pv) {
        s.volumes.insert(pv.to_string(), node);
        s.created += 1;
    }
}

fn remove(s: &mut BackendState, pv: &str) {
    if s.volumes.remove(pv).is_some() {
        s.deleted += 1;
    }
}

#[async_trait::async_trait]
impl Provisioner for ScriptedBackend {
    async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        self.change(|s| {
            s.provision_calls.push(req.pv_name.clone());
            if let Some(source) = &req.data_source {
                s.data_sources.insert(req.pv_name.clone(), source.clone());
            }
        });
        self.wait_while_paused().await;
        let answer = self.script_lock().provisions.pop_front().unwrap_or(ProvisionAnswer::Succeed);
        let (pv, node) = (&req.pv_name, req.selected_node.clone());
        match answer {
            ProvisionAnswer::Fail(e) => Err(e),
            ProvisionAnswer::CreateThenFail(e) => {
                self.change(|s| create(s, pv, node));
                Err(e)
            }
            ProvisionAnswer::Succeed => {
                self.change(|s| create(s, pv, node));
                Ok(ProvisionedVolume::new(PersistentVolumeSpec {
                    host_path: Some(HostPathVolumeSource { path: format!("/fake/{pv}"), type_: None }),
                    ..Default::default()
                }))
            }
        }
    }

    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
        let name = volume.metadata.name.clone().unwrap_or_default();
        self.change(|s| s.delete_calls.push(name.clone()));
        self.wait_while_paused().await;
        let answer = self.script_lock().deletes.pop_front().unwrap_or(DeleteAnswer::Succeed);
        match answer {
            DeleteAnswer::Fail(e) => Err(e),
            DeleteAnswer::DeleteThenFail(e) => {
                self.change(|s| remove(s, &name));
                Err(e)
            }
            DeleteAnswer::Succeed => {
                self.change(|s| remove(s, &name));
                Ok(())
            }
        }
    }

    fn supports_block(&self, _class: &StorageClass) -> bool {
        self.shared.block.load(Ordering::SeqCst)
    }

    fn supports_data_source(&self, source: &DataSource, _class: &StorageClass) -> bool {
        self.shared.clones.load(Ordering::SeqCst) && source.is_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixtures::{claim, request, volume};

    #[tokio::test(start_paused = true)]
    async fn scripted_answers_are_used_in_order_then_calls_succeed() {
        let backend = ScriptedBackend::new();
        backend.script([
            ProvisionAnswer::Fail(ProvisionError::failed("first")),
            ProvisionAnswer::CreateThenFail(ProvisionError::in_progress("second")),
        ]);
        let req = request("pvc-1", "fast", []);
        assert_eq!(backend.provision(&req).await.expect_err("scripted"), ProvisionError::failed("first"));
        assert!(!backend.has("pvc-1"), "a failure creates nothing");
        assert_eq!(backend.provision(&req).await.expect_err("scripted"), ProvisionError::in_progress("second"));
        assert!(backend.has("pvc-1"), "created, though the answer was an error");
        backend.provision(&req).await.expect("nothing scripted: success");
        let state = backend.state();
        assert_eq!(state.provision_calls, ["pvc-1", "pvc-1", "pvc-1"]);
        assert_eq!(state.created, 1, "a repeat call for an existing volume creates nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn deletes_follow_their_own_script_and_count_only_what_existed() {
        let backend = ScriptedBackend::new();
        backend.provision(&request("pvc-1", "fast", [])).await.expect("provision");
        let pv = volume("pvc-1", "example.com/test", &claim("default", "data").build()).build();
        backend.script_deletes([DeleteAnswer::Fail(DeleteError::failed("busy"))]);
        assert_eq!(backend.delete(&pv).await.expect_err("scripted"), DeleteError::failed("busy"));
        assert!(backend.has("pvc-1"));
        backend.delete(&pv).await.expect("delete");
        backend.delete(&pv).await.expect("a delete of what is gone succeeds");
        let state = backend.state();
        assert_eq!((state.deleted, state.delete_calls.len()), (1, 3));
        assert!(state.volumes.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_woken_by_a_call_and_a_paused_call_is_recorded_before_it_finishes() {
        let backend = ScriptedBackend::new();
        backend.pause();
        let b = backend.clone();
        let call = tokio::spawn(async move { b.provision(&request("pvc-1", "fast", [])).await });
        let entered = backend.wait_until(|s| s.provision_calls.len() == 1).await.expect("the call starts");
        assert!(!entered.has("pvc-1"), "paused before creating anything");
        let waiting = tokio::spawn({
            let b = backend.clone();
            async move { b.wait_until(|s| s.has("pvc-1")).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "still paused a minute later");
        backend.resume();
        assert!(waiting.await.expect("task").expect("woken").has("pvc-1"));
        call.await.expect("task").expect("provisioned");
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_that_never_comes_times_out_with_the_last_state() {
        let backend = ScriptedBackend::new();
        let e = backend.wait_until(|s| s.created == 1).await.expect_err("nothing happens");
        assert_eq!(e.timeout, WAIT_TIMEOUT);
        assert_eq!(e.last, BackendState::default());
    }

    #[test]
    fn block_and_clone_support_are_off_unless_asked_for() {
        let class = crate::testing::fixtures::class("fast", "example.com/test").build();
        let clone =
            DataSource { api_group: None, kind: "PersistentVolumeClaim".into(), name: "a".into(), namespace: None };
        let plain = ScriptedBackend::new();
        assert!(!plain.supports_block(&class) && !plain.supports_data_source(&clone, &class));
        let able = ScriptedBackend::new().supporting_block().supporting_clones();
        assert!(able.supports_block(&class) && able.supports_data_source(&clone, &class));
    }
}
