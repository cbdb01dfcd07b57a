//! `fuselock verify`: does the parallel-direct-writes patch take effect here?

use std::{io::IsTerminal as _, os::unix::fs::MetadataExt as _, path::PathBuf};

use anyhow::{Context as _, Result};
use probes_common::{LockMode, Reason};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::VerifyArgs,
    collector::Collector,
    exercise,
    probes::{self, AttachOptions},
    session,
    snapshot::{OpenEvidence, Snapshot},
    verdict::{decide, Decision, Evidence},
    UsageError,
};

/// What `--json` prints.
#[derive(Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    decision: &'a Decision,
    exit_code: u8,
    kernel: &'a str,
    probe_mode: &'a str,
    /// `"all"` or the exercised file.
    scope: String,
    exercise: Option<exercise::ExerciseReport>,
    evidence: &'a Evidence,
}

/// The evidence of one exercised file: its passthrough entry and its opens.
fn file_evidence(snap: &Snapshot, path: &PathBuf) -> Result<Evidence> {
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let dev = format!("{}:{}", libc::major(meta.dev()), libc::minor(meta.dev()));
    let ino = meta.ino();
    let mine: Vec<_> = snap
        .entries
        .iter()
        .filter(|e| e.dev == dev && e.ino == ino)
        .collect();
    let passthrough = mine.iter().find(|e| e.path == "passthrough");
    let Some(entry) = passthrough else {
        if mine.iter().any(|e| e.path == "direct_io") {
            return Err(UsageError(format!(
                "{}: its writes took the FUSE direct-io path (the server replies FOPEN_DIRECT_IO), \
                 not passthrough; verify checks passthrough files",
                path.display()
            ))
            .into());
        }
        return Err(UsageError(format!(
            "{}: no passthrough writes were seen for it: the server does not open it with \
             FOPEN_PASSTHROUGH (writes went through the page cache)",
            path.display()
        ))
        .into());
    };
    Ok(Evidence {
        passthrough: entry.counters.clone(),
        opens: entry.open.clone().unwrap_or_else(OpenEvidence::default),
        // Skipped runs are not per file: any of them may have been its write.
        recursion_misses: snap.health.recursion_misses,
    })
}

fn print_human(d: &Decision, e: &Evidence, snap: &Snapshot, scope: &str) {
    println!("{}: {}", d.verdict.label(), d.message);
    if let Some(hint) = &d.hint {
        println!("  hint: {hint}");
    }
    let p = &e.passthrough;
    let by_reason = |mode: LockMode| -> String {
        let parts: Vec<String> = Reason::ALL
            .iter()
            .map(|r| (r, p.acquired_for(mode, *r)))
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{} {n}", r.name()))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    };
    println!(
        "  passthrough writes ({scope}): {} - shared {}{}, exclusive {}{}",
        p.writes,
        p.shared,
        by_reason(LockMode::Shared),
        p.exclusive,
        by_reason(LockMode::Exclusive)
    );
    let o = &e.opens;
    println!(
        "  opens: {} passthrough, FOPEN_PARALLEL_DIRECT_WRITES asked on {} and kept on {}",
        o.passthrough, o.passthrough_parallel_asked, o.passthrough_parallel_kept
    );
    println!(
        "  kernel {}, {} probes",
        snap.source.kernel, snap.source.probe_mode
    );
    if d.shared_extended > 0 {
        println!(
            "  FINDING: {} writes held the shared lock and still grew the file: a truncate raced the \
             unlocked EOF check of the series (exit status 5)",
            d.shared_extended
        );
    }
}

pub async fn run(args: VerifyArgs) -> Result<u8> {
    let target = args
        .exercise
        .as_deref()
        .map(exercise::check_target)
        .transpose()?;
    let opts = AttachOptions::from(&args.probes);
    let mut attached = probes::attach(&opts)?;
    let _logs = session::forward_probe_logs(&mut attached);
    let mut collector = Collector::new(&mut attached)?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    let mut exercised = None;
    if let Some(path) = target.clone() {
        let show = std::io::stderr().is_terminal() || args.progress;
        eprintln!("verify: exercising {} ({} O_DIRECT overwrites from {} threads, then one buffered, one append, one past EOF)",
            path.display(), exercise::THREADS * exercise::OVERWRITES_PER_THREAD, exercise::THREADS);
        let report = tokio::task::spawn_blocking(move || {
            exercise::run(&path, &|done, total| {
                if show {
                    eprintln!("verify: {done}/{total} writes");
                }
            })
        })
        .await
        .context("the exercise thread")??;
        exercised = Some(report);
    } else if let Some((program, rest)) = args.command.split_first() {
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .spawn()
            .with_context(|| format!("cannot run `{}`", program.to_string_lossy()))?;
        loop {
            tokio::select! {
                status = child.wait() => { status.context("waiting for the command")?; break; }
                _ = sigint.recv() => {}
                _ = sigterm.recv() => { let _ = child.start_kill(); }
            }
        }
    } else {
        eprintln!(
            "verify: watching FUSE writes for {}s (Ctrl-C to decide sooner)",
            args.duration.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(args.duration) => {}
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    }

    let snap = collector.snapshot(true)?;
    let (evidence, scope) = match &target {
        Some(path) => (file_evidence(&snap, path)?, path.display().to_string()),
        None => (Evidence::from_totals(&snap), "all".to_owned()),
    };
    let decision = decide(&evidence);
    if args.json {
        let report = Report {
            decision: &decision,
            exit_code: decision.exit_code(),
            kernel: &snap.source.kernel,
            probe_mode: &snap.source.probe_mode,
            scope,
            exercise: exercised,
            evidence: &evidence,
        };
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_human(&decision, &evidence, &snap, &scope);
    }
    Ok(decision.exit_code())
}
