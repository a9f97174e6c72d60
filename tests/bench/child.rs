//! The engine under test, in a process of its own so that its memory and CPU
//! can be read from `/proc` and nothing of the benchmark's own bookkeeping
//! is counted against it.
//!
//! The parent re-executes this binary as `engine-bench engine --name ...`.
//! Protocol, one JSON [`EngineReport`] per line on the child's stdout:
//! `ready` once the engine's caches are synced, `report` for every line
//! `report` the parent writes to the child's stdin, and `final` after the
//! engine has shut down, which it does on SIGTERM or when stdin closes.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeSpec};
use prometheus_client::registry::Registry;
use provisioner_core::client::{ApiRate, RequestCounts};
use provisioner_core::engine::EngineConfig;
use provisioner_core::metrics::Metrics;
use provisioner_core::{DeleteError, Engine, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::kinds::{WriteKinds, build_counting_client};
use crate::procfs;
use crate::report::EngineReport;

/// Arguments of the hidden `engine` subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct EngineArgs {
    /// Provisioner name the engine answers to.
    #[arg(long)]
    pub name: String,
    /// StorageClass whose metrics are reported.
    #[arg(long)]
    pub class: String,
    /// Engine workers (default: the engine's default).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Client requests per second (default: unlimited).
    #[arg(long)]
    pub qps: Option<f64>,
    /// Client burst (default: twice the qps).
    #[arg(long)]
    pub burst: Option<u32>,
}

/// The client burst when only a qps is given: twice the qps.
pub fn default_burst(qps: f64) -> u32 {
    (qps * 2.0).ceil().max(1.0) as u32
}

impl EngineArgs {
    fn rate(&self) -> Option<ApiRate> {
        self.qps.map(|qps| ApiRate { qps, burst: self.burst.unwrap_or_else(|| default_burst(qps)) })
    }

    fn to_args(&self) -> Vec<String> {
        let mut a = vec!["engine".into(), "--name".into(), self.name.clone(), "--class".into(), self.class.clone()];
        if let Some(w) = self.workers {
            a.extend(["--workers".into(), w.to_string()]);
        }
        if let Some(q) = self.qps {
            a.extend(["--qps".into(), q.to_string()]);
        }
        if let Some(b) = self.burst {
            a.extend(["--burst".into(), b.to_string()]);
        }
        a
    }
}

/// The benchmark's backend: no I/O at all. The volume is a function of the
/// PV name, so a repeated call returns the same volume.
pub struct NoIoBackend;

/// The volume [`NoIoBackend`] answers for `pv_name`.
pub fn volume_for(pv_name: &str) -> ProvisionedVolume {
    ProvisionedVolume::new(PersistentVolumeSpec {
        host_path: Some(HostPathVolumeSource { path: format!("/var/lib/engine-bench/{pv_name}"), type_: None }),
        ..Default::default()
    })
}

#[async_trait]
impl Provisioner for NoIoBackend {
    async fn provision(&self, request: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        Ok(volume_for(&request.pv_name))
    }
    async fn delete(&self, _volume: &PersistentVolume) -> Result<(), DeleteError> {
        Ok(())
    }
}

/// What the child knows of its clients and its engine.
struct Sources {
    workers: usize,
    counts: Arc<RequestCounts>,
    kinds: Arc<WriteKinds>,
    event_counts: Arc<RequestCounts>,
    metrics: Metrics,
    registry: Registry,
    class: String,
}

/// The exported `provisioner_events*_total` samples, by their exposition name and labels.
fn event_metrics(registry: &Registry) -> BTreeMap<String, u64> {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return BTreeMap::new();
    }
    text.lines()
        // Counters only (the waiting gauge is no count of events).
        .filter(|l| l.starts_with("provisioner_events") && l.contains("_total"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse::<f64>().ok()? as u64))
        })
        .collect()
}

fn report(event: &str, s: &Sources) -> EngineReport {
    let (metrics, class) = (&s.metrics, s.class.as_str());
    EngineReport {
        event: event.into(),
        workers: s.workers,
        reads: s.counts.reads(),
        writes: s.counts.writes(),
        watches: s.counts.watches(),
        api_writes_metric: metrics.api_writes(),
        provisioned: metrics.provisioned(class),
        provision_failed: metrics.provision_failures(class),
        deleted: metrics.deleted(class),
        retries: metrics.retries(),
        queue_depth: metrics.queue_depth(),
        in_flight: metrics.in_flight(),
        journal_commits: metrics.journal_commits(),
        write_kinds: s.kinds.snapshot(),
        event_writes: s.event_counts.writes(),
        event_metrics: event_metrics(&s.registry),
    }
}

fn emit(r: &EngineReport) {
    let mut out = std::io::stdout().lock();
    // The parent reads one JSON object per line.
    let _ = writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
    let _ = out.flush();
}

