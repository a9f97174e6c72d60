//! The binary's flags and the wiring from flags to a running provisioner.
//!
//! Each flag is also read from an environment variable: the seed's
//! `EFS_PERFORMANCE`, `AWS_REGION`, `AWS_SECURITY_GROUP` and `AWS_SUBNETS`
//! exactly as the original deployment sets them, the AWS SDK's
//! `AWS_ENDPOINT_URL_EFS`, and `PROVISIONER_<FLAG>` for the rest
//! ([`provisioner_core::cli::variable_for`]). The 0.1.0 names of renamed
//! variables ([`renamed_variables`]) are still read, with a warning.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use provisioner_core::cli::{ENGINE_RENAMED, EngineArgs, Renamed};

use crate::api::{NetworkApi, PerformanceMode};
use crate::config::{Defaults, parse_performance_mode, parse_tags, split_list};
use crate::deadline::{DeadlineApi, Deadlines};
use crate::ec2::Ec2Client;
use crate::limiter::{AdaptiveLimiter, LimitedApi, LimiterConfig};
use crate::provisioner::{EfsProvisioner, tag_text};

/// The provisioner names of the original deployment.
pub const SEED_NAMES: [&str; 2] = ["efs.aws.skpr.io/generalPurpose", "efs.aws.skpr.io/maxIO"];

/// The variables of the seed's deployment, read under these names
/// (they are the exception to the `PROVISIONER_` names), and the AWS SDK's own.
pub const SEED_VARIABLES: [&str; 5] =
    ["EFS_PERFORMANCE", "AWS_REGION", "AWS_SECURITY_GROUP", "AWS_SUBNETS", "AWS_ENDPOINT_URL_EFS"];

/// The EFS flags' variables renamed since 0.1.0.
pub const EFS_RENAMED: &[Renamed] = &[
    Renamed { old: "PROVISIONER_NAMES", new: "PROVISIONER_NAME" },
    Renamed { old: "CLUSTER_ID", new: "PROVISIONER_CLUSTER_ID" },
    Renamed { old: "EFS_API_RATE", new: "PROVISIONER_EFS_API_RATE" },
    Renamed { old: "EFS_READ_TIMEOUT", new: "PROVISIONER_EFS_READ_TIMEOUT" },
    Renamed { old: "EFS_WRITE_TIMEOUT", new: "PROVISIONER_EFS_WRITE_TIMEOUT" },
];

/// Every variable of `efs-provisioner` renamed since 0.1.0: the engine's and the EFS flags'.
pub fn renamed_variables() -> Vec<Renamed> {
    [ENGINE_RENAMED, EFS_RENAMED].concat()
}

/// Flags of `efs-provisioner`.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "efs-provisioner",
    version,
    about = "Provisions AWS EFS file systems or access points for PersistentVolumeClaims"
)]
pub struct Args {
    /// The engine's flags.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The EFS flags.
    #[command(flatten)]
    pub efs: EfsArgs,
    /// Deadlines of EFS requests.
    #[command(flatten)]
    pub deadlines: EfsDeadlineArgs,
    /// Tags of the operator's.
    #[command(flatten)]
    pub tagging: TagArgs,
}

