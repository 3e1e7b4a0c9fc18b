//! The text exposition format 0.0.4 of a [`Snapshot`].

use std::fmt::Write as _;

use super::{BackendMetrics, Snapshot, VipMetrics};

/// `Content-Type` of a scrape answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The backend states [`render`] gives an `lb_backend_state` series each.
pub const BACKEND_STATES: [&str; 3] = ["up", "down", "drained"];

/// The verdict a reason label stands for: its prefix (`tx_`, `redirect_`,
/// `pass_`, `drop_`), or `is_drop` for a label without a known prefix.
pub fn verdict(label: &str, is_drop: bool) -> &'static str {
    for v in ["tx", "redirect", "pass", "drop"] {
        if label.strip_prefix(v).is_some_and(|r| r.starts_with('_')) {
            return v;
        }
    }
    if is_drop {
        "drop"
    } else {
        "pass"
    }
}

/// A sample value, written the way the exposition format spells numbers.
trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Rust's `Display` never uses an exponent and round-trips.
            let _ = write!(out, "{self}");
        }
    }
}

/// The exposition text being built.
struct Out(String);

impl Out {
    /// `# HELP` and `# TYPE` of a family; `help` must hold no `\` or newline.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                escape_into(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        self.0.push(' ');
        value.write(&mut self.0);
        self.0.push('\n');
    }

    fn per_vip(
        &mut self,
        s: &Snapshot,
        name: &str,
        kind: &str,
        help: &str,
        f: fn(&VipMetrics) -> u64,
    ) {
        self.family(name, kind, help);
        for v in &s.vips {
            self.sample(name, &[("vip", &v.name), ("address", &v.address)], f(v));
        }
    }

    fn per_backend(
        &mut self,
        s: &Snapshot,
        name: &str,
        kind: &str,
        help: &str,
        f: fn(&BackendMetrics) -> u64,
    ) {
        self.family(name, kind, help);
        for v in &s.vips {
            for b in &v.backends {
                self.sample(name, &[("vip", &v.name), ("backend", &b.address)], f(b));
            }
        }
    }
}

