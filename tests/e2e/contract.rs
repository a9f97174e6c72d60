//! The testing kit's contract with the real thing: every case here sends the
//! same requests to the real control plane (started by
//! `tests/controlplane/up`) and to a `FakeCluster` with its binder, and both
//! must answer its last request alike: accepted by both, or refused by both
//! with the same status code and reason and messages that agree. Each case
//! also states what the real kube-apiserver answers, so a change of the real
//! server's behaviour shows up here first.
//!
//! The cases are the writes a provisioner, the engine or a test of them can
//! make that a real server refuses (and their accepted neighbours): creates
//! carrying a resourceVersion, finalizers added to objects being deleted,
//! invalid names and specs, immutable fields, stale resourceVersions and
//! uids; and objects built by `provisioner_core::testing::fixtures`, which a
//! real server must accept (and, built "as stored", refuse on create).
//!
//! Claims and volumes here use a class of their own (which does not exist),
//! so the real PV binder neither binds nor writes to them, except where a
//! case binds a claim on purpose.

use std::collections::BTreeMap;
use std::future::Future;

use e2e_support::TestEnv;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, LocalVolumeSource, NFSVolumeSource, Namespace, Node, PersistentVolume,
    PersistentVolumeClaim,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use provisioner_core::testing::FakeCluster;
use provisioner_core::testing::fixtures;
use serde_json::{Value, json};

const PROVISIONER: &str = "example.com/contract";
const OTHER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Where a case runs: a client of one plane and the names to use on it
/// (the same on both planes, so that messages can be compared).
#[derive(Clone)]
struct Plane {
    client: Client,
    namespace: String,
    id: String,
    labels: BTreeMap<String, String>,
}

impl Plane {
    /// A name for a cluster-scoped object of this case.
    fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.id)
    }

    /// The class of this case's claims and volumes (it does not exist).
    fn class_name(&self) -> String {
        self.name("contract")
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

    /// `obj` with this case's labels, which the real plane's clean-up finds.
    fn labelled<K: Resource>(&self, mut obj: K) -> K {
        obj.meta_mut().labels.get_or_insert_with(BTreeMap::new).extend(self.labels.clone());
        obj
    }

    /// A claim `name` from the fixtures, in this case's class.
    fn claim(&self, name: &str) -> PersistentVolumeClaim {
        self.labelled(fixtures::claim(&self.namespace, name).class(&self.class_name()).build())
    }

    /// A volume `base-<id>` from the fixtures, claimed by nothing, in this case's class.
    fn volume(&self, base: &str) -> PersistentVolume {
        let owner = fixtures::claim(&self.namespace, "data").build();
        let pv = fixtures::volume(&self.name(base), PROVISIONER, &owner).unclaimed().class(&self.class_name());
        self.labelled(pv.build())
    }

    /// A class `base-<id>` from the fixtures.
    fn class(&self, base: &str) -> fixtures::ClassBuilder {
        fixtures::class(&self.name(base), PROVISIONER)
    }
}

/// How a plane answered a request.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Accepted,
    Refused { code: u16, reason: String },
}

/// A plane's answer to a case's last request, with the message of a refusal.
#[derive(Debug)]
struct Reply {
    answer: Answer,
    message: String,
}

fn reply<T>(result: kube::Result<T>) -> Reply {
    match result {
        Ok(_) => Reply { answer: Answer::Accepted, message: String::new() },
        Err(kube::Error::Api(s)) => {
            Reply { answer: Answer::Refused { code: s.code, reason: s.reason }, message: s.message }
        }
        Err(other) => panic!("expected an answer of the API server, got {other}"),
    }
}

/// Sends one of a case's requests: a refusal ends the case with it.
macro_rules! step {
    ($request:expr) => {
        match $request.await {
            Ok(value) => value,
            Err(e) => return reply::<()>(Err(e)),
        }
    };
}

/// What both planes must answer.
struct Expect {
    answer: Answer,
    /// Text both messages contain.
    phrase: &'static str,
    /// Whether the first lines of both messages are the same (not where
    /// they name uids, which each plane gives its own).
    same_text: bool,
}

fn accepted() -> Expect {
    Expect { answer: Answer::Accepted, phrase: "", same_text: true }
}

