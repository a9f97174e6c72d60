//! `efs-provisioner`: serves the EFS provisioner names given by flags.

use efs_provisioner::cli::{Args, ReleaseArgs, renamed_variables};
use provisioner_core::cli::{RunError, init_logging, log_deprecations, parse, run_release, run_with, try_parse_from};

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
        let (release, deprecations) =
            try_parse_from::<ReleaseArgs, _, _>(std::env::args_os().skip(1), &renamed_variables())
                .unwrap_or_else(|e| e.exit());
        init_logging("text");
        log_deprecations(&deprecations);
        return run_release(&release.provisioner_names, release.dry_run).await;
    }
    let (args, deprecations) = parse::<Args>(&renamed_variables());
    init_logging(&args.engine.log_format);
    log_deprecations(&deprecations);
    let (provisioner, limiter) =
        efs_provisioner::cli::build(&args.efs, &args.deadlines, &args.tagging).await.map_err(RunError::Flag)?;
    run_with(args.engine, &args.efs.provisioner_names, provisioner, |builder, registry| {
        limiter.register(registry);
        builder
    })
    .await
}
