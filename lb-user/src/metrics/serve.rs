//! `GET /metrics` over HTTP/1.1, served by hyper: one request per
//! connection, bounded in time, size and number of connections.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode, Uri,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, task::JoinSet, time::timeout};

use super::{render, Snapshot, CONTENT_TYPE};

/// How connections reach the snapshot closure.
type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// Longest request head (request line and headers) read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the answer (after [`READ_TIMEOUT`], the
/// connection is cut when both are over).
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
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        // Longer heads are answered with 431.
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD)
        // One request per connection, answered with `Connection: close`.
        .keep_alive(false)
        // A client that shuts down its side after the request still gets
        // the answer.
        .half_close(true)
        .title_case_headers(true);
    let graceful = GracefulShutdown::new();
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
                    let snapshot = snapshot.clone();
                    let service = service_fn(move |req| answer(req, snapshot.clone()));
                    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    conns.spawn(async move {
                        match timeout(READ_TIMEOUT + WRITE_TIMEOUT, conn).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection failed"),
                            Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
                        }
                    });
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
    // Connections waiting for a request close now, answers in flight finish
    // within the grace; the rest are cut.
    let _ = timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    conns.shutdown().await;
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request hyper has parsed. Only the request line matters; what
/// hyper accepts beyond plain HTTP/1.x requests for a path (a method not in
/// upper case, a target with a scheme or authority) is a bad request here.
fn route(method: &Method, target: &Uri) -> Route {
    let method_ok = method.as_str().bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || target.authority().is_some() || !target.path().starts_with('/') {
        return Route::BadRequest;
    }
    let found = match target.path() {
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => return Route::NotFound,
    };
    if method == Method::GET || method == Method::HEAD {
        found
    } else {
        Route::MethodNotAllowed
    }
}

/// The answer to one request (hyper leaves out the body of an answer to
/// `HEAD`, and sets `Content-Length`).
async fn answer(
    req: Request<Incoming>,
    snapshot: SnapshotFn,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, content_type, body) = match route(req.method(), req.uri()) {
        Route::Metrics => match tokio::task::spawn_blocking(move || render(&snapshot())).await {
            Ok(body) => (StatusCode::OK, CONTENT_TYPE, body),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: snapshot failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "snapshot failed\n".into(),
                )
            }
        },
        Route::Index => (StatusCode::OK, "text/html; charset=utf-8", INDEX.into()),
        Route::NotFound => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
        Route::MethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".into(),
        ),
        Route::BadRequest => (StatusCode::BAD_REQUEST, TEXT, "bad request\n".into()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Also to HTTP/1.0 clients, for whom hyper would leave it implied.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::render::tests::snapshot;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    /// A server on a free loopback port: its address, the sender that stops
    /// it, and its task.
    async fn start() -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, snapshot, async move {
            let _ = stop_rx.await;
        }));
        (addr, stop_tx, server)
    }

    #[tokio::test]
    async fn routes() {
        let (addr, _stop, _server) = start().await;
        for (request, want) in [
            (&b"GET /metrics HTTP/1.1\r\n\r\n"[..], "200"),
            (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", "200"),
            (b"HEAD /metrics HTTP/1.1\r\n\r\n", "200"),
            (b"GET / HTTP/1.1\r\n\r\n", "200"),
            (b"GET /nope HTTP/1.1\r\n\r\n", "404"),
            (b"HEAD /nope HTTP/1.1\r\n\r\n", "404"),
            (b"DELETE /metrics HTTP/1.1\r\n\r\n", "405"),
            (b"GET /metrics\r\n\r\n", "400"),
            (b"\xff\xfe\r\n\r\n", "400"),
            (b"get / HTTP/1.1\r\n\r\n", "400"),
            (b"GET metrics HTTP/1.1\n\n", "400"),
            (b"GET http://x/metrics HTTP/1.1\r\n\r\n", "400"),
        ] {
            let resp = exchange(addr, request).await;
            assert_eq!(status(&resp), want, "{request:?}: {resp}");
        }
        // Nothing sent: closed without an answer.
        assert_eq!(exchange(addr, b"").await, "");
    }

    /// Reads what the server sends until it closes (or 30 s pass).
    async fn read_all(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("closed in time");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_client_without_a_request_head_is_closed_after_the_read_timeout() {
        let (addr, _stop, _server) = start().await;
        let started = std::time::Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        for s in [&mut silent, &mut slow] {
            let resp = read_all(s).await;
            assert!(resp.is_empty() || status(&resp) == "408", "{resp}");
        }
        let waited = started.elapsed();
        assert!(
            waited >= READ_TIMEOUT && waited < READ_TIMEOUT + WRITE_TIMEOUT,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_at_once() {
        let (addr, _stop, _server) = start().await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // Accepted after the held ones, so over the limit.
        let started = std::time::Instant::now();
        let resp = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(resp, "", "over the limit");
        assert!(started.elapsed() < READ_TIMEOUT, "closed at once");
        drop(held);
        // Served again once the held connections are gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let resp = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
            if status(&resp) == "200" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not served again");
            tokio::time::sleep(Duration::from_millis(20)).await;
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
