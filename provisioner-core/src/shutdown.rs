//! The shutdown token a provisioner binary hands to [`crate::Engine::run`].
//!
//! ```no_run
//! # async fn demo(engine: provisioner_core::Engine) {
//! let shutdown = provisioner_core::shutdown_on_signals();
//! engine.run(shutdown).await.expect("engine");
//! # }
//! ```

use tokio_util::sync::CancellationToken;
use tracing::info;

/// A token cancelled at the first SIGTERM or SIGINT (Ctrl-C).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => info!("SIGTERM: shutting down"),
                        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        t.cancel();
    });
    token
}
