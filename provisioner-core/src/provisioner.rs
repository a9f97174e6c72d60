//! The [`Provisioner`] trait a storage backend implements, and the types its
//! calls take and return.
//!
//! The engine calls [`Provisioner::provision`] when a claim needs a volume and
//! [`Provisioner::delete`] when a volume it saved must go. Every way a call can
//! end is a distinct variant, so the engine always knows whether backend work
//! may still be running (and must be finished and cleaned up) or nothing was
//! created at all.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

pub use crate::cause::{BoxError, Cause};

/// Everything a provisioner needs to create one backend volume.
///
/// `pv_name` is the idempotency key: a repeated call with the same name (after
/// a retry, a restart or a crash) must return the same backend volume, never
/// create a second one.
///
/// Fields may be added (the struct is `#[non_exhaustive]`): build one with
/// [`ProvisionRequest::new`] and the `with_*` methods.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProvisionRequest {
    /// Name of the PersistentVolume the engine will save (`pvc-<claim uid>` by default).
    pub pv_name: String,
    /// The claim, as last seen.
    pub claim: Arc<PersistentVolumeClaim>,
    /// The claim's class.
    pub class: Arc<StorageClass>,
    /// The node the scheduler picked (`volume.kubernetes.io/selected-node`), for
    /// `WaitForFirstConsumer` classes.
    pub selected_node: Option<String>,
    /// What the new volume must be filled from (a clone, a snapshot), when
    /// the claim asks for it. Only ever set to a source
    /// [`Provisioner::supports_data_source`] accepted: an empty volume
    /// handed to such a claim would be data loss.
    pub data_source: Option<DataSource>,
}

/// Where a claim asks its volume's contents to come from: its
/// `spec.dataSourceRef`, or else its `spec.dataSource`.
///
/// ```
/// use provisioner_core::provisioner::DataSource;
/// let clone = DataSource { api_group: None, kind: "PersistentVolumeClaim".into(), name: "db".into(), namespace: None };
/// assert!(clone.is_clone());
/// assert!(!clone.is_snapshot());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSource {
    /// The API group of the source (`None` or empty: the core group).
    pub api_group: Option<String>,
    /// The kind: `PersistentVolumeClaim`, `VolumeSnapshot`, or a populator's kind.
    pub kind: String,
    /// The source object's name.
    pub name: String,
    /// The source's namespace when it differs from the claim's (`dataSourceRef` only).
    pub namespace: Option<String>,
}

/// The API group of `VolumeSnapshot`.
pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";

impl DataSource {
    /// The claim's data source, if it asks for one (`dataSourceRef` wins over `dataSource`).
    pub fn of_claim(claim: &PersistentVolumeClaim) -> Option<DataSource> {
        let spec = claim.spec.as_ref()?;
        if let Some(r) = &spec.data_source_ref {
            return Some(DataSource {
                api_group: r.api_group.clone().filter(|g| !g.is_empty()),
                kind: r.kind.clone(),
                name: r.name.clone(),
                namespace: r.namespace.clone().filter(|n| !n.is_empty()),
            });
        }
        spec.data_source.as_ref().map(|r| DataSource {
            api_group: r.api_group.clone().filter(|g| !g.is_empty()),
            kind: r.kind.clone(),
            name: r.name.clone(),
            namespace: None,
        })
    }

    /// A clone of another claim.
    pub fn is_clone(&self) -> bool {
        self.api_group.is_none() && self.kind == "PersistentVolumeClaim"
    }

    /// A restore from a `VolumeSnapshot`.
    pub fn is_snapshot(&self) -> bool {
        self.api_group.as_deref() == Some(SNAPSHOT_GROUP) && self.kind == "VolumeSnapshot"
    }

