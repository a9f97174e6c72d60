//! What the engine keeps of each claim and volume in its caches: the
//! object's JSON, decoded when a worker looks at it.
//!
//! Decoded Kubernetes objects are large. `PersistentVolumeSpec` holds every
//! volume source inline, about 3.4 KB per volume whichever source is set, and
//! every label, annotation or capacity map is a B-tree whose first node takes
//! about 540 bytes however few entries it holds. Measured with heaptrack on
//! an engine caching 10,000 bound claims and their volumes, the decoded pair
//! took about 11 KB of heap; its JSON (without `managedFields`) is about 3 KB.
//! Decoding one object costs a few microseconds, paid only when a worker
//! reconciles it, which is rare next to the time the object sits in the cache.
//!
//! Only what identifies the object (name, namespace, uid, resourceVersion) is
//! kept decoded, for the cache's index.
//!
//! ```
//! use provisioner_core::cache::Cached;
//! use provisioner_core::fixtures::{claim, volume};
//! let pv = volume("pvc-u1", "example.com/x", &claim("ns", "data", "u1").build()).build();
//! let cached = Cached::new(&pv);
//! assert_eq!(cached.decode().unwrap(), pv);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use kube::Resource;
use kube::api::ObjectMeta;
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An object of kind `K` held as its JSON. Cheap to clone (the JSON is shared).
pub struct Cached<K> {
    metadata: ObjectMeta,
    json: Arc<str>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Resource + Serialize + DeserializeOwned> Cached<K> {
    /// Encodes `object`. An object that cannot be encoded (k8s-openapi types
    /// always can) is kept as one that fails to decode, so the engine never
    /// acts on it rather than act as if it did not exist.
    pub fn new(object: &K) -> Self {
        let meta = object.meta();
        Cached {
            metadata: ObjectMeta {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                ..ObjectMeta::default()
            },
            json: serde_json::to_string(object).unwrap_or_default().into(),
            kind: PhantomData,
        }
    }

    /// The object as it was cached.
    pub fn decode(&self) -> Result<K, serde_json::Error> {
        serde_json::from_str(&self.json)
    }

    /// A watch event about `K` as the same event about its cached form.
    pub fn event(event: &watcher::Event<K>) -> watcher::Event<Cached<K>> {
        match event {
            watcher::Event::Apply(o) => watcher::Event::Apply(Cached::new(o)),
            watcher::Event::Delete(o) => watcher::Event::Delete(Cached::new(o)),
            watcher::Event::InitApply(o) => watcher::Event::InitApply(Cached::new(o)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitDone => watcher::Event::InitDone,
        }
    }
}

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Cached { metadata: self.metadata.clone(), json: self.json.clone(), kind: PhantomData }
    }
}

impl<K: Resource<DynamicType = ()>> fmt::Debug for Cached<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("kind", &K::kind(&()))
            .field("name", &self.metadata.name)
            .field("namespace", &self.metadata.namespace)
            .field("resource_version", &self.metadata.resource_version)
            .field("bytes", &self.json.len())
            .finish()
    }
}

/// The cached form is indexed like the kind itself.
impl<K: Resource<DynamicType = ()>> Resource for Cached<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{claim, volume};
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use kube::ResourceExt;
    use kube::runtime::reflector::{self, ObjectRef};

    #[test]
    fn a_cached_object_decodes_to_the_same_object() {
        let c = claim("ns", "data", "u1").class("fast").request("5Gi").provisioner("example.com/x").build();
        assert_eq!(Cached::new(&c).decode().expect("decodes"), c);
        let v = volume("pvc-u1", "example.com/x", &c).phase("Released").build();
        assert_eq!(Cached::new(&v).decode().expect("decodes"), v);
    }

    #[test]
    fn only_the_identity_is_kept_decoded() {
        let c = claim("ns", "data", "u1").provisioner("example.com/x").build();
        let cached = Cached::new(&c);
        assert_eq!(cached.meta().name.as_deref(), Some("data"));
        assert_eq!(cached.meta().namespace.as_deref(), Some("ns"));
        assert_eq!(cached.meta().uid.as_deref(), Some("u1"));
        assert!(cached.annotations().is_empty(), "annotations live in the JSON only");
    }

    #[test]
    fn a_store_of_cached_objects_is_indexed_like_the_kind() {
        let (store, mut writer) = reflector::store::<Cached<PersistentVolumeClaim>>();
        let c = claim("ns", "data", "u1").build();
        writer.apply_watcher_event(&Cached::event(&watcher::Event::Apply(c.clone())));
        let found = store.get(&ObjectRef::new("data").within("ns")).expect("cached");
        assert_eq!(found.decode().expect("decodes"), c);
        writer.apply_watcher_event(&Cached::event(&watcher::Event::Delete(c)));
        assert!(store.get(&ObjectRef::new("data").within("ns")).is_none());
    }

    #[test]
    fn json_that_does_not_decode_is_an_error_not_an_empty_object() {
        let mut cached = Cached::new(&volume("pvc-u1", "example.com/x", &claim("ns", "data", "u1").build()).build());
        cached.json = "".into();
        assert!(Cached::<PersistentVolume>::decode(&cached).is_err());
    }
}
