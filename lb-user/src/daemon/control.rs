//! The control socket: lbctl's requests, one JSON line each, answered in
//! order ([`crate::api`]), and the API edge: the conversions from the
//! daemon's model (balancer, VRRP, counters) to the protocol's types, in
//! this one place, so the domain modules never speak the wire format.

use std::{
    future::Future,
    io::ErrorKind,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context, Result};
use lb_ebpf::{Event, Reason};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use super::{lock_state, publish_vip_problems, reload, ReloadError, State};
use crate::{
    api::{
        self, ApiError, BackendChange, BackendState, BackendStatus, DaemonStatus, ErrorCode,
        EventCount, OnEmpty, Protocol, ReasonCount, ReloadSummary, Request, Response, Stats,
        VipStatus, XdpMode,
    },
    balancer::{Admin, BackendEntry, Balancer, BalancerError, ReloadChanges},
    config,
    dataplane::Maps,
    state,
    vrrp::{self, machine::Role},
};

/// Binds the control socket, root-only. A live daemon already on it is an error;
/// a stale socket file is replaced. Returns the directories it created.
pub(super) fn bind(path: &Path) -> Result<(UnixListener, Vec<PathBuf>)> {
    state::check_socket_dir(path).context("control.socket")?;
    let created = match path.parent() {
        Some(dir) => {
            state::create_dirs(dir, 0o755).with_context(|| format!("creating {}", dir.display()))?
        }
        None => Vec::new(),
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        state::remove_created_dirs(&created);
        bail!("another lbd is already serving {}", path.display());
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok((listener, created))
}

/// Serves lbctl's requests on `listener` until `stop` changes.
pub(super) async fn serve(
    listener: UnixListener,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
) {
    // Connections end with the listener: dropping the set aborts them.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, state.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One request line as read from a client.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Text(String),
    /// A line that is not UTF-8: answered with an error, and the connection
    /// goes on.
    NotUtf8,
    /// A line longer than [`api::MAX_REQUEST_LINE`]: answered with an error,
    /// then the connection is closed (the rest of it is not read).
    TooLong,
}

/// Reads the next request line (without its `\n` or `\r\n`), never
/// holding more than `max` bytes of it. `None` at the end of the stream.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            break;
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if line.len() + i > max {
                    return Ok(Some(Line::TooLong));
                }
                line.extend_from_slice(&chunk[..i]);
                r.consume(i + 1);
                break;
            }
            None => {
                let n = chunk.len();
                if line.len() + n > max {
                    return Ok(Some(Line::TooLong));
                }
                line.extend_from_slice(chunk);
                r.consume(n);
            }
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(match String::from_utf8(line) {
        Ok(text) => Line::Text(text),
        Err(_) => Line::NotUtf8,
    }))
}

/// Answers the requests of one client, a line each, in order, with
/// `handle`; every line gets an answer, a malformed one an error.
async fn serve_lines<R, W, F, Fut>(rd: R, mut wr: W, handle: F)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let mut rd = BufReader::new(rd);
    loop {
        let (result, last) = match read_line(&mut rd, api::MAX_REQUEST_LINE).await {
            Ok(None) | Err(_) => return,
            Ok(Some(Line::Text(line))) => (handle(line).await, false),
            Ok(Some(Line::NotUtf8)) => (
                Err(ApiError::bad_request("the request is not UTF-8 text")),
                false,
            ),
            Ok(Some(Line::TooLong)) => (
                Err(ApiError::bad_request(format!(
                    "the request line is longer than {} bytes; closing the connection",
                    api::MAX_REQUEST_LINE
                ))),
                true,
            ),
        };
        let mut out = api::response_line(result);
        out.push('\n');
        if wr.write_all(out.as_bytes()).await.is_err() || last {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

async fn serve_connection(stream: UnixStream, state: Arc<Mutex<State>>) {
    let (rd, wr) = stream.into_split();
    serve_lines(rd, wr, |line| {
        let state = state.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let request = api::parse_request(&line)?;
                if matches!(request, Request::Stats) {
                    // The tables are counted after the lock is released:
                    // a walk of a big table takes a while, and health
                    // verdicts and other commands must not wait for it.
                    let (mut stats, counter) = {
                        let st = lock_state(&state);
                        let counter = st.dataplane.table_counter().map_err(internal)?;
                        (stats(&st)?, counter)
                    };
                    stats.flows = counter.flows() as u64;
                    stats.nat_entries = counter.nat_entries() as u64;
                    return Ok(Response::Stats(stats));
                }
                handle(&mut lock_state(&state), request)
            })
            .await
            .unwrap_or_else(|e| Err(ApiError::internal(format!("request handler failed: {e}"))))
        }
    })
    .await
}

