use std::time::Instant;

use axum::routing::get;
use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
};
use tokio_rustls::TlsConnector;

use super::*;
use crate::http::{
    access::protect,
    web_config::{
        tests::{checked, hash, Pki, GOOD, PASSWORD},
        WebConfig,
    },
};

const BODY: &str = "fuselock_writes_total 42\n";

/// Serves BODY at /metrics under `web`; the sender keeps it current.
async fn start(
    limits: Limits,
    web: WebConfig,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    watch::Sender<Arc<WebConfig>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(Arc::new(web));
    let app = protect(
        Router::new()
            .route("/metrics", get(|| async { BODY }))
            .route("/healthz", get(|| async { "ok\n" })),
        rx.clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, app, limits, rx, async {
        let _ = stopped.await;
    }));
    (addr, stop, tx)
}

/// Writes a web config beside the test PKI, checks that promtool
/// accepts it too, and loads it.
fn web(pki: &Pki, name: &str, yaml: &str) -> WebConfig {
    WebConfig::load(&checked(pki, name, yaml)).expect("web config")
}

/// A TLS client trusting the test CA, with the client certificate if asked.
fn client(pki: &Pki, with_cert: bool) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.crt")).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add ca");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    let config = if with_cert {
        let chain = CertificateDer::pem_file_iter(pki.path("client.crt"))
            .expect("client cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("client cert");
        let key = PrivateKeyDer::from_pem_file(pki.path("client.key")).expect("client key");
        builder
            .with_client_auth_cert(chain, key)
            .expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    TlsConnector::from(Arc::new(config))
}

/// Sends `request` and reads until the server closes (or 10 s pass);
/// over TLS when given a client. Whatever arrived, possibly nothing.
async fn exchange(
    addr: std::net::SocketAddr,
    request: &[u8],
    tls: Option<&TlsConnector>,
) -> String {
    exchange_within(addr, request, tls, Duration::from_secs(10)).await
}

async fn exchange_within(
    addr: std::net::SocketAddr,
    request: &[u8],
    tls: Option<&TlsConnector>,
    limit: Duration,
) -> String {
    exchange_from("127.0.0.1", addr, request, tls, limit).await
}

/// [`exchange_within`] from the client address `ip`.
async fn exchange_from(
    ip: &str,
    addr: std::net::SocketAddr,
    request: &[u8],
    tls: Option<&TlsConnector>,
    limit: Duration,
) -> String {
    let s = connect_from(ip, addr).await;
    let mut out = Vec::new();
    let read = async {
        match tls {
            None => {
                let mut s = s;
                s.write_all(request).await?;
                s.read_to_end(&mut out).await
            }
            Some(connector) => {
                let name = ServerName::try_from("localhost").expect("name");
                let mut s = connector.connect(name, s).await?;
                s.write_all(request).await?;
                s.read_to_end(&mut out).await
            }
        }
    };
    let _ = tokio::time::timeout(limit, read).await;
    String::from_utf8_lossy(&out).into_owned()
}

const GET: &[u8] = b"GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n";

/// GET /metrics with the test password.
fn authed_get() -> Vec<u8> {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("prometheus:{PASSWORD}"));
    format!("GET /metrics HTTP/1.0\r\nHost: t\r\nAuthorization: Basic {token}\r\n\r\n").into_bytes()
}

fn tls_and_auth(pki: &Pki) -> WebConfig {
    web(
        pki,
        "tls-auth.yml",
        &format!("{GOOD}basic_auth_users:\n  prometheus: {}\n", hash()),
    )
}

