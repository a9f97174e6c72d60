//! `noop-engine`: our engine with a backend that does no I/O, the Rust side
//! of the side-by-side benchmark (the Go side is `tests/peer`). Takes the
//! engine's usual flags (`--workers`, `--kube-api-qps`, `--kube-api-burst`,
//! `--leader-elect`, ...) at their production defaults, and sends events
//! through a client of their own as the bundled binaries do. On SIGTERM/SIGINT
//! it stops and prints one JSON line: API requests made (counted at the
//! clients; `writes` includes the events' client's `event_writes`, and
//! `write_kinds` files the main client's writes by kind) and backend calls
//! received.

mod kinds;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use clap::Parser;
use k8s_openapi::api::core::v1::{HostPathVolumeSource, PersistentVolume, PersistentVolumeSpec};
use provisioner_core::cli::{EngineArgs, init_logging};
use provisioner_core::serve::shutdown_on_signals;
use provisioner_core::{DeleteError, Engine, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};

#[derive(Parser)]
struct Args {
    /// The provisioner name to act for.
    #[arg(long)]
    provisioner: String,
    /// Also write the JSON counts line to this file on exit.
    #[arg(long)]
    counts_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Default)]
struct Noop {
    provisions: AtomicU64,
    deletes: AtomicU64,
}

#[async_trait]
impl Provisioner for Noop {
    async fn provision(&self, req: &ProvisionRequest) -> Result<ProvisionedVolume, ProvisionError> {
        self.provisions.fetch_add(1, Ordering::Relaxed);
        Ok(ProvisionedVolume::new(PersistentVolumeSpec {
            host_path: Some(HostPathVolumeSource { path: format!("/noop/{}", req.pv_name), type_: None }),
            ..Default::default()
        }))
    }
    async fn delete(&self, _: &PersistentVolume) -> Result<(), DeleteError> {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    init_logging(&args.engine.log_format);
    let config = kube::Config::infer().await?;
    let (client, counts, write_kinds) = kinds::build_counting_client(config.clone(), args.engine.rate())?;
    let (event_client, event_counts, _) = kinds::build_counting_client(config, None)?;
    let backend = Arc::new(Noop::default());
    let builder = Engine::builder(client, args.provisioner.clone(), backend.clone()).event_client(event_client);
    let engine = args.engine.apply(builder).build()?;
    engine.run(shutdown_on_signals()).await?;
    let line = serde_json::json!({
        "reads": counts.reads() + event_counts.reads(),
        "writes": counts.writes() + event_counts.writes(),
        "event_writes": event_counts.writes(),
        "watches": counts.watches() + event_counts.watches(),
        "write_kinds": write_kinds.snapshot(),
        "provision_calls": backend.provisions.load(Ordering::Relaxed),
        "delete_calls": backend.deletes.load(Ordering::Relaxed),
    })
    .to_string();
    println!("{line}");
    if let Some(path) = args.counts_file {
        std::fs::write(path, format!("{line}\n"))?;
    }
    Ok(())
}
