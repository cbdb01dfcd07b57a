//! The human-readable table of `fuselock stat`.

use std::io::{self, Write};

use probes_common::{LockMode, Reason, WritePath};

use fuselock_base::escape;

use crate::model::snapshot::{Entry, Snapshot};

/// The column of exclusive acquisitions for `reason`.
fn exclusive_column(reason: Reason) -> &'static str {
    reason.info().column
}

/// The file's path as the table shows it: mount point and name, escaped
/// (any user can name a file on a FUSE mount of their own).
fn display_name(e: &Entry) -> String {
    let name = escape::text(e.name.as_deref().unwrap_or("?"));
    match e.mount.as_deref() {
        Some(m) => format!("{}/{name}", escape::text(m.trim_end_matches('/'))),
        None => name.into_owned(),
    }
}

/// Writes the snapshot as an aligned table.
pub fn write_table(out: &mut impl Write, snap: &Snapshot) -> io::Result<()> {
    let headers: Vec<String> = ["FILE", "DEV:INO", "PATH", "WRITES", "SHARED", "EXCL"]
        .into_iter()
        .chain(Reason::EXCLUSIVE.map(exclusive_column))
        .chain(["CONTENDED"])
        .map(str::to_owned)
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(snap.entries.len());
    for e in &snap.entries {
        let c = &e.counters;
        let mut row = vec![
            display_name(e),
            format!("{}:{}", e.dev, e.ino),
            e.path.to_string(),
            c.writes.to_string(),
            c.shared.to_string(),
            c.exclusive.to_string(),
        ];
        row.extend(
            Reason::EXCLUSIVE
                .iter()
                .map(|r| c.acquisitions[LockMode::Exclusive][*r].to_string()),
        );
        row.push((c.contended.shared + c.contended.exclusive).to_string());
        rows.push(row);
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[String]| -> io::Result<()> {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            // Text columns left-aligned, numbers right-aligned.
            if i < 3 {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("{cell:>w$}"));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    writeln!(
        out,
        "fuselock: kernel {}, {} probes, {}{:.1}s{}",
        snap.source.kernel,
        snap.source.probe_mode,
        snap.source
            .only_cgroup
            .as_deref()
            .map(|c| format!("only the tasks under {}, ", escape::text(c)))
            .unwrap_or_default(),
        snap.elapsed_secs,
        if snap.is_final { " (final)" } else { "" }
    )?;
    line(out, &headers)?;
    for row in &rows {
        line(out, row)?;
    }
    for path in WritePath::ALL {
        let t = snap.totals.get(path);
        if t.writes > 0 {
            writeln!(
                out,
                "total {}: {} writes, {} shared, {} exclusive, {} without the lock",
                path.name(),
                t.writes,
                t.shared,
                t.exclusive,
                t.unlocked
            )?;
        }
    }
    let h = &snap.health;
    if h.evictions > 0 {
        writeln!(
            out,
            "warning: {} inodes evicted from the map (max {}; --max-inodes): their rows are gone, \
             their writes still count in the totals",
            h.evictions, h.max_inodes
        )?;
    }
    // Skipped probe runs get a line of their own below, with what to do.
    let losses: Vec<String> = h
        .losses()
        .iter()
        .filter(|(kind, n)| *n > 0 && *kind != "recursion_miss")
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    if !losses.is_empty() {
        writeln!(
            out,
            "warning: counts may be incomplete (health: {}; see docs/json.md)",
            losses.join(", ")
        )?;
    }
    if h.recursion_misses > 0 {
        writeln!(
            out,
            "warning: counts incomplete: the kernel skipped fuselock's probes {} times (recursion_misses); \
             on a preemptible kernel use --probe-mode kprobe",
            h.recursion_misses
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::Counters;
    use probes_common::{LockMode, Reasons, WriteStats};

    #[test]
    fn table_is_aligned_and_names_reasons() {
        let mut stats = WriteStats::default();
        stats.add_acquisitions(
            LockMode::Exclusive,
            Reasons::NONE
                .with(Reason::Append)
                .with(Reason::NoParallelFlag),
            12,
        );
        let snap = Snapshot {
            entries: vec![std::sync::Arc::new(Entry {
                dev: probes_common::Dev(45),
                ino: 7,
                name: Some("data".into()),
                mount: Some("/mnt/fuse".into()),
                path: probes_common::WritePath::Passthrough,
                counters: Counters::from(&stats),
                histograms: Default::default(),
                writers: vec![],
                open: None,
            })]
            .into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_table(&mut out, &snap).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("FILE"), "{text}");
        assert!(lines[2].starts_with("/mnt/fuse/data  0:45:7"), "{text}");
        // The WRITES column ends where its header ends.
        let header_end = lines[1].find("WRITES").expect("WRITES") + "WRITES".len();
        assert_eq!(&lines[2][header_end - 2..header_end], "12", "{text}");
    }

    #[test]
    fn names_cannot_reach_the_terminal_raw() {
        let entry = |name: &str, mount: &str| {
            std::sync::Arc::new(Entry {
                dev: probes_common::Dev(45),
                ino: 7,
                name: Some(name.into()),
                mount: Some(mount.into()),
                path: probes_common::WritePath::Passthrough,
                counters: Counters::default(),
                histograms: Default::default(),
                writers: vec![],
                open: None,
            })
        };
        let snap = Snapshot {
            entries: vec![
                entry("\u{1b}]52;c;aGk=\u{7}x", "/mnt/a\nb"),
                entry("r\u{2028}FORGED\u{061c}\u{2067}", "/mnt/\u{2029}c"),
            ]
            .into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_table(&mut out, &snap).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        for c in [
            '\u{1b}', '\u{7}', '\u{2028}', '\u{2029}', '\u{061c}', '\u{2067}',
        ] {
            assert!(!text.contains(c), "{c:?} raw: {text:?}");
        }
        assert!(text.contains("/mnt/a\\nb/\\x1b]52;c;aGk=\\x07x"), "{text}");
        assert!(
            text.contains("/mnt/\\u{2029}c/r\\u{2028}FORGED\\u{61c}\\u{2067}"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn skipped_probe_runs_are_a_footer_warning() {
        let mut snap = Snapshot::default();
        let text = |snap: &Snapshot| {
            let mut out = Vec::new();
            write_table(&mut out, snap).expect("write");
            String::from_utf8(out).expect("utf8")
        };
        assert!(!text(&snap).contains("counts incomplete"));
        snap.health.recursion_misses = 164;
        let t = text(&snap);
        assert!(
            t.contains("counts incomplete: the kernel skipped fuselock's probes 164 times"),
            "{t}"
        );
        assert!(!t.contains("counts may be incomplete"), "said twice: {t}");
    }

    #[test]
    fn every_health_loss_that_moved_is_named() {
        let mut snap = Snapshot::default();
        snap.health.kernel.inflight_replaced = 3;
        snap.health.kernel.dev_totals_full = 2;
        let mut out = Vec::new();
        write_table(&mut out, &snap).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains(
                "warning: counts may be incomplete (health: inflight_replaced 3, dev_totals_full 2;"
            ),
            "{text}"
        );
    }
}
