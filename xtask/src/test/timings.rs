//! The timing table `cargo xtask test` ends with.

use anyhow::Result;
use std::time::Instant;

/// Each step's seconds, printed as a table when the run ends, passed or
/// not, so that the next person sees where the time goes.
#[derive(Default)]
pub(super) struct Timings {
    steps: Vec<Step>,
}

struct Step {
    name: String,
    secs: f64,
    ok: bool,
    /// Ran on a thread of its own beside the steps in the foreground, so its
    /// seconds overlap theirs.
    beside: bool,
}

impl Timings {
    pub(super) fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("\n==> {name}");
        let t = Instant::now();
        let result = f();
        let secs = t.elapsed().as_secs_f64();
        let ok = result.is_ok();
        eprintln!(
            "==> {name}: {} ({secs:.0}s)",
            if ok { "ok" } else { "FAILED" }
        );
        self.steps.push(Step {
            name: name.to_owned(),
            secs,
            ok,
            beside: false,
        });
        result
    }

    /// A step that ran beside the foreground ones, recorded when it ends.
    pub(super) fn beside(&mut self, name: &str, secs: f64, ok: bool) {
        eprintln!(
            "==> {name}: {} ({secs:.0}s, beside the other steps)",
            if ok { "ok" } else { "FAILED" }
        );
        self.steps.push(Step {
            name: name.to_owned(),
            secs,
            ok,
            beside: true,
        });
    }

    pub(super) fn table(&self, total: f64) -> String {
        let width = self.steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
        let mut out = format!("\n{:<width$}  {:>7}  {:>5}\n", "step", "seconds", "share");
        for Step {
            name,
            secs,
            ok,
            beside,
        } in &self.steps
        {
            let share = if *beside {
                "  bg".to_owned()
            } else {
                format!("{:>4.0}%", 100.0 * secs / total.max(1.0))
            };
            out += &format!(
                "{name:<width$}  {secs:>7.0}  {share}{}\n",
                if *ok { "" } else { "  FAILED" }
            );
        }
        out += &format!(
            "{:<width$}  {total:>7.0}  ({:.1} min)\n",
            "total",
            total / 60.0
        );
        if self.steps.iter().any(|s| s.beside) {
            out += "(bg: ran on a thread of its own beside the other steps; its seconds overlap theirs)\n";
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use anyhow::bail;

    use super::*;

    #[test]
    fn the_timing_table_names_every_step_and_the_failed_one() {
        let mut t = Timings::default();
        t.step("fast", || Ok(())).expect("passes");
        assert!(t.step("broken", || -> Result<()> { bail!("no") }).is_err());
        t.beside("built", 90.0, true);
        let table = t.table(120.0);
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("built") && l.ends_with(" 90    bg")),
            "{table}"
        );
        assert!(table.contains("\nfast "), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("broken") && l.ends_with("FAILED")),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("total") && l.contains("(2.0 min)")),
            "{table}"
        );
    }
}
