//! What this host should hold on EC2, what EC2 says it holds, and the steps
//! between the two: pure functions, so that every reconcile describes first
//! and changes only what differs.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::config::{self, Ec2Mode};

/// The Elastic IP and where it should point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElasticIp {
    pub allocation: String,
    pub eni: String,
    /// `None`: the ENI's primary address.
    pub private: Option<Ipv4Addr>,
}

/// What this host holds while it is master.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Secondary private addresses, each with the ENI it belongs on.
    pub addresses: Vec<(Ipv4Addr, String)>,
    /// `route_table` mode: (route table, /32 destination, ENI).
    pub routes: Vec<(String, Ipv4Addr, String)>,
    pub elastic_ip: Option<ElasticIp>,
}

impl Desired {
    /// Every ENI named, once, in order.
    pub fn enis(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self
            .addresses
            .iter()
            .map(|(_, e)| e)
            .chain(self.routes.iter().map(|(_, _, e)| e))
            .chain(self.elastic_ip.iter().map(|e| &e.eni));
        for e in all {
            if !out.contains(e) {
                out.push(e.clone());
            }
        }
        out
    }

    pub fn route_tables(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (t, _, _) in &self.routes {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }
}

/// Where the Elastic IP is, as DescribeAddresses says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElasticIpSeen {
    pub eni: Option<String>,
    pub private: Option<Ipv4Addr>,
    pub public: Option<String>,
}

/// What a route points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    Absent,
    Eni(String),
    /// An instance, a gateway, a blackhole: not an ENI.
    Other(String),
}

/// What EC2 says about everything [`Desired`] names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The private addresses of each ENI described.
    pub eni_addresses: BTreeMap<String, Vec<Ipv4Addr>>,
    pub elastic_ip: Option<ElasticIpSeen>,
    /// (route table, destination) -> target.
    pub routes: BTreeMap<(String, Ipv4Addr), RouteTarget>,
}

/// One change to make through the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// AssignPrivateIpAddresses with reassignment allowed.
    Assign {
        eni: String,
        addresses: Vec<Ipv4Addr>,
    },
    /// AssociateAddress with reassociation allowed.
    Associate(ElasticIp),
    ReplaceRoute {
        table: String,
        destination: Ipv4Addr,
        eni: String,
    },
    CreateRoute {
        table: String,
        destination: Ipv4Addr,
        eni: String,
    },
}

impl Step {
    pub fn operation(&self) -> &'static str {
        match self {
            Step::Assign { .. } => "AssignPrivateIpAddresses",
            Step::Associate(_) => "AssociateAddress",
            Step::ReplaceRoute { .. } => "ReplaceRoute",
            Step::CreateRoute { .. } => "CreateRoute",
        }
    }
}

/// The ENI of each interface, by name: what discovery found, or the
/// configured `network_interface_id` for `vrrp.interface`.
pub type Enis = BTreeMap<String, String>;

/// What this host should hold, or the interface whose ENI is unknown.
pub fn desired(
    cfg: &config::Ec2,
    placements: &[(Ipv4Addr, String)],
    vrrp_interface: &str,
    enis: &Enis,
) -> Result<Desired, String> {
    let eni_of = |ifname: &str| -> Result<String, String> {
        enis.get(ifname).cloned().ok_or_else(|| ifname.to_owned())
    };
    let eni_of_address = |a: Ipv4Addr| -> Result<String, String> {
        let ifname = placements
            .iter()
            .find(|(b, _)| *b == a)
            .map(|(_, i)| i.as_str())
            .unwrap_or(vrrp_interface);
        eni_of(ifname)
    };
    let floating: Vec<Ipv4Addr> = placements.iter().map(|(a, _)| *a).collect();
    let mut d = Desired::default();
    match cfg.mode {
        Ec2Mode::SecondaryAddresses => {
            let private = cfg.private_addresses.clone().unwrap_or(floating);
            for a in &private {
                d.addresses.push((*a, eni_of_address(*a)?));
            }
            if let Some(allocation) = &cfg.elastic_ip_allocation_id {
                let private = cfg
                    .elastic_ip_private_address
                    .or_else(|| private.first().copied());
                let eni = match private {
                    Some(a) => eni_of_address(a)?,
                    None => eni_of(vrrp_interface)?,
                };
                d.elastic_ip = Some(ElasticIp {
                    allocation: allocation.clone(),
                    eni,
                    private,
                });
            }
        }
        Ec2Mode::RouteTable => {
            for table in &cfg.route_tables {
                for a in &floating {
                    d.routes.push((table.clone(), *a, eni_of_address(*a)?));
                }
            }
        }
        Ec2Mode::ElasticIp => {
            if let Some(allocation) = &cfg.elastic_ip_allocation_id {
                let private = cfg
                    .elastic_ip_private_address
                    .or_else(|| floating.first().copied());
                let eni = match private {
                    Some(a) => eni_of_address(a)?,
                    None => eni_of(vrrp_interface)?,
                };
                d.elastic_ip = Some(ElasticIp {
                    allocation: allocation.clone(),
                    eni,
                    private,
                });
            }
        }
    }
    Ok(d)
}