async fn thousand_scrapes(addr: std::net::SocketAddr, request: &[u8], tls: Option<TlsConnector>) {
    let mut scrapes = JoinSet::new();
    for i in 0..1000 {
        let request = request.to_vec();
        let tls = tls.clone();
        // From 100 addresses (127.0.0.2 to .101), 10 each: as many
        // scrapers as Prometheus servers would be, none over its share.
        let ip = format!("127.0.0.{}", 2 + i % 100);
        // The last of them wait for all before them (64 at a time): on a
        // loaded 2-core machine, 1,000 TLS handshakes in a debug build
        // take longer than one exchange's usual 10 s.
        scrapes.spawn(async move {
            exchange_from(&ip, addr, &request, tls.as_ref(), Duration::from_secs(120)).await
        });
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
async fn a_thousand_concurrent_scrapes_are_all_answered() {
    let (addr, _stop, _web) = start(Limits::default(), WebConfig::plain()).await;
    thousand_scrapes(addr, GET, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_scrapes_over_tls_with_basic_auth_are_all_answered() {
    let pki = Pki::new("thousand");
    let (addr, _stop, _web) = start(Limits::default(), tls_and_auth(&pki)).await;
    let t = Instant::now();
    thousand_scrapes(addr, &authed_get(), Some(client(&pki, false))).await;
    println!("1000 TLS + basic auth scrapes in {:?}", t.elapsed());
}

/// Half a request head from each of twice as many clients as there are
/// slots: the scraper is served once they time out.
async fn slow_clients(tls: Option<(TlsConnector, WebConfig)>) {
    let limits = Limits {
        max_connections: 8,
        header_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (connector, web) = match tls {
        Some((c, w)) => (Some(c), w),
        None => (None, WebConfig::plain()),
    };
    let (addr, _stop, _web) = start(limits, web).await;
    let mut slow_plain = Vec::new();
    let mut slow_tls = Vec::new();
    for i in 0..16 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        match &connector {
            // Over TLS, half stall the handshake itself (they send
            // nothing), half finish it and stall the request head.
            Some(c) if i % 2 == 0 => {
                let name = ServerName::try_from("localhost").expect("name");
                // Only reaches the server once a slot is free: connect in
                // the background.
                let c = c.clone();
                slow_tls.push(tokio::spawn(async move {
                    let mut s = c.connect(name, s).await.ok()?;
                    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
                        .await
                        .ok()?;
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf).await;
                    Some(buf)
                }));
            }
            Some(_) => slow_plain.push(s),
            None => {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
                    .await
                    .expect("send");
                slow_plain.push(s);
            }
        }
    }
    let t = Instant::now();
    let request = if connector.is_some() {
        authed_get()
    } else {
        GET.to_vec()
    };
    let reply = exchange(addr, &request, connector.as_ref()).await;
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    // Served once the slow ones timed out: two rounds of 500 ms at most.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    for mut s in slow_plain {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a slow client was never cut off");
    }
    for task in slow_tls {
        let done = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(done.is_ok(), "a slow TLS client was never cut off");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_do_not_starve_scrapers() {
    slow_clients(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_over_tls_are_cut_off_and_do_not_starve_scrapers() {
    let pki = Pki::new("slow");
    let web = tls_and_auth(&pki);
    slow_clients(Some((client(&pki, false), web))).await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_answer() {
    let pki = Pki::new("plain");
    let (addr, _stop, _web) = start(Limits::default(), web(&pki, "tls.yml", GOOD)).await;
    let reply = exchange(addr, &authed_get(), None).await;
    assert!(!reply.contains("HTTP/1"), "{reply:?}");
    assert!(!reply.contains("fuselock_"), "{reply:?}");
    // The same request over TLS is served.
    let reply = exchange(addr, GET, Some(&client(&pki, false))).await;
    assert!(reply.ends_with(BODY), "{reply:?}");
}

#[tokio::test]
async fn a_wrong_password_gets_401_and_headers_are_sent() {
    let pki = Pki::new("auth");
    let yaml = format!(
        "{GOOD}http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  prometheus: {}\n",
        hash()
    );
    let (addr, _stop, _web) = start(Limits::default(), web(&pki, "auth.yml", &yaml)).await;
    let tls = client(&pki, false);
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for (what, auth) in [
        ("no credentials", String::new()),
        (
            "wrong password",
            format!("Authorization: Basic {}\r\n", b64("prometheus:nope")),
        ),
        (
            "unknown user",
            format!(
                "Authorization: Basic {}\r\n",
                b64(&format!("root:{PASSWORD}"))
            ),
        ),
    ] {
        let request = format!("GET /metrics HTTP/1.0\r\nHost: t\r\n{auth}\r\n");
        let reply = exchange(addr, request.as_bytes(), Some(&tls)).await;
        assert!(reply.starts_with("HTTP/1.0 401"), "{what}: {reply}");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains("www-authenticate: basic"),
            "{what}: {reply}"
        );
        assert!(!reply.contains("fuselock_"), "{what}: {reply}");
    }
    let reply = exchange(addr, &authed_get(), Some(&tls)).await;
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{reply}"
    );
    assert!(reply.ends_with(BODY), "{reply}");
    // /healthz too: an unauthenticated answer is one anyone can keep a
    // connection open for.
    let reply = exchange(addr, b"GET /healthz HTTP/1.0\r\n\r\n", Some(&tls)).await;
    assert!(reply.starts_with("HTTP/1.0 401"), "{reply}");
    let healthz = String::from_utf8(authed_get())
        .expect("ascii")
        .replace("/metrics", "/healthz");
    let reply = exchange(addr, healthz.as_bytes(), Some(&tls)).await;
    assert!(
        reply.starts_with("HTTP/1.0 200") && reply.ends_with("ok\n"),
        "{reply}"
    );
}

/// A connection from `ip` (a loopback address other than 127.0.0.1
/// works on Linux without configuration).
async fn connect_from(ip: &str, addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{ip}:0").parse().expect("addr"))
        .expect("bind the client address");
    socket.connect(addr).await.expect("connect")
}

/// Whatever arrives on `s` until the server closes it, or `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut out))
        .await
        .ok()
        .map(|_| String::from_utf8_lossy(&out).into_owned())
}

/// One host holding connections gets no more than its share; another
/// host is still served, and so is the first once it lets go.
#[tokio::test]
async fn one_peer_cannot_take_every_connection() {
    let limits = Limits {
        max_connections_per_peer: 4,
        header_read_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let (addr, _stop, _web) = start(limits, WebConfig::plain()).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from("127.0.0.1", addr).await;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
            .await
            .expect("half a request");
        held.push(s);
    }
    // The fifth from the same host is closed at once, unanswered.
    let mut extra = connect_from("127.0.0.1", addr).await;
    let _ = extra.write_all(GET).await;
    let reply = read_until_closed(&mut extra, Duration::from_secs(5))
        .await
        .expect("the extra connection was not closed");
    assert_eq!(reply, "", "the extra connection was served");
    // Another host is served meanwhile.
    let mut other = connect_from("127.0.0.2", addr).await;
    other.write_all(GET).await.expect("send");
    let reply = read_until_closed(&mut other, Duration::from_secs(10))
        .await
        .expect("reply");
    assert!(
        reply.starts_with("HTTP/1.0 200") && reply.ends_with(BODY),
        "{reply}"
    );
    // Once the first host lets go, it is served again.
    drop(held);
    let reply = exchange(addr, GET, None).await;
    assert!(reply.ends_with(BODY), "{reply}");
}

/// A kept-alive connection that asks nothing more is closed after the
/// idle timeout, long before its lifetime ends.
#[tokio::test]
async fn idle_kept_alive_connections_are_closed() {
    // hyper's header timeout long, so that only the idle timeout can
    // be what closes it.
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let (addr, _stop, _web) = start(limits, WebConfig::plain()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("send");
    let t = Instant::now();
    let reply = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the idle connection was never closed");
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with(BODY),
        "{reply}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn without_a_client_certificate_the_handshake_fails_when_one_is_required() {
    let pki = Pki::new("mtls");
    let yaml =
        format!("{GOOD}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n");
    let (addr, _stop, _web) = start(Limits::default(), web(&pki, "mtls.yml", &yaml)).await;
    // TLS 1.3 clients finish before the server checks them: the refusal
    // is the first thing read.
    let name = ServerName::try_from("localhost").expect("name");
    let s = TcpStream::connect(addr).await.expect("connect");
    let refused = async {
        let mut s = client(&pki, false).connect(name, s).await?;
        s.write_all(GET).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map(|_| out)
    };
    match tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("in time")
    {
        Ok(out) => panic!(
            "served without a client certificate: {:?}",
            String::from_utf8_lossy(&out)
        ),
        Err(e) => println!("without a client certificate: {e}"),
    }
    let reply = exchange(addr, GET, Some(&client(&pki, true))).await;
    assert!(reply.ends_with(BODY), "{reply:?}");
}

#[tokio::test]
async fn a_new_certificate_serves_the_next_connection() {
    let pki = Pki::new("rotate");
    let (addr, _stop, tx) = start(Limits::default(), WebConfig::plain()).await;
    assert!(exchange(addr, GET, None).await.ends_with(BODY));
    tx.send_replace(Arc::new(web(&pki, "tls.yml", GOOD)));
    assert!(!exchange(addr, GET, None).await.contains("HTTP/1"));
    assert!(exchange(addr, GET, Some(&client(&pki, false)))
        .await
        .ends_with(BODY));
}

#[tokio::test]
async fn malformed_and_unexpected_requests_get_errors() {
    let (addr, _stop, _web) = start(Limits::default(), WebConfig::plain()).await;
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
        let reply = exchange(addr, request, None).await;
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
    let reply = exchange(addr, &huge, None).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");
    // And the server still serves.
    assert!(exchange(addr, GET, None).await.ends_with(BODY));
}
