//! The fake cluster's state: objects as JSON, one global resourceVersion
//! counter, a bounded history of changes for watches, and the write rules
//! of the API server (conflicts, preconditions, finalizers, `/status`).
//!
//! Everything here is synchronous; the HTTP shell in `server.rs` and the
//! binder call it under one lock, so every write is atomic and ordered.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::validation::{self, FieldError};

/// One kind of object the fake serves.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct KindInfo {
    pub plural: &'static str,
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `/status` subresource: writes to the object keep its status,
    /// writes to `/status` change only the status.
    pub status: bool,
    /// Kinds with the same storage share objects (the two event APIs).
    pub storage: &'static str,
}

impl KindInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The `events.k8s.io/v1` view of the shared event storage.
    fn is_new_event(&self) -> bool {
        self.group == "events.k8s.io"
    }

    /// `persistentvolumeclaims` or `leases.coordination.k8s.io`, as in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }
}

const fn kind(
    plural: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
    storage: &'static str,
) -> KindInfo {
    KindInfo { plural, group, version, kind, namespaced, status, storage }
}

pub(crate) const PVC: KindInfo =
    kind("persistentvolumeclaims", "", "v1", "PersistentVolumeClaim", true, true, "persistentvolumeclaims");
pub(crate) const PV: KindInfo =
    kind("persistentvolumes", "", "v1", "PersistentVolume", false, true, "persistentvolumes");
pub(crate) const CLASS: KindInfo =
    kind("storageclasses", "storage.k8s.io", "v1", "StorageClass", false, false, "storageclasses");
pub(crate) const CORE_EVENT: KindInfo = kind("events", "", "v1", "Event", true, false, "events");
pub(crate) const EVENT: KindInfo = kind("events", "events.k8s.io", "v1", "Event", true, false, "events");
pub(crate) const LEASE: KindInfo = kind("leases", "coordination.k8s.io", "v1", "Lease", true, false, "leases");
pub(crate) const NODE: KindInfo = kind("nodes", "", "v1", "Node", false, true, "nodes");
pub(crate) const NAMESPACE: KindInfo = kind("namespaces", "", "v1", "Namespace", false, true, "namespaces");
pub(crate) const CONFIGMAP: KindInfo = kind("configmaps", "", "v1", "ConfigMap", true, false, "configmaps");

pub(crate) const KINDS: &[&KindInfo] = &[&PVC, &PV, &CLASS, &CORE_EVENT, &EVENT, &LEASE, &NODE, &NAMESPACE, &CONFIGMAP];

/// Finds the kind served at `group/version/plural`.
pub(crate) fn find_kind(group: &str, version: &str, plural: &str) -> Option<&'static KindInfo> {
    KINDS.iter().copied().find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// An API error, answered as a Kubernetes `Status`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ApiError { code, reason: reason_for(code), message: message.into(), details: json!({}) }
    }
    pub fn about(mut self, kind: &KindInfo, name: &str) -> Self {
        self.details = json!({ "name": name, "kind": kind.plural });
        if !kind.group.is_empty() {
            self.details["group"] = json!(kind.group);
        }
        self
    }
    pub fn not_found(kind: &KindInfo, name: &str) -> Self {
        Self::new(404, format!("{} \"{name}\" not found", kind.qualified())).about(kind, name)
    }
    pub fn conflict(kind: &KindInfo, name: &str) -> Self {
        Self::new(
            409,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your \
                 changes to the latest version and try again",
                kind.qualified()
            ),
        )
        .about(kind, name)
    }
    pub fn invalid(kind: &KindInfo, name: &str, message: impl Into<String>) -> Self {
        Self::new(422, message).about(kind, name)
    }
    /// `422 Invalid` for `errors` in the object `name`, with one cause per error.
    pub fn invalid_fields(kind: &KindInfo, name: &str, errors: &[FieldError]) -> Self {
        let causes: Vec<Value> =
            errors.iter().map(|e| json!({ "reason": e.reason(), "message": e.body(), "field": e.field })).collect();
        let mut details = json!({ "name": name, "kind": kind.kind, "causes": causes });
        if !kind.group.is_empty() {
            details["group"] = json!(kind.group);
        }
        ApiError { code: 422, reason: "Invalid", message: validation::invalid_message(kind, name, errors), details }
    }
    /// `409 Conflict` for a delete whose precondition does not hold.
    pub fn precondition_failed(kind: &KindInfo, name: &str, why: String) -> Self {
        let mut details = json!({ "name": name, "kind": kind.kind });
        if !kind.group.is_empty() {
            details["group"] = json!(kind.group);
        }
        let message = format!("Operation cannot be fulfilled on {} \"{name}\": {why}", kind.kind);
        ApiError { code: 409, reason: "Conflict", message, details }
    }
    /// `403 Forbidden` from an admission plugin of the real server.
    pub fn forbidden(kind: &KindInfo, name: &str, why: &str) -> Self {
        Self::new(403, format!("{} \"{name}\" is forbidden: {why}", kind.qualified())).about(kind, name)
    }
    /// What the real server answers to a create that carries a resourceVersion:
    /// its storage refuses the write, and the error reaches the client as a
    /// `500` without a reason.
    pub fn resource_version_on_create() -> Self {
        ApiError {
            code: 500,
            reason: "",
            message: "resourceVersion should not be set on objects to be created".into(),
            details: Value::Null,
        }
    }
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "code": self.code,
        });
        if !self.reason.is_empty() {
            status["reason"] = json!(self.reason);
        }
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

