//! `efs-provisioner`: serves the EFS provisioner names given by flags.

use clap::Parser;
use provisioner_core::cli::{EngineArgs, RunError, run_with};

#[derive(Parser)]
#[command(version, about = "Provisions AWS EFS file systems or access points for PersistentVolumeClaims")]
struct Args {
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    efs: efs_provisioner::cli::EfsArgs,
    #[command(flatten)]
    deadlines: efs_provisioner::cli::EfsDeadlineArgs,
}

#[tokio::main]
async fn main() -> Result<(), RunError> {
    efs_provisioner::cli::install_crypto_provider();
    let args = Args::parse();
    let (provisioner, limiter) =
        efs_provisioner::cli::build(&args.efs, &args.deadlines).await.map_err(RunError::Flag)?;
    run_with(args.engine, &args.efs.provisioner_names, provisioner, |builder, registry| {
        limiter.register(registry);
        builder
    })
    .await
}