    /// A kind the engine knows (clone or snapshot); any other kind belongs
    /// to a volume populator, which fills the volume itself.
    pub fn is_provisioner_business(&self) -> bool {
        self.is_clone() || self.is_snapshot()
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.api_group {
            Some(g) => write!(f, "{}.{g} {}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl ProvisionRequest {
    /// A request for volume `pv_name` of `claim` from `class`, with no
    /// selected node and no data source.
    ///
    /// ```
    /// # #[cfg(feature = "testing")] {
    /// use std::sync::Arc;
    /// use provisioner_core::testing::fixtures::{claim, class};
    /// use provisioner_core::ProvisionRequest;
    /// let req = ProvisionRequest::new("pvc-1", Arc::new(claim("ns", "data").build()), Arc::new(class("fast", "example.com/x").build()))
    ///     .with_selected_node(Some("node-a".into()));
    /// assert_eq!(req.selected_node.as_deref(), Some("node-a"));
    /// # }
    /// ```
    pub fn new(pv_name: impl Into<String>, claim: Arc<PersistentVolumeClaim>, class: Arc<StorageClass>) -> Self {
        ProvisionRequest { pv_name: pv_name.into(), claim, class, selected_node: None, data_source: None }
    }

    /// The node the scheduler picked.
    pub fn with_selected_node(mut self, node: Option<String>) -> Self {
        self.selected_node = node;
        self
    }

    /// The contents the claim asks for.
    pub fn with_data_source(mut self, source: Option<DataSource>) -> Self {
        self.data_source = source;
        self
    }

    /// The class's `parameters`, empty when it has none.
    ///
    /// ```
    /// # #[cfg(feature = "testing")] {
    /// # use provisioner_core::testing::fixtures::request;
    /// let req = request("pvc-1", "fast", [("type", "ssd")]);
    /// assert_eq!(req.parameters().get("type").map(String::as_str), Some("ssd"));
    /// # }
    /// ```
    pub fn parameters(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.class.parameters.as_ref().unwrap_or(&EMPTY)
    }

    /// The claim's requested storage in bytes, if it asks for a parseable amount.
    pub fn requested_bytes(&self) -> Option<u64> {
        crate::quantity::requested_bytes(&self.claim)
    }

    /// `namespace/name` of the claim, for messages.
    pub fn claim_key(&self) -> String {
        format!("{}/{}", self.claim.namespace().unwrap_or_default(), self.claim.name_any())
    }
}

/// A backend volume that is ready, as the provisioner describes it.
///
/// Set the volume source (and anything else you know better, such as node
/// affinity or capacity); the engine fills in every field left empty: the
/// claim reference, class, reclaim policy, mount options, access modes,
/// volume mode, capacity, and the `pv.kubernetes.io/provisioned-by` annotation.
#[derive(Clone, Debug, Default)]
pub struct ProvisionedVolume {
    /// The PersistentVolume spec, at least a volume source.
    pub spec: PersistentVolumeSpec,
    /// Labels for the PersistentVolume.
    pub labels: BTreeMap<String, String>,
    /// Annotations for the PersistentVolume.
    pub annotations: BTreeMap<String, String>,
}

impl ProvisionedVolume {
    /// A volume with this spec and no labels or annotations.
    pub fn new(spec: PersistentVolumeSpec) -> Self {
        ProvisionedVolume { spec, ..Default::default() }
    }
}

/// Why a provision call did not return a volume. Each variant tells the
/// engine whether backend work may still be running.
///
/// Every variant but `Ignored` carries a [`Cause`]: the error the call failed
/// with, kept whole with its chain of sources, or just a message. Build them
/// with the constructors, which take any error, a `String` or a `&str`:
///
/// ```
/// use provisioner_core::{Cause, ProvisionError};
/// fn create_dir(path: &str) -> Result<(), ProvisionError> {
///     std::fs::create_dir(path).map_err(|e| ProvisionError::failed(Cause::context(format!("creating {path}"), e)))
/// }
/// let err = create_dir("/nonexistent/parent/pvc-1").unwrap_err();
/// assert!(matches!(err, ProvisionError::Final(_)));
/// assert_eq!(err.message(), "creating /nonexistent/parent/pvc-1");
/// // Events and logs show the whole chain:
/// assert!(err.chain().starts_with("creating /nonexistent/parent/pvc-1: "), "{}", err.chain());
/// // and the io::Error is still there for a caller that wants it:
/// assert!(err.cause().and_then(|c| c.find::<std::io::Error>()).is_some());
/// ```
///
/// The source chain goes on from the cause: the `Display` of a
/// `ProvisionError` already shows the cause's message (`failed: creating
/// ...`), so [`source`](std::error::Error::source) returns the cause's own
/// source, and a chain printer (`anyhow`'s `{:#}`, `tracing`'s error fields)
/// shows each message once. `{:#}` on a `ProvisionError` prints the whole
/// chain too.
///
/// New variants may be added: match with a wildcard arm.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionError {
    /// Backend work was started and may still be running (an EFS file system
    /// still `creating`, a timeout after the request was sent, a transient
    /// error after a create call). The engine retries with backoff **even if
    /// the claim is deleted meanwhile**, so that whatever was created is
    /// finished, saved as a volume and then deleted normally.
    ///
    /// A `Provisioning` event is published on the first such answer only;
    /// later ones are logged. To show the user why work does not progress,
    /// answer [`Stalled`](ProvisionError::Stalled).
    InProgress(Cause),
    /// Backend work may exist and cannot go on until something outside
    /// changes (credentials, permissions, the network): a
    /// `ProvisioningFailed` warning with the message on every attempt (they
    /// aggregate), retries with backoff, and, as for `InProgress`, the work
    /// is finished even if the claim is deleted meanwhile. Never counts
    /// toward the give-up limit.
    Stalled(Cause),
    /// Backend work is running and will be done in about this long (an EFS
    /// file system `creating`): the engine looks again after the given
    /// delay, a fixed poll instead of a growing backoff. Otherwise as
    /// `InProgress`.
    RetryAfter(Cause, std::time::Duration),
    /// Nothing was created and nothing runs. The engine reports the message in
    /// a `ProvisioningFailed` event and retries with backoff.
    ///
    /// Answer this only when certain that no backend volume exists for this
    /// `pv_name`, also from an earlier call: for a claim that is going away,
    /// `Final` (like `Reschedule`, `Infeasible` and `Ignored`) makes the
    /// engine drop its intent record, and anything left behind would leak.
    /// When unsure, answer [`InProgress`](ProvisionError::InProgress).
    Final(Cause),
    /// The selected node cannot host this volume (no space, wrong topology);
    /// nothing was created. The engine removes the claim's selected node so the
    /// scheduler picks another. For a claim without a selected node (an
    /// `Immediate` class) there is nothing to reschedule: it is handled as
    /// [`Final`](ProvisionError::Final).
    Reschedule(Cause),
    /// The claim can never succeed as written (a bad class parameter); nothing
    /// was created. A `ProvisioningFailed` event, a slow retry, and an
    /// immediate retry when the class changes. It does not count toward the
    /// give-up limit (the slow retry is already the answer to it).
    Infeasible(Cause),
    /// Not this provisioner's claim (another shard or node): no event, no
    /// retry, and the claim is left untouched. Prefer declining such claims
    /// in [`Provisioner::should_provision`], which saves the call.
    Ignored,
}

impl ProvisionError {
    /// [`InProgress`](ProvisionError::InProgress): backend work may still be
    /// running. The engine retries with backoff, even if the claim is deleted
    /// meanwhile, so the work is finished and then deleted normally; a
    /// `Provisioning` event on the first such answer only.
    pub fn in_progress(cause: impl Into<BoxError>) -> Self {
        ProvisionError::InProgress(Cause::new(cause))
    }

    /// [`Stalled`](ProvisionError::Stalled): backend work may exist and cannot
    /// go on until something outside changes. A `ProvisioningFailed` warning
    /// with the whole chain on every attempt, retries with backoff, and the
    /// work is finished even if the claim is deleted; never counts toward the
    /// give-up limit.
    pub fn stalled(cause: impl Into<BoxError>) -> Self {
        ProvisionError::Stalled(Cause::new(cause))
    }

    /// [`RetryAfter`](ProvisionError::RetryAfter): backend work is running and
    /// will be done in about `after`. The engine looks again after that
    /// delay (a fixed poll, not a growing backoff); otherwise as `InProgress`.
    pub fn retry_after(cause: impl Into<BoxError>, after: std::time::Duration) -> Self {
        ProvisionError::RetryAfter(Cause::new(cause), after)
    }

    /// [`Final`](ProvisionError::Final): nothing was created and nothing runs.
    /// A `ProvisioningFailed` warning with the whole chain, and a retry with
    /// backoff (until the give-up limit, if one is set). Only when certain no
    /// backend volume exists for this `pv_name`: for a claim going away, the
    /// engine then drops its intent record.
    pub fn failed(cause: impl Into<BoxError>) -> Self {
        ProvisionError::Final(Cause::new(cause))
    }

    /// [`Reschedule`](ProvisionError::Reschedule): the selected node cannot
    /// host this volume, and nothing was created. The engine removes the
    /// claim's selected node so the scheduler picks another (without one, as
    /// `Final`).
    pub fn reschedule(cause: impl Into<BoxError>) -> Self {
        ProvisionError::Reschedule(Cause::new(cause))
    }

    /// [`Infeasible`](ProvisionError::Infeasible): the claim can never succeed
    /// as written, and nothing was created. A `ProvisioningFailed` warning, a
    /// slow retry, and an immediate one when the class changes.
    pub fn infeasible(cause: impl Into<BoxError>) -> Self {
        ProvisionError::Infeasible(Cause::new(cause))
    }

    /// Whether backend work may still be running after this error.
    pub fn may_have_created(&self) -> bool {
        matches!(self, ProvisionError::InProgress(_) | ProvisionError::Stalled(_) | ProvisionError::RetryAfter(..))
    }

    /// The cause the provisioner gave (`None` for `Ignored`).
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            ProvisionError::InProgress(c)
            | ProvisionError::Stalled(c)
            | ProvisionError::RetryAfter(c, _)
            | ProvisionError::Final(c)
            | ProvisionError::Reschedule(c)
            | ProvisionError::Infeasible(c) => Some(c),
            ProvisionError::Ignored => None,
        }
    }

