use super::*;
use crate::{
    hist::{self, HIST_BUCKETS},
    Reason, Reasons,
};

#[test]
fn a_pair_is_pushed_once_per_epoch_on_a_cpu() {
    let key = |tgid| WriterKey {
        ino: 42,
        dev: 27,
        tgid,
        ..WriterKey::default()
    };
    let mut ring = DirtyRing::default();
    // Epoch 0 (before the first refresh) works like any other.
    assert!(
        ring.first_in_epoch(key(1), 0),
        "the first write of the epoch"
    );
    assert!(!ring.first_in_epoch(key(1), 0) && !ring.first_in_epoch(key(1), 0));
    assert!(ring.first_in_epoch(key(2), 0), "another writer of the file");
    assert!(!ring.first_in_epoch(key(2), 0));
    assert!(ring.first_in_epoch(key(1), 1), "a new refresh epoch");
    // Many pairs share the cache's slots: one evicted by another is pushed
    // again, never skipped.
    let mut pushes = 0;
    for round in 0..2 {
        for tgid in 0..(4 * RECENT_SLOTS as u32) {
            if ring.first_in_epoch(key(tgid), 7) {
                pushes += 1;
            } else {
                assert_eq!(round, 1, "pair {tgid} skipped before it was ever pushed");
            }
        }
    }
    assert!(pushes >= 4 * RECENT_SLOTS, "{pushes}");
}

#[test]
fn the_dirty_ring_keeps_the_newest_keys_and_counts_every_push() {
    let key = |tgid| WriterKey {
        tgid,
        ..WriterKey::default()
    };
    let mut ring = DirtyRing::default();
    let pushes = DIRTY_SLOTS as u32 + 3;
    for tgid in 0..pushes {
        ring.push(key(tgid));
    }
    assert_eq!(ring.head, u64::from(pushes));
    // The three oldest slots were overwritten by the newest keys.
    assert_eq!(
        ring.keys[0..3],
        [key(pushes - 3), key(pushes - 2), key(pushes - 1)]
    );
    assert_eq!(ring.keys[3], key(3));
}

fn write(mode: u32, reasons: Reasons) -> InFlight {
    InFlight {
        start_ns: 1_000,
        locked_ns: 1_500,
        pos: 4096,
        i_size_locked: 8192,
        reasons: reasons.bits(),
        mode,
        ..InFlight::default()
    }
}

#[test]
fn account_counts_mode_reasons_times_and_the_canary() {
    let none = Reasons::from_bits(0);
    let mut s = WriteStats::default();
    // A shared overwrite inside EOF, then one that grows the file.
    s.account::<Plain>(&write(INFLIGHT_SHARED, none), 4096, 3_000);
    let mut grows = write(INFLIGHT_SHARED, none);
    grows.pos = 8192;
    s.account::<Plain>(&grows, 4096, 3_000);
    // An exclusive overwrite that waited 700 ns for the lock.
    let mut waited = write(INFLIGHT_EXCLUSIVE, none.with(Reason::NoParallelFlag));
    waited.contended = 1;
    waited.wait_ns = 700;
    s.account::<Plain>(&waited, 4096, 2_000);
    // An append, exclusive; an error before the lock.
    s.account::<Plain>(
        &write(INFLIGHT_EXCLUSIVE, none.with(Reason::Append)),
        10,
        2_000,
    );
    s.account::<Plain>(&write(INFLIGHT_UNLOCKED, none), -22, 1_200);

    assert_eq!(
        (s.writes(), s.errors, s.bytes, s.unlocked),
        (5, 1, 3 * 4096 + 10, 1)
    );
    assert_eq!(
        (
            s.acquired(LockMode::Shared),
            s.acquired(LockMode::Exclusive)
        ),
        (2, 2)
    );
    let exclusive = LockMode::Exclusive as usize;
    assert_eq!(s.acquired_for(LockMode::Shared, Reason::Eligible), 2);
    assert_eq!(
        s.acquired_for(LockMode::Exclusive, Reason::NoParallelFlag),
        1
    );
    assert_eq!(s.acquired_for(LockMode::Exclusive, Reason::Append), 1);
    assert_eq!(s.acquired_for(LockMode::Exclusive, Reason::Eligible), 0);
    assert_eq!(s.shared_extended, 1, "only the write past the locked size");
    assert_eq!(
        (s.contended[exclusive], s.wait_ns_total[exclusive]),
        (1, 700)
    );
    assert_eq!(s.wait_ns_max[exclusive], 700);
    assert_eq!(s.overwrites_exclusive(), 1, "the append is no overwrite");
    assert_eq!(s.overwrites_exclusive_wait_ns, 700);
    assert_eq!(s.hold_ns_total, [2 * 1_500, 2 * 500]);
    assert_eq!(s.latency_ns_total, 2 * 2_000 + 2 * 1_000 + 200);
}

