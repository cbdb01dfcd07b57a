//! Drives a terminal program as a person would: tmux runs it in a detached
//! session, keys are typed with send-keys and the screen is read back with
//! capture-pane.

use std::{process::Command, thread, time::Duration};

pub struct Tmux {
    pub session: String,
    /// How long `wait_for` waits.
    patience: Duration,
}

impl Tmux {
    /// A detached tmux session of `w`×`h` running `cmd`; `None` (and a
    /// loud SKIPPED) where tmux is not installed.
    pub fn start(cmd: &str, w: u16, h: u16) -> Option<Tmux> {
        match Command::new("tmux").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "SKIPPED: tmux -V failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return None;
            }
            Err(e) => {
                eprintln!("SKIPPED: tmux not installed ({e})");
                return None;
            }
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = format!("fuselock-test-{}-{n}", std::process::id());
        let ok = Command::new("tmux")
            .args([
                "-L",
                &session,
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                &w.to_string(),
                "-y",
                &h.to_string(),
                cmd,
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux new-session failed");
        Some(Tmux {
            session,
            patience: Duration::from_secs(10),
        })
    }

    /// Waits up to `patience` in `wait_for` (the VM emulates its CPU).
    pub fn with_patience(mut self, patience: Duration) -> Tmux {
        self.patience = patience;
        self
    }

    /// Whether the program in the pane has the alternate screen up.
    pub fn alternate_screen(&self) -> bool {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.session,
                "display-message",
                "-p",
                "-t",
                &self.session,
                "#{alternate_on}",
            ])
            .output()
            .expect("display-message");
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// Types each key (tmux key names), pausing after each.
    pub fn keys(&self, keys: &[&str]) {
        for k in keys {
            let ok = Command::new("tmux")
                .args(["-L", &self.session, "send-keys", "-t", &self.session, k])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "send-keys {k}");
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// The pane's text now.
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.session,
                "capture-pane",
                "-p",
                "-t",
                &self.session,
            ])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen contains `needle`.
    pub fn wait_for(&self, needle: &str) -> String {
        let tries = self.patience.as_millis() / 200;
        for _ in 0..tries {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!("`{needle}` never appeared:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Each test has its own tmux server (-L): parallel tests never share one.
        let _ = Command::new("tmux")
            .args(["-L", &self.session, "kill-server"])
            .status();
    }
}
