//! `hostpath-provisioner`: a directory per claim on this node's disk.

use clap::Parser;
use hostpath_provisioner::cli::{Args, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostpath-provisioner: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
