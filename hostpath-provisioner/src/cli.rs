//! The binary's flags and its start-up: read the Node's hostname label, load
//! settings, start the config file watcher and run the engine.
//!
//! Each flag `--<flag>` is also read from the environment variable
//! `PROVISIONER_<FLAG>` ([`provisioner_core::cli::variable_for`]); the 0.1.0
//! names of renamed variables ([`renamed_variables`]) are still read, with a
//! warning.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use provisioner_core::cli::{ENGINE_RENAMED, EngineArgs, Renamed, RunError, init_logging, run_with};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capacity::{CapacityRules, DEFAULT_MIN_FREE_INODES, OvercommitRatio};
use crate::config::{ConfigFile, Settings, SharedSettings};
use crate::provisioner::{DEFAULT_PROVISIONER_NAME, HOSTNAME_LABEL, HostPathProvisioner, NodeIdentity};

/// The hostpath flags' variables renamed since 0.1.0 (`PROVISIONER_NAME` kept its name).
pub const HOSTPATH_RENAMED: &[Renamed] = &[
    Renamed { old: "NODE_NAME", new: "PROVISIONER_NODE_NAME" },
    Renamed { old: "BASE_DIRS", new: "PROVISIONER_BASE_DIRS" },
    Renamed { old: "PATH_PATTERN", new: "PROVISIONER_PATH_PATTERN" },
    Renamed { old: "DIR_MODE", new: "PROVISIONER_DIR_MODE" },
    Renamed { old: "DIR_UID", new: "PROVISIONER_DIR_UID" },
    Renamed { old: "DIR_GID", new: "PROVISIONER_DIR_GID" },
    Renamed { old: "VOLUME_TYPE", new: "PROVISIONER_VOLUME_TYPE" },
    Renamed { old: "ON_DELETE", new: "PROVISIONER_ON_DELETE" },
    Renamed { old: "SINGLE_NODE", new: "PROVISIONER_SINGLE_NODE" },
    Renamed { old: "CONFIG_FILE", new: "PROVISIONER_CONFIG_FILE" },
    Renamed { old: "CONFIG_RELOAD_SECONDS", new: "PROVISIONER_CONFIG_RELOAD_SECONDS" },
    Renamed { old: "OVERCOMMIT_RATIO", new: "PROVISIONER_OVERCOMMIT_RATIO" },
    Renamed { old: "MIN_FREE_INODES", new: "PROVISIONER_MIN_FREE_INODES" },
    Renamed { old: "BASE_DIR_CHECK_SECONDS", new: "PROVISIONER_BASE_DIR_CHECK_SECONDS" },
];

/// Every variable of `hostpath-provisioner` renamed since 0.1.0: the engine's and its own.
pub fn renamed_variables() -> Vec<Renamed> {
    [ENGINE_RENAMED, HOSTPATH_RENAMED].concat()
}

