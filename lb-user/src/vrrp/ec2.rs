//! The EC2 side of a takeover: a new master moves the floating private
//! addresses to its own network interface and re-associates the Elastic IP
//! with it, through the EC2 API, then reads both back to check them. EC2
//! routes an address to an instance because the API says so (gratuitous ARP
//! means nothing there), so this is what moves the traffic.
//!
//! Each call may fail (throttling, a network blip, the API endpoint out of
//! reach): the whole sequence is retried with a growing pause for as long as
//! this host stays master, and every attempt's outcome is in `lbctl status`.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use aws_sdk_ec2::{config::Region, Client};
use tokio::sync::OnceCell;

use crate::{
    api::{Ec2Status, VrrpStatus},
    config,
};

/// Pauses between attempts: 0.5 s, doubling up to 8 s.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(8);
/// Per API call, all retries of the SDK included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The EC2 client of one VRRP instance, made on first use (loading the
/// credential chain and the region may take a moment, and must not hold up
/// the VRRP state machine).
pub struct Ec2 {
    cfg: config::Ec2,
    client: OnceCell<Client>,
}

/// What the sequence moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub private_addresses: Vec<Ipv4Addr>,
    /// The Elastic IP's allocation and the private address it maps to
    /// (`None`: the interface's primary address).
    pub elastic_ip: Option<(String, Option<Ipv4Addr>)>,
}

