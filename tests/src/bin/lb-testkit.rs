//! `lb-testkit`: the traffic tools lb's tests run inside network namespaces
//! (via `ip netns exec`).
//!
//! * `serve`: a threaded TCP server. Per connection it reads one line: `ID`
//!   is answered with the server's name, `ECHO` switches to echoing every byte
//!   until the client shuts down its write side, anything else gets `ERR`.
//!   With `--http-listen` it also answers HTTP requests, with the status and
//!   body a `--status-file` says (so a test can make an HTTP health check fail).
//! * `client`: opens many short `ID` connections (bounded in count and time,
//!   optionally rate-paced) and prints a JSON [`ClientReport`]. With `--http`
//!   each connection carries one `GET / HTTP/1.0` instead (for real web
//!   servers such as nginx); the report then also has `request_ms` (time
//!   from connect to the end of the response) and `by_status`.
//! * `transfer`: one long `ECHO` connection streaming verified pseudo-random
//!   data; prints a JSON [`TransferReport`] and exits 0 only if it was intact.
//! * `fetch`: one HTTP `GET`, printing the body (e.g. a metrics scrape).
//! * `xdp-pass`: attaches lb's `lb_xdp_pass` XDP program to interfaces (veth
//!   peers need an XDP program for `XDP_TX`/`XDP_REDIRECT` frames to be
//!   delivered), prints `ready`, and holds it until `SIGTERM`/`SIGINT`.
//!
//! `serve` and `xdp-pass` print `ready` on stdout once set up, and exit 0 on
//! `SIGTERM` or `SIGINT`.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use lb_tests::{ClientReport, ConnectMs, TransferReport, SLOW_CONNECT_MS};

/// Longest request line the server accepts, newline included.
const MAX_LINE: usize = 256;
/// Listen backlog; large so bursts of connections are not dropped by the
/// server itself (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: libc::c_int = 4096;
/// How long the server waits for a request line.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `ECHO` connection may sit idle before the server drops it.
const ECHO_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server waits for a blocked write.
const SERVER_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(name = "lb-testkit", about = "Traffic tools for lb's namespace tests")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Threaded TCP server answering `ID` with its name and echoing after `ECHO`.
    Serve {
        /// Address to listen on; repeat for more.
        #[arg(long = "listen", required_unless_present = "http_listen")]
        listen: Vec<SocketAddr>,
        /// Address to answer HTTP requests on (see `--status-file`); repeat
        /// for more.
        #[arg(long = "http-listen")]
        http_listen: Vec<SocketAddr>,
        /// File read at every HTTP request: its first line is `STATUS [BODY]`,
        /// e.g. `500 broken`, and the response carries that status and body
        /// (plus a newline). Unreadable or malformed: `500 bad status file`.
        /// Without this option every request gets `200 ok NAME`.
        #[arg(long)]
        status_file: Option<PathBuf>,
        /// Name returned for `ID`.
        #[arg(long)]
        name: String,
    },
    /// Opens many short connections and prints a JSON report.
    Client {
        /// Address to connect to.
        #[arg(long)]
        target: SocketAddr,
        /// Number of connections to open (an upper bound).
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Worker threads, each running one connection at a time.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// New connections per second, overall (unpaced if omitted).
        #[arg(long)]
        rate: Option<f64>,
        /// Stop starting connections after this many seconds.
        #[arg(long)]
        duration_secs: Option<f64>,
        /// Connect and per-read timeout, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Hard cap on the run time, in seconds, whatever the other options.
        #[arg(long, default_value_t = 300.0)]
        max_secs: f64,
        /// Send `GET / HTTP/1.0` and read the response to EOF instead of the
        /// `ID` exchange. A connection counts as ok for a 2xx response; the
        /// first line of its body is counted as the backend name.
        #[arg(long)]
        http: bool,
    },
    /// Starts one `ID` exchange every `--interval-ms` for `--duration-secs`,
    /// each in its own thread with a short timeout, and prints when each
    /// began and who answered, as JSON: the raw data of a failover gap.
    Probe {
        /// Address to connect to.
        #[arg(long)]
        target: SocketAddr,
        /// Time between probe starts, in milliseconds.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// How long to probe, in seconds (at most 120).
        #[arg(long)]
        duration_secs: f64,
        /// A probe that has not finished by then counts as lost, in
        /// milliseconds. Keep it under TCP's 1 s SYN retransmission, so a
        /// probe that only succeeds by retransmitting counts as lost.
        #[arg(long, default_value_t = 200)]
        timeout_ms: u64,
    },
    /// Opens `--connections` `ECHO` connections, prints `ready` once each
    /// has echoed a first line, then has every one exchange a numbered line
    /// every `--interval-ms` for `--duration-secs`, and prints a JSON report:
    /// how many connections carried on to the end, and how the others broke.
    /// The raw data of connection survival across a failover.
    Hold {
        /// Address to connect to.
        #[arg(long)]
        target: SocketAddr,
        /// Connections to hold.
        #[arg(long, default_value_t = 20)]
        connections: usize,
        /// Time between exchanges on each connection, in milliseconds.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// How long to keep exchanging after `ready`, in seconds (at most 120).
        #[arg(long)]
        duration_secs: f64,
        /// Connect timeout, and how long one exchange may take (TCP
        /// retransmits meanwhile), in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Streams verified pseudo-random data through one `ECHO` connection.
    Transfer {
        /// Address to connect to.
        #[arg(long)]
        target: SocketAddr,
        /// Payload size in bytes.
        #[arg(long)]
        bytes: u64,
        /// Bytes per write.
        #[arg(long, default_value_t = 65536)]
        chunk: usize,
        /// Sleep between chunks, in milliseconds (stretches the transfer).
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
        /// PRNG seed for the payload.
        #[arg(long, default_value_t = 0x6c62_7465_7374)]
        seed: u64,
        /// Connect, per-read (on top of --pace-ms) and per-write timeout, in
        /// milliseconds.
        #[arg(long, default_value_t = 10000)]
        timeout_ms: u64,
    },
    /// One HTTP GET: prints the response body and exits 0 for a 2xx status,
    /// else prints the status line to stderr and exits 1.
    Fetch {
        /// `http://ADDRESS:PORT/PATH` (an IP address, no name lookup).
        #[arg(long)]
        url: String,
        /// Connect and per-read timeout, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Attaches lb's pass-everything XDP program and holds it until SIGTERM.
    XdpPass {
        /// The lb eBPF object.
        #[arg(long)]
        object: PathBuf,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = Mode::Driver)]
        mode: Mode,
        /// Interfaces to attach to.
        #[arg(required = true)]
        ifnames: Vec<String>,
    },
    /// Sends VRRP packets a load balancer must refuse, from many spoofed
    /// sources, as fast as it can (bounded by `--count` and `--max-secs`):
    /// every other one is a valid advertisement from a sender that is no
    /// peer, the rest arrive with TTL 64. Prints `{"sent": N}`.
    VrrpFlood {
        /// The load balancer's address.
        #[arg(long)]
        to: Ipv4Addr,
        /// First spoofed source address; the others follow it.
        #[arg(long)]
        from_base: Ipv4Addr,
        /// Distinct source addresses.
        #[arg(long, default_value_t = 2000)]
        sources: u32,
        /// Packets to send.
        #[arg(long, default_value_t = 20_000)]
        count: u64,
        /// Virtual router id to claim.
        #[arg(long, default_value_t = 51)]
        router_id: u8,
        /// Hard cap on the run time, in seconds.
        #[arg(long, default_value_t = 10)]
        max_secs: u64,
    },
}

