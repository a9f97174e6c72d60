//! What the engine keeps of each claim and volume in its caches: the
//! object's JSON, zstd-compressed, in a map by namespace and name; decoded
//! when a worker looks at it.
//!
//! Decoded Kubernetes objects are large. `PersistentVolumeSpec` holds every
//! volume source inline, about 3.4 KB per volume whichever source is set, and
//! every label, annotation or capacity map is a B-tree whose first node takes
//! about 540 bytes however few entries it holds: a decoded claim and volume
//! took about 11 KB of heap. Their JSON (without `managedFields`) is about
//! 1.7 KB, and compressed (zstd level 1, no dictionary) about 60 % of that.
//! A general-purpose reflector store would add, per object, a decoded
//! `ObjectMeta` (360 bytes before its strings) and an `ObjectRef` key (96
//! bytes and four strings); this store keeps one key string and the bytes.
//! Decompressing and decoding one object costs a few microseconds, paid only
//! when a worker reconciles it, which is rare next to the time the object
//! sits in the cache.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// zstd level for cached JSON: level 1 already gets most of the gain on
/// objects of a few hundred bytes to a few kilobytes, at the lowest CPU.
const LEVEL: i32 = 1;

/// An object of kind `K` held as its JSON, zstd-compressed. Cheap to clone
/// (the bytes are shared).
pub struct Cached<K> {
    packed: Arc<[u8]>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Serialize + DeserializeOwned> Cached<K> {
    /// Encodes `object`. An object that cannot be encoded (k8s-openapi types
    /// always can) is kept as one that fails to decode, so the engine never
    /// acts on it rather than act as if it did not exist.
    pub fn new(object: &K) -> Self {
        let packed = serde_json::to_vec(object)
            .ok()
            .and_then(|json| zstd::bulk::compress(&json, LEVEL).ok())
            .unwrap_or_default();
        Cached { packed: packed.into(), kind: PhantomData }
    }

    /// The object as it was cached.
    pub fn decode(&self) -> Result<K, serde_json::Error> {
        let json = zstd::stream::decode_all(&self.packed[..]).map_err(serde_json::Error::io)?;
        serde_json::from_slice(&json)
    }

    /// Bytes the cached form takes for the object itself.
    #[cfg(test)]
    pub fn packed_len(&self) -> usize {
        self.packed.len()
    }
}

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Cached { packed: self.packed.clone(), kind: PhantomData }
    }
}

impl<K: Resource<DynamicType = ()>> fmt::Debug for Cached<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached").field("kind", &K::kind(&())).field("bytes", &self.packed.len()).finish()
    }
}

/// The key of an object in a [`JsonStore`]: `namespace/name`, or `name` for
/// a cluster-scoped object.
pub fn key(namespace: Option<&str>, name: &str) -> Box<str> {
    match namespace.filter(|ns| !ns.is_empty()) {
        Some(ns) => format!("{ns}/{name}").into(),
        None => name.into(),
    }
}

fn key_of<K: Resource>(object: &K) -> Box<str> {
    let meta = object.meta();
    key(meta.namespace.as_deref(), meta.name.as_deref().unwrap_or_default())
}

struct Shared<K> {
    objects: RwLock<HashMap<Box<str>, Cached<K>>>,
    /// Whether the first list is in (the writer holds the sender).
    ready: watch::Receiver<bool>,
}

/// The read side of a cache of objects of kind `K`; clones share it.
pub struct JsonStore<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for JsonStore<K> {
    fn clone(&self) -> Self {
        JsonStore { shared: self.shared.clone() }
    }
}

/// The write side of a [`JsonStore`], fed from one watch. A re-list
/// ([`init`](JsonWriter::init) .. [`init_done`](JsonWriter::init_done))
/// is collected aside and replaces the contents at once at its end, so
/// readers never see half a list.
pub struct JsonWriter<K> {
    shared: Arc<Shared<K>>,
    buffer: Option<HashMap<Box<str>, Cached<K>>>,
    ready: watch::Sender<bool>,
}

/// A new empty cache: its read and write sides.
pub fn store<K>() -> (JsonStore<K>, JsonWriter<K>) {
    let (ready, ready_rx) = watch::channel(false);
    let shared = Arc::new(Shared { objects: RwLock::default(), ready: ready_rx });
    (JsonStore { shared: shared.clone() }, JsonWriter { shared, buffer: None, ready })
}

/// The writer went away before the first list was complete.
#[derive(Debug, thiserror::Error)]
#[error("the cache's writer stopped before the first list was complete")]
pub struct WriterGone;

impl<K> JsonStore<K> {
    /// The object `namespace/name` (`None`: cluster-scoped).
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Cached<K>> {
        self.get_key(&key(namespace, name))
    }

    /// The object under `key` (see [`key`]).
    pub fn get_key(&self, key: &str) -> Option<Cached<K>> {
        self.read().get(key).cloned()
    }

