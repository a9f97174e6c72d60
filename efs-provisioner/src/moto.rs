//! Helpers for tests, benchmarks and demos against moto (`moto[server]`),
//! the AWS-compatible server `tests/moto/up` starts on loopback: a client
//! with fake credentials (EFS and EC2), moto's default subnets and security group (from
//! its EC2 API), and a state reset. Blocking and dependency-free on purpose:
//! plain HTTP/1.1 over a TCP socket to 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The variable `tests/moto/up` prints, naming moto's endpoint.
pub const ENDPOINT_VAR: &str = "AWS_ENDPOINT_URL_EFS";

/// moto's endpoint from [`ENDPOINT_VAR`], or an explanation of how to start it.
pub fn endpoint_from_env() -> Result<String, String> {
    std::env::var(ENDPOINT_VAR).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
        format!(
            "{ENDPOINT_VAR} is not set: these tests need moto on loopback. Start it with \
             eval \"$(tests/moto/up)\" (or MOTO_STATE_DIR=/tmp/efs-moto tests/moto/up for a private one)"
        )
    })
}

/// An EFS client for moto at `endpoint` in `region`, with moto's fake credentials.
pub fn client(endpoint: &str, region: &str) -> aws_sdk_efs::Client {
    let config = aws_sdk_efs::Config::builder()
        .behavior_version(aws_sdk_efs::config::BehaviorVersion::latest())
        .region(aws_sdk_efs::config::Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_efs::config::Credentials::new("testing", "testing", None, None, "moto"))
        .build();
    aws_sdk_efs::Client::from_conf(config)
}

/// An EC2 client ([`crate::ec2::Ec2Client`]) for moto at `endpoint` in
/// `region`, with moto's fake credentials: moto answers EC2 on the same port.
pub fn ec2_client(endpoint: &str, region: &str) -> crate::ec2::Ec2Client {
    let credentials = aws_credential_types::provider::SharedCredentialsProvider::new(
        aws_sdk_efs::config::Credentials::new("testing", "testing", None, None, "moto"),
    );
    crate::ec2::Ec2Client::new(endpoint, region, credentials)
}

fn host_port(endpoint: &str) -> Result<String, String> {
    let rest = endpoint.strip_prefix("http://").ok_or_else(|| format!("{endpoint}: only http:// is supported"))?;
    Ok(rest.trim_end_matches('/').to_string())
}

/// Sends one request and returns (status, body).
fn request(endpoint: &str, method: &str, path: &str, region: &str, body: &str) -> Result<(u16, String), String> {
    let addr = host_port(endpoint)?;
    let mut s = TcpStream::connect(&addr).map_err(|e| format!("cannot reach moto at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    // moto takes the region from the credential scope of the Authorization header.
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20240101/{region}/ec2/aws4_request, \
         SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Clears all of moto's state (`POST /moto-api/reset`). The default VPC's
/// subnets get new ids afterwards.
pub fn reset(endpoint: &str) -> Result<(), String> {
    let (status, body) = request(endpoint, "POST", "/moto-api/reset", "us-east-1", "")?;
    if status == 200 { Ok(()) } else { Err(format!("moto reset answered {status}: {body}")) }
}

fn values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open).skip(1).filter_map(|p| p.split(&close).next()).map(str::to_string).collect()
}

/// moto's default-VPC subnets in `region`, as (subnet id, availability zone), one per zone.
pub fn default_subnets(endpoint: &str, region: &str) -> Result<Vec<(String, String)>, String> {
    let body = "Action=DescribeSubnets&Version=2016-11-15&Filter.1.Name=default-for-az&Filter.1.Value.1=true";
    let (status, xml) = request(endpoint, "POST", "/", region, body)?;
    if status != 200 {
        return Err(format!("DescribeSubnets answered {status}: {xml}"));
    }
    let mut out: Vec<(String, String)> = xml
        .split("<item>")
        .skip(1)
        .filter_map(|item| {
            let id = values(item, "subnetId").into_iter().next()?;
            let az = values(item, "availabilityZone").into_iter().next()?;
            Some((id, az))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// The id of the default VPC's `default` security group in `region`.
pub fn default_security_group(endpoint: &str, region: &str) -> Result<String, String> {
    let body = "Action=DescribeSecurityGroups&Version=2016-11-15&Filter.1.Name=group-name&Filter.1.Value.1=default";
    let (status, xml) = request(endpoint, "POST", "/", region, body)?;
    if status != 200 {
        return Err(format!("DescribeSecurityGroups answered {status}: {xml}"));
    }
    values(&xml, "groupId").into_iter().next().ok_or_else(|| format!("no default security group in {xml}"))
}
