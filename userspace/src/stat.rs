//! `fuselock stat`: snapshots as a table or JSON lines, for a command's
//! lifetime or every interval until interrupted.

use std::{
    io::{self, Write},
    os::unix::process::ExitStatusExt,
    process::ExitStatus,
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::StatArgs,
    collector::Collector,
    probes::{self, AttachOptions},
    session,
    snapshot::Snapshot,
    table,
};

fn emit(snap: &Snapshot, json: bool) -> Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if json {
        serde_json::to_writer(&mut out, snap).context("writing JSON")?;
        writeln!(out)?;
    } else {
        table::write_table(&mut out, snap)?;
        writeln!(out)?;
    }
    out.flush().context("writing to stdout")
}

/// The shell's convention for a child's exit status.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

pub async fn run(args: StatArgs) -> Result<i32> {
    let opts = AttachOptions::from(&args.probes);
    let mut attached = probes::attach(&opts)?;
    let _logs = session::forward_probe_logs(&mut attached);
    let mut collector = Collector::new(&mut attached)?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    if let Some((program, rest)) = args.command.split_first() {
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .spawn()
            .with_context(|| format!("cannot run `{}`", program.to_string_lossy()))?;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.context("waiting for the command")?,
                // Ctrl-C reaches the whole foreground group: the command
                // decides what it means; we report once it has exited.
                _ = sigint.recv() => {}
                _ = sigterm.recv() => { let _ = child.start_kill(); }
            }
        };
        emit(&collector.snapshot(true)?, args.json)?;
        return Ok(exit_code(status));
    }

    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = ticker.tick() => emit(&collector.snapshot(false)?, args.json)?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    emit(&collector.snapshot(true)?, args.json)?;
    Ok(0)
}
