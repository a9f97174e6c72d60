//! What the caches hold and which keys a change queues: the claim, volume
//! and class watches, re-lists, resyncs and the queue-depth gauge.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{trace, warn};

use super::context::{Ctx, claim_ref, decoded_all, strip};
use crate::cache::{self, JsonWriter};
use crate::decision;
use crate::own_writes::Side;

/// How long one watch request lasts before it is renewed from its last
/// resourceVersion (no re-list). The client gives up on a silent watch after
/// the same time plus a margin, so this also bounds how long a watch that
/// died without an error (seen after kube-apiserver restarts) leaves a cache
/// stale. Renewing costs one request per minute per watched kind.
const WATCH_TIMEOUT_SECS: u32 = 60;

fn watch_config(page_size: u32) -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS).page_size(page_size)
}

/// What one cached watch watches: the kind (through its API), the watch's
/// settings, and its name in logs.
struct Feed<K> {
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
}

/// Watches `feed` into `writer` (objects stripped, cached as JSON) and hands
/// every event, decoded, to `handle`.
async fn watch_cached<K>(
    feed: Feed<K>,
    mut writer: JsonWriter<K>,
    mut relist: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    stop: CancellationToken,
    keep: impl Fn(&K) -> bool,
    mut handle: impl FnMut(watcher::Event<K>),
) where
    K: Resource<DynamicType = ()>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + 'static,
{
    let Feed { api, config, what } = feed;
    let start = || Box::pin(watcher(api.clone(), config.clone()).default_backoff().modify(strip));
    let mut stream = start();
    // Asked for a fresh list: answered at the InitDone of a list started after the request.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut vanished = Vec::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            Some(ack) = relist.recv() => {
                waiting.push(ack);
                stream = start();
                continue;
            }
            e = stream.try_next() => e,
        };
        let init_done = matches!(event, Ok(Some(watcher::Event::InitDone)));
        match event {
            Ok(Some(event)) => {
                if tracing::enabled!(tracing::Level::TRACE) {
                    let (kind, obj) = match &event {
                        watcher::Event::Apply(o) => ("apply", Some(o)),
                        watcher::Event::Delete(o) => ("delete", Some(o)),
                        watcher::Event::InitApply(o) => ("init-apply", Some(o)),
                        watcher::Event::Init => ("init", None),
                        watcher::Event::InitDone => ("init-done", None),
                    };
                    let name = obj.map(|o| o.name_any()).unwrap_or_default();
                    let rv = obj.and_then(|o| o.resource_version()).unwrap_or_default();
                    trace!(what, kind, name, rv, "watch event");
                }
                // Into the cache first, as a reflector does, so handlers see
                // it there. Only objects the engine has business with are
                // kept: one that stops being relevant leaves the cache.
                match &event {
                    watcher::Event::Apply(o) if keep(o) => writer.insert(o),
                    watcher::Event::Apply(o) | watcher::Event::Delete(o) => writer.remove(o),
                    watcher::Event::InitApply(o) if keep(o) => writer.init_insert(o),
                    watcher::Event::InitApply(_) => {}
                    watcher::Event::Init => writer.init(),
                    watcher::Event::InitDone => vanished = writer.init_done(),
                }
                handle(event);
                // Objects deleted while the watch was down are gone from the
                // re-list without a deletion event: they get one here, after
                // the re-list's own keys, so their keys are looked at again.
                for gone in vanished.drain(..) {
                    match gone.decode() {
                        Ok(o) => handle(watcher::Event::Delete(o)),
                        Err(e) => warn!(error = %e, "{what} dropped by a re-list does not decode"),
                    }
                }
                if init_done {
                    // The listed objects are in the store and their keys queued.
                    for ack in waiting.drain(..) {
                        let _ = ack.send(());
                    }
                }
            }
            Ok(None) => {
                // A watcher does not end; if it ever did, the cache would
                // silently go stale. Start over from a fresh list.
                warn!("{what} watch ended; starting it again");
                stream = start();
            }
            Err(e) => warn!(error = %e, "{what} watch error; retrying"),
        }
    }
}

/// A re-list in progress on one watch. Its keys are queued at its InitDone,
/// when the store swaps the listed objects in: a worker reading the store
/// earlier would act on the state before the re-list and never look again.
struct Relist {
    side: Side,
    started: Instant,
    keys: Vec<String>,
}

impl Relist {
    fn new(side: Side) -> Relist {
        Relist { side, started: Instant::now(), keys: Vec::new() }
    }

    fn start(&mut self) {
        self.started = Instant::now();
        self.keys.clear();
    }

    fn done(&mut self, ctx: &Ctx) {
        ctx.relisted(self.side, self.started);
        for key in self.keys.drain(..) {
            ctx.queue.add(&key);
        }
    }
}

pub(super) async fn watch_claims(
    ctx: Arc<Ctx>,
    writer: JsonWriter<PersistentVolumeClaim>,
    relist: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    stop: CancellationToken,
) {
    let api: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    let mut listing = Relist::new(Side::Claim);
    let names = ctx.names.clone();
    let keep = move |c: &PersistentVolumeClaim| decision::claim_is_relevant(c, &names);
    let feed = Feed { api, config: watch_config(ctx.config.list_page_size), what: "claim" };
    watch_cached(feed, writer, relist, stop, keep, |event| match event {
        watcher::Event::Apply(c) => {
            ctx.observed(&ctx.key_of_claim(&c), Side::Claim, c.resource_version().as_deref());
            on_claim(&ctx, &c);
        }
        watcher::Event::InitApply(c) => listing.keys.extend(claim_key(&ctx, &c)),
        watcher::Event::Init => listing.start(),
        watcher::Event::InitDone => listing.done(&ctx),
        watcher::Event::Delete(c) => {
            let key = ctx.key_of_claim(&c);
            ctx.observed(&key, Side::Claim, None);
            ctx.state().memory.update(&key, |m| {
                m.claim = None;
                m.warned = None;
            });
            ctx.queue.add(&key);
        }
    })
    .await
}

