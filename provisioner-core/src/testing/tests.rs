use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::core::Status;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{FakeCluster, Fault, Verb};
use crate::keys;
use crate::testing::fixtures::{claim, class, volume};

const NAME: &str = "example.com/fake";

fn api_error(e: kube::Error) -> Box<Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn claims(client: &Client) -> Api<PersistentVolumeClaim> {
    Api::namespaced(client.clone(), "ns")
}

async fn create_claim(client: &Client, name: &str) -> PersistentVolumeClaim {
    claims(client).create(&PostParams::default(), &claim("ns", name).class("fast").build()).await.expect("create")
}

fn phase(c: Option<&PersistentVolumeClaim>) -> Option<&str> {
    c?.status.as_ref()?.phase.as_deref()
}

#[tokio::test(start_paused = true)]
async fn create_assigns_identity_and_a_duplicate_is_already_exists() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let c = create_claim(&client, "data").await;
    assert!(c.uid().is_some_and(|u| !u.is_empty()));
    assert!(c.metadata.creation_timestamp.is_some());
    assert_eq!(c.resource_version(), Some(cluster.resource_version().to_string()));
    assert_eq!(phase(Some(&c)), Some("Pending"));
    let dup = claims(&client).create(&PostParams::default(), &claim("ns", "data").build()).await;
    let e = api_error(dup.expect_err("duplicate"));
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

    let mut generated = claim("ns", "").build();
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let g = claims(&client).create(&PostParams::default(), &generated).await.expect("generateName");
    assert!(g.name_any().starts_with("gen-") && g.name_any().len() == 9);
}

#[tokio::test(start_paused = true)]
async fn stale_replace_and_stale_merge_patch_conflict() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let c = create_claim(&client, "data").await;
    let api = claims(&client);
    let patch = json!({ "metadata": { "labels": { "a": "b" } } });
    let updated = api.patch("data", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    assert_ne!(updated.resource_version(), c.resource_version());

    let e = api_error(api.replace("data", &PostParams::default(), &c).await.expect_err("stale replace"));
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    let stale = json!({ "metadata": { "resourceVersion": c.resource_version(), "labels": { "c": "d" } } });
    let e = api_error(api.patch("data", &PatchParams::default(), &Patch::Merge(&stale)).await.expect_err("stale"));
    assert_eq!(e.code, 409);
    // The current resourceVersion is accepted.
    api.replace("data", &PostParams::default(), &updated).await.expect("fresh replace");
}

#[tokio::test(start_paused = true)]
async fn a_write_that_changes_nothing_keeps_the_resource_version() {
    let cluster = FakeCluster::new();
    let api = claims(&cluster.client());
    let c = create_claim(&cluster.client(), "data").await;
    let same = api.replace("data", &PostParams::default(), &c).await.expect("replace");
    assert_eq!(same.resource_version(), c.resource_version());
}

#[tokio::test(start_paused = true)]
async fn finalizers_hold_a_deleted_object_until_the_last_one_goes() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let api = claims(&client);
    let mut c = claim("ns", "data").build();
    c.metadata.finalizers = Some(vec!["a/one".into(), "a/two".into()]);
    let c = api.create(&PostParams::default(), &c).await.expect("create");

    let held = api.delete("data", &DeleteParams::default()).await.expect("delete").left().expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.uid(), c.uid());
    let remove_first = json!([
        { "op": "test", "path": "/metadata/finalizers/0", "value": "a/one" },
        { "op": "remove", "path": "/metadata/finalizers/0" },
    ]);
    let p: json_patch::Patch = serde_json::from_value(remove_first).expect("patch");
    let left = api.patch("data", &PatchParams::default(), &Patch::<()>::Json(p.clone())).await.expect("patch");
    assert_eq!(left.finalizers(), &["a/two".to_string()]);
    assert!(api.get_opt("data").await.expect("get").is_some());
    let none = json!({ "metadata": { "finalizers": null } });
    api.patch("data", &PatchParams::default(), &Patch::Merge(&none)).await.expect("last finalizer");
    assert!(api.get_opt("data").await.expect("get").is_none(), "removing the last finalizer deletes the object");
}