/// `efs-provisioner release`: the uninstall step (see the README).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "efs-provisioner release",
    bin_name = "efs-provisioner release",
    about = "With every replica stopped, remove the provisioner's \
    finalizers, intent journals and 0.1's intent records from claims and volumes, and list the EFS file systems and access points \
    that leaves to you"
)]
pub struct ReleaseArgs {
    /// The provisioner names to release, as the running provisioner had them
    /// (repeat or comma-separate for several).
    #[arg(
        long = "provisioner-name",
        env = "PROVISIONER_NAME",
        value_name = "NAME",
        value_delimiter = ',',
        required = true
    )]
    pub provisioner_names: Vec<String>,
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// EFS flags.
#[derive(Clone, Debug, clap::Args)]
pub struct EfsArgs {
    /// A provisioner name to serve (repeat or comma-separate for several; the first names the
    /// Lease and events). `.../maxIO` implies performance mode maxIO, `.../generalPurpose` generalPurpose.
    #[arg(long = "provisioner-name", env = "PROVISIONER_NAME", value_name = "NAME", value_delimiter = ',',
          default_values_t = SEED_NAMES.map(String::from))]
    pub provisioner_names: Vec<String>,
    /// Performance mode for names that imply none: generalPurpose or maxIO.
    #[arg(long, env = "EFS_PERFORMANCE", default_value = "generalPurpose")]
    pub efs_performance: String,
    /// AWS region (default: the SDK's chain: AWS_REGION, profile, instance metadata).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Security group(s) of mount targets, comma-separated.
    #[arg(long, env = "AWS_SECURITY_GROUP", default_value = "")]
    pub security_group: String,
    /// Subnets for mount targets, comma-separated, one per availability zone.
    #[arg(long, env = "AWS_SUBNETS", default_value = "")]
    pub subnets: String,
    /// EFS endpoint (tests: moto); the SDK also reads AWS_ENDPOINT_URL_EFS itself.
    #[arg(long, env = "AWS_ENDPOINT_URL_EFS")]
    pub endpoint_url: Option<String>,
    /// Cluster id, tagged on everything created; deletes need it to match. Set it per cluster:
    /// with the default, clusters sharing an AWS account can delete each other's volumes.
    #[arg(long, env = "PROVISIONER_CLUSTER_ID", default_value = "kubernetes")]
    pub cluster_id: String,
    /// Ceiling of EFS requests per second (the limiter halves it on throttling, then recovers).
    #[arg(long, env = "PROVISIONER_EFS_API_RATE", default_value_t = 10.0)]
    pub efs_api_rate: f64,
}

impl EfsArgs {
    /// The defaults for every class; `region` is the resolved region.
    pub fn defaults(&self, region: &str) -> Result<Defaults, String> {
        let performance_mode: PerformanceMode = parse_performance_mode(&self.efs_performance)
            .map_err(|e| format!("EFS_PERFORMANCE (--efs-performance): {e}"))?;
        let security_groups = split_list(&self.security_group);
        if security_groups.is_empty() {
            return Err("AWS_SECURITY_GROUP (--security-group) is empty: mount targets need a security group that \
                 allows NFS (TCP 2049) from the nodes; without one EFS uses the VPC's default group and mounts hang"
                .into());
        }
        if self.cluster_id.is_empty() || tag_text(&self.cluster_id) != self.cluster_id {
            return Err(format!(
                "PROVISIONER_CLUSTER_ID (--cluster-id) {:?} is not a valid EFS tag value (1 to 256 letters, digits, spaces, \
                 _.:/=+-@)",
                self.cluster_id
            ));
        }
        Ok(Defaults {
            performance_mode,
            region: region.to_string(),
            security_groups,
            subnets: split_list(&self.subnets),
            cluster_id: self.cluster_id.clone(),
            tags: BTreeMap::new(),
        })
    }

    /// The limiter's settings.
    pub fn limiter(&self) -> LimiterConfig {
        LimiterConfig {
            max_rate: self.efs_api_rate,
            burst: self.efs_api_rate.ceil().max(1.0) as u32,
            ..Default::default()
        }
    }
}

/// Deadlines of single EFS requests (kept apart from [`EfsArgs`] so code
/// that builds those by hand is unaffected).
#[derive(Clone, Debug, clap::Args)]
pub struct EfsDeadlineArgs {
    /// Seconds a describe request to EFS may take before it counts as lost.
    #[arg(long, env = "PROVISIONER_EFS_READ_TIMEOUT", default_value_t = 10)]
    pub efs_read_timeout: u64,
    /// Seconds a create, delete or tag request to EFS may take before it counts as lost
    /// (the provisioner then looks again: it may have been carried out).
    #[arg(long, env = "PROVISIONER_EFS_WRITE_TIMEOUT", default_value_t = 30)]
    pub efs_write_timeout: u64,
}

