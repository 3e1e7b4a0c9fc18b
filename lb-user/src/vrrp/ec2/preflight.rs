//! The start-up checks, on both hosts: everything a takeover needs is
//! tried before it is needed, so that a backup that could not take over is
//! visible long before an outage (`lbctl status`, `lb_ec2_preflight_ok`).
//!
//! Nothing changes: the mutating calls are made with `DryRun`, and a route
//! is dry-run towards the target it already has (an endpoint that ignores
//! DryRun, as moto does for routes, then changes nothing either).

use std::net::Ipv4Addr;

use super::super::status::Check as Ec2Check;
use super::{
    client::{dry_run_outcome, Api, DryRun},
    error::{Ec2Error, ErrorClass},
    imds::Discovery,
    plan::{Desired, ElasticIp, RouteTarget},
};
use crate::config::{self, Ec2Mode};

/// The checks' results, and whether any failed for good (a check that
/// failed for a reason that may pass later makes the preflight incomplete).
pub struct Report {
    pub checks: Vec<Ec2Check>,
    /// A check failed with a permanent error.
    pub failed: bool,
    /// A check could not complete (the API out of reach): run it again.
    pub incomplete: bool,
}

impl Report {
    fn new() -> Report {
        Report {
            checks: Vec::new(),
            failed: false,
            incomplete: false,
        }
    }

    fn ok(&mut self, name: &str, detail: impl Into<String>) {
        self.checks.push(Ec2Check {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        });
    }

    fn fail(&mut self, name: &str, detail: impl Into<String>, class: ErrorClass) {
        if class.retryable() {
            self.incomplete = true;
        } else {
            self.failed = true;
        }
        self.checks.push(Ec2Check {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        });
    }

    fn error(&mut self, name: &str, e: &Ec2Error) {
        self.fail(name, e.to_string(), e.class());
    }

    /// The first failed check, in words.
    pub fn first_failure(&self) -> Option<String> {
        self.checks
            .iter()
            .find(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
    }
}

/// What the checks look at.
pub struct Inputs<'a> {
    pub cfg: &'a config::Ec2,
    pub vrrp_interface: &'a str,
    /// Instance metadata, or why it could not be read.
    pub discovery: &'a Result<Discovery, Ec2Error>,
    /// What this host would hold as master.
    pub desired: &'a Result<Desired, String>,
}

/// Runs every check that applies to the mode.
pub async fn run(api: &Api, inp: &Inputs<'_>) -> Report {
    let mut r = Report::new();
    let cfg = inp.cfg;
    match inp.discovery {
        Ok(d) => {
            let nics: Vec<String> = d
                .nics
                .iter()
                .map(|n| {
                    format!(
                        "{} = {}{}",
                        n.ifname,
                        n.interface_id,
                        n.subnet.map(|s| format!(" in {s}")).unwrap_or_default()
                    )
                })
                .collect();
            r.ok(
                "metadata",
                format!(
                    "instance {} in {} ({}); {}",
                    d.instance_id,
                    d.availability_zone,
                    d.region,
                    nics.join(", ")
                ),
            );
            if let (Some(want), Some(nic)) = (&cfg.network_interface_id, d.nic(inp.vrrp_interface))
            {
                if want != &nic.interface_id {
                    r.fail(
                        "network_interface_id",
                        format!(
                            "vrrp.ec2.network_interface_id is {want}, but {} of this instance \
                             ({}) is {}: is this file copied from the other host? The \
                             takeover uses {}",
                            inp.vrrp_interface, d.instance_id, nic.interface_id, nic.interface_id
                        ),
                        ErrorClass::Permanent,
                    );
                }
            }
        }
        Err(e) => r.error("metadata", e),
    }
    match api.check_credentials().await {
        Ok(how) => r.ok("credentials", format!("{how}; region {}", api.region())),
        Err(e) => r.error("credentials", &e),
    }
    let desired = match inp.desired {
        Ok(d) => d,
        Err(ifname) => {
            r.fail(
                "network_interfaces",
                format!(
                    "the ENI of {ifname} is not known: instance metadata could not be read, and \
                     vrrp.ec2.network_interface_id names only that of vrrp.interface"
                ),
                if inp.discovery.is_err() {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                },
            );
            return r;
        }
    };
    // The ENIs: this instance's, and (route mode) not checking source and
    // destination.
    let enis = desired.enis();
    match api.describe_enis(&enis).await {
        Ok(found) => {
            let me = inp.discovery.as_ref().ok().map(|d| d.instance_id.clone());
            let mut bad = Vec::new();
            for id in &enis {
                match found.iter().find(|e| &e.id == id) {
                    None => bad.push(format!("{id} does not exist")),
                    Some(e) => {
                        if let Some(me) = &me {
                            if e.instance_id.as_deref() != Some(me.as_str()) {
                                bad.push(format!(
                                    "{id} is attached to {}, not to this instance {me}",
                                    e.instance_id.as_deref().unwrap_or("no instance")
                                ));
                            }
                        }
                        if cfg.mode == Ec2Mode::RouteTable && e.source_dest_check != Some(false) {
                            bad.push(format!(
                                "{id} has source/destination check on: route-table mode needs \
                                 it off (aws ec2 modify-network-interface-attribute \
                                 --network-interface-id {id} --no-source-dest-check)"
                            ));
                        }
                    }
                }
            }
            if bad.is_empty() {
                r.ok("network_interfaces", enis.join(", "));
            } else {
                r.fail("network_interfaces", bad.join("; "), ErrorClass::Permanent);
            }
        }
        Err(e) => r.error("network_interfaces", &e),
    }
    // Each private address in its ENI's subnet (EC2 refuses others).
    if cfg.mode == Ec2Mode::SecondaryAddresses {
        if let Ok(d) = inp.discovery {
            let mut bad = Vec::new();
            for (a, eni) in &desired.addresses {
                let nic = d.nics.iter().find(|n| &n.interface_id == eni);
                if let Some(subnet) = nic.and_then(|n| n.subnet) {
                    if !subnet.contains(*a) {
                        bad.push(format!(
                            "{a} is outside {eni}'s subnet {subnet} (a secondary private address \
                             moves only within its subnet)"
                        ));
                    }
                }
            }
            if bad.is_empty() {
                r.ok(
                    "subnets",
                    format!(
                        "{} address(es) in their ENI's subnet",
                        desired.addresses.len()
                    ),
                );
            } else {
                r.fail("subnets", bad.join("; "), ErrorClass::Permanent);
            }
        }
    }
    if let Some(e) = &desired.elastic_ip {
        elastic_ip(api, e, &mut r).await;
    }
    if !desired.routes.is_empty() {
        routes(api, desired, &mut r).await;
    }
    if !desired.addresses.is_empty() {
        r.ok(
            "permission AssignPrivateIpAddresses",
            "not checkable in advance: EC2 has no DryRun for it; the first takeover tries it",
        );
    }
    r
}