/// The `reason` the API server gives with a status code.
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// What a write did to an object, as a watch event says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeType {
    /// Created it (`ADDED`).
    Added,
    /// Changed it (`MODIFIED`), including setting its `deletionTimestamp`.
    Modified,
    /// Removed it (`DELETED`).
    Deleted,
}

impl ChangeType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One committed write, as watches replay it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub rv: u64,
    /// When it landed, by the Tokio clock.
    pub at: Instant,
    pub storage: &'static str,
    pub namespace: String,
    pub type_: ChangeType,
    /// The object after the write (before it, for a deletion).
    pub object: Value,
    /// The object before the write, for selector transitions.
    pub old: Option<Value>,
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The object: the status is kept for kinds with a status subresource.
    Main,
    /// `/status`: only the status changes.
    Status,
}

/// What a delete did.
pub(crate) enum Deleted {
    /// The object is gone; this was its last state.
    Gone(Value),
    /// Finalizers hold it; this is it, now carrying `deletionTimestamp`.
    Pending(Value),
}

type Key = (&'static str, String, String);

/// The objects, the resourceVersion counter and the change history.
pub(crate) struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Change>,
    pub history_limit: usize,
    /// Changes up to this resourceVersion have been forgotten: a watch from
    /// before it gets `410 Gone`.
    pub compacted: u64,
    counter: u64,
    started_at: (i64, Instant),
    /// Add the storage-object-in-use protection finalizers on create (the
    /// admission plugin of a real API server; on with the binder).
    pub protection: bool,
}

