//! Which VM tests run on which kernel: the matrix CI runs, and its tiers.

/// The VM tests that cover every count and verdict, the exporter and clean
/// detach: what every line of the matrix runs (libtest filters, by name).
pub const CORE: &[&str] = &[
    "passthrough_without_flag_is_all_exclusive",
    "passthrough_with_flag_requested",
    "direct_io_with_flag_shares_overwrites",
    "direct_io_beside_a_cached_reader_is_exclusive_for_cache_io_mode",
    "concurrent_writers_are_counted_exactly",
    "mixed_concurrent_kinds_are_exact_with_no_recursion_miss",
    "verify_exercise_gives_the_kernels_verdict",
    // The same counts and verdict through libfuse's passthrough_hp.
    "passthrough_hp_counts_every_kind_exactly",
    "passthrough_hp_verify_exercise_gives_the_kernels_verdict",
    "prometheus_counts_exactly_the_writes_issued",
    // The shipped unit attaches what root would (kprobes where preemptible).
    "export_keeps_serving_with_the_shipped_units_capabilities",
    "nothing_is_left_attached_after_any_exit",
    "doctor_is_happy_on_a_capable_kernel",
    "plain_demo_prints_its_table_and_verdict",
];

/// What a series kernel (`patched:LINE`, `patched-v3:LINE`,
/// `unpatched:LINE`) also runs beside the core: the race on EOF that tells
/// the series' versions apart.
pub const SERIES_CORE: &[&str] = &["racing_truncates_tell_the_series_versions_apart"];

/// What a guest with many CPUs runs ([`SCALE_CPUS`]).
pub const SCALE: &[&str] = &["many_cpus_count_32_writers_of_every_kind_exactly"];
/// The CPUs of the scale run's guest.
pub(super) const SCALE_CPUS: u32 = 16;

/// The core tests of `kernel`: [`CORE`], plus [`SERIES_CORE`] on a series pair.
pub(super) fn core_of(kernel: &str) -> impl Iterator<Item = &'static str> {
    let series = is_series(kernel);
    CORE.iter()
        .chain(SERIES_CORE.iter().filter(move |_| series))
        .copied()
}

/// Whether `kernel` is one of the series kernels `cargo xtask kernel` builds.
pub(super) fn is_series(kernel: &str) -> bool {
    matches!(
        test_kernel_name(kernel),
        "patched" | "patched-v3" | "unpatched"
    )
}

/// Which VM tests a run boots for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tier {
    /// Every test.
    Whole,
    /// [`CORE`] (and [`SERIES_CORE`] on a series pair).
    Core,
    /// [`SCALE`], in a guest with [`SCALE_CPUS`] CPUs.
    Scale,
}

/// One VM run of the suite.
pub(super) struct Run {
    pub(super) kernel: String,
    pub(super) append: Option<String>,
    pub(super) tier: Tier,
}

/// The kernels of a run of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Matrix {
    /// [`MATRIX`]: what CI runs, sized to its time limit.
    Ci,
    /// [`MATRIX`] with the whole suite on every series kernel.
    Full,
}

/// `cargo xtask test`'s kernels: the whole suite on Debian's stock 6.12 (the
/// reference kernel) and on 6.12 with the series' v2 (the lock modes flip),
/// the core on every other series kernel (v2's unpatched twin, v3, the 7.3
/// pair), on every other Debian line users run, on 6.12 booted preemptible
/// as some distributions boot it, and on the newest line's PREEMPT_RT
/// flavour (whose inode lock is built on an rtmutex); the scale test on the
/// newest line.
const MATRIX: &[(&str, Option<&str>, Tier)] = &[
    ("stock", None, Tier::Whole),
    ("patched", None, Tier::Whole),
    ("unpatched", None, Tier::Core),
    ("patched-v3:6.12", None, Tier::Core),
    ("patched:7.3", None, Tier::Core),
    ("unpatched:7.3", None, Tier::Core),
    ("patched-v3:7.3", None, Tier::Core),
    ("debian:6.12", Some("preempt=full"), Tier::Core),
    ("debian:7.0", None, Tier::Core),
    ("debian:7.1", None, Tier::Core),
    ("debian:7.2", None, Tier::Core),
    ("debian:7.3", None, Tier::Core),
    ("debian:7.3-rt", None, Tier::Core),
    ("debian:7.3", None, Tier::Scale),
];

impl Matrix {
    pub(super) fn runs(self) -> Vec<Run> {
        MATRIX
            .iter()
            .map(|(kernel, append, tier)| Run {
                kernel: (*kernel).to_owned(),
                append: append.map(str::to_owned),
                tier: match (self, *tier) {
                    (Matrix::Full, Tier::Core) if is_series(kernel) => Tier::Whole,
                    (_, tier) => tier,
                },
            })
            .collect()
    }
}

/// What the tests are told about the kernel (`FUSELOCK_TEST_KERNEL`): the
/// series pair by its short name, since the expected lock modes differ.
pub(super) fn test_kernel_name(kernel: &str) -> &str {
    kernel
        .split_once(':')
        .map_or(kernel, |(kind, _)| match kind {
            "patched" | "patched-v3" | "unpatched" => kind,
            _ => kernel,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache;

    #[test]
    fn the_canary_runs_on_series_pairs_only() {
        let canary = SERIES_CORE[0];
        for pair in ["patched", "unpatched:6.12", "patched:7.3", "patched-v3:7.3"] {
            assert!(core_of(pair).any(|t| t == canary), "{pair}");
        }
        for line in ["stock", "debian:7.3"] {
            assert!(!core_of(line).any(|t| t == canary), "{line}");
            assert_eq!(core_of(line).count(), CORE.len());
        }
    }

    #[test]
    fn ci_runs_the_whole_suite_on_two_kernels_and_full_on_every_series_kernel() {
        let whole = |m: Matrix| -> Vec<String> {
            m.runs()
                .into_iter()
                .filter(|r| r.tier == Tier::Whole)
                .map(|r| r.kernel)
                .collect()
        };
        assert_eq!(whole(Matrix::Ci), ["stock", "patched"]);
        assert_eq!(
            whole(Matrix::Full),
            [
                "stock",
                "patched",
                "unpatched",
                "patched-v3:6.12",
                "patched:7.3",
                "unpatched:7.3",
                "patched-v3:7.3"
            ]
        );
        // Both pairs of both versions are in CI, at least for the core.
        for kernel in ["patched-v3:6.12", "patched-v3:7.3", "unpatched:7.3"] {
            assert!(
                Matrix::Ci.runs().iter().any(|r| r.kernel == kernel),
                "{kernel}"
            );
        }
    }

    #[test]
    fn every_core_test_exists() {
        let dir = cache::workspace_root().join("userspace/tests/vm");
        let sources: String = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|f| std::fs::read_to_string(f.expect("dir entry").path()).expect("test source"))
            .collect();
        for name in CORE.iter().chain(SERIES_CORE).chain(SCALE) {
            assert!(
                sources.contains(&format!("fn {name}()")),
                "no VM test {name}"
            );
        }
    }
}
