//! `efs-provisioner`: serves the EFS provisioner names given by flags.

use clap::Parser;
use provisioner_core::cli::{EngineArgs, RunError, run_release, run_with};

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

/// `efs-provisioner release`: the uninstall step (see the README).
#[derive(Parser)]
#[command(
    name = "efs-provisioner release",
    bin_name = "efs-provisioner release",
    about = "With every replica stopped, remove the provisioner's \
    finalizers and intent records from claims and volumes, and list the EFS file systems and access points \
    that leaves to you"
)]
struct ReleaseArgs {
    /// The provisioner names to release (as the running provisioner had them).
    #[arg(long = "provisioner-name", env = "PROVISIONER_NAMES", value_delimiter = ',', required = true)]
    provisioner_names: Vec<String>,
    /// Only say what would be removed.
    #[arg(long)]
    dry_run: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match start().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("efs-provisioner: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

async fn start() -> Result<(), RunError> {
    efs_provisioner::cli::install_crypto_provider();
    if std::env::args().nth(1).as_deref() == Some("release") {
        let release = ReleaseArgs::parse_from(std::env::args().skip(1));
        return run_release(&release.provisioner_names, release.dry_run).await;
    }
    let args = Args::parse();
    let (provisioner, limiter) =
        efs_provisioner::cli::build(&args.efs, &args.deadlines).await.map_err(RunError::Flag)?;
    run_with(args.engine, &args.efs.provisioner_names, provisioner, |builder, registry| {
        limiter.register(registry);
        builder
    })
    .await
}
