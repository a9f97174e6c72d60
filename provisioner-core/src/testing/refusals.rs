//! The writes the fake refuses because a real API server refuses them, with
//! the real server's status code, reason and wording (checked against a real
//! kube-apiserver by `tests/e2e/contract.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LocalVolumeSource, NFSVolumeSource, Namespace, Node, PersistentVolume, PersistentVolumeClaim,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::Status;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::FakeCluster;
use super::fixtures::{self, claim, claim_ref, class, node, static_volume, volume};
use crate::keys;

const NAME: &str = "example.com/fake";

/// The API error `result` failed with.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Asserts that `result` is a `422 Invalid` whose message is `message`.
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, kube::Error>, message: &str) {
    let e = refusal(result);
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{}", e.message);
    assert_eq!(e.message, message);
}

/// Asserts that `result` is a `422 Invalid` whose message starts with `start`.
fn assert_invalid_starting<T: std::fmt::Debug>(result: Result<T, kube::Error>, start: &str) {
    let e = refusal(result);
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{}", e.message);
    assert!(e.message.starts_with(start), "{:?} does not start with {start:?}", e.message);
}

fn claims(client: &Client) -> Api<PersistentVolumeClaim> {
    Api::namespaced(client.clone(), "ns")
}

fn volumes(client: &Client) -> Api<PersistentVolume> {
    Api::all(client.clone())
}

fn classes(client: &Client) -> Api<StorageClass> {
    Api::all(client.clone())
}

fn merge(patch: serde_json::Value) -> Patch<serde_json::Value> {
    Patch::Merge(patch)
}

async fn created_claim(client: &Client, name: &str) -> PersistentVolumeClaim {
    claims(client).create(&PostParams::default(), &claim("ns", name).build()).await.expect("create claim")
}

async fn created_volume(client: &Client, name: &str) -> PersistentVolume {
    let pv = volume(name, NAME, &claim("ns", "data").build()).without_finalizers().build();
    volumes(client).create(&PostParams::default(), &pv).await.expect("create volume")
}

#[tokio::test(start_paused = true)]
async fn a_create_carrying_a_resource_version_is_refused() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let pp = PostParams::default();
    let c = claim("ns", "data").resource_version("7").build();
    let e = refusal(claims(&client).create(&pp, &c).await);
    assert_eq!((e.code, e.reason.as_str()), (500, ""), "the real server answers 500 without a reason");
    assert_eq!(e.message, "resourceVersion should not be set on objects to be created");
    let k = class("fast", NAME).resource_version("7").build();
    assert_eq!(refusal(classes(&client).create(&pp, &k).await).code, 500);
    let pv = volume("pv-1", NAME, &c).resource_version("7").build();
    assert_eq!(refusal(volumes(&client).create(&pp, &pv).await).code, 500);
    assert!(claims(&client).get_opt("data").await.expect("get").is_none(), "nothing was created");
}

#[tokio::test(start_paused = true)]
async fn a_create_carrying_resource_version_zero_is_accepted() {
    let cluster = FakeCluster::new();
    let c = claim("ns", "data").resource_version("0").build();
    let created = claims(&cluster.client()).create(&PostParams::default(), &c).await.expect("create");
    assert_eq!(created.resource_version(), Some(cluster.resource_version().to_string()));
}

