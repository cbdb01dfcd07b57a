//! A verdict as the user reads it: the text `verify` and `demo` print, and
//! the one JSON object of `verify --json` (docs/json.md).

use std::io::{self, Write};

use probes_common::{LockMode, Reason};
use serde::Serialize;
use serde_with::serde_as;

use fuselock_base::escape;

use crate::{
    model::{
        snapshot::Source,
        verdict::{series_gain, Decision, Evidence, SeriesGain},
    },
    wire::json::verdict::{DecisionJson, EvidenceJson, SeriesGainJson},
};

/// The formats a verdict is printed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictFormat {
    Text,
    Json,
}

/// A verdict with what it was decided on. `X` is the exercise's own report,
/// serialized as it is.
pub struct VerdictView<'a, X> {
    pub decision: &'a Decision,
    pub evidence: &'a Evidence,
    pub source: &'a Source,
    /// `"all"` or the exercised file.
    pub scope: &'a str,
    pub exercise: Option<&'a X>,
    /// How the user's file was opened differently from the scratch file.
    pub note: Option<&'a str>,
}

impl<X: Serialize> VerdictView<'_, X> {
    pub fn write(&self, format: VerdictFormat, out: &mut dyn Write) -> io::Result<()> {
        match format {
            VerdictFormat::Json => {
                let report = Report {
                    decision: self.decision,
                    exit_code: self.decision.exit_code(),
                    kernel: &self.source.kernel,
                    probe_mode: &self.source.probe_mode,
                    only_cgroup: self.source.only_cgroup.as_deref(),
                    scope: self.scope,
                    exercise: self.exercise,
                    evidence: self.evidence,
                    note: self.note,
                    series_gain: shown_gain(self.decision, self.evidence),
                };
                serde_json::to_writer(&mut *out, &report)?;
                writeln!(out)
            }
            VerdictFormat::Text => {
                write_text(out, self.decision, self.evidence, self.source, self.scope)?;
                if let Some(note) = self.note {
                    writeln!(out, "  note: {note}")?;
                }
                Ok(())
            }
        }
    }
}

/// What `--json` prints.
#[serde_as]
#[derive(Serialize)]
struct Report<'a, X: Serialize> {
    #[serde(flatten)]
    #[serde_as(as = "&DecisionJson")]
    decision: &'a Decision,
    exit_code: u8,
    kernel: &'a str,
    probe_mode: &'a str,
    /// With `--cgroup` or `--pod`: the only tasks counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    only_cgroup: Option<&'a str>,
    /// `"all"` or the exercised file.
    scope: &'a str,
    exercise: Option<&'a X>,
    #[serde_as(as = "&EvidenceJson")]
    evidence: &'a Evidence,
    /// Set when the user's file was opened with other flags than the scratch file.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    /// Set when eligible writes took the exclusive lock and the series is
    /// not seen at work.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde_as(as = "Option<SeriesGainJson>")]
    series_gain: Option<SeriesGain>,
}

/// What the series would buy, while it is not seen at work: once it is,
/// exclusive overwrites left are races it already handles.
fn shown_gain(d: &Decision, e: &Evidence) -> Option<SeriesGain> {
    series_gain(&e.passthrough, e.waits_measured).filter(|_| d.series_missing())
}

fn write_text(
    out: &mut dyn Write,
    d: &Decision,
    e: &Evidence,
    source: &Source,
    scope: &str,
) -> io::Result<()> {
    writeln!(out, "{}: {}", d.verdict.label(), d.message)?;
    if let Some(hint) = &d.hint {
        writeln!(out, "  hint: {hint}")?;
    }
    let p = &e.passthrough;
    let by_reason = |mode: LockMode| -> String {
        let parts: Vec<String> = Reason::ALL
            .iter()
            .map(|r| (r, p.acquisitions[mode][*r]))
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{} {n}", r.name()))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    };
    writeln!(
        out,
        "  passthrough writes ({}): {} - shared {}{}, exclusive {}{}",
        escape::text(scope),
        p.writes,
        p.shared,
        by_reason(LockMode::Shared),
        p.exclusive,
        by_reason(LockMode::Exclusive)
    )?;
    let o = &e.opens;
    writeln!(
        out,
        "  opens: {} passthrough, FOPEN_PARALLEL_DIRECT_WRITES asked on {} and kept on {}",
        o.passthrough, o.passthrough_parallel_asked, o.passthrough_parallel_kept
    )?;
    writeln!(
        out,
        "  kernel {}, {} probes",
        source.kernel, source.probe_mode
    )?;
    if let Some(only) = &source.only_cgroup {
        writeln!(
            out,
            "  counted only the writes and opens of tasks under the cgroup {}",
            escape::text(only)
        )?;
    }
    if let Some(gain) = shown_gain(d, e) {
        writeln!(out, "  what the series would buy: {}", gain.sentence())?;
    }
    for line in [d.eof_recheck_sentence(), d.unseen_upgrade_sentence()]
        .into_iter()
        .flatten()
    {
        writeln!(out, "  {line}")?;
    }
    if d.shared_extended > 0 {
        writeln!(
            out,
            "  FINDING: {} writes held the shared lock and still grew the file: a truncate raced the \
             unlocked EOF check of the series (exit status 5)",
            d.shared_extended
        )?;
    }
    Ok(())
}
