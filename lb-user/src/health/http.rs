//! `kind = "http"`: an HTTP/1.1 `GET` must be answered with an expected
//! status, and optionally a body containing an expected string.
//!
//! A deliberately small client: one request per connection
//! (`Connection: close`), at most [`RESPONSE_CAP`] bytes of response read.
//! The response ends at its `Content-Length`, at the last chunk of a chunked
//! body, or when the server closes the connection.

use std::{borrow::Cow, net::SocketAddrV4, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use super::{
    tcp::{connect_error, timeout_detail},
    CheckOutcome,
};

/// Bytes of response read at most; the rest is ignored.
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
    /// The request bytes.
    pub fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: lbd-health\r\n\r\n",
            self.path, self.host
        )
    }
}

/// Sends the request to `addr` and judges the response; everything
/// (connecting included) must be done within `timeout`.
pub async fn check(addr: SocketAddrV4, req: &HttpCheck<'_>, timeout: Duration) -> CheckOutcome {
    let start = Instant::now();
    let result = match tokio::time::timeout(timeout, exchange(addr, req.request())).await {
        Ok(Ok(response)) => evaluate(&response, req.expect_status, req.expect_body),
        Ok(Err(detail)) => Err(detail),
        Err(_) => Err(timeout_detail(timeout)),
    };
    match result {
        Ok(detail) => CheckOutcome::new(true, start, detail),
        Err(detail) => CheckOutcome::new(false, start, detail),
    }
}

/// Connects, sends, reads the response (up to the cap).
async fn exchange(addr: SocketAddrV4, request: String) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| connect_error(&e))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                let room = RESPONSE_CAP - buf.len();
                buf.extend_from_slice(&chunk[..n.min(room)]);
                if buf.len() >= RESPONSE_CAP || is_complete(&buf) {
                    break;
                }
            }
            // A reset after (part of) a response: judge what arrived.
            Err(_) if !buf.is_empty() => break,
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    Ok(buf)
}

/// The parsed head of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of status line and headers, blank line included.
    len: usize,
    content_length: Option<usize>,
    chunked: bool,
}

/// Where the head ends (after its blank line), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = find(buf, b"\r\n\r\n").map(|i| i + 4);
    let lf = find(buf, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses the status line and the headers that delimit the body. `Ok(None)`
/// while the status line itself is incomplete. A head without its blank line
/// (the server closed early) is parsed as far as it goes.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(first_end) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let status_line = String::from_utf8_lossy(&buf[..first_end]);
    let status_line = status_line.trim_end_matches('\r');
    let mut parts = status_line.split(' ').filter(|p| !p.is_empty());
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit())
    {
        let shown: String = status_line.chars().take(60).collect();
        return Err(format!("invalid status line {shown:?}"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("invalid status {code:?}"))?;
    let len = head_end(buf).unwrap_or(buf.len());
    let mut head = Head {
        status,
        len,
        content_length: None,
        chunked: false,
    };
    let headers = String::from_utf8_lossy(&buf[first_end + 1..len]);
    for line in headers.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Ok(Some(head))
}

/// Decodes a chunked body as far as it goes: the data and whether the last
/// (zero-size) chunk was seen. `None` if a chunk size is not hexadecimal.
fn dechunk(mut data: &[u8]) -> Option<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.iter().position(|&b| b == b'\n') else {
            return Some((out, false));
        };
        let line = String::from_utf8_lossy(&data[..eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        data = &data[eol + 1..];
        if size == 0 {
            return Some((out, true));
        }
        let take = size.min(data.len());
        out.extend_from_slice(&data[..take]);
        if take < size {
            return Some((out, false));
        }
        data = &data[take..];
        // The CRLF after the chunk's data.
        data = data
            .strip_prefix(b"\r\n")
            .or_else(|| data.strip_prefix(b"\n"))
            .unwrap_or(data);
    }
}

/// Whether the whole response has arrived, so reading can stop before EOF.
fn is_complete(buf: &[u8]) -> bool {
    let Some(end) = head_end(buf) else {
        return false;
    };
    let Ok(Some(head)) = parse_head(buf) else {
        // An invalid status line will not get better.
        return true;
    };
    let body = &buf[end..];
    if matches!(head.status, 100..=199 | 204 | 304) {
        true
    } else if head.chunked {
        dechunk(body).is_none_or(|(_, complete)| complete)
    } else if let Some(n) = head.content_length {
        body.len() >= n
    } else {
        false
    }
}

/// The body of a response, decoded loosely.
fn body<'a>(buf: &'a [u8], head: &Head) -> Cow<'a, [u8]> {
    let raw = &buf[head.len.min(buf.len())..];
    if head.chunked {
        if let Some((data, _)) = dechunk(raw) {
            return Cow::Owned(data);
        }
    } else if let Some(n) = head.content_length {
        return Cow::Borrowed(&raw[..n.min(raw.len())]);
    }
    Cow::Borrowed(raw)
}