impl Default for EfsDeadlineArgs {
    fn default() -> Self {
        let d = Deadlines::default();
        EfsDeadlineArgs { efs_read_timeout: d.read.as_secs(), efs_write_timeout: d.write.as_secs() }
    }
}

impl EfsDeadlineArgs {
    /// The deadlines (0 is taken as 1 s: no request may wait for ever).
    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            read: Duration::from_secs(self.efs_read_timeout.max(1)),
            write: Duration::from_secs(self.efs_write_timeout.max(1)),
        }
    }
}

/// Tags of the operator's own on everything created (kept apart from
/// [`EfsArgs`] so code that builds those by hand is unaffected).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TagArgs {
    /// Tags of your own on every file system and access point created, comma-separated key=value
    /// (EFS's tag rules; the keys the provisioner sets itself are refused). A class's `tags`
    /// parameter adds to them.
    #[arg(long, env = "PROVISIONER_TAGS", default_value = "", value_name = "KEY=VALUE,...")]
    pub tags: String,
}

impl TagArgs {
    /// The tags, checked against EFS's rules.
    pub fn tags(&self) -> Result<BTreeMap<String, String>, String> {
        parse_tags(&self.tags).map_err(|e| format!("PROVISIONER_TAGS (--tags): {e}"))
    }
}

/// The provisioner as the binary runs it: SDK client, per-request deadlines, shared limiter.
pub type SdkProvisioner = EfsProvisioner<LimitedApi<DeadlineApi<aws_sdk_efs::Client>>>;

/// Builds the SDK client (default credential chain: IRSA, Pod Identity,
/// instance profile, environment), the EC2 lookups of the topology check,
/// and the provisioner. Both pass the same limiter and deadlines.
///
/// Endpoints: EFS's is `--endpoint-url` (`AWS_ENDPOINT_URL_EFS`) when
/// given; EC2's is `AWS_ENDPOINT_URL_EC2`, else `AWS_ENDPOINT_URL`, else,
/// when EFS's was given (moto, the stand-in: they answer both), that one.
pub async fn build(
    args: &EfsArgs,
    deadlines: &EfsDeadlineArgs,
    tagging: &TagArgs,
) -> Result<(Arc<SdkProvisioner>, Arc<AdaptiveLimiter>), String> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &args.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    let region = sdk.region().map(|r| r.to_string()).ok_or("no AWS region: set AWS_REGION or --region".to_string())?;
    let mut defaults = args.defaults(&region)?;
    defaults.tags = tagging.tags()?;
    let limiter = Arc::new(AdaptiveLimiter::new(args.limiter()));
    let deadlines = deadlines.deadlines();
    let efs_endpoint = args.endpoint_url.as_deref().filter(|u| !u.is_empty());
    let mut efs = aws_sdk_efs::config::Builder::from(&sdk);
    if let Some(url) = efs_endpoint {
        efs = efs.endpoint_url(url);
    }
    let efs = aws_sdk_efs::Client::from_conf(efs.build());
    let api = LimitedApi::new(DeadlineApi::new(efs, deadlines), limiter.clone());
    let ec2 = Ec2Client::from_sdk_config(&sdk, efs_endpoint)?;
    tracing::info!(
        endpoint = ec2.endpoint(),
        "subnets and security groups are checked with EC2 before a file system is created"
    );
    let network: Arc<dyn NetworkApi> = Arc::new(LimitedApi::new(DeadlineApi::new(ec2, deadlines), limiter.clone()));
    Ok((Arc::new(EfsProvisioner::new(api, defaults).with_network(network)), limiter))
}