/// Claims get it at creation (admission); the binder removes it when unused.
pub(crate) const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Volumes get it at creation (admission); the binder removes it when unbound.
pub(crate) const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let wall = k8s_openapi::jiff::Timestamp::now().as_second();
        Store {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_limit,
            compacted: 0,
            counter: 0,
            started_at: (wall, Instant::now()),
            protection: false,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Now, by the Tokio clock (so paused time gives stable timestamps).
    pub fn now(&self) -> String {
        let (wall, at) = self.started_at;
        let secs = wall + i64::try_from(at.elapsed().as_secs()).unwrap_or(0);
        k8s_openapi::jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_default()
    }

    fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// The stored object, in the shape `kind` serves it.
    pub fn get(&self, kind: &KindInfo, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&(kind.storage, ns.to_string(), name.to_string()))
            .map(|o| view(kind, o.clone()))
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// Objects of `kind` (in `ns`, or everywhere for `None`) matching `filter`.
    pub fn list(&self, kind: &KindInfo, ns: Option<&str>, filter: &Filter) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((s, n, _), _)| *s == kind.storage && ns.is_none_or(|ns| ns == n))
            .map(|(_, o)| view(kind, o.clone()))
            .filter(|o| filter.matches(o))
            .collect()
    }

    /// Changes after `rv` of `kind`'s storage, or `None` if some were forgotten.
    pub fn changes_since(&self, kind: &KindInfo, rv: u64) -> Option<Vec<Change>> {
        if rv < self.compacted {
            return None;
        }
        let start = self.history.partition_point(|c| c.rv <= rv);
        Some(
            self.history
                .range(start..)
                .filter(|c| c.storage == kind.storage)
                .map(|c| Change {
                    object: view(kind, c.object.clone()),
                    old: c.old.clone().map(|o| view(kind, o)),
                    ..c.clone()
                })
                .collect(),
        )
    }

    /// Forgets all history: watches resuming from any earlier resourceVersion get `410 Gone`.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Creates `body` in `ns`, checked as the real server checks a create:
    /// the namespace (`400`), validation (`422`), a resourceVersion set by
    /// the client (`500`), then a name already taken (`409 AlreadyExists`).
    pub fn create(&mut self, kind: &KindInfo, ns: &str, body: Value) -> Result<Value, ApiError> {
        let mut obj = from_view(kind, check_shape(kind, body)?);
        let meta = obj["metadata"].as_object_mut().ok_or_else(|| ApiError::new(400, "metadata must be an object"))?;
        let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or_default();
        if kind.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::new(
                400,
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        // Only a positive number counts as set: the real storage ignores
        // "0" and text that is not a number.
        let client_rv = meta.get("resourceVersion").and_then(Value::as_str).and_then(|rv| rv.parse::<u64>().ok());
        let mut name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if name.is_empty() {
            let prefix = meta.get("generateName").and_then(Value::as_str).unwrap_or_default().to_string();
            if !prefix.is_empty() {
                name = format!("{prefix}{}", suffix(self.counter + 1));
            }
        }
        let meta = obj["metadata"].as_object_mut().ok_or_else(|| ApiError::new(400, "metadata must be an object"))?;
        meta.insert("name".into(), json!(name));
        if kind.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        // What the server sets, whatever the client sent.
        for k in ["uid", "deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "managedFields"] {
            meta.remove(k);
        }
        defaults(kind, &mut obj);
        let errors = validation::validate(kind, &obj);
        if !errors.is_empty() {
            return Err(ApiError::invalid_fields(kind, &name, &errors));
        }
        if client_rv.is_some_and(|rv| rv != 0) {
            return Err(ApiError::resource_version_on_create());
        }
        let key = (kind.storage, ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(409, format!("{} \"{name}\" already exists", kind.qualified()))
                .about(kind, &name)
                .with_reason("AlreadyExists"));
        }
        let id = self.next_id();
        let now = self.now();
        obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{id:012x}"));
        obj["metadata"]["creationTimestamp"] = json!(now);
        defaults_on_create(kind, &mut obj, self.protection);
        self.commit(kind, ns, &name, Some(obj), None)
    }

    /// A PUT of `new` over the current object: as [`Store::update`], after
    /// the precondition a PUT carries, the uid in its body (`409` when it is
    /// not the object's).
    pub fn replace(
        &mut self,
        kind: &KindInfo,
        ns: &str,
        name: &str,
        new: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let key = (kind.storage, ns.to_string(), name.to_string());
        let current = self.objects.get(&key).ok_or_else(|| ApiError::not_found(kind, name))?;
        let uid = new["metadata"]["uid"].as_str().unwrap_or_default();
        let current_uid = current["metadata"]["uid"].as_str().unwrap_or_default();
        if !uid.is_empty() && uid != current_uid {
            let path = if kind.namespaced {
                format!("{}/{ns}/{name}", kind.storage)
            } else {
                format!("{}/{name}", kind.storage)
            };
            return Err(ApiError::new(
                409,
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": StorageError: invalid object, Code: 4, Key: \
                     /registry/{path}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: UID in \
                     precondition: {uid}, UID in object meta: {current_uid}",
                    kind.qualified()
                ),
            )
            .about(kind, name));
        }
        self.update(kind, ns, name, new, part)
    }

    /// Writes `new` over the current object (an update, or the result of a patch).
    pub fn update(&mut self, kind: &KindInfo, ns: &str, name: &str, new: Value, part: Part) -> Result<Value, ApiError> {
        let key = (kind.storage, ns.to_string(), name.to_string());
        let current = self.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(kind, name))?;
        let new = from_view(kind, check_shape(kind, new)?);
        let body_name = new["metadata"]["name"].as_str().unwrap_or_default();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::new(
                400,
                format!("the name of the object ({body_name}) does not match the name on the URL ({name})"),
            ));
        }
        let body_ns = new["metadata"]["namespace"].as_str().unwrap_or_default();
        if kind.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::new(
                400,
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let rv = new["metadata"]["resourceVersion"].as_str().unwrap_or_default();
        if !rv.is_empty() && Some(rv) != current["metadata"]["resourceVersion"].as_str() {
            return Err(ApiError::conflict(kind, name));
        }
        let mut next = match part {
            Part::Status => {
                let mut next = current.clone();
                set_or_remove(&mut next, "status", new.get("status").cloned());
                next
            }
            Part::Main => {
                let mut next = new;
                if kind.status {
                    set_or_remove(&mut next, "status", current.get("status").cloned());
                }
                // What clients cannot change; a uid other than the object's
                // is refused below, an empty one means the object's.
                if next["metadata"]["uid"].as_str().is_none_or(str::is_empty) {
                    set_or_remove_meta(&mut next, "uid", current["metadata"].get("uid").cloned());
                }
                for k in ["creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "name", "namespace"] {
                    set_or_remove_meta(&mut next, k, current["metadata"].get(k).cloned());
                }
                defaults(kind, &mut next);
                next
            }
        };
        set_or_remove_meta(&mut next, "resourceVersion", current["metadata"].get("resourceVersion").cloned());
        if let Some(m) = next["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        let errors = validation::validate_update(kind, &current, &next);
        if !errors.is_empty() {
            return Err(ApiError::invalid_fields(kind, name, &errors));
        }
        if part == Part::Main
            && *kind == PVC
            && let Err(why) = validation::admit_resize(&current, &next, |class| self.get(&CLASS, "", class).ok())
        {
            return Err(ApiError::forbidden(kind, name, why));
        }
        if next == current {
            // A no-op write changes nothing, not even the resourceVersion.
            return Ok(view(kind, current));
        }
        let deleting = next["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null());
        if deleting && finalizers(&next).is_empty() {
            // The last finalizer went: the object goes with it.
            self.remove(kind, ns, name, next.clone());
            return Ok(view(kind, next));
        }
        self.commit(kind, ns, name, Some(next), Some(current))
    }

    pub fn delete(
        &mut self,
        kind: &KindInfo,
        ns: &str,
        name: &str,
        uid: Option<&str>,
        rv: Option<&str>,
    ) -> Result<Deleted, ApiError> {
        let key = (kind.storage, ns.to_string(), name.to_string());
        let current = self.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(kind, name))?;
        let meta = &current["metadata"];
        if let Some(uid) = uid.filter(|u| !u.is_empty())
            && meta["uid"].as_str() != Some(uid)
        {
            return Err(ApiError::precondition_failed(
                kind,
                name,
                format!(
                    "the UID in the precondition ({uid}) does not match the UID in record ({}). The object might \
                     have been deleted and then recreated",
                    meta["uid"].as_str().unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = rv.filter(|r| !r.is_empty())
            && meta["resourceVersion"].as_str() != Some(rv)
        {
            return Err(ApiError::precondition_failed(
                kind,
                name,
                format!(
                    "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record \
                     ({}). The object might have been modified",
                    meta["resourceVersion"].as_str().unwrap_or_default()
                ),
            ));
        }
        if finalizers(&current).is_empty() {
            self.remove(kind, ns, name, current.clone());
            return Ok(Deleted::Gone(view(kind, current)));
        }
        if meta.get("deletionTimestamp").is_some_and(|t| !t.is_null()) {
            return Ok(Deleted::Pending(view(kind, current)));
        }
        let mut next = current.clone();
        let now = self.now();
        if let Some(m) = next["metadata"].as_object_mut() {
            m.insert("deletionTimestamp".into(), json!(now));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        self.commit(kind, ns, name, Some(next), Some(current)).map(Deleted::Pending)
    }

    fn remove(&mut self, kind: &KindInfo, ns: &str, name: &str, mut last: Value) {
        self.objects.remove(&(kind.storage, ns.to_string(), name.to_string()));
        self.rv += 1;
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(kind, ns, ChangeType::Deleted, last, None);
    }

    fn commit(
        &mut self,
        kind: &KindInfo,
        ns: &str,
        name: &str,
        obj: Option<Value>,
        old: Option<Value>,
    ) -> Result<Value, ApiError> {
        let Some(mut obj) = obj else { return Err(ApiError::new(500, "nothing to commit")) };
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let type_ = if old.is_some() { ChangeType::Modified } else { ChangeType::Added };
        self.objects.insert((kind.storage, ns.to_string(), name.to_string()), obj.clone());
        self.record(kind, ns, type_, obj.clone(), old);
        Ok(view(kind, obj))
    }

    fn record(&mut self, kind: &KindInfo, ns: &str, type_: ChangeType, object: Value, old: Option<Value>) {
        self.history.push_back(Change {
            rv: self.rv,
            at: Instant::now(),
            storage: kind.storage,
            namespace: ns.to_string(),
            type_,
            object,
            old,
        });
        while self.history.len() > self.history_limit {
            if let Some(c) = self.history.pop_front() {
                self.compacted = c.rv;
            }
        }
    }

    /// All stored objects of a storage in canonical shape (for the binder).
    pub fn all(&self, kind: &KindInfo) -> Vec<Value> {
        self.objects.iter().filter(|((s, _, _), _)| *s == kind.storage).map(|(_, o)| o.clone()).collect()
    }

    /// Changes the object with `f` as a controller would (no conflicts),
    /// returning whether anything changed.
    pub fn modify(&mut self, kind: &KindInfo, ns: &str, name: &str, part: Part, f: impl FnOnce(&mut Value)) -> bool {
        let Ok(current) = self.get(kind, ns, name) else { return false };
        let mut next = current.clone();
        f(&mut next);
        if next == current {
            return false;
        }
        self.update(kind, ns, name, next, part).is_ok()
    }

    /// Creates an object as a controller would, with a generated name.
    pub fn create_quietly(&mut self, kind: &KindInfo, ns: &str, obj: Value) {
        if let Err(e) = self.create(kind, ns, obj) {
            tracing::debug!(error = ?e, "the fake cluster could not create an object");
        }
    }
}

impl ApiError {
    fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = reason;
        self
    }
}

/// A lowercase suffix for `generateName`, from a counter (deterministic).
fn suffix(n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = n.wrapping_mul(2_654_435_761) % 27u64.pow(5);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % 27) as usize] as char;
            n /= 27;
            c
        })
        .collect()
}