/// The steps from `o` to `d`, and a line for each difference. `accepted`:
/// a private address EC2 keeps reporting for the Elastic IP after we asked
/// for another (asking again would not change it, and each remap is
/// billed): not a difference any more.
pub fn diff(d: &Desired, o: &Observed, accepted: Option<Ipv4Addr>) -> (Vec<Step>, Vec<String>) {
    let mut steps = Vec::new();
    let mut why = Vec::new();
    // Addresses missing from their ENI, grouped per ENI in order.
    let mut missing: Vec<(String, Vec<Ipv4Addr>)> = Vec::new();
    for (a, eni) in &d.addresses {
        let have = o.eni_addresses.get(eni).is_some_and(|v| v.contains(a));
        if !have {
            why.push(format!("{a} is not on {eni}"));
            match missing.iter_mut().find(|(e, _)| e == eni) {
                Some((_, v)) => v.push(*a),
                None => missing.push((eni.clone(), vec![*a])),
            }
        }
    }
    for (eni, addresses) in missing {
        steps.push(Step::Assign { eni, addresses });
    }
    for (table, destination, eni) in &d.routes {
        let seen = o
            .routes
            .get(&(table.clone(), *destination))
            .cloned()
            .unwrap_or(RouteTarget::Absent);
        match seen {
            RouteTarget::Eni(e) if &e == eni => {}
            RouteTarget::Absent => {
                why.push(format!("{table} has no route to {destination}/32"));
                steps.push(Step::CreateRoute {
                    table: table.clone(),
                    destination: *destination,
                    eni: eni.clone(),
                });
            }
            RouteTarget::Eni(other) | RouteTarget::Other(other) => {
                why.push(format!(
                    "{table} sends {destination}/32 to {other}, not {eni}"
                ));
                steps.push(Step::ReplaceRoute {
                    table: table.clone(),
                    destination: *destination,
                    eni: eni.clone(),
                });
            }
        }
    }
    if let Some(want) = &d.elastic_ip {
        let seen = o.elastic_ip.clone().unwrap_or_default();
        let on_eni = seen.eni.as_deref() == Some(want.eni.as_str());
        let private_ok = match (want.private, seen.private) {
            (Some(w), Some(s)) => w == s || accepted == Some(s),
            // Not reported (or the primary asked for): the ENI decides.
            _ => true,
        };
        if !on_eni {
            why.push(format!(
                "the Elastic IP {} is on {}, not {}",
                want.allocation,
                seen.eni.as_deref().unwrap_or("nothing"),
                want.eni
            ));
            steps.push(Step::Associate(want.clone()));
        } else if !private_ok {
            why.push(format!(
                "the Elastic IP {} maps to {}, not {}",
                want.allocation,
                seen.private.map(|a| a.to_string()).unwrap_or_default(),
                want.private.map(|a| a.to_string()).unwrap_or_default()
            ));
            steps.push(Step::Associate(want.clone()));
        }
    }
    (steps, why)
}