/// Executes one control request (and tells VRRP what it changed).
pub fn handle(st: &mut State, request: Request) -> Result<Response, ApiError> {
    let result = handle_request(st, request);
    publish_vip_problems(st);
    result
}

fn handle_request(st: &mut State, request: Request) -> Result<Response, ApiError> {
    match request {
        Request::Status => return Ok(Response::Status(Box::new(status(st)))),
        Request::Reload => {
            let changes = reload(st).map_err(reload_error)?;
            tracing::info!(summary = ?changes, "reloaded on request");
            return Ok(Response::Reload(reload_summary(changes)));
        }
        Request::Stats => {
            // Without the table counts: see serve_connection.
            return stats(st).map(Response::Stats);
        }
        _ => {}
    }
    let State {
        balancer,
        dataplane,
        monitor,
        cfg,
        ..
    } = st;
    let ring_size = cfg.dataplane.ring_size;
    let (vip, entry) = match request {
        Request::Status | Request::Reload | Request::Stats => unreachable!("handled above"),
        Request::BackendsList | Request::Vips => {
            return vip_statuses(balancer, dataplane, ring_size)
                .map(Response::Vips)
                .map_err(internal)
        }
        Request::BackendsAdd {
            vip,
            address,
            port,
            weight,
        } => {
            let b = balancer
                .add_backend(dataplane, &vip, address, port, weight)
                .map_err(balancer_error)?;
            monitor.set_targets(balancer.health_targets());
            tracing::info!(vip, backend = %b.socket(), weight, "backend added");
            (vip, b)
        }
        Request::BackendsRemove { vip, address, port } => {
            let b = balancer
                .remove_backend(dataplane, &vip, address, port)
                .map_err(balancer_error)?;
            monitor.set_targets(balancer.health_targets());
            tracing::info!(vip, backend = %b.socket(), "backend removed");
            (vip, b)
        }
        Request::BackendsDrain { vip, address, port } => {
            let b = balancer
                .set_admin(dataplane, &vip, address, port, Admin::Drained)
                .map_err(balancer_error)?;
            tracing::info!(vip, backend = %b.socket(), "backend drained");
            (vip, b)
        }
        Request::BackendsEnable { vip, address, port } => {
            let b = balancer
                .set_admin(dataplane, &vip, address, port, Admin::Enabled)
                .map_err(balancer_error)?;
            tracing::info!(vip, backend = %b.socket(), "backend enabled");
            (vip, b)
        }
        Request::BackendsWeight {
            vip,
            address,
            port,
            weight,
        } => {
            let b = balancer
                .set_weight(dataplane, &vip, address, port, weight)
                .map_err(balancer_error)?;
            tracing::info!(vip, backend = %b.socket(), weight, "backend weight changed");
            (vip, b)
        }
    };
    Ok(Response::Backend(BackendChange {
        vip,
        address: entry.address,
        port: entry.port,
        weight: entry.weight,
        state: backend_state(&entry),
    }))
}

// ---------------------------------------------------------------------------
// The API edge: the domain's values in the protocol's types, in one place.

fn internal(e: anyhow::Error) -> ApiError {
    ApiError::internal(format!("{e:#}"))
}

