//! `kind = "http"`: an HTTP/1.1 `GET` must be answered with an expected
//! status, and optionally a body containing an expected string.
//!
//! hyper's HTTP/1 client, one request per connection (`Connection: close`),
//! at most [`RESPONSE_CAP`] bytes of body read. The response ends at its
//! `Content-Length`, at the last chunk of a chunked body, or when the server
//! closes the connection.

use std::{
    io,
    net::SocketAddrV4,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use hyper::{
    body::{Bytes, Incoming},
    client::conn::http1,
    header::{self, HeaderValue},
    Request,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Instant,
};

use super::{
    tcp::{connect_error, timeout_detail},
    CheckOutcome,
};

/// Bytes of response body read at most (and of response head accepted);
/// the rest is ignored.
pub const RESPONSE_CAP: usize = 64 * 1024;

/// What to send and what to expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub expect_status: &'a [u16],
    pub expect_body: Option<&'a str>,
}

impl HttpCheck<'_> {
    /// The request: `GET {path}` with `Host`, `Connection: close` and
    /// `User-Agent: lbd-health`, in that order.
    fn request(&self) -> Result<Request<Empty<Bytes>>, String> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self
            .path
            .parse()
            .map_err(|e| format!("invalid path {:?}: {e}", self.path))?;
        let host = HeaderValue::from_str(self.host)
            .map_err(|e| format!("invalid host {:?}: {e}", self.host))?;
        let headers = req.headers_mut();
        headers.insert(header::HOST, host);
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static("lbd-health"));
        Ok(req)
    }
}

/// Sends the request to `addr` and judges the response; everything
/// (connecting included) must be done within `timeout`.
pub async fn check(addr: SocketAddrV4, req: &HttpCheck<'_>, timeout: Duration) -> CheckOutcome {
    let start = Instant::now();
    let result = match tokio::time::timeout(timeout, exchange(addr, req)).await {
        Ok(result) => result,
        Err(_) => Err(timeout_detail(timeout)),
    };
    match result {
        Ok(detail) => CheckOutcome::new(true, start, detail),
        Err(detail) => CheckOutcome::new(false, start, detail),
    }
}

/// Connects, sends, judges: `Ok(detail)` if the response passes,
/// `Err(detail)` if not.
async fn exchange(addr: SocketAddrV4, check: &HttpCheck<'_>) -> Result<String, String> {
    let request = check.request()?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| connect_error(&e))?;
    let start = Arc::new(Mutex::new(Vec::new()));
    let io = TokioIo::new(Recorded {
        stream,
        start: start.clone(),
    });
    let (mut sender, conn) = http1::Builder::new()
        // The request on the wire as docs/health-checks.md shows it.
        .title_case_headers(true)
        // As lenient as a health check needs to be: a malformed header line
        // is skipped, not a failure.
        .ignore_invalid_headers_in_responses(true)
        .max_header_size(RESPONSE_CAP)
        .handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| receive_error(&e, &start))?;
    let judged = async {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| receive_error(&e, &start))?;
        let status = resp.status().as_u16();
        if !check.expect_status.contains(&status) {
            let expected: Vec<String> = check.expect_status.iter().map(u16::to_string).collect();
            return Err(format!(
                "status {status} (expected {})",
                expected.join(", ")
            ));
        }
        if let Some(expected) = check.expect_body {
            let body = read_body(resp.into_body()).await;
            if !contains(&body, expected.as_bytes()) {
                return Err(format!(
                    "status {status}, body does not contain {expected:?}"
                ));
            }
        }
        Ok(format!("status {status}"))
    };
    // The connection does the reading and writing; `judged` gets the
    // response (or hyper's error) from it.
    tokio::pin!(judged, conn);
    tokio::select! {
        result = &mut judged => result,
        _ = &mut conn => judged.await,
    }
}