/// What of the pair's sits on this (backup) host's ENIs: `mine` are its
/// ENIs, `d` what the master holds (computed as if this host were master).
pub fn stranded(d: &Desired, o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    for (a, eni) in &d.addresses {
        if o.eni_addresses.get(eni).is_some_and(|v| v.contains(a)) {
            out.push(format!("{a} on {eni}"));
        }
    }
    for (table, destination, eni) in &d.routes {
        if o.routes.get(&(table.clone(), *destination)) == Some(&RouteTarget::Eni(eni.clone())) {
            out.push(format!("the route to {destination}/32 in {table}"));
        }
    }
    if let Some(want) = &d.elastic_ip {
        if o.elastic_ip.as_ref().and_then(|e| e.eni.as_deref()) == Some(want.eni.as_str()) {
            out.push(format!(
                "the Elastic IP {} on {}",
                want.allocation, want.eni
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
    const NAT: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 10);

    fn cfg(mode: Ec2Mode) -> config::Ec2 {
        config::Ec2 {
            mode,
            network_interface_id: None,
            private_addresses: None,
            elastic_ip_allocation_id: Some("eipalloc-12".into()),
            elastic_ip_private_address: None,
            region: None,
            endpoint: None,
            route_tables: Vec::new(),
            reconcile_interval_ms: 30_000,
            hold_down_ms: 10_000,
        }
    }

    fn enis() -> Enis {
        [("eth0", "eni-a0"), ("eth1", "eni-a1")]
            .iter()
            .map(|(i, e)| (i.to_string(), e.to_string()))
            .collect()
    }

    fn two_interfaces() -> Vec<(Ipv4Addr, String)> {
        vec![(VIP, "eth0".into()), (NAT, "eth1".into())]
    }

    #[test]
    fn each_address_goes_to_the_eni_of_its_interface_and_the_eip_follows_the_first() {
        let d = desired(
            &cfg(Ec2Mode::SecondaryAddresses),
            &two_interfaces(),
            "eth0",
            &enis(),
        )
        .unwrap();
        assert_eq!(
            d.addresses,
            vec![(VIP, "eni-a0".into()), (NAT, "eni-a1".into())]
        );
        assert_eq!(
            d.elastic_ip,
            Some(ElasticIp {
                allocation: "eipalloc-12".into(),
                eni: "eni-a0".into(),
                private: Some(VIP)
            })
        );
        assert_eq!(d.enis(), vec!["eni-a0", "eni-a1"]);
        // An interface whose ENI is unknown is named.
        let mut only = enis();
        only.remove("eth1");
        assert_eq!(
            desired(
                &cfg(Ec2Mode::SecondaryAddresses),
                &two_interfaces(),
                "eth0",
                &only
            ),
            Err("eth1".into())
        );
    }

    #[test]
    fn route_mode_routes_every_floating_address_in_every_table() {
        let mut c = cfg(Ec2Mode::RouteTable);
        c.elastic_ip_allocation_id = None;
        c.route_tables = vec!["rtb-1".into(), "rtb-2".into()];
        let d = desired(&c, &two_interfaces(), "eth0", &enis()).unwrap();
        assert_eq!(d.routes.len(), 4);
        assert!(d.addresses.is_empty() && d.elastic_ip.is_none());
        assert_eq!(d.routes[1], ("rtb-1".into(), NAT, "eni-a1".into()));
        assert_eq!(d.route_tables(), vec!["rtb-1", "rtb-2"]);
    }

    #[test]
    fn elastic_ip_mode_moves_only_the_eip_to_this_hosts_own_address() {
        let d = desired(
            &cfg(Ec2Mode::ElasticIp),
            &[(VIP, "eth0".into())],
            "eth0",
            &enis(),
        )
        .unwrap();
        assert!(d.addresses.is_empty() && d.routes.is_empty());
        assert_eq!(d.elastic_ip.unwrap().private, Some(VIP));
    }

    fn held(d: &Desired) -> Observed {
        let mut o = Observed::default();
        for (a, eni) in &d.addresses {
            o.eni_addresses.entry(eni.clone()).or_default().push(*a);
        }
        for (t, a, eni) in &d.routes {
            o.routes
                .insert((t.clone(), *a), RouteTarget::Eni(eni.clone()));
        }
        o.elastic_ip = d.elastic_ip.as_ref().map(|e| ElasticIpSeen {
            eni: Some(e.eni.clone()),
            private: e.private,
            public: Some("203.0.113.7".into()),
        });
        o
    }

    #[test]
    fn nothing_changes_when_everything_is_held() {
        let d = desired(
            &cfg(Ec2Mode::SecondaryAddresses),
            &two_interfaces(),
            "eth0",
            &enis(),
        )
        .unwrap();
        let (steps, why) = diff(&d, &held(&d), None);
        assert!(steps.is_empty() && why.is_empty(), "{steps:?} {why:?}");
    }

    #[test]
    fn only_what_differs_is_changed() {
        let d = desired(
            &cfg(Ec2Mode::SecondaryAddresses),
            &two_interfaces(),
            "eth0",
            &enis(),
        )
        .unwrap();
        let mut o = held(&d);
        o.eni_addresses.get_mut("eni-a1").unwrap().clear();
        let (steps, why) = diff(&d, &o, None);
        assert_eq!(
            steps,
            vec![Step::Assign {
                eni: "eni-a1".into(),
                addresses: vec![NAT]
            }]
        );
        assert_eq!(why, vec!["10.0.2.10 is not on eni-a1"]);
        // The Elastic IP on the peer's ENI.
        let mut o = held(&d);
        o.elastic_ip.as_mut().unwrap().eni = Some("eni-b0".into());
        let (steps, why) = diff(&d, &o, None);
        assert!(
            matches!(steps.as_slice(), [Step::Associate(_)]),
            "{steps:?}"
        );
        assert!(why[0].contains("is on eni-b0, not eni-a0"), "{why:?}");
    }

    #[test]
    fn a_wrong_private_address_is_repaired_unless_ec2_keeps_reporting_it() {
        let d = desired(
            &cfg(Ec2Mode::SecondaryAddresses),
            &two_interfaces(),
            "eth0",
            &enis(),
        )
        .unwrap();
        let mut o = held(&d);
        let primary = Ipv4Addr::new(10, 0, 1, 21);
        o.elastic_ip.as_mut().unwrap().private = Some(primary);
        let (steps, why) = diff(&d, &o, None);
        assert_eq!(steps.len(), 1);
        assert!(
            why[0].contains("maps to 10.0.1.21, not 10.0.1.100"),
            "{why:?}"
        );
        assert!(diff(&d, &o, Some(primary)).0.is_empty());
    }

    #[test]
    fn routes_are_replaced_or_created() {
        let mut c = cfg(Ec2Mode::RouteTable);
        c.elastic_ip_allocation_id = None;
        c.route_tables = vec!["rtb-1".into()];
        let d = desired(&c, &[(VIP, "eth0".into())], "eth0", &enis()).unwrap();
        let mut o = Observed::default();
        let (steps, _) = diff(&d, &o, None);
        assert!(matches!(steps[0], Step::CreateRoute { .. }));
        o.routes
            .insert(("rtb-1".into(), VIP), RouteTarget::Eni("eni-b0".into()));
        let (steps, why) = diff(&d, &o, None);
        assert!(matches!(steps[0], Step::ReplaceRoute { .. }));
        assert!(why[0].contains("sends 10.0.1.100/32 to eni-b0"), "{why:?}");
        o.routes
            .insert(("rtb-1".into(), VIP), RouteTarget::Eni("eni-a0".into()));
        assert!(diff(&d, &o, None).0.is_empty());
    }

    #[test]
    fn a_backup_finds_what_sits_on_its_own_enis() {
        let d = desired(
            &cfg(Ec2Mode::SecondaryAddresses),
            &two_interfaces(),
            "eth0",
            &enis(),
        )
        .unwrap();
        let mut o = held(&d);
        assert_eq!(stranded(&d, &o).len(), 3);
        o.eni_addresses.clear();
        o.elastic_ip.as_mut().unwrap().eni = Some("eni-b0".into());
        assert!(stranded(&d, &o).is_empty());
    }
}