#[tokio::test(start_paused = true)]
async fn objects_built_by_the_fixtures_are_accepted_on_create() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let pp = PostParams::default();
    for k in [
        class("fast", NAME).reclaim_policy("Retain").build(),
        class("local", NAME).wait_for_first_consumer().parameter("tier", "ssd").mount_options(&["noatime"]).build(),
        class("growing", NAME).immediate().allow_volume_expansion().label("team", "storage").build(),
    ] {
        classes(&client).create(&pp, &k).await.expect("class");
    }
    let c = claim("ns", "data").class("fast").request("5Gi").provisioner(NAME).selected_node("node-a").build();
    let created = claims(&client).create(&pp, &c).await.expect("claim");
    assert!(created.uid().is_some_and(|u| !u.is_empty()), "the server gives the uid");
    for (name, c) in [
        ("clone", claim("ns", "clone").class("fast").clone_of("data")),
        ("restore", claim("ns", "restore").class("fast").from_snapshot("snap")),
        ("raw", claim("ns", "raw").block().access_modes(&["ReadWriteOnce", "ReadOnlyMany"]).deleting()),
        ("picky", claim("ns", "picky").selector("tier", "gold").legacy_class("fast")),
        ("prebound", claim("ns", "prebound").volume_name("pv-static").intent_of(NAME, "pvc-x")),
        ("urlns", claim("", "urlns").label("team", "storage")),
    ] {
        claims(&client).create(&pp, &c.build()).await.unwrap_or_else(|e| panic!("claim {name}: {e}"));
    }
    let pv = volume("pv-1", NAME, &created).build();
    let saved = volumes(&client).create(&pp, &pv).await.expect("volume");
    let spec = saved.spec.expect("spec");
    assert_eq!(spec.capacity.and_then(|c| c.get("storage").cloned()), Some(Quantity("5Gi".into())));
    assert_eq!(spec.claim_ref.and_then(|r| r.uid), created.uid(), "bound to the claim by uid");
    for v in [
        volume("pv-2", NAME, &created).unclaimed().static_volume().deleting().build(),
        static_volume("pv-static").claim_ref(claim_ref("ns", "prebound", None)).build(),
        static_volume("pv-3").for_claim(&created).reclaim_policy("Delete").host_path("/tmp/pv-3").build(),
        static_volume("pv-4")
            .class("fast")
            .capacity("2Gi")
            .access_modes(&["ReadWriteMany"])
            .provisioned_by("x.io/y")
            .finalizer(keys::VOLUME_FINALIZER)
            .label("team", "storage")
            .build(),
    ] {
        let name = v.name_any();
        volumes(&client).create(&pp, &v).await.unwrap_or_else(|e| panic!("volume {name}: {e}"));
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.create(&pp, &node("node-a").hostname("host-a").label("zone", "z1").build()).await.expect("node");
    assert_eq!(n.labels().get(fixtures::HOSTNAME_LABEL).map(String::as_str), Some("host-a"));
}

#[tokio::test(start_paused = true)]
async fn objects_built_as_stored_are_refused_on_create_as_a_real_server_refuses_them() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let pp = PostParams::default();
    let refused = "resourceVersion should not be set on objects to be created";
    let c = claim("ns", "data").as_stored("uid-1").build();
    assert_eq!(refusal(claims(&client).create(&pp, &c).await).message, refused);
    let k = class("fast", NAME).as_stored("uid-2").build();
    assert_eq!(refusal(classes(&client).create(&pp, &k).await).message, refused);
    let v = volume("pv-1", NAME, &c).as_stored("uid-3").build();
    assert_eq!(refusal(volumes(&client).create(&pp, &v).await).message, refused);
    let n = node("node-a").as_stored("uid-4").build();
    assert_eq!(refusal(Api::<Node>::all(client.clone()).create(&pp, &n).await).message, refused);
    assert_eq!(cluster.resource_version(), 1, "nothing was written");
}

#[tokio::test(start_paused = true)]
async fn invalid_names_are_invalid() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let pp = PostParams::default();
    assert_invalid(
        claims(&client).create(&pp, &claim("ns", "a..b").build()).await,
        "PersistentVolumeClaim \"a..b\" is invalid: metadata.name: Invalid value: \"a..b\": a lowercase RFC 1123 \
         subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an \
         alphanumeric character (e.g. 'example.com', regex used for validation is \
         '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
    );
    let long = "a".repeat(254);
    let pv = volume(&long, NAME, &claim("ns", "data").build()).build();
    assert_invalid(
        volumes(&client).create(&pp, &pv).await,
        &format!(
            "PersistentVolume \"{long}\" is invalid: metadata.name: Invalid value: \"{long}\": must be no more than 253 characters"
        ),
    );
    let mut nameless = claim("ns", "").build();
    nameless.metadata.name = None;
    assert_invalid(
        claims(&client).create(&pp, &nameless).await,
        "PersistentVolumeClaim \"\" is invalid: metadata.name: Required value: name or generateName is required",
    );
    let dotted =
        Namespace { metadata: ObjectMeta { name: Some("a.b".into()), ..Default::default() }, ..Default::default() };
    assert_invalid(
        Api::<Namespace>::all(client.clone()).create(&pp, &dotted).await,
        "Namespace \"a.b\" is invalid: metadata.name: Invalid value: \"a.b\": must not contain dots",
    );
}