fn refused(code: u16, reason: &str, phrase: &'static str) -> Expect {
    Expect { answer: Answer::Refused { code, reason: reason.to_string() }, phrase, same_text: true }
}

impl Expect {
    fn naming_uids(mut self) -> Self {
        self.same_text = false;
        self
    }
}

/// Runs `case` on the real plane and on the kit, and checks both against `expect`.
async fn contract<F, Fut>(test: &str, expect: Expect, case: F)
where
    F: Fn(Plane) -> Fut,
    Fut: Future<Output = Reply>,
{
    let env = TestEnv::new(test).await;
    let real_plane = Plane {
        client: env.client.clone(),
        namespace: env.namespace.clone(),
        id: env.id.clone(),
        labels: env.labels(),
    };
    let cluster = FakeCluster::with_binder();
    let kit_plane = Plane { client: cluster.client(), ..real_plane.clone() };
    let real = case(real_plane).await;
    let kit = case(kit_plane).await;
    env.cleanup().await;

    assert_eq!(real.answer, expect.answer, "the real API server's answer changed: {}", real.message);
    assert_eq!(
        kit.answer, real.answer,
        "the kit answers otherwise than the real API server: kit {kit:?}, real {real:?}"
    );
    for (plane, r) in [("real", &real), ("kit", &kit)] {
        assert!(r.message.contains(expect.phrase), "the {plane} message {:?} lacks {:?}", r.message, expect.phrase);
    }
    if expect.same_text {
        let first = |m: &str| m.lines().next().unwrap_or_default().to_string();
        assert_eq!(first(&kit.message), first(&real.message), "the kit words its refusal otherwise");
    }
}

fn merge(patch: Value) -> Patch<Value> {
    Patch::Merge(patch)
}

fn json_patch(ops: Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(ops).expect("a JSON patch"))
}

// --- creates ------------------------------------------------------------------

#[tokio::test]
async fn a_create_carrying_a_resource_version_is_refused() {
    let expect = refused(500, "", "resourceVersion should not be set on objects to be created");
    contract("create-with-rv", expect, |p| async move {
        let mut c = p.claim("data");
        c.metadata.resource_version = Some("1".into());
        reply(p.claims().create(&PostParams::default(), &c).await)
    })
    .await;
}

#[tokio::test]
async fn a_volume_create_carrying_a_resource_version_is_refused() {
    let expect = refused(500, "", "resourceVersion should not be set on objects to be created");
    contract("volume-create-with-rv", expect, |p| async move {
        let mut pv = p.volume("pv");
        pv.metadata.resource_version = Some("12".into());
        reply(p.volumes().create(&PostParams::default(), &pv).await)
    })
    .await;
}

#[tokio::test]
async fn a_claim_built_as_stored_is_refused_on_create() {
    let expect = refused(500, "", "resourceVersion should not be set on objects to be created");
    contract("create-as-stored", expect, |p| async move {
        let c = fixtures::claim(&p.namespace, "data").class(&p.class_name()).as_stored(OTHER_UID).build();
        reply(p.claims().create(&PostParams::default(), &p.labelled(c)).await)
    })
    .await;
}

#[tokio::test]
async fn a_create_carrying_resource_version_zero_is_accepted() {
    contract("create-with-rv-zero", accepted(), |p| async move {
        let mut c = p.claim("data");
        c.metadata.resource_version = Some("0".into());
        reply(p.claims().create(&PostParams::default(), &c).await)
    })
    .await;
}

