//! The EC2 calls lbd makes, each with its own timeout and its errors by
//! class. Reads are retried here (backoff with jitter); a change is made
//! once per pass, since its outcome after a timeout is unknown and each
//! Elastic IP remap is billed: the next pass describes first and makes it
//! again only if it still differs.

use std::{future::Future, net::Ipv4Addr, time::Duration};

use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion};
use aws_sdk_ec2::{
    config::{ProvideCredentials, Region},
    Client,
};

use super::{
    error::{backoff, chain, from_sdk, Ec2Error, ErrorClass},
    plan::{ElasticIp, ElasticIpSeen, RouteTarget},
};
use crate::config;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One attempt of one call.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a read before its error is reported.
const READ_ATTEMPTS: u32 = 4;
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(4);

/// One ENI as DescribeNetworkInterfaces shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EniInfo {
    pub id: String,
    pub instance_id: Option<String>,
    pub subnet_id: Option<String>,
    pub addresses: Vec<Ipv4Addr>,
    pub source_dest_check: Option<bool>,
}

/// The EC2 client of one VRRP instance.
pub struct Api {
    client: Client,
    sdk: aws_config::SdkConfig,
}

impl Api {
    /// Loads the credential chain and the region (`region`: the configured
    /// one, or the one instance metadata gave).
    pub async fn connect(cfg: &config::Ec2, region: Option<String>) -> Result<Api, Ec2Error> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(ATTEMPT_TIMEOUT + Duration::from_secs(1))
                    .build(),
            )
            // One policy for retries, ours, which knows the classes.
            .retry_config(RetryConfig::disabled());
        if let Some(r) = cfg.region.clone().or(region) {
            loader = loader.region(Region::new(r));
        }
        if let Some(e) = &cfg.endpoint {
            loader = loader.endpoint_url(e);
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(Ec2Error::Setup(
                "no AWS region: set vrrp.ec2.region, or AWS_REGION in lbd's environment, or \
                 let lbd read it from instance metadata"
                    .into(),
            ));
        }
        Ok(Api {
            client: Client::new(&sdk),
            sdk,
        })
    }

    pub fn region(&self) -> String {
        self.sdk.region().map(|r| r.to_string()).unwrap_or_default()
    }

    /// Whether credentials resolve (instance profile, environment, profile).
    pub async fn check_credentials(&self) -> Result<String, Ec2Error> {
        let Some(p) = self.sdk.credentials_provider() else {
            return Err(Ec2Error::Setup("no AWS credentials provider".into()));
        };
        match p.provide_credentials().await {
            Ok(c) => Ok(if c.expiry().is_some() {
                "temporary credentials resolved (an instance profile or a role)".to_owned()
            } else {
                "long-term credentials resolved (environment or profile)".to_owned()
            }),
            Err(e) => Err(Ec2Error::Setup(format!(
                "no AWS credentials: {} (an instance profile, or AWS_ACCESS_KEY_ID in lbd's \
                 environment)",
                chain(&e)
            ))),
        }
    }

    /// Runs a read, retrying what may succeed later.
    async fn read<T, F, Fut>(&self, f: F) -> Result<T, Ec2Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.class().retryable() && attempt < READ_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt, e.class(), RETRY_BASE, RETRY_CAP)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn describe_enis(&self, ids: &[String]) -> Result<Vec<EniInfo>, Ec2Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.read(|| async {
            let out = self
                .client
                .describe_network_interfaces()
                .set_network_interface_ids(Some(ids.to_vec()))
                .send()
                .await
                .map_err(|e| from_sdk("DescribeNetworkInterfaces", e))?;
            Ok(out
                .network_interfaces()
                .iter()
                .map(|n| EniInfo {
                    id: n.network_interface_id().unwrap_or_default().to_owned(),
                    instance_id: n
                        .attachment()
                        .and_then(|a| a.instance_id())
                        .map(str::to_owned),
                    subnet_id: n.subnet_id().map(str::to_owned),
                    addresses: n
                        .private_ip_addresses()
                        .iter()
                        .filter_map(|p| p.private_ip_address()?.parse().ok())
                        .collect(),
                    source_dest_check: n.source_dest_check(),
                })
                .collect())
        })
        .await
    }

    pub async fn describe_elastic_ip(&self, allocation: &str) -> Result<ElasticIpSeen, Ec2Error> {
        self.read(|| async {
            let out = self
                .client
                .describe_addresses()
                .allocation_ids(allocation)
                .send()
                .await
                .map_err(|e| from_sdk("DescribeAddresses", e))?;
            let Some(a) = out.addresses().first() else {
                return Err(Ec2Error::Mismatch(format!(
                    "DescribeAddresses does not know {allocation}"
                )));
            };
            Ok(ElasticIpSeen {
                eni: a
                    .network_interface_id()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
                private: a.private_ip_address().and_then(|p| p.parse().ok()),
                public: a.public_ip().map(str::to_owned),
            })
        })
        .await
    }

    /// The /32 routes of `tables`: (table, destination) -> target.
    pub async fn describe_routes(
        &self,
        tables: &[String],
    ) -> Result<Vec<(String, Ipv4Addr, RouteTarget)>, Ec2Error> {
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        self.read(|| async {
            let out = self
                .client
                .describe_route_tables()
                .set_route_table_ids(Some(tables.to_vec()))
                .send()
                .await
                .map_err(|e| from_sdk("DescribeRouteTables", e))?;
            let mut v = Vec::new();
            for t in out.route_tables() {
                let table = t.route_table_id().unwrap_or_default().to_owned();
                for r in t.routes() {
                    let Some(dest) = r
                        .destination_cidr_block()
                        .and_then(|c| c.strip_suffix("/32"))
                        .and_then(|a| a.parse::<Ipv4Addr>().ok())
                    else {
                        continue;
                    };
                    let target = match r.network_interface_id() {
                        Some(eni) if !eni.is_empty() => RouteTarget::Eni(eni.to_owned()),
                        _ => RouteTarget::Other(
                            r.instance_id()
                                .or(r.gateway_id())
                                .or(r.nat_gateway_id())
                                .or(r.transit_gateway_id())
                                .unwrap_or("a blackhole")
                                .to_owned(),
                        ),
                    };
                    v.push((table.clone(), dest, target));
                }
            }
            Ok(v)
        })
        .await
    }

    /// Moves `addresses` to `eni`, from whichever ENI has them.
    pub async fn assign(&self, eni: &str, addresses: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        self.client
            .assign_private_ip_addresses()
            .network_interface_id(eni)
            .set_private_ip_addresses(Some(addresses.iter().map(|a| a.to_string()).collect()))
            .allow_reassignment(true)
            .send()
            .await
            .map_err(|e| from_sdk("AssignPrivateIpAddresses", e))?;
        Ok(())
    }

    /// Points the Elastic IP at `e` (`dry_run`: only asks whether it may).
    pub async fn associate(&self, e: &ElasticIp, dry_run: bool) -> Result<(), Ec2Error> {
        self.client
            .associate_address()
            .allocation_id(&e.allocation)
            .network_interface_id(&e.eni)
            .set_private_ip_address(e.private.map(|a| a.to_string()))
            .allow_reassociation(true)
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|err| from_sdk("AssociateAddress", err))?;
        Ok(())
    }

    pub async fn replace_route(
        &self,
        table: &str,
        destination: Ipv4Addr,
        eni: &str,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.client
            .replace_route()
            .route_table_id(table)
            .destination_cidr_block(format!("{destination}/32"))
            .network_interface_id(eni)
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| from_sdk("ReplaceRoute", e))?;
        Ok(())
    }

    pub async fn create_route(
        &self,
        table: &str,
        destination: Ipv4Addr,
        eni: &str,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.client
            .create_route()
            .route_table_id(table)
            .destination_cidr_block(format!("{destination}/32"))
            .network_interface_id(eni)
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| from_sdk("CreateRoute", e))?;
        Ok(())
    }
}

/// The outcome of a DryRun call: allowed, refused (which IAM action), or
/// carried out by an endpoint that ignores DryRun.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DryRun {
    Allowed,
    /// The endpoint did not answer `DryRunOperation` but carried the call
    /// out (moto does for routes).
    Performed,
    Refused(Ec2Error),
    Failed(Ec2Error),
}

pub fn dry_run_outcome(r: Result<(), Ec2Error>) -> DryRun {
    match r {
        Ok(()) => DryRun::Performed,
        Err(e) if e.code() == Some("DryRunOperation") => DryRun::Allowed,
        Err(e) if super::error::is_unauthorized(&e) => DryRun::Refused(e),
        Err(e) => DryRun::Failed(e),
    }
}

impl DryRun {
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            DryRun::Refused(e) | DryRun::Failed(e) => Some(e.class()),
            _ => None,
        }
    }
}
