//! A second boot after a guest death fuselock cannot have caused runs only
//! the tests the first boot did not pass.

use anyhow::{ensure, Context as _, Result};

/// The VM tests' names, as the (static) test binary lists them on the host.
pub(super) fn listed_tests(binary: &std::path::Path) -> Result<Vec<String>> {
    let out = std::process::Command::new(binary)
        .args(["--list", "--include-ignored"])
        .output()
        .with_context(|| format!("listing the tests of {}", binary.display()))?;
    ensure!(
        out.status.success(),
        "{} --list: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// `--skip NAME` for each test the console says passed. A test's result
/// may follow lines its programs printed (libtest captures only the test's
/// own output), so a test counts as passed once its `ok` is followed by the
/// next test's start: an `ok` some program printed just before the guest
/// died does not count. libtest skips every test whose name contains NAME,
/// so a name inside another test's name is not skipped: that test runs
/// again rather than the other not at all.
pub(super) fn skips_for_passed(console: &[String], all: &[String]) -> Vec<String> {
    let mut passed = Vec::new();
    // The test running, and whether an `ok` followed its start.
    let mut running: Option<(&str, bool)> = None;
    for line in console {
        let line = line.trim();
        let started = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "));
        if let Some((name, result)) = started {
            if let Some((done, true)) = running {
                passed.push(done);
            }
            running = Some((name, result.trim() == "ok"));
        } else if line == "ok" {
            if let Some((_, ok)) = &mut running {
                *ok = true;
            }
        } else if line.starts_with("test result:") {
            if let Some((done, true)) = running.take() {
                passed.push(done);
            }
        }
    }
    passed
        .into_iter()
        .filter(|p| all.iter().filter(|n| n.contains(p)).count() == 1)
        .flat_map(|p| ["--skip".to_owned(), p.to_owned()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_boot_skips_only_what_passed_and_names_nothing_else() {
        let all: Vec<String> = [
            "counts::a",
            "counts::a_b",
            "verdicts::c",
            "scale::d",
            "scale::e",
        ]
        .map(String::from)
        .to_vec();
        let console: Vec<String> = [
            "running 4 tests",
            "test counts::a ... ok",
            "test counts::a_b ... verify: 259/259 writes",
            "ok",
            "test verdicts::c ... FAILED",
            "test scale::d ... ok",
            // An `ok` a program printed, then the guest died.
            "test scale::e ... healthz:",
            "ok",
            "[  341.497027] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
        ]
        .map(String::from)
        .to_vec();
        // counts::a is inside counts::a_b: skipping it would skip both.
        assert_eq!(
            skips_for_passed(&console, &all),
            ["--skip", "counts::a_b", "--skip", "scale::d"]
        );
        assert!(skips_for_passed(&[], &all).is_empty());
    }
}