#[tokio::test(start_paused = true)]
async fn json_patch_with_a_failing_test_is_invalid_and_changes_nothing() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let c = create_claim(&client, "data").await;
    let ops = json!([
        { "op": "add", "path": "/metadata/labels", "value": { "x": "y" } },
        { "op": "test", "path": "/metadata/name", "value": "other" },
    ]);
    let p: json_patch::Patch = serde_json::from_value(ops).expect("patch");
    let e = api_error(
        claims(&client).patch("data", &PatchParams::default(), &Patch::<()>::Json(p)).await.expect_err("test"),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    let after = claims(&client).get("data").await.expect("get");
    assert_eq!(after.resource_version(), c.resource_version());
    assert!(after.labels().is_empty());
}

#[tokio::test(start_paused = true)]
async fn delete_preconditions_are_checked() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    create_claim(&client, "data").await;
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: Some("not-it".into()), resource_version: None }),
        ..Default::default()
    };
    let e = api_error(claims(&client).delete("data", &dp).await.expect_err("precondition"));
    assert_eq!(e.code, 409);
    assert!(
        e.message.contains("the UID in the precondition (not-it) does not match the UID in record"),
        "{}",
        e.message
    );
    let gone = claims(&client).delete("data", &DeleteParams::default()).await.expect("delete");
    assert!(gone.is_right(), "an object without finalizers is deleted at once and a Status returned");
}

#[tokio::test(start_paused = true)]
async fn unknown_requests_get_kubernetes_status_errors() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let e = api_error(claims(&client).get("missing").await.expect_err("missing"));
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(e.message, "persistentvolumeclaims \"missing\" not found");

    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "ns");
    assert_eq!(api_error(pods.list(&ListParams::default()).await.expect_err("no pods")).code, 404);
    let classes: Api<StorageClass> = Api::all(client.clone());
    let e = classes.get_status("fast").await.expect_err("no status subresource");
    assert_eq!(api_error(e).code, 404);

    let request =
        http::Request::builder().method("OPTIONS").uri("/api/v1/persistentvolumes").body(vec![]).expect("req");
    let e = client.request::<PersistentVolume>(request).await.expect_err("405");
    assert_eq!(api_error(e).code, 405);
    let request = http::Request::builder()
        .method("PATCH")
        .uri("/api/v1/persistentvolumes/x")
        .header("content-type", "application/apply-patch+yaml")
        .body(b"{}".to_vec())
        .expect("req");
    assert_eq!(api_error(client.request::<PersistentVolume>(request).await.expect_err("415")).code, 415);
    let bad = claim("ns", "Not_A_Name").build();
    assert_eq!(api_error(claims(&client).create(&PostParams::default(), &bad).await.expect_err("422")).code, 422);
}

#[tokio::test(start_paused = true)]
async fn status_is_a_subresource_for_claims_and_volumes() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let api = claims(&client);
    let mut c = create_claim(&client, "data").await;
    c.status.as_mut().expect("status").phase = Some("Bound".into());
    c.metadata.labels = Some([("l".to_string(), "v".to_string())].into());
    let main = api.replace("data", &PostParams::default(), &c).await.expect("replace");
    assert_eq!(phase(Some(&main)), Some("Pending"), "the main resource keeps the status");
    assert_eq!(main.labels().get("l").map(String::as_str), Some("v"));

    let status = json!({ "status": { "phase": "Lost" }, "metadata": { "labels": { "l": "changed" } } });
    let after = api.patch_status("data", &PatchParams::default(), &Patch::Merge(&status)).await.expect("status");
    assert_eq!(phase(Some(&after)), Some("Lost"));
    assert_eq!(after.labels().get("l").map(String::as_str), Some("v"), "/status changes only the status");
}