/// XDP attach modes offered on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Native (driver) mode; veth supports it.
    Driver,
    /// Generic (skb) mode.
    Skb,
    /// Let the kernel choose.
    Default,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve {
            listen,
            http_listen,
            status_file,
            name,
        } => serve(&listen, &http_listen, status_file, &name),
        Cmd::Probe {
            target,
            interval_ms,
            duration_secs,
            timeout_ms,
        } => probe(
            target,
            Duration::from_millis(interval_ms.max(1)),
            Duration::from_secs_f64(duration_secs.clamp(0.0, 120.0)),
            Duration::from_millis(timeout_ms.max(1)),
        ),
        Cmd::Hold {
            target,
            connections,
            interval_ms,
            duration_secs,
            timeout_ms,
        } => hold(
            target,
            connections.clamp(1, 1000),
            Duration::from_millis(interval_ms.max(1)),
            Duration::from_secs_f64(duration_secs.clamp(0.0, 120.0)),
            Duration::from_millis(timeout_ms.max(1)),
        ),
        Cmd::Fetch { url, timeout_ms } => fetch(&url, Duration::from_millis(timeout_ms.max(1))),
        Cmd::Client {
            target,
            count,
            concurrency,
            rate,
            duration_secs,
            timeout_ms,
            max_secs,
            http,
        } => {
            let opts = ClientOpts {
                target,
                count,
                concurrency,
                rate,
                duration_secs,
                timeout: Duration::from_millis(timeout_ms.max(1)),
                max_secs,
                http,
            };
            let (report, http) = client(&opts)?;
            let mut json = serde_json::to_value(&report)?;
            if let (Some(http), Some(obj)) = (http, json.as_object_mut()) {
                obj.insert("request_ms".into(), serde_json::to_value(http.request_ms)?);
                obj.insert("by_status".into(), serde_json::to_value(http.by_status)?);
            }
            println!("{}", serde_json::to_string(&json)?);
            Ok(())
        }
        Cmd::Transfer {
            target,
            bytes,
            chunk,
            pace_ms,
            seed,
            timeout_ms,
        } => {
            let report = transfer(
                target,
                bytes,
                chunk.max(1),
                Duration::from_millis(pace_ms),
                seed,
                Duration::from_millis(timeout_ms.max(1)),
            );
            println!("{}", serde_json::to_string(&report)?);
            if !report.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::XdpPass {
            object,
            mode,
            ifnames,
        } => xdp_pass(&object, mode, &ifnames),
        Cmd::VrrpFlood {
            to,
            from_base,
            sources,
            count,
            router_id,
            max_secs,
        } => vrrp_flood(
            to,
            from_base,
            sources.max(1),
            count.min(1_000_000),
            router_id,
            Duration::from_secs(max_secs.clamp(1, 60)),
        ),
    }
}