    /// The cause's own message, without its sources.
    pub fn message(&self) -> &str {
        self.cause().map_or("ignored by the provisioner", Cause::message)
    }

    /// The cause's message and each source's, `": "`-separated (see
    /// [`Cause::chain`]): the text of the engine's events and logs.
    pub fn chain(&self) -> String {
        self.cause().map_or_else(|| self.message().to_string(), Cause::chain)
    }
}

impl fmt::Display for ProvisionError {
    /// `kind: message`; with `{:#}`, `kind: message: source: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            ProvisionError::InProgress(_) | ProvisionError::RetryAfter(..) => "in progress",
            ProvisionError::Stalled(_) => "stalled",
            ProvisionError::Final(_) => "failed",
            ProvisionError::Reschedule(_) => "needs another node",
            ProvisionError::Infeasible(_) => "infeasible",
            ProvisionError::Ignored => return f.write_str("ignored"),
        };
        write!(f, "{kind}: ")?;
        match self.cause() {
            Some(cause) => fmt::Display::fmt(cause, f),
            None => f.write_str(self.message()),
        }
    }
}

impl std::error::Error for ProvisionError {
    /// The cause's source: the cause's own message is already in this
    /// error's `Display`.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause().and_then(std::error::Error::source)
    }
}

/// Why a delete call did not finish. A backend volume that does not exist is
/// **not** an error: return `Ok(())`.
///
/// Like [`ProvisionError`], the variants carry a [`Cause`] (any error, or a
/// message), built with [`DeleteError::in_use`] and [`DeleteError::failed`].
///
/// New variants may be added: match with a wildcard arm.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeleteError {
    /// Not this provisioner's volume to delete (another node or shard owns
    /// it): the engine leaves it alone.
    Ignored,
    /// The backend volume is still in use (mounted, has mount targets being
    /// removed); the engine retries with backoff, without a warning event.
    InUse(Cause),
    /// The delete failed; a `VolumeFailedDelete` event and a retry with backoff.
    Failed(Cause),
}