#[tokio::test(start_paused = true)]
async fn watch_resumes_after_the_given_resource_version() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let first = create_claim(&client, "one").await;
    create_claim(&client, "two").await;
    let rv = first.resource_version().expect("rv");
    let stream = claims(&client).watch(&WatchParams::default(), &rv).await.expect("watch");
    let mut stream = std::pin::pin!(stream);
    match stream.try_next().await.expect("event") {
        Some(WatchEvent::Added(c)) => assert_eq!(c.name_any(), "two"),
        other => panic!("expected two ADDED, got {other:?}"),
    }
    claims(&client).delete("one", &DeleteParams::default()).await.expect("delete");
    match stream.try_next().await.expect("event") {
        Some(WatchEvent::Deleted(c)) => assert_eq!(c.name_any(), "one"),
        other => panic!("expected one DELETED, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_watch_from_a_forgotten_resource_version_is_gone() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let first = create_claim(&client, "one").await;
    create_claim(&client, "two").await;
    cluster.compact();
    let stream = claims(&client).watch(&WatchParams::default(), &first.resource_version().expect("rv")).await;
    let mut stream = std::pin::pin!(stream.expect("watch"));
    match stream.try_next().await.expect("event") {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(stream.try_next().await.expect("end").is_none());
}

#[tokio::test(start_paused = true)]
async fn selectors_filter_lists_and_watches() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    for (name, tier) in [("a", "gold"), ("b", "silver"), ("c", "gold")] {
        let mut c = claim("ns", name).build();
        c.metadata.labels = Some([("tier".to_string(), tier.to_string())].into());
        claims(&client).create(&PostParams::default(), &c).await.expect("create");
    }
    let names = |l: Vec<PersistentVolumeClaim>| l.iter().map(|c| c.name_any()).collect::<Vec<_>>();
    let gold = claims(&client).list(&ListParams::default().labels("tier=gold")).await.expect("list");
    assert_eq!(names(gold.items), ["a", "c"]);
    let not_gold = claims(&client).list(&ListParams::default().labels("tier notin (gold)")).await.expect("list");
    assert_eq!(names(not_gold.items), ["b"]);
    let by_name = claims(&client).list(&ListParams::default().fields("metadata.name=c")).await.expect("list");
    assert_eq!(names(by_name.items), ["c"]);
    let elsewhere: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "other");
    assert!(elsewhere.list(&ListParams::default()).await.expect("list").items.is_empty());
    let everywhere: Api<PersistentVolumeClaim> = Api::all(client.clone());
    assert_eq!(everywhere.list(&ListParams::default()).await.expect("list").items.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn watchers_survive_dropped_watches_and_compaction() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let stream = watcher(claims(&client), watcher::Config::default()).applied_objects();
    let mut stream = std::pin::pin!(stream);
    create_claim(&client, "one").await;
    assert_eq!(stream.try_next().await.expect("ok").expect("one").name_any(), "one");
    cluster.drop_watches();
    create_claim(&client, "two").await;
    assert_eq!(stream.try_next().await.expect("ok").expect("two").name_any(), "two");
    cluster.drop_watches();
    cluster.compact();
    create_claim(&client, "three").await;
    // The watcher re-lists after 410 and sees everything again.
    let mut seen = Vec::new();
    while !seen.contains(&"three".to_string()) {
        seen.push(stream.try_next().await.expect("ok").expect("obj").name_any());
    }
}

#[tokio::test(start_paused = true)]
async fn bookmarks_arrive_on_request_and_when_idle() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let c = create_claim(&client, "one").await;
    let wp = WatchParams::default();
    let stream = claims(&client).watch(&wp, &c.resource_version().expect("rv")).await.expect("watch");
    let mut stream = std::pin::pin!(stream);
    let started = tokio::time::Instant::now();
    cluster.send_bookmarks();
    assert!(matches!(stream.try_next().await, Ok(Some(WatchEvent::Bookmark(_)))));
    assert!(started.elapsed() < Duration::from_secs(1));
    match stream.try_next().await {
        Ok(Some(WatchEvent::Bookmark(b))) => assert_eq!(b.metadata.resource_version, c.resource_version().expect("rv")),
        other => panic!("expected a periodic bookmark, got {other:?}"),
    }
    assert!(started.elapsed() >= super::server::BOOKMARK_EVERY);
}