/// `hostpath-provisioner release`: the uninstall step (see the README).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "hostpath-provisioner release",
    bin_name = "hostpath-provisioner release",
    about = "With the DaemonSet removed, remove the provisioner's \
    finalizers, intent journals and 0.1's intent records from claims and volumes, and list the directories that leaves to you"
)]
pub struct ReleaseArgs {
    /// The provisioner names to release (repeat or comma-separate for several).
    #[arg(long = "provisioner-name", env = "PROVISIONER_NAME", value_name = "NAME", value_delimiter = ',',
          default_value = DEFAULT_PROVISIONER_NAME)]
    pub provisioner_names: Vec<String>,
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// Flags of `hostpath-provisioner`.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "hostpath-provisioner", version, about = "A directory per claim on this node's disk")]
pub struct Args {
    /// This node's name (from the downward API: spec.nodeName).
    #[arg(long, env = "PROVISIONER_NODE_NAME", value_name = "NODE")]
    pub node_name: String,
    /// The provisioner name StorageClasses use (repeat or comma-separate for several;
    /// the first names the events).
    #[arg(long = "provisioner-name", env = "PROVISIONER_NAME", value_name = "NAME", value_delimiter = ',',
          default_value = DEFAULT_PROVISIONER_NAME)]
    pub provisioner_names: Vec<String>,
    /// Base dirs for volumes (repeat or comma-separate for several); the one with most free space is used.
    #[arg(
        long = "base-dirs",
        visible_alias = "base-dir",
        env = "PROVISIONER_BASE_DIRS",
        value_name = "DIR",
        value_delimiter = ',',
        default_value = "/var/lib/hostpath-provisioner"
    )]
    pub base_dirs: Vec<String>,
    /// Directory layout inside a base dir, over {namespace}, {name} and {pv} (default: {pv}).
    #[arg(long, env = "PROVISIONER_PATH_PATTERN")]
    pub path_pattern: Option<String>,
    /// Permissions of new volume directories (octal; world-writable modes are refused).
    #[arg(long, env = "PROVISIONER_DIR_MODE", default_value = "0770")]
    pub dir_mode: String,
    /// Owner uid of new volume directories (default: unchanged, the provisioner's).
    #[arg(long, env = "PROVISIONER_DIR_UID")]
    pub dir_uid: Option<u32>,
    /// Owner gid of new volume directories (default: unchanged).
    #[arg(long, env = "PROVISIONER_DIR_GID")]
    pub dir_gid: Option<u32>,
    /// PersistentVolume type: `local` or `hostPath`.
    #[arg(long, env = "PROVISIONER_VOLUME_TYPE", default_value = "local")]
    pub volume_type: String,
    /// What deleting a volume does: `delete` or `archive`.
    #[arg(long, env = "PROVISIONER_ON_DELETE", default_value = "delete")]
    pub on_delete: String,
    /// Serve every claim (a one-node cluster), including Immediate-binding classes.
    #[arg(long, env = "PROVISIONER_SINGLE_NODE", default_value_t = false)]
    pub single_node: bool,
    /// A JSON config file overriding these flags, re-read when it changes.
    #[arg(long, env = "PROVISIONER_CONFIG_FILE")]
    pub config_file: Option<String>,
    /// How often to check the config file for changes, in seconds.
    #[arg(long, env = "PROVISIONER_CONFIG_RELOAD_SECONDS", default_value_t = 10)]
    pub config_reload_seconds: u64,
    /// How far the requests of a filesystem's live volumes may exceed its size (1.0: not at all).
    #[arg(long, env = "PROVISIONER_OVERCOMMIT_RATIO", default_value = "1.0")]
    pub overcommit_ratio: String,
    /// Free inodes a base dir's filesystem must keep to take a new volume.
    #[arg(long, env = "PROVISIONER_MIN_FREE_INODES", default_value_t = DEFAULT_MIN_FREE_INODES)]
    pub min_free_inodes: u64,
    /// How often to look at every base dir (the `hostpath_unusable_base_dirs` gauge), in seconds.
    #[arg(long, env = "PROVISIONER_BASE_DIR_CHECK_SECONDS", default_value_t = 60)]
    pub base_dir_check_seconds: u64,
    /// The engine's flags.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Reads the Node's `kubernetes.io/hostname` label; falls back to the node
/// name (with a warning) when the label is missing.
pub async fn node_identity(client: &Client, node_name: &str) -> Result<NodeIdentity, kube::Error> {
    let node = Api::<Node>::all(client.clone()).get(node_name).await?;
    let hostname = node.metadata.labels.as_ref().and_then(|l| l.get(HOSTNAME_LABEL)).cloned();
    let hostname = hostname.unwrap_or_else(|| {
        warn!(node = node_name, "the Node has no {HOSTNAME_LABEL} label; using its name for node affinity");
        node_name.to_string()
    });
    Ok(NodeIdentity { name: node_name.to_string(), hostname })
}

/// The settings the flags give, with base dirs that overlap once symlinks
/// are resolved refused.
pub fn flag_settings(args: &Args) -> Result<Settings, RunError> {
    let mut flags = Settings::from_values(
        &args.base_dirs,
        args.path_pattern.as_deref(),
        &args.dir_mode,
        args.dir_uid,
        args.dir_gid,
        &args.volume_type,
        &args.on_delete,
    )
    .map_err(|e| RunError::Flag(e.to_string()))?;
    flags.capacity = CapacityRules {
        overcommit_ratio: OvercommitRatio::parse(&args.overcommit_ratio)
            .map_err(|e| RunError::Flag(format!("--overcommit-ratio: {e}")))?,
        min_free_inodes: args.min_free_inodes,
    };
    flags.check_resolved_base_dirs().map_err(|e| RunError::Flag(format!("--base-dirs: {e}")))?;
    Ok(flags)
}