impl DeleteError {
    /// [`InUse`](DeleteError::InUse): the backend volume is still in use. The
    /// engine retries with backoff, without a warning event.
    pub fn in_use(cause: impl Into<BoxError>) -> Self {
        DeleteError::InUse(Cause::new(cause))
    }

    /// [`Failed`](DeleteError::Failed): the delete failed. A
    /// `VolumeFailedDelete` warning with the whole chain, and a retry with
    /// backoff.
    ///
    /// ```
    /// use provisioner_core::{Cause, DeleteError};
    /// let err = DeleteError::failed(Cause::context("removing /srv/pvc-1", std::io::Error::other("device busy")));
    /// assert_eq!(err.chain(), "removing /srv/pvc-1: device busy");
    /// ```
    pub fn failed(cause: impl Into<BoxError>) -> Self {
        DeleteError::Failed(Cause::new(cause))
    }

    /// The cause the provisioner gave (`None` for `Ignored`).
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            DeleteError::InUse(c) | DeleteError::Failed(c) => Some(c),
            DeleteError::Ignored => None,
        }
    }

    /// The cause's own message, without its sources.
    pub fn message(&self) -> &str {
        self.cause().map_or("ignored by the provisioner", Cause::message)
    }

    /// The cause's message and each source's, `": "`-separated (see
    /// [`Cause::chain`]): the text of the engine's events and logs.
    pub fn chain(&self) -> String {
        self.cause().map_or_else(|| self.message().to_string(), Cause::chain)
    }
}