#[tokio::test(start_paused = true)]
async fn injected_failures_and_latency_apply_to_the_named_verb_and_resource() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    cluster.fail_next::<PersistentVolumeClaim>(Verb::Create, Fault::ServiceUnavailable, 2);
    for _ in 0..2 {
        let e = claims(&client).create(&PostParams::default(), &claim("ns", "x").build()).await;
        assert_eq!(api_error(e.expect_err("injected")).code, 503);
    }
    create_claim(&client, "x").await;
    cluster.set_latency_any(Some(Verb::Get), Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    claims(&client).get("x").await.expect("get");
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn injected_faults_apply_to_their_kind_and_subresource_only() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let pp = PostParams::default();
    cluster.fail_next::<PersistentVolume>(Verb::Create, Fault::InternalError, 1);
    create_claim(&client, "data").await;
    let pv = volume("pv-1", NAME, &claim("ns", "data").build()).build();
    let e = api_error(Api::<PersistentVolume>::all(client.clone()).create(&pp, &pv).await.expect_err("injected"));
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    Api::<PersistentVolume>::all(client.clone()).create(&pp, &pv).await.expect("one failure only");

    cluster.fail_next_status::<PersistentVolumeClaim>(Verb::Patch, Fault::Conflict, 1);
    let labelled = json!({ "metadata": { "labels": { "a": "b" } } });
    claims(&client).patch("data", &PatchParams::default(), &Patch::Merge(&labelled)).await.expect("not /status");
    let status = json!({ "status": { "phase": "Lost" } });
    let e = api_error(
        claims(&client)
            .patch_status("data", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect_err("/status"),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(e.message.contains("the object has been modified"), "the real server's wording: {}", e.message);
    assert_eq!(Fault::TooManyRequests.code(), 429);

    cluster.fail_next_any(Verb::Get, Fault::Status(418), 2);
    assert_eq!(api_error(claims(&client).get("data").await.expect_err("any")).code, 418);
    let e = Api::<StorageClass>::all(client.clone()).get("fast").await.expect_err("any kind");
    assert_eq!(api_error(e).code, 418);
    claims(&client).get("data").await.expect("the faults are used up");
}

#[tokio::test(start_paused = true)]
async fn a_restored_connection_is_served_again_while_requests_caught_by_the_cut_stay_hung() {
    let cluster = FakeCluster::new();
    let (client, connection) = cluster.connect();
    create_claim(&client, "data").await;
    connection.sever();
    let hung = tokio::spawn({
        let client = client.clone();
        async move { claims(&client).get("data").await }
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!hung.is_finished(), "a request of a severed client does not answer");
    connection.restore();
    let c = tokio::time::timeout(Duration::from_secs(1), claims(&client).get("data")).await;
    assert!(c.expect("answered at once").is_ok(), "a request sent after the restore is served");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!hung.is_finished(), "the request caught by the cut stays hung");
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn the_history_tells_what_each_write_did_and_when_it_landed() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let started = tokio::time::Instant::now();
    create_claim(&client, "data").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let touch = json!({ "metadata": { "labels": { "touched": "yes" } } });
    claims(&client).patch("data", &PatchParams::default(), &Patch::Merge(&touch)).await.expect("patch");
    claims(&client).delete("data", &DeleteParams::default()).await.expect("delete");
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class("fast", NAME).build())
        .await
        .expect("class");

    let history = cluster.history::<PersistentVolumeClaim>();
    let changes: Vec<_> = history.iter().map(|h| (h.change, h.at - started)).collect();
    let ten = Duration::from_secs(10);
    assert_eq!(
        changes,
        [
            (super::ChangeType::Added, Duration::ZERO),
            (super::ChangeType::Modified, ten),
            (super::ChangeType::Deleted, ten)
        ]
    );
    assert!(history[1].object.labels().contains_key("touched"));
    assert!(history.windows(2).all(|w| w[0].resource_version < w[1].resource_version));
    assert_eq!(cluster.history::<StorageClass>().len(), 1, "each kind its own");
    cluster.compact();
    assert!(cluster.history::<PersistentVolumeClaim>().is_empty(), "compaction forgets it");
}

#[tokio::test(start_paused = true)]
async fn events_are_found_by_object_and_reason_in_the_store_and_through_a_client() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let event = |name: &str, about: &str, reason: &str| Event {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        reason: Some(reason.into()),
        regarding: Some(k8s_openapi::api::core::v1::ObjectReference { name: Some(about.into()), ..Default::default() }),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), "ns");
    let pp = PostParams::default();
    events.create(&pp, &event("e1", "data", "Provisioning")).await.expect("event");
    events.create(&pp, &event("e2", "other", "ProvisioningFailed")).await.expect("event");
    assert!(cluster.events_for("ns", "data", "ProvisioningFailed").is_empty());
    assert_eq!(cluster.events_for("ns", "data", "Provisioning").len(), 1);
    assert_eq!(super::events_for(&client, "ns", "data", "Provisioning").await.expect("list").len(), 1);

    let waiting = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.wait_for_event("ns", "data", "ProvisioningFailed").await }
    });
    let watching = tokio::spawn({
        let client = client.clone();
        async move { super::wait_for_event(&client, "ns", "data", "ProvisioningFailed", Duration::from_secs(60)).await }
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!waiting.is_finished() && !watching.is_finished(), "no such event yet");
    events.create(&pp, &event("e3", "data", "ProvisioningFailed")).await.expect("event");
    for found in [waiting.await.expect("task"), watching.await.expect("task")] {
        assert_eq!(found.expect("found").metadata.name.as_deref(), Some("e3"));
    }

    let e = super::wait_for_event(&client, "ns", "data", "ProvisioningSucceeded", Duration::from_secs(5))
        .await
        .expect_err("never comes");
    assert!(e.to_string().contains("data:Provisioning"), "names what it saw: {e}");
    let e = cluster.wait_for_event("ns", "data", "ProvisioningSucceeded").await.expect_err("never comes");
    assert!(matches!(e, super::EventWaitError::Timeout { timeout: super::WAIT_TIMEOUT, .. }), "{e}");
}