/// The body, up to [`RESPONSE_CAP`] bytes. A body cut short (the
/// connection reset or closed early) is judged by what arrived.
async fn read_body(mut body: Incoming) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < RESPONSE_CAP {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = RESPONSE_CAP - out.len();
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// How a response hyper could not read is reported; `start` holds the
/// first bytes the server sent.
fn receive_error(e: &hyper::Error, start: &Mutex<Vec<u8>>) -> String {
    let start = start.lock().unwrap_or_else(PoisonError::into_inner);
    if start.is_empty() && (e.is_incomplete_message() || e.is_canceled() || e.is_closed()) {
        return "connection closed without a response".into();
    }
    if e.is_parse_too_large() {
        return format!("response head over {} KiB", RESPONSE_CAP / 1024);
    }
    if e.is_parse() && (e.is_parse_status() || !start.starts_with(b"HTTP/")) {
        let line = start.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let shown: String = line.trim_end_matches('\r').chars().take(60).collect();
        return format!("invalid status line {shown:?}");
    }
    if e.is_parse() {
        return format!("invalid response: {e}");
    }
    if e.is_incomplete_message() {
        return "connection closed in the middle of the response head".into();
    }
    // hyper's error with its cause: `connection error: Connection reset by
    // peer (os error 104)`.
    let mut detail = format!("receive: {e}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        detail.push_str(&format!(": {c}"));
        cause = c.source();
    }
    detail
}

/// Bytes of the response start kept for [`receive_error`].
const START: usize = 128;

/// The connection, keeping the first bytes the server sends: hyper's parse
/// errors do not show them, and `invalid status line "SSH-2.0-OpenSSH_9.2"`
/// tells an operator which port is wrong.
struct Recorded {
    stream: TcpStream,
    start: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recorded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            let mut start = self.start.lock().unwrap_or_else(PoisonError::into_inner);
            let room = START.saturating_sub(start.len());
            start.extend_from_slice(&new[..new.len().min(room)]);
        }
        polled
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    // --- against a local server ---

    #[tokio::test]
    async fn the_request_on_the_wire() {
        let (port, mut requests) = server(b"HTTP/1.1 200 OK\r\n\r\n", true).await;
        let req = HttpCheck {
            host: "10.0.2.11:8080",
            path: "/healthz?full=1",
            expect_status: &[200],
            expect_body: None,
        };
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let out = check(addr, &req, Duration::from_secs(5)).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(
            requests.recv().await.unwrap(),
            "GET /healthz?full=1 HTTP/1.1\r\nHost: 10.0.2.11:8080\r\nConnection: close\r\n\
             User-Agent: lbd-health\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn responses_are_judged() {
        let big: &'static [u8] = {
            let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 70004\r\n\r\n".to_vec();
            r.extend([b'a'; 70_000]);
            r.extend(b"tail");
            r.leak()
        };
        let big_head: &'static [u8] = {
            let mut r = b"HTTP/1.1 200 OK\r\nX-Padding: ".to_vec();
            r.extend([b'a'; 70_000]);
            r.extend(b"\r\n\r\n");
            r.leak()
        };
        /// (response, close after it, expect_status, expect_body, detail)
        type Case = (
            &'static [u8],
            bool,
            &'static [u16],
            Option<&'static str>,
            Result<&'static str, &'static str>,
        );
        #[rustfmt::skip]
        let cases: [Case; 23] = [
            // The status is matched against the list.
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, &[200, 204], None, Ok("status 204")),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, &[200], None, Err("status 204 (expected 200)")),
            (b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", false, &[200, 201], None,
             Err("status 503 (expected 200, 201)")),
            // The body is searched after the head: a header is not the body.
            (b"HTTP/1.1 200 OK\r\nX-Status: ok\r\nContent-Length: 4\r\n\r\nfine", false, &[200], Some("fine"),
             Ok("status 200")),
            (b"HTTP/1.1 200 OK\r\nX-Status: ok\r\nContent-Length: 4\r\n\r\nfine", false, &[200], Some("ok"),
             Err("status 200, body does not contain \"ok\"")),
            // Content-Length bounds the body.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokextra", false, &[200], Some("ok"), Ok("status 200")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokextra", false, &[200], Some("extra"),
             Err("status 200, body does not contain \"extra\"")),
            // Without Content-Length, the body runs to the close.
            (b"HTTP/1.1 200 OK\r\n\r\nall is well", true, &[200], Some("is well"), Ok("status 200")),
            // Bare LF line ends are tolerated, and so is a malformed header.
            (b"HTTP/1.1 200 OK\nServer: x\n\nstatus: ok\n", true, &[200], Some("status: ok"), Ok("status 200")),
            (b"HTTP/1.1 200 OK\r\nnot a header\r\nContent-Length: 2\r\n\r\nok", false, &[200], Some("ok"),
             Ok("status 200")),
            // Chunked bodies are decoded, and end at their last chunk.
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nall \r\n2;ext=1\r\nok\r\n0\r\n\r\n",
             false, &[200], Some("all ok"), Ok("status 200")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nall \r\n", false, &[200], Some("all ok"),
             Err("timeout after 300 ms")),
            // Complete without a body.
            (b"HTTP/1.1 304 Not Modified\r\n\r\n", false, &[304], Some(""), Ok("status 304")),
            // A body shorter than its Content-Length is waited for...
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", false, &[200], Some("abc"),
             Err("timeout after 300 ms")),
            // ... and judged by what arrived if the server closes.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", true, &[200], Some("abc"), Ok("status 200")),
            // At most RESPONSE_CAP bytes of body are read.
            (big, false, &[200], Some("aaaa"), Ok("status 200")),
            (big, false, &[200], Some("tail"), Err("status 200, body does not contain \"tail\"")),
            (big_head, false, &[200], None, Err("response head over 64 KiB")),
            // Not HTTP, or no response.
            (b"", true, &[200], None, Err("connection closed without a response")),
            (b"SSH-2.0-OpenSSH_9.2\r\n", false, &[200], None, Err("invalid status line \"SSH-2.0-OpenSSH_9.2\"")),
            (b"HTTP/1.1 2000 OK\r\n\r\n", false, &[200], None, Err("invalid status line \"HTTP/1.1 2000 OK\"")),
            // Closed in the middle of the head (lbd before hyper judged the
            // status line alone, and passed these).
            (b"HTTP/1.1 200 OK\r\nServ", true, &[200], None,
             Err("connection closed in the middle of the response head")),
            (b"HTTP/1.1 200", true, &[200], None, Err("connection closed in the middle of the response head")),
        ];
        for (response, close, expect_status, expect_body, want) in cases {
            let (port, _r) = server(response, close).await;
            let out = probe(port, expect_status, expect_body, 300).await;
            let shown = String::from_utf8_lossy(&response[..response.len().min(80)]);
            let (ok, detail) = match want {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            assert_eq!((out.ok, out.detail.as_str()), (ok, detail), "{shown:?}");
        }
    }

    /// Serves `response` to every connection; returns the port and a channel
    /// of the requests received. With `close` false the connection is kept
    /// open after the response (a server ignoring `Connection: close`). An
    /// empty `response` is never sent: the server closes the connection
    /// (`close`) or holds it open without a word.
    async fn server(
        response: &'static [u8],
        close: bool,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut b = [0u8; 1024];
                    while !contains(&req, b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
                    if response.is_empty() {
                        if !close {
                            // Never answer.
                            tokio::time::sleep(Duration::from_secs(10)).await;
                        }
                        return;
                    }
                    let _ = s.write_all(response).await;
                    if !close {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                });
            }
        });
        (port, rx)
    }

    async fn probe(
        port: u16,
        expect_status: &[u16],
        expect_body: Option<&str>,
        timeout_ms: u64,
    ) -> CheckOutcome {
        let req = HttpCheck {
            host: "backend.test",
            path: "/healthz",
            expect_status,
            expect_body,
        };
        check(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            &req,
            Duration::from_millis(timeout_ms),
        )
        .await
    }

    #[tokio::test]
    async fn ok_200_and_the_request_sent() {
        let (port, mut requests) =
            server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
        let out = probe(port, &[200], Some("ok"), 1000).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.detail, "status 200");
        let req = requests.recv().await.unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req:?}");
        assert!(req.contains("\r\nHost: backend.test\r\n"), "{req:?}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req:?}");
        assert!(req.contains("\r\nUser-Agent: lbd-health\r\n"), "{req:?}");
    }

    #[tokio::test]
    async fn status_500_fails() {
        let (port, _r) = server(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        let out = probe(port, &[200], None, 1000).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "status 500 (expected 200)");
    }

    #[tokio::test]
    async fn body_variants() {
        let (port, _r) = server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nnot healthy",
            false,
        )
        .await;
        let out = probe(port, &[200], Some("ok"), 1000).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "status 200, body does not contain \"ok\"");
        let out = probe(port, &[200], Some("healthy"), 1000).await;
        assert!(out.ok, "{out:?}");

        let (port, _r) = server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nall \r\n2\r\nok\r\n0\r\n\r\n",
            false,
        )
        .await;
        let out = probe(port, &[200], Some("all ok"), 1000).await;
        assert!(out.ok, "{out:?}");
    }

    #[tokio::test]
    async fn response_ended_by_close() {
        // HTTP/1.0 style: no length, the server closes.
        let (port, _r) = server(b"HTTP/1.0 200 OK\r\n\r\nstatus=ok\n", true).await;
        let out = probe(port, &[200], Some("status=ok"), 1000).await;
        assert!(out.ok, "{out:?}");
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (port, _r) = server(b"", false).await;
        let started = std::time::Instant::now();
        let out = probe(port, &[200], None, 200).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "timeout after 200 ms");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn closed_port_fails_to_connect() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let out = probe(port, &[200], None, 1000).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "connect refused");
    }

    #[tokio::test]
    async fn garbage_fails() {
        let (port, _r) = server(b"hello\r\n", true).await;
        let out = probe(port, &[200], None, 1000).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "invalid status line \"hello\"");
    }
}
