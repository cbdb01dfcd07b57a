//! The terminal, restored whatever happens: a RAII guard undoes raw mode,
//! the alternate screen and mouse capture on drop, and a panic hook
//! restores the terminal *before* the panic message is printed, so the
//! message lands on the normal screen (bottom's order, not bpftop's).

use std::io::{self, Stdout};

use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{DisableMouseCapture, EnableMouseCapture},
        execute,
        terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen},
    },
    Terminal,
};

pub type Term = Terminal<CrosstermBackend<Stdout>>;

/// Undoes every step of [`TerminalGuard::enter`]; failures are reported,
/// never panicked on.
fn restore() {
    let mut out = io::stdout();
    let steps: [(&str, io::Result<()>); 4] = [
        ("disable mouse capture", execute!(out, DisableMouseCapture)),
        (
            "leave the alternate screen",
            execute!(out, LeaveAlternateScreen),
        ),
        ("show the cursor", execute!(out, cursor::Show)),
        ("leave raw mode", disable_raw_mode()),
    ];
    for (what, result) in steps {
        if let Err(e) = result {
            eprintln!("fuselock: could not {what}: {e}");
        }
    }
}

pub struct TerminalGuard {
    pub terminal: Term,
    mouse: bool,
}

impl TerminalGuard {
    pub fn enter() -> io::Result<TerminalGuard> {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            default_hook(info);
        }));
        enable_raw_mode()?;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        Ok(TerminalGuard {
            terminal,
            mouse: false,
        })
    }

    pub fn set_mouse(&mut self, on: bool) -> io::Result<()> {
        if on != self.mouse {
            if on {
                execute!(io::stdout(), EnableMouseCapture)?;
            } else {
                execute!(io::stdout(), DisableMouseCapture)?;
            }
            self.mouse = on;
        }
        Ok(())
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}
