//! The API server's validation of what the fake serves, as far as a
//! provisioner, the engine or a test of them can run into it: what the real
//! kube-apiserver refuses with `422 Invalid`, the fake refuses too, with the
//! same field paths and messages of the same wording (the real server's
//! messages about immutable specs end in a diff; the fake's end in a list of
//! the changed fields instead).
//!
//! Checked on every write (a create, an update, the result of a patch):
//! - names: an RFC 1123 subdomain, a label for namespaces;
//! - claims: access modes, a positive storage request, the volume mode;
//! - volumes: access modes, a `storage` capacity, the reclaim policy, the
//!   volume mode, exactly one volume source (with the fields it requires),
//!   node affinity for `local` volumes;
//! - classes: the provisioner, the reclaim policy, the binding mode.
//!
//! And on updates:
//! - `metadata.uid` is immutable, and no finalizer may be added to an
//!   object that is being deleted;
//! - a claim's spec is immutable, except setting `volumeName` or
//!   `storageClassName` once, and the request and
//!   `volumeAttributesClassName` of a bound claim;
//! - a volume's source and volume mode are immutable;
//! - a class's provisioner, parameters, reclaim policy and binding mode are
//!   immutable.
//!
//! And what an admission plugin of the real server forbids (`403`): growing a
//! claim that is not bound, or whose class does not allow volume expansion.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::store::{CLASS, CONFIGMAP, KindInfo, NAMESPACE, PV, PVC, finalizers};
use crate::{keys, quantity};

/// What is wrong with one field.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FieldError {
    /// The field's path, as the API server writes it (`spec.accessModes`).
    pub field: String,
    cause: Cause,
    detail: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Cause {
    Required,
    Forbidden,
    /// The offending value, as the API server prints it.
    Invalid(String),
    /// The offending value and the values the field accepts.
    NotSupported(String, &'static [&'static str]),
    /// Longer than allowed.
    TooLong,
}

impl FieldError {
    fn required(field: impl Into<String>, detail: &str) -> Self {
        FieldError { field: field.into(), cause: Cause::Required, detail: detail.into() }
    }

    fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), cause: Cause::Forbidden, detail: detail.into() }
    }

    fn invalid(field: impl Into<String>, value: &Value, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), cause: Cause::Invalid(value.to_string()), detail: detail.into() }
    }

    fn too_long(field: impl Into<String>, _size: usize, max: usize) -> Self {
        FieldError { field: field.into(), cause: Cause::TooLong, detail: format!("must have at most {max} bytes") }
    }

    fn immutable(field: impl Into<String>, value: &Value) -> Self {
        Self::invalid(field, value, "field is immutable")
    }

    fn not_supported(field: impl Into<String>, value: &Value, supported: &'static [&'static str]) -> Self {
        FieldError {
            field: field.into(),
            cause: Cause::NotSupported(value.to_string(), supported),
            detail: String::new(),
        }
    }

    /// The `reason` of this error's entry in a `Status`'s `details.causes`.
    pub fn reason(&self) -> &'static str {
        match self.cause {
            Cause::Required => "FieldValueRequired",
            Cause::Forbidden => "FieldValueForbidden",
            Cause::Invalid(_) => "FieldValueInvalid",
            Cause::NotSupported(..) => "FieldValueNotSupported",
            Cause::TooLong => "FieldValueTooLong",
        }
    }

    /// The message without the field: `Required value: ...`.
    pub fn body(&self) -> String {
        let head = match &self.cause {
            Cause::Required => "Required value".to_string(),
            Cause::Forbidden => "Forbidden".to_string(),
            Cause::Invalid(value) => format!("Invalid value: {value}"),
            Cause::NotSupported(value, supported) => {
                let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
                format!("Unsupported value: {value}: supported values: {}", list.join(", "))
            }
            Cause::TooLong => "Too long".to_string(),
        };
        if self.detail.is_empty() { head } else { format!("{head}: {}", self.detail) }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

const ACCESS_MODES: &[&str] = &["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"];
const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];
const VOLUME_RECLAIM_POLICIES: &[&str] = &["Delete", "Recycle", "Retain"];
const CLASS_RECLAIM_POLICIES: &[&str] = &["Delete", "Retain"];
const BINDING_MODES: &[&str] = &["Immediate", "WaitForFirstConsumer"];
const STORAGE: &[&str] = &["storage"];

