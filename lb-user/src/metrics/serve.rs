//! `GET /metrics` over HTTP/1.1: one request per connection, bounded in
//! time, size and number of connections.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::timeout,
};

use super::{render, Snapshot, CONTENT_TYPE};

/// How connections reach the snapshot closure.
type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// Longest request head (request line and headers) read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed as soon as they are accepted.
const MAX_CONNECTIONS: usize = 64;
/// How long in-flight answers may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>lbd</title></head><body>\n\
<h1>lbd</h1>\n<p><a href=\"/metrics\">Metrics</a> (Prometheus text format)</p>\n\
</body></html>\n";

/// Serves `GET /metrics` (and `GET /`) on `listener` until `shutdown` resolves.
///
/// `snapshot` is called once per scrape on a blocking thread, so it may take
/// a lock or read maps. Each connection is its own task with read and write
/// timeouts, answers one request and is closed. Once `shutdown` resolves no
/// connection is accepted; answers in flight get a short grace, then are cut.
pub async fn serve(
    listener: TcpListener,
    snapshot: impl Fn() -> Snapshot + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let snapshot: SnapshotFn = Arc::new(snapshot);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if conns.len() >= MAX_CONNECTIONS {
                        tracing::debug!(%peer, "metrics: too many connections, closing");
                        continue;
                    }
                    conns.spawn(connection(stream, snapshot.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: don't spin.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    /// The head did not end within [`MAX_HEAD`] bytes.
    TooLarge,
}

/// Routes a complete request head. Only the request line matters.
fn route(head: &[u8]) -> (Route, bool) {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return (Route::BadRequest, false);
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, false);
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return (Route::BadRequest, false);
    }
    let head_only = method == "HEAD";
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let found = match path {
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => return (Route::NotFound, head_only),
    };
    if method == "GET" || head_only {
        (found, head_only)
    } else {
        (Route::MethodNotAllowed, false)
    }
}

/// Reads up to the end of the request head. `None`: the client went away,
/// was too slow or sent nothing usable; `Some(Err)`: the head is too long.
async fn read_head(stream: &mut TcpStream) -> Option<Result<Vec<u8>, ()>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            let from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            let tail = &buf[from..];
            if tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n") {
                return Some(Ok(()));
            }
            if buf.len() >= MAX_HEAD {
                return Some(Err(()));
            }
        }
    };
    match timeout(READ_TIMEOUT, read).await {
        Ok(Some(Ok(()))) => Some(Ok(buf)),
        Ok(Some(Err(()))) => Some(Err(())),
        _ => None,
    }
}

async fn connection(mut stream: TcpStream, snapshot: SnapshotFn) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (route, head_only) = match read_head(&mut stream).await {
        None => return,
        Some(Err(())) => (Route::TooLarge, false),
        Some(Ok(head)) => route(&head),
    };
    let (status, content_type, body) = match route {
        Route::Metrics => match tokio::task::spawn_blocking(move || render(&snapshot())).await {
            Ok(body) => (200, CONTENT_TYPE, body),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: snapshot failed");
                (500, TEXT, "snapshot failed\n".into())
            }
        },
        Route::Index => (200, "text/html; charset=utf-8", INDEX.into()),
        Route::NotFound => (404, TEXT, "not found\n".into()),
        Route::MethodNotAllowed => (405, TEXT, "method not allowed\n".into()),
        Route::BadRequest => (400, TEXT, "bad request\n".into()),
        Route::TooLarge => (431, TEXT, "request head too large\n".into()),
    };
    if let Err(e) = respond(&mut stream, status, content_type, &body, head_only).await {
        tracing::debug!(error = %e, "metrics: answer not delivered");
    }
}

/// Writes one complete answer and closes our side.
async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    let write = async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await?;
        // Take what the client still sends (say a POST body) for a moment:
        // closing with unread data resets the connection, and the client
        // could lose the answer.
        let mut sink = [0u8; 1024];
        let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = timeout(Duration::from_millis(200), drain).await;
        Ok(())
    };
    timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::render::tests::snapshot;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\n\r\n"),
            (Route::Metrics, false)
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            (Route::Metrics, false)
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            (Route::Metrics, true)
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), (Route::Index, false));
        assert_eq!(
            route(b"GET /nope HTTP/1.1\r\n\r\n"),
            (Route::NotFound, false)
        );
        assert_eq!(
            route(b"DELETE /metrics HTTP/1.1\r\n\r\n"),
            (Route::MethodNotAllowed, false)
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"\xff\xfe\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\n\n",
            b"",
        ] {
            assert_eq!(route(bad).0, Route::BadRequest, "{bad:?}");
        }
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may already have closed on bad input.
        let _ = s.write_all(request).await;
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answer in time");
        String::from_utf8_lossy(&out).into_owned()
    }

    fn status(resp: &str) -> &str {
        resp.split(' ').nth(1).unwrap_or("")
    }

    #[tokio::test]
    async fn serves_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, snapshot, async move {
            let _ = stop_rx.await;
        }));

        // A silent client must not hold up the others.
        let _idle = TcpStream::connect(addr).await.unwrap();

        let resp = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status(&resp), "200", "{resp}");
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        let head = format!("{head}\r\n");
        assert!(
            head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{head}"
        );
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(body.contains("lb_vip_packets_total"), "{body}");
        assert_eq!(body, render(&snapshot()));

        let resp = exchange(addr, b"GET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(status(&resp), "200", "{resp}");
        assert!(resp.contains("href=\"/metrics\""), "{resp}");

        let resp = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&resp), "200", "{resp}");
        assert!(resp.ends_with("\r\n\r\n"), "{resp}");

        assert_eq!(
            status(&exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await),
            "404"
        );
        let resp = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!(status(&resp), "405", "{resp}");
        assert!(resp.contains("Allow: GET, HEAD\r\n"), "{resp}");

        // Garbage: an answer of 400 or a plain close, never a crash.
        for garbage in [
            &b"\x00\xff\xfe garbage\r\n\r\n"[..],
            b"\r\n\r\n",
            b"no end of head",
            b"",
        ] {
            let resp = exchange(addr, garbage).await;
            assert!(
                resp.is_empty() || status(&resp) == "400",
                "{garbage:?}: {resp}"
            );
        }
        let resp = exchange(addr, &[b'a'; 3 * MAX_HEAD]).await;
        assert!(resp.is_empty() || status(&resp) == "431", "{resp}");

        // Still serving after all that.
        assert_eq!(
            status(&exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await),
            "200"
        );

        stop_tx.send(()).unwrap();
        timeout(Duration::from_secs(5), server)
            .await
            .expect("serve stops")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }
}
