//! `fuselock verify`: does the parallel-direct-writes patch take effect here?

use std::{
    io::IsTerminal as _,
    os::unix::fs::MetadataExt as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{Context as _, Result};
use probes_common::{OpenStats, WritePath};

use fuselock_base::{escape, UsageError};
use fuselock_testkit::exercise;

use crate::{
    cli::VerifyArgs,
    commands::{
        session::Session,
        signals::{Ending, Endings},
    },
    model::snapshot::{kernel_dev, Snapshot},
    model::verdict::{decide, Decision, Evidence},
    wire::verdict::{VerdictFormat, VerdictView},
};

/// The evidence of the exercised scratch file: its passthrough entry and
/// its opens.
fn file_evidence(snap: &Snapshot, report: &exercise::ExerciseReport) -> Result<Evidence> {
    let dev = kernel_dev(report.scratch_dev);
    let shown = escape::path(&report.scratch_file);
    let mine: Vec<_> = snap
        .entries
        .iter()
        .filter(|e| Some(e.dev) == dev && e.ino == report.scratch_ino)
        .collect();
    let passthrough = mine.iter().find(|e| e.path == WritePath::Passthrough);
    let Some(entry) = passthrough else {
        if mine.iter().any(|e| e.path == WritePath::DirectIo) {
            return Err(UsageError(format!(
                "{shown}: its writes took the FUSE direct-io path (the server replies FOPEN_DIRECT_IO), \
                 not passthrough; verify checks passthrough files"
            ))
            .into());
        }
        return Err(UsageError(format!(
            "{shown}: no passthrough writes were seen for it: the server does not open it with \
             FOPEN_PASSTHROUGH (writes went through the page cache)"
        ))
        .into());
    };
    Ok(Evidence {
        passthrough: entry.counters.clone(),
        opens: entry.open.unwrap_or_default(),
        // Skipped runs are not per file: any of them may have been its write.
        recursion_misses: snap.health.recursion_misses,
        waits_measured: snap.source.contention,
    })
}

/// Whether the server opened the user's file as it opened the scratch file:
/// a line saying how they differ, if they do.
fn flags_differ(named: &OpenStats, scratch: &OpenStats, path: &std::path::Path) -> Option<String> {
    let kind = |o: &OpenStats| (o.passthrough > 0, o.direct_io > 0, o.parallel_asked > 0);
    (kind(named) != kind(scratch)).then(|| {
        format!(
            "the server opened {} with open_flags {:#x}, the scratch file with {:#x}: the verdict is the \
             scratch file's, and may not hold for {}",
            escape::path(path),
            named.last_flags_asked,
            scratch.last_flags_asked,
            escape::path(path),
        )
    })
}

pub async fn run(args: VerifyArgs) -> Result<u8> {
    let target = args
        .exercise
        .as_deref()
        .map(exercise::check_target)
        .transpose()?;
    let mut session = Session::start(&args.probes)?;
    let how = match target {
        Some(target) => Watch::Exercise {
            target,
            progress: std::io::stderr().is_terminal() || args.progress,
        },
        None if !args.command.is_empty() => Watch::Command(args.command),
        None => Watch::For(args.duration),
    };
    let outcome = decide_on(&mut session, how).await?;
    crate::kernel::privileges::drop_to_bpf_only()?;
    outcome.print(if args.json {
        VerdictFormat::Json
    } else {
        VerdictFormat::Text
    })?;
    Ok(outcome.decision.exit_code())
}

/// What the verdict is decided on.
pub enum Watch {
    /// A short workload on a scratch file beside the target.
    Exercise {
        target: exercise::Target,
        progress: bool,
    },
    /// The writes made while a command runs.
    Command(Vec<std::ffi::OsString>),
    /// Every FUSE write for a while.
    For(std::time::Duration),
}

/// A verdict and what it was decided on.
pub struct Outcome {
    pub decision: Decision,
    evidence: Evidence,
    snap: Snapshot,
    scope: String,
    exercised: Option<exercise::ExerciseReport>,
    /// How the user's file was opened differently from the scratch file.
    note: Option<String>,
}

impl Outcome {
    /// Prints the verdict in `format`.
    pub fn print(&self, format: VerdictFormat) -> Result<()> {
        let view = VerdictView {
            decision: &self.decision,
            evidence: &self.evidence,
            source: &self.snap.source,
            scope: &self.scope,
            exercise: self.exercised.as_ref(),
            note: self.note.as_deref(),
        };
        let mut out = std::io::stdout().lock();
        view.write(format, &mut out).context("writing the verdict")
    }
}

impl Watch {
    /// The signals that end this watch. An exercise also stops on SIGHUP
    /// (a closed terminal, a dropped ssh session): killed by it, fuselock
    /// would leave its scratch file behind until the next run.
    fn endings(&self) -> Result<Endings> {
        match self {
            Watch::Exercise { .. } => Endings::install_with_hangup(),
            Watch::Command(_) | Watch::For(_) => Endings::install(),
        }
    }
}

/// Watches (or drives) writes on an attached session and decides.
pub async fn decide_on(session: &mut Session, how: Watch) -> Result<Outcome> {
    let mut endings = how.endings()?;

    let mut exercised = None;
    let mut named = None;
    match how {
        Watch::Exercise { target, progress } => {
            named.clone_from(&target.named_file);
            let cancel = Arc::new(AtomicBool::new(false));
            let mut task = tokio::task::spawn_blocking({
                let cancel = Arc::clone(&cancel);
                move || {
                    exercise::run(&target, &cancel, &|done, total| {
                        if progress {
                            eprintln!("verify: {done}/{total} writes");
                        }
                    })
                }
            });
            // A signal (SIGINT, SIGTERM, SIGHUP) stops the writes; the
            // scratch file is removed either way.
            let report = loop {
                tokio::select! {
                    r = &mut task => break r.context("the exercise thread")??,
                    _ = endings.recv() => cancel.store(true, Ordering::Relaxed),
                }
            };
            exercised = Some(report);
        }
        Watch::Command(command) => {
            let (program, rest) = command.split_first().context("an empty command")?;
            let mut child = tokio::process::Command::new(program)
                .args(rest)
                .spawn()
                .with_context(|| format!("cannot run `{}`", program.to_string_lossy()))?;
            loop {
                tokio::select! {
                    status = child.wait() => { status.context("waiting for the command")?; break; }
                    ending = endings.recv() => if ending != Ending::Interrupt { let _ = child.start_kill(); },
                }
            }
        }
        Watch::For(duration) => {
            eprintln!(
                "verify: watching FUSE writes for {}s (Ctrl-C to decide sooner)",
                duration.as_secs_f64()
            );
            tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = endings.recv() => {}
            }
        }
    }

    let snap = session.collector.snapshot(true)?;
    let (evidence, scope, note) = match &exercised {
        Some(report) => {
            let evidence = file_evidence(&snap, report)?;
            let note = named.as_deref().and_then(|path| {
                let meta = std::fs::symlink_metadata(path).ok()?;
                let theirs = session
                    .collector
                    .open_evidence_of(kernel_dev(meta.dev())?, meta.ino())?;
                flags_differ(&theirs, &evidence.opens, path)
            });
            (evidence, report.scratch_file.display().to_string(), note)
        }
        None => (Evidence::from_totals(&snap), "all".to_owned(), None),
    };
    let decision = decide(&evidence);
    Ok(Outcome {
        decision,
        evidence,
        snap,
        scope,
        exercised,
        note,
    })
}
