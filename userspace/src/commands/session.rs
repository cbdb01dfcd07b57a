//! Pieces every attached command shares: one attached session, its
//! collector and its log forwarder.

use aya_log::EbpfLogger;
use log::warn;
use tokio::{io::unix::AsyncFd, task::JoinHandle};

use crate::{
    cli::ProbeArgs,
    collect::{
        cgroups::{self, WatchOnly},
        Collector,
    },
    kernel::probes::{self, AttachOptions, Attached},
};

/// Probes attached once, and the collector reading their maps. A command
/// made of several steps (`demo`) runs them all on one session, so it
/// attaches once and can drop its privileges after that one attach.
pub struct Session {
    pub collector: Collector,
    /// The log forwarder, running while the programs are attached.
    _logs: Option<JoinHandle<()>>,
    /// The programs: dropping them detaches.
    _attached: Attached,
}

impl Session {
    /// Loads and attaches the probes (needs a tokio runtime for the logs).
    pub fn start(args: &ProbeArgs) -> anyhow::Result<Session> {
        if args.inflight_max_age.is_some() {
            warn!(
                "--inflight-max-age has no effect any more: in-flight records live in each \
                 task's storage and go with the task"
            );
        }
        let mut attached = probes::attach(&attach_options(args)?)?;
        let logs = forward_probe_logs(&mut attached);
        let collector = Collector::new(&mut attached)?;
        Ok(Session {
            collector,
            _logs: logs,
            _attached: attached,
        })
    }
}

/// What the probe flags ask of the attach; `--cgroup` and `--pod` are
/// resolved to a cgroup here, and fail with a message saying why.
pub fn attach_options(a: &ProbeArgs) -> anyhow::Result<AttachOptions> {
    let only = match (&a.cgroup, &a.pod) {
        (Some(path), _) => Some(cgroups::filter_for(&WatchOnly::Cgroup(path.clone()))?),
        (None, Some(pod)) => Some(cgroups::filter_for(pod)?),
        (None, None) => None,
    };
    if let Some((_, path)) = &only {
        log::info!("counting only the tasks under the cgroup {path}");
    }
    Ok(AttachOptions {
        mode: a.probe_mode,
        max_inodes: a.max_inodes,
        contention: a.contention,
        debug_log: a.debug_probes,
        ablate: a.ablate.clone(),
        only,
    })
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