#[tokio::test(start_paused = true)]
async fn both_event_apis_share_one_storage() {
    let cluster = FakeCluster::new();
    let client = cluster.client();
    let event = Event {
        metadata: kube::api::ObjectMeta { name: Some("e1".into()), ..Default::default() },
        reason: Some("Tested".into()),
        note: Some("hello".into()),
        regarding: Some(k8s_openapi::api::core::v1::ObjectReference {
            name: Some("data".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), "ns").create(&PostParams::default(), &event).await.expect("create");
    let core = Api::<CoreEvent>::namespaced(client.clone(), "ns").get("e1").await.expect("core view");
    assert_eq!(core.message.as_deref(), Some("hello"));
    assert_eq!(core.involved_object.name.as_deref(), Some("data"));
    let series = json!({ "series": { "count": 2, "lastObservedTime": "2020-01-01T00:00:00.000000Z" } });
    let patched = Api::<Event>::namespaced(client.clone(), "ns")
        .patch("e1", &PatchParams::default(), &Patch::Merge(&series))
        .await
        .expect("patch");
    assert_eq!(patched.series.map(|s| s.count), Some(2));
    assert_eq!(patched.note.as_deref(), Some("hello"));
}

#[tokio::test(start_paused = true)]
async fn leases_replace_with_resource_version_semantics() {
    let cluster = FakeCluster::new();
    let api: Api<Lease> = Api::namespaced(cluster.client(), "kube-system");
    let lease = Lease { metadata: kube::api::ObjectMeta { name: Some("l".into()), ..Default::default() }, spec: None };
    let created = api.create(&PostParams::default(), &lease).await.expect("create");
    let mut renewed = created.clone();
    renewed.spec =
        Some(k8s_openapi::api::coordination::v1::LeaseSpec { lease_duration_seconds: Some(15), ..Default::default() });
    api.replace("l", &PostParams::default(), &renewed).await.expect("replace");
    let mut stale = created.clone();
    stale.spec = Some(Default::default());
    stale.spec.as_mut().expect("spec").holder_identity = Some("me".into());
    assert_eq!(api_error(api.replace("l", &PostParams::default(), &stale).await.expect_err("stale")).code, 409);
}

#[tokio::test(start_paused = true)]
async fn a_second_lease_of_one_name_already_exists_and_a_stale_lease_patch_conflicts() {
    let cluster = FakeCluster::new();
    let api: Api<Lease> = Api::namespaced(cluster.client(), "kube-system");
    let lease = Lease { metadata: kube::api::ObjectMeta { name: Some("l".into()), ..Default::default() }, spec: None };
    let created = api.create(&PostParams::default(), &lease).await.expect("create");
    let e = api_error(api.create(&PostParams::default(), &lease).await.expect_err("exists"));
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    let holder =
        |h: &str, rv: Option<String>| json!({ "metadata": { "resourceVersion": rv }, "spec": { "holderIdentity": h } });
    let patched = api
        .patch("l", &PatchParams::default(), &Patch::Merge(holder("a", created.resource_version())))
        .await
        .expect("a patch at the current version");
    assert_eq!(patched.spec.and_then(|s| s.holder_identity).as_deref(), Some("a"));
    let stale = api.patch("l", &PatchParams::default(), &Patch::Merge(holder("b", created.resource_version()))).await;
    assert_eq!(api_error(stale.expect_err("stale")).code, 409);
    let unconditional = api.patch("l", &PatchParams::default(), &Patch::Merge(holder("b", None))).await;
    assert_eq!(
        unconditional.expect("no version, no precondition").spec.and_then(|s| s.holder_identity).as_deref(),
        Some("b")
    );
}

#[tokio::test(start_paused = true)]
async fn binder_annotates_binds_and_releases() {
    let cluster = FakeCluster::with_binder();
    let client = cluster.client();
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class("fast", NAME).build())
        .await
        .expect("class");
    let c = create_claim(&client, "data").await;
    let annotated = cluster
        .wait_for::<PersistentVolumeClaim>("ns", "data", |c| {
            c.is_some_and(|c| c.annotations().get(keys::STORAGE_PROVISIONER).map(String::as_str) == Some(NAME))
        })
        .await
        .expect("annotated")
        .expect("claim");
    assert_eq!(annotated.annotations().get(keys::BETA_STORAGE_PROVISIONER).map(String::as_str), Some(NAME));
    assert!(annotated.finalizers().contains(&"kubernetes.io/pvc-protection".to_string()));

    let mut pv = volume("pvc-1", NAME, &c).build();
    pv.status = None;
    pv.metadata.finalizers = None;
    Api::<PersistentVolume>::all(client.clone()).create(&PostParams::default(), &pv).await.expect("pv");
    let bound = cluster
        .wait_for::<PersistentVolumeClaim>("ns", "data", |c| phase(c) == Some("Bound"))
        .await
        .expect("bound")
        .expect("claim");
    assert_eq!(bound.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some("pvc-1"));
    assert_eq!(bound.annotations().get("pv.kubernetes.io/bind-completed").map(String::as_str), Some("yes"));

    claims(&client).delete("data", &DeleteParams::default()).await.expect("delete");
    cluster.wait_for::<PersistentVolumeClaim>("ns", "data", |c| c.is_none()).await.expect("claim gone");
    let released = cluster
        .wait_for::<PersistentVolume>("", "pvc-1", |v| {
            v.and_then(|v| v.status.as_ref()?.phase.as_deref()) == Some("Released")
        })
        .await
        .expect("released")
        .expect("pv");
    assert!(released.finalizers().contains(&"kubernetes.io/pv-protection".to_string()));
    Api::<PersistentVolume>::all(client.clone()).delete("pvc-1", &DeleteParams::default()).await.expect("delete");
    cluster.wait_for::<PersistentVolume>("", "pvc-1", |v| v.is_none()).await.expect("unprotected and gone");
}

#[tokio::test(start_paused = true)]
async fn binder_binds_a_claim_held_by_a_finalizer_while_it_is_being_deleted() {
    // As kube-controller-manager does: syncClaim ignores deletionTimestamp,
    // only the protection finalizer goes.
    let cluster = FakeCluster::with_binder();
    let client = cluster.client();
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class("fast", NAME).build())
        .await
        .expect("class");
    let mut held = claim("ns", "data").class("fast").build();
    held.metadata.finalizers = Some(vec!["example.com/hold".to_string()]);
    let c = claims(&client).create(&PostParams::default(), &held).await.expect("create");
    claims(&client).delete("data", &DeleteParams::default()).await.expect("delete");
    let unprotected = cluster
        .wait_for::<PersistentVolumeClaim>("ns", "data", |c| {
            c.is_some_and(|c| !c.finalizers().contains(&"kubernetes.io/pvc-protection".to_string()))
        })
        .await
        .expect("protection removed")
        .expect("claim held");
    assert!(unprotected.metadata.deletion_timestamp.is_some());

    let mut pv = volume("pvc-1", NAME, &c).build();
    pv.status = None;
    pv.metadata.finalizers = None;
    Api::<PersistentVolume>::all(client.clone()).create(&PostParams::default(), &pv).await.expect("pv");
    let bound = cluster
        .wait_for::<PersistentVolumeClaim>("ns", "data", |c| phase(c) == Some("Bound"))
        .await
        .expect("bound while being deleted")
        .expect("claim");
    assert_eq!(bound.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some("pvc-1"));
    assert_eq!(bound.finalizers(), ["example.com/hold".to_string()], "protection is not added back");
}