/// The key of a claim the engine has business with (remembering which
/// claim it names), or `None` for another provisioner's claim or the echo
/// of an own write.
fn claim_key(ctx: &Ctx, claim: &PersistentVolumeClaim) -> Option<String> {
    if !decision::claim_is_relevant(claim, &ctx.names) || ctx.is_echo(claim) {
        return None;
    }
    let key = ctx.key_of_claim(claim);
    ctx.state().memory.update(&key, |m| m.claim = Some(claim_ref(claim)));
    Some(key)
}

fn on_claim(ctx: &Ctx, claim: &PersistentVolumeClaim) {
    if let Some(key) = claim_key(ctx, claim) {
        ctx.queue.add(&key);
    }
}

pub(super) async fn watch_volumes(
    ctx: Arc<Ctx>,
    writer: JsonWriter<PersistentVolume>,
    relist: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    stop: CancellationToken,
) {
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let mut listing = Relist::new(Side::Volume);
    let names = ctx.names.clone();
    let keep = move |v: &PersistentVolume| decision::volume_is_ours(v, &names);
    let feed = Feed { api, config: watch_config(ctx.config.list_page_size), what: "volume" };
    watch_cached(feed, writer, relist, stop, keep, |event| match event {
        watcher::Event::Apply(v) => {
            ctx.observed(&v.name_any(), Side::Volume, v.resource_version().as_deref());
            remember_claim_of(&ctx, &v);
            if decision::volume_is_ours(&v, &ctx.names) && !ctx.is_echo(&v) {
                ctx.queue.add(&v.name_any());
            }
        }
        watcher::Event::InitApply(v) => {
            remember_claim_of(&ctx, &v);
            if decision::volume_is_ours(&v, &ctx.names) && !ctx.is_echo(&v) {
                listing.keys.push(v.name_any());
            }
        }
        watcher::Event::Init => listing.start(),
        watcher::Event::InitDone => {
            listing.done(&ctx);
            // Deletions the re-list skipped over.
            // One volume decoded at a time, and only when there is a mark to check.
            if ctx.state().memory.any_backend_deleted() {
                let uids: HashSet<String> =
                    ctx.volumes.state().iter().filter_map(|c| c.decode().ok()?.metadata.uid).collect();
                ctx.state().memory.retain_backend_deleted(|uid| uids.contains(uid));
            }
        }
        watcher::Event::Delete(v) => {
            ctx.observed(&v.name_any(), Side::Volume, None);
            if decision::volume_is_ours(&v, &ctx.names) {
                ctx.queue.add(&v.name_any());
            }
        }
    })
    .await
}

pub(super) async fn watch_classes(
    ctx: Arc<Ctx>,
    writer: reflector::store::Writer<StorageClass>,
    stop: CancellationToken,
) {
    let api: Api<StorageClass> = Api::all(ctx.client.clone());
    let stream = watcher(api, watch_config(ctx.config.list_page_size)).default_backoff().modify(strip).reflect(writer);
    let mut stream = std::pin::pin!(stream);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.try_next() => e,
        };
        match event {
            Ok(Some(watcher::Event::InitApply(k))) if ctx.names.contains(&k.provisioner) => {
                ctx.metrics.class_seen(&k.name_any());
            }
            Ok(Some(watcher::Event::Apply(k))) => {
                // A new or changed class: its waiting claims go now, and an
                // infeasible claim gets a fresh start.
                let name = k.name_any();
                if ctx.names.contains(&k.provisioner) {
                    ctx.metrics.class_seen(&name);
                }
                for claim in decoded_all(&ctx.claims) {
                    if decision::claim_class(&claim) == Some(name.as_str())
                        && decision::claim_is_relevant(&claim, &ctx.names)
                    {
                        let key = ctx.key_of_claim(&claim);
                        ctx.state().memory.update(&key, |m| {
                            m.failures = 0;
                            m.claim = Some(claim_ref(&claim));
                        });
                        ctx.queue.add(&key);
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => warn!(error = %e, "class watch error; retrying"),
        }
    }
}

/// Volumes name their claim: record it, so the key finds the claim even if
/// the claim carries no annotation of ours any more.
fn remember_claim_of(ctx: &Ctx, volume: &PersistentVolume) {
    if !decision::volume_is_ours(volume, &ctx.names) {
        return;
    }
    if let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
        && let (Some(ns), Some(name)) = (&r.namespace, &r.name)
    {
        ctx.state().memory.update(&volume.name_any(), |m| {
            m.claim.get_or_insert_with(|| cache::key(Some(ns), name));
        });
    }
}

pub(super) fn requeue_all(ctx: &Ctx) {
    for claim in decoded_all(&ctx.claims) {
        on_claim(ctx, &claim);
    }
    for volume in decoded_all(&ctx.volumes) {
        if decision::volume_is_ours(&volume, &ctx.names) {
            ctx.queue.add(&volume.name_any());
        }
    }
}

pub(super) async fn resync(ctx: Arc<Ctx>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => requeue_all(&ctx),
        }
    }
}

pub(super) async fn report_queue(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                ctx.metrics.queue_depth.set((ctx.queue.ready_len() + ctx.queue.delayed_len()) as i64);
            }
        }
    }
}
