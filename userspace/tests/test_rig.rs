//! The library's test support (`fuselock::test_rig`, feature `test-support`)
//! used from outside the crate, as another crate's tests would: the real
//! maps, filled as the programs fill them, read by the real collector and
//! written by the real stream writer.

use std::sync::Arc;

use fuselock::{
    collect::Collector,
    test_rig::{key, rig_or_skip},
    wire::{
        json,
        stream::{Line, Lines},
    },
};
use probes_common::maps::DIRTY_SLOTS;

#[test]
fn collector_reads_back_exactly_what_was_written() {
    let Some((mut attached, mut kernel)) = rig_or_skip(4096) else {
        return;
    };
    let mut collector = Collector::new(&mut attached).expect("collector");
    for ino in 1..=3 {
        for _ in 0..ino {
            kernel
                .write(key(ino), &format!("f{ino}"), 100, "fio", 4096)
                .expect("write");
        }
    }
    let first = collector.snapshot(false).expect("snapshot");
    let writes: Vec<(u64, u64, Option<&str>)> = first
        .entries
        .iter()
        .map(|e| (e.ino, e.counters.writes, e.name.as_deref()))
        .collect();
    assert_eq!(
        writes,
        [(1, 1, Some("f1")), (2, 2, Some("f2")), (3, 3, Some("f3"))]
    );
    assert_eq!(first.totals.passthrough.counters.writes, 6);
    assert_eq!(first.health.live_inodes, 3);
    assert_eq!(first.entries[2].writers[0].comm, "fio");

    // Idle: the same list.
    let idle = collector.snapshot(false).expect("snapshot");
    assert!(idle.entries.same_as(&first.entries));

    // One file written: found through the ring, the others shared.
    for _ in 0..5 {
        kernel.write(key(2), "f2", 200, "dd", 4096).expect("write");
    }
    let busy = collector.snapshot(false).expect("snapshot");
    assert_eq!(busy.entries[1].counters.writes, 7);
    assert_eq!(busy.entries[1].writers.len(), 2);
    assert!(Arc::ptr_eq(&busy.entries[0], &first.entries[0]));
    assert!(Arc::ptr_eq(&busy.entries[2], &first.entries[2]));

    // More distinct writes than half a ring: every entry is read again,
    // and still exactly.
    let many = DIRTY_SLOTS as u64;
    for ino in 10..10 + many {
        kernel.write(key(ino), "g", 300, "cp", 512).expect("write");
    }
    let after = collector.snapshot(false).expect("snapshot");
    assert_eq!(after.entries.len() as u64, 3 + many);
    assert_eq!(after.totals.passthrough.counters.writes, 11 + many);
    let sum: u64 = after.entries.iter().map(|e| e.counters.writes).sum();
    assert_eq!(sum, 11 + many);
}

/// `stat --json --every-entry` keeps the JSON of entries that did not
/// change; what it writes must still be exactly a fresh formatting.
#[test]
fn every_entry_lines_are_what_a_fresh_formatting_writes() {
    let Some((mut attached, mut kernel)) = rig_or_skip(4096) else {
        return;
    };
    let mut collector = Collector::new(&mut attached).expect("collector");
    let mut writer = json::Writer::new(Lines::Whole);
    for round in 0..4u64 {
        // Round 0 fills 50 files; then one file changes per round, and in
        // round 3 a new one appears.
        let inos = if round == 0 { 0..50 } else { round..round + 1 };
        for ino in inos {
            kernel
                .write(key(ino), "f", 100, "fio", 4096)
                .expect("write");
        }
        if round == 3 {
            kernel
                .write(key(77), "new", 100, "fio", 4096)
                .expect("write");
        }
        let snap = collector.snapshot(false).expect("snapshot");
        let mut out = Vec::new();
        writer.write(&snap, &mut out).expect("write");
        let fresh = json::to_string(&Line::whole(snap.clone())).expect("json");
        assert_eq!(String::from_utf8(out).expect("utf-8"), fresh + "\n");
        let changed = snap
            .entries
            .iter()
            .filter(|e| e.counters.writes > 1)
            .count();
        assert_eq!(changed as u64, round.min(3), "round {round}");
    }
}

/// A full `FILES` refuses a new file as the kernel refuses the programs'
/// insert: the write still counts in the totals, and the loss is counted.
#[test]
fn a_full_files_map_refuses_new_files_and_counts_the_loss() {
    let Some((mut attached, mut kernel)) = rig_or_skip(64) else {
        return;
    };
    for ino in 0..80 {
        kernel
            .write(key(ino), &format!("f{ino}"), 100, "fio", 4096)
            .expect("write");
    }
    let mut collector = Collector::new(&mut attached).expect("collector");
    let snap = collector.snapshot(false).expect("snapshot");
    assert_eq!(snap.health.kernel.inode_insert_failed, 16);
    // The 64 the map took: those kept, and those the janitor then forgot
    // to make room for the next new files.
    assert_eq!(snap.entries.len() as u64 + snap.health.evictions, 64);
    assert!(snap.health.evictions > 0);
    assert_eq!(snap.totals.passthrough.counters.writes, 80);
}