#[tokio::test(start_paused = true)]
async fn adding_a_finalizer_to_an_object_being_deleted_is_invalid() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let api = claims(&client);
    let mut held = claim("ns", "data").build();
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &held).await.expect("create");
    api.delete("data", &DeleteParams::default()).await.expect("delete").left().expect("held by its finalizer");

    let more = merge(json!({ "metadata": { "finalizers": ["example.com/hold", "example.com/new"] } }));
    let e = refusal(api.patch("data", &PatchParams::default(), &more).await);
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        "PersistentVolumeClaim \"data\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added \
         if the object is being deleted, found new finalizers []string{\"example.com/new\"}"
    );
    let causes = e.details.expect("details").causes;
    assert_eq!(
        causes.iter().map(|c| (c.reason.as_str(), c.field.as_str())).collect::<Vec<_>>(),
        [("FieldValueForbidden", "metadata.finalizers")]
    );
    let mut current = api.get("data").await.expect("get");
    current.metadata.finalizers.get_or_insert_with(Vec::new).push("example.com/other".into());
    assert_invalid_starting(
        api.replace("data", &PostParams::default(), &current).await,
        "PersistentVolumeClaim \"data\" is invalid: metadata.finalizers: Forbidden",
    );
    assert_eq!(api.get("data").await.expect("get").finalizers(), ["example.com/hold".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn removing_the_finalizers_of_an_object_being_deleted_is_accepted() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let api = volumes(&client);
    let pv = volume("pv-1", NAME, &claim("ns", "data").build()).build();
    api.create(&PostParams::default(), &pv).await.expect("create");
    api.delete("pv-1", &DeleteParams::default()).await.expect("delete").left().expect("held by its finalizer");
    let none = merge(json!({ "metadata": { "finalizers": null } }));
    api.patch("pv-1", &PatchParams::default(), &none).await.expect("finalizers removed");
    assert!(api.get_opt("pv-1").await.expect("get").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_volume_without_capacity_access_modes_or_a_source_is_invalid() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let pp = PostParams::default();
    let bare = PersistentVolume {
        metadata: ObjectMeta { name: Some("pv-bare".into()), ..Default::default() },
        ..Default::default()
    };
    assert_invalid(
        volumes(&client).create(&pp, &bare).await,
        "PersistentVolume \"pv-bare\" is invalid: [spec.accessModes: Required value, spec.capacity: Required value, \
         spec.capacity: Unsupported value: null: supported values: \"storage\", spec: Required value: must specify a \
         volume type]",
    );
    let mut sourceless = volume("pv-1", NAME, &claim("ns", "data").build()).build();
    sourceless.spec.as_mut().expect("spec").host_path = None;
    assert_invalid(
        volumes(&client).create(&pp, &sourceless).await,
        "PersistentVolume \"pv-1\" is invalid: spec: Required value: must specify a volume type",
    );
    let mut two = volume("pv-1", NAME, &claim("ns", "data").build()).build();
    two.spec.as_mut().expect("spec").nfs =
        Some(NFSVolumeSource { server: "nfs.example.com".into(), path: "/export".into(), read_only: None });
    assert_invalid(
        volumes(&client).create(&pp, &two).await,
        "PersistentVolume \"pv-1\" is invalid: spec.nfs: Forbidden: may not specify more than 1 volume type",
    );
    let mut local = volume("pv-1", NAME, &claim("ns", "data").build()).build();
    let spec = local.spec.as_mut().expect("spec");
    spec.host_path = None;
    spec.local = Some(LocalVolumeSource { path: "/mnt/disk".into(), fs_type: None });
    assert_invalid(
        volumes(&client).create(&pp, &local).await,
        "PersistentVolume \"pv-1\" is invalid: spec.nodeAffinity: Required value: Local volume requires node affinity",
    );
    let mut no_modes = volume("pv-1", NAME, &claim("ns", "data").build()).build();
    no_modes.spec.as_mut().expect("spec").access_modes = None;
    assert_invalid(
        volumes(&client).create(&pp, &no_modes).await,
        "PersistentVolume \"pv-1\" is invalid: spec.accessModes: Required value",
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_without_access_modes_or_a_positive_request_is_invalid() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let pp = PostParams::default();
    let mut bare = claim("ns", "bare").build();
    bare.spec = Some(Default::default());
    assert_invalid(
        claims(&client).create(&pp, &bare).await,
        "PersistentVolumeClaim \"bare\" is invalid: [spec.accessModes: Required value: at least 1 access mode is \
         required, spec.resources[storage]: Required value]",
    );
    let odd = claim("ns", "odd").access_modes(&["ReadWriteSometimes"]).request("0").build();
    assert_invalid(
        claims(&client).create(&pp, &odd).await,
        "PersistentVolumeClaim \"odd\" is invalid: [spec.accessModes: Unsupported value: \"ReadWriteSometimes\": \
         supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\", \
         spec.resources[storage]: Invalid value: \"0\": must be greater than zero]",
    );
}

#[tokio::test(start_paused = true)]
async fn a_class_without_a_provisioner_or_with_unknown_modes_is_invalid() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let pp = PostParams::default();
    assert_invalid(
        classes(&client).create(&pp, &class("none", "").build()).await,
        "StorageClass.storage.k8s.io \"none\" is invalid: provisioner: Required value",
    );
    let mut odd = class("odd", NAME).reclaim_policy("Recycle").build();
    odd.volume_binding_mode = Some("Later".into());
    assert_invalid(
        classes(&client).create(&pp, &odd).await,
        "StorageClass.storage.k8s.io \"odd\" is invalid: [reclaimPolicy: Unsupported value: \"Recycle\": supported \
         values: \"Delete\", \"Retain\", volumeBindingMode: Unsupported value: \"Later\": supported values: \
         \"Immediate\", \"WaitForFirstConsumer\"]",
    );
}

#[tokio::test(start_paused = true)]
async fn a_claims_spec_is_immutable_but_for_binding() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let api = claims(&client);
    let pp = PatchParams::default();
    created_claim(&client, "data").await;
    let immutable = "PersistentVolumeClaim \"data\" is invalid: spec: Forbidden: spec is immutable after creation \
                     except resources.requests and volumeAttributesClassName for bound claims";
    let modes = merge(json!({ "spec": { "accessModes": ["ReadWriteMany"] } }));
    assert_invalid_starting(api.patch("data", &pp, &modes).await, immutable);
    let grow = merge(json!({ "spec": { "resources": { "requests": { "storage": "2Gi" } } } }));
    assert_invalid_starting(api.patch("data", &pp, &grow).await, immutable);

    // What binding writes, once each.
    let class = merge(json!({ "spec": { "storageClassName": "fast" } }));
    api.patch("data", &pp, &class).await.expect("an unset class may be set");
    let other = merge(json!({ "spec": { "storageClassName": "slow" } }));
    assert_invalid_starting(api.patch("data", &pp, &other).await, immutable);
    let bind = merge(json!({ "spec": { "volumeName": "pv-1" } }));
    api.patch("data", &pp, &bind).await.expect("an unset volumeName may be set");
    let rebind = merge(json!({ "spec": { "volumeName": "pv-2" } }));
    assert_invalid_starting(api.patch("data", &pp, &rebind).await, immutable);
    let block = merge(json!({ "spec": { "volumeMode": "Block" } }));
    let e = refusal(api.patch("data", &pp, &block).await);
    assert_eq!(e.code, 422);
    assert!(e.message.ends_with(", volumeMode: Invalid value: \"Block\": field is immutable]"), "{}", e.message);
}

/// A claim `data` of `class`, bound to a volume made for it.
async fn bound_claim(cluster: &FakeCluster, class: &str) {
    let client = cluster.client();
    let c = claims(&client)
        .create(&PostParams::default(), &claim("ns", "data").class(class).build())
        .await
        .expect("create claim");
    let pv = volume("pv-1", NAME, &c).without_finalizers().build();
    volumes(&client).create(&PostParams::default(), &pv).await.expect("volume");
    cluster
        .wait_for::<PersistentVolumeClaim>("ns", "data", |c| {
            c.and_then(|c| c.status.as_ref()?.phase.as_deref()) == Some("Bound")
        })
        .await
        .expect("bound");
}

#[tokio::test(start_paused = true)]
async fn a_bound_claim_may_grow_in_a_class_that_allows_expansion() {
    let cluster = FakeCluster::with_binder();
    let client = cluster.client();
    let expandable = class("expandable", NAME).allow_volume_expansion().build();
    classes(&client).create(&PostParams::default(), &expandable).await.expect("class");
    bound_claim(&cluster, "expandable").await;
    let grow = merge(json!({ "spec": { "resources": { "requests": { "storage": "2Gi" } } } }));
    let grown = claims(&client).patch("data", &PatchParams::default(), &grow).await.expect("resize");
    let requests = grown.spec.and_then(|s| s.resources?.requests).unwrap_or_default();
    assert_eq!(requests.get("storage"), Some(&Quantity("2Gi".into())));
}

#[tokio::test(start_paused = true)]
async fn growing_a_claim_whose_class_does_not_allow_expansion_is_forbidden() {
    let cluster = FakeCluster::with_binder();
    let client = cluster.client();
    classes(&client).create(&PostParams::default(), &class("fixed", NAME).build()).await.expect("class");
    bound_claim(&cluster, "fixed").await;
    let grow = merge(json!({ "spec": { "resources": { "requests": { "storage": "2Gi" } } } }));
    let e = refusal(claims(&client).patch("data", &PatchParams::default(), &grow).await);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "persistentvolumeclaims \"data\" is forbidden: only dynamically provisioned pvc can be resized and the \
         storageclass that provisions the pvc must support resize"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replace_that_leaves_out_defaulted_fields_changes_nothing() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let c = created_claim(&client, "data").await;
    let mut sent = c.clone();
    sent.spec.as_mut().expect("spec").volume_mode = None;
    let same = claims(&client).replace("data", &PostParams::default(), &sent).await.expect("replace");
    assert_eq!(same.resource_version(), c.resource_version(), "the server fills in the default again");
}

#[tokio::test(start_paused = true)]
async fn a_volumes_source_and_mode_are_immutable() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let api = volumes(&client);
    let pp = PatchParams::default();
    created_volume(&client, "pv-1").await;
    let moved = merge(json!({ "spec": { "hostPath": { "path": "/elsewhere" } } }));
    assert_invalid_starting(
        api.patch("pv-1", &pp, &moved).await,
        "PersistentVolume \"pv-1\" is invalid: spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is \
         immutable after creation",
    );
    let block = merge(json!({ "spec": { "volumeMode": "Block" } }));
    assert_invalid(
        api.patch("pv-1", &pp, &block).await,
        "PersistentVolume \"pv-1\" is invalid: volumeMode: Invalid value: \"Block\": field is immutable",
    );
    let grow =
        merge(json!({ "spec": { "capacity": { "storage": "2Gi" }, "persistentVolumeReclaimPolicy": "Retain" } }));
    api.patch("pv-1", &pp, &grow).await.expect("capacity and reclaim policy may change");
}

