//! The binary's EFS flags (each also read from the seed's environment
//! variables) and the wiring from flags to a running provisioner.

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;

use crate::api::PerformanceMode;
use crate::config::{Defaults, parse_performance_mode, split_list};
use crate::deadline::{DeadlineApi, Deadlines};
use crate::limiter::{AdaptiveLimiter, LimitedApi, LimiterConfig};
use crate::provisioner::{EfsProvisioner, tag_text};

/// The provisioner names of the original deployment.
pub const SEED_NAMES: [&str; 2] = ["efs.aws.skpr.io/generalPurpose", "efs.aws.skpr.io/maxIO"];

/// EFS flags.
#[derive(Clone, Debug, clap::Args)]
pub struct EfsArgs {
    /// A provisioner name to serve (repeat for several; the first names the Lease and events).
    /// `.../maxIO` implies performance mode maxIO, `.../generalPurpose` generalPurpose.
    #[arg(long = "provisioner-name", env = "PROVISIONER_NAMES", value_delimiter = ',',
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
    #[arg(long, env = "CLUSTER_ID", default_value = "kubernetes")]
    pub cluster_id: String,
    /// Ceiling of EFS requests per second (the limiter halves it on throttling, then recovers).
    #[arg(long, env = "EFS_API_RATE", default_value_t = 10.0)]
    pub efs_api_rate: f64,
}

impl EfsArgs {
    /// The defaults for every class; `region` is the resolved region.
    pub fn defaults(&self, region: &str) -> Result<Defaults, String> {
        let performance_mode: PerformanceMode =
            parse_performance_mode(&self.efs_performance).map_err(|e| format!("EFS_PERFORMANCE: {e}"))?;
        let security_groups = split_list(&self.security_group);
        if security_groups.is_empty() {
            return Err("AWS_SECURITY_GROUP (--security-group) is empty: mount targets need a security group that \
                 allows NFS (TCP 2049) from the nodes; without one EFS uses the VPC's default group and mounts hang"
                .into());
        }
        if self.cluster_id.is_empty() || tag_text(&self.cluster_id) != self.cluster_id {
            return Err(format!(
                "CLUSTER_ID (--cluster-id) {:?} is not a valid EFS tag value (1 to 256 letters, digits, spaces, \
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
    #[arg(long, env = "EFS_READ_TIMEOUT", default_value_t = 10)]
    pub efs_read_timeout: u64,
    /// Seconds a create, delete or tag request to EFS may take before it counts as lost
    /// (the provisioner then looks again: it may have been carried out).
    #[arg(long, env = "EFS_WRITE_TIMEOUT", default_value_t = 30)]
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

/// The provisioner as the binary runs it: SDK client, per-request deadlines, shared limiter.
pub type SdkProvisioner = EfsProvisioner<LimitedApi<DeadlineApi<aws_sdk_efs::Client>>>;

/// Builds the SDK client (default credential chain: IRSA, Pod Identity,
/// instance profile, environment) and the provisioner.
pub async fn build(
    args: &EfsArgs,
    deadlines: &EfsDeadlineArgs,
) -> Result<(Arc<SdkProvisioner>, Arc<AdaptiveLimiter>), String> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &args.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = args.endpoint_url.as_deref().filter(|u| !u.is_empty()) {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    let region = sdk.region().map(|r| r.to_string()).ok_or("no AWS region: set AWS_REGION or --region".to_string())?;
    let defaults = args.defaults(&region)?;
    let limiter = Arc::new(AdaptiveLimiter::new(args.limiter()));
    let deadlines = deadlines.deadlines();
    let api = LimitedApi::new(DeadlineApi::new(aws_sdk_efs::Client::new(&sdk), deadlines), limiter.clone());
    tracing::warn!(
        "subnets and security groups are not checked against EC2 before a file system is created (no EC2 client \
         in this build): a bad subnet shows as a rolled-back file system"
    );
    Ok((Arc::new(EfsProvisioner::new(api, defaults)), limiter))
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
        assert!(f.efs.defaults("us-east-1").unwrap_err().contains("CLUSTER_ID"));
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
}