#[test]
fn record_fills_latency_hold_and_wait_buckets() {
    let mut h = Histograms::ZERO;
    let mut waited = write(INFLIGHT_EXCLUSIVE, Reasons::from_bits(0));
    waited.contended = 1;
    waited.wait_ns = 700;
    h.record::<Plain>(&waited, 3_000);
    h.record::<Plain>(&write(INFLIGHT_UNLOCKED, Reasons::from_bits(0)), 3_000);
    let ex = LockMode::Exclusive as usize;
    assert_eq!(h.latency[hist::bucket(2_000)], 2);
    assert_eq!(h.hold[ex][hist::bucket(1_500)], 1);
    assert_eq!(h.wait[ex][hist::bucket(700)], 1);
    assert_eq!(h.hold[LockMode::Shared as usize], [0; HIST_BUCKETS]);
}
use core::mem::size_of;

#[test]
fn layouts_have_no_hidden_padding() {
    assert_eq!(size_of::<InodeKey>(), 16);
    assert_eq!(size_of::<WriteStats>(), 8 * (2 * REASON_SETS + 4 + 10 + 3));
    assert_eq!(REASON_SETS, 1 << (Reason::COUNT - 1));
    assert_eq!(size_of::<Health>(), 8 * Health::NAMES.len());
    assert_eq!(size_of::<InFlight>(), 8 * 4 + 16 + 8 * 8 + 4 * 4);
    assert_eq!(size_of::<InodeName>(), 8 + NAME_LEN);
    assert_eq!(
        size_of::<crate::Config>(),
        8 + size_of::<crate::config::CgroupFilter>() + size_of::<crate::config::Offsets>() + 4
    );
    assert_eq!(size_of::<crate::config::CgroupFilter>(), 16);
    assert_eq!(size_of::<crate::config::Offsets>(), 4 * 23);
    assert_eq!(size_of::<Histograms>(), 8 * HIST_BUCKETS * 5);
    assert_eq!(
        size_of::<FileStats>(),
        size_of::<WriteStats>() + size_of::<Histograms>() + 16 + size_of::<InodeName>()
    );
    assert_eq!(size_of::<WriterKey>(), 24);
    assert_eq!(size_of::<WriterStats>(), 32);
    // A per-CPU map value may be at most 32 KiB.
    assert_eq!(
        size_of::<DirtyRing>(),
        8 + 24 * DIRTY_SLOTS + 32 * RECENT_SLOTS
    );
    assert!(size_of::<DirtyRing>() <= 32 * 1024);
    assert!(DIRTY_SLOTS.is_power_of_two() && RECENT_SLOTS.is_power_of_two());
    assert_eq!(size_of::<OpenStats>(), 8 * 8);
    assert_eq!(size_of::<OpenInFlight>(), 16);
    assert_eq!(
        size_of::<TaskState>(),
        size_of::<InFlight>() + size_of::<OpenInFlight>()
    );
}

#[test]
fn write_path_dispatch_matches_fuse_file_write_iter() {
    use crate::classify::{FOPEN_DIRECT_IO, FOPEN_PASSTHROUGH};
    // FOPEN_DIRECT_IO overrides FOPEN_PASSTHROUGH.
    assert_eq!(
        WritePath::of(FOPEN_DIRECT_IO | FOPEN_PASSTHROUGH, true),
        Some(WritePath::DirectIo)
    );
    assert_eq!(
        WritePath::of(FOPEN_PASSTHROUGH, true),
        Some(WritePath::Passthrough)
    );
    assert_eq!(WritePath::of(FOPEN_PASSTHROUGH, false), None);
    assert_eq!(WritePath::of(0, false), None);
}

