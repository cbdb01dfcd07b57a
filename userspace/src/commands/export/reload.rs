//! Loading the web config again when it or a file it names changes, or on
//! SIGHUP, so a rotated certificate needs no restart. A file that no longer
//! loads leaves the config in force as it was, and the log says why.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use super::{access::exposure_warning, web_config::WebConfig};

/// What identifies a file's contents without reading it. A Kubernetes
/// secret update swaps a symlink: following it changes the inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stamp {
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    Missing(std::io::ErrorKind),
}

pub fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| match std::fs::metadata(f) {
            Ok(m) => Stamp::File {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            },
            Err(e) => Stamp::Missing(e.kind()),
        })
        .collect()
}

/// Watches `path` and the files of the config in `current`, every `every`,
/// and loads `path` again when they changed and then stayed unchanged for
/// one more look (a rotation writes the certificate and the key one after
/// the other), or at once when `kick` fires (SIGHUP). Runs until `kick`
/// closes.
pub async fn reload(
    path: PathBuf,
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
        load_into(&path, listen, &current, why);
    }
}

fn load_into(path: &Path, listen: SocketAddr, current: &watch::Sender<Arc<WebConfig>>, why: &str) {
    match WebConfig::load(path) {
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
        Err(e) => log::warn!("{e}; still serving with the web config loaded before"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::export::web_config::tests::{checked, hash, Pki, GOOD};

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        for _ in 0..100 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn changes_and_sighup_load_the_config_again_and_bad_files_keep_the_old() {
        let pki = Pki::new("reload");
        let path = checked(&pki, "web.yml", GOOD);
        let first = Arc::new(WebConfig::load(&path).expect("loads"));
        let (tx, rx) = watch::channel(first.clone());
        let (kick, kicked) = mpsc::channel(1);
        let listen = "127.0.0.1:9948".parse().expect("addr");
        let task = tokio::spawn(reload(
            path.clone(),
            listen,
            tx,
            kicked,
            Duration::from_millis(50),
        ));

        // A new certificate and key (another CA's): picked up by itself.
        let other = Pki::new("reload-new");
        std::fs::copy(other.path("server.crt"), pki.path("server.crt")).expect("copy");
        std::fs::copy(other.path("server.key"), pki.path("server.key")).expect("copy");
        until("the new certificate", || !Arc::ptr_eq(&rx.borrow(), &first)).await;
        let second = rx.borrow().clone();

        // A key that does not match: the old config stays.
        std::fs::copy(pki.path("other.key"), pki.path("server.key")).expect("copy");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            Arc::ptr_eq(&rx.borrow(), &second),
            "a bad key replaced the config"
        );

        // Fixed, and basic auth added; then SIGHUP loads it at once.
        std::fs::copy(other.path("server.key"), pki.path("server.key")).expect("copy");
        checked(
            &pki,
            "web.yml",
            &format!("{GOOD}basic_auth_users:\n  prometheus: {}\n", hash()),
        );
        kick.send(()).await.expect("kick");
        until("basic auth", || rx.borrow().auth.is_some()).await;
        drop(kick);
        task.await.expect("reloader ends when its kick closes");
    }
}