// ---------------------------------------------------------------------------
// VRRP flood

/// See `Cmd::VrrpFlood`. A raw socket with IP_HDRINCL, so each packet
/// carries its own (spoofed) source address and TTL.
fn vrrp_flood(
    to: Ipv4Addr,
    from_base: Ipv4Addr,
    sources: u32,
    count: u64,
    router_id: u8,
    max: Duration,
) -> Result<()> {
    use lb_user::vrrp::packet::{Advert, IPPROTO_VRRP};
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("raw socket (root needed)");
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_addr.s_addr = u32::from(to).to_be();
    let started = Instant::now();
    let mut sent = 0u64;
    for i in 0..count {
        if started.elapsed() > max {
            break;
        }
        let from = Ipv4Addr::from(u32::from(from_base).wrapping_add(i as u32 % sources));
        let advert = Advert {
            vrid: router_id,
            priority: 200,
            interval_cs: 100,
            addresses: vec![to],
        };
        let m = advert.encode(from, to);
        let ttl: u8 = if i % 2 == 0 { 255 } else { 64 };
        let total = (20 + m.len()) as u16;
        let mut d = vec![0x45, 0];
        d.extend_from_slice(&total.to_be_bytes());
        d.extend_from_slice(&[0, 0, 0, 0, ttl, IPPROTO_VRRP, 0, 0]);
        d.extend_from_slice(&from.octets());
        d.extend_from_slice(&to.octets());
        d.extend_from_slice(&m);
        // SAFETY: a valid buffer and sockaddr_in with their sizes; the
        // kernel fills in the IP checksum and id.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                d.as_ptr().cast(),
                d.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
            {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            return Err(e).context("sendto");
        }
        sent += 1;
    }
    println!("{{\"sent\": {sent}}}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Signals

/// Blocks `SIGTERM` and `SIGINT` in the calling thread (and so in every thread
/// it spawns afterwards) and returns the set, for [`wait_for_signal`]. Call it
/// before spawning threads.
fn block_stop_signals() -> Result<libc::sigset_t> {
    // SAFETY: the set is initialised by sigemptyset before use; the calls only
    // touch the local set and this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("pthread_sigmask: {}", io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// Waits for one of the (blocked) signals in `set` and returns its number.
fn wait_for_signal(set: &libc::sigset_t) -> libc::c_int {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid, initialised signal set and `sig` a valid
        // out-pointer.
        let rc = unsafe { libc::sigwait(set, &mut sig) };
        if rc == 0 {
            return sig;
        }
    }
}

/// Prints `ready` on stdout and flushes it (tests wait for this line).
fn announce_ready() -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// serve

/// Runs the server on every address in `listen` (the `ID`/`ECHO` protocol)
/// and `http_listen` (HTTP, answered from `status_file`) until
/// `SIGTERM`/`SIGINT`.
fn serve(
    listen: &[SocketAddr],
    http_listen: &[SocketAddr],
    status_file: Option<PathBuf>,
    name: &str,
) -> Result<()> {
    if name.contains('\n') {
        bail!("--name must not contain a newline");
    }
    let signals = block_stop_signals()?;
    let reply: Arc<[u8]> = format!("{name}\n").into_bytes().into();
    let http = Arc::new(HttpServer {
        name: name.to_owned(),
        status_file,
    });
    let mut listeners = Vec::new();
    for (&addr, is_http) in listen
        .iter()
        .map(|a| (a, false))
        .chain(http_listen.iter().map(|a| (a, true)))
    {
        listeners.push((
            addr,
            is_http,
            listen_on(addr).with_context(|| format!("listening on {addr}"))?,
        ));
    }
    for (addr, is_http, listener) in listeners {
        let reply = Arc::clone(&reply);
        let http = Arc::clone(&http);
        thread::Builder::new()
            .name(format!("accept {addr}"))
            .spawn(move || {
                if is_http {
                    http_accept_loop(listener, http)
                } else {
                    accept_loop(listener, reply)
                }
            })?;
        let what = if is_http { " (HTTP)" } else { "" };
        eprintln!("lb-testkit serve: {name} listening on {addr}{what}");
    }
    announce_ready()?;
    let sig = wait_for_signal(&signals);
    eprintln!("lb-testkit serve: {name} stopping on signal {sig}");
    // Connection threads are detached; exiting the process closes them all.
    std::process::exit(0);
}

/// What `serve --http-listen` answers with.
struct HttpServer {
    name: String,
    status_file: Option<PathBuf>,
}

/// Longest HTTP request head `serve` reads.
const MAX_HTTP_HEAD: usize = 8 * 1024;

impl HttpServer {
    /// The status and body of the next response, from the status file.
    fn response(&self) -> (u16, String) {
        let Some(path) = &self.status_file else {
            return (200, format!("ok {}\n", self.name));
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let line = text.lines().next().unwrap_or("").trim();
        let (code, body) = line.split_once(' ').unwrap_or((line, ""));
        match code.parse::<u16>() {
            Ok(code) if (100..600).contains(&code) => (code, format!("{body}\n")),
            _ => (500, "bad status file\n".to_owned()),
        }
    }
}

/// Accepts HTTP connections forever, one handler thread each.
fn http_accept_loop(listener: TcpListener, server: Arc<HttpServer>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let server = Arc::clone(&server);
                let _ = thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || handle_http(stream, &server));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads one request head (any method and path) and answers it as the
/// status file says, then closes the connection.
fn handle_http(mut stream: TcpStream, server: &HttpServer) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(LINE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(SERVER_WRITE_TIMEOUT));
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > MAX_HTTP_HEAD {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let (status, body) = server.response();
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        reason_phrase(status),
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

/// A reason phrase for the status line (any text is valid HTTP).
fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Creates a listening TCP socket on `addr` with `SO_REUSEADDR` (and
/// `IPV6_V6ONLY` for IPv6, so `[::]:P` and `0.0.0.0:P` can coexist) and a
/// large backlog. (std's `TcpListener::bind` would set `SO_REUSEADDR` too,
/// but its backlog of 128 overflows under bursts of connections.)
fn listen_on(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let rc = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: `sa` is a valid sockaddr_in of the given length.
            unsafe {
                libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_flowinfo = a.flowinfo();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_scope_id = a.scope_id();
            // SAFETY: `sa` is a valid sockaddr_in6 of the given length.
            unsafe {
                libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a descriptor we own.
    if unsafe { libc::listen(fd, BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(sock))
}

/// `setsockopt(fd, level, name, &value)` for an `int` option.
fn set_int_opt(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid int whose size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts connections forever, one handler thread each.
fn accept_loop(listener: TcpListener, reply: Arc<[u8]>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let reply = Arc::clone(&reply);
                // If no thread can be made the connection is simply closed.
                let _ = thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || handle_connection(stream, &reply));
            }
            // Out of descriptors or similar: back off briefly.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Serves one connection: reads the request line and acts on it. I/O errors
/// just end the connection.
fn handle_connection(mut stream: TcpStream, reply: &[u8]) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(LINE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(SERVER_WRITE_TIMEOUT));
    let mut buf = [0u8; MAX_LINE];
    let mut len = 0;
    let newline = loop {
        if let Some(pos) = buf[..len].iter().position(|&b| b == b'\n') {
            break Some(pos);
        }
        if len == buf.len() {
            break None;
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => break None,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    };
    let Some(pos) = newline else {
        // Over-long line, or EOF before a newline.
        if len > 0 {
            let _ = stream.write_all(b"ERR\n");
        }
        return;
    };
    let line = buf[..pos].strip_suffix(b"\r").unwrap_or(&buf[..pos]);
    match line {
        b"ID" => {
            // We close first, so TIME_WAIT lands on the server side.
            let _ = stream.write_all(reply);
        }
        b"ECHO" => {
            let _ = echo(&mut stream, &buf[pos + 1..len]);
        }
        _ => {
            let _ = stream.write_all(b"ERR\n");
        }
    }
}

/// Echoes `pending` (bytes that arrived with the request line) and then
/// everything else until the client shuts down its write side.
fn echo(stream: &mut TcpStream, pending: &[u8]) -> io::Result<()> {
    stream.set_read_timeout(Some(ECHO_IDLE_TIMEOUT))?;
    stream.write_all(pending)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => stream.write_all(&buf[..n])?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.shutdown(Shutdown::Write)
}

// ---------------------------------------------------------------------------
// client

/// Options of the `client` subcommand.
struct ClientOpts {
    target: SocketAddr,
    count: u64,
    concurrency: usize,
    rate: Option<f64>,
    duration_secs: Option<f64>,
    timeout: Duration,
    max_secs: f64,
    http: bool,
}

/// The additions to the report in `--http` mode.
struct HttpExtras {
    /// Time from the start of the connect to the end of the response, of the
    /// requests that got a 2xx response.
    request_ms: ConnectMs,
    /// Responses by HTTP status code.
    by_status: BTreeMap<String, u64>,
}

/// What one worker observed.
#[derive(Default)]
struct Tally {
    attempted: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    by_backend: BTreeMap<String, u64>,
    connect_ms: Vec<f64>,
    request_ms: Vec<f64>,
    by_status: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.attempted += other.attempted;
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.by_backend {
            *self.by_backend.entry(k).or_default() += v;
        }
        self.connect_ms.extend(other.connect_ms);
        self.request_ms.extend(other.request_ms);
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
    }
}

/// Percentiles of `ms` (sorted here).
fn distribution(ms: &mut [f64]) -> ConnectMs {
    ms.sort_by(f64::total_cmp);
    ConnectMs {
        p50: round3(percentile(ms, 50.0)),
        p99: round3(percentile(ms, 99.0)),
        max: round3(ms.last().copied().unwrap_or(0.0)),
    }
}

/// Runs the client: `concurrency` workers take connection numbers from a
/// shared counter. With a rate, connection `i` starts no earlier than
/// `start + i / rate`, so the overall rate is right however the workers
/// interleave. No connection starts after the deadline (`--duration-secs`,
/// capped by `--max-secs`); those in flight are bounded by the timeouts.
/// In `--http` mode the HTTP additions to the report come along.
fn client(opts: &ClientOpts) -> Result<(ClientReport, Option<HttpExtras>)> {
    if opts.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if let Some(rate) = opts.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be positive");
        }
    }
    let mut limit = opts.max_secs;
    if let Some(d) = opts.duration_secs {
        limit = limit.min(d);
    }
    if !(limit.is_finite() && limit >= 0.0) {
        bail!("--duration-secs and --max-secs must be non-negative");
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(limit);
    let next = Arc::new(AtomicU64::new(0));
    let workers = opts
        .concurrency
        .min(opts.count.try_into().unwrap_or(usize::MAX));

    let mut total = Tally::default();
    thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..workers {
            let next = Arc::clone(&next);
            handles.push(thread::Builder::new().spawn_scoped(scope, move || {
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= opts.count {
                        break;
                    }
                    if let Some(rate) = opts.rate {
                        let at = start + Duration::from_secs_f64(i as f64 / rate);
                        if at >= deadline {
                            break;
                        }
                        let now = Instant::now();
                        if at > now {
                            thread::sleep(at - now);
                        }
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    tally.attempted += 1;
                    let t0 = Instant::now();
                    let (connect_ms, result) = if opts.http {
                        one_http_request(opts.target, opts.timeout, &mut tally.by_status)
                    } else {
                        one_connection(opts.target, opts.timeout)
                    };
                    if let Some(ms) = connect_ms {
                        tally.connect_ms.push(ms);
                    }
                    match result {
                        Ok(name) => {
                            tally.ok += 1;
                            *tally.by_backend.entry(name).or_default() += 1;
                            if opts.http {
                                tally.request_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                            }
                        }
                        Err(kind) => *tally.errors.entry(kind).or_default() += 1,
                    }
                }
                tally
            })?);
        }
        for h in handles {
            match h.join() {
                Ok(t) => total.merge(t),
                Err(_) => bail!("client worker panicked"),
            }
        }
        Ok(())
    })?;

    let mut ms = total.connect_ms;
    let connect_ms = distribution(&mut ms);
    let slow = ms.iter().filter(|&&m| m >= SLOW_CONNECT_MS).count() as u64;
    let http = opts.http.then(|| HttpExtras {
        request_ms: distribution(&mut total.request_ms),
        by_status: total.by_status,
    });
    let report = ClientReport {
        attempted: total.attempted,
        ok: total.ok,
        failed: total.attempted - total.ok,
        errors: total.errors,
        by_backend: total.by_backend,
        connect_ms,
        slow_connects: slow,
        elapsed_ms: start.elapsed().as_millis() as u64,
    };
    Ok((report, http))
}

/// Nearest-rank percentile of sorted `v` (0 if empty).
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Rounds to three decimals (microseconds, for milliseconds).
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Names an I/O error for the report, e.g. `connect_refused`.
fn error_kind(phase: &str, e: &io::Error) -> String {
    let kind = match e.kind() {
        // Socket read/write timeouts surface as EAGAIN (WouldBlock).
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".to_owned(),
        ErrorKind::ConnectionRefused => "refused".to_owned(),
        ErrorKind::ConnectionReset => "reset".to_owned(),
        ErrorKind::ConnectionAborted => "aborted".to_owned(),
        ErrorKind::BrokenPipe => "broken_pipe".to_owned(),
        ErrorKind::HostUnreachable => "host_unreachable".to_owned(),
        ErrorKind::NetworkUnreachable => "net_unreachable".to_owned(),
        ErrorKind::AddrNotAvailable => "addr_not_available".to_owned(),
        ErrorKind::AddrInUse => "addr_in_use".to_owned(),
        other => match e.raw_os_error() {
            Some(code) => format!("errno_{code}"),
            None => format!("{other:?}").to_lowercase(),
        },
    };
    format!("{phase}_{kind}")
}

/// `probe`: one `ID` exchange started every `interval` for `duration`. Prints
/// `{"interval_ms": .., "probes": [[start_ms, "name" or null], ..]}`, start
/// times relative to the first probe, in start order.
fn probe(
    target: SocketAddr,
    interval: Duration,
    duration: Duration,
    timeout: Duration,
) -> Result<()> {
    let t0 = Instant::now();
    let mut workers = Vec::new();
    let mut k: u32 = 0;
    loop {
        let due = interval * k;
        if due > duration {
            break;
        }
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            thread::sleep(wait);
        }
        let start_ms = t0.elapsed().as_secs_f64() * 1000.0;
        workers.push(thread::spawn(move || {
            let begun = Instant::now();
            let (_, answer) = one_connection(target, timeout);
            // Late answers (a retransmitted SYN, say) count as lost.
            let name = answer.ok().filter(|_| begun.elapsed() <= timeout);
            (start_ms, name)
        }));
        k += 1;
    }
    let mut probes = Vec::with_capacity(workers.len());
    for w in workers {
        probes.push(
            w.join()
                .map_err(|_| anyhow::anyhow!("probe thread panicked"))?,
        );
    }
    let json = serde_json::json!({
        "interval_ms": interval.as_secs_f64() * 1000.0,
        "probes": probes,
    });
    println!("{json}");
    Ok(())
}

/// Sends `line` on an `ECHO` connection and reads it back.
fn echo_line(stream: &mut TcpStream, line: &[u8]) -> Result<(), String> {
    stream
        .write_all(line)
        .map_err(|e| error_kind("write", &e))?;
    let mut back = vec![0u8; line.len()];
    stream.read_exact(&mut back).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => "eof".to_owned(),
        _ => error_kind("read", &e),
    })?;
    if back != line {
        return Err("bad_echo".into());
    }
    Ok(())
}

/// See `Cmd::Hold`.
fn hold(
    target: SocketAddr,
    connections: usize,
    interval: Duration,
    duration: Duration,
    timeout: Duration,
) -> Result<()> {
    let established = Arc::new(std::sync::Barrier::new(connections + 1));
    let start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let established = established.clone();
        let start = start.clone();
        workers.push(thread::spawn(move || -> Result<u64, (u64, String)> {
            let opened = TcpStream::connect_timeout(&target, timeout)
                .map_err(|e| error_kind("connect", &e))
                .and_then(|mut s| {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(timeout));
                    let _ = s.set_write_timeout(Some(timeout));
                    s.write_all(b"ECHO\n")
                        .map_err(|e| error_kind("write", &e))?;
                    echo_line(&mut s, b"0\n")?;
                    Ok(s)
                });
            established.wait();
            let mut stream = opened.map_err(|e| (0, e))?;
            let t0 = *start.wait();
            let mut seq = 1u64;
            while t0.elapsed() < duration {
                echo_line(&mut stream, format!("{seq}\n").as_bytes()).map_err(|e| (seq, e))?;
                seq += 1;
                thread::sleep(interval);
            }
            Ok(seq)
        }));
    }
    established.wait();
    let _ = start.set(Instant::now());
    println!("ready");
    io::stdout().flush()?;
    let mut survived = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        match w
            .join()
            .map_err(|_| anyhow::anyhow!("hold thread panicked"))?
        {
            Ok(_) => survived += 1,
            Err((seq, kind)) => {
                let phase = if seq == 0 { "opening" } else { "holding" };
                *errors.entry(format!("{phase}: {kind}")).or_default() += 1;
            }
        }
    }
    let json = serde_json::json!({
        "connections": connections,
        "survived": survived,
        "errors": errors,
    });
    println!("{json}");
    Ok(())
}