#[tokio::test(start_paused = true)]
async fn binder_waits_for_a_selected_node_and_says_so() {
    let cluster = FakeCluster::with_binder();
    let client = cluster.client();
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class("late", NAME).wait_for_first_consumer().build())
        .await
        .expect("class");
    claims(&client).create(&PostParams::default(), &claim("ns", "data").class("late").build()).await.expect("c");
    let events: Api<Event> = Api::namespaced(client.clone(), "ns");
    let mut stream = std::pin::pin!(watcher(events, watcher::Config::default()).applied_objects().boxed());
    let ev = stream.try_next().await.expect("ok").expect("event");
    assert_eq!(ev.reason.as_deref(), Some("WaitForFirstConsumer"));
    let c = claims(&client).get("data").await.expect("get");
    assert!(!c.annotations().contains_key(keys::STORAGE_PROVISIONER));
    let node = json!({ "metadata": { "annotations": { keys::SELECTED_NODE: "node-a" } } });
    claims(&client).patch("data", &PatchParams::default(), &Patch::Merge(&node)).await.expect("select");
    cluster
        .wait_for::<PersistentVolumeClaim>("ns", "data", |c| {
            c.is_some_and(|c| c.annotations().contains_key(keys::STORAGE_PROVISIONER))
        })
        .await
        .expect("annotated");
}