/// Escapes a label value: `\` -> `\\`, `"` -> `\"`, newline -> `\n`.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The snapshot in text exposition format 0.0.4.
///
/// Families come in a fixed order, each with its `# HELP` and `# TYPE` once
/// (also when it has no series); series follow the snapshot's order of VIPs,
/// backends and reasons, so the same snapshot always renders the same text.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(4096 + s.vips.len() * 2048));

    o.per_vip(
        s,
        "lb_vip_packets_total",
        "counter",
        "Packets of the VIP's flows, both directions.",
        |v| v.packets,
    );
    o.per_vip(
        s,
        "lb_vip_bytes_total",
        "counter",
        "Bytes (whole frames) of the VIP's flows, both directions.",
        |v| v.bytes,
    );
    o.per_vip(
        s,
        "lb_vip_flows_total",
        "counter",
        "Flows created for the VIP.",
        |v| v.flows,
    );
    o.per_vip(
        s,
        "lb_vip_healthy_backends",
        "gauge",
        "Backends of the VIP taking new flows (up and not drained).",
        |v| u64::from(v.healthy_backends),
    );
    let name = "lb_vip_ring_info";
    o.family(
        name,
        "gauge",
        "Always 1; `digest` identifies the VIP's live Maglev ring, which both load \
         balancers of a pair must share.",
    );
    for v in &s.vips {
        o.sample(
            name,
            &[
                ("vip", &v.name),
                ("address", &v.address),
                ("digest", &v.ring_digest),
            ],
            1,
        );
    }

    o.per_backend(
        s,
        "lb_backend_packets_total",
        "counter",
        "Packets of the backend's flows, both directions.",
        |b| b.packets,
    );
    o.per_backend(
        s,
        "lb_backend_bytes_total",
        "counter",
        "Bytes (whole frames) of the backend's flows, both directions.",
        |b| b.bytes,
    );
    o.per_backend(
        s,
        "lb_backend_flows_total",
        "counter",
        "Flows created toward the backend.",
        |b| b.flows,
    );
    o.per_backend(
        s,
        "lb_backend_weight",
        "gauge",
        "Configured Maglev weight of the backend.",
        |b| u64::from(b.weight),
    );
    o.per_backend(
        s,
        "lb_backend_up",
        "gauge",
        "1 if the backend's state is up, else 0.",
        |b| u64::from(b.state == "up"),
    );

    let name = "lb_backend_state";
    o.family(
        name,
        "gauge",
        "1 for the backend's current state (up, down or drained), 0 for the others.",
    );
    for v in &s.vips {
        for b in &v.backends {
            let known = BACKEND_STATES.contains(&b.state.as_str());
            let extra = (!known).then_some(b.state.as_str());
            for state in BACKEND_STATES.into_iter().chain(extra) {
                let labels = [
                    ("vip", v.name.as_str()),
                    ("backend", &b.address),
                    ("state", state),
                ];
                o.sample(name, &labels, u64::from(b.state == state));
            }
        }
    }

    let name = "lb_backend_check_latency_seconds";
    o.family(
        name,
        "gauge",
        "Duration of the backend's last health check.",
    );
    for v in &s.vips {
        for b in &v.backends {
            if let Some(seconds) = b.check_latency_seconds {
                o.sample(name, &[("vip", &v.name), ("backend", &b.address)], seconds);
            }
        }
    }

    let name = "lb_backend_checks_total";
    o.family(
        name,
        "counter",
        "Health checks of the backend, by result (ok or failed).",
    );
    for v in &s.vips {
        for b in &v.backends {
            for (result, n) in [("ok", b.checks_ok), ("failed", b.checks_failed)] {
                let labels = [
                    ("vip", v.name.as_str()),
                    ("backend", &b.address),
                    ("result", result),
                ];
                o.sample(name, &labels, n);
            }
        }
    }

    for (name, help, bytes) in [
        (
            "lb_packets_total",
            "Packets seen by the XDP program, by verdict and reason.",
            false,
        ),
        (
            "lb_bytes_total",
            "Bytes (whole frames) seen by the XDP program, by verdict and reason.",
            true,
        ),
    ] {
        o.family(name, "counter", help);
        for &(reason, packets, nbytes, is_drop) in &s.reasons {
            let labels = [("reason", reason), ("verdict", verdict(reason, is_drop))];
            o.sample(name, &labels, if bytes { nbytes } else { packets });
        }
    }

    let name = "lb_events_total";
    o.family(
        name,
        "counter",
        "Things the XDP program did to packets besides their verdict, by event \
         (mss_clamped: a SYN or SYN-ACK whose MSS option was lowered).",
    );
    for &(event, n) in &s.events {
        o.sample(name, &[("event", event)], n);
    }

    for (name, kind, help, value) in [
        (
            "lb_flow_table_entries",
            "gauge",
            "Flows tracked: flow table entries not expired.",
            s.flows,
        ),
        (
            "lb_nat_table_entries",
            "gauge",
            "NAT table entries not expired.",
            s.nat_entries,
        ),
        (
            "lb_flow_table_capacity",
            "gauge",
            "Ways of the flow table: room for dataplane.max_flows connections, with a margin.",
            s.flow_capacity,
        ),
        (
            "lb_start_time_seconds",
            "gauge",
            "When lbd started, in seconds since the Unix epoch.",
            s.up_since_unix,
        ),
        (
            "lb_reloads_total",
            "counter",
            "Configuration reloads applied.",
            s.reloads,
        ),
        (
            "lb_reload_failures_total",
            "counter",
            "Configuration reloads refused or failed.",
            s.reload_failures,
        ),
    ] {
        o.family(name, kind, help);
        o.sample(name, &[], value);
    }

    if let Some(v) = &s.vrrp {
        for (name, kind, help, value) in [
            (
                "lb_vrrp_master",
                "gauge",
                "1 while this load balancer is the VRRP master, else 0.",
                u64::from(v.master),
            ),
            (
                "lb_vrrp_priority",
                "gauge",
                "The VRRP priority advertised now: the configured one, lowered by tracked problems.",
                u64::from(v.priority),
            ),
            (
                "lb_vrrp_addresses_held",
                "gauge",
                "1 while the floating addresses are on this host, else 0.",
                u64::from(v.holding),
            ),
            (
                "lb_vrrp_transitions_total",
                "counter",
                "VRRP state changes (backup to master and back).",
                v.transitions,
            ),
        ] {
            o.family(name, kind, help);
            o.sample(name, &[], value);
        }
        let name = "lb_vrrp_adverts_total";
        o.family(
            name,
            "counter",
            "VRRP advertisements sent, received, and refused (invalid or from an unknown peer).",
        );
        for (what, n) in [
            ("sent", v.adverts_sent),
            ("received", v.adverts_received),
            ("refused", v.adverts_invalid),
        ] {
            o.sample(name, &[("direction", what)], n);
        }
        let name = "lb_vrrp_refused_total";
        o.family(
            name,
            "counter",
            "VRRP packets refused, by reason: truncated, not_vrrp, ttl, version, type, \
             checksum, zero_interval (malformed or off-link), not_peer (a sender not in \
             vrrp.peers).",
        );
        for (reason, n) in &v.refused {
            o.sample(name, &[("reason", reason.as_str())], *n);
        }
        if let Some((done, failed)) = v.ec2 {
            for (name, help, value) in [
                (
                    "lb_ec2_takeovers_total",
                    "EC2 takeovers completed and verified (addresses moved to this instance).",
                    done,
                ),
                (
                    "lb_ec2_takeover_failures_total",
                    "Failed attempts to move the addresses through the EC2 API (each is retried).",
                    failed,
                ),
            ] {
                o.family(name, "counter", help);
                o.sample(name, &[], value);
            }
        }
        if let Some(e) = &v.ec2_state {
            if let Some(ok) = e.preflight_ok {
                let name = "lb_ec2_preflight_ok";
                o.family(
                    name,
                    "gauge",
                    "1 when the EC2 start-up checks passed (this host can take over), 0 when one failed.",
                );
                o.sample(name, &[], u64::from(ok));
            }
            for (name, kind, help, value) in [
                (
                    "lb_ec2_held",
                    "gauge",
                    "1 while master and the last reconcile found the addresses where they belong.",
                    u64::from(e.held),
                ),
                (
                    "lb_ec2_stranded",
                    "gauge",
                    "Addresses, routes or the Elastic IP of the pair that EC2 shows on this backup's ENIs.",
                    e.stranded,
                ),
                (
                    "lb_ec2_drifts_total",
                    "counter",
                    "Reconciles of a master that found something out of place in EC2.",
                    e.drifts,
                ),
                (
                    "lb_ec2_repairs_total",
                    "counter",
                    "Drift repaired and verified by a master.",
                    e.repairs,
                ),
            ] {
                o.family(name, kind, help);
                o.sample(name, &[], value);
            }
        }
    }
    o.0
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::metrics::{Ec2Metrics, VrrpMetrics};
    use std::collections::{HashMap, HashSet};

    pub(crate) fn snapshot() -> Snapshot {
        Snapshot {
            vips: vec![
                VipMetrics {
                    name: "web".into(),
                    address: "10.0.0.1:80".into(),
                    healthy_backends: 1,
                    packets: 1000,
                    bytes: 64_000,
                    flows: 10,
                    ring_digest: "0123456789abcdef".into(),
                    backends: vec![
                        BackendMetrics {
                            address: "10.0.2.11:8080".into(),
                            weight: 3,
                            state: "up".into(),
                            packets: 700,
                            bytes: 44_800,
                            flows: 7,
                            check_latency_seconds: Some(0.0015),
                            checks_ok: 41,
                            checks_failed: 2,
                        },
                        BackendMetrics {
                            address: "10.0.2.12:8080".into(),
                            weight: 1,
                            state: "drained".into(),
                            packets: 300,
                            bytes: 19_200,
                            flows: 3,
                            check_latency_seconds: None,
                            checks_ok: 0,
                            checks_failed: 5,
                        },
                    ],
                },
                VipMetrics {
                    name: "we\"ird\\na\nme".into(),
                    address: "10.0.0.2:443".into(),
                    ..VipMetrics::default()
                },
            ],
            reasons: vec![
                ("tx_forward", 900, 57_600, false),
                ("redirect_reply", 5, 320, false),
                ("pass_not_tcp", 12, 1_000, false),
                ("drop_no_backend", 3, 180, true),
            ],
            events: vec![("mss_clamped", 4)],
            flows: 10,
            nat_entries: 10,
            flow_capacity: 1_048_576,
            up_since_unix: 1_700_000_000,
            reloads: 2,
            reload_failures: 1,
            vrrp: None,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn vrrp_series_appear_only_with_vrrp() {
        let plain = render(&snapshot());
        assert!(!plain.contains("lb_vrrp"), "{plain}");
        let mut s = snapshot();
        s.vrrp = Some(VrrpMetrics {
            master: true,
            priority: 100,
            holding: true,
            transitions: 3,
            adverts_sent: 40,
            adverts_received: 7,
            adverts_invalid: 1,
            refused: vec![("ttl".into(), 1)],
            ec2: Some((2, 5)),
            ec2_state: Some(Ec2Metrics {
                preflight_ok: Some(false),
                held: true,
                stranded: 0,
                drifts: 3,
                repairs: 2,
            }),
        });
        let text = render(&s);
        let l = lines(&text);
        for want in [
            "lb_vrrp_master 1",
            "lb_vrrp_priority 100",
            "lb_vrrp_addresses_held 1",
            "lb_vrrp_transitions_total 3",
            "lb_vrrp_adverts_total{direction=\"sent\"} 40",
            "lb_vrrp_adverts_total{direction=\"received\"} 7",
            "lb_vrrp_adverts_total{direction=\"refused\"} 1",
            "lb_vrrp_refused_total{reason=\"ttl\"} 1",
            "lb_ec2_takeovers_total 2",
            "lb_ec2_takeover_failures_total 5",
            "lb_ec2_preflight_ok 0",
            "lb_ec2_held 1",
            "lb_ec2_stranded 0",
            "lb_ec2_drifts_total 3",
            "lb_ec2_repairs_total 2",
            "# TYPE lb_vrrp_master gauge",
            "# TYPE lb_ec2_takeovers_total counter",
        ] {
            assert!(l.contains(&want), "{want:?} missing from\n{text}");
        }
    }

    #[test]
    fn renders_exact_series() {
        let text = render(&snapshot());
        let l = lines(&text);
        for want in [
            r#"lb_vip_packets_total{vip="web",address="10.0.0.1:80"} 1000"#,
            r#"lb_vip_bytes_total{vip="web",address="10.0.0.1:80"} 64000"#,
            r#"lb_vip_healthy_backends{vip="web",address="10.0.0.1:80"} 1"#,
            r#"lb_vip_ring_info{vip="web",address="10.0.0.1:80",digest="0123456789abcdef"} 1"#,
            r#"lb_backend_packets_total{vip="web",backend="10.0.2.11:8080"} 700"#,
            r#"lb_backend_weight{vip="web",backend="10.0.2.11:8080"} 3"#,
            r#"lb_backend_up{vip="web",backend="10.0.2.11:8080"} 1"#,
            r#"lb_backend_up{vip="web",backend="10.0.2.12:8080"} 0"#,
            r#"lb_backend_check_latency_seconds{vip="web",backend="10.0.2.11:8080"} 0.0015"#,
            r#"lb_backend_checks_total{vip="web",backend="10.0.2.11:8080",result="ok"} 41"#,
            r#"lb_backend_checks_total{vip="web",backend="10.0.2.11:8080",result="failed"} 2"#,
            r#"lb_packets_total{reason="tx_forward",verdict="tx"} 900"#,
            r#"lb_packets_total{reason="redirect_reply",verdict="redirect"} 5"#,
            r#"lb_packets_total{reason="pass_not_tcp",verdict="pass"} 12"#,
            r#"lb_bytes_total{reason="drop_no_backend",verdict="drop"} 180"#,
            r#"lb_events_total{event="mss_clamped"} 4"#,
            "lb_flow_table_entries 10",
            "lb_nat_table_entries 10",
            "lb_flow_table_capacity 1048576",
            "lb_start_time_seconds 1700000000",
            "lb_reloads_total 2",
            "lb_reload_failures_total 1",
            "# TYPE lb_vip_packets_total counter",
            "# TYPE lb_backend_state gauge",
            "# TYPE lb_packets_total counter",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{text}");
        }
        // No latency series for a backend that was never checked.
        assert!(!text
            .contains(r#"lb_backend_check_latency_seconds{vip="web",backend="10.0.2.12:8080"}"#));
        assert!(text.ends_with('\n'));
        assert_eq!(text, render(&snapshot()), "deterministic");
    }

    #[test]
    fn help_and_type_once_per_family_before_its_samples() {
        let text = render(&snapshot());
        let mut help = HashMap::<&str, usize>::new();
        let mut kind = HashMap::<&str, &str>::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                *help.entry(rest.split(' ').next().unwrap()).or_default() += 1;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, k) = rest.split_once(' ').unwrap();
                assert!(kind.insert(name, k).is_none(), "TYPE twice for {name}");
                assert!(help.contains_key(name), "TYPE before HELP for {name}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(kind.contains_key(name), "sample {name} before its TYPE");
            }
        }
        assert_eq!(help.len(), 22, "{help:?}");
        assert!(help.values().all(|&n| n == 1), "{help:?}");
        for (name, k) in &kind {
            assert!(name.starts_with("lb_"), "{name}");
            assert_eq!(name.ends_with("_total"), *k == "counter", "{name} is a {k}");
            assert!(help.contains_key(name));
        }
    }

    #[test]
    fn escapes_label_values() {
        let text = render(&snapshot());
        assert!(
            lines(&text).contains(
                &r#"lb_vip_packets_total{vip="we\"ird\\na\nme",address="10.0.0.2:443"} 0"#
            ),
            "{text}"
        );
        let mut s = String::new();
        escape_into(&mut s, "a\\b\"c\nd");
        assert_eq!(s, r#"a\\b\"c\nd"#);
    }

    #[test]
    fn one_state_series_per_state() {
        let mut snap = snapshot();
        snap.vips[0].backends[0].state = "rebooting".into();
        let text = render(&snap);
        let state: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("lb_backend_state{"))
            .collect();
        assert_eq!(
            state,
            [
                r#"lb_backend_state{vip="web",backend="10.0.2.11:8080",state="up"} 0"#,
                r#"lb_backend_state{vip="web",backend="10.0.2.11:8080",state="down"} 0"#,
                r#"lb_backend_state{vip="web",backend="10.0.2.11:8080",state="drained"} 0"#,
                r#"lb_backend_state{vip="web",backend="10.0.2.11:8080",state="rebooting"} 1"#,
                r#"lb_backend_state{vip="web",backend="10.0.2.12:8080",state="up"} 0"#,
                r#"lb_backend_state{vip="web",backend="10.0.2.12:8080",state="down"} 0"#,
                r#"lb_backend_state{vip="web",backend="10.0.2.12:8080",state="drained"} 1"#,
            ]
        );
    }

    #[test]
    fn verdicts_and_special_floats() {
        assert_eq!(verdict("tx_forward", false), "tx");
        assert_eq!(verdict("redirect_forward", false), "redirect");
        assert_eq!(verdict("pass_ttl", false), "pass");
        assert_eq!(verdict("drop_nat_miss", true), "drop");
        assert_eq!(verdict("transmogrified", true), "drop");
        assert_eq!(verdict("txx", false), "pass");
        for (v, s) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (1e-9, "0.000000001"),
        ] {
            let mut out = String::new();
            v.write(&mut out);
            assert_eq!(out, s);
        }
    }

    #[test]
    fn every_reason_of_the_dataplane_has_the_verdict_of_its_kind() {
        for r in lb_ebpf::Reason::ALL {
            let v = verdict(r.label(), r.is_drop());
            assert_eq!(v == "drop", r.is_drop(), "{}", r.label());
            assert!(r.label().starts_with(v), "{}", r.label());
        }
    }

    /// Parses a sample line: `name{k="v",...} value`, returning the name.
    type Labels = Vec<(String, String)>;

    fn parse_sample(line: &str) -> Result<(&str, Labels, f64), String> {
        let name_end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..name_end];
        let valid_name = name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
        if name.is_empty() || !valid_name {
            return Err(format!("bad name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            loop {
                let start = chars.peek().ok_or("unterminated labels")?.0;
                let mut key_end = start;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        key_end = i;
                        break;
                    }
                    if !(c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("bad label name char {c:?}"));
                    }
                }
                let key = &r[start..key_end];
                if key.is_empty() || chars.next().map(|c| c.1) != Some('"') {
                    return Err("bad label".into());
                }
                let mut value = String::new();
                loop {
                    match chars.next().ok_or("unterminated value")?.1 {
                        '"' => break,
                        '\\' => match chars.next().ok_or("dangling escape")?.1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => return Err(format!("bad escape \\{c}")),
                        },
                        '\n' => return Err("raw newline".into()),
                        c => value.push(c),
                    }
                }
                labels.push((key.to_string(), value));
                match chars.next().ok_or("unterminated labels")? {
                    (_, ',') => continue,
                    (i, '}') => {
                        rest = &r[i + 1..];
                        break;
                    }
                    (_, c) => return Err(format!("unexpected {c:?}")),
                }
            }
        }
        let value = rest.strip_prefix(' ').ok_or("no space before value")?;
        let v = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse::<f64>()
                .map_err(|e| format!("bad value {v:?}: {e}"))?,
        };
        Ok((name, labels, v))
    }

    #[test]
    fn every_sample_line_parses_back() {
        let text = render(&snapshot());
        let mut seen = HashSet::new();
        let mut samples = 0;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, _) = parse_sample(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert!(
                seen.insert((name.to_string(), labels.clone())),
                "duplicate series {line}"
            );
            samples += 1;
        }
        assert!(samples > 40, "{samples}");
        let weird = ("vip".to_string(), "we\"ird\\na\nme".to_string());
        assert!(
            seen.iter().any(|(_, l)| l.contains(&weird)),
            "escaped value round-trips"
        );
        assert!(parse_sample("x{a=\"b\"} nope").is_err());
        assert!(parse_sample("x{a=\"b} 1").is_err());
    }
}
