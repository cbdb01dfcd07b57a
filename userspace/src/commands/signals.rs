//! The signals that end a command, handled one way everywhere: tokio's
//! signal streams, registered before the command needs them and awaited
//! beside its other work. `top`, whose UI loop is synchronous, awaits them on
//! a thread of its own and receives the result as an event.

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Which signal asked a command to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// SIGINT: Ctrl-C, which reaches the whole foreground process group, so
    /// a command run under fuselock decides for itself what it means.
    Interrupt,
    /// SIGTERM: fuselock is asked to stop, and stops what it runs.
    Terminate,
    /// SIGHUP: the terminal went away (only where it ends the command).
    Hangup,
}

/// SIGINT and SIGTERM, and SIGHUP where it ends the command, registered
/// from the moment this is made (needs a tokio runtime with I/O enabled).
pub struct Endings {
    interrupt: Signal,
    terminate: Signal,
    hangup: Option<Signal>,
}

impl Endings {
    /// SIGINT and SIGTERM. SIGHUP keeps its meaning (`export` reloads its
    /// web config on it).
    pub fn install() -> Result<Endings> {
        Ok(Endings {
            interrupt: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            hangup: None,
        })
    }

    /// SIGINT, SIGTERM and SIGHUP (for a command bound to its terminal, or
    /// one that must clean up before it ends, as `verify --exercise`).
    pub fn install_with_hangup() -> Result<Endings> {
        Ok(Endings {
            hangup: Some(signal(SignalKind::hangup()).context("installing SIGHUP handler")?),
            ..Endings::install()?
        })
    }

    /// The next of them to arrive.
    pub async fn recv(&mut self) -> Ending {
        let Endings {
            interrupt,
            terminate,
            hangup,
        } = self;
        let hangup = async {
            match hangup {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.recv() => Ending::Interrupt,
            _ = terminate.recv() => Ending::Terminate,
            _ = hangup => Ending::Hangup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SIGHUP, once caught, ends what waits on the endings instead of
    /// killing the process (the default), so that clean-up runs.
    #[tokio::test]
    async fn a_hangup_is_an_ending_once_installed() {
        let mut endings = Endings::install_with_hangup().expect("install");
        // SAFETY: raise(3) of a signal that now has a handler.
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        let ending = tokio::time::timeout(std::time::Duration::from_secs(10), endings.recv())
            .await
            .expect("SIGHUP was not received");
        assert_eq!(ending, Ending::Hangup);
    }
}