/// Judges a response: `Ok(detail)` if it passes, `Err(detail)` if not.
fn evaluate(
    response: &[u8],
    expect_status: &[u16],
    expect_body: Option<&str>,
) -> Result<String, String> {
    if response.is_empty() {
        return Err("connection closed without a response".into());
    }
    let head = match parse_head(response)? {
        Some(head) => head,
        None => {
            // No complete line: judge it as a status line anyway.
            let mut line = response.to_vec();
            line.push(b'\n');
            parse_head(&line)?.ok_or("invalid response")?
        }
    };
    let status = head.status;
    if !expect_status.contains(&status) {
        let expected: Vec<String> = expect_status.iter().map(u16::to_string).collect();
        return Err(format!(
            "status {status} (expected {})",
            expected.join(", ")
        ));
    }
    if let Some(expected) = expect_body {
        if find(&body(response, &head), expected.as_bytes()).is_none() {
            return Err(format!(
                "status {status}, body does not contain {expected:?}"
            ));
        }
    }
    Ok(format!("status {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::net::TcpListener;

    // --- parsing, without sockets ---

    #[test]
    fn request_is_well_formed() {
        let req = HttpCheck {
            host: "10.0.2.11:8080",
            path: "/healthz?full=1",
            expect_status: &[200],
            expect_body: None,
        };
        assert_eq!(
            req.request(),
            "GET /healthz?full=1 HTTP/1.1\r\nHost: 10.0.2.11:8080\r\nConnection: close\r\n\
             User-Agent: lbd-health\r\n\r\n"
        );
    }

    #[test]
    fn status_is_matched_against_the_list() {
        let r = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(evaluate(r, &[200, 204], None), Ok("status 204".into()));
        assert_eq!(
            evaluate(r, &[200], None),
            Err("status 204 (expected 200)".into())
        );
        let r = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            evaluate(r, &[200, 201], None),
            Err("status 503 (expected 200, 201)".into())
        );
    }

    #[test]
    fn body_is_searched_after_the_head() {
        let r = b"HTTP/1.1 200 OK\r\nX-Status: ok\r\nContent-Length: 4\r\n\r\nfine";
        assert_eq!(evaluate(r, &[200], Some("fine")), Ok("status 200".into()));
        // A header is not the body.
        assert_eq!(
            evaluate(r, &[200], Some("ok")),
            Err("status 200, body does not contain \"ok\"".into())
        );
        // Content-Length bounds the body.
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokextra";
        assert!(evaluate(r, &[200], Some("ok")).is_ok());
        assert!(evaluate(r, &[200], Some("extra")).is_err());
        // Without Content-Length, the body runs to the end.
        let r = b"HTTP/1.1 200 OK\r\n\r\nall is well";
        assert!(evaluate(r, &[200], Some("is well")).is_ok());
        // Bare LF line ends are tolerated.
        let r = b"HTTP/1.1 200 OK\nServer: x\n\nstatus: ok\n";
        assert!(evaluate(r, &[200], Some("status: ok")).is_ok());
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  4\r\nall \r\n2;ext=1\r\nok\r\n0\r\n\r\n";
        assert!(is_complete(r));
        assert!(evaluate(r, &[200], Some("all ok")).is_ok());
        assert_eq!(
            dechunk(b"4\r\nall \r\n2\r\nok\r\n0\r\n\r\n"),
            Some((b"all ok".to_vec(), true))
        );
        assert_eq!(dechunk(b"4\r\nal"), Some((b"al".to_vec(), false)));
        assert_eq!(dechunk(b"zz\r\n"), None);
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nall \r\n"
        ));
    }

    #[test]
    fn completeness() {
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"));
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc"
        ));
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabcde"
        ));
        assert!(is_complete(b"HTTP/1.1 304 Not Modified\r\n\r\n"));
        // Read to EOF when nothing delimits the body.
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\n\r\nabc"));
    }

    #[test]
    fn invalid_responses_fail() {
        assert_eq!(
            evaluate(b"", &[200], None),
            Err("connection closed without a response".into())
        );
        assert_eq!(
            evaluate(b"SSH-2.0-OpenSSH_9.2\r\n", &[200], None),
            Err("invalid status line \"SSH-2.0-OpenSSH_9.2\"".into())
        );
        assert!(evaluate(b"HTTP/1.1 2000 OK\r\n\r\n", &[200], None).is_err());
        // Closed in the middle of the head: the status line still counts.
        assert_eq!(
            evaluate(b"HTTP/1.1 200 OK\r\nServ", &[200], None),
            Ok("status 200".into())
        );
        assert_eq!(
            evaluate(b"HTTP/1.1 200", &[200], None),
            Ok("status 200".into())
        );
    }

    // --- against a local server ---

    /// Serves `response` to every connection; returns the port and a channel
    /// of the requests received. With `close` false the connection is kept
    /// open after the response (a server ignoring `Connection: close`).
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
                    while find(&req, b"\r\n\r\n").is_none() {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
                    if response.is_empty() {
                        // Never answer.
                        tokio::time::sleep(Duration::from_secs(10)).await;
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
        let (port, _r) = server(b"", true).await;
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