/// Checks `kind`/`apiVersion` and gives the object its type and a metadata map.
fn check_shape(kind: &KindInfo, mut body: Value) -> Result<Value, ApiError> {
    let Some(map) = body.as_object_mut() else { return Err(ApiError::new(400, "the body must be a JSON object")) };
    let api_version = kind.api_version();
    for (field, want) in [("kind", kind.kind), ("apiVersion", api_version.as_str())] {
        match map.get(field).and_then(Value::as_str) {
            None | Some("") => {
                map.insert(field.into(), json!(want));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::new(
                    400,
                    format!("the API version or kind in the body ({got}) does not match the URL ({want})"),
                ));
            }
        }
    }
    if !map.get("metadata").is_some_and(Value::is_object) {
        map.insert("metadata".into(), Value::Object(Map::new()));
    }
    Ok(body)
}

fn set_or_remove(obj: &mut Value, field: &str, value: Option<Value>) {
    if let Some(map) = obj.as_object_mut() {
        match value {
            Some(v) => {
                map.insert(field.into(), v);
            }
            None => {
                map.remove(field);
            }
        }
    }
}

fn set_or_remove_meta(obj: &mut Value, field: &str, value: Option<Value>) {
    set_or_remove(&mut obj["metadata"], field, value);
}

/// The object's finalizers.
pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The defaults the real server fills in whenever it decodes an object (on
/// creates, updates and the results of patches alike).
fn defaults(kind: &KindInfo, obj: &mut Value) {
    if *kind == PVC || *kind == PV {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        if obj["spec"]["volumeMode"].is_null() {
            obj["spec"]["volumeMode"] = json!("Filesystem");
        }
    }
    if *kind == PV && obj["spec"]["persistentVolumeReclaimPolicy"].is_null() {
        obj["spec"]["persistentVolumeReclaimPolicy"] = json!("Retain");
    }
    if *kind == CLASS {
        if obj["reclaimPolicy"].is_null() {
            obj["reclaimPolicy"] = json!("Delete");
        }
        if obj["volumeBindingMode"].is_null() {
            obj["volumeBindingMode"] = json!("Immediate");
        }
    }
}

/// What only a create sets: the first status, and the protection finalizers
/// the real server's admission adds.
fn defaults_on_create(kind: &KindInfo, obj: &mut Value, protection: bool) {
    let add_finalizer = |obj: &mut Value, f: &str| {
        let mut list = finalizers(obj);
        if !list.iter().any(|x| x == f) {
            list.push(f.to_string());
            obj["metadata"]["finalizers"] = json!(list);
        }
    };
    if *kind == PVC {
        obj["status"] = json!({ "phase": "Pending" });
        if protection {
            add_finalizer(obj, PVC_PROTECTION);
        }
    } else if *kind == PV {
        obj["status"] = json!({ "phase": "Pending" });
        if protection {
            add_finalizer(obj, PV_PROTECTION);
        }
    } else if *kind == NAMESPACE {
        obj["spec"] = json!({ "finalizers": ["kubernetes"] });
        obj["status"] = json!({ "phase": "Active" });
    }
}

/// Field renames between a core/v1 Event (how events are stored) and an
/// events.k8s.io/v1 Event.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("source", "deprecatedSource"),
    ("reportingComponent", "reportingController"),
];

