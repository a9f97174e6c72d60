//! [`NetworkApi`] on EC2's Query API: the two read-only lookups of the
//! topology check (`DescribeSubnets`, `DescribeSecurityGroups`), signed
//! with SigV4 and sent over HTTPS, on crates the AWS SDK already brings
//! (`aws-sigv4`, `aws-smithy-xml`, `hyper-rustls`).
//!
//! Why not `aws-sdk-ec2`: for these two calls it cost 366 s of a clean
//! 2-core build (the whole rest of this crate's dependency tree took about
//! 4 minutes) and about 800 MB of build output (its rlib alone is 624 MB).
//!
//! The ids are asked for with a filter (`subnet-id`, `group-id`), so ids
//! that do not exist are simply left out of the answer, as [`NetworkApi`]
//! says. A `...NotFound` error (EC2's answer when ids are asked for by name,
//! which this client does not do) is read as nothing found. Errors become [`ApiError`]s as in [`crate::sdk`]: access
//! denied, throttled (`RequestLimitExceeded`), credentials that cannot be
//! had or are refused (`AuthFailure`), no route to EC2. There is no retry
//! here: the provisioner's next round is the retry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_xml::decode::{Document, ScopedDecoder, XmlDecodeError, try_data};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::api::{ApiError, ErrorKind, NetworkApi, Operation, SecurityGroup, Subnet};
use crate::sdk::classify_code;

/// The EC2 API version the requests are written for.
pub const API_VERSION: &str = "2016-11-15";
/// Pages followed at most per lookup (each holds up to 1,000 items; the
/// provisioner asks for a handful of ids).
const MAX_PAGES: usize = 20;
/// Credentials are fetched again this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// One page of a `Describe...` answer: its items and the next page's token.
pub type Page<T> = (Vec<T>, Option<String>);

/// EC2's endpoint in `region`, in its partition (`amazonaws.com.cn` in China).
///
/// ```
/// use efs_provisioner::ec2::default_endpoint;
/// assert_eq!(default_endpoint("eu-west-1"), "https://ec2.eu-west-1.amazonaws.com");
/// assert_eq!(default_endpoint("cn-north-1"), "https://ec2.cn-north-1.amazonaws.com.cn");
/// ```
pub fn default_endpoint(region: &str) -> String {
    format!("https://ec2.{region}.{}", crate::volume::dns_suffix(region))
}

/// A minimal EC2 client for the [`NetworkApi`] lookups.
pub struct Ec2Client {
    endpoint: String,
    region: String,
    credentials: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<Credentials>>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Ec2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Client").field("endpoint", &self.endpoint).field("region", &self.region).finish()
    }
}