#[tokio::test]
async fn objects_built_by_the_fixtures_are_accepted() {
    contract("fixtures-accepted", accepted(), |p| async move {
        let pp = PostParams::default();
        let class = p.labelled(p.class("fast").reclaim_policy("Retain").parameter("type", "gp3").build());
        step!(p.classes().create(&pp, &class));
        let c = fixtures::claim(&p.namespace, "data")
            .class(&p.class_name())
            .request("5Gi")
            .access_modes(&["ReadWriteMany"])
            .provisioner(PROVISIONER)
            .selected_node("node-a")
            .build();
        let created = step!(p.claims().create(&pp, &p.labelled(c)));
        let clone = fixtures::claim(&p.namespace, "clone").class(&p.class_name()).clone_of("data").build();
        step!(p.claims().create(&pp, &p.labelled(clone)));
        let restore = fixtures::claim(&p.namespace, "restore").class(&p.class_name()).from_snapshot("snap").build();
        step!(p.claims().create(&pp, &p.labelled(restore)));
        let block = fixtures::claim(&p.namespace, "raw").class(&p.class_name()).block().deleting().build();
        step!(p.claims().create(&pp, &p.labelled(block)));
        let picky = fixtures::claim("", "picky").class(&p.class_name()).selector("tier", "gold").build();
        step!(p.claims().create(&pp, &p.labelled(picky)));
        // Pre-bound to a claim of another class, so that neither binder binds it.
        let pv =
            fixtures::volume(&p.name("pv"), PROVISIONER, &created).reclaim_policy("Retain").class(&p.name("elsewhere"));
        step!(p.volumes().create(&pp, &p.labelled(pv.build())));
        let admins = fixtures::static_volume(&p.name("admins")).for_claim(&created).class(&p.name("elsewhere"));
        step!(p.volumes().create(&pp, &p.labelled(admins.host_path("/srv/admins").build())));
        let node = fixtures::node(&p.name("node")).hostname(&p.name("host")).build();
        step!(Api::<Node>::all(p.client.clone()).create(&pp, &p.labelled(node)));
        reply(p.volumes().create(&pp, &p.volume("pv-static")).await)
    })
    .await;
}

#[tokio::test]
async fn creating_a_claim_that_exists_is_already_exists() {
    contract("create-existing", refused(409, "AlreadyExists", "already exists"), |p| async move {
        step!(p.claims().create(&PostParams::default(), &p.claim("data")));
        reply(p.claims().create(&PostParams::default(), &p.claim("data")).await)
    })
    .await;
}

// --- names --------------------------------------------------------------------

#[tokio::test]
async fn a_claim_with_an_invalid_name_is_invalid() {
    contract("claim-invalid-name", refused(422, "Invalid", "a lowercase RFC 1123 subdomain"), |p| async move {
        reply(p.claims().create(&PostParams::default(), &p.claim("Not_A_Name")).await)
    })
    .await;
}

#[tokio::test]
async fn a_volume_with_an_invalid_name_is_invalid() {
    contract("volume-invalid-name", refused(422, "Invalid", "metadata.name: Invalid value"), |p| async move {
        let mut pv = p.volume("pv");
        pv.metadata.name = Some(format!("pv..{}", p.id));
        reply(p.volumes().create(&PostParams::default(), &pv).await)
    })
    .await;
}

#[tokio::test]
async fn a_claim_without_a_name_is_invalid() {
    contract("claim-no-name", refused(422, "Invalid", "name or generateName is required"), |p| async move {
        let mut c = p.claim("data");
        c.metadata.name = None;
        reply(p.claims().create(&PostParams::default(), &c).await)
    })
    .await;
}

#[tokio::test]
async fn a_namespace_name_with_a_dot_is_invalid() {
    contract("namespace-with-dot", refused(422, "Invalid", "must not contain dots"), |p| async move {
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(format!("a.{}", p.id)), ..Default::default() },
            ..Default::default()
        };
        reply(Api::<Namespace>::all(p.client.clone()).create(&PostParams::default(), &ns).await)
    })
    .await;
}

// --- claims' and volumes' specs -------------------------------------------------

#[tokio::test]
async fn a_claim_without_access_modes_or_a_request_is_invalid() {
    let expect = refused(422, "Invalid", "spec.accessModes: Required value: at least 1 access mode is required");
    contract("claim-empty-spec", expect, |p| async move {
        let mut c = p.claim("data");
        c.spec = Some(Default::default());
        reply(p.claims().create(&PostParams::default(), &c).await)
    })
    .await;
}

#[tokio::test]
async fn a_claim_with_a_zero_request_is_invalid() {
    let expect = refused(422, "Invalid", "spec.resources[storage]: Invalid value: \"0\": must be greater than zero");
    contract("claim-zero-request", expect, |p| async move {
        let c = fixtures::claim(&p.namespace, "data").class(&p.class_name()).request("0").build();
        reply(p.claims().create(&PostParams::default(), &c).await)
    })
    .await;
}