/// The code a balancer's refusal gets.
fn balancer_error(e: BalancerError) -> ApiError {
    let code = match &e {
        BalancerError::NoVip { .. } | BalancerError::NoBackend { .. } => ErrorCode::NotFound,
        BalancerError::Duplicate { .. } | BalancerError::NoRoom(_) => ErrorCode::Conflict,
        BalancerError::Invalid(_) | BalancerError::RestartNeeded { .. } => ErrorCode::Invalid,
        BalancerError::Kernel(_) | BalancerError::KernelUndo { .. } => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

fn reload_error(e: ReloadError) -> ApiError {
    match e {
        ReloadError::Balancer(e) => balancer_error(e),
        ReloadError::Config(_) | ReloadError::Vrrp => ApiError::invalid(e.to_string()),
    }
}

fn reload_summary(c: ReloadChanges) -> ReloadSummary {
    ReloadSummary {
        vips_added: c.vips_added,
        vips_removed: c.vips_removed,
        backends_added: c.backends_added,
        backends_removed: c.backends_removed,
        backends_changed: c.backends_changed,
    }
}

/// `up`, `down` or `drained`, as lbctl and metrics show a backend.
pub(super) fn backend_state(b: &BackendEntry) -> BackendState {
    match (b.up, b.admin) {
        (false, _) => BackendState::Down,
        (true, Admin::Drained) => BackendState::Drained,
        (true, Admin::Enabled) => BackendState::Up,
    }
}

/// Every VIP with its backends and their counters.
pub(super) fn vip_statuses(
    balancer: &Balancer,
    maps: &impl Maps,
    ring_size: u32,
) -> anyhow::Result<Vec<VipStatus>> {
    balancer
        .vips()
        .iter()
        .map(|v| {
            let c = maps.vip_counters(v.id)?;
            let backends = v
                .backends
                .iter()
                .map(|b| {
                    let bc = maps.backend_counters(b.id)?;
                    Ok(BackendStatus {
                        address: b.address,
                        port: b.port,
                        weight: b.weight,
                        state: backend_state(b),
                        packets: bc.packets,
                        bytes: bc.bytes,
                        flows: bc.flows,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(VipStatus {
                name: v.name.clone(),
                address: v.address,
                port: v.port,
                protocol: Protocol::Tcp,
                on_empty: match v.on_empty {
                    config::OnEmpty::Reset => OnEmpty::Reset,
                    config::OnEmpty::Drop => OnEmpty::Drop,
                },
                healthy_backends: v.healthy_backends() as u32,
                packets: c.packets,
                bytes: c.bytes,
                flows: c.flows,
                ring_digest: v.ring_digest(ring_size),
                backends,
            })
        })
        .collect()
}

/// Per-reason counters, without the table counts (filled in by the caller).
fn stats(st: &State) -> Result<Stats, ApiError> {
    let counters = st.dataplane.reason_counters().map_err(internal)?;
    let reasons = Reason::ALL
        .iter()
        .zip(counters)
        .map(|(r, c)| ReasonCount {
            reason: r.label().into(),
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    let events = Event::ALL
        .iter()
        .zip(st.dataplane.event_counters().map_err(internal)?)
        .map(|(e, count)| EventCount {
            event: e.label().into(),
            count,
        })
        .collect();
    Ok(Stats {
        reasons,
        events,
        flows: 0,
        nat_entries: 0,
        max_flows: st.cfg.dataplane.max_flows as u64,
    })
}

fn status(st: &State) -> DaemonStatus {
    let backends: Vec<_> = st
        .balancer
        .vips()
        .iter()
        .flat_map(|v| v.backends.iter())
        .collect();
    DaemonStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_secs: st.started.elapsed().as_secs(),
        config: st.config_path.display().to_string(),
        interfaces: st.dataplane.attached(),
        xdp_mode: match st.cfg.dataplane.xdp_mode {
            config::XdpMode::Native => XdpMode::Native,
            config::XdpMode::Generic => XdpMode::Generic,
        },
        adopted: st.dataplane.adopted(),
        vips: st.balancer.vips().len() as u32,
        backends: backends.len() as u32,
        backends_up: backends.iter().filter(|b| b.in_ring()).count() as u32,
        reloads: st.reloads,
        reload_failures: st.reload_failures,
        last_reload_error: st.last_reload_error.clone(),
        vrrp: st
            .vrrp
            .as_ref()
            .map(|v| vrrp_status(&v.lock().unwrap_or_else(|p| p.into_inner()))),
    }
}

/// The VRRP instance (and its EC2 side) as the protocol shows it.
fn vrrp_status(v: &vrrp::VrrpStatus) -> api::VrrpStatus {
    api::VrrpStatus {
        interface: v.interface.clone(),
        router_id: v.router_id,
        priority: v.priority,
        effective_priority: v.effective_priority,
        problems: v.problems.clone(),
        advert_interval_ms: v.advert_interval_ms,
        master_advert_interval_ms: v.master_advert_interval_ms,
        preempt: v.preempt,
        source: v.source,
        peers: v.peers.clone(),
        addresses: v.addresses.clone(),
        address_interfaces: v.address_interfaces.clone(),
        state: match v.role {
            Role::Backup => api::VrrpState::Backup,
            Role::Master => api::VrrpState::Master,
            Role::Stopped => api::VrrpState::Stopped,
        },
        master: v.master,
        since_unix: v.since_unix,
        transitions: v.transitions,
        holding: v.holding,
        adverts_sent: v.adverts_sent,
        adverts_received: v.adverts_received,
        adverts_invalid: v.adverts_invalid,
        refused: v.refused.clone(),
        last_problem: v.last_problem.clone(),
        ec2: v.ec2.as_ref().map(ec2_status),
    }
}

fn ec2_status(e: &vrrp::status::Ec2Status) -> api::Ec2Status {
    use vrrp::status::{Preflight, Reconcile, Takeover};
    api::Ec2Status {
        network_interface_id: e.network_interface_id.clone(),
        elastic_ip_allocation_id: e.elastic_ip_allocation_id.clone(),
        state: match e.state {
            Takeover::Idle => api::Ec2State::Idle,
            Takeover::Moving => api::Ec2State::Moving,
            Takeover::Retrying => api::Ec2State::Retrying,
            Takeover::Done => api::Ec2State::Done,
            Takeover::Stopped => api::Ec2State::Stopped,
            Takeover::Failed => api::Ec2State::Failed,
        },
        attempts: e.attempts,
        failures: e.failures,
        takeovers: e.takeovers,
        last_error: e.last_error.clone(),
        done_unix: e.done_unix,
        took_ms: e.took_ms,
        public_ip: e.public_ip.clone(),
        mode: match e.mode {
            config::Ec2Mode::SecondaryAddresses => api::Ec2Mode::SecondaryAddresses,
            config::Ec2Mode::RouteTable => api::Ec2Mode::RouteTable,
            config::Ec2Mode::ElasticIp => api::Ec2Mode::ElasticIp,
        },
        instance_id: e.instance_id.clone(),
        availability_zone: e.availability_zone.clone(),
        network_interfaces: e.network_interfaces.clone(),
        preflight: match e.preflight {
            Preflight::Pending => api::PreflightState::Pending,
            Preflight::Passed => api::PreflightState::Passed,
            Preflight::Failed => api::PreflightState::Failed,
        },
        preflight_checks: e
            .preflight_checks
            .iter()
            .map(|c| api::Ec2Check {
                name: c.name.clone(),
                ok: c.ok,
                detail: c.detail.clone(),
            })
            .collect(),
        reconcile: match e.reconcile {
            None => api::ReconcileState::None,
            Some(Reconcile::Held) => api::ReconcileState::Held,
            Some(Reconcile::Drifted) => api::ReconcileState::Drifted,
            Some(Reconcile::Repaired) => api::ReconcileState::Repaired,
            Some(Reconcile::Clear) => api::ReconcileState::Clear,
            Some(Reconcile::Stranded) => api::ReconcileState::Stranded,
        },
        drifts: e.drifts,
        repairs: e.repairs,
        last_drift: e.last_drift.clone(),
        last_reconcile_unix: e.last_reconcile_unix,
        stranded: e.stranded.clone(),
        warning: e.warning.clone(),
        last_error_class: e.last_error_class.map(|c| match c {
            vrrp::ec2::error::ErrorClass::Permanent => api::ErrorClass::Permanent,
            vrrp::ec2::error::ErrorClass::Throttled => api::ErrorClass::Throttled,
            vrrp::ec2::error::ErrorClass::Transient => api::ErrorClass::Transient,
            vrrp::ec2::error::ErrorClass::Timeout => api::ErrorClass::Timeout,
        }),
        last_error_code: e.last_error_code.clone(),
        last_request_id: e.last_request_id.clone(),
        imds_ms: e.imds_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    /// Feeds `input` to `serve_lines` with a handler that echoes each
    /// request back, in chunks of `chunk` bytes, and returns the answers.
    async fn converse(input: Vec<u8>, chunk: usize) -> Vec<ResponseEnvelopeText> {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (srd, swr) = tokio::io::split(server);
        let served = tokio::spawn(serve_lines(srd, swr, |line: String| async move {
            Ok(Response::Vips(vec![echo(line)]))
        }));
        let (mut crd, mut cwr) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            for part in input.chunks(chunk.max(1)) {
                if cwr.write_all(part).await.is_err() {
                    return;
                }
            }
            let _ = cwr.shutdown().await;
        });
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), crd.read_to_string(&mut out))
            .await
            .expect("answers within 10 s")
            .expect("read answers");
        let _ = writer.await;
        served.await.unwrap();
        out.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("answers are JSON");
                ResponseEnvelopeText(v)
            })
            .collect()
    }

    /// An answer carrying `line` back (as a VIP's name).
    fn echo(line: String) -> VipStatus {
        VipStatus {
            name: line,
            address: std::net::Ipv4Addr::UNSPECIFIED,
            port: 0,
            protocol: Protocol::Tcp,
            on_empty: OnEmpty::Reset,
            healthy_backends: 0,
            packets: 0,
            bytes: 0,
            flows: 0,
            ring_digest: String::new(),
            backends: Vec::new(),
        }
    }

    #[derive(Debug)]
    struct ResponseEnvelopeText(serde_json::Value);

    impl ResponseEnvelopeText {
        fn code(&self) -> Option<&str> {
            self.0["error"]["code"].as_str()
        }
        fn echoed(&self) -> Option<&str> {
            self.0["result"][0]["name"].as_str()
        }
    }

    #[tokio::test]
    async fn every_line_is_answered_and_bad_ones_with_errors() {
        let mut input = b"one\r\n\xff\xfe not utf-8\ntwo\n".to_vec();
        input.extend_from_slice(b"three");
        let answers = converse(input, 3).await;
        assert_eq!(answers.len(), 4, "{answers:?}");
        assert_eq!(answers[0].echoed(), Some("one"));
        assert_eq!(answers[1].code(), Some("bad_request"));
        assert!(answers[1].0["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UTF-8"));
        assert_eq!(answers[2].echoed(), Some("two"));
        assert_eq!(
            answers[3].echoed(),
            Some("three"),
            "a last line without newline"
        );
    }

    #[tokio::test]
    async fn an_oversized_line_is_refused_and_the_connection_closed() {
        let mut input = b"first\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', api::MAX_REQUEST_LINE + 1));
        input.extend_from_slice(b"\nnever\n");
        let answers = converse(input, 4096).await;
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert_eq!(answers[0].echoed(), Some("first"));
        assert_eq!(answers[1].code(), Some("bad_request"));
        assert!(answers[1].0["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 65536 bytes"));
        // Exactly the limit is still a request.
        let mut input = vec![b'y'; api::MAX_REQUEST_LINE];
        input.push(b'\n');
        let answers = converse(input, 65_536).await;
        assert_eq!(
            answers[0].echoed().map(str::len),
            Some(api::MAX_REQUEST_LINE)
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn fuzz_control_stream(
                lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
                chunk in 1usize..64,
            ) {
                let mut input = Vec::new();
                for l in &lines {
                    input.extend(l.iter().filter(|&&b| b != b'\n'));
                    input.push(b'\n');
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let answers = rt.block_on(converse(input, chunk));
                prop_assert_eq!(answers.len(), lines.len());
            }
        }
    }
}
