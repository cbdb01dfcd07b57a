//! Pieces every attached command shares.

use aya_log::EbpfLogger;
use log::warn;
use tokio::{io::unix::AsyncFd, task::JoinHandle};

use crate::{
    cli::ProbeArgs,
    probes::{AttachOptions, Attached},
};

impl From<&ProbeArgs> for AttachOptions {
    fn from(a: &ProbeArgs) -> AttachOptions {
        AttachOptions {
            mode: a.probe_mode,
            max_inodes: a.max_inodes,
            contention: a.contention,
            debug_log: a.debug_probes,
            inflight_max_age: std::time::Duration::from_secs(u64::from(a.inflight_max_age)),
        }
    }
}

/// Forwards the programs' aya-log records to our logger until dropped.
pub fn forward_probe_logs(attached: &mut Attached) -> Option<JoinHandle<()>> {
    let logger = match EbpfLogger::init(&mut attached.ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!("probe logs unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the fd is the ring buffer map's, owned by `logger`, which the
    // AsyncFd owns for its whole life; nothing else closes it.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("probe logs unavailable: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