/// What [`Plan`] the configuration asks for, given the floating addresses.
pub fn plan(cfg: &config::Ec2, floating: &[Ipv4Addr]) -> Plan {
    let private_addresses = cfg
        .private_addresses
        .clone()
        .unwrap_or_else(|| floating.to_vec());
    let elastic_ip = cfg.elastic_ip_allocation_id.clone().map(|id| {
        let private = cfg
            .elastic_ip_private_address
            .or_else(|| private_addresses.first().copied());
        (id, private)
    });
    Plan {
        private_addresses,
        elastic_ip,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The longest error text kept for the log and `lbctl status`.
const ERROR_MAX: usize = 400;

/// An SDK error as one line: the call, then each distinct message of the
/// error's chain (the SDK's own Display says only "dispatch failure" or
/// "service error"; the cause is further down).
fn sdk_error<E: std::error::Error + 'static>(what: &str, e: E) -> anyhow::Error {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        let text = err.to_string();
        let text = text.lines().next().unwrap_or_default().trim().to_owned();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    let mut line = format!("{what}: {}", parts.join(": "));
    if line.len() > ERROR_MAX {
        let mut cut = ERROR_MAX;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    anyhow::anyhow!(line)
}

impl Ec2 {
    pub fn new(cfg: &config::Ec2) -> Ec2 {
        Ec2 {
            cfg: cfg.clone(),
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&Client> {
        self.client
            .get_or_try_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .operation_timeout(CALL_TIMEOUT)
                            .connect_timeout(CONNECT_TIMEOUT)
                            .build(),
                    );
                if let Some(r) = &self.cfg.region {
                    loader = loader.region(Region::new(r.clone()));
                }
                if let Some(e) = &self.cfg.endpoint {
                    loader = loader.endpoint_url(e);
                }
                let sdk = loader.load().await;
                if sdk.region().is_none() {
                    bail!("no AWS region: set vrrp.ec2.region, or AWS_REGION in lbd's environment");
                }
                Ok(Client::new(&sdk))
            })
            .await
    }

    /// One pass of the sequence: move, associate, read back.
    async fn attempt(&self, plan: &Plan) -> Result<Option<String>> {
        let client = self.client().await?;
        let eni = &self.cfg.network_interface_id;
        if !plan.private_addresses.is_empty() {
            client
                .assign_private_ip_addresses()
                .network_interface_id(eni)
                .set_private_ip_addresses(Some(
                    plan.private_addresses
                        .iter()
                        .map(|a| a.to_string())
                        .collect(),
                ))
                .allow_reassignment(true)
                .send()
                .await
                .map_err(|e| sdk_error("AssignPrivateIpAddresses", e))?;
        }
        if let Some((allocation, private)) = &plan.elastic_ip {
            client
                .associate_address()
                .allocation_id(allocation)
                .network_interface_id(eni)
                .set_private_ip_address(private.map(|a| a.to_string()))
                .allow_reassociation(true)
                .send()
                .await
                .map_err(|e| sdk_error("AssociateAddress", e))?;
        }
        // Read back: the API said yes; check that it is so.
        if !plan.private_addresses.is_empty() {
            let out = client
                .describe_network_interfaces()
                .network_interface_ids(eni)
                .send()
                .await
                .map_err(|e| sdk_error("DescribeNetworkInterfaces", e))?;
            let have: Vec<String> = out
                .network_interfaces()
                .iter()
                .flat_map(|n| n.private_ip_addresses())
                .filter_map(|p| p.private_ip_address().map(str::to_owned))
                .collect();
            let missing: Vec<String> = plan
                .private_addresses
                .iter()
                .map(|a| a.to_string())
                .filter(|a| !have.contains(a))
                .collect();
            if !missing.is_empty() {
                bail!(
                    "{eni} does not have {} after AssignPrivateIpAddresses (it has {})",
                    missing.join(", "),
                    have.join(", ")
                );
            }
        }
        let mut public = None;
        if let Some((allocation, _)) = &plan.elastic_ip {
            let out = client
                .describe_addresses()
                .allocation_ids(allocation)
                .send()
                .await
                .map_err(|e| sdk_error("DescribeAddresses", e))?;
            let Some(a) = out.addresses().first() else {
                bail!("DescribeAddresses does not know {allocation}");
            };
            if a.network_interface_id() != Some(eni.as_str()) {
                bail!(
                    "{allocation} is associated with {}, not {eni}, after AssociateAddress",
                    a.network_interface_id().unwrap_or("nothing")
                );
            }
            public = a.public_ip().map(str::to_owned);
        }
        Ok(public)
    }

    /// Moves the addresses to this host, retrying until it has worked (or
    /// the task is aborted because this host is no longer master).
    pub async fn take_over(self: Arc<Self>, plan: Plan, status: Arc<Mutex<VrrpStatus>>) {
        let update = |f: &dyn Fn(&mut Ec2Status)| {
            let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = st.ec2.as_mut() {
                f(e);
            }
        };
        let started = Instant::now();
        update(&|e| {
            e.state = "moving".into();
            e.attempts = 0;
        });
        let mut pause = FIRST_RETRY;
        loop {
            update(&|e| e.attempts += 1);
            match self.attempt(&plan).await {
                Ok(public) => {
                    let took = started.elapsed();
                    tracing::info!(
                        interface = %self.cfg.network_interface_id,
                        private = ?plan.private_addresses,
                        elastic_ip = ?public,
                        took = ?took,
                        "ec2: addresses moved to this instance and verified"
                    );
                    update(&|e| {
                        e.state = "done".into();
                        e.done_unix = Some(unix_now());
                        e.took_ms = Some(took.as_millis() as u64);
                        e.public_ip = public.clone();
                        e.takeovers += 1;
                    });
                    return;
                }
                Err(err) => {
                    let text = format!("{err:#}");
                    tracing::warn!(error = %text, retry_in = ?pause, "ec2: takeover failed; retrying");
                    update(&|e| {
                        e.state = "retrying".into();
                        e.last_error = Some(text.clone());
                        e.failures += 1;
                    });
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LAST_RETRY);
        }
    }
}

/// The status of an EC2 takeover before any has happened.
pub fn initial_status(cfg: &config::Ec2) -> Ec2Status {
    Ec2Status {
        network_interface_id: cfg.network_interface_id.clone(),
        elastic_ip_allocation_id: cfg.elastic_ip_allocation_id.clone(),
        state: "idle".into(),
        attempts: 0,
        failures: 0,
        takeovers: 0,
        last_error: None,
        done_unix: None,
        took_ms: None,
        public_ip: None,
    }
}

/// Checks an identifier of the EC2 API (`eni-0123abcd`) for its shape.
pub fn check_id(key: &str, value: &str, prefix: &str) -> Result<()> {
    let rest = value
        .strip_prefix(prefix)
        .with_context(|| format!("{key}: {value:?} does not start with {prefix:?}"))?;
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{key}: {value:?} is not an EC2 id ({prefix} and hexadecimal digits)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec2() -> config::Ec2 {
        config::Ec2 {
            network_interface_id: "eni-0abc".into(),
            private_addresses: None,
            elastic_ip_allocation_id: Some("eipalloc-12".into()),
            elastic_ip_private_address: None,
            region: None,
            endpoint: None,
        }
    }

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
    const NAT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 101);

    #[test]
    fn by_default_the_floating_addresses_move_and_the_eip_maps_to_the_first() {
        let p = plan(&ec2(), &[VIP, NAT]);
        assert_eq!(p.private_addresses, vec![VIP, NAT]);
        assert_eq!(p.elastic_ip, Some(("eipalloc-12".into(), Some(VIP))));
    }

    #[test]
    fn an_eip_alone_maps_to_the_primary_address() {
        let mut c = ec2();
        c.private_addresses = Some(vec![]);
        let p = plan(&c, &[VIP]);
        assert!(p.private_addresses.is_empty());
        assert_eq!(p.elastic_ip, Some(("eipalloc-12".into(), None)));
        c.elastic_ip_allocation_id = None;
        assert_eq!(plan(&c, &[VIP]).elastic_ip, None);
    }

    #[test]
    fn ids_are_checked_for_shape() {
        assert!(check_id("k", "eni-0a1b2c", "eni-").is_ok());
        assert!(check_id("k", "eni-", "eni-").is_err());
        assert!(check_id("k", "eipalloc-12", "eni-").is_err());
        assert!(check_id("k", "eni-xyz", "eni-").is_err());
    }
}
