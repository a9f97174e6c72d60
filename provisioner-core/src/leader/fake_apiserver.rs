//! An in-memory stand-in for the API server's Lease endpoints, so the election
//! loop can be tested under paused time. It honours `resourceVersion` like the
//! real one (409 on a stale replace or a duplicate create), records when each
//! write landed by the Tokio clock, and can cut a client off: that client's
//! requests then hang, as they would across a network partition.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::client::Body;
use tokio::time::Instant;

#[derive(Default)]
struct Store {
    leases: BTreeMap<String, Lease>,
    version: u64,
    /// Every successful write: when it landed, and the holder it wrote.
    writes: Vec<(Instant, Option<String>)>,
}

/// The shared state of the fake server; clone it freely.
#[derive(Clone, Default)]
pub(super) struct FakeApiServer {
    store: Arc<Mutex<Store>>,
}

/// Cuts one client off from the server, or reconnects it.
#[derive(Clone)]
pub(super) struct Link(Arc<AtomicBool>);

impl Link {
    pub(super) fn cut(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub(super) fn restore(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl FakeApiServer {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client of this server, and the link that can cut it off.
    pub(super) fn client(&self) -> (Client, Link) {
        let link = Link(Arc::new(AtomicBool::new(false)));
        let (server, cut) = (self.clone(), link.0.clone());
        let service = tower::service_fn(move |request: Request<Body>| {
            let (server, cut) = (server.clone(), cut.clone());
            async move {
                if cut.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(server.handle(request).await)
            }
        });
        (Client::new(service, "default"), link)
    }

    /// The lease `name` as stored.
    pub(super) fn lease(&self, name: &str) -> Option<Lease> {
        self.lock().leases.get(name).cloned()
    }

    /// The holder of lease `name`, if it has one.
    pub(super) fn holder(&self, name: &str) -> Option<String> {
        self.lease(name).and_then(|l| l.spec?.holder_identity).filter(|h| !h.is_empty())
    }

    /// When the last write naming `holder` landed.
    pub(super) fn last_write_by(&self, holder: &str) -> Option<Instant> {
        self.lock().writes.iter().rev().find(|(_, h)| h.as_deref() == Some(holder)).map(|(at, _)| *at)
    }

    /// Overwrites the lease as some other party would (bumping its version).
    pub(super) fn overwrite(&self, mut lease: Lease) {
        let mut store = self.lock();
        store.commit(&mut lease);
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        // /apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]
        let segments: Vec<&str> = parts.uri.path().trim_start_matches('/').split('/').collect();
        if segments.get(5) != Some(&"leases") {
            return status(StatusCode::NOT_FOUND, "NotFound");
        }
        let name = segments.get(6).map(|s| s.to_string());
        let mut store = self.lock();
        match (parts.method, name) {
            (Method::GET, Some(name)) => match store.leases.get(&name) {
                Some(lease) => json(StatusCode::OK, lease),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            (Method::POST, None) => {
                let Ok(mut lease) = serde_json::from_slice::<Lease>(&bytes) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest");
                };
                let name = lease.metadata.name.clone().unwrap_or_default();
                if store.leases.contains_key(&name) {
                    return status(StatusCode::CONFLICT, "AlreadyExists");
                }
                store.commit(&mut lease);
                json(StatusCode::CREATED, &lease)
            }
            (Method::PUT, Some(name)) => {
                let Ok(mut lease) = serde_json::from_slice::<Lease>(&bytes) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest");
                };
                let Some(current) = store.leases.get(&name) else {
                    return status(StatusCode::NOT_FOUND, "NotFound");
                };
                if current.metadata.resource_version != lease.metadata.resource_version {
                    return status(StatusCode::CONFLICT, "Conflict");
                }
                store.commit(&mut lease);
                json(StatusCode::OK, &lease)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }
}

impl Store {
    fn commit(&mut self, lease: &mut Lease) {
        self.version += 1;
        lease.metadata.resource_version = Some(self.version.to_string());
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        self.writes.push((Instant::now(), holder));
        self.leases.insert(lease.metadata.name.clone().unwrap_or_default(), lease.clone());
    }
}

fn json(code: StatusCode, lease: &Lease) -> Response<Body> {
    let body = serde_json::to_vec(lease).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    response
}

fn status(code: StatusCode, reason: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": reason, "code": code.as_u16(), "message": reason,
    });
    let mut response = Response::new(Body::from(body.to_string().into_bytes()));
    *response.status_mut() = code;
    response
}
