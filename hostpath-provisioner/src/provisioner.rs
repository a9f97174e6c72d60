//! The [`Provisioner`] implementation: which claims and volumes this node
//! instance acts for, how a base dir is chosen, and the PersistentVolume it
//! describes.
//!
//! # Which instance acts
//! One instance runs per node (a DaemonSet), all with the same provisioner
//! name and without leader election. An instance acts for a claim only when
//! the claim's selected node (`volume.kubernetes.io/selected-node`, set by
//! the scheduler for `WaitForFirstConsumer` classes) is its own node name;
//! for any other node it answers [`ProvisionError::Ignored`]. It deletes
//! only volumes whose node affinity names its own node's
//! `kubernetes.io/hostname` label value. In single-node mode it acts for
//! every claim and volume.
//!
//! # Choosing a base dir
//! If a base dir's ledger already records the volume's directory (a retry),
//! it is used. Otherwise, among the base dirs (or the one pinned by
//! the class's `baseDir`) whose filesystem has the requested bytes free,
//! enough free inodes, and room in what its live volumes were promised (see
//! [`crate::capacity`]), the one with the most free bytes wins; ties go to
//! the first listed. When none has room, or the filesystem runs out of space
//! or inodes while the directory is made, the answer is
//! [`ProvisionError::Reschedule`], so the scheduler picks another node.
//! Unusable base dirs are skipped, logged, and counted by the
//! `hostpath_unusable_base_dirs` gauge. Directories are not quota-limited: a
//! volume can grow past its request.
//!
//! # Nodes that are gone
//! A DaemonSet pod only runs on live nodes, so nobody deletes the
//! directories of a node that was removed: its volumes stay `Released` (the
//! other instances answer [`DeleteError::Ignored`], which makes no event and
//! no retry). Clean up by deleting those PersistentVolumes by hand (remove
//! the finalizer `external-provisioner.volume.kubernetes.io/finalizer` if
//! the PV is stuck `Terminating`); if the node comes back under the same
//! hostname, its instance deletes them normally.
//!
//! # Immediate binding
//! Without a selected node, no instance can know where the pod will run. A
//! claim of an `Immediate` class gets a `ProvisioningFailed` event saying to
//! use `WaitForFirstConsumer` (from every instance; the engine retries
//! slowly), except in single-node mode, where there is only one place.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, LocalVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use provisioner_core::decision::selected_node;
use provisioner_core::{Cause, DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
use tracing::info;

use crate::config::{ClassOptions, OnDelete, SharedSettings, VolumeType, class_options};
use crate::disk::{self, BaseDirHealth, NotMade};
use crate::fs::{self, Ledgers, Removed};
use crate::layout::{ARCHIVE_PREFIX, PathVars, contained};

/// The node label the PV's node affinity uses.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// PV annotation: the node name the directory is on.
pub const NODE_ANNOTATION: &str = "hostpath.provisioner-rs.io/node";
/// PV annotation: what deleting the volume does (`delete` or `archive`),
/// fixed when the volume is made, so a later class change cannot alter it.
pub const ON_DELETE_ANNOTATION: &str = "hostpath.provisioner-rs.io/on-delete";
/// The provisioner name the deploy manifests use.
pub const DEFAULT_PROVISIONER_NAME: &str = "hostpath.provisioner-rs.io/local";

/// The node this instance runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The Node object's name (`--node-name`), as in `selected-node`.
    pub name: String,
    /// Its `kubernetes.io/hostname` label value, which the PV's node affinity uses.
    pub hostname: String,
}

/// A directory per claim on this node.
#[derive(Clone, Debug)]
pub struct HostPathProvisioner {
    node: NodeIdentity,
    settings: SharedSettings,
    single_node: bool,
    ledgers: Arc<Ledgers>,
    health: BaseDirHealth,
}

/// The message for claims of `Immediate` classes.
pub fn immediate_binding_message(class: &str) -> String {
    format!(
        "class {class} uses Immediate binding; the hostpath provisioner needs volumeBindingMode: \
         WaitForFirstConsumer so the scheduler picks the node"
    )
}

