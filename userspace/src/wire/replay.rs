//! Reading a recorded snapshot stream (`fuselock record`, `stat --json`).

use std::path::Path;

use anyhow::Result;

use fuselock_base::UsageError;

use crate::{
    model::snapshot::Snapshot,
    wire::{json, stream::Decoder},
};

/// Most snapshots kept from one file: a day at one per second.
const MAX_SNAPSHOTS: usize = 86_400;

/// Every snapshot in `path`, or an error naming the file and line.
pub fn read(path: &Path) -> Result<Vec<Snapshot>> {
    let file = std::fs::File::open(path)
        .map_err(|e| UsageError(format!("--replay {}: {e}", path.display())))?;
    parse(std::io::BufReader::new(file), &path.display().to_string())
}

pub fn parse(reader: impl std::io::BufRead, name: &str) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    let mut decoder = Decoder::default();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| UsageError(format!("{name}:{}: cannot read: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let snap = json::from_str(&line).map_err(|e| {
            UsageError(format!(
                "{name}:{}: not a fuselock snapshot ({e}); record one with `fuselock record FILE` or `fuselock stat --json`",
                i + 1
            ))
        })?;
        let snap = decoder
            .decode(snap)
            .map_err(|e| UsageError(format!("{name}:{}: {e}", i + 1)))?;
        if out.len() == MAX_SNAPSHOTS {
            return Err(UsageError(format!("{name}: more than {MAX_SNAPSHOTS} snapshots")).into());
        }
        out.push(snap);
    }
    if out.is_empty() {
        return Err(UsageError(format!("{name}: no snapshots in it")).into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::stream::Line;

    fn default_line() -> String {
        json::to_string(&Line::whole(Snapshot::default())).expect("json")
    }

    #[test]
    fn reads_what_stat_json_writes() {
        let line = default_line();
        let text = format!("{line}\n\n{line}\n");
        assert_eq!(parse(text.as_bytes(), "t").expect("parse").len(), 2);
    }

    #[test]
    fn bad_files_name_the_line() {
        let line = default_line();
        for (text, needle) in [
            ("".to_owned(), "t: no snapshots in it"),
            (
                format!("{line}\n{{\"entries\": 3}}\n"),
                "t:2: not a fuselock snapshot",
            ),
            (
                line[..line.len() / 2].to_owned(),
                "t:1: not a fuselock snapshot",
            ),
            (
                "\u{0}\u{1}garbage".to_owned(),
                "t:1: not a fuselock snapshot",
            ),
        ] {
            let err = parse(text.as_bytes(), "t").expect_err("must fail");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    /// The fixture read and written again, whole and as deltas, is byte
    /// for byte what the code wrote before the model's JSON moved into
    /// `wire::json` (8ae9c8c wrote `rewritten.jsonl`): entries with open
    /// evidence, histograms, writers and totals. Since: the health object
    /// has `writers_full` where it had `inflight_aged_out`, and
    /// `cgroups_unresolved`; the reasons `past_eof_at_lock`.
    #[test]
    fn rewriting_the_fixture_gives_the_bytes_written_before() {
        use crate::wire::{json::Writer, stream::Lines};
        let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
        let snaps = read(&fixtures.join("replay.jsonl")).expect("fixture");
        let mut out = Vec::new();
        for lines in [Lines::Whole, Lines::Deltas] {
            let mut writer = Writer::new(lines);
            for snap in &snaps {
                writer.write(snap, &mut out).expect("write");
            }
        }
        let before = std::fs::read(fixtures.join("rewritten.jsonl")).expect("rewritten.jsonl");
        assert!(
            out == before,
            "the JSON written differs from rewritten.jsonl"
        );
    }

    #[test]
    fn the_checked_in_fixture_parses() {
        let snaps = read(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/replay.jsonl"
        )))
        .expect("fixture");
        assert!(snaps.len() >= 3);
        assert!(snaps.iter().any(|s| !s.entries.is_empty()));
    }
}