/// Looks at every base dir every `period` until `stop` is cancelled.
async fn watch_base_dirs(provisioner: HostPathProvisioner, period: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => provisioner.check_base_dirs().await,
        }
    }
}

/// Runs the provisioner until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), RunError> {
    init_logging(&args.engine.log_format);
    let flags = flag_settings(&args)?;
    let shared = SharedSettings::new(flags.clone());
    let stop_watch = CancellationToken::new();
    if let Some(path) = &args.config_file {
        let mut file = ConfigFile::new(path, &args.node_name, flags, shared.clone());
        file.check().map_err(|e| RunError::Flag(format!("--config-file: {e}")))?;
        let period = Duration::from_secs(args.config_reload_seconds.max(1));
        tokio::spawn(file.watch(period, stop_watch.clone()));
    }
    let client = Client::try_default().await.map_err(|e| RunError::Config(e.to_string()))?;
    let node = node_identity(&client, &args.node_name)
        .await
        .map_err(|e| RunError::Config(format!("reading Node {}: {e}", args.node_name)))?;
    info!(node = node.name, hostname = node.hostname, settings = ?shared.get(), single_node = args.single_node, "node settings");
    let provisioner = HostPathProvisioner::new(node, shared).single_node(args.single_node);
    let gauge = provisioner.health().gauge();
    let period = Duration::from_secs(args.base_dir_check_seconds.max(1));
    tokio::spawn(watch_base_dirs(provisioner.clone(), period, stop_watch.clone()));
    let instance = args.node_name.clone();
    let result = run_with(args.engine, &args.provisioner_names, Arc::new(provisioner), |b, registry| {
        registry.register(
            "hostpath_unusable_base_dirs",
            "Base dirs of this node skipped as unusable (missing, unreadable, or a broken ledger) at their last look",
            gauge,
        );
        // One instance per node, no leader: each keeps its own journal.
        b.journal_instance(instance)
    })
    .await;
    stop_watch.cancel();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["hostpath-provisioner", "--node-name", "node-a"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn start_up_refuses_base_dirs_that_overlap_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("disk");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        let dirs = format!("{},{}", real.display(), tmp.path().join("link/volumes").display());
        let err = flag_settings(&args(&["--base-dirs", &dirs])).unwrap_err();
        assert!(err.to_string().contains("overlap once symlinks are resolved"), "{err}");
        let apart = format!("{},{}", real.display(), tmp.path().join("other").display());
        assert!(flag_settings(&args(&["--base-dir", &apart])).is_ok());
    }

    #[test]
    fn capacity_flags_reach_the_settings() {
        let s = flag_settings(&args(&["--overcommit-ratio", "1.5", "--min-free-inodes", "7"])).unwrap();
        assert_eq!(s.capacity.overcommit_ratio.get(), 1.5);
        assert_eq!(s.capacity.min_free_inodes, 7);
        assert_eq!(flag_settings(&args(&[])).unwrap().capacity, CapacityRules::default());
        assert!(flag_settings(&args(&["--overcommit-ratio", "0"])).is_err());
    }

    #[test]
    fn every_hostpath_provisioner_variable_is_provisioner_and_its_flag() {
        use clap::CommandFactory;
        for cmd in [Args::command(), ReleaseArgs::command()] {
            let mut envs = Vec::new();
            for arg in cmd.get_arguments() {
                let (Some(long), Some(env)) = (arg.get_long(), arg.get_env().and_then(|e| e.to_str())) else {
                    continue;
                };
                assert_eq!(env, provisioner_core::cli::variable_for(long), "--{long}");
                envs.push(env);
            }
            for r in renamed_variables() {
                assert!(!envs.contains(&r.old), "{} is still read directly", r.old);
            }
        }
        let cmd = Args::command();
        let envs: Vec<_> = cmd.get_arguments().filter_map(|a| a.get_env()?.to_str()).collect();
        for r in renamed_variables() {
            assert!(envs.contains(&r.new), "{} is no flag's variable", r.new);
        }
    }

    #[test]
    fn hostpath_flags_are_read_from_their_provisioner_variables() {
        let env = [
            ("PROVISIONER_NODE_NAME", "node-b"),
            ("PROVISIONER_NAME", "hostpath.example.com/a,hostpath.example.com/b"),
            ("PROVISIONER_BASE_DIRS", "/mnt/a,/mnt/b"),
            ("PROVISIONER_DIR_MODE", "0750"),
            ("PROVISIONER_ON_DELETE", "archive"),
            ("PROVISIONER_SINGLE_NODE", "true"),
            ("PROVISIONER_MIN_FREE_INODES", "7"),
            ("PROVISIONER_WORKERS", "12"),
            ("PROVISIONER_LOG_FORMAT", "json"),
        ];
        let test = "cli::tests::hostpath_flags_are_read_from_their_provisioner_variables";
        provisioner_core::cli::in_child_process(test, &env, || {
            let (a, warnings) =
                provisioner_core::cli::try_parse_from::<Args, _, _>(["hostpath-provisioner"], &renamed_variables())
                    .unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            assert_eq!(a.node_name, "node-b");
            assert_eq!(a.provisioner_names, ["hostpath.example.com/a", "hostpath.example.com/b"]);
            assert_eq!(a.base_dirs, ["/mnt/a", "/mnt/b"]);
            assert_eq!((a.dir_mode.as_str(), a.on_delete.as_str(), a.single_node), ("0750", "archive", true));
            assert_eq!((a.min_free_inodes, a.engine.workers, a.engine.log_format.as_str()), (7, 12, "json"));
            let (release, _) = provisioner_core::cli::try_parse_from::<ReleaseArgs, _, _>(
                ["hostpath-provisioner release"],
                &renamed_variables(),
            )
            .unwrap();
            assert_eq!(release.provisioner_names, a.provisioner_names, "release reads the same variable");
        });
    }

    #[test]
    fn several_provisioner_names_are_given_as_the_efs_provisioner_takes_them() {
        let a = args(&["--provisioner-name", "x.example/a", "--provisioner-name", "x.example/b,x.example/c"]);
        assert_eq!(a.provisioner_names, ["x.example/a", "x.example/b", "x.example/c"]);
        assert_eq!(args(&[]).provisioner_names, [DEFAULT_PROVISIONER_NAME]);
        assert_eq!(args(&["--base-dir", "/mnt/a"]).base_dirs, ["/mnt/a"], "the 0.1.0 flag still works");
    }

    #[test]
    fn the_0_1_0_variable_names_still_work_with_a_warning() {
        let env = [("NODE_NAME", "node-b"), ("BASE_DIRS", "/mnt/a,/mnt/b"), ("METRICS_ADDRESS", "")];
        let test = "cli::tests::the_0_1_0_variable_names_still_work_with_a_warning";
        provisioner_core::cli::in_child_process(test, &env, || {
            let (a, warnings) =
                provisioner_core::cli::try_parse_from::<Args, _, _>(["hostpath-provisioner"], &renamed_variables())
                    .unwrap();
            assert_eq!((a.node_name.as_str(), a.engine.metrics_address.as_str()), ("node-b", ""));
            assert_eq!(a.base_dirs, ["/mnt/a", "/mnt/b"]);
            assert_eq!(warnings.len(), 3, "{warnings:?}");
            for new in ["PROVISIONER_NODE_NAME", "PROVISIONER_BASE_DIRS", "PROVISIONER_METRICS_ADDRESS"] {
                assert!(warnings.iter().any(|w| w.ends_with(&format!("rename it to {new}"))), "{new}: {warnings:?}");
            }
        });
    }

    #[test]
    fn without_a_node_name_start_up_is_a_usage_error_naming_the_variable() {
        let test = "cli::tests::without_a_node_name_start_up_is_a_usage_error_naming_the_variable";
        provisioner_core::cli::in_child_process(test, &[], || {
            let err =
                provisioner_core::cli::try_parse_from::<Args, _, _>(["hostpath-provisioner"], &renamed_variables())
                    .err()
                    .unwrap();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains("--node-name"), "{err}");
        });
    }
}