/// The volume sources of a volume's spec, in the order the API server checks them.
const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "glusterfs",
    "flocker",
    "nfs",
    "rbd",
    "quobyte",
    "cephfs",
    "iscsi",
    "cinder",
    "fc",
    "flexVolume",
    "azureFile",
    "vsphereVolume",
    "photonPersistentDisk",
    "portworxVolume",
    "azureDisk",
    "scaleIO",
    "local",
    "storageos",
    "csi",
];

/// `Kind "name" is invalid: ...`, the `Status` message of a 422 with `errors`.
pub(crate) fn invalid_message(kind: &KindInfo, name: &str, errors: &[FieldError]) -> String {
    let qualified = if kind.group.is_empty() { kind.kind.to_string() } else { format!("{}.{}", kind.kind, kind.group) };
    let listed = match errors {
        [one] => one.to_string(),
        many => format!("[{}]", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    };
    format!("{qualified} \"{name}\" is invalid: {listed}")
}

/// Why `obj`, as it would be stored, is not a valid object of `kind`.
pub(crate) fn validate(kind: &KindInfo, obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        errors.push(FieldError::required("metadata.name", "name or generateName is required"));
    } else {
        let problems = if *kind == NAMESPACE { label_problems(name) } else { subdomain_problems(name) };
        errors.extend(problems.into_iter().map(|p| FieldError::invalid("metadata.name", &json!(name), p)));
    }
    if *kind == PVC {
        claim_spec(&obj["spec"], &mut errors);
    } else if *kind == PV {
        volume_spec(&obj["spec"], &mut errors);
    } else if *kind == CLASS {
        class(obj, &mut errors);
    } else if *kind == CONFIGMAP {
        config_map(obj, &mut errors);
    }
    errors
}