    /// Every object.
    pub fn state(&self) -> Vec<Cached<K>> {
        self.read().values().cloned().collect()
    }

    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether it holds none.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Waits until the first list is in.
    pub async fn wait_until_ready(&self) -> Result<(), WriterGone> {
        let mut ready = self.shared.ready.clone();
        ready.wait_for(|r| *r).await.map(|_| ()).map_err(|_| WriterGone)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, Cached<K>>> {
        self.shared.objects.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl<K: Resource + Serialize + DeserializeOwned> JsonWriter<K> {
    /// Stores `object` (added or changed).
    pub fn insert(&mut self, object: &K) {
        let (k, v) = (key_of(object), Cached::new(object));
        self.write().insert(k, v);
    }

    /// Forgets `object` (deleted, or no longer of interest).
    pub fn remove(&mut self, object: &K) {
        self.write().remove(&key_of(object));
    }

    /// A re-list starts.
    pub fn init(&mut self) {
        self.buffer = Some(HashMap::new());
    }

    /// One object of the re-list.
    pub fn init_insert(&mut self, object: &K) {
        self.buffer.get_or_insert_with(HashMap::new).insert(key_of(object), Cached::new(object));
    }

    /// The re-list is complete: it replaces the contents. Returns the
    /// objects it dropped: deleted while the watch was down, they get no
    /// deletion event of their own.
    pub fn init_done(&mut self) -> Vec<Cached<K>> {
        let mut listed = self.buffer.take().unwrap_or_default();
        listed.shrink_to_fit();
        let before = std::mem::replace(&mut *self.write(), listed);
        self.ready.send_replace(true);
        let now = self.shared.objects.read().unwrap_or_else(|p| p.into_inner());
        before.into_iter().filter(|(k, _)| !now.contains_key(k)).map(|(_, v)| v).collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, Cached<K>>> {
        self.shared.objects.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_object_decodes_to_itself() {
        use crate::testing::fixtures::{claim, volume};
        let pv = volume("pvc-u1", "example.com/x", &claim("ns", "data").as_stored("u1").build()).build();
        let (volumes, mut writer) = store();
        writer.insert(&pv);
        assert_eq!(volumes.get(None, "pvc-u1").expect("stored").decode().expect("decodes"), pv);
        assert_eq!(Cached::new(&pv).decode().expect("decodes"), pv);
    }
    use crate::testing::fixtures::{claim, volume};
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

    #[test]
    fn a_cached_object_decodes_to_the_same_object() {
        let c = claim("ns", "data").as_stored("u1").class("fast").request("5Gi").provisioner("example.com/x").build();
        assert_eq!(Cached::new(&c).decode().expect("decodes"), c);
        let v = volume("pvc-u1", "example.com/x", &c).phase("Released").build();
        assert_eq!(Cached::new(&v).decode().expect("decodes"), v);
    }

    #[test]
    fn a_cached_volume_takes_less_than_its_json() {
        let c = claim("ns", "data")
            .as_stored("0b7c2e34-6f1d-4a57-9d3e-8f2a1c5b7e90")
            .class("fast")
            .request("5Gi")
            .provisioner("example.com/x")
            .build();
        let v = volume("pvc-0b7c2e34-6f1d-4a57-9d3e-8f2a1c5b7e90", "example.com/x", &c).phase("Bound").build();
        let json = serde_json::to_vec(&v).expect("encodes").len();
        let packed = Cached::new(&v).packed_len();
        assert!(packed * 10 < json * 7, "{packed} bytes cached for {json} bytes of JSON");
    }

    #[test]
    fn objects_are_found_by_namespace_and_name() {
        let (claims, mut writer) = store::<PersistentVolumeClaim>();
        let c = claim("ns", "data").as_stored("u1").build();
        writer.insert(&c);
        assert_eq!(claims.get(Some("ns"), "data").expect("cached").decode().expect("decodes"), c);
        assert_eq!(
            claims.get_key("ns/data").map(|c| c.packed_len()),
            claims.get(Some("ns"), "data").map(|c| c.packed_len())
        );
        assert!(claims.get(Some("other"), "data").is_none());
        writer.remove(&c);
        assert!(claims.get(Some("ns"), "data").is_none());
        assert!(claims.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_contents_only_when_complete() {
        let (volumes, mut writer) = store::<PersistentVolume>();
        let c = claim("ns", "data").as_stored("u1").build();
        let old = volume("pvc-old", "example.com/x", &c).build();
        let new = volume("pvc-new", "example.com/x", &c).build();
        writer.insert(&old);
        writer.init();
        writer.init_insert(&new);
        assert!(volumes.get(None, "pvc-old").is_some(), "readers see the old contents during the re-list");
        assert!(volumes.get(None, "pvc-new").is_none());
        let dropped = writer.init_done();
        let dropped: Vec<String> = dropped.iter().filter_map(|c| c.decode().ok()?.metadata.name).collect();
        assert_eq!(dropped, ["pvc-old"], "the re-list says what it dropped (deleted while the watch was down)");
        assert!(volumes.get(None, "pvc-old").is_none(), "what the re-list did not show is gone");
        assert!(volumes.get(None, "pvc-new").is_some());
        assert_eq!(volumes.len(), 1);
    }

    #[tokio::test]
    async fn the_store_is_ready_after_the_first_list() {
        let (volumes, mut writer) = store::<PersistentVolume>();
        writer.init();
        let waiting = tokio::spawn({
            let volumes = volumes.clone();
            async move { volumes.wait_until_ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        writer.init_done();
        waiting.await.expect("joined").expect("ready");
        drop(writer);
        volumes.wait_until_ready().await.expect("still ready after the writer is gone");
        let (never, writer) = store::<PersistentVolume>();
        drop(writer);
        assert!(never.wait_until_ready().await.is_err(), "a writer gone before its first list is an error");
    }

    #[test]
    fn bytes_that_do_not_decode_are_an_error_not_an_empty_object() {
        let mut cached =
            Cached::new(&volume("pvc-u1", "example.com/x", &claim("ns", "data").as_stored("u1").build()).build());
        cached.packed = Vec::new().into();
        assert!(Cached::<PersistentVolume>::decode(&cached).is_err(), "nothing cached");
        cached.packed = zstd::bulk::compress(b"{\"spec\":", LEVEL).expect("compresses").into();
        assert!(Cached::<PersistentVolume>::decode(&cached).is_err(), "cut-off JSON");
        cached.packed = b"not zstd".to_vec().into();
        assert!(Cached::<PersistentVolume>::decode(&cached).is_err(), "not compressed");
    }
}
