//! How `stat` and `record` write a run of snapshots: one place that names
//! every format, so that a new one is a variant here and its writer.

use std::io::{self, Write};

use super::{json, stream::Lines, table};
use crate::model::snapshot::Snapshot;

/// A format for a run of snapshots, with whatever state it carries from one
/// snapshot to the next.
pub enum SnapshotFormat {
    /// The human table, one per snapshot, a blank line between them.
    Table,
    /// JSON lines: whole, or deltas after the first (docs/json.md).
    JsonLines(json::Writer),
}

impl SnapshotFormat {
    pub fn json_lines(lines: Lines) -> SnapshotFormat {
        SnapshotFormat::JsonLines(json::Writer::new(lines))
    }

    pub fn write(&mut self, snap: &Snapshot, out: &mut dyn Write) -> io::Result<()> {
        match self {
            SnapshotFormat::Table => {
                table::write_table(&mut &mut *out, snap)?;
                writeln!(out)
            }
            SnapshotFormat::JsonLines(writer) => writer.write(snap, out),
        }
    }
}
