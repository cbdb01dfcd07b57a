//! Loading the web config again when it or a file it names changes, or on
//! SIGHUP, so a rotated certificate needs no restart.
//!
//! A file that no longer loads fails closed: every request gets 503 until
//! it loads again, and the log says why at error level. Serving on under
//! the old config would keep a password working after its user was removed
//! from the file.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use super::{
    access::exposure_warning,
    stamp::stamps,
    web_config::{KeptFiles, WebConfig},
};

/// Watches `path` and the files of the config in `current`, every `every`,
/// and loads `path` again when they changed and then stayed unchanged for
/// one more look (a rotation writes the certificate and the key one after
/// the other), or at once when `kick` fires (SIGHUP). Runs until `kick`
/// closes.
pub async fn reload(
    path: PathBuf,
    kept: Arc<KeptFiles>,
    listen: SocketAddr,
    current: watch::Sender<Arc<WebConfig>>,
    mut kick: mpsc::Receiver<()>,
    every: Duration,
) {
    let mut loaded = current.borrow().stamps.clone();
    let mut seen = loaded.clone();
    let mut tick = tokio::time::interval(every);
    loop {
        let forced = tokio::select! {
            k = kick.recv() => match k {
                Some(()) => true,
                None => return,
            },
            _ = tick.tick() => false,
        };
        let files = current.borrow().files.clone();
        let now = stamps(&files);
        let settled = now == seen;
        seen = now.clone();
        if !forced && (now == loaded || !settled) {
            continue;
        }
        loaded = now;
        let why = if forced { "SIGHUP" } else { "a file changed" };
        load_into(&path, &kept, listen, &current, why);
    }
}

fn load_into(
    path: &Path,
    kept: &KeptFiles,
    listen: SocketAddr,
    current: &watch::Sender<Arc<WebConfig>>,
    why: &str,
) {
    match WebConfig::load_kept(path, kept) {
        Ok(config) => {
            // The new file may protect the port less than the old one did.
            if let Some(warning) = exposure_warning(listen, &config) {
                log::warn!("{warning}");
            }
            eprintln!(
                "fuselock: web config loaded again from {} ({why})",
                path.display()
            );
            current.send_replace(Arc::new(config));
        }
        Err(e) => {
            log::error!("{e} ({why}): answering every request with 503 until it loads again");
            let failed = WebConfig::failed(&current.borrow(), e.to_string());
            current.send_replace(Arc::new(failed));
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::{routing::get, Router};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::http::{
        access::protect,
        server::{serve, Limits},
        web_config::tests::{checked, hash, Pki, GOOD, PASSWORD},
    };

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        for _ in 0..100 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn start_reloader(
        path: &Path,
    ) -> (
        watch::Receiver<Arc<WebConfig>>,
        mpsc::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let kept = Arc::new(KeptFiles::default());
        let first = Arc::new(WebConfig::load_kept(path, &kept).expect("loads"));
        let (tx, rx) = watch::channel(first);
        let (kick, kicked) = mpsc::channel(1);
        let listen = "127.0.0.1:9948".parse().expect("addr");
        let task = tokio::spawn(reload(
            path.to_owned(),
            kept,
            listen,
            tx,
            kicked,
            Duration::from_millis(50),
        ));
        (rx, kick, task)
    }

    #[tokio::test]
    async fn changes_and_sighup_load_the_config_again_and_bad_files_fail_closed() {
        let pki = Pki::new("reload");
        let path = checked(&pki, "web.yml", GOOD);
        let (rx, kick, task) = start_reloader(&path);
        let first = rx.borrow().clone();

        // A new certificate and key (another CA's): picked up by itself.
        let other = Pki::new("reload-new");
        std::fs::copy(other.path("server.crt"), pki.path("server.crt")).expect("copy");
        std::fs::copy(other.path("server.key"), pki.path("server.key")).expect("copy");
        until("the new certificate", || !Arc::ptr_eq(&rx.borrow(), &first)).await;
        assert!(rx.borrow().failed.is_none());

        // A key that does not match: nothing is served any more.
        std::fs::copy(pki.path("other.key"), pki.path("server.key")).expect("copy");
        until("the failure", || rx.borrow().failed.is_some()).await;
        let why = rx.borrow().failed.clone().unwrap_or_default();
        assert!(why.contains("server.key"), "{why}");

        // Fixed, and basic auth added; then SIGHUP loads it at once.
        std::fs::copy(other.path("server.key"), pki.path("server.key")).expect("copy");
        checked(
            &pki,
            "web.yml",
            &format!("{GOOD}basic_auth_users:\n  prometheus: {}\n", hash()),
        );
        kick.send(()).await.expect("kick");
        until("basic auth", || rx.borrow().auth.is_some()).await;
        assert!(rx.borrow().failed.is_none());
        drop(kick);
        task.await.expect("reloader ends when its kick closes");
    }

    /// The status of GET `path` with the test password.
    async fn status(addr: std::net::SocketAddr, path: &str) -> String {
        use base64::Engine as _;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("prometheus:{PASSWORD}"));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: t\r\nAuthorization: Basic {token}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        out.lines().next().unwrap_or_default().to_owned()
    }

    /// A user is removed from the file, which then fails to load: the old
    /// password must not keep working. Every request gets 503 until the
    /// file loads again, and then 200.
    #[tokio::test]
    async fn a_config_that_fails_to_load_again_refuses_every_request_until_fixed() {
        let pki = Pki::new("fail-closed");
        let good = format!("basic_auth_users:\n  prometheus: {}\n", hash());
        let path = checked(&pki, "web.yml", &good);
        let (rx, kick, _task) = start_reloader(&path);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = protect(
            Router::new()
                .route("/metrics", get(|| async { "fuselock_writes_total 1\n" }))
                .route("/healthz", get(|| async { "ok\n" })),
            rx.clone(),
        );
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, Limits::default(), rx.clone(), async {
            let _ = stopped.await;
        }));
        assert_eq!(status(addr, "/metrics").await, "HTTP/1.0 200 OK");

        // The user's line is being edited out; the file is broken meanwhile.
        std::fs::write(&path, "basic_auth_users:\n  prometheus: [\n").expect("break");
        until("the failure", || rx.borrow().failed.is_some()).await;
        for path in ["/metrics", "/healthz"] {
            assert_eq!(
                status(addr, path).await,
                "HTTP/1.0 503 Service Unavailable",
                "{path}"
            );
        }

        std::fs::write(&path, &good).expect("fix");
        kick.send(()).await.expect("kick");
        until("the fix", || rx.borrow().failed.is_none()).await;
        assert_eq!(status(addr, "/metrics").await, "HTTP/1.0 200 OK");
    }
}