/// The API server's ConfigMap rules: keys of `[-._a-zA-Z0-9]`, at most
/// 253 characters, and at most 1 MiB of keys and values in all.
fn config_map(obj: &Value, errors: &mut Vec<FieldError>) {
    let mut total = 0usize;
    for field in ["data", "binaryData"] {
        let Some(map) = obj[field].as_object() else { continue };
        for (k, v) in map {
            total += k.len() + v.as_str().map_or(0, str::len);
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && k != "."
                && k != ".."
                && !k.starts_with("..");
            if !ok {
                errors.push(FieldError::invalid(
                    format!("{field}[{k}]"),
                    &json!(k),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
        }
    }
    if total > 1024 * 1024 {
        errors.push(FieldError::too_long("", total, 1024 * 1024));
    }
}

/// Why `old` may not become `new` (both as they would be stored: `new`
/// already carries the status and the fields the server keeps).
pub(crate) fn validate_update(kind: &KindInfo, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if is_deleting(old) {
        let before: BTreeSet<String> = finalizers(old).into_iter().collect();
        let added: BTreeSet<String> = finalizers(new).into_iter().filter(|f| !before.contains(f)).collect();
        if !added.is_empty() {
            let listed: Vec<String> = added.iter().map(|f| format!("\"{f}\"")).collect();
            errors.push(FieldError::forbidden(
                "metadata.finalizers",
                format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    listed.join(", ")
                ),
            ));
        }
    }
    let (old_uid, new_uid) = (&old["metadata"]["uid"], &new["metadata"]["uid"]);
    if new_uid.as_str().is_some_and(|u| !u.is_empty()) && new_uid != old_uid {
        errors.push(FieldError::immutable("metadata.uid", new_uid));
    }
    errors.extend(validate(kind, new));
    if *kind == PVC {
        claim_update(old, new, &mut errors);
    } else if *kind == PV {
        volume_update(&old["spec"], &new["spec"], &mut errors);
    } else if *kind == CLASS {
        for field in ["parameters", "provisioner", "reclaimPolicy", "volumeBindingMode"] {
            if pruned(&old[field]) != pruned(&new[field]) {
                // The declarative validation the real server runs prints no value here.
                errors.push(FieldError::immutable(field, &Value::Null));
            }
        }
    }
    errors
}

fn is_deleting(obj: &Value) -> bool {
    obj["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The problems of `name` as an RFC 1123 subdomain (most kinds' names).
fn subdomain_problems(name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if name.len() > 253 {
        problems.push("must be no more than 253 characters".to_string());
    }
    if !name.split('.').all(is_label) {
        problems.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must \
             start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .to_string(),
        );
    }
    problems
}

/// The problems of `name` as an RFC 1123 label (namespaces' names).
fn label_problems(name: &str) -> Vec<String> {
    if name.contains('.') {
        return vec!["must not contain dots".to_string()];
    }
    let mut problems = Vec::new();
    if name.len() > 63 {
        problems.push("must be no more than 63 characters".to_string());
    }
    if !is_label(name) {
        problems.push(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start \
             and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .to_string(),
        );
    }
    problems
}

fn is_label(part: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    part.starts_with(alnum) && part.ends_with(alnum) && part.chars().all(|c| alnum(c) || c == '-')
}

fn access_modes(modes: &Value, required_detail: &str, errors: &mut Vec<FieldError>) {
    let list = modes.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        errors.push(FieldError::required("spec.accessModes", required_detail));
    }
    let (mut once_pod, mut others) = (false, false);
    for mode in list {
        match mode.as_str() {
            Some("ReadWriteOncePod") => once_pod = true,
            Some(m) if ACCESS_MODES.contains(&m) => others = true,
            _ => errors.push(FieldError::not_supported("spec.accessModes", mode, ACCESS_MODES)),
        }
    }
    if once_pod && others {
        errors.push(FieldError::forbidden("spec.accessModes", "may not use ReadWriteOncePod with other access modes"));
    }
}

fn volume_mode(mode: &Value, errors: &mut Vec<FieldError>) {
    if !mode.is_null() && !VOLUME_MODES.contains(&text(mode)) {
        errors.push(FieldError::not_supported("spec.volumeMode", mode, VOLUME_MODES));
    }
}

fn claim_spec(spec: &Value, errors: &mut Vec<FieldError>) {
    access_modes(&spec["accessModes"], "at least 1 access mode is required", errors);
    let storage = &spec["resources"]["requests"]["storage"];
    match storage.as_str() {
        None => errors.push(FieldError::required("spec.resources[storage]", "")),
        Some(q) if q.trim_start().starts_with('-') || quantity::parse_bytes(q) == Some(0) => {
            errors.push(FieldError::invalid("spec.resources[storage]", storage, "must be greater than zero"));
        }
        Some(_) => {}
    }
    volume_mode(&spec["volumeMode"], errors);
}

fn volume_spec(spec: &Value, errors: &mut Vec<FieldError>) {
    access_modes(&spec["accessModes"], "", errors);
    let capacity = &spec["capacity"];
    let entries = capacity.as_object().map_or(0, Map::len);
    if entries == 0 {
        errors.push(FieldError::required("spec.capacity", ""));
    }
    if capacity.get("storage").is_none() || entries > 1 {
        errors.push(FieldError::not_supported("spec.capacity", capacity, STORAGE));
    }
    let policy = &spec["persistentVolumeReclaimPolicy"];
    if !policy.is_null() && !VOLUME_RECLAIM_POLICIES.contains(&text(policy)) {
        errors.push(FieldError::not_supported("spec.persistentVolumeReclaimPolicy", policy, VOLUME_RECLAIM_POLICIES));
    }
    let mut sources = 0;
    for source in VOLUME_SOURCES {
        let value = &spec[*source];
        if value.is_null() {
            continue;
        }
        let field = format!("spec.{source}");
        if sources > 0 {
            errors.push(FieldError::forbidden(field, "may not specify more than 1 volume type"));
            continue;
        }
        sources += 1;
        volume_source(source, &field, value, errors);
        if *source == "local" && spec["nodeAffinity"]["required"].is_null() {
            errors.push(FieldError::required("spec.nodeAffinity", "Local volume requires node affinity"));
        }
    }
    if sources == 0 {
        errors.push(FieldError::required("spec", "must specify a volume type"));
    }
    volume_mode(&spec["volumeMode"], errors);
}

/// The fields the sources provisioners commonly produce must have.
fn volume_source(source: &str, field: &str, value: &Value, errors: &mut Vec<FieldError>) {
    let required: &[&str] = match source {
        "hostPath" | "local" => &["path"],
        "nfs" => &["server", "path"],
        "csi" => &["driver", "volumeHandle"],
        _ => &[],
    };
    for key in required {
        if text(&value[*key]).is_empty() {
            errors.push(FieldError::required(format!("{field}.{key}"), ""));
        }
    }
    let path = text(&value["path"]);
    if source == "nfs" && !path.is_empty() && !path.starts_with('/') {
        errors.push(FieldError::invalid(format!("{field}.path"), &value["path"], "must be an absolute path"));
    }
}

fn class(obj: &Value, errors: &mut Vec<FieldError>) {
    if text(&obj["provisioner"]).is_empty() {
        errors.push(FieldError::required("provisioner", ""));
    }
    let policy = &obj["reclaimPolicy"];
    if !policy.is_null() && !CLASS_RECLAIM_POLICIES.contains(&text(policy)) {
        errors.push(FieldError::not_supported("reclaimPolicy", policy, CLASS_RECLAIM_POLICIES));
    }
    let mode = &obj["volumeBindingMode"];
    if !mode.is_null() && !BINDING_MODES.contains(&text(mode)) {
        errors.push(FieldError::not_supported("volumeBindingMode", mode, BINDING_MODES));
    }
}

fn claim_update(old: &Value, new: &Value, errors: &mut Vec<FieldError>) {
    let (mut old_spec, mut new_spec) = (pruned(&old["spec"]), pruned(&new["spec"]));
    // The binder sets volumeName once.
    if text(&old_spec["volumeName"]).is_empty() {
        set(&mut old_spec, "volumeName", new_spec.get("volumeName").cloned());
    }
    // A class named by the legacy annotation may move to the field, and an
    // unset class may be set.
    let beta = |o: &Value| o["metadata"]["annotations"][keys::BETA_STORAGE_CLASS].as_str().map(str::to_string);
    let (old_beta, new_beta) = (beta(old), beta(new));
    let (old_class, new_class) = (old_spec.get("storageClassName").cloned(), new_spec.get("storageClassName").cloned());
    let new_class_text = new_class.as_ref().and_then(Value::as_str).map(str::to_string);
    if old_beta.is_some()
        && old_class.is_none()
        && new_class_text.is_some()
        && new_class_text == old_beta
        && (new_beta.is_none() || new_beta == old_beta)
    {
        set(&mut new_spec, "storageClassName", None);
    } else {
        if new_beta.as_deref().unwrap_or_default() != old_beta.as_deref().unwrap_or_default() {
            errors.push(FieldError::immutable(
                format!("metadata.annotations.{}", keys::BETA_STORAGE_CLASS),
                &json!(new_beta.unwrap_or_default()),
            ));
        }
        if new_class.is_some() && old_class.is_none() && (old_beta.is_none() || new_class_text == old_beta) {
            set(&mut new_spec, "storageClassName", None);
        }
    }
    // A bound claim may be resized and change its attributes class.
    if text(&new["status"]["phase"]) == "Bound" {
        let old_request = old_spec["resources"]["requests"].get("storage").cloned();
        if let Some(requests) = new_spec.pointer_mut("/resources/requests") {
            set(requests, "storage", old_request);
        }
        set(&mut new_spec, "volumeAttributesClassName", old_spec.get("volumeAttributesClassName").cloned());
    }
    if pruned(&old_spec) != pruned(&new_spec) {
        errors.push(FieldError::forbidden(
            "spec",
            format!(
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound \
                 claims\n{}",
                changes(&pruned(&old_spec), &pruned(&new_spec), "spec")
            ),
        ));
    }
    if old["spec"]["volumeMode"] != new["spec"]["volumeMode"] {
        errors.push(FieldError::immutable("volumeMode", &new["spec"]["volumeMode"]));
    }
}

fn volume_update(old: &Value, new: &Value, errors: &mut Vec<FieldError>) {
    let source = |spec: &Value| -> Value {
        let map: Map<String, Value> =
            VOLUME_SOURCES.iter().map(|s| (s.to_string(), spec[*s].clone())).filter(|(_, v)| !v.is_null()).collect();
        pruned(&Value::Object(map))
    };
    let (old_source, mut new_source) = (source(old), source(new));
    // A CSI volume may be given a controller expansion secret once.
    if old_source["csi"].is_object()
        && old_source["csi"]["controllerExpandSecretRef"].is_null()
        && let Some(csi) = new_source.get_mut("csi")
    {
        set(csi, "controllerExpandSecretRef", None);
    }
    if old_source != new_source {
        errors.push(FieldError::forbidden(
            "spec.persistentvolumesource",
            format!(
                "spec.persistentvolumesource is immutable after creation\n{}",
                changes(&old_source, &new_source, "spec")
            ),
        ));
    }
    if old["volumeMode"] != new["volumeMode"] {
        errors.push(FieldError::immutable("volumeMode", &new["volumeMode"]));
    }
}

fn set(obj: &mut Value, key: &str, value: Option<Value>) {
    if let Some(map) = obj.as_object_mut() {
        match value {
            Some(v) => {
                map.insert(key.to_string(), v);
            }
            None => {
                map.remove(key);
            }
        }
    }
}

/// `v` without nulls, empty lists, empty maps and empty strings, which the
/// API server does not tell from absent fields when it compares objects.
fn pruned(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| (k.clone(), pruned(v))).filter(|(_, v)| !is_empty(v)).collect::<Map<_, _>>(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(pruned).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// The top-level fields that differ between `old` and `new`, one a line.
fn changes(old: &Value, new: &Value, at: &str) -> String {
    let empty = Map::new();
    let (o, n) = (old.as_object().unwrap_or(&empty), new.as_object().unwrap_or(&empty));
    let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| v.map_or_else(|| "(unset)".to_string(), Value::to_string);
            format!("{at}.{k}: {} -> {}", show(o.get(k)), show(n.get(k)))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the real server's claim-resize admission says to growing `old` into
/// `new` (`Err`: why it is forbidden): only a bound claim may grow, and only
/// in a class that exists and allows volume expansion. `class` finds a class
/// by name.
pub(crate) fn admit_resize(
    old: &Value,
    new: &Value,
    class: impl Fn(&str) -> Option<Value>,
) -> Result<(), &'static str> {
    let size = |claim: &Value| quantity::parse_bytes(text(&claim["spec"]["resources"]["requests"]["storage"]));
    if size(new).unwrap_or(0) <= size(old).unwrap_or(0) {
        return Ok(());
    }
    if text(&old["status"]["phase"]) != "Bound" {
        return Err("Only bound persistent volume claims can be expanded");
    }
    let class_of = |claim: &Value| -> String {
        let beta = text(&claim["metadata"]["annotations"][keys::BETA_STORAGE_CLASS]);
        if beta.is_empty() { text(&claim["spec"]["storageClassName"]).to_string() } else { beta.to_string() }
    };
    let (old_class, new_class) = (class_of(old), class_of(new));
    let allowed = !new_class.is_empty()
        && old_class == new_class
        && class(&new_class).is_some_and(|k| k["allowVolumeExpansion"].as_bool() == Some(true));
    if allowed {
        Ok(())
    } else {
        Err(
            "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support \
             resize",
        )
    }
}