impl fmt::Display for DeleteError {
    /// The message (`in use: message` for `InUse`); with `{:#}`, with every
    /// source's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteError::Ignored => f.write_str("ignored"),
            DeleteError::InUse(c) => {
                f.write_str("in use: ")?;
                fmt::Display::fmt(c, f)
            }
            DeleteError::Failed(c) => fmt::Display::fmt(c, f),
        }
    }
}

impl std::error::Error for DeleteError {
    /// The cause's source: the cause's own message is already in this
    /// error's `Display`.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause().and_then(std::error::Error::source)
    }
}

/// A storage backend the engine drives.
///
/// Only [`provision`](Provisioner::provision) and [`delete`](Provisioner::delete)
/// are required; the other methods are hooks with sensible defaults.
///
/// ```
/// use async_trait::async_trait;
/// use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeSpec, NFSVolumeSource};
/// use provisioner_core::{DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
///
/// struct Nfs { server: String }
///
/// #[async_trait]
/// impl Provisioner for Nfs {
///     async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
///         // Create the export `/exports/<pv name>` here (idempotently), then describe it:
///         Ok(ProvisionedVolume::new(PersistentVolumeSpec {
///             nfs: Some(NFSVolumeSource {
///                 server: self.server.clone(),
///                 path: format!("/exports/{}", req.pv_name),
///                 read_only: None,
///             }),
///             ..Default::default()
///         }))
///     }
///     async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
///         // Remove the export; a missing export is success.
///         Ok(())
///     }
/// }
/// let _: std::sync::Arc<dyn Provisioner> = std::sync::Arc::new(Nfs { server: "nfs.local".into() });
/// ```
#[async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// Creates (or finds, for a repeated `pv_name`) the backend volume for a claim.
    async fn provision(&self, request: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError>;

    /// Deletes the backend volume behind `volume`. A backend volume that is
    /// already gone is success.
    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError>;

    /// Whether this instance should handle the claim at all. Where several
    /// instances serve one provisioner name (a DaemonSet with one per node,
    /// shards), answer `false` for claims another instance owns: it is
    /// checked before the intent is recorded and before any later call, so
    /// only the owner ever records or finishes the claim. Default: yes.
    fn should_provision(&self, _claim: &PersistentVolumeClaim, _class: &StorageClass) -> bool {
        true
    }

    /// Whether this instance deletes the backend of `volume` (one of ours,
    /// `Delete` policy) and keeps its finalizer (any policy). Where several
    /// instances serve one provisioner name, answer `false` for another
    /// instance's volumes: the engine then leaves the volume entirely to that
    /// instance, finalizer included, and never writes it. Default: yes.
    fn should_delete(&self, _volume: &PersistentVolume) -> bool {
        true
    }

    /// Whether claims with `volumeMode: Block` can be served from this class. Default: no.
    fn supports_block(&self, _class: &StorageClass) -> bool {
        false
    }

    /// Whether this provisioner can fill a new volume of `class` from
    /// `source` (a clone of a claim, a snapshot restore). Default: no. A claim
    /// asking for a clone or a snapshot this answers `false` for gets one
    /// `ProvisioningFailed` warning and no volume; a claim naming any other
    /// kind is left to that kind's volume populator. When `true`, the request
    /// carries the source in [`ProvisionRequest::data_source`], and the
    /// provisioner must fill the volume from it (or fail).
    fn supports_data_source(&self, _source: &DataSource, _class: &StorageClass) -> bool {
        false
    }

    /// The name of the PersistentVolume for a claim. It must be a pure function
    /// of the claim's uid (and other fields that never change), because it is
    /// the key that makes provisioning idempotent. Default: `pvc-<claim uid>`.
    fn volume_name(&self, claim: &PersistentVolumeClaim) -> String {
        format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or_default())
    }
}
