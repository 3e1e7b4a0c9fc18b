//! Discovery from instance metadata (IMDSv2): which instance this is, its
//! region and availability zone, and for each interface a floating address
//! lives on (found by its MAC) the ENI, its subnet and its private addresses.
//!
//! aws-config's IMDS client speaks IMDSv2 (a session token from `PUT
//! /latest/api/token`, then reads that carry it) and takes its endpoint
//! from `AWS_EC2_METADATA_SERVICE_ENDPOINT` (or the profile), which is how
//! the tests point it at their own IMDSv2 server.

use std::{net::Ipv4Addr, time::Duration};

use aws_config::imds::client::{error::ImdsError, Client};

use super::error::{chain, Ec2Error, ErrorClass};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const READ_TIMEOUT: Duration = Duration::from_secs(1);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(4);
const ATTEMPTS: u32 = 2;

/// An IPv4 network (`10.0.1.0/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.trim().split_once('/')?;
        let prefix: u8 = p.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        Some(Cidr {
            network: a.parse().ok()?,
            prefix,
        })
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        u32::from(a) & mask == u32::from(self.network) & mask
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// One network interface of this instance, as instance metadata says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The local interface name it was looked up for.
    pub ifname: String,
    /// `02:00:00:1e:ba:ee`.
    pub mac: String,
    /// `eni-...`.
    pub interface_id: String,
    pub subnet: Option<Cidr>,
    pub local_ipv4s: Vec<Ipv4Addr>,
}

/// What instance metadata says about this instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub nics: Vec<Nic>,
}

impl Discovery {
    pub fn nic(&self, ifname: &str) -> Option<&Nic> {
        self.nics.iter().find(|n| n.ifname == ifname)
    }
}

/// `aa:bb:..` in lower case, as IMDS spells MACs.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The instance metadata client, with short timeouts. Its endpoint comes
/// from `AWS_EC2_METADATA_SERVICE_ENDPOINT`, the profile, or the default.
pub fn client() -> Client {
    Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .max_attempts(ATTEMPTS)
        .build()
}

fn imds_error(path: &str, e: ImdsError) -> Ec2Error {
    let class = match &e {
        ImdsError::ErrorResponse(r) => match r.response().status().as_u16() {
            // The path does not exist here: asking again will not help.
            404 => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        },
        _ => ErrorClass::Transient,
    };
    Ec2Error::Metadata {
        path: path.to_owned(),
        class,
        message: chain(&e),
    }
}

/// Reads one metadata path (below `/latest/meta-data/`).
pub async fn get(client: &Client, path: &str) -> Result<String, Ec2Error> {
    let full = format!("/latest/meta-data/{path}");
    client
        .get(full.clone())
        .await
        .map(|s| s.as_ref().trim().to_owned())
        .map_err(|e| imds_error(&full, e))
}

/// The private IPv4 addresses of the interface with `mac`.
pub async fn local_ipv4s(client: &Client, mac: &str) -> Result<Vec<Ipv4Addr>, Ec2Error> {
    let text = get(
        client,
        &format!("network/interfaces/macs/{mac}/local-ipv4s"),
    )
    .await?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Discovers the instance and the interfaces `interfaces` (name, MAC).
pub async fn discover(
    client: &Client,
    interfaces: &[(String, [u8; 6])],
) -> Result<Discovery, Ec2Error> {
    let instance_id = get(client, "instance-id").await?;
    let availability_zone = get(client, "placement/availability-zone").await?;
    let region = match get(client, "placement/region").await {
        Ok(r) => r,
        // Older metadata versions lack it: the zone less its letter.
        Err(_) => availability_zone
            .trim_end_matches(|c: char| c.is_ascii_lowercase())
            .to_owned(),
    };
    let macs = get(client, "network/interfaces/macs/").await?;
    let known: Vec<String> = macs
        .lines()
        .map(|l| l.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|l| !l.is_empty())
        .collect();
    let mut nics = Vec::new();
    for (ifname, mac) in interfaces {
        let mac = mac_text(*mac);
        if !known.contains(&mac) {
            return Err(Ec2Error::Mismatch(format!(
                "interface {ifname} ({mac}) is not a network interface of instance \
                 {instance_id} according to its metadata (it has {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        let base = format!("network/interfaces/macs/{mac}");
        let interface_id = get(client, &format!("{base}/interface-id")).await?;
        let subnet = get(client, &format!("{base}/subnet-ipv4-cidr-block"))
            .await
            .ok()
            .and_then(|s| Cidr::parse(&s));
        let local_ipv4s = local_ipv4s(client, &mac).await?;
        nics.push(Nic {
            ifname: ifname.clone(),
            mac,
            interface_id,
            subnet,
            local_ipv4s,
        });
    }
    Ok(Discovery {
        instance_id,
        region,
        availability_zone,
        nics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_contain() {
        let c = Cidr::parse("10.0.1.0/24").unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 0, 1, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 0, 2, 1)));
        assert_eq!(c.to_string(), "10.0.1.0/24");
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(Ipv4Addr::new(8, 8, 8, 8)));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("10.0.0.0"), None);
    }

    #[test]
    fn macs_are_spelt_as_imds_does() {
        assert_eq!(mac_text([2, 0, 0, 0x1e, 0xba, 0xee]), "02:00:00:1e:ba:ee");
    }
}