impl Ec2Client {
    /// A client for `endpoint` (`https://...`, or `http://` for tests) in
    /// `region`, signing with `credentials`.
    pub fn new(endpoint: impl Into<String>, region: impl Into<String>, credentials: SharedCredentialsProvider) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                // No CA certificates on this machine: HTTPS to EC2 will fail
                // (and say so on the claim); plain HTTP endpoints still work.
                tracing::warn!(error = %e, "no CA certificates found for EC2's HTTPS endpoint");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
                    .unwrap_or_else(|_| {
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    });
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ec2Client {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            region: region.into(),
            credentials,
            cached: tokio::sync::Mutex::new(None),
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// A client as the SDK's configuration says: its region and credential
    /// chain, and the endpoint from `AWS_ENDPOINT_URL_EC2`, else the
    /// configuration's own (`AWS_ENDPOINT_URL`, a profile's `endpoint_url`),
    /// else `fallback` (the EFS endpoint given for tests: moto and the
    /// stand-in answer EC2 on it too), else [`default_endpoint`].
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, fallback: Option<&str>) -> Result<Self, String> {
        let region = sdk.region().map(|r| r.to_string()).ok_or("no AWS region: set AWS_REGION or --region")?;
        let credentials = sdk.credentials_provider().ok_or("no AWS credential provider configured")?;
        let endpoint = std::env::var("AWS_ENDPOINT_URL_EC2")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| sdk.endpoint_url().map(str::to_string))
            .or_else(|| fallback.filter(|f| !f.is_empty()).map(str::to_string))
            .unwrap_or_else(|| default_endpoint(&region));
        Ok(Ec2Client::new(endpoint, region, credentials))
    }

    /// The endpoint it sends to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn credentials(&self, op: Operation) -> Result<Credentials, ApiError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.expiry().is_none_or(|at| at > SystemTime::now() + REFRESH_BEFORE_EXPIRY)
        {
            return Ok(c.clone());
        }
        let fresh = self.credentials.provide_credentials().await.map_err(|e| {
            ApiError::new(op, ErrorKind::Credentials, "CredentialsError", "could not load credentials").with_source(e)
        })?;
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    /// One signed `POST` of `body`; the XML of a 200 answer.
    async fn send(&self, op: Operation, body: String) -> Result<String, ApiError> {
        let credentials = self.credentials(op).await?;
        let identity: Identity = credentials.into();
        let url = format!("{}/", self.endpoint);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let settings = aws_sigv4::http_request::SigningSettings::default();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| ApiError::new(op, ErrorKind::BadRequest, "ConstructionFailure", "").with_source(e))?
            .into();
        let headers = [("content-type", content_type)];
        let signable = aws_sigv4::http_request::SignableRequest::new(
            "POST",
            url.as_str(),
            headers.into_iter(),
            aws_sigv4::http_request::SignableBody::Bytes(body.as_bytes()),
        )
        .and_then(|r| aws_sigv4::http_request::sign(r, &params))
        .map_err(|e| ApiError::new(op, ErrorKind::BadRequest, "ConstructionFailure", "").with_source(e))?;
        let (instructions, _) = signable.into_parts();
        let mut request = http::Request::builder()
            .method("POST")
            .uri(&url)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ApiError::new(op, ErrorKind::BadRequest, "ConstructionFailure", "").with_source(e))?;
        instructions.apply_to_request_http1x(&mut request);
        let response = self.http.request(request).await.map_err(|e| {
            let kind = if e.is_connect() { ErrorKind::Unreachable } else { ErrorKind::Transient };
            let code = if e.is_connect() { "ConnectionError" } else { "DispatchFailure" };
            ApiError::new(op, kind, code, "").with_source(e)
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::new(op, ErrorKind::Transient, "ResponseError", "").with_source(e))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status == 200 { Ok(text) } else { Err(error_of(op, status, &text)) }
    }

    /// Every page of one lookup, `parse` reading each.
    async fn describe<T>(
        &self,
        op: Operation,
        filter: &str,
        ids: &[String],
        parse: fn(&str) -> Result<Page<T>, XmlDecodeError>,
    ) -> Result<Vec<T>, ApiError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let xml = match self.send(op, query(op.name(), filter, ids, next.as_deref())).await {
                Ok(xml) => xml,
                // Ids that do not exist are left out of the answer.
                Err(e) if e.kind == ErrorKind::NotFound => return Ok(all),
                Err(e) => return Err(e),
            };
            let (items, token) = parse(&xml).map_err(|e| {
                ApiError::new(op, ErrorKind::Transient, "UnreadableResponse", "EC2's answer is not the XML expected")
                    .with_source(e)
            })?;
            all.extend(items);
            match token {
                Some(t) => next = Some(t),
                None => break,
            }
        }
        Ok(all)
    }
}

/// The form body of a `Describe...` request for `ids` by `filter`.
///
/// ```
/// use efs_provisioner::ec2::query;
/// let body = query("DescribeSubnets", "subnet-id", &["subnet-a".into(), "subnet-b".into()], None);
/// assert_eq!(
///     body,
///     "Action=DescribeSubnets&Version=2016-11-15&Filter.1.Name=subnet-id&Filter.1.Value.1=subnet-a&Filter.1.Value.2=subnet-b"
/// );
/// ```
pub fn query(action: &str, filter: &str, ids: &[String], next_token: Option<&str>) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action).append_pair("Version", API_VERSION).append_pair("Filter.1.Name", filter);
    for (i, id) in ids.iter().enumerate() {
        form.append_pair(&format!("Filter.1.Value.{}", i + 1), id);
    }
    if let Some(t) = next_token {
        form.append_pair("NextToken", t);
    }
    form.finish()
}

