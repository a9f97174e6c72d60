//! The HTTP shell of the fake cluster: turns requests into store operations
//! and store results into the JSON the real API server answers with, and
//! streams watches.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::store::{ApiError, Change, ChangeType, Deleted, Filter, KindInfo, Part, find_kind};
use super::{Inner, Verb};

/// The body type the fake answers with.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// How often an idle watch that asked for bookmarks gets one (the real
/// server sends them about once a minute).
pub(crate) const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// A watch without `timeoutSeconds` ends after this long.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

fn full(bytes: Vec<u8>) -> ResponseBody {
    Full::new(Bytes::from(bytes)).boxed_unsync()
}

pub(crate) fn json_response(code: u16, body: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(full(body.to_string().into_bytes()));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn error_response(e: &ApiError) -> Response<ResponseBody> {
    json_response(e.code, &e.to_status())
}

/// A parsed request: which kind, where, and what to do.
struct Target {
    kind: &'static KindInfo,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Result<Target, ApiError> {
    let not_found = || ApiError::new(404, "the server could not find the requested resource");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if find_kind(group, version, plural).is_some_and(|k| k.namespaced) => {
            (Some(ns.to_string()), [&[*plural], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found()),
    };
    let kind = find_kind(group, version, plural).ok_or_else(not_found)?;
    if name.as_deref() == Some("") {
        return Err(not_found());
    }
    // A namespaced kind may be listed across namespaces; by name it needs one.
    if (namespace.is_some() && !kind.namespaced) || (kind.namespaced && namespace.is_none() && name.is_some()) {
        return Err(not_found());
    }
    Ok(Target { kind, namespace, name, subresource })
}

fn query_map(query: Option<&str>) -> Vec<(String, String)> {
    query.map(form_urlencoded_pairs).unwrap_or_default()
}

/// Decodes `a=b&c=d` with percent-escapes and `+` as space.
fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The verb a request is, for fault matching.
fn verb_of(method: &Method, target: &Target, watch: bool) -> Option<Verb> {
    Some(match (method, target.name.is_some()) {
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) if watch => Verb::Watch,
        (&Method::GET, false) => Verb::List,
        (&Method::POST, false) => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        _ => return None,
    })
}

impl Inner {
    /// Answers one request.
    pub(crate) async fn handle(self: &Arc<Self>, request: Request<Body>) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let path = parts.uri.path().to_string();
        if path == "/version" {
            return json_response(
                200,
                &json!({ "major": "1", "minor": "37", "gitVersion": "v1.37.0-fake", "platform": "fake/fake" }),
            );
        }
        let target = match parse_path(&path) {
            Ok(t) => t,
            Err(e) => return error_response(&e),
        };
        let params = query_map(parts.uri.query());
        let watch = matches!(param(&params, "watch"), Some("true" | "1"));
        let Some(verb) = verb_of(&parts.method, &target, watch) else {
            return error_response(&ApiError::new(
                405,
                "the server does not allow this method on the requested resource",
            ));
        };
        let resource = super::FaultTarget {
            group: target.kind.group.to_string(),
            plural: target.kind.plural.to_string(),
            subresource: target.subresource.clone(),
        };
        if let Some(delay) = self.latency_for(verb, &resource) {
            tokio::time::sleep(delay).await;
        }
        if let Some(fault) = self.take_fault(verb, &resource) {
            return error_response(&fault.error(verb, target.kind, target.name.as_deref()));
        }
        let part = match target.subresource.as_deref() {
            None => Part::Main,
            Some("status") if target.kind.status && matches!(verb, Verb::Get | Verb::Update | Verb::Patch) => {
                Part::Status
            }
            Some(_) => return error_response(&ApiError::new(404, "the server could not find the requested resource")),
        };
        let content_type =
            parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        match verb {
            Verb::Watch => self.watch(&target, &params),
            _ => match self.call(verb, &target, part, &params, &content_type, &bytes) {
                Ok((code, value)) => json_response(code, &value),
                Err(e) => error_response(&e),
            },
        }
    }

    fn call(
        &self,
        verb: Verb,
        target: &Target,
        part: Part,
        params: &[(String, String)],
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Value), ApiError> {
        let kind = target.kind;
        let ns = target.namespace.clone().unwrap_or_default();
        let name = target.name.clone().unwrap_or_default();
        let parse_body = || -> Result<Value, ApiError> {
            serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("the body could not be decoded: {e}")))
        };
        let dry_run = param(params, "dryRun").is_some();
        let mut store = self.lock();
        if dry_run {
            return Err(ApiError::new(400, "dryRun is not supported by the fake cluster"));
        }
        let result = match verb {
            Verb::Get => store.get(kind, &ns, &name).map(|o| (200, o)),
            Verb::List => {
                // `limit` and `continue` as the real server: every page of
                // one list comes from the same snapshot.
                let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
                let (rv, mut items) = match param(params, "continue").filter(|c| !c.is_empty()) {
                    Some(token) => pages
                        .remove(token)
                        .ok_or_else(|| ApiError::new(410, "the continue token has expired or is unknown"))?,
                    None => {
                        let filter = Filter::parse(param(params, "labelSelector"), param(params, "fieldSelector"))?;
                        (store.resource_version().to_string(), store.list(kind, target.namespace.as_deref(), &filter))
                    }
                };
                let limit = param(params, "limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
                let mut metadata = json!({ "resourceVersion": rv });
                if let Some(limit) = limit
                    && items.len() > limit
                {
                    let rest = items.split_off(limit);
                    static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                    let token = format!("{rv}-{}", NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                    metadata["continue"] = json!(token);
                    metadata["remainingItemCount"] = json!(rest.len());
                    pages.insert(token, (rv.clone(), rest));
                }
                Ok((
                    200,
                    json!({
                        "kind": format!("{}List", kind.kind),
                        "apiVersion": kind.api_version(),
                        "metadata": metadata,
                        "items": items,
                    }),
                ))
            }
            Verb::Create => store.create(kind, &ns, parse_body()?).map(|o| (201, o)),
            Verb::Update => store.replace(kind, &ns, &name, parse_body()?, part).map(|o| (200, o)),
            Verb::Patch => {
                patch_media(content_type)?;
                let current = store.get(kind, &ns, &name)?;
                let patched = apply_patch(kind, &name, current, content_type, body)?;
                store.update(kind, &ns, &name, patched, part).map(|o| (200, o))
            }
            Verb::Delete => {
                let options: Value = if body.is_empty() { json!({}) } else { parse_body()? };
                let pre = &options["preconditions"];
                match store.delete(kind, &ns, &name, pre["uid"].as_str(), pre["resourceVersion"].as_str())? {
                    Deleted::Pending(obj) => Ok((200, obj)),
                    Deleted::Gone(obj) => Ok((
                        200,
                        json!({
                            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                            "details": { "name": name, "group": kind.group, "kind": kind.plural, "uid": obj["metadata"]["uid"] },
                        }),
                    )),
                }
            }
            Verb::DeleteCollection => {
                let filter = Filter::parse(param(params, "labelSelector"), param(params, "fieldSelector"))?;
                let mut items = Vec::new();
                for obj in store.list(kind, target.namespace.as_deref(), &filter) {
                    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
                    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    match store.delete(kind, &ns, &name, None, None)? {
                        Deleted::Pending(o) | Deleted::Gone(o) => items.push(o),
                    }
                }
                Ok((
                    200,
                    json!({
                        "kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(),
                        "metadata": { "resourceVersion": store.resource_version().to_string() },
                        "items": items,
                    }),
                ))
            }
            Verb::Watch => Err(ApiError::new(500, "watch is streamed elsewhere")),
        };
        drop(store);
        if matches!(verb, Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::DeleteCollection) {
            self.notify();
        }
        result
    }

    fn watch(self: &Arc<Self>, target: &Target, params: &[(String, String)]) -> Response<ResponseBody> {
        let filter = match Filter::parse(param(params, "labelSelector"), param(params, "fieldSelector")) {
            Ok(f) => f,
            Err(e) => return error_response(&e),
        };
        let timeout = param(params, "timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
        let bookmarks = matches!(param(params, "allowWatchBookmarks"), Some("true" | "1"));
        let initial_events = matches!(param(params, "sendInitialEvents"), Some("true" | "1"));
        let requested = param(params, "resourceVersion").unwrap_or_default();
        let store = self.lock();
        let mut pending = VecDeque::new();
        let kind = target.kind;
        let namespace = target.namespace.clone();
        let from = if requested.is_empty() || requested == "0" || initial_events {
            // "Any version": start with the current state, as ADDED events.
            for obj in store.list(kind, namespace.as_deref(), &filter) {
                pending.push_back(line(&json!({ "type": "ADDED", "object": obj })));
            }
            if initial_events && bookmarks {
                pending.push_back(bookmark(kind, store.resource_version(), true));
            }
            store.resource_version()
        } else {
            match requested.parse::<u64>() {
                Ok(rv) => rv,
                Err(_) => {
                    return error_response(&ApiError::new(400, format!("invalid resource version: {requested}")));
                }
            }
        };
        drop(store);
        let state = WatchState {
            inner: self.clone(),
            kind,
            namespace,
            filter,
            last: from,
            pending,
            bookmarks,
            deadline: Instant::now() + timeout,
            next_bookmark: Instant::now() + BOOKMARK_EVERY,
            changed: self.changed.subscribe(),
            drops: self.drops.subscribe(),
            bookmark_requests: self.bookmark_requests.subscribe(),
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            let bytes = st.next().await?;
            Some((Ok::<_, Infallible>(Frame::data(bytes)), st))
        });
        let mut response = Response::new(StreamBody::new(stream.boxed()).boxed_unsync());
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        response
    }
}

