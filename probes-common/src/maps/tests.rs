use super::*;

#[test]
fn a_writer_is_pushed_once_per_epoch_and_counted_every_write() {
    let mut w = WriterStats::fresh(7);
    assert!(w.count(7), "the first write of the epoch");
    assert!(!w.count(7) && !w.count(7));
    assert!(w.count(8), "a new refresh epoch");
    assert_eq!(w.writes, 4);
    // Epoch 0 (before the first refresh) works the same.
    assert!(WriterStats::fresh(0).count(0));
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
    s.account(&write(INFLIGHT_SHARED, none), 4096, 3_000);
    let mut grows = write(INFLIGHT_SHARED, none);
    grows.pos = 8192;
    s.account(&grows, 4096, 3_000);
    // An exclusive overwrite that waited 700 ns for the lock.
    let mut waited = write(INFLIGHT_EXCLUSIVE, none.with(Reason::NoParallelFlag));
    waited.contended = 1;
    waited.wait_ns = 700;
    s.account(&waited, 4096, 2_000);
    // An append, exclusive; an error before the lock.
    s.account(
        &write(INFLIGHT_EXCLUSIVE, none.with(Reason::Append)),
        10,
        2_000,
    );
    s.account(&write(INFLIGHT_UNLOCKED, none), -22, 1_200);

    assert_eq!(
        (s.writes, s.errors, s.bytes, s.unlocked),
        (5, 1, 3 * 4096 + 10, 1)
    );
    assert_eq!(s.acquired, [2, 2]);
    let (shared, exclusive) = (LockMode::Shared as usize, LockMode::Exclusive as usize);
    assert_eq!(s.acquisitions[shared][Reason::Eligible.slot()], 2);
    assert_eq!(s.acquisitions[exclusive][Reason::NoParallelFlag.slot()], 1);
    assert_eq!(s.acquisitions[exclusive][Reason::Append.slot()], 1);
    assert_eq!(s.shared_extended, 1, "only the write past the locked size");
    assert_eq!(
        (s.contended[exclusive], s.wait_ns_total[exclusive]),
        (1, 700)
    );
    assert_eq!(s.wait_ns_max[exclusive], 700);
    assert_eq!(s.overwrites_exclusive, 1, "the append is no overwrite");
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
    h.record(&waited, 3_000, |slot| *slot += 1);
    h.record(
        &write(INFLIGHT_UNLOCKED, Reasons::from_bits(0)),
        3_000,
        |slot| *slot += 1,
    );
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
    assert_eq!(
        size_of::<WriteStats>(),
        8 * (3 + 2 * Reason::COUNT + 2 + 1 + 10 + 1 + 1 + 3)
    );
    assert_eq!(size_of::<Health>(), 8 * 11);
    assert_eq!(size_of::<InFlight>(), 8 * 4 + 16 + 8 * 7 + 4 * 4);
    assert_eq!(size_of::<InodeName>(), 8 + NAME_LEN);
    assert_eq!(size_of::<crate::Config>(), 8 + 4 * 20 + 8);
    assert_eq!(size_of::<Histograms>(), 8 * HIST_BUCKETS * 5);
    assert_eq!(size_of::<WriterKey>(), 24);
    assert_eq!(size_of::<WriterStats>(), 32);
    // A per-CPU map value may be at most 32 KiB.
    assert_eq!(size_of::<DirtyRing>(), 8 + 24 * DIRTY_SLOTS);
    assert!(size_of::<DirtyRing>() <= 32 * 1024);
    assert!(DIRTY_SLOTS.is_power_of_two());
    assert_eq!(size_of::<OpenStats>(), 8 * 8);
    assert_eq!(size_of::<OpenInFlight>(), 16);
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
        writes: 2,
        wait_ns_max: [5, 1],
        ..Default::default()
    };
    let b = WriteStats {
        writes: 3,
        wait_ns_max: [4, 9],
        ..Default::default()
    };
    a.merge(&b);
    assert_eq!(a.writes, 5);
    assert_eq!(a.wait_ns_max, [5, 9]);
}
