//! Write requests by kind, counted at the client: a tower layer that files
//! every POST, PUT, PATCH and DELETE under its method and resource
//! (`POST persistentvolumes`, `PUT configmaps`, `PATCH persistentvolumes`,
//! `POST events`, ...), so the benchmarks can say which writes a volume costs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Method, Request};
use kube::Client;
use kube::client::ClientBuilder;
use provisioner_core::client::{ApiLayer, ApiRate, RequestCounts};
use tower::{Layer, Service};

/// Write requests so far, by `"<METHOD> <resource>[/<subresource>]"`.
#[derive(Debug, Default)]
pub struct WriteKinds(Mutex<BTreeMap<String, u64>>);

impl WriteKinds {
    /// The counts now.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn add(&self, kind: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default() += 1;
    }
}

/// The kind of a write request to `path`, `None` for reads.
pub fn kind_of(method: &Method, path: &str) -> Option<String> {
    if [Method::GET, Method::HEAD, Method::OPTIONS].contains(method) {
        return None;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // `/api/v1/...` or `/apis/<group>/<version>/...`
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or_default(),
        Some(&"apis") => segments.get(3..).unwrap_or_default(),
        _ => return Some(format!("{method} {path}")),
    };
    // A namespaced resource (not a namespace itself).
    let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 { &rest[2..] } else { rest };
    let resource = rest.first().copied().unwrap_or("?");
    Some(match rest.get(2) {
        Some(sub) => format!("{method} {resource}/{sub}"),
        None => format!("{method} {resource}"),
    })
}

/// The layer counting writes by kind.
#[derive(Clone, Debug, Default)]
pub struct CountWrites {
    kinds: Arc<WriteKinds>,
}

impl CountWrites {
    /// The counts of the requests that went through this layer.
    pub fn kinds(&self) -> Arc<WriteKinds> {
        self.kinds.clone()
    }
}

impl<S> Layer<S> for CountWrites {
    type Service = CountWritesService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CountWritesService { inner, kinds: self.kinds.clone() }
    }
}

/// The service of [`CountWrites`].
#[derive(Clone)]
pub struct CountWritesService<S> {
    inner: S,
    kinds: Arc<WriteKinds>,
}

impl<S, B> Service<Request<B>> for CountWritesService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(kind) = kind_of(req.method(), req.uri().path()) {
            self.kinds.add(kind);
        }
        self.inner.call(req)
    }
}

/// A client as `provisioner_core::client::build_client` builds it (rate
/// limit and request counts), which also counts its writes by kind.
pub fn build_counting_client(
    config: kube::Config,
    rate: Option<ApiRate>,
) -> Result<(Client, Arc<RequestCounts>, Arc<WriteKinds>), kube::Error> {
    let api = ApiLayer::new(rate);
    let kinds = CountWrites::default();
    let client = ClientBuilder::try_from(config)?.with_layer(&api).with_layer(&kinds).build();
    Ok((client, api.counts(), kinds.kinds()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_filed_by_method_and_resource() {
        let k = |m: Method, p: &str| kind_of(&m, p);
        assert_eq!(k(Method::POST, "/api/v1/persistentvolumes"), Some("POST persistentvolumes".into()));
        assert_eq!(k(Method::DELETE, "/api/v1/persistentvolumes/pvc-1"), Some("DELETE persistentvolumes".into()));
        assert_eq!(k(Method::PUT, "/api/v1/namespaces/default/configmaps/j"), Some("PUT configmaps".into()));
        assert_eq!(k(Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events"), Some("POST events".into()));
        assert_eq!(k(Method::PUT, "/api/v1/persistentvolumes/p/status"), Some("PUT persistentvolumes/status".into()));
        assert_eq!(k(Method::DELETE, "/api/v1/namespaces/ns"), Some("DELETE namespaces".into()));
        assert_eq!(k(Method::GET, "/api/v1/persistentvolumes"), None);
    }
}
