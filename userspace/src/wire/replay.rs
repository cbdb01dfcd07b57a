//! Reading a recorded snapshot stream (`fuselock record`, `stat --json`).

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use anyhow::Result;

use fuselock_base::UsageError;

use crate::{
    model::snapshot::Snapshot,
    wire::{json, stream::Decoder},
};

/// A recorded stream, read a line at a time as it is replayed: what is
/// held is the decoder's entries and the snapshot in hand, however long the
/// recording. A bad line ends it with an error naming the file and line,
/// after the snapshots before it.
pub struct Replay<R> {
    lines: std::io::Lines<R>,
    name: String,
    line_no: usize,
    decoder: Decoder,
    /// After an error or the end: nothing more is read.
    done: bool,
}

/// The recording at `path`: its first snapshot, read now so that a file
/// that is missing, empty or bad from its first line is an error before
/// anything is shown, and the rest of it.
pub fn open(path: &Path) -> Result<(Snapshot, Replay<BufReader<File>>)> {
    let file =
        File::open(path).map_err(|e| UsageError(format!("--replay {}: {e}", path.display())))?;
    let mut replay = Replay::new(BufReader::new(file), &path.display().to_string());
    let first = replay.next().transpose()?;
    let first = first.ok_or_else(|| no_snapshots(&replay.name))?;
    Ok((first, replay))
}

impl<R: BufRead> Replay<R> {
    /// `name` is what errors call the stream.
    pub fn new(reader: R, name: &str) -> Replay<R> {
        Replay {
            lines: reader.lines(),
            name: name.to_owned(),
            line_no: 0,
            decoder: Decoder::default(),
            done: false,
        }
    }

    /// The next line's snapshot; `None` at the end of the stream.
    fn next_snapshot(&mut self) -> Result<Option<Snapshot>> {
        let name = &self.name;
        for line in self.lines.by_ref() {
            self.line_no += 1;
            let n = self.line_no;
            let line = line.map_err(|e| UsageError(format!("{name}:{n}: cannot read: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let snap = json::from_str(&line).map_err(|e| {
                UsageError(format!(
                    "{name}:{n}: not a fuselock snapshot ({e}); record one with `fuselock record FILE` or `fuselock stat --json`"
                ))
            })?;
            let snap = self
                .decoder
                .decode(snap)
                .map_err(|e| UsageError(format!("{name}:{n}: {e}")))?;
            return Ok(Some(snap));
        }
        Ok(None)
    }
}

impl<R: BufRead> Iterator for Replay<R> {
    type Item = Result<Snapshot>;

    fn next(&mut self) -> Option<Result<Snapshot>> {
        if self.done {
            return None;
        }
        let next = self.next_snapshot();
        self.done = !matches!(next, Ok(Some(_)));
        next.transpose()
    }
}

/// Every snapshot of a stream, or the first error (the tests and the
/// fuzzer read whole streams; `top` replays one line at a time).
pub fn parse(reader: impl BufRead, name: &str) -> Result<Vec<Snapshot>> {
    let snapshots: Vec<Snapshot> = Replay::new(reader, name).collect::<Result<_>>()?;
    if snapshots.is_empty() {
        return Err(no_snapshots(name));
    }
    Ok(snapshots)
}

/// What a stream without a single snapshot is.
fn no_snapshots(name: &str) -> anyhow::Error {
    UsageError(format!("{name}: no snapshots in it")).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::stream::Line;

    fn read_all(path: &Path) -> Vec<Snapshot> {
        let (first, rest) = open(path).expect("open");
        let mut snaps = vec![first];
        for snap in rest {
            snaps.push(snap.expect("fixture"));
        }
        snaps
    }

    fn default_line() -> String {
        json::to_string(&Line::whole(Snapshot::default())).expect("json")
    }

    #[test]
    fn reads_what_stat_json_writes() {
        let line = default_line();
        let text = format!("{line}\n\n{line}\n");
        assert_eq!(parse(text.as_bytes(), "t").expect("parse").len(), 2);
    }

    /// One line, again and again, forever.
    struct Endless {
        line: Vec<u8>,
        at: usize,
    }

    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            for b in buf.iter_mut() {
                *b = self.line[self.at];
                self.at = (self.at + 1) % self.line.len();
            }
            Ok(buf.len())
        }
    }

    /// A replay holds one snapshot at a time, not the recording: it hands
    /// out the first snapshots of a stream that never ends.
    #[test]
    fn a_replay_reads_a_line_only_when_its_snapshot_is_asked_for() {
        let line = format!("{}\n", default_line()).into_bytes();
        let endless = std::io::BufReader::new(Endless { line, at: 0 });
        let snaps: Vec<Snapshot> = Replay::new(endless, "endless")
            .take(3)
            .collect::<Result<_>>()
            .expect("snapshots");
        assert_eq!(snaps.len(), 3);
    }

    #[test]
    fn opening_a_recording_without_a_snapshot_fails_at_once() {
        let path =
            std::env::temp_dir().join(format!("fuselock-empty-{}.jsonl", std::process::id()));
        std::fs::write(&path, "\n\n").expect("write");
        let err = open(&path).err().expect("an empty recording");
        let _ = std::fs::remove_file(&path);
        assert!(err.to_string().ends_with(": no snapshots in it"), "{err}");
    }

    #[test]
    fn a_bad_line_ends_the_replay_after_the_snapshots_before_it() {
        let line = default_line();
        let text = format!("{line}\n\n{line}\nnot json\n{line}\n");
        let mut replay = Replay::new(text.as_bytes(), "t");
        assert!(replay.next().expect("first").is_ok());
        assert!(replay.next().expect("second").is_ok());
        let err = replay.next().expect("third").expect_err("a bad line");
        assert!(
            err.to_string().contains("t:4: not a fuselock snapshot"),
            "{err}"
        );
        assert!(replay.next().is_none(), "nothing after the error");
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
        let snaps = read_all(&fixtures.join("replay.jsonl"));
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
        let snaps = read_all(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/replay.jsonl"
        )));
        assert!(snaps.len() >= 3);
        assert!(snaps.iter().any(|s| !s.entries.is_empty()));
    }
}
