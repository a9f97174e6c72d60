//! The binary's flags (each also read from an environment variable) and its
//! start-up: read the Node's hostname label, load settings, start the config
//! file watcher and run the engine.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use provisioner_core::cli::{EngineArgs, RunError, init_logging, run_with};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ConfigFile, Settings, SharedSettings};
use crate::provisioner::{DEFAULT_PROVISIONER_NAME, HOSTNAME_LABEL, HostPathProvisioner, NodeIdentity};

/// Flags of `hostpath-provisioner`.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "hostpath-provisioner", version, about = "A directory per claim on this node's disk")]
pub struct Args {
    /// This node's name (from the downward API: spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The provisioner name StorageClasses use.
    #[arg(long, env = "PROVISIONER_NAME", default_value = DEFAULT_PROVISIONER_NAME)]
    pub provisioner_name: String,
    /// Base dirs for volumes (comma-separated); the one with most free space is used.
    #[arg(
        long = "base-dir",
        env = "BASE_DIRS",
        value_delimiter = ',',
        default_value = "/var/lib/hostpath-provisioner"
    )]
    pub base_dirs: Vec<String>,
    /// Directory layout inside a base dir, over {namespace}, {name} and {pv} (default: {pv}).
    #[arg(long, env = "PATH_PATTERN")]
    pub path_pattern: Option<String>,
    /// Permissions of new volume directories (octal; world-writable modes are refused).
    #[arg(long, env = "DIR_MODE", default_value = "0770")]
    pub dir_mode: String,
    /// Owner uid of new volume directories (default: unchanged, the provisioner's).
    #[arg(long, env = "DIR_UID")]
    pub dir_uid: Option<u32>,
    /// Owner gid of new volume directories (default: unchanged).
    #[arg(long, env = "DIR_GID")]
    pub dir_gid: Option<u32>,
    /// PersistentVolume type: `local` or `hostPath`.
    #[arg(long, env = "VOLUME_TYPE", default_value = "local")]
    pub volume_type: String,
    /// What deleting a volume does: `delete` or `archive`.
    #[arg(long, env = "ON_DELETE", default_value = "delete")]
    pub on_delete: String,
    /// Serve every claim (a one-node cluster), including Immediate-binding classes.
    #[arg(long, env = "SINGLE_NODE", default_value_t = false)]
    pub single_node: bool,
    /// A JSON config file overriding these flags, re-read when it changes.
    #[arg(long, env = "CONFIG_FILE")]
    pub config_file: Option<String>,
    /// How often to check the config file for changes, in seconds.
    #[arg(long, env = "CONFIG_RELOAD_SECONDS", default_value_t = 10)]
    pub config_reload_seconds: u64,
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

/// Runs the provisioner until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), RunError> {
    init_logging(&args.engine.log_format);
    let flags = Settings::from_values(
        &args.base_dirs,
        args.path_pattern.as_deref(),
        &args.dir_mode,
        args.dir_uid,
        args.dir_gid,
        &args.volume_type,
        &args.on_delete,
    )
    .map_err(|e| RunError::Flag(e.to_string()))?;
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
    let result = run_with(args.engine, &[args.provisioner_name], Arc::new(provisioner), |b, _| b).await;
    stop_watch.cancel();
    result
}