/// Makes aws-lc rustls's process-wide provider, the one both the AWS SDK and
/// the Kubernetes client are built with in this workspace. Harmless when one
/// is already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        efs: EfsArgs,
        #[command(flatten)]
        deadlines: EfsDeadlineArgs,
        #[command(flatten)]
        tagging: TagArgs,
    }

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("efs-provisioner").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn an_empty_security_group_list_is_refused_at_start_up() {
        let f = flags(&["--security-group", "", "--subnets", "subnet-a"]);
        let err = f.efs.defaults("us-east-1").unwrap_err();
        assert!(err.contains("AWS_SECURITY_GROUP") && err.contains("mounts hang"), "{err}");
        assert!(flags(&["--security-group", "sg-1"]).efs.defaults("us-east-1").is_ok());
    }

    #[test]
    fn a_cluster_id_efs_cannot_tag_is_refused_at_start_up() {
        let f = flags(&["--security-group", "sg-1", "--cluster-id", "prod;east"]);
        assert!(f.efs.defaults("us-east-1").unwrap_err().contains("PROVISIONER_CLUSTER_ID"));
    }

    #[test]
    fn custom_tags_are_checked_against_efs_rules_at_start_up() {
        assert!(flags(&[]).tagging.tags().unwrap().is_empty());
        let tags = flags(&["--tags", "team=storage,cost-center=4711"]).tagging.tags().unwrap();
        assert_eq!(tags.get("cost-center").map(String::as_str), Some("4711"));
        for (bad, needle) in [
            ("efs.aws.skpr.io/managed-by=me", "sets itself"),
            ("team=a;b", "not valid in EFS"),
            ("aws:x=y", "reserved for AWS"),
        ] {
            let err = flags(&["--tags", bad]).tagging.tags().unwrap_err();
            assert!(err.starts_with("PROVISIONER_TAGS (--tags)") && err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn every_efs_request_has_a_deadline_by_default() {
        let d = flags(&[]).deadlines.deadlines();
        assert_eq!(d, Deadlines::default());
        assert_eq!(d.read, Duration::from_secs(10));
        assert_eq!(d.write, Duration::from_secs(30));
        let d = flags(&["--efs-read-timeout", "0"]).deadlines.deadlines();
        assert_eq!(d.read, Duration::from_secs(1), "never unbounded");
    }

    #[test]
    fn every_efs_provisioner_variable_is_provisioner_and_its_flag_except_the_seeds() {
        use clap::CommandFactory;
        for cmd in [Args::command(), ReleaseArgs::command()] {
            for arg in cmd.get_arguments() {
                let (Some(long), Some(env)) = (arg.get_long(), arg.get_env().and_then(|e| e.to_str())) else {
                    continue;
                };
                if !SEED_VARIABLES.contains(&env) {
                    assert_eq!(env, provisioner_core::cli::variable_for(long), "--{long}");
                }
            }
            let envs: Vec<_> = cmd.get_arguments().filter_map(|a| a.get_env()?.to_str()).collect();
            for r in renamed_variables() {
                assert!(!envs.contains(&r.old), "{} is still read directly", r.old);
            }
        }
        let cmd = Args::command();
        let envs: Vec<_> = cmd.get_arguments().filter_map(|a| a.get_env()?.to_str()).collect();
        for seed in SEED_VARIABLES {
            assert!(envs.contains(&seed), "{seed} is read");
        }
        for r in renamed_variables() {
            assert!(envs.contains(&r.new), "{} is no flag's variable", r.new);
        }
    }

    #[test]
    fn the_seed_deployments_variables_still_configure_the_provisioner() {
        // The environment of the original `aws-efs-max-io` Deployment, and nothing else.
        let env = [
            ("EFS_PERFORMANCE", "maxIO"),
            ("AWS_REGION", "ap-southeast-2"),
            ("AWS_SECURITY_GROUP", "sg-xxxxxxxxx"),
            ("AWS_SUBNETS", "subnet-xxxxxx,subnet-yyyyyy"),
        ];
        let test = "cli::tests::the_seed_deployments_variables_still_configure_the_provisioner";
        provisioner_core::cli::in_child_process(test, &env, || {
            let (args, warnings) =
                provisioner_core::cli::try_parse_from::<Args, _, _>(["efs-provisioner"], &renamed_variables()).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            assert_eq!(args.efs.provisioner_names, SEED_NAMES.map(String::from));
            assert_eq!(args.efs.region.as_deref(), Some("ap-southeast-2"));
            let d = args.efs.defaults("ap-southeast-2").unwrap();
            assert_eq!(d.performance_mode, PerformanceMode::MaxIo);
            assert_eq!(d.security_groups, ["sg-xxxxxxxxx"]);
            assert_eq!(d.subnets, ["subnet-xxxxxx", "subnet-yyyyyy"]);
        });
    }

    #[test]
    fn efs_flags_are_read_from_their_provisioner_variables() {
        let env = [
            ("PROVISIONER_NAME", "efs.example.com/a,efs.example.com/b"),
            ("PROVISIONER_CLUSTER_ID", "prod-eu"),
            ("PROVISIONER_EFS_API_RATE", "2.5"),
            ("PROVISIONER_EFS_READ_TIMEOUT", "4"),
            ("PROVISIONER_EFS_WRITE_TIMEOUT", "40"),
            ("PROVISIONER_TAGS", "team=storage"),
            ("PROVISIONER_WORKERS", "12"),
            ("PROVISIONER_LOG_FORMAT", "json"),
            ("AWS_SECURITY_GROUP", "sg-1"),
        ];
        let test = "cli::tests::efs_flags_are_read_from_their_provisioner_variables";
        provisioner_core::cli::in_child_process(test, &env, || {
            let (args, warnings) =
                provisioner_core::cli::try_parse_from::<Args, _, _>(["efs-provisioner"], &renamed_variables()).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            assert_eq!(args.efs.provisioner_names, ["efs.example.com/a", "efs.example.com/b"]);
            assert_eq!(args.efs.defaults("us-east-1").unwrap().cluster_id, "prod-eu");
            assert_eq!(args.efs.limiter().max_rate, 2.5);
            assert_eq!(
                args.deadlines.deadlines(),
                Deadlines { read: Duration::from_secs(4), write: Duration::from_secs(40) }
            );
            assert_eq!((args.engine.workers, args.engine.log_format.as_str()), (12, "json"));
            assert_eq!(args.tagging.tags().unwrap().get("team").map(String::as_str), Some("storage"));
            let (release, _) = provisioner_core::cli::try_parse_from::<ReleaseArgs, _, _>(
                ["efs-provisioner release", "--dry-run"],
                &renamed_variables(),
            )
            .unwrap();
            assert_eq!(release.provisioner_names, args.efs.provisioner_names, "release reads the same variable");
        });
    }

    #[test]
    fn the_0_1_0_variable_names_still_work_with_a_warning() {
        let env = [
            ("PROVISIONER_NAMES", "efs.example.com/a,efs.example.com/b"),
            ("CLUSTER_ID", "prod-eu"),
            ("EFS_API_RATE", "2.5"),
            ("WORKERS", "12"),
            ("AWS_SECURITY_GROUP", "sg-1"),
        ];
        let test = "cli::tests::the_0_1_0_variable_names_still_work_with_a_warning";
        provisioner_core::cli::in_child_process(test, &env, || {
            let (args, warnings) =
                provisioner_core::cli::try_parse_from::<Args, _, _>(["efs-provisioner"], &renamed_variables()).unwrap();
            assert_eq!(args.efs.provisioner_names, ["efs.example.com/a", "efs.example.com/b"]);
            assert_eq!(args.efs.defaults("us-east-1").unwrap().cluster_id, "prod-eu");
            assert_eq!((args.efs.limiter().max_rate, args.engine.workers), (2.5, 12));
            assert_eq!(warnings.len(), 4, "{warnings:?}");
            assert!(
                warnings.iter().any(|w| w.starts_with("PROVISIONER_NAMES is deprecated")
                    && w.ends_with("rename it to PROVISIONER_NAME")),
                "{warnings:?}"
            );
            assert!(warnings.iter().any(|w| w.contains("rename it to PROVISIONER_CLUSTER_ID")), "{warnings:?}");
            let (release, warnings) = provisioner_core::cli::try_parse_from::<ReleaseArgs, _, _>(
                ["efs-provisioner release"],
                &renamed_variables(),
            )
            .unwrap();
            assert_eq!(release.provisioner_names, args.efs.provisioner_names);
            assert_eq!(warnings.len(), 1, "only the name is release's: {warnings:?}");
        });
    }
}