/// The [`ApiError`] of a non-200 answer (`<Response><Errors><Error><Code>...`).
pub fn error_of(op: Operation, status: u16, xml: &str) -> ApiError {
    let (code, message) = parse_error(xml).unwrap_or_default();
    let code = if code.is_empty() { format!("HTTP{status}") } else { code };
    let kind = match code.as_str() {
        "InvalidSubnetID.NotFound" | "InvalidGroup.NotFound" | "InvalidGroupId.NotFound" => ErrorKind::NotFound,
        // `AuthFailure` (401) and the other refused-credential codes are
        // sorted with EFS's, as `Credentials`.
        _ => classify_code(&code, Some(status), &message),
    };
    ApiError::new(op, kind, &code, message)
}

fn parse_error(xml: &str) -> Result<(String, String), XmlDecodeError> {
    let mut doc = Document::new(xml);
    let mut root = doc.root_element()?;
    while let Some(mut errors) = root.next_tag() {
        if !errors.start_el().matches("Errors") {
            continue;
        }
        while let Some(mut error) = errors.next_tag() {
            if let [Some(code), message] = fields(&mut error, &["Code", "Message"])?.as_slice() {
                return Ok((code.clone(), message.clone().unwrap_or_default()));
            }
        }
    }
    Ok((String::new(), String::new()))
}

/// The direct children `names` of `el`, as text.
fn fields(el: &mut ScopedDecoder<'_, '_>, names: &[&str]) -> Result<Vec<Option<String>>, XmlDecodeError> {
    let mut out = vec![None; names.len()];
    while let Some(mut child) = el.next_tag() {
        if let Some(i) = names.iter().position(|n| child.start_el().matches(n)) {
            out[i] = Some(try_data(&mut child)?.into_owned());
        }
    }
    Ok(out)
}

/// The items of the list `set` of a `Describe...Response`, each read from
/// its direct children `names` by `make`, and the next page's token.
fn items<T>(
    xml: &str,
    set: &str,
    names: &[&str],
    make: impl Fn(Vec<Option<String>>) -> Option<T>,
) -> Result<Page<T>, XmlDecodeError> {
    let mut doc = Document::new(xml);
    let mut root = doc.root_element()?;
    let (mut out, mut next) = (Vec::new(), None);
    while let Some(mut tag) = root.next_tag() {
        if tag.start_el().matches(set) {
            while let Some(mut item) = tag.next_tag() {
                if item.start_el().matches("item")
                    && let Some(v) = make(fields(&mut item, names)?)
                {
                    out.push(v);
                }
            }
        } else if tag.start_el().matches("nextToken") {
            next = Some(try_data(&mut tag)?.into_owned()).filter(|t| !t.is_empty());
        }
    }
    Ok((out, next))
}

/// The subnets of a `DescribeSubnetsResponse`, and the next page's token.
pub fn parse_subnets(xml: &str) -> Result<Page<Subnet>, XmlDecodeError> {
    items(xml, "subnetSet", &["subnetId", "availabilityZone", "vpcId"], |f| match f.as_slice() {
        [Some(id), Some(zone), Some(vpc)] => {
            Some(Subnet { id: id.clone(), availability_zone: zone.clone(), vpc_id: vpc.clone() })
        }
        _ => None,
    })
}