fn dry_run_check(r: &mut Report, action: &str, outcome: DryRun) {
    let name = format!("permission {action}");
    match outcome {
        DryRun::Allowed => r.ok(&name, "allowed (DryRun)"),
        DryRun::Performed => r.ok(
            &name,
            "the endpoint carried out the DryRun call instead of answering DryRunOperation \
             (an emulator?); it was made so as to change nothing",
        ),
        DryRun::Refused(e) => r.fail(
            &name,
            format!("the role lacks ec2:{action}: {e}"),
            ErrorClass::Permanent,
        ),
        DryRun::Failed(e) => r.error(&name, &e),
    }
}

async fn elastic_ip(api: &Api, e: &ElasticIp, r: &mut Report) {
    match api.describe_elastic_ip(&e.allocation).await {
        Ok(seen) => r.ok(
            "elastic_ip",
            format!(
                "{} ({}) is on {}",
                e.allocation,
                seen.public.as_deref().unwrap_or("no public address"),
                seen.eni.as_deref().unwrap_or("no interface")
            ),
        ),
        Err(err) => {
            r.error("elastic_ip", &err);
            return;
        }
    }
    dry_run_check(
        r,
        "AssociateAddress",
        dry_run_outcome(api.associate(e, true).await),
    );
}

async fn routes(api: &Api, d: &Desired, r: &mut Report) {
    let tables = d.route_tables();
    let seen = match api.describe_routes(&tables).await {
        Ok(s) => s,
        Err(e) => {
            r.error("route_tables", &e);
            return;
        }
    };
    let mut lines = Vec::new();
    let mut replace: Option<(String, Ipv4Addr, String)> = None;
    let mut create: Option<(String, Ipv4Addr, String)> = None;
    for (table, dest, eni) in &d.routes {
        match seen
            .iter()
            .find(|(t, a, _)| t == table && a == dest)
            .map(|(_, _, target)| target)
        {
            Some(RouteTarget::Eni(cur)) => {
                lines.push(format!("{table}: {dest}/32 -> {cur}"));
                replace.get_or_insert((table.clone(), *dest, cur.clone()));
            }
            Some(RouteTarget::Other(what)) => {
                lines.push(format!("{table}: {dest}/32 -> {what}"));
            }
            Some(RouteTarget::Absent) | None => {
                lines.push(format!("{table}: no route to {dest}/32 yet"));
                create.get_or_insert((table.clone(), *dest, eni.clone()));
            }
        }
    }
    r.ok("route_tables", lines.join("; "));
    if let Some((table, dest, cur)) = replace {
        // Towards the target it has now: nothing moves even if carried out.
        let outcome = dry_run_outcome(api.replace_route(&table, dest, &cur, true).await);
        dry_run_check(r, "ReplaceRoute", outcome);
    }
    if let Some((table, dest, eni)) = create {
        let outcome = dry_run_outcome(api.create_route(&table, dest, &eni, true).await);
        dry_run_check(r, "CreateRoute", outcome);
    }
}