#[tokio::test(start_paused = true)]
async fn a_class_is_immutable_but_for_its_metadata() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let api = classes(&client);
    let pp = PatchParams::default();
    api.create(&PostParams::default(), &class("fast", NAME).parameter("a", "b").build()).await.expect("create");
    for (field, value) in [
        ("parameters", json!({ "a": "c" })),
        ("provisioner", json!("example.com/other")),
        ("reclaimPolicy", json!("Retain")),
        ("volumeBindingMode", json!("WaitForFirstConsumer")),
    ] {
        assert_invalid(
            api.patch("fast", &pp, &merge(json!({ field: value }))).await,
            &format!(
                "StorageClass.storage.k8s.io \"fast\" is invalid: {field}: Invalid value: null: field is immutable"
            ),
        );
    }
    let labels = merge(json!({ "metadata": { "labels": { "tier": "gold" } } }));
    api.patch("fast", &pp, &labels).await.expect("labels may change");
}

#[tokio::test(start_paused = true)]
async fn a_replace_with_another_uid_conflicts_and_a_patch_of_the_uid_is_invalid() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let api = claims(&client);
    let c = created_claim(&client, "data").await;
    let mut other = c.clone();
    other.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    other.metadata.resource_version = None;
    let e = refusal(api.replace("data", &PostParams::default(), &other).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains(&format!(
            "Precondition failed: UID in precondition: 00000000-0000-0000-0000-000000000000, UID in object meta: {}",
            c.uid().expect("uid")
        )),
        "{}",
        e.message
    );
    let patch = merge(json!({ "metadata": { "uid": "00000000-0000-0000-0000-000000000000" } }));
    assert_invalid(
        api.patch("data", &PatchParams::default(), &patch).await,
        "PersistentVolumeClaim \"data\" is invalid: metadata.uid: Invalid value: \
         \"00000000-0000-0000-0000-000000000000\": field is immutable",
    );
    let mut unconditional = c.clone();
    unconditional.metadata.resource_version = None;
    unconditional.metadata.labels = Some(BTreeMap::from([("a".to_string(), "b".to_string())]));
    api.replace("data", &PostParams::default(), &unconditional).await.expect("a replace without resourceVersion");
}
