//! `kind = "tcp"`: the backend must accept a TCP connection.

use std::{io, net::SocketAddrV4, time::Duration};

use tokio::{net::TcpStream, time::Instant};

use super::CheckOutcome;

/// Connects to `addr`; success once the handshake completes within `timeout`.
/// The connection is closed right away.
pub async fn check(addr: SocketAddrV4, timeout: Duration) -> CheckOutcome {
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => CheckOutcome::new(true, start, "connected".into()),
        Ok(Err(e)) => CheckOutcome::new(false, start, connect_error(&e)),
        Err(_) => CheckOutcome::new(false, start, timeout_detail(timeout)),
    }
}

/// How a failed connect is reported.
pub(crate) fn connect_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused".into(),
        _ => format!("connect: {e}"),
    }
}

/// How a check that ran out of time is reported.
pub(crate) fn timeout_detail(timeout: Duration) -> String {
    format!("timeout after {} ms", timeout.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn listening_port_is_ok() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let out = check(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            Duration::from_secs(1),
        )
        .await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.detail, "connected");
        assert!(out.latency < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        // Bind to learn a free port, then close it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let out = check(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            Duration::from_secs(1),
        )
        .await;
        assert!(!out.ok);
        assert_eq!(out.detail, "connect refused");
    }

    #[test]
    fn timeout_is_reported_in_milliseconds() {
        assert_eq!(
            timeout_detail(Duration::from_millis(1000)),
            "timeout after 1000 ms"
        );
    }
}