impl HostPathProvisioner {
    /// A provisioner for `node`, reading `settings` at each call.
    pub fn new(node: NodeIdentity, settings: SharedSettings) -> Self {
        HostPathProvisioner {
            node,
            settings,
            single_node: false,
            ledgers: Arc::default(),
            health: BaseDirHealth::default(),
        }
    }

    /// Which base dirs were found unusable (and the gauge counting them).
    pub fn health(&self) -> &BaseDirHealth {
        &self.health
    }

    /// Looks at every configured base dir now, updating [`Self::health`].
    pub async fn check_base_dirs(&self) {
        let (ledgers, health, bases) =
            (self.ledgers.clone(), self.health.clone(), self.settings.get().base_dirs.clone());
        // A failed blocking task only loses one look.
        let _ = blocking(move || disk::check_base_dirs(&ledgers, &health, &bases)).await;
    }

    /// Acts for every claim and volume (the only node of a cluster).
    pub fn single_node(mut self, on: bool) -> Self {
        self.single_node = on;
        self
    }

    /// The node this instance serves.
    pub fn node(&self) -> &NodeIdentity {
        &self.node
    }

    fn is_mine(&self, selected: Option<&str>) -> bool {
        self.single_node || selected.is_none_or(|n| n == self.node.name)
    }

    /// Whether `volume` is on this node, judged by its node affinity.
    pub fn owns_volume(&self, volume: &PersistentVolume) -> bool {
        if self.single_node {
            return true;
        }
        affinity_hostnames(volume).iter().any(|h| *h == self.node.hostname)
    }

    fn options(&self, request: &ProvisionRequest) -> Result<ClassOptions, ProvisionError> {
        class_options(&self.settings.get(), request.parameters()).map_err(ProvisionError::infeasible)
    }
}

/// The hostname values of a volume's required node affinity.
pub fn affinity_hostnames(volume: &PersistentVolume) -> Vec<&str> {
    let terms = volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .filter(|e| e.key == HOSTNAME_LABEL && e.operator == "In")
        .flat_map(|e| e.values.iter().flatten().map(String::as_str))
        .collect()
}

/// The directory path in a volume's source.
pub fn volume_path(volume: &PersistentVolume) -> Option<&str> {
    let spec = volume.spec.as_ref()?;
    spec.local.as_ref().map(|l| l.path.as_str()).or(spec.host_path.as_ref().map(|h| h.path.as_str()))
}

/// The PV spec for a directory at `path` on the node with `hostname`.
pub fn volume_spec(path: &str, hostname: &str, volume_type: VolumeType) -> PersistentVolumeSpec {
    let (local, host_path) = match volume_type {
        VolumeType::Local => (Some(LocalVolumeSource { path: path.into(), fs_type: None }), None),
        VolumeType::HostPath => {
            (None, Some(HostPathVolumeSource { path: path.into(), type_: Some("Directory".into()) }))
        }
    };
    PersistentVolumeSpec {
        local,
        host_path,
        node_affinity: Some(VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: HOSTNAME_LABEL.into(),
                        operator: "In".into(),
                        values: Some(vec![hostname.into()]),
                    }]),
                    match_fields: None,
                }],
            }),
        }),
        ..Default::default()
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Cause> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Cause::context("filesystem task failed", e))
}

