//! The exporter's HTTP server: hyper's HTTP/1 connections under limits that
//! make a monitoring port safe to leave open on a production host.
//!
//! `axum::serve` accepts without bound and has no header timeout, so slow or
//! idle clients could hold sockets and buffers forever. Here a connection is
//! accepted only while fewer than `max_connections` are open (the rest wait
//! in the kernel's listen backlog, costing us nothing), request heads must
//! arrive within `header_read_timeout` and fit in `max_buf_size`, and no
//! connection lives longer than `connection_lifetime`. Routing and responses
//! stay axum's.

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};

/// What one client may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub connection_lifetime: Duration,
    /// Read buffer per connection, which bounds a request head (hyper's
    /// minimum is 8 KiB).
    pub max_buf_size: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(60),
            max_buf_size: 16 * 1024,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; open connections
/// are then dropped.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so the set stays as small as the cap.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = &mut shutdown => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    log::warn!("accepting a metrics connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_buf_size)
                .serve_connection(TokioIo::new(stream), service);
            // Errors are the client's (malformed request, reset, timeout):
            // hyper has answered what it could; nothing to report here.
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    const BODY: &str = "fuselock_writes_total 42\n";

    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/metrics", get(|| async { BODY }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, limits, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// Sends `request` and reads until the server closes (or 10 s pass).
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("send");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    const GET: &[u8] = b"GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_concurrent_scrapes_are_all_answered() {
        let (addr, _stop) = start(Limits::default()).await;
        let mut scrapes = JoinSet::new();
        for _ in 0..1000 {
            scrapes.spawn(exchange(addr, GET));
        }
        let mut ok = 0;
        while let Some(reply) = scrapes.join_next().await {
            let reply = reply.expect("task");
            assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
            assert!(reply.ends_with(BODY), "{reply}");
            ok += 1;
        }
        assert_eq!(ok, 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_clients_are_cut_off_and_do_not_starve_scrapers() {
        let limits = Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        // Twice as many slow clients as connection slots, each sending half
        // a request head and then nothing.
        let mut slow = Vec::new();
        for _ in 0..16 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
                .await
                .expect("send");
            slow.push(s);
        }
        let t = Instant::now();
        let reply = exchange(addr, GET).await;
        assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
        // Served once the slow ones timed out: two rounds of 500 ms at most.
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        for mut s in slow {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
            assert!(read.is_ok(), "a slow client was never cut off");
        }
    }

    #[tokio::test]
    async fn malformed_and_unexpected_requests_get_errors() {
        let (addr, _stop) = start(Limits::default()).await;
        for (request, status) in [
            (&b"\x00\x01\x02 garbage\r\n\r\n"[..], "HTTP/1.1 400"),
            (
                b"POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
                "HTTP/1.0 405",
            ),
            (b"DELETE /metrics HTTP/1.0\r\n\r\n", "HTTP/1.0 405"),
            (b"GET /../../etc/passwd HTTP/1.0\r\n\r\n", "HTTP/1.0 404"),
            (b"GET /debug HTTP/1.0\r\n\r\n", "HTTP/1.0 404"),
        ] {
            let reply = exchange(addr, request).await;
            assert!(
                reply.starts_with(status),
                "{:?}: expected {status}, got {reply:?}",
                String::from_utf8_lossy(request)
            );
        }
        // A request head larger than the read buffer.
        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
        huge.extend(b"\r\n\r\n");
        let reply = exchange(addr, &huge).await;
        assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");
        // And the server still serves.
        assert!(exchange(addr, GET).await.ends_with(BODY));
    }
}
