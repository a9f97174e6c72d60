//! `hostpath-provisioner`: a directory per claim on this node's disk.

use hostpath_provisioner::cli::{Args, ReleaseArgs, renamed_variables, run};
use provisioner_core::cli::{init_logging, log_deprecations, parse, run_release, try_parse_from};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("release") {
        let (release, deprecations) =
            try_parse_from::<ReleaseArgs, _, _>(std::env::args_os().skip(1), &renamed_variables())
                .unwrap_or_else(|e| e.exit());
        init_logging("text");
        log_deprecations(&deprecations);
        return match run_release(&release.provisioner_names, release.dry_run).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hostpath-provisioner release: {e}");
                std::process::ExitCode::from(e.exit_code())
            }
        };
    }
    let (args, deprecations) = parse::<Args>(&renamed_variables());
    init_logging(&args.engine.log_format);
    log_deprecations(&deprecations);
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostpath-provisioner: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
