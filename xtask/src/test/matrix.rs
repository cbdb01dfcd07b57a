//! Which VM tests run on which kernel: the matrix CI runs, and its tiers.

/// The module of the VM tests that cover every count and verdict, the
/// exporter and clean detach: what every kernel of the matrix runs. A test
/// is in the tier by being in a `mod core_tier` of its topic's file in
/// `userspace/tests/vm/`; the runner selects tests by their path.
pub const CORE: &str = "::core_tier::";

/// What a series kernel (`patched:LINE`, `patched-v3:LINE`,
/// `unpatched:LINE`) also runs beside the core: the race on EOF that tells
/// the series' versions apart.
pub const SERIES_CORE: &str = "::series_tier::";

/// What a guest with many CPUs runs ([`SCALE_CPUS`]).
pub const SCALE: &str = "::scale_tier::";
/// The CPUs of the scale run's guest.
pub(super) const SCALE_CPUS: u32 = 16;

/// The tiers a core run of `kernel` selects: [`CORE`], plus
/// [`SERIES_CORE`] on a series pair.
pub(super) fn core_of(kernel: &str) -> Vec<&'static str> {
    let mut tiers = vec![CORE];
    if is_series(kernel) {
        tiers.push(SERIES_CORE);
    }
    tiers
}

/// The tests of `all` (full paths, as the test binary lists them) in one of
/// `tiers` whose path contains `filter`, if one is given.
pub(super) fn select<'a>(all: &'a [String], tiers: &[&str], filter: Option<&str>) -> Vec<&'a str> {
    all.iter()
        .map(String::as_str)
        .filter(|t| tiers.iter().any(|tier| t.contains(tier)))
        .filter(|t| filter.is_none_or(|f| t.contains(f)))
        .collect()
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

    #[test]
    fn the_canary_runs_on_series_pairs_only() {
        for pair in ["patched", "unpatched:6.12", "patched:7.3", "patched-v3:7.3"] {
            assert_eq!(core_of(pair), [CORE, SERIES_CORE], "{pair}");
        }
        for line in ["stock", "debian:7.3"] {
            assert_eq!(core_of(line), [CORE], "{line}");
        }
    }

    #[test]
    fn a_tier_is_the_tests_in_its_module_narrowed_by_the_filter() {
        let all = [
            "counts::core_tier::passthrough_with_flag_requested",
            "counts::core_tier::direct_io_with_flag_shares_overwrites",
            "counts::passthrough_appends",
            "verdicts::series_tier::racing_truncates_tell_the_series_versions_apart",
            "counts::scale_tier::many_cpus_count_32_writers_of_every_kind_exactly",
        ]
        .map(String::from);
        assert_eq!(
            select(&all, &core_of("stock"), None),
            [all[0].as_str(), all[1].as_str()]
        );
        assert_eq!(
            select(&all, &core_of("patched:7.3"), Some("racing")),
            [all[3].as_str()]
        );
        assert_eq!(select(&all, &[SCALE], None), [all[4].as_str()]);
        assert!(select(&all, &[CORE], Some("appends")).is_empty());
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
}