#[async_trait]
impl Provisioner for HostPathProvisioner {
    async fn provision(&self, request: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        let selected = request.selected_node.as_deref();
        if !self.is_mine(selected) {
            return Err(ProvisionError::Ignored);
        }
        let wffc = request.class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
        if selected.is_none() && !self.single_node {
            if wffc {
                return Err(ProvisionError::Ignored);
            }
            return Err(ProvisionError::infeasible(immediate_binding_message(&request.class.name_any())));
        }
        let options = self.options(request)?;
        let namespace = request.claim.namespace().unwrap_or_default();
        let name = request.claim.name_any();
        let vars = PathVars { namespace: &namespace, name: &name, pv: &request.pv_name };
        let rel = options.path_pattern.expand(&vars).map_err(|e| {
            ProvisionError::infeasible(Cause::context(
                format!("path pattern {} for claim {}", options.path_pattern, request.claim_key()),
                e,
            ))
        })?;
        let needed = request.requested_bytes().unwrap_or(0);
        let (opts, wanted, pv, ledgers) = (options.clone(), rel, request.pv_name.clone(), self.ledgers.clone());
        let health = self.health.clone();
        let made = blocking(move || disk::make(&ledgers, &health, &opts, &pv, &wanted, needed))
            .await
            .map_err(ProvisionError::in_progress)?;
        let claim = request.claim_key();
        let (base, rel, created) = match made {
            Ok(done) => done,
            Err(NotMade::NoRoom(m)) if selected.is_some() => {
                return Err(ProvisionError::reschedule(Cause::context(format!("node {}", self.node.name), m)));
            }
            Err(NotMade::NoRoom(m) | NotMade::Failed(m)) => return Err(ProvisionError::Final(m)),
            Err(NotMade::Infeasible(m)) => {
                return Err(ProvisionError::infeasible(Cause::context(
                    format!("claim {claim}, pattern {}", options.path_pattern),
                    m,
                )));
            }
            Err(NotMade::Unsure(m)) => return Err(ProvisionError::InProgress(m)),
        };
        let path = rel.under(&base);
        let path_text = path.to_str().ok_or_else(|| ProvisionError::infeasible("path is not UTF-8"))?;
        info!(claim = request.claim_key(), path = path_text, ?created, "volume directory ready");
        let mut volume = ProvisionedVolume::new(volume_spec(path_text, &self.node.hostname, options.volume_type));
        volume.annotations = BTreeMap::from([
            (NODE_ANNOTATION.to_string(), self.node.name.clone()),
            (ON_DELETE_ANNOTATION.to_string(), options.on_delete.as_str().to_string()),
        ]);
        Ok(volume)
    }

    async fn delete(&self, volume: &PersistentVolume) -> Result<(), DeleteError> {
        if !self.owns_volume(volume) {
            return Err(DeleteError::Ignored);
        }
        let pv = volume.name_any();
        let Some(path) = volume_path(volume) else {
            return Err(DeleteError::failed(format!("volume {pv} has neither a local nor a hostPath source")));
        };
        let settings = self.settings.get();
        let (base, rel) = contained(&settings.base_dirs, path).map_err(|e| {
            DeleteError::failed(Cause::context(
                format!(
                    "refusing to delete {path} (delete the directory by hand and remove the finalizer of volume {pv})"
                ),
                e,
            ))
        })?;
        let on_delete = match volume.annotations().get(ON_DELETE_ANNOTATION) {
            Some(text) => OnDelete::parse(text).map_err(DeleteError::failed)?,
            None => OnDelete::Delete,
        };
        let base = base.to_path_buf();
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let archive = format!("{ARCHIVE_PREFIX}{pv}-{}", fs::timestamp(stamp));
        let (b, r, p, ledgers) = (base.clone(), rel.clone(), pv.clone(), self.ledgers.clone());
        let done = blocking(move || disk::remove(&ledgers, &b, &r, &p, on_delete, &archive))
            .await
            .map_err(DeleteError::failed)?
            .map_err(|e| DeleteError::failed(Cause::context(format!("{} {path}", on_delete.as_str()), e)))?;
        if done == Removed::Done {
            info!(volume = pv, path, action = on_delete.as_str(), "volume directory removed");
        }
        Ok(())
    }

    fn should_provision(&self, claim: &PersistentVolumeClaim, _class: &StorageClass) -> bool {
        self.is_mine(selected_node(claim))
    }

