//! `hostpath-provisioner`: a directory per claim on this node's disk.

use clap::Parser;
use hostpath_provisioner::cli::{Args, run};
use hostpath_provisioner::provisioner::DEFAULT_PROVISIONER_NAME;

/// `hostpath-provisioner release`: the uninstall step (see the README).
#[derive(Parser)]
#[command(
    name = "hostpath-provisioner release",
    bin_name = "hostpath-provisioner release",
    about = "With the DaemonSet removed, remove the provisioner's \
    finalizers and intent records from claims and volumes, and list the directories that leaves to you"
)]
struct ReleaseArgs {
    /// The provisioner name to release.
    #[arg(long, env = "PROVISIONER_NAME", default_value = DEFAULT_PROVISIONER_NAME)]
    provisioner_name: String,
    /// Only say what would be removed.
    #[arg(long)]
    dry_run: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("release") {
        let release = ReleaseArgs::parse_from(std::env::args().skip(1));
        return match provisioner_core::cli::run_release(&[release.provisioner_name], release.dry_run).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hostpath-provisioner release: {e}");
                std::process::ExitCode::from(e.exit_code())
            }
        };
    }
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostpath-provisioner: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
