//! Runs of fuselock's programs that the kernel skipped: what makes counts
//! incomplete without any map saying so.
//!
//! - Every program's `recursion_misses` (`/proc/self/fdinfo/FD` of its
//!   fd): an fentry/fexit program skipped because the same program was
//!   already active on the CPU (a preempted writer inside it), or, from
//!   Linux 6.7, a kprobe program skipped because another BPF kprobe program
//!   was running on the CPU.
//! - In kprobe mode, the return probes' missed hits (`kprobe_profile`):
//!   returns beyond the probe's `maxactive`.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::programs::ProgramFd;
use log::{debug, warn};

use crate::{kernel::kretprobe, kernel::probes::Attached};

/// Duplicates of the attached programs' fds, read at each refresh.
pub struct Misses {
    programs: Vec<(String, ProgramFd)>,
    /// kprobe mode's return probes.
    returns: Option<kretprobe::MissedReturns>,
    /// Whether a read failure was already reported (once is enough).
    warned: bool,
}

/// `recursion_misses` in an fdinfo text; `None` on kernels before 5.12,
/// which do not count them.
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

impl Misses {
    pub fn new(attached: &Attached) -> Misses {
        let programs = attached
            .ebpf
            .programs()
            .filter_map(|(name, prog)| {
                // Programs of the other mode were never loaded: no fd.
                let fd = prog.fd().ok()?.try_clone().ok()?;
                Some((name.to_owned(), fd))
            })
            .collect();
        Misses {
            programs,
            returns: kretprobe::MissedReturns::open(),
            warned: false,
        }
    }

    fn warn_once(&mut self, what: &str) {
        if !self.warned {
            warn!("{what}: skipped probe runs may go uncounted");
            self.warned = true;
        }
    }

    /// Skipped runs so far, all programs together. fdinfo stays readable
    /// after the privilege drop (the process is kept dumpable); a count that
    /// cannot be read is logged at warn level, since counts then claim to be
    /// more complete than they are known to be.
    pub fn read(&mut self) -> u64 {
        let mut total = 0;
        let mut failure = None;
        for (name, fd) in &self.programs {
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let n = recursion_misses(&text).unwrap_or(0);
                    if n > 0 {
                        debug!("{name}: {n} recursion misses");
                    }
                    total += n;
                }
                Err(e) => failure = Some(format!("reading {path} for {name}: {e}")),
            }
        }
        if let Some(what) = failure {
            self.warn_once(&what);
        }
        let returns = match self.returns.as_mut().map(kretprobe::MissedReturns::read) {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                self.warn_once(&format!("reading kprobe_profile: {e}"));
                0
            }
            None => 0,
        };
        total + returns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_recursion_misses() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_id:\t41\n\
                    run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t117\nverified_insns:\t90\n";
        assert_eq!(recursion_misses(text), Some(117));
        assert_eq!(recursion_misses("prog_type:\t26\n"), None);
    }
}