    fn should_delete(&self, volume: &PersistentVolume) -> bool {
        self.owns_volume(volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use provisioner_core::testing::fixtures;
    use std::sync::Arc;

    fn node() -> NodeIdentity {
        NodeIdentity { name: "node-a".into(), hostname: "host-a".into() }
    }

    fn provisioner(base: &std::path::Path) -> HostPathProvisioner {
        let s =
            Settings::from_values(&[base.display().to_string()], None, "0770", None, None, "local", "delete").unwrap();
        HostPathProvisioner::new(node(), SharedSettings::new(s))
    }

    fn request(node: Option<&str>, params: &[(&str, &str)], size: &str) -> ProvisionRequest {
        claim_request("pvc-1", "ns", "data", params, size, node)
    }

    fn claim_request(
        pv: &str,
        namespace: &str,
        name: &str,
        params: &[(&str, &str)],
        size: &str,
        node: Option<&str>,
    ) -> ProvisionRequest {
        let mut class = fixtures::class("local", DEFAULT_PROVISIONER_NAME).wait_for_first_consumer();
        for (k, v) in params {
            class = class.parameter(k, v);
        }
        ProvisionRequest::new(
            pv,
            Arc::new(fixtures::claim(namespace, name).as_stored(pv).request(size).build()),
            Arc::new(class.build()),
        )
        .with_selected_node(node.map(str::to_string))
    }

    /// Provisions `pv` for claim `namespace/name` with `pattern` on node-a; the PV as the engine would save it.
    async fn provision_pv(
        p: &HostPathProvisioner,
        pv: &str,
        namespace: &str,
        name: &str,
        pattern: &str,
    ) -> Result<PersistentVolume, ProvisionError> {
        let req = claim_request(pv, namespace, name, &[("pathPattern", pattern)], "1Mi", Some("node-a"));
        let v = p.provision(&req).await?;
        Ok(saved_pv(pv, v.spec, v.annotations))
    }

    fn saved_pv(pv: &str, spec: PersistentVolumeSpec, annotations: BTreeMap<String, String>) -> PersistentVolume {
        PersistentVolume {
            metadata: kube::api::ObjectMeta {
                name: Some(pv.into()),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(spec),
            ..Default::default()
        }
    }

    /// A PV someone else made, naming `path` on this node.
    fn forged_pv(pv: &str, path: &std::path::Path) -> PersistentVolume {
        saved_pv(pv, volume_spec(path.to_str().unwrap(), "host-a", VolumeType::Local), BTreeMap::new())
    }

    fn path_of(pv: &PersistentVolume) -> std::path::PathBuf {
        volume_path(pv).unwrap().into()
    }

    #[tokio::test]
    async fn claims_for_other_nodes_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let p = provisioner(tmp.path());
        assert_eq!(p.provision(&request(Some("node-b"), &[], "1Mi")).await.unwrap_err(), ProvisionError::Ignored);
        assert!(p.single_node(true).provision(&request(Some("node-b"), &[], "1Mi")).await.is_ok());
    }

    #[tokio::test]
    async fn provisions_a_local_volume_pinned_to_the_hostname_label() {
        let tmp = tempfile::tempdir().unwrap();
        let p = provisioner(tmp.path());
        let v = p.provision(&request(Some("node-a"), &[], "1Mi")).await.unwrap();
        let path = tmp.path().join("pvc-1");
        assert!(path.is_dir());
        let pv = PersistentVolume { spec: Some(v.spec.clone()), ..Default::default() };
        assert_eq!(volume_path(&pv), path.to_str());
        assert_eq!(affinity_hostnames(&pv), vec!["host-a"]);
        assert!(p.owns_volume(&pv));
        let again = p.provision(&request(Some("node-a"), &[], "1Mi")).await.unwrap();
        assert_eq!(again.spec, v.spec, "a repeated call gives the same volume");
    }

    #[tokio::test]
    async fn immediate_classes_get_a_clear_answer() {
        let tmp = tempfile::tempdir().unwrap();
        let mut req = request(None, &[], "1Mi");
        let mut class = (*req.class).clone();
        class.volume_binding_mode = Some("Immediate".into());
        req.class = Arc::new(class);
        let err = provisioner(tmp.path()).provision(&req).await.unwrap_err();
        assert_eq!(err, ProvisionError::infeasible(immediate_binding_message("local")));
        assert!(provisioner(tmp.path()).single_node(true).provision(&req).await.is_ok());
    }

    #[tokio::test]
    async fn too_large_a_claim_asks_for_another_node() {
        let tmp = tempfile::tempdir().unwrap();
        let err = provisioner(tmp.path()).provision(&request(Some("node-a"), &[], "1Ei")).await.unwrap_err();
        assert!(matches!(err, ProvisionError::Reschedule(_)), "{err:?}");
        let made: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(made, [crate::layout::LEDGER_DIR], "nothing but the ledger was created");
    }

    #[tokio::test]
    async fn a_bad_parameter_is_infeasible_and_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let err = provisioner(tmp.path()).provision(&request(Some("node-a"), &[("mode", "0777")], "1Mi")).await;
        assert!(matches!(err, Err(ProvisionError::Infeasible(m)) if m.chain().contains("world-writable")));
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn volumes_of_other_nodes_are_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let p = provisioner(tmp.path());
        let v = p.provision(&request(Some("node-a"), &[], "1Mi")).await.unwrap();
        let mut pv = saved_pv("pvc-1", v.spec, v.annotations);
        let path = path_of(&pv).display().to_string();
        pv.spec = Some(volume_spec(&path, "host-b", VolumeType::Local));
        assert!(!p.should_delete(&pv));
        assert_eq!(p.delete(&pv).await, Err(DeleteError::Ignored));
        assert!(tmp.path().join("pvc-1").exists());
        pv.spec = Some(volume_spec(&path, "host-a", VolumeType::Local));
        p.delete(&pv).await.unwrap();
        assert!(!tmp.path().join("pvc-1").exists());
        p.delete(&pv).await.expect("already gone is success");
    }

    #[tokio::test]
    async fn delete_refuses_paths_outside_the_base_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        let p = provisioner(tmp.path());
        for path in [victim.path().display().to_string(), format!("{}/../{}", tmp.path().display(), "x")] {
            let pv = PersistentVolume {
                spec: Some(volume_spec(&path, "host-a", VolumeType::HostPath)),
                ..Default::default()
            };
            assert!(
                matches!(p.delete(&pv).await, Err(DeleteError::Failed(m)) if m.chain().contains("refusing")),
                "{path}"
            );
        }
        assert!(victim.path().exists());
    }