/// One `ID` exchange. Returns the connect time (if the connection was
/// established) and the backend's name or an error kind.
fn one_connection(target: SocketAddr, timeout: Duration) -> (Option<f64>, Result<String, String>) {
    let t0 = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&target, timeout) {
        Ok(s) => s,
        Err(e) => return (None, Err(error_kind("connect", &e))),
    };
    let connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let result = id_exchange(&mut stream, timeout);
    (Some(connect_ms), result)
}

/// The request `--http` sends: HTTP/1.0, so the server closes after answering.
const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
/// Longest HTTP response `--http` reads; more is a `bad_reply`.
const MAX_HTTP_RESPONSE: usize = 64 * 1024;

/// One HTTP request on a new connection. Returns the connect time (if the
/// connection was established) and the first line of a 2xx response's body
/// (the backend's name, if it says it) or an error kind; counts the status.
fn one_http_request(
    target: SocketAddr,
    timeout: Duration,
    by_status: &mut BTreeMap<String, u64>,
) -> (Option<f64>, Result<String, String>) {
    let t0 = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&target, timeout) {
        Ok(s) => s,
        Err(e) => return (None, Err(error_kind("connect", &e))),
    };
    let connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let result = http_exchange(&mut stream, timeout).and_then(|response| {
        let (status, body) = parse_http_response(&response)?;
        *by_status.entry(status.to_string()).or_default() += 1;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(format!("http_{status}"))
        }
    });
    (Some(connect_ms), result)
}