#[tokio::test]
async fn a_volume_without_capacity_is_invalid() {
    contract("volume-no-capacity", refused(422, "Invalid", "spec.capacity: Required value"), |p| async move {
        let mut pv = p.volume("pv");
        pv.spec.as_mut().expect("spec").capacity = None;
        reply(p.volumes().create(&PostParams::default(), &pv).await)
    })
    .await;
}

#[tokio::test]
async fn a_volume_without_access_modes_is_invalid() {
    contract("volume-no-access-modes", refused(422, "Invalid", "spec.accessModes: Required value"), |p| async move {
        let mut pv = p.volume("pv");
        pv.spec.as_mut().expect("spec").access_modes = None;
        reply(p.volumes().create(&PostParams::default(), &pv).await)
    })
    .await;
}

#[tokio::test]
async fn a_volume_without_a_volume_source_is_invalid() {
    let expect = refused(422, "Invalid", "spec: Required value: must specify a volume type");
    contract("volume-no-source", expect, |p| async move {
        let mut pv = p.volume("pv");
        pv.spec.as_mut().expect("spec").host_path = None;
        reply(p.volumes().create(&PostParams::default(), &pv).await)
    })
    .await;
}

#[tokio::test]
async fn a_volume_with_two_volume_sources_is_invalid() {
    let expect = refused(422, "Invalid", "spec.nfs: Forbidden: may not specify more than 1 volume type");
    contract("volume-two-sources", expect, |p| async move {
        let mut pv = p.volume("pv");
        pv.spec.as_mut().expect("spec").nfs =
            Some(NFSVolumeSource { server: "nfs.example.com".into(), path: "/export".into(), read_only: None });
        reply(p.volumes().create(&PostParams::default(), &pv).await)
    })
    .await;
}

#[tokio::test]
async fn a_local_volume_without_node_affinity_is_invalid() {
    let expect = refused(422, "Invalid", "spec.nodeAffinity: Required value: Local volume requires node affinity");
    contract("volume-local-no-affinity", expect, |p| async move {
        let mut pv = p.volume("pv");
        let spec = pv.spec.as_mut().expect("spec");
        spec.host_path = None;
        spec.local = Some(LocalVolumeSource { path: "/mnt/disk".into(), fs_type: None });
        reply(p.volumes().create(&PostParams::default(), &pv).await)
    })
    .await;
}

#[tokio::test]
async fn a_csi_volume_without_a_driver_or_handle_is_invalid() {
    let expect = refused(422, "Invalid", "spec.csi.driver: Required value, spec.csi.volumeHandle: Required value");
    contract("volume-csi-empty", expect, |p| async move {
        let mut pv = p.volume("pv");
        let spec = pv.spec.as_mut().expect("spec");
        spec.host_path = None;
        spec.csi = Some(CSIPersistentVolumeSource::default());
        reply(p.volumes().create(&PostParams::default(), &pv).await)
    })
    .await;
}

// --- classes --------------------------------------------------------------------

#[tokio::test]
async fn a_class_without_a_provisioner_is_invalid() {
    contract("class-no-provisioner", refused(422, "Invalid", "provisioner: Required value"), |p| async move {
        let mut k = p.labelled(p.class("fast").build());
        k.provisioner = String::new();
        reply(p.classes().create(&PostParams::default(), &k).await)
    })
    .await;
}

#[tokio::test]
async fn a_class_with_an_unknown_reclaim_policy_is_invalid() {
    let expect = refused(422, "Invalid", "reclaimPolicy: Unsupported value: \"Recycle\"");
    contract("class-recycle", expect, |p| async move {
        let k = p.labelled(p.class("fast").reclaim_policy("Recycle").build());
        reply(p.classes().create(&PostParams::default(), &k).await)
    })
    .await;
}

async fn class_patched(p: Plane, patch: Value) -> Reply {
    let k = p.labelled(p.class("fast").parameter("type", "gp3").build());
    step!(p.classes().create(&PostParams::default(), &k));
    reply(p.classes().patch(&p.name("fast"), &PatchParams::default(), &merge(patch)).await)
}

#[tokio::test]
async fn changing_a_class_parameters_is_invalid() {
    let expect = refused(422, "Invalid", "parameters: Invalid value: null: field is immutable");
    contract("class-parameters", expect, |p| class_patched(p, json!({ "parameters": { "type": "io2" } }))).await;
}

