//! The guest's serial console, read on the host: its lines forwarded (or its
//! bytes, for a full-screen program), the exit marker, oopses and panics.

use std::io::BufReader;

use anyhow::{bail, Result};

use super::*;

/// Line by line, firmware chatter held back: for logs and CI. Lines that
/// start with `keep` (if given) are also handed back.
pub(super) fn forward_lines(
    console: impl std::io::Read,
    out: &mut dyn std::io::Write,
    keep: Option<&str>,
    kept: &mut Vec<String>,
) -> Result<Console> {
    let mut exit = None;
    let mut oops = OopsReader::default();
    // Firmware chatter before our init speaks is kept back, and shown only
    // if the guest never gets that far.
    let mut early: Vec<String> = Vec::new();
    let mut init_started = false;
    let mut boot_panic = false;
    for line in BufReader::new(console).split(b'\n') {
        let line = line.context("reading the console")?;
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        if let Some(code) = line.strip_prefix(EXIT_MARKER) {
            exit = code.trim().parse::<i32>().ok();
            continue;
        }
        oops.line(line);
        if !init_started {
            if let Some(pos) = line.find(INIT_BANNER) {
                init_started = true;
                let _ = writeln!(out, "{}", &line[pos..]);
            } else {
                boot_panic |= line.contains(KERNEL_PANIC);
                early.push(line.to_owned());
            }
            continue;
        }
        if keep.is_some_and(|k| line.starts_with(k)) {
            kept.push(line.to_owned());
        }
        let _ = writeln!(out, "{line}");
    }
    if !init_started {
        for line in &early {
            let _ = writeln!(out, "{line}");
        }
    }
    Ok(Console {
        exit,
        oops: oops.found,
        boot_panic,
    })
}

/// What the kernel prints when it gives up.
pub(super) const KERNEL_PANIC: &str = "Kernel panic - not syncing";

/// What the console said of a run.
pub(super) struct Console {
    /// The command's exit status, if the guest reported one.
    pub(super) exit: Option<i32>,
    pub(super) oops: Option<GuestOops>,
    /// The kernel panicked before our init printed its first line.
    pub(super) boot_panic: bool,
}

impl Console {
    /// The command's status, or why there is none. `qemu_exited` says
    /// whether qemu ended by itself (the guest powered off, or panicked
    /// with `panic=-1` under `-no-reboot`), not killed by the watchdog.
    pub(super) fn status(self, kernel: &str, qemu: &str, qemu_exited: bool) -> Result<i32> {
        match self {
            Console {
                exit: Some(code), ..
            } => Ok(code),
            Console {
                boot_panic: true,
                oops,
                ..
            } if qemu_exited => Err(anyhow::Error::new(GuestNeverBooted {
                kernel: kernel.to_owned(),
                died_of: oops,
            })),
            Console {
                oops: Some(oops), ..
            } => Err(anyhow::Error::new(oops).context(format!(
                "the VM's kernel ({kernel}) oopsed; see the console above"
            ))),
            Console { .. } => bail!(
                "the VM ended without reporting the command's status (qemu: {qemu}); see the console above"
            ),
        }
    }
}

/// Byte for byte, as it comes: a full-screen program in the guest draws
/// without newlines. The exit marker is still picked out of the stream.
pub(super) fn forward_raw(mut stdout: std::process::ChildStdout) -> Result<Option<i32>> {
    use std::io::Read as _;
    let mut out = std::io::stdout();
    let mut tail = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).context("reading the console")?;
        if n == 0 {
            break;
        }
        let _ = out.write_all(&buf[..n]);
        let _ = out.flush();
        tail.push_str(&String::from_utf8_lossy(&buf[..n]));
        if tail.len() > 8192 {
            tail = tail.split_off(tail.len() - 4096);
        }
    }
    Ok(tail.rsplit_once(EXIT_MARKER).and_then(|(_, rest)| {
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    }))
}
