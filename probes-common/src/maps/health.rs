//! The programs' own health: everything that could make counts incomplete.

/// Declares a struct of `u64` counters and its `merge`, so that the field list
/// is written once.
macro_rules! counters {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$field_meta:meta])* pub $field:ident: u64,)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$field_meta])* pub $field: u64,)*
        }

        impl $name {
            /// The fields' names, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Adds `other`'s counters to these (per-CPU copies into one).
            pub fn merge(&mut self, other: &$name) {
                $(self.$field += other.$field;)*
            }

            /// Each field's name and value, in declaration order: for
            /// formats that write every counter without naming them again.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($field), self.$field)),*].into_iter()
            }

            /// The field called `name`.
            pub fn field_mut(&mut self, name: &str) -> Option<&mut u64> {
                match name {
                    $(stringify!($field) => Some(&mut self.$field),)*
                    _ => None,
                }
            }
        }
    };
}

counters! {
    /// The programs' own health: everything that could make counts incomplete
    /// is counted here, never dropped silently. This is the one declaration
    /// of these counters: userspace's health report embeds it, and formats
    /// that write every counter read them through [`Health::fields`]. Some
    /// are bookkeeping that userspace turns into other figures (evictions)
    /// or uses only to decide whether to read the maps.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Health {
        /// New files inserted into `FILES`: with the entries userspace
        /// deleted, it tells how many files the map holds without reading it.
        pub inode_inserts: u64,
        /// Writes whose file had no room in `FILES` (the write's counts are
        /// in its device's and path's totals only).
        pub inode_insert_failed: u64,
        /// Writes not tracked because no in-flight record could be made in
        /// the task's storage (out of memory, or the storage busy on this CPU).
        pub inflight_full: u64,
        /// Writes that started while the same task had one in flight (a missed
        /// return probe, or FUSE stacked on FUSE); the older record is dropped.
        pub inflight_replaced: u64,
        /// Returns seen with no matching in-flight record.
        pub exit_unmatched: u64,
        /// Kernel memory reads that failed.
        pub read_errors: u64,
        /// Lock observations where the rwsem was not held by this task as expected.
        pub lock_state_unknown: u64,
        /// Writes to FUSE files on the page-cache path (not watched).
        pub cached_path_writes: u64,
        /// Program runs with no configuration (should never happen).
        pub unconfigured: u64,
        /// Writes whose device had no room in `DEV_TOTALS`.
        pub dev_totals_full: u64,
        /// Opens counted in `OPENS`: with the devices' write counters and
        /// `inode_inserts`, it tells userspace whether any per-inode map changed
        /// since its last read, so an idle host costs no whole-map reads.
        pub opens: u64,
        /// Writes whose (file, process) pair had no room in `WRITERS`: the
        /// counts are whole, the file's list of writers misses that process.
        pub writers_full: u64,
    }
}