#[test]
fn histograms_merge_bucket_by_bucket() {
    let mut a = Histograms::ZERO;
    a.wait[1][3] = 2;
    let mut b = Histograms::ZERO;
    b.wait[1][3] = 5;
    b.latency[0] = 1;
    a.merge(&b);
    assert_eq!((a.wait[1][3], a.latency[0], a.hold[0][0]), (7, 1, 0));
}

#[test]
fn merge_sums_and_maxes() {
    let mut a = WriteStats {
        unlocked: 2,
        wait_ns_max: [5, 1],
        ..Default::default()
    };
    a.acquisitions[1][3] = 4;
    let mut b = WriteStats {
        unlocked: 3,
        wait_ns_max: [4, 9],
        ..Default::default()
    };
    b.acquisitions[1][3] = 1;
    a.merge(&b);
    assert_eq!((a.unlocked, a.acquisitions[1][3], a.writes()), (5, 5, 10));
    assert_eq!(a.wait_ns_max, [5, 9]);
}

#[test]
fn counts_by_reason_are_sums_over_the_sets_holding_the_reason() {
    let mut s = WriteStats::default();
    let set = |reasons: &[Reason]| {
        reasons
            .iter()
            .fold(Reasons::NONE, |set, r| set.with(*r))
            .bits() as usize
    };
    let ex = LockMode::Exclusive as usize;
    s.acquisitions[ex][set(&[Reason::NoParallelFlag])] = 7;
    s.acquisitions[ex][set(&[Reason::NoParallelFlag, Reason::Buffered])] = 2;
    s.acquisitions[ex][set(&[Reason::Append])] = 1;
    s.acquisitions[LockMode::Shared as usize][0] = 5;
    assert_eq!(
        s.acquired_for(LockMode::Exclusive, Reason::NoParallelFlag),
        9
    );
    assert_eq!(s.acquired_for(LockMode::Exclusive, Reason::Buffered), 2);
    assert_eq!(s.acquired_for(LockMode::Shared, Reason::Eligible), 5);
    assert_eq!(s.acquired(LockMode::Exclusive), 10);
    // A direct overwrite: no reason, or only the missing flag.
    assert_eq!(s.overwrites_exclusive(), 7);
    assert_eq!(s.writes(), 15);
}

/// Maps in memory that log which value each update touched, in order.
#[derive(Default)]
struct Logged {
    log: std::vec::Vec<&'static str>,
    file: Option<FileStats>,
    /// The file map is full: no room for a new file.
    files_full: bool,
    /// Every device slot is taken.
    slots_taken: bool,
    device: WriteStats,
    shared_device: WriteStats,
    writer: WriterStats,
    ring: DirtyRing,
    hists: Histograms,
    health: Health,
    epoch: u64,
}

extern crate std;

impl WriteMaps for Logged {
    type Shared = Plain;

    fn device_slot(&mut self, key: &InodeKey) -> Option<u32> {
        assert_eq!(key.ino, 0, "device slots are keyed by inode 0");
        self.log.push("slot");
        (!self.slots_taken).then_some(3)
    }

    fn with_device_slot(&mut self, slot: u32, f: impl FnOnce(&mut WriteStats)) {
        assert_eq!(slot, 3);
        self.log.push("device");
        f(&mut self.device);
    }

    fn with_device(&mut self, key: &InodeKey, f: impl FnOnce(&mut WriteStats)) -> Slot {
        assert_eq!(key.ino, 0, "device totals are keyed by inode 0");
        self.log.push("shared device");
        f(&mut self.shared_device);
        Slot::Found
    }

    fn with_file(&mut self, _: &InodeKey, f: impl FnOnce(&mut FileStats)) -> Slot {
        self.log.push("file");
        match &mut self.file {
            Some(file) => {
                f(file);
                Slot::Found
            }
            None if self.files_full => Slot::Full,
            None => {
                f(self.file.insert(FileStats::ZERO));
                Slot::Inserted
            }
        }
    }

    fn with_writer(&mut self, _: &WriterKey, f: impl FnOnce(&mut WriterStats)) -> Slot {
        self.log.push("writer");
        f(&mut self.writer);
        Slot::Found
    }

    fn with_ring<R>(&mut self, f: impl FnOnce(&mut DirtyRing) -> R) -> Option<R> {
        self.log.push("ring");
        Some(f(&mut self.ring))
    }

