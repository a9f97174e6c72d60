//! The intent journal on the testing kit: nothing of ours on claims, one
//! write shared by the provisions that start together, a claim deleted while
//! the engine was down, and a journal edited, deleted or taken by hand.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use provisioner_core::journal;
use provisioner_core::testing::RunningEngine;

use super::*;

fn journals(kit: &Kit) -> Api<ConfigMap> {
    Api::namespaced(kit.client.clone(), "default")
}

fn journal_name() -> String {
    journal::name_for(NAME, None)
}

/// The entry keys the journal holds now (none if it does not exist).
async fn entries(kit: &Kit) -> Vec<String> {
    let cm = journals(kit).get_opt(&journal_name()).await.expect("read the journal");
    let data = cm.and_then(|c| c.data).unwrap_or_default();
    data.keys().filter(|k| !k.starts_with('_')).cloned().collect()
}

/// Waits (in paused time) until `cond` holds for the journal's data.
async fn journal_until(kit: &Kit, what: &str, cond: impl Fn(Option<&BTreeMap<String, String>>) -> bool) {
    for _ in 0..600 {
        let cm = journals(kit).get_opt(&journal_name()).await.expect("read the journal");
        if cond(cm.as_ref().map(|c| c.data.as_ref().cloned().unwrap_or_default()).as_ref()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the journal never showed {what}: {:?}", journals(kit).get_opt(&journal_name()).await);
}

fn crashable(kit: &Kit, backend: &ScriptedBackend) -> RunningEngine {
    let backend = backend.clone();
    kit.cluster
        .spawn_engine(move |client| {
            Engine::builder(client, NAME, Arc::new(backend)).backoff(quick_backoff()).resync(None).workers(16).build()
        })
        .expect("engine")
}

/// A claim whose provision call has started (and waits): its entry is in the journal.
async fn provision_in_flight() -> (Kit, ScriptedBackend, KitEngine, String) {
    let kit = Kit::new();
    kit.class("gated", "Delete", false).await;
    let backend = ScriptedBackend::new();
    backend.pause();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;
    let created = kit.create_claim(claim(NS, "data").class("gated").build()).await;
    let pv = pv_name(&created);
    backend.wait_until(|s| !s.provision_calls.is_empty()).await.expect("provision called");
    assert_eq!(entries(&kit).await, vec![pv.clone()], "recorded before the backend call");
    (kit, backend, engine, pv)
}

#[tokio::test(start_paused = true)]
async fn a_bound_claim_carries_nothing_of_ours_and_its_entry_leaves_the_journal() {
    let kit = Kit::new();
    kit.class("fast", "Delete", false).await;
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;

    let created = kit.create_claim(claim(NS, "data").class("fast").build()).await;
    let bound = kit.bound("data").await;
    assert!(!bound.finalizers().iter().any(|f| f == keys::INTENT_FINALIZER), "{:?}", bound.finalizers());
    let ours: Vec<&String> = bound.annotations().keys().filter(|k| k.starts_with("provisioner.rs/")).collect();
    assert!(ours.is_empty(), "annotations of ours on the claim: {ours:?}");

    // The entry goes in a later commit (at most the linger of 10 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(entries(&kit).await.is_empty(), "entries left: {:?}", entries(&kit).await);
    assert_eq!(engine.metrics.journal_commits(), 2, "one commit to add the entry, one to remove it");
    // The claim is never written: the PV create and the journal's two commits.
    assert_eq!(engine.metrics.api_writes(), 3, "PV create and two journal commits");
    assert_eq!(backend.created(), 1);
    let _ = created;
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn claims_provisioned_together_share_the_journal_commits() {
    let kit = Kit::new();
    kit.class("fast", "Delete", false).await;
    // A journal write takes as long as a real one under load.
    kit.cluster.set_latency::<ConfigMap>(Some(Verb::Update), Duration::from_millis(50));
    kit.cluster.set_latency::<ConfigMap>(Some(Verb::Create), Duration::from_millis(50));
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b.workers(100)).await;

    let n = 100;
    futures::future::join_all((0..n).map(|i| kit.create_claim(claim(NS, &format!("c{i:03}")).class("fast").build())))
        .await;
    for i in 0..n {
        kit.bound(&format!("c{i:03}")).await;
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    let commits = engine.metrics.journal_commits();
    assert!(commits <= 10, "{commits} journal commits for {n} volumes");
    assert_eq!(engine.metrics.api_writes(), n + commits, "one PV create per volume plus the shared commits");
    assert!(entries(&kit).await.is_empty());
    assert_eq!(backend.created(), n);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_claim_deleted_while_the_engine_was_down_has_its_backend_volume_deleted() {
    let kit = Kit::new();
    kit.class("slow", "Delete", false).await;
    let backend = ScriptedBackend::new();
    backend.script([ProvisionAnswer::CreateThenFail(ProvisionError::in_progress("still creating"))]);
    let mut first = crashable(&kit, &backend);
    first.synced().await;

    let created = kit.create_claim(claim(NS, "data").class("slow").build()).await;
    let pv = pv_name(&created);
    backend.wait_until(|s| s.has(&pv)).await.expect("the backend volume exists");
    first.crash();

    // Nothing of ours holds the claim: it goes at once, with the engine down.
    kit.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    kit.wait_claim("data", "the claim to be gone", |c| c.is_none()).await;
    assert_eq!(entries(&kit).await, vec![pv.clone()], "the journal records the backend volume");

    // The next engine finds the entry, finishes the volume and deletes it.
    let mut second = crashable(&kit, &backend);
    second.synced().await;
    backend.wait_until(|s| !s.has(&pv) && s.deleted == 1).await.expect("the backend volume is deleted");
    kit.volume_gone(&pv).await;
    journal_until(&kit, "no entries", |d| d.is_none_or(|d| d.keys().all(|k| k.starts_with('_')))).await;
    assert_eq!(backend.created(), 1, "one backend volume, never two");
    assert_eq!(backend.deleted(), 1);
    second.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_journal_deleted_by_hand_is_written_again_while_its_entries_are_live() {
    let (kit, backend, engine, pv) = provision_in_flight().await;

    journals(&kit).delete(&journal_name(), &DeleteParams::default()).await.expect("delete the journal");
    journal_until(&kit, "the live entry again", |d| d.is_some_and(|d| d.contains_key(&pv))).await;

    backend.resume();
    kit.bound("data").await;
    assert_eq!(backend.created(), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_journal_edited_by_hand_gets_the_engines_entries_back_and_keeps_the_operators_keys() {
    let (kit, backend, engine, pv) = provision_in_flight().await;

    let patch = json!({ "data": { pv.clone(): null, "operator-note": "checked by hand", "pvc-garbage": "{not json" } });
    journals(&kit).patch(&journal_name(), &PatchParams::default(), &Patch::Merge(&patch)).await.expect("edit");
    journal_until(&kit, "the live entry again", |d| d.is_some_and(|d| d.contains_key(&pv))).await;
    let cm = journals(&kit).get(&journal_name()).await.expect("journal");
    let data = cm.data.unwrap_or_default();
    assert_eq!(data.get("operator-note").map(String::as_str), Some("checked by hand"));
    assert_eq!(data.get("pvc-garbage").map(String::as_str), Some("{not json"), "unreadable keys are kept as they are");

    backend.resume();
    kit.bound("data").await;
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn an_engine_refuses_a_journal_that_belongs_to_another_engine() {
    let kit = Kit::new();
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(journal_name());
    cm.metadata.annotations =
        Some(BTreeMap::from([("provisioner.rs/journal-of".to_string(), "other.example/x".to_string())]));
    journals(&kit).create(&PostParams::default(), &cm).await.expect("create");
    let backend = ScriptedBackend::new();
    let engine = Engine::builder(kit.cluster.client(), NAME, Arc::new(backend)).resync(None).build().expect("engine");
    let result = tokio::time::timeout(default_timeout(), engine.run(CancellationToken::new())).await.expect("returns");
    match result {
        Err(EngineError::Config(msg)) => {
            assert!(msg.contains("belongs to") && msg.contains("other.example/x"), "{msg}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_claim_recorded_by_an_earlier_version_is_finished_and_its_record_removed() {
    let kit = Kit::new();
    kit.class("fast", "Delete", false).await;
    // As 0.1 left it: a finalizer and two annotations on the claim.
    let mut c = claim(NS, "old").class("fast").build();
    c.metadata.finalizers = Some(vec![keys::INTENT_FINALIZER.to_string()]);
    c.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .extend([(keys::INTENT_PROVISIONER.to_string(), NAME.to_string())]);
    let created = kit.create_claim(c).await;
    let pv = pv_name(&created);
    let patch = json!({ "metadata": { "annotations": { keys::INTENT_VOLUME: pv } } });
    kit.claims().patch("old", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("record");
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;
    kit.bound("old").await;
    kit.wait_claim("old", "the record removed", |c| {
        c.is_some_and(|c| !c.finalizers().iter().any(|f| f == keys::INTENT_FINALIZER))
    })
    .await;
    kit.claims().delete("old", &DeleteParams::default()).await.expect("delete");
    kit.wait_claim("old", "the claim to be gone", |c| c.is_none()).await;
    backend.wait_until(|s| s.deleted == 1).await.expect("backend deleted");
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_full_journal_makes_provisions_wait_and_every_claim_binds_as_entries_leave() {
    let kit = Kit::new();
    kit.class("gated", "Delete", false).await;
    let backend = ScriptedBackend::new();
    backend.pause();
    // Room for about two entries.
    let one = journal::encode_entry(&claim(NS, "c0").class("gated").build(), "gated").len() + 80;
    let engine = kit.engine(Arc::new(backend.clone()), |b| b.journal_max_bytes(2 * one + 600).workers(10)).await;
    for i in 0..6 {
        kit.create_claim(claim(NS, &format!("c{i}")).class("gated").build()).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let started = backend.provision_calls().len();
    assert!((1..=3).contains(&started), "{started} provisions started with room for about two entries");
    assert!(engine.metrics_text().contains("provisioner_journal_full_total"), "counted");
    assert!(!engine.metrics_text().contains("provisioner_journal_full_total 0"), "provisions waited");
    backend.resume();
    for i in 0..6 {
        kit.bound(&format!("c{i}")).await;
    }
    assert_eq!(backend.created(), 6);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(entries(&kit).await.is_empty());
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn an_engine_refused_its_journal_stops_with_a_message_naming_what_to_grant() {
    let kit = Kit::new();
    kit.cluster.fail_next::<ConfigMap>(Verb::Get, Fault::Status(403), 1_000);
    let backend = ScriptedBackend::new();
    let engine = Engine::builder(kit.cluster.client(), NAME, Arc::new(backend)).resync(None).build().expect("engine");
    let result = tokio::time::timeout(default_timeout(), engine.run(CancellationToken::new())).await.expect("returns");
    match result {
        Err(EngineError::Config(msg)) => {
            assert!(msg.contains("refused") && msg.contains("configmaps") && msg.contains("default"), "{msg}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn leadership_lost_while_the_journal_is_read_starts_no_work() {
    let kit = Kit::new();
    kit.class("fast", "Delete", false).await;
    kit.create_claim(claim(NS, "data").class("fast").build()).await;
    // Reading the journal at the start of the term is slow (the API server is busy)...
    kit.cluster.set_latency::<ConfigMap>(Some(Verb::Get), Duration::from_secs(5));
    let (leading, leadership) = watch::channel(true);
    let backend = ScriptedBackend::new();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b.leadership(leadership)).await;
    // ... and leadership goes before it is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    leading.send_replace(false);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(backend.provision_calls().is_empty(), "a replica that does not lead called the backend");
    assert!(entries(&kit).await.is_empty(), "a replica that does not lead wrote the journal");
    // Leading again, it does the work.
    leading.send_replace(true);
    kit.bound("data").await;
    assert_eq!(backend.provision_calls().len(), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_backend_is_deleted_only_once_its_journal_entry_is_gone_from_the_server() {
    let kit = Kit::new();
    kit.class("fast", "Delete", false).await;
    let backend = ScriptedBackend::new();
    // Finished entries would otherwise wait a minute for a commit.
    let engine = kit.engine(Arc::new(backend.clone()), |b| b.journal_linger(Duration::from_secs(60))).await;
    let created = kit.create_claim(claim(NS, "data").class("fast").build()).await;
    let pv = pv_name(&created);
    kit.bound("data").await;
    assert_eq!(entries(&kit).await, vec![pv.clone()], "the entry lingers after the PV is saved");
    // The claim goes at once: the volume is released and its backend deleted ...
    kit.claims().delete("data", &DeleteParams::default()).await.expect("delete claim");
    backend.wait_until(|s| s.deleted == 1).await.expect("backend deleted");
    // ... and by then the entry had left the server, long before the linger:
    // a restart now must not provision the volume again.
    assert!(entries(&kit).await.is_empty(), "an entry outlived its backend: {:?}", entries(&kit).await);
    kit.volume_gone(&pv).await;
    assert_eq!(backend.created(), 1);
    engine.stop().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_claim_with_huge_annotations_takes_little_of_the_journal() {
    let kit = Kit::new();
    kit.class("gated", "Delete", false).await;
    let backend = ScriptedBackend::new();
    backend.pause();
    let engine = kit.engine(Arc::new(backend.clone()), |b| b).await;
    let mut c = claim(NS, "big").class("gated").build();
    c.metadata.annotations.get_or_insert_with(Default::default).insert("tenant/blob".into(), "x".repeat(200_000));
    kit.create_claim(c).await;
    backend.wait_until(|s| !s.provision_calls.is_empty()).await.expect("provision called");
    let cm = journals(&kit).get(&journal_name()).await.expect("journal");
    let size: usize = cm.data.unwrap_or_default().iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(size < 20 * 1024, "one claim took {size} bytes of the journal");
    backend.resume();
    kit.bound("big").await;
    engine.stop().await.expect("clean shutdown");
}
