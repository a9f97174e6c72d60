//! The small HTTP endpoint a provisioner binary exposes: `/metrics`
//! (Prometheus text), `/healthz` (the process runs) and `/readyz` (caches
//! synced and this replica leads; a follower answers 503 so that only the
//! leader counts as ready). Feature `serve` (which `cli` turns on).
//!
//! ```no_run
//! # async fn demo(engine: provisioner_core::Engine, registry: prometheus_client::registry::Registry) {
//! use std::sync::Arc;
//! let shutdown = provisioner_core::shutdown_on_signals();
//! let status = engine.status();
//! let addr = "0.0.0.0:8080".parse().unwrap();
//! tokio::spawn(provisioner_core::serve::serve(addr, Arc::new(registry), status, shutdown.clone()));
//! engine.run(shutdown).await.unwrap();
//! # }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::EngineStatus;

pub use crate::shutdown::shutdown_on_signals;

/// What a request to `path` answers, given the status and the registry.
fn respond(
    method: &Method,
    path: &str,
    status: EngineStatus,
    registry: &Registry,
) -> (StatusCode, &'static str, String) {
    if method != Method::GET {
        return (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding metrics: {e}\n")),
            }
        }
        "/healthz" | "/livez" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if status.ready() {
                (StatusCode::OK, "text/plain", "ready\n".into())
            } else if !status.synced {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "caches not synced\n".into())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not the leader\n".into())
            }
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    status: watch::Receiver<EngineStatus>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "serving /metrics, /healthz and /readyz");
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (code, content_type, body) = respond(req.method(), req.uri().path(), *status.borrow(), &registry);
                let resp = Response::builder()
                    .status(code)
                    .header("content-type", content_type)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_is_healthy_but_not_ready() {
        let r = Registry::default();
        let follower = EngineStatus { synced: true, leading: false };
        assert_eq!(respond(&Method::GET, "/healthz", follower, &r).0, StatusCode::OK);
        assert_eq!(respond(&Method::GET, "/readyz", follower, &r).0, StatusCode::SERVICE_UNAVAILABLE);
        let leader = EngineStatus { synced: true, leading: true };
        assert_eq!(respond(&Method::GET, "/readyz", leader, &r).0, StatusCode::OK);
    }

    #[test]
    fn unsynced_caches_are_not_ready() {
        let r = Registry::default();
        let (code, _, body) = respond(&Method::GET, "/readyz", EngineStatus { synced: false, leading: true }, &r);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not synced"));
    }

    #[test]
    fn metrics_are_served_in_text_format() {
        let mut r = Registry::default();
        let m = crate::metrics::Metrics::register(&mut r);
        m.provision_succeeded("fast", std::time::Duration::from_millis(5));
        let (code, _, body) = respond(&Method::GET, "/metrics", EngineStatus::default(), &r);
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("controller_persistentvolumeclaim_provision_total{class=\"fast\"} 1"), "{body}");
    }

    #[test]
    fn unknown_paths_and_methods_are_refused() {
        let r = Registry::default();
        assert_eq!(respond(&Method::GET, "/nope", EngineStatus::default(), &r).0, StatusCode::NOT_FOUND);
        assert_eq!(respond(&Method::POST, "/metrics", EngineStatus::default(), &r).0, StatusCode::METHOD_NOT_ALLOWED);
    }
}
