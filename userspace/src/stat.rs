//! `fuselock stat` and `fuselock record`: snapshots as a table or JSON
//! lines, for a command's lifetime or every interval until interrupted.

use std::{
    ffi::OsString,
    io::{self, Write},
    os::unix::process::ExitStatusExt,
    process::ExitStatus,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::{ProbeArgs, RecordArgs, StatArgs},
    collector::Collector,
    probes::{self, AttachOptions},
    session,
    snapshot::Snapshot,
    stream::{Encoder, Lines},
    table,
};

/// Where snapshots go and how.
pub struct Sink {
    out: Box<dyn Write + Send>,
    /// JSON lines (with this encoder), or a table.
    json: Option<Encoder>,
}

impl Sink {
    fn emit(&mut self, snap: &Snapshot) -> Result<()> {
        if let Some(encoder) = &mut self.json {
            serde_json::to_writer(&mut self.out, &encoder.encode(snap)).context("writing JSON")?;
            writeln!(self.out)?;
        } else {
            table::write_table(&mut self.out, snap)?;
            writeln!(self.out)?;
        }
        self.out.flush().context("writing snapshots")
    }
}

/// The shell's convention for a child's exit status.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// One observation run.
struct Observe {
    probes: ProbeArgs,
    interval: Duration,
    command: Vec<OsString>,
    /// Emit every interval even while a command runs (record does; stat
    /// prints only the final counts then).
    periodic_with_command: bool,
    sink: Sink,
}

async fn observe(mut o: Observe) -> Result<i32> {
    let mut attached = probes::attach(&AttachOptions::from(&o.probes))?;
    let _logs = session::forward_probe_logs(&mut attached);
    let mut collector = Collector::new(&mut attached)?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut ticker = tokio::time::interval(o.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    if let Some((program, rest)) = o.command.split_first() {
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .spawn()
            .with_context(|| format!("cannot run `{}`", program.to_string_lossy()))?;
        // The command keeps the caller's privileges; fuselock does not need them.
        crate::privileges::drop_all_but_bpf()?;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.context("waiting for the command")?,
                _ = ticker.tick(), if o.periodic_with_command => o.sink.emit(&collector.snapshot(false)?)?,
                // Ctrl-C reaches the whole foreground group: the command
                // decides what it means; we report once it has exited.
                _ = sigint.recv() => {}
                _ = sigterm.recv() => { let _ = child.start_kill(); }
            }
        };
        o.sink.emit(&collector.snapshot(true)?)?;
        return Ok(exit_code(status));
    }

    crate::privileges::drop_all_but_bpf()?;
    // The first tick is immediate: a snapshot right after attaching tells
    // scripts (and people) that fuselock is live.
    loop {
        tokio::select! {
            _ = ticker.tick() => o.sink.emit(&collector.snapshot(false)?)?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    o.sink.emit(&collector.snapshot(true)?)?;
    Ok(0)
}

pub async fn run(args: StatArgs) -> Result<i32> {
    observe(Observe {
        probes: args.probes,
        interval: args.interval,
        command: args.command,
        periodic_with_command: false,
        sink: Sink {
            out: Box::new(io::stdout()),
            json: args.json.then(|| {
                Encoder::new(if args.every_entry {
                    Lines::Whole
                } else {
                    Lines::Deltas
                })
            }),
        },
    })
    .await
}

/// `record FILE`: the `stat --json` stream into a file, for `top --replay`.
pub async fn record(args: RecordArgs) -> Result<i32> {
    let file = std::fs::File::create(&args.file)
        .map_err(|e| crate::UsageError(format!("cannot create {}: {e}", args.file.display())))?;
    observe(Observe {
        probes: args.probes,
        interval: args.interval,
        command: args.command,
        periodic_with_command: true,
        sink: Sink {
            out: Box::new(io::BufWriter::new(file)),
            json: Some(Encoder::new(Lines::Deltas)),
        },
    })
    .await
}