#[tokio::test(start_paused = true)]
async fn a_crashed_engine_is_replaced_and_the_claim_still_binds_once() {
    let cluster = FakeCluster::with_binder();
    let client = cluster.client();
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class("fast", NAME).build())
        .await
        .expect("class");
    let backend = super::ScriptedBackend::new();
    // The first engine cannot save volumes: it crashes after provisioning.
    cluster.fail_next::<PersistentVolume>(Verb::Create, Fault::InternalError, 1000);
    let b = Arc::new(backend.clone());
    let mut first = cluster.spawn_engine(|c| crate::Engine::builder(c, NAME, b).build()).expect("engine");
    first.synced().await;
    create_claim(&client, "data").await;
    backend.wait_until(|s| s.created == 1).await.expect("the first engine provisioned");
    first.crash();
    cluster.clear_faults();
    let b = Arc::new(backend.clone());
    let second = cluster.spawn_engine(|c| crate::Engine::builder(c, NAME, b).build()).expect("engine");
    let bound = cluster.wait_for::<PersistentVolumeClaim>("ns", "data", |c| phase(c) == Some("Bound")).await;
    let volume = bound.expect("bound").and_then(|c| c.spec?.volume_name).expect("a volume");
    assert_eq!(backend.volumes().into_keys().collect::<Vec<_>>(), [volume], "one backend volume, the bound one");
    second.stop().await.expect("stop");
}
