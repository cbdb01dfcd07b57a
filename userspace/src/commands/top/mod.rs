//! `fuselock top`: the live terminal UI, or a recorded run played back.

mod columns;
mod draw;
mod event;
mod rows;
mod state;
mod terminal;

use std::{
    io::{BufRead, IsTerminal as _},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ratatui::crossterm::event::{MouseButton, MouseEventKind};

#[cfg(test)]
pub(crate) use self::{draw::draw as draw_frame, state::App as TopApp};
use self::{event::Event, state::App, terminal::TerminalGuard};
use fuselock_base::UsageError;

use crate::{
    cli::TopArgs, collect::Collector, commands::signals::Endings, kernel::probes,
    model::snapshot::Snapshot, wire::replay,
};

/// Sends [`Event::Ended`] when SIGTERM, SIGINT or SIGHUP arrives (Ctrl-C
/// in raw mode arrives as a key instead), so the loop exits through the
/// terminal guard. The signals are registered before this returns. The
/// runtime lives and dies on that thread: `demo --top` calls this inside a
/// runtime of its own, where another could be neither blocked on nor dropped.
fn spawn_endings(tx: mpsc::Sender<Event>) -> Result<()> {
    let (ready_tx, ready) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let installed = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("starting the signal thread's runtime")
            .and_then(|runtime| {
                let endings = runtime.block_on(async { Endings::install_with_hangup() })?;
                Ok((runtime, endings))
            });
        let (runtime, mut endings) = match installed {
            Ok(installed) => {
                let _ = ready_tx.send(Ok(()));
                installed
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        runtime.block_on(endings.recv());
        let _ = tx.send(Event::Ended);
    });
    ready
        .recv()
        .context("the signal thread ended before installing its handlers")?
}

/// Feeds a recording's snapshots at the refresh interval, reading each
/// line as its turn comes: the first is in hand (its errors come before the
/// terminal is taken over); a bad line later ends the view with its error.
fn spawn_replay(
    first: Snapshot,
    rest: replay::Replay<impl BufRead + Send + 'static>,
    interval: Duration,
    tx: mpsc::Sender<Event>,
) {
    std::thread::spawn(move || {
        if tx.send(Event::Snapshot(Box::new(first))).is_err() {
            return;
        }
        for next in rest {
            let due = Instant::now() + interval;
            let ev = match next {
                Ok(s) => Event::Snapshot(Box::new(s)),
                Err(e) => Event::Failed(e),
            };
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if tx.send(ev).is_err() {
                return;
            }
        }
        let _ = tx.send(Event::SourceDone);
    });
}

/// Takes a snapshot every interval until the UI goes away.
fn spawn_live(mut collector: Collector, interval: Duration, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || loop {
        let ev = match collector.snapshot(false) {
            Ok(s) => Event::Snapshot(Box::new(s)),
            Err(e) => Event::Failed(e),
        };
        if tx.send(ev).is_err() {
            return;
        }
        std::thread::sleep(interval);
    });
}

pub fn run(args: TopArgs) -> Result<i32> {
    run_with(args, || Ok(()))
}

/// [`run`], with `during` started once the probes are attached (and before
/// the terminal is taken over) and what it returns dropped before they
/// detach: `demo --top`'s workload, whose
/// writes should neither miss the probes nor race their patching in and
/// out of kernel text.
///
/// A live view drops its privileges right after attaching, before any
/// thread of its own starts and before `during` runs: nothing after the
/// attach needs more than CAP_BPF.
pub fn run_with<G>(args: TopArgs, during: impl FnOnce() -> Result<G>) -> Result<i32> {
    if !std::io::stdout().is_terminal() {
        return Err(UsageError(
            "fuselock top draws a terminal UI but stdout is not a terminal; use `fuselock stat` (or `stat --json`) for scripts and logs"
                .into(),
        )
        .into());
    }
    let (tx, rx) = mpsc::channel();
    // Keep the probes attached (and detached on return) for a live view.
    let _attached;
    let source = match &args.replay {
        Some(path) => {
            let (first, rest) = replay::open(path)?;
            spawn_replay(first, rest, args.interval, tx.clone());
            format!(
                "replay {}",
                path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                )
            )
        }
        None => {
            let mut attached =
                probes::attach(&crate::commands::session::attach_options(&args.probes)?)?;
            let collector = Collector::new(&mut attached)?;
            crate::kernel::privileges::drop_to_bpf_only()?;
            _attached = attached;
            spawn_live(collector, args.interval, tx.clone());
            "live".to_owned()
        }
    };
    spawn_endings(tx.clone())?;
    // Declared after `_attached`, so dropped before it.
    let guest = during()?;
    let stop = Arc::new(AtomicBool::new(false));
    let input = event::spawn_input(tx, stop.clone());
    let result = ui_loop(App::new(source, args.interval), &rx);
    stop.store(true, Ordering::Relaxed);
    let _ = input.join();
    drop(guest);
    result
}

fn ui_loop(mut app: App, rx: &mpsc::Receiver<Event>) -> Result<i32> {
    let mut guard = TerminalGuard::enter().context("setting up the terminal")?;
    let mut failure = None;
    // The screen shows nothing that moves by itself: it is drawn again only
    // after something happened, not on every wake-up.
    let mut stale = true;
    loop {
        if stale {
            guard
                .terminal
                .draw(|f| draw::draw(f, &app))
                .context("drawing")?;
        }
        let mut ev = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => Some(ev),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        stale = ev.is_some();
        // Snapshots queued behind this one make it stale: skip to the
        // newest, so a slow frame never builds a backlog (rates use the
        // snapshots' own timestamps, so skipping one only widens a period).
        while matches!(ev, Some(Event::Snapshot(_))) {
            match rx.try_recv() {
                Ok(next @ Event::Snapshot(_)) => ev = Some(next),
                Ok(other) => {
                    if let Some(Event::Snapshot(s)) = ev.take() {
                        app.on_snapshot(*s);
                    }
                    ev = Some(other);
                }
                Err(_) => break,
            }
        }
        match ev {
            Some(Event::Key(k)) => app.on_key(k),
            Some(Event::Snapshot(s)) => app.on_snapshot(*s),
            Some(Event::SourceDone) => app.finished = true,
            Some(Event::Failed(e)) => {
                failure = Some(e);
                break;
            }
            Some(Event::Ended) => break,
            Some(Event::Mouse(m)) if app.mouse => match m.kind {
                MouseEventKind::ScrollDown => app.scroll(1),
                MouseEventKind::ScrollUp => app.scroll(-1),
                // Rows start below the 3-line header, the border and the column titles.
                MouseEventKind::Down(MouseButton::Left) => {
                    app.select(usize::from(m.row.saturating_sub(5)))
                }
                _ => {}
            },
            Some(Event::Mouse(_) | Event::Resize) | None => {}
        }
        guard
            .set_mouse(app.mouse)
            .context("switching mouse capture")?;
        if app.quit {
            break;
        }
    }
    drop(guard);
    match failure {
        Some(e) => Err(e),
        None => Ok(0),
    }
}