fn rename_fields(obj: &mut Value, to_new: bool, api_version: &str) {
    let Some(map) = obj.as_object_mut() else { return };
    for (old, new) in EVENT_FIELDS {
        let (from, to) = if to_new { (old, new) } else { (new, old) };
        if let Some(v) = map.remove(*from) {
            map.insert((*to).to_string(), v);
        }
    }
    map.insert("apiVersion".into(), json!(api_version));
}

/// A stored object as `kind` serves it.
fn view(kind: &KindInfo, mut obj: Value) -> Value {
    if kind.is_new_event() {
        rename_fields(&mut obj, true, "events.k8s.io/v1");
    }
    obj
}

/// An object written through `kind`, as it is stored.
fn from_view(kind: &KindInfo, mut obj: Value) -> Value {
    if kind.is_new_event() {
        rename_fields(&mut obj, false, "v1");
    }
    obj
}

/// Label and field selectors of a list or watch.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    labels: Vec<Requirement>,
    fields: Vec<(String, bool, String)>,
}

#[derive(Clone, Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Filter {
    /// Parses `labelSelector` and `fieldSelector`.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Filter, ApiError> {
        let mut filter = Filter::default();
        for term in split_terms(labels.unwrap_or_default()) {
            filter.labels.push(parse_requirement(&term)?);
        }
        for term in fields.unwrap_or_default().split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, eq, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                return Err(ApiError::new(400, format!("invalid field selector: {term}")));
            };
            filter.fields.push((path.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(filter)
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|(path, eq, want)| {
                let mut at = obj;
                for part in path.split('.') {
                    at = &at[part];
                }
                let got = match at {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (got == *want) == *eq
            })
    }
}

/// Splits a label selector at commas outside parentheses.
fn split_terms(s: &str) -> Vec<String> {
    let (mut terms, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    terms.push(cur);
    terms.into_iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
}

fn parse_requirement(term: &str) -> Result<Requirement, ApiError> {
    let set = |rest: &str| -> Result<Vec<String>, ApiError> {
        let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')'));
        inner
            .map(|i| i.split(',').map(|v| v.trim().to_string()).collect())
            .ok_or_else(|| ApiError::new(400, format!("unable to parse requirement: {term}")))
    };
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, rest)) = term.split_once(" notin ") {
        return Ok(Requirement::NotIn(k.trim().into(), set(rest)?));
    }
    if let Some((k, rest)) = term.split_once(" in ") {
        return Ok(Requirement::In(k.trim().into(), set(rest)?));
    }
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(k.trim().into()));
    }
    if term.contains(char::is_whitespace) {
        return Err(ApiError::new(400, format!("unable to parse requirement: {term}")));
    }
    Ok(Requirement::Exists(term.into()))
}