/// Sends [`HTTP_REQUEST`] and reads the response until the server closes.
fn http_exchange(stream: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, String> {
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| error_kind("setup", &e))?;
    stream
        .write_all(HTTP_REQUEST)
        .map_err(|e| error_kind("write", &e))?;
    let mut response = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if response.len() + n > MAX_HTTP_RESPONSE {
                    return Err("bad_reply".to_owned());
                }
                response.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(error_kind("read", &e)),
        }
    }
    if response.is_empty() {
        return Err("read_eof".to_owned());
    }
    Ok(response)
}

/// Splits an HTTP/1.x response into its status code and the first line of
/// its body (empty if none); `bad_reply` if it is not one.
fn parse_http_response(response: &[u8]) -> Result<(u16, String), String> {
    let bad = || "bad_reply".to_owned();
    if !response.starts_with(b"HTTP/1.") {
        return Err(bad());
    }
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&response[..head_end]).map_err(|_| bad())?;
    let status_line = head.lines().next().ok_or_else(bad)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(bad)?;
    let body = &response[head_end + 4..];
    let first = body.split(|&b| b == b'\n').next().unwrap_or_default();
    let name = String::from_utf8_lossy(first).trim().to_owned();
    Ok((status, name))
}

/// Sends `ID`, reads the reply line, then waits for the server's FIN.
fn id_exchange(stream: &mut TcpStream, timeout: Duration) -> Result<String, String> {
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| error_kind("setup", &e))?;
    stream
        .write_all(b"ID\n")
        .map_err(|e| error_kind("write", &e))?;
    let mut buf = [0u8; MAX_LINE];
    let mut len = 0;
    let pos = loop {
        if let Some(pos) = buf[..len].iter().position(|&b| b == b'\n') {
            break pos;
        }
        if len == buf.len() {
            return Err("bad_reply".to_owned());
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Err("read_eof".to_owned()),
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(error_kind("read", &e)),
        }
    };
    let name = match std::str::from_utf8(&buf[..pos]) {
        Ok(s) if !s.is_empty() && s != "ERR" => s.to_owned(),
        _ => return Err("bad_reply".to_owned()),
    };
    // Read to EOF so the server closes first: TIME_WAIT then stays on the
    // server, and the client does not run out of ephemeral ports at high
    // connection rates. This is best effort; the answer already counts.
    let mut sink = [0u8; 64];
    for _ in 0..64 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(name)
}