#[tokio::test]
async fn changing_a_class_provisioner_is_invalid() {
    let expect = refused(422, "Invalid", "provisioner: Invalid value: null: field is immutable");
    contract("class-provisioner", expect, |p| class_patched(p, json!({ "provisioner": "example.com/other" }))).await;
}

#[tokio::test]
async fn changing_a_class_binding_mode_is_invalid() {
    let expect = refused(422, "Invalid", "volumeBindingMode: Invalid value: null: field is immutable");
    contract("class-binding-mode", expect, |p| {
        class_patched(p, json!({ "volumeBindingMode": "WaitForFirstConsumer" }))
    })
    .await;
}

#[tokio::test]
async fn labelling_a_class_is_accepted() {
    contract("class-label", accepted(), |p| class_patched(p, json!({ "metadata": { "labels": { "tier": "gold" } } })))
        .await;
}

// --- finalizers of objects being deleted --------------------------------------------

/// A claim `data` held by a finalizer of ours, deleted.
async fn claim_being_deleted(p: &Plane) -> kube::Result<()> {
    let mut c = p.claim("data");
    c.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    p.claims().create(&PostParams::default(), &c).await?;
    p.claims().delete("data", &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn adding_a_finalizer_to_a_claim_being_deleted_is_invalid() {
    let expect = refused(422, "Invalid", "no new finalizers can be added if the object is being deleted");
    contract("finalizer-on-deleted-claim", expect, |p| async move {
        step!(claim_being_deleted(&p));
        let add = json_patch(json!([{ "op": "add", "path": "/metadata/finalizers/-", "value": "example.com/new" }]));
        reply(p.claims().patch("data", &PatchParams::default(), &add).await)
    })
    .await;
}

#[tokio::test]
async fn adding_a_finalizer_to_a_volume_being_deleted_is_invalid() {
    let expect = refused(422, "Invalid", "no new finalizers can be added if the object is being deleted");
    contract("finalizer-on-deleted-volume", expect, |p| async move {
        step!(p.volumes().create(&PostParams::default(), &p.volume("pv")));
        step!(p.volumes().delete(&p.name("pv"), &DeleteParams::default()));
        let add = json_patch(json!([{ "op": "add", "path": "/metadata/finalizers/-", "value": "example.com/new" }]));
        reply(p.volumes().patch(&p.name("pv"), &PatchParams::default(), &add).await)
    })
    .await;
}

#[tokio::test]
async fn removing_the_finalizers_of_a_claim_being_deleted_is_accepted() {
    contract("finalizers-removed-from-deleted-claim", accepted(), |p| async move {
        step!(claim_being_deleted(&p));
        let none = merge(json!({ "metadata": { "finalizers": null } }));
        reply(p.claims().patch("data", &PatchParams::default(), &none).await)
    })
    .await;
}

// --- immutable fields -------------------------------------------------------------

const CLAIM_SPEC_IMMUTABLE: &str =
    "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName";

async fn claim_patched(p: Plane, claim: PersistentVolumeClaim, patch: Value) -> Reply {
    step!(p.claims().create(&PostParams::default(), &claim));
    reply(p.claims().patch(&claim.name_any(), &PatchParams::default(), &merge(patch)).await)
}

#[tokio::test]
async fn changing_a_claims_access_modes_is_invalid() {
    contract("claim-access-modes", refused(422, "Invalid", CLAIM_SPEC_IMMUTABLE), |p| {
        let c = p.claim("data");
        claim_patched(p, c, json!({ "spec": { "accessModes": ["ReadWriteMany"] } }))
    })
    .await;
}

#[tokio::test]
async fn growing_an_unbound_claims_request_is_invalid() {
    contract("claim-grow-unbound", refused(422, "Invalid", CLAIM_SPEC_IMMUTABLE), |p| {
        let c = p.claim("data");
        claim_patched(p, c, json!({ "spec": { "resources": { "requests": { "storage": "2Gi" } } } }))
    })
    .await;
}

#[tokio::test]
async fn changing_a_claims_volume_mode_is_invalid() {
    contract(
        "claim-volume-mode",
        refused(422, "Invalid", "volumeMode: Invalid value: \"Block\": field is immutable"),
        |p| {
            let c = p.claim("data");
            claim_patched(p, c, json!({ "spec": { "volumeMode": "Block" } }))
        },
    )
    .await;
}

#[tokio::test]
async fn setting_an_unset_volume_name_is_accepted() {
    contract("claim-set-volume-name", accepted(), |p| {
        let c = p.claim("data");
        let pv = p.name("pv");
        claim_patched(p, c, json!({ "spec": { "volumeName": pv } }))
    })
    .await;
}

#[tokio::test]
async fn changing_a_set_volume_name_is_invalid() {
    contract("claim-change-volume-name", refused(422, "Invalid", CLAIM_SPEC_IMMUTABLE), |p| {
        let pv = p.name("pv");
        let c = p.labelled(
            fixtures::claim(&p.namespace, "data").class(&p.class_name()).volume_name(&format!("{pv}-a")).build(),
        );
        claim_patched(p, c, json!({ "spec": { "volumeName": format!("{pv}-b") } }))
    })
    .await;
}

#[tokio::test]
async fn setting_an_unset_storage_class_is_accepted() {
    contract("claim-set-class", accepted(), |p| {
        let c = p.labelled(fixtures::claim(&p.namespace, "data").build());
        let class = p.class_name();
        claim_patched(p, c, json!({ "spec": { "storageClassName": class } }))
    })
    .await;
}

#[tokio::test]
async fn changing_a_claims_storage_class_is_invalid() {
    contract("claim-change-class", refused(422, "Invalid", CLAIM_SPEC_IMMUTABLE), |p| {
        let c = p.claim("data");
        let other = p.name("other");
        claim_patched(p, c, json!({ "spec": { "storageClassName": other } }))
    })
    .await;
}

/// Binds a claim `data` of class `class` to a volume made for it, then grows it.
async fn bound_claim_grown(p: &Plane, class: &str) -> Reply {
    let c = p.labelled(fixtures::claim(&p.namespace, "data").class(class).build());
    let created = step!(p.claims().create(&PostParams::default(), &c));
    let mut pv = fixtures::volume(&p.name("pv"), PROVISIONER, &created).without_finalizers().build();
    pv.spec.as_mut().expect("spec").storage_class_name = Some(class.to_string());
    step!(p.volumes().create(&PostParams::default(), &p.labelled(pv)));
    e2e_support::wait_for(&p.claims(), "data", "the claim to be Bound", e2e_support::default_timeout(), |c| {
        c.and_then(|c| c.status.as_ref()?.phase.as_deref()) == Some("Bound")
    })
    .await
    .expect("the claim binds");
    let grow = merge(json!({ "spec": { "resources": { "requests": { "storage": "2Gi" } } } }));
    reply(p.claims().patch("data", &PatchParams::default(), &grow).await)
}

#[tokio::test]
async fn growing_a_bound_claim_in_a_class_that_allows_expansion_is_accepted() {
    contract("claim-grow-bound", accepted(), |p| async move {
        let class = p.labelled(p.class("expandable").allow_volume_expansion().build());
        step!(p.classes().create(&PostParams::default(), &class));
        bound_claim_grown(&p, &p.name("expandable")).await
    })
    .await;
}

#[tokio::test]
async fn growing_a_bound_claim_whose_class_does_not_allow_expansion_is_forbidden() {
    let expect = refused(403, "Forbidden", "only dynamically provisioned pvc can be resized");
    contract("claim-grow-fixed", expect, |p| async move {
        let class = p.labelled(p.class("fixed").build());
        step!(p.classes().create(&PostParams::default(), &class));
        bound_claim_grown(&p, &p.name("fixed")).await
    })
    .await;
}

async fn volume_patched(p: Plane, patch: Value) -> Reply {
    step!(p.volumes().create(&PostParams::default(), &p.volume("pv")));
    reply(p.volumes().patch(&p.name("pv"), &PatchParams::default(), &merge(patch)).await)
}

#[tokio::test]
async fn changing_a_volumes_source_is_invalid() {
    let expect = refused(422, "Invalid", "spec.persistentvolumesource is immutable after creation");
    contract("volume-source", expect, |p| {
        volume_patched(p, json!({ "spec": { "hostPath": { "path": "/elsewhere" } } }))
    })
    .await;
}

#[tokio::test]
async fn changing_a_volumes_mode_is_invalid() {
    let expect = refused(422, "Invalid", "volumeMode: Invalid value: \"Block\": field is immutable");
    contract("volume-mode", expect, |p| volume_patched(p, json!({ "spec": { "volumeMode": "Block" } }))).await;
}

#[tokio::test]
async fn changing_a_volumes_capacity_and_reclaim_policy_is_accepted() {
    contract("volume-capacity", accepted(), |p| {
        volume_patched(
            p,
            json!({ "spec": { "capacity": { "storage": "2Gi" }, "persistentVolumeReclaimPolicy": "Retain" } }),
        )
    })
    .await;
}

// --- resourceVersions and uids -------------------------------------------------------

#[tokio::test]
async fn a_stale_merge_patch_conflicts() {
    let expect =
        refused(409, "Conflict", "the object has been modified; please apply your changes to the latest version");
    contract("stale-merge-patch", expect, |p| async move {
        let created = step!(p.claims().create(&PostParams::default(), &p.claim("data")));
        let label = merge(json!({ "metadata": { "labels": { "step": "one" } } }));
        step!(p.claims().patch("data", &PatchParams::default(), &label));
        let stale = merge(
            json!({ "metadata": { "resourceVersion": created.resource_version(), "labels": { "step": "two" } } }),
        );
        reply(p.claims().patch("data", &PatchParams::default(), &stale).await)
    })
    .await;
}

#[tokio::test]
async fn a_stale_replace_conflicts() {
    let expect =
        refused(409, "Conflict", "the object has been modified; please apply your changes to the latest version");
    contract("stale-replace", expect, |p| async move {
        let created = step!(p.claims().create(&PostParams::default(), &p.claim("data")));
        let label = merge(json!({ "metadata": { "labels": { "step": "one" } } }));
        step!(p.claims().patch("data", &PatchParams::default(), &label));
        reply(p.claims().replace("data", &PostParams::default(), &created).await)
    })
    .await;
}

#[tokio::test]
async fn an_unconditional_replace_is_accepted() {
    contract("unconditional-replace", accepted(), |p| async move {
        let mut c = step!(p.claims().create(&PostParams::default(), &p.claim("data")));
        c.metadata.resource_version = None;
        c.labels_mut().insert("step".into(), "two".into());
        reply(p.claims().replace("data", &PostParams::default(), &c).await)
    })
    .await;
}

#[tokio::test]
async fn a_replace_leaving_out_defaulted_fields_is_accepted() {
    contract("replace-without-defaults", accepted(), |p| async move {
        let mut c = step!(p.claims().create(&PostParams::default(), &p.claim("data")));
        c.spec.as_mut().expect("spec").volume_mode = None;
        reply(p.claims().replace("data", &PostParams::default(), &c).await)
    })
    .await;
}

#[tokio::test]
async fn a_replace_with_another_uid_conflicts() {
    let expect = refused(409, "Conflict", "Precondition failed: UID in precondition: ").naming_uids();
    contract("replace-other-uid", expect, |p| async move {
        let mut c = step!(p.claims().create(&PostParams::default(), &p.claim("data")));
        c.metadata.uid = Some(OTHER_UID.into());
        c.metadata.resource_version = None;
        reply(p.claims().replace("data", &PostParams::default(), &c).await)
    })
    .await;
}

#[tokio::test]
async fn a_patch_changing_the_uid_is_invalid() {
    let expect = refused(
        422,
        "Invalid",
        "metadata.uid: Invalid value: \"00000000-0000-0000-0000-000000000000\": field is immutable",
    );
    contract("patch-uid", expect, |p| {
        let c = p.claim("data");
        claim_patched(p, c, json!({ "metadata": { "uid": OTHER_UID } }))
    })
    .await;
}

#[tokio::test]
async fn a_delete_with_another_uid_conflicts() {
    let expect = refused(409, "Conflict", "does not match the UID in record").naming_uids();
    contract("delete-other-uid", expect, |p| async move {
        step!(p.claims().create(&PostParams::default(), &p.claim("data")));
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(OTHER_UID.into()), resource_version: None }),
            ..Default::default()
        };
        reply(p.claims().delete("data", &dp).await)
    })
    .await;
}
