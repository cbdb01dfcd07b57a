//! The exporter's HTTP server: hyper's HTTP/1 connections under limits that
//! make a monitoring port safe to leave open on a production host.
//!
//! `axum::serve` accepts without bound and has no header timeout, so slow or
//! idle clients could hold sockets and buffers forever. Here a connection is
//! accepted only while fewer than `max_connections` are open (the rest wait
//! in the kernel's listen backlog, costing us nothing), one client address
//! holds at most `max_connections_per_peer` of them (more are closed as soon
//! as accepted, so one host cannot take every slot), request heads must
//! arrive within `header_read_timeout` and fit in `max_buf_size`, a
//! kept-alive connection waits at most `idle_timeout` for its next request,
//! and no connection lives longer than `connection_lifetime`. Routing and
//! responses stay axum's.
//!
//! With a web config that has TLS, each connection is accepted with the TLS
//! config in force when it arrived (a rotated certificate serves the next
//! connection), and the handshake must also finish within
//! `header_read_timeout`, so a client stalling it holds a slot no longer
//! than one stalling its request head.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::Semaphore,
    task::JoinSet,
    time::Sleep,
};
use tokio_rustls::TlsAcceptor;

use super::access::Current;

/// What one client may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_peer: usize,
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    pub connection_lifetime: Duration,
    /// Read buffer per connection, which bounds a request head (hyper's
    /// minimum is 8 KiB).
    pub max_buf_size: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            max_connections_per_peer: 16,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(60),
            max_buf_size: 16 * 1024,
        }
    }
}

/// Serves `app` on `listener`, over TLS when the current web config says
/// so, until `shutdown` completes; open connections are then dropped.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    web: Current,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Arc::new(Peers::default());
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
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    log::warn!("accepting a metrics connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(peer_slot) = peers.admit(peer.ip(), limits.max_connections_per_peer) else {
            // Closed at once: the peer's other connections keep theirs.
            log::debug!(
                "{peer}: more than {} connections, closed",
                limits.max_connections_per_peer
            );
            continue;
        };
        let tls = web.borrow().tls.clone().map(TlsAcceptor::from);
        let app = app.clone();
        connections.spawn(async move {
            let connection = async {
                match tls {
                    None => http(stream, app, limits).await,
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            limits.header_read_timeout,
                            acceptor.accept(stream),
                        );
                        // A failed handshake (plain HTTP, no client
                        // certificate, a stall) was the client's doing.
                        if let Ok(Ok(stream)) = handshake.await {
                            http(stream, app, limits).await;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
            drop(peer_slot);
            drop(slot);
        });
    }
}

/// Open connections by client address.
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

impl Peers {
    /// A slot for one more connection from `ip`, unless it holds `cap`.
    fn admit(self: &Arc<Peers>, ip: IpAddr, cap: usize) -> Option<PeerSlot> {
        // An IPv4 client of a dual-stack socket is the same host either way.
        let ip = ip.to_canonical();
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            ip,
        })
    }
}

/// One connection of a peer, given back on drop.
struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A stream whose reads fail once it has been idle for `timeout`: an answer
/// written and flushed, and since then no byte moved either way. Then a
/// kept-alive connection gives its slot back well before its lifetime ends,
/// whatever hyper's own timers do between requests. While a request is
/// being answered (read, nothing written yet) the clock does not run.
struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Running once an answer has been flushed.
    idle: Option<Pin<Box<Sleep>>>,
    /// Bytes written since the last request bytes read.
    wrote: bool,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, timeout: Duration) -> IdleTimeout<S> {
        IdleTimeout {
            inner,
            timeout,
            idle: None,
            wrote: false,
        }
    }

    /// Notes `n` bytes written: activity, and an answer under way.
    fn written(&mut self, n: usize) {
        if n > 0 {
            self.wrote = true;
            if let Some(idle) = &mut self.idle {
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + self.timeout);
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.idle = None;
                    this.wrote = false;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .idle
                    .as_mut()
                    .is_some_and(|idle| idle.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle keep-alive connection",
                    )))
                } else {
                    Poll::Pending
                }
            }
            done => done,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.written(n);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            this.written(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        // An answer went out: the wait for the next request starts (hyper
        // flushes on every wake-up, which must not restart it).
        if matches!(flushed, Poll::Ready(Ok(()))) && this.wrote && this.idle.is_none() {
            this.idle = Some(Box::pin(tokio::time::sleep(this.timeout)));
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One HTTP/1 connection over `stream`.
async fn http(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    app: Router,
    limits: Limits,
) {
    let stream = IdleTimeout::new(stream, limits.idle_timeout);
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buf_size)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    // Errors are the client's (malformed request, reset, timeout): hyper has
    // answered what it could; nothing to report here.
    let _ = connection.await;
}

#[cfg(test)]
mod tests;