    fn with_path_hists(&mut self, _: u32, f: impl FnOnce(&mut Histograms)) {
        self.log.push("path");
        f(&mut self.hists);
    }

    fn with_health(&mut self, f: impl FnOnce(&mut Health)) {
        f(&mut self.health);
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn tgid(&self) -> u32 {
        77
    }

    fn identity(&self) -> ([u8; COMM_LEN], u64) {
        (*b"writer\0\0\0\0\0\0\0\0\0\0", 4242)
    }
}

#[test]
fn a_finished_write_updates_every_map_with_the_path_totals_last() {
    let mut maps = Logged::default();
    let rec = InFlight {
        key: InodeKey {
            ino: 5,
            dev: 27,
            path: 0,
        },
        ..write(
            INFLIGHT_EXCLUSIVE,
            Reasons::NONE.with(Reason::NoParallelFlag),
        )
    };
    finish_write(&mut maps, &rec, 4096, 3_000);
    // The pair enters the ring after the file and writer; a new file looks
    // its device's slot up and keeps it; the device's totals come last.
    assert_eq!(
        maps.log,
        ["file", "ring", "writer", "ring", "path", "slot", "file", "device"]
    );
    let file = maps.file.expect("the file was inserted");
    assert_eq!(file.device_slot, 4, "slot 3, plus one");
    assert_eq!((file.stats.writes(), file.stats.bytes), (1, 4096));
    assert_eq!(file.last_write_ns, 3_000);
    assert_eq!(file.hists.latency[hist::bucket(2_000)], 1);
    assert_eq!(maps.device.writes(), 1);
    assert_eq!(maps.hists.latency[hist::bucket(2_000)], 1);
    assert_eq!(maps.health.inode_inserts, 1);
    assert_eq!((maps.writer.writes, maps.writer.cgroup_id), (1, 4242));
    assert_eq!(&maps.writer.comm[..6], b"writer");
    assert_eq!(maps.ring.head, 1);
    assert_eq!(maps.ring.keys[0], WriterKey::new(rec.key, 77));

    // The same pair again in this epoch: counted, not pushed again, and its
    // identity not read again.
    maps.log.clear();
    maps.writer.cgroup_id = 0;
    finish_write(&mut maps, &rec, -5, 4_000);
    assert_eq!(maps.log, ["file", "ring", "writer", "path", "device"]);
    assert_eq!((maps.writer.writes, maps.writer.cgroup_id), (2, 0));
    assert_eq!(maps.ring.head, 1);
    let file = maps.file.expect("the file");
    assert_eq!((file.stats.writes(), file.stats.errors), (2, 1));
    assert_eq!(maps.health.inode_inserts, 1);

    // A new epoch pushes the pair again.
    maps.epoch = 1;
    finish_write(&mut maps, &rec, 1, 5_000);
    assert_eq!(maps.ring.head, 2);
}

#[test]
fn a_file_with_no_room_still_counts_in_the_totals() {
    let mut maps = Logged {
        files_full: true,
        ..Logged::default()
    };
    let rec = write(INFLIGHT_SHARED, Reasons::NONE);
    finish_write(&mut maps, &rec, 4096, 3_000);
    assert!(maps.file.is_none());
    assert_eq!(maps.health.inode_insert_failed, 1);
    assert_eq!(maps.device.writes(), 1);
    assert_eq!(maps.writer.writes, 1);
}

#[test]
fn a_device_with_no_slot_counts_in_the_shared_totals_without_looking_again() {
    let mut maps = Logged {
        slots_taken: true,
        ..Logged::default()
    };
    let rec = write(INFLIGHT_SHARED, Reasons::NONE);
    finish_write(&mut maps, &rec, 4096, 3_000);
    assert_eq!(
        maps.file.expect("the file").device_slot,
        NO_DEVICE_SLOT,
        "the file records that its device has no slot"
    );
    maps.log.clear();
    finish_write(&mut maps, &rec, 4096, 3_000);
    assert!(!maps.log.contains(&"slot"), "{:?}", maps.log);
    assert_eq!((maps.shared_device.writes(), maps.device.writes()), (2, 0));
    assert_eq!(maps.health.dev_totals_full, 0);
}