/// The security groups of a `DescribeSecurityGroupsResponse` (only each
/// item's own `groupId`, not those its rules name), and the next page's token.
pub fn parse_security_groups(xml: &str) -> Result<Page<SecurityGroup>, XmlDecodeError> {
    items(xml, "securityGroupInfo", &["groupId", "vpcId"], |f| match f.as_slice() {
        [Some(id), Some(vpc)] => Some(SecurityGroup { id: id.clone(), vpc_id: vpc.clone() }),
        _ => None,
    })
}

#[async_trait]
impl NetworkApi for Ec2Client {
    async fn describe_subnets(&self, ids: &[String]) -> Result<Vec<Subnet>, ApiError> {
        let mut found = self.describe(Operation::DescribeSubnets, "subnet-id", ids, parse_subnets).await?;
        found.retain(|s| ids.contains(&s.id));
        Ok(found)
    }

    async fn describe_security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, ApiError> {
        let mut found =
            self.describe(Operation::DescribeSecurityGroups, "group-id", ids, parse_security_groups).await?;
        found.retain(|g| ids.contains(&g.id));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    const SUBNETS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeSubnetsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>
  <subnetSet>
    <item>
      <subnetId>subnet-a</subnetId>
      <state>available</state>
      <vpcId>vpc-1</vpcId>
      <availabilityZone>us-east-1a</availabilityZone>
      <tagSet><item><key>Name</key><value>a</value></item></tagSet>
    </item>
    <item>
      <subnetId>subnet-b</subnetId>
      <vpcId>vpc-1</vpcId>
      <availabilityZone>us-east-1b</availabilityZone>
    </item>
  </subnetSet>
  <nextToken>page-2</nextToken>
</DescribeSubnetsResponse>"#;

    const GROUPS: &str = r#"<DescribeSecurityGroupsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>1d62eae0-acdd-481d-88c9-example</requestId>
  <securityGroupInfo>
    <item>
      <ownerId>123456789012</ownerId>
      <groupId>sg-1</groupId>
      <groupName>nfs</groupName>
      <ipPermissions>
        <item>
          <ipProtocol>tcp</ipProtocol>
          <groups><item><userId>123456789012</userId><groupId>sg-nodes</groupId></item></groups>
        </item>
      </ipPermissions>
      <vpcId>vpc-1</vpcId>
    </item>
  </securityGroupInfo>
</DescribeSecurityGroupsResponse>"#;

    #[test]
    fn subnets_are_read_with_zone_and_vpc_and_the_next_page() {
        let (subnets, next) = parse_subnets(SUBNETS).unwrap();
        assert_eq!(
            subnets,
            vec![
                Subnet { id: "subnet-a".into(), availability_zone: "us-east-1a".into(), vpc_id: "vpc-1".into() },
                Subnet { id: "subnet-b".into(), availability_zone: "us-east-1b".into(), vpc_id: "vpc-1".into() },
            ]
        );
        assert_eq!(next.as_deref(), Some("page-2"));
    }

    #[test]
    fn a_security_group_is_its_own_id_not_the_ones_its_rules_name() {
        let (groups, next) = parse_security_groups(GROUPS).unwrap();
        assert_eq!(groups, vec![SecurityGroup { id: "sg-1".into(), vpc_id: "vpc-1".into() }]);
        assert_eq!(next, None);
    }

    #[test]
    fn ec2_errors_are_sorted_like_efs_ones() {
        let doc = |code: &str| {
            format!(
                "<Response><Errors><Error><Code>{code}</Code><Message>it failed</Message></Error></Errors>\
                 <RequestID>r</RequestID></Response>"
            )
        };
        let op = Operation::DescribeSubnets;
        for (code, status, kind) in [
            ("InvalidSubnetID.NotFound", 400, ErrorKind::NotFound),
            ("InvalidGroup.NotFound", 400, ErrorKind::NotFound),
            ("UnauthorizedOperation", 403, ErrorKind::AccessDenied),
            ("RequestLimitExceeded", 503, ErrorKind::Throttled),
            ("AuthFailure", 401, ErrorKind::Credentials),
            ("InvalidClientTokenId", 401, ErrorKind::Credentials),
            ("SignatureDoesNotMatch", 403, ErrorKind::Credentials),
            ("RequestExpired", 400, ErrorKind::Credentials),
            ("InternalError", 500, ErrorKind::Transient),
        ] {
            let e = error_of(op, status, &doc(code));
            assert_eq!((e.kind, e.code.as_str(), e.message.as_str()), (kind, code, "it failed"));
        }
        let e = error_of(op, 503, "not xml");
        assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Throttled, "HTTP503"));
        assert_eq!(error_of(op, 403, "").to_string(), "EC2 DescribeSubnets failed: HTTP403");
    }

    /// Answers each of `answers` (status, body) to one request on loopback,
    /// and returns the requests it got.
    fn serve(answers: Vec<(u16, String)>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = vec![0u8; 65536];
                let mut got = String::new();
                loop {
                    let n = s.read(&mut buf).unwrap();
                    got.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if let Some((head, rest)) = got.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if rest.len() >= len {
                            break;
                        }
                    }
                }
                seen.push(got);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        (endpoint, handle)
    }

    fn client(endpoint: &str) -> Ec2Client {
        let credentials = SharedCredentialsProvider::new(Credentials::new("AKID", "secret", None, None, "test"));
        Ec2Client::new(endpoint, "us-east-1", credentials)
    }

    #[tokio::test]
    async fn a_lookup_is_one_signed_filtered_request_per_page_and_unknown_ids_are_left_out() {
        let last = SUBNETS.replace("<nextToken>page-2</nextToken>", "");
        let (endpoint, server) = serve(vec![(200, SUBNETS.to_string()), (200, last)]);
        let ids: Vec<String> = ["subnet-a", "subnet-gone"].map(String::from).to_vec();
        let found = client(&endpoint).describe_subnets(&ids).await.unwrap();
        assert_eq!(found.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["subnet-a", "subnet-a"]);
        let requests = server.join().unwrap();
        assert_eq!(requests.len(), 2, "followed the next page");
        let first = &requests[0];
        assert!(first.starts_with("POST / HTTP/1.1"), "{first}");
        assert!(first.contains("/us-east-1/ec2/aws4_request"), "signed for EC2: {first}");
        assert!(first.contains("Filter.1.Name=subnet-id&Filter.1.Value.1=subnet-a&Filter.1.Value.2=subnet-gone"));
        assert!(requests[1].contains("NextToken=page-2"), "{}", requests[1]);
    }

    #[tokio::test]
    async fn not_found_is_an_empty_answer_and_access_denied_an_error() {
        let denied = "<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not \
                      authorized to perform this operation.</Message></Error></Errors></Response>";
        let missing = "<Response><Errors><Error><Code>InvalidGroup.NotFound</Code><Message>The security group \
                       'sg-9' does not exist</Message></Error></Errors></Response>";
        let (endpoint, server) = serve(vec![(400, missing.into()), (403, denied.into())]);
        let c = client(&endpoint);
        assert_eq!(c.describe_security_groups(&["sg-9".into()]).await.unwrap(), vec![]);
        let e = c.describe_subnets(&["subnet-a".into()]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::AccessDenied);
        assert!(e.operation.iam_actions().contains("ec2:DescribeSubnets"));
        server.join().unwrap();
        assert!(c.describe_subnets(&[]).await.unwrap().is_empty(), "nothing asked, nothing sent");
    }

    #[tokio::test]
    async fn no_route_to_ec2_is_unreachable_with_the_connection_error_in_the_chain() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let e = client(&endpoint).describe_subnets(&["subnet-a".into()]).await.unwrap_err();
        assert_eq!((e.kind.clone(), e.code.as_str()), (ErrorKind::Unreachable, "ConnectionError"));
        let chain = provisioner_core::Cause::new(e).chain().to_ascii_lowercase();
        assert!(chain.starts_with("ec2 describesubnets failed: connectionerror: "), "{chain}");
        assert!(chain.contains("connection refused"), "{chain}");
    }
}