/// The child's `main`: runs the engine until SIGTERM or end of stdin.
pub async fn run_engine(args: EngineArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = kube::Config::infer().await?;
    let (client, counts, kinds) = build_counting_client(config.clone(), args.rate())?;
    // Events through a client of their own, as the bundled binaries send them.
    let (event_client, event_counts, _) = build_counting_client(config, None)?;
    let mut registry = Registry::default();
    let mut builder =
        Engine::builder(client, &args.name, Arc::new(NoIoBackend)).event_client(event_client).metrics(&mut registry);
    let workers = args.workers.unwrap_or(EngineConfig::default().workers);
    if let Some(w) = args.workers {
        builder = builder.workers(w);
    }
    let engine = builder.build()?;
    let sources = Sources {
        workers,
        counts,
        kinds,
        event_counts,
        metrics: engine.metrics(),
        registry,
        class: args.class.clone(),
    };
    let mut status = engine.status();
    let shutdown = CancellationToken::new();
    let mut run = tokio::spawn(engine.run(shutdown.clone()));

    // stdin on a thread of its own: a line per command, None at end of input.
    let (tx, mut commands) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    let mut announced = false;
    loop {
        tokio::select! {
            changed = status.wait_for(|s| s.synced), if !announced => {
                if changed.is_ok() {
                    announced = true;
                    emit(&report("ready", &sources));
                }
            }
            command = commands.recv() => match command.as_deref() {
                Some("report") => emit(&report("report", &sources)),
                Some(_) => {}
                None => break,
            },
            _ = term.recv() => break,
            ended = &mut run => {
                let why = match ended {
                    Ok(Ok(())) => "the engine stopped by itself".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(why.into());
            }
        }
    }
    shutdown.cancel();
    run.await??;
    emit(&report("final", &sources));
    Ok(())
}

/// The parent's handle on a running engine child.
pub struct EngineChild {
    /// `None` once stopped.
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// The report it gave when its caches were synced.
    pub ready: EngineReport,
    /// Seconds from spawning to `ready`.
    pub ready_after: f64,
}

impl EngineChild {
    /// Starts the engine child and waits (up to `timeout`) until it is synced.
    pub async fn spawn(args: &EngineArgs, timeout: Duration) -> Result<EngineChild, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let started = std::time::Instant::now();
        let mut child = Command::new(exe)
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting the engine child: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout of the engine child")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut handle =
            EngineChild { child: Some(child), stdin, lines, ready: EngineReport::default(), ready_after: 0.0 };
        // On an error, dropping the handle kills the child.
        handle.ready = match handle.next_report(timeout).await? {
            r if r.event == "ready" => r,
            r => return Err(format!("the engine child said {:?} before it was ready", r.event)),
        };
        handle.ready_after = started.elapsed().as_secs_f64();
        Ok(handle)
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its memory now.
    pub fn memory(&self) -> procfs::Memory {
        procfs::memory(self.pid()).unwrap_or_default()
    }

    /// Its CPU seconds so far.
    pub fn cpu(&self) -> f64 {
        procfs::cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    async fn next_report(&mut self, timeout: Duration) -> Result<EngineReport, String> {
        loop {
            let line = tokio::time::timeout(timeout, self.lines.recv())
                .await
                .map_err(|_| format!("the engine child did not answer within {timeout:?}"))?
                .ok_or("the engine child exited")?;
            // Anything but a report (a stray print) is skipped.
            if let Ok(r) = serde_json::from_str::<EngineReport>(&line) {
                return Ok(r);
            }
        }
    }

    /// Asks for the counts now.
    pub async fn report(&mut self) -> Result<EngineReport, String> {
        let stdin = self.stdin.as_mut().ok_or("the engine child is stopping")?;
        stdin.write_all(b"report\n").and_then(|()| stdin.flush()).map_err(|e| format!("engine child: {e}"))?;
        self.next_report(Duration::from_secs(30)).await
    }

    /// Waits until the engine has written nothing for `quiet` and its queue
    /// is empty (up to `limit`), and returns the last report.
    pub async fn settle(&mut self, quiet: Duration, limit: Duration) -> Result<EngineReport, String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = self.report().await?;
        let mut since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.report().await?;
            let idle = now.writes == last.writes
                && now.writes >= now.api_writes_metric
                && now.queue_depth == 0
                && now.in_flight == 0;
            if !idle {
                since = tokio::time::Instant::now();
            }
            last = now;
            if since.elapsed() >= quiet || tokio::time::Instant::now() >= deadline {
                return Ok(last);
            }
        }
    }

    /// Stops the engine (end of stdin, as SIGTERM would) and returns its final report.
    pub async fn stop(mut self) -> Result<EngineReport, String> {
        drop(self.stdin.take());
        let last = self.next_report(Duration::from_secs(60)).await;
        let mut child = self.child.take().ok_or("the engine child was already stopped")?;
        if last.is_err() {
            let _ = child.kill();
        }
        let status = tokio::task::spawn_blocking(move || child.wait()).await.map_err(|e| e.to_string())?;
        match (last, status) {
            (Ok(r), Ok(s)) if s.success() && r.event == "final" => Ok(r),
            (last, status) => Err(format!("the engine child did not stop cleanly: {last:?}, {status:?}")),
        }
    }
}

impl Drop for EngineChild {
    fn drop(&mut self) {
        // Only when stop() was not reached (an error or a panic).
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
