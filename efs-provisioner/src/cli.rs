//! The binary's EFS flags (each also read from the seed's environment
//! variables) and the wiring from flags to a running provisioner.

use std::sync::Arc;

use aws_config::BehaviorVersion;

use crate::api::PerformanceMode;
use crate::config::{Defaults, parse_performance_mode, split_list};
use crate::limiter::{AdaptiveLimiter, LimitedApi, LimiterConfig};
use crate::provisioner::EfsProvisioner;

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
    /// Cluster id, tagged on everything created, to find orphans.
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
        Ok(Defaults {
            performance_mode,
            region: region.to_string(),
            security_groups: split_list(&self.security_group),
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

/// The provisioner as the binary runs it: SDK client, shared limiter.
pub type SdkProvisioner = EfsProvisioner<LimitedApi<aws_sdk_efs::Client>>;

/// Builds the SDK client (default credential chain: IRSA, Pod Identity,
/// instance profile, environment) and the provisioner.
pub async fn build(args: &EfsArgs) -> Result<Arc<SdkProvisioner>, String> {
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
    let api = LimitedApi::new(aws_sdk_efs::Client::new(&sdk), limiter);
    Ok(Arc::new(EfsProvisioner::new(api, defaults)))
}

/// Makes aws-lc rustls's process-wide provider, the one both the AWS SDK and
/// the Kubernetes client are built with in this workspace. Harmless when one
/// is already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
