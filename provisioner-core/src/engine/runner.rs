//! Which worker runs a key, and what the queue does with the key afterwards.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::context::Ctx;
use super::reconcile::reconcile;

pub(super) fn spawn_workers(ctx: &Arc<Ctx>, term: &CancellationToken) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..ctx.config.workers {
        let ctx = ctx.clone();
        let term = term.clone();
        set.spawn(async move {
            while let Some(key) = ctx.queue.next().await {
                let outcome = tokio::select! {
                    _ = term.cancelled() => {
                        // Dropped mid-operation: whoever leads next redoes it.
                        ctx.queue.done(&key);
                        ctx.queue.add(&key);
                        return;
                    }
                    o = reconcile(&ctx, &key) => o,
                };
                finish(&ctx, &key, outcome);
            }
        });
    }
    set
}

/// What a reconcile asks of the queue afterwards.
#[derive(Debug)]
pub(super) enum Next {
    /// Done until something changes.
    Done,
    /// Success: forget failures.
    Succeeded,
    /// A failed or unfinished attempt: retry with backoff.
    Failed,
    /// Retry after this long without counting a failure.
    After(Duration),
    /// The provisioner's own poll: look again after this long, counted as an
    /// attempt (so the `Provisioning` event is not repeated) but without the
    /// growing backoff.
    Poll(Duration),
}

fn finish(ctx: &Ctx, key: &str, next: Next) {
    if ctx.state().memory.existing_writes(key, |w| w.pass_ended()).unwrap_or(false) {
        ctx.queue.add(key);
    }
    match next {
        Next::Done => ctx.queue.done(key),
        Next::Succeeded => {
            ctx.state().memory.update(key, |m| m.failures = 0);
            ctx.queue.done(key);
        }
        Next::After(d) => ctx.queue.done_after(key, d),
        Next::Poll(d) => {
            ctx.state().memory.update(key, |m| m.failures = m.failures.saturating_add(1));
            ctx.metrics.retries.inc();
            ctx.queue.done_after(key, d);
        }
        Next::Failed => {
            let failures = ctx.state().memory.update(key, |m| {
                m.failures = m.failures.saturating_add(1);
                m.failures
            });
            ctx.metrics.retries.inc();
            let delay = ctx.config.backoff.delay_jittered(failures, 0.1, rand::random::<f64>());
            ctx.queue.done_after(key, delay);
        }
    }
}

pub(super) async fn wait_for(rx: &mut watch::Receiver<bool>, value: bool) {
    // A dropped sender means nobody can change leadership any more: stay as we are.
    if rx.wait_for(|v| *v == value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(super) async fn join_all(workers: &mut tokio::task::JoinSet<()>) {
    while workers.join_next().await.is_some() {}
}
