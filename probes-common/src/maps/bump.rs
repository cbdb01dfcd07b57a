//! How a counter is bumped: plainly in a value one CPU owns (a per-CPU map
//! slot), atomically in one that CPUs share. The accounting below is
//! written once over [`Bump`], and each map picks its kind.

/// Adds to and raises counters of one kind of map value.
pub trait Bump {
    /// `*slot += n`.
    fn add(slot: &mut u64, n: u64);
    /// `*slot = max(*slot, v)`.
    fn raise(slot: &mut u64, v: u64);
}

/// For values only this CPU writes (per-CPU maps, whose programs run with
/// preemption off or under migrate-disable), and for single-threaded tests.
pub struct Plain;

impl Bump for Plain {
    #[inline(always)]
    fn add(slot: &mut u64, n: u64) {
        *slot += n;
    }

    #[inline(always)]
    fn raise(slot: &mut u64, v: u64) {
        if v > *slot {
            *slot = v;
        }
    }
}
