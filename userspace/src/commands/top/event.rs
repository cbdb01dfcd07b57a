//! Everything that can happen to the UI, as one enum on one channel: the
//! input thread and the snapshot source send, the UI loop receives. Nothing
//! shares a lock with the renderer.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::Sender,
        Arc,
    },
    time::Duration,
};

use ratatui::crossterm::event::{self, Event as TermEvent, KeyEvent, KeyEventKind, MouseEvent};

use crate::model::snapshot::Snapshot;

pub enum Event {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Resize,
    Snapshot(Box<Snapshot>),
    /// The source has no more snapshots (end of a replay).
    SourceDone,
    /// The snapshot source failed: the error `top` exits with (a bad line
    /// of a recording is a usage error, as before the view started).
    Failed(anyhow::Error),
    /// A signal asked fuselock to end.
    Ended,
}

/// Reads the terminal until `stop` is set or the receiver is gone.
pub fn spawn_input(tx: Sender<Event>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => return,
            }
            let ev = match event::read() {
                Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => Event::Key(k),
                Ok(TermEvent::Mouse(m)) => Event::Mouse(m),
                Ok(TermEvent::Resize(..)) => Event::Resize,
                Ok(_) => continue,
                Err(_) => return,
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    })
}