// ---------------------------------------------------------------------------
// transfer

/// A deterministic byte stream from xorshift64*, seeded; the sender and the
/// verifier each run one with the same seed.
struct ByteStream {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl ByteStream {
    fn new(seed: u64) -> Self {
        // Mix the seed so small seeds differ a lot; xorshift needs non-zero.
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
        if state == 0 {
            state = 1;
        }
        ByteStream {
            state,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `out` with the next `out.len()` bytes of the stream.
    fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        // Drain the partial word, then whole words, then a partial one.
        while i < out.len() && self.used < 8 {
            out[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
        let mut chunks = out[i..].chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.word = self.next_word().to_le_bytes();
            rest.copy_from_slice(&self.word[..rest.len()]);
            self.used = rest.len();
        }
    }
}

/// Runs one verified `ECHO` transfer; never fails, the report says what
/// happened.
fn transfer(
    target: SocketAddr,
    bytes: u64,
    chunk: usize,
    pace: Duration,
    seed: u64,
    timeout: Duration,
) -> TransferReport {
    let start = Instant::now();
    let mut report = TransferReport::default();
    let result = run_transfer(target, bytes, chunk, pace, seed, timeout, &mut report);
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    match result {
        Ok(()) => report.ok = true,
        Err(e) => report.error = Some(format!("{e:#}")),
    }
    report
}

/// The body of [`transfer`]: fills in `sent`/`received` and fails on any
/// error or mismatch.
fn run_transfer(
    target: SocketAddr,
    bytes: u64,
    chunk: usize,
    pace: Duration,
    seed: u64,
    timeout: Duration,
    report: &mut TransferReport,
) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("connect {target}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout + pace))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer_stream = stream.try_clone()?;

    let writer = thread::spawn(move || -> (u64, Option<String>) {
        if let Err(e) = writer_stream.write_all(b"ECHO\n") {
            return (0, Some(format!("write ECHO line: {e}")));
        }
        let mut gen = ByteStream::new(seed);
        let mut buf = vec![0u8; chunk];
        let mut sent = 0u64;
        while sent < bytes {
            let n = chunk.min((bytes - sent).try_into().unwrap_or(usize::MAX));
            gen.fill(&mut buf[..n]);
            if let Err(e) = writer_stream.write_all(&buf[..n]) {
                return (sent, Some(format!("write after {sent} bytes: {e}")));
            }
            sent += n as u64;
            if !pace.is_zero() && sent < bytes {
                thread::sleep(pace);
            }
        }
        if let Err(e) = writer_stream.shutdown(Shutdown::Write) {
            return (sent, Some(format!("shutdown(write): {e}")));
        }
        (sent, None)
    });

    let mut gen = ByteStream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut expect = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    let read_error = loop {
        match stream.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                if received + n as u64 > bytes {
                    break Some(format!(
                        "received more than the {bytes} bytes sent (at least {})",
                        received + n as u64
                    ));
                }
                gen.fill(&mut expect[..n]);
                if let Some(i) = buf[..n].iter().zip(&expect[..n]).position(|(a, b)| a != b) {
                    received += i as u64;
                    break Some(format!("echoed data differs at byte {received}"));
                }
                received += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break Some(format!("read after {received} bytes: {e}")),
        }
    };
    if read_error.is_some() {
        // Unblock the writer.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let (sent, write_error) = writer
        .join()
        .unwrap_or((0, Some("writer thread panicked".to_owned())));
    report.sent = sent;
    report.received = received;
    if let Some(e) = write_error.or(read_error) {
        bail!(e);
    }
    if received != sent || sent != bytes {
        bail!("connection closed after {received} of {sent} bytes came back");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// fetch

/// `fetch`: one `GET`, body to stdout; exits 1 unless the status is 2xx.
fn fetch(url: &str, timeout: Duration) -> Result<()> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?} does not start with http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("{authority:?} is not ADDRESS:PORT"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         User-Agent: lb-testkit\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the response of {url}"))?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no complete response head from {url}"))?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut body = &response[head_end + 4..];
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    if let Some(n) = length {
        body = &body[..n.min(body.len())];
    }
    io::stdout().write_all(body)?;
    io::stdout().flush()?;
    if !(200..300).contains(&status) {
        eprintln!("lb-testkit fetch: {url}: {status_line}");
        std::process::exit(1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// xdp-pass

/// Loads `object`, attaches its `lb_xdp_pass` program to every interface in
/// `ifnames`, prints `ready` and holds the attachments until `SIGTERM` or
/// `SIGINT` (the links are released when the loader is dropped, or at the
/// latest when the process exits).
fn xdp_pass(object: &std::path::Path, mode: Mode, ifnames: &[String]) -> Result<()> {
    use aya::programs::{Xdp, XdpMode};

    let signals = block_stop_signals()?;
    let data = std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    // Only the pass program is loaded, but every map in the object is
    // created: shrink the big ones, which it does not use.
    let mut ebpf = aya::EbpfLoader::new()
        .map_max_entries(lb_ebpf::map::RINGS, 2)
        .map_max_entries(lb_ebpf::map::FLOWS, 1024)
        .map_max_entries(lb_ebpf::map::NAT, 1024)
        .load(&data)
        .with_context(|| format!("loading {}", object.display()))?;
    let name = lb_ebpf::prog::PASS;
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in {}", object.display()))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))?;
    lb_user::dataplane::load_retrying(prog).with_context(|| format!("loading {name}"))?;
    let mode = match mode {
        Mode::Driver => XdpMode::Driver,
        Mode::Skb => XdpMode::Skb,
        Mode::Default => XdpMode::Default,
    };
    for ifname in ifnames {
        prog.attach(ifname, mode)
            .with_context(|| format!("attaching {name} to {ifname} ({mode:?} mode)"))?;
    }
    eprintln!(
        "lb-testkit xdp-pass: {name} attached to {}",
        ifnames.join(", ")
    );
    announce_ready()?;
    let sig = wait_for_signal(&signals);
    eprintln!("lb-testkit xdp-pass: detaching on signal {sig}");
    drop(ebpf);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_stream_is_split_invariant() {
        let mut whole = vec![0u8; 1000];
        ByteStream::new(7).fill(&mut whole);
        let mut pieces = vec![0u8; 1000];
        let mut g = ByteStream::new(7);
        let mut at = 0;
        for n in [1, 3, 8, 13, 0, 64, 5, 906] {
            g.fill(&mut pieces[at..at + n]);
            at += n;
        }
        assert_eq!(at, 1000);
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        ByteStream::new(8).fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn http_responses_parse() {
        let ok = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\n\r\nb2\n";
        assert_eq!(parse_http_response(ok), Ok((200, "b2".to_owned())));
        let empty = b"HTTP/1.0 503 Service Unavailable\r\n\r\n";
        assert_eq!(parse_http_response(empty), Ok((503, String::new())));
        for bad in [
            &b"b1\n"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"",
        ] {
            assert_eq!(parse_http_response(bad), Err("bad_reply".to_owned()));
        }
    }

    #[test]
    fn http_status_comes_from_the_status_file() {
        let path = std::env::temp_dir().join(format!("lb-testkit-status-{}", std::process::id()));
        let server = HttpServer {
            name: "b1".into(),
            status_file: Some(path.clone()),
        };
        let plain = HttpServer {
            name: "b1".into(),
            status_file: None,
        };
        assert_eq!(plain.response(), (200, "ok b1\n".to_owned()));
        for (text, want) in [
            ("500 broken\n", (500, "broken\n")),
            ("200\n", (200, "\n")),
            ("204 no body here\nignored\n", (204, "no body here\n")),
            ("abc\n", (500, "bad status file\n")),
            ("99 x\n", (500, "bad status file\n")),
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(server.response(), (want.0, want.1.to_owned()), "{text:?}");
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(server.response(), (500, "bad status file\n".to_owned()));
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