fn line(v: &Value) -> Bytes {
    let mut text = v.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(kind: &KindInfo, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line(&json!({
        "type": "BOOKMARK",
        "object": { "kind": kind.kind, "apiVersion": kind.api_version(), "metadata": metadata },
    }))
}

struct WatchState {
    inner: Arc<Inner>,
    kind: &'static KindInfo,
    namespace: Option<String>,
    filter: Filter,
    /// The last resourceVersion this watch has covered.
    last: u64,
    pending: VecDeque<Bytes>,
    bookmarks: bool,
    deadline: Instant,
    next_bookmark: Instant,
    changed: watch::Receiver<u64>,
    drops: watch::Receiver<u64>,
    bookmark_requests: watch::Receiver<u64>,
    done: bool,
}

impl WatchState {
    /// The next line of the stream, or `None` when the watch ends.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            // Mark what is seen now, so a write after the scan wakes us.
            self.changed.borrow_and_update();
            self.scan();
            if !self.pending.is_empty() || self.done {
                continue;
            }
            tokio::select! {
                r = self.changed.changed() => if r.is_err() { return None },
                _ = self.drops.changed() => return None,
                r = self.bookmark_requests.changed() => {
                    if r.is_err() { return None }
                    if self.bookmarks {
                        return Some(bookmark(self.kind, self.last, false));
                    }
                }
                _ = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    self.next_bookmark = Instant::now() + BOOKMARK_EVERY;
                    return Some(bookmark(self.kind, self.last, false));
                }
                _ = tokio::time::sleep_until(self.deadline) => return None,
            }
        }
    }

    fn scan(&mut self) {
        let store = self.inner.lock();
        let Some(changes) = store.changes_since(self.kind, self.last) else {
            let status =
                ApiError::new(410, format!("too old resource version: {} ({})", self.last, store.compacted + 1))
                    .to_status();
            self.pending.push_back(line(&json!({ "type": "ERROR", "object": status })));
            self.done = true;
            return;
        };
        self.last = store.resource_version();
        drop(store);
        for change in changes {
            if let Some(event) = self.event_for(&change) {
                self.pending.push_back(line(&event));
            }
        }
    }

    /// The watch event a change makes for this watch, with selector transitions.
    fn event_for(&self, c: &Change) -> Option<Value> {
        if self.namespace.as_ref().is_some_and(|ns| *ns != c.namespace) {
            return None;
        }
        let now = self.filter.matches(&c.object);
        let before = c.old.as_ref().is_some_and(|o| self.filter.matches(o));
        let type_ = match c.type_ {
            ChangeType::Modified if now && !before => ChangeType::Added,
            ChangeType::Modified if !now && before => ChangeType::Deleted,
            t if now => t,
            _ => return None,
        };
        Some(json!({ "type": type_.as_str(), "object": c.object }))
    }
}

/// Checks that a PATCH body's media type is one the fake applies.
fn patch_media(content_type: &str) -> Result<&str, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" | "application/json-patch+json" => {
            Ok(media)
        }
        other => Err(ApiError::new(
            415,
            format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json \
                 (got {other:?}; server-side apply is not supported by the fake)"
            ),
        )),
    }
}

/// Applies a PATCH body of `content_type` to `current`.
fn apply_patch(
    kind: &KindInfo,
    name: &str,
    mut current: Value,
    content_type: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let media = patch_media(content_type)?;
    let patch: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("the patch could not be decoded: {e}")))?;
    match media {
        // Strategic merge patch is approximated by a JSON merge patch: see the module docs.
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            if !patch.is_object() {
                return Err(ApiError::new(400, "a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut current, &patch);
            Ok(current)
        }
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::new(400, format!("the JSON patch could not be decoded: {e}")))?;
            json_patch::patch(&mut current, &ops.0).map_err(|e| {
                ApiError::invalid(
                    kind,
                    name,
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
            Ok(current)
        }
        _ => Err(ApiError::new(415, "unsupported patch type")),
    }
}