    #[tokio::test]
    async fn a_pattern_gluing_namespace_and_name_is_infeasible() {
        let tmp = tempfile::tempdir().unwrap();
        let p = provisioner(tmp.path());
        let err = provision_pv(&p, "pvc-1", "team-a", "db", "{namespace}-{name}").await.unwrap_err();
        let ProvisionError::Infeasible(m) = err else { panic!("expected Infeasible, got {err:?}") };
        assert!(m.chain().contains("team-a/db and team/a-db"), "the reason is given: {m:#}");
        assert!(!tmp.path().join("team-a-db").exists());
    }

    #[tokio::test]
    async fn two_classes_on_one_base_dir_never_share_or_nest_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let p = provisioner(tmp.path());
        let first = provision_pv(&p, "pvc-1", "x", "y", "{namespace}/{name}").await.unwrap();
        std::fs::write(path_of(&first).join("data"), b"first").unwrap();
        // Another class's pattern gives the same path: that claim gets its own directory.
        let second = provision_pv(&p, "pvc-2", "y", "x", "{name}/{namespace}").await.unwrap();
        assert_ne!(path_of(&second), path_of(&first));
        assert!(!path_of(&second).join("data").exists(), "it cannot read the first volume");
        // A third class's pattern would put a volume inside the first: refused.
        let err = provision_pv(&p, "pvc-3", "x", "y", "{namespace}/{name}/{pv}").await.unwrap_err();
        assert!(matches!(&err, ProvisionError::Infeasible(m) if m.chain().contains("lie inside")), "{err:?}");
        assert!(!path_of(&first).join("pvc-3").exists());
        // Nor around it.
        let err = provision_pv(&p, "pvc-4", "x", "pvc-4", "{namespace}/{pv}").await;
        assert!(err.is_ok(), "x/pvc-4 is beside x/y, not around it: {err:?}");
        let err = provision_pv(&p, "x", "ns", "n", "{pv}").await.unwrap_err();
        assert!(matches!(&err, ProvisionError::Infeasible(m) if m.chain().contains("contain")), "{err:?}");
        p.delete(&second).await.unwrap();
        assert_eq!(std::fs::read(path_of(&first).join("data")).unwrap(), b"first");
    }

    #[tokio::test]
    async fn a_claim_recreated_with_the_same_name_gets_its_own_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let p = provisioner(tmp.path());
        let old = provision_pv(&p, "pvc-old", "ns", "data-db-0", "{namespace}/{name}").await.unwrap();
        std::fs::write(path_of(&old).join("data"), b"old").unwrap();
        // The claim is deleted and made again before the old volume's delete ran.
        let new = provision_pv(&p, "pvc-new", "ns", "data-db-0", "{namespace}/{name}").await.unwrap();
        assert_ne!(path_of(&new), path_of(&old));
        assert!(!path_of(&new).join("data").exists(), "the new claim does not get the old data");
        std::fs::write(path_of(&new).join("data"), b"new").unwrap();
        p.delete(&old).await.unwrap();
        assert!(!path_of(&old).exists());
        assert_eq!(std::fs::read(path_of(&new).join("data")).unwrap(), b"new", "the old delete spared the new data");
        let again = provision_pv(&p, "pvc-new", "ns", "data-db-0", "{namespace}/{name}").await.unwrap();
        assert_eq!(path_of(&again), path_of(&new), "a retry of the new volume finds its own directory");
    }

    #[tokio::test]
    async fn delete_removes_only_what_the_ledger_says_the_volume_owns() {
        let tmp = tempfile::tempdir().unwrap();
        let p = provisioner(tmp.path());
        let mut made = Vec::new();
        for (pv, name) in [("pvc-1", "a"), ("pvc-2", "b"), ("pvc-3", "c")] {
            let v = provision_pv(&p, pv, "ns", name, "{namespace}/{name}").await.unwrap();
            std::fs::write(path_of(&v).join("data"), pv).unwrap();
            made.push(v);
        }
        // A PV naming the pattern directory above all three.
        let err = p.delete(&forged_pv("pvc-evil", &tmp.path().join("ns"))).await.unwrap_err();
        assert!(
            matches!(&err, DeleteError::Failed(m) if m.chain().contains("not created by this provisioner")),
            "{err:?}"
        );
        // A PV naming another volume's directory.
        let err = p.delete(&forged_pv("pvc-2", &path_of(&made[0]))).await.unwrap_err();
        assert!(matches!(&err, DeleteError::Failed(m) if m.chain().contains("ledger records")), "{err:?}");
        // A PV naming the ledger.
        let ledger = tmp.path().join(crate::layout::LEDGER_DIR);
        assert!(p.delete(&forged_pv("pvc-1", &ledger)).await.is_err());
        for v in &made {
            assert!(path_of(v).join("data").exists(), "{} is intact", path_of(v).display());
        }
        assert!(ledger.join("pvc-1").exists());
        // A directory the provisioner did not create, put where a volume was.
        std::fs::remove_dir_all(path_of(&made[2])).unwrap();
        std::fs::create_dir(path_of(&made[2])).unwrap();
        std::fs::write(path_of(&made[2]).join("other"), b"x").unwrap();
        let err = p.delete(&made[2]).await.unwrap_err();
        assert!(matches!(&err, DeleteError::Failed(m) if m.chain().contains("replaced")), "{err:?}");
        assert!(path_of(&made[2]).join("other").exists());
        p.delete(&made[0]).await.unwrap();
        assert!(!path_of(&made[0]).exists());
        assert!(path_of(&made[1]).join("data").exists());
    }

    #[tokio::test]
    async fn a_directory_the_provisioner_did_not_create_is_never_handed_out() {
        let tmp = tempfile::tempdir().unwrap();
        let p = provisioner(tmp.path());
        let unrelated = tmp.path().join("pvc-1");
        std::fs::create_dir(&unrelated).unwrap();
        std::fs::set_permissions(&unrelated, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let v = provision_pv(&p, "pvc-1", "ns", "data", "{pv}").await.unwrap();
        assert_ne!(path_of(&v), unrelated);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&unrelated).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755, "the unrelated directory is untouched");
        p.delete(&forged_pv("pvc-9", &unrelated)).await.unwrap_err();
        assert!(unrelated.exists(), "and never deleted");
    }

    #[tokio::test]
    async fn a_crash_between_the_ledger_entry_and_the_directory_is_recovered_on_retry() {
        // Each retry is a restarted process: a new provisioner reading the ledger afresh.
        let tmp = tempfile::tempdir().unwrap();
        let rel = crate::layout::RelPath::parse("pvc-1").unwrap();
        // Crashed after recording the intent, before mkdir.
        let mut ledger = fs::Ledger::open(tmp.path()).unwrap();
        ledger.record("pvc-1", fs::Entry { path: rel.clone(), identity: None, requested: None }).unwrap();
        let v = provision_pv(&provisioner(tmp.path()), "pvc-1", "ns", "data", "{pv}").await.unwrap();
        assert_eq!(path_of(&v), tmp.path().join("pvc-1"));
        // Crashed after mkdir, before recording the identity.
        let rel2 = crate::layout::RelPath::parse("pvc-2").unwrap();
        ledger.record("pvc-2", fs::Entry { path: rel2, identity: None, requested: None }).unwrap();
        std::fs::create_dir(tmp.path().join("pvc-2")).unwrap();
        let p = provisioner(tmp.path());
        let v2 = provision_pv(&p, "pvc-2", "ns", "data", "{pv}").await.unwrap();
        assert_eq!(path_of(&v2), tmp.path().join("pvc-2"));
        p.delete(&v2).await.unwrap();
        assert!(!tmp.path().join("pvc-2").exists(), "its identity was recorded on the retry");
        // A crash before any volume was handed out: its delete only forgets the entry.
        let rel3 = crate::layout::RelPath::parse("pvc-3").unwrap();
        ledger.record("pvc-3", fs::Entry { path: rel3, identity: None, requested: None }).unwrap();
        let p = provisioner(tmp.path());
        p.delete(&forged_pv("pvc-3", &tmp.path().join("pvc-3"))).await.unwrap();
        assert!(!tmp.path().join(crate::layout::LEDGER_DIR).join("pvc-3").exists());
    }

    #[tokio::test]
    async fn an_unusable_base_dir_is_skipped_and_the_others_serve() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        let good = tmp.path().join("good");
        std::fs::create_dir(&good).unwrap();
        let dirs = [missing.display().to_string(), good.display().to_string()];
        let s = Settings::from_values(&dirs, None, "0770", None, None, "local", "delete").unwrap();
        let p = HostPathProvisioner::new(node(), SharedSettings::new(s));
        let v = provision_pv(&p, "pvc-1", "ns", "data", "{pv}").await.unwrap();
        assert_eq!(path_of(&v), good.join("pvc-1"));
        assert_eq!(p.health().gauge().get(), 1, "the skipped base dir is counted");
        assert!(p.health().unusable().contains_key(&missing));
        std::fs::create_dir(&missing).unwrap();
        p.check_base_dirs().await;
        assert_eq!(p.health().gauge().get(), 0, "and no longer once it serves");
    }

    #[tokio::test]
    async fn a_ledger_entry_without_requested_bytes_still_reads_and_counts_as_nothing_promised() {
        let tmp = tempfile::tempdir().unwrap();
        let p = provisioner(tmp.path());
        let old = provision_pv(&p, "pvc-old", "ns", "old", "{pv}").await.unwrap();
        // An entry as written before requests were recorded.
        let entry = tmp.path().join(crate::layout::LEDGER_DIR).join("pvc-old");
        let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        assert_eq!(record["requestedBytes"], 1024 * 1024);
        record.as_object_mut().unwrap().remove("requestedBytes");
        std::fs::write(&entry, record.to_string()).unwrap();
        let p = provisioner(tmp.path());
        provision_pv(&p, "pvc-new", "ns", "new", "{pv}").await.unwrap();
        let ledger = fs::Ledger::open(tmp.path()).unwrap();
        assert_eq!(ledger.promised(), (2, 1024 * 1024));
        p.delete(&old).await.unwrap();
        assert!(!path_of(&old).exists());
    }
}
