//! `fuselock export` started, scraped and fed, for the tests that check it
//! in one security context or another.

use std::process::{Command, Stdio};

use super::{kernel, loopback_up, wait_for, Guard, Kernel};
use crate::common::{fuselock, TestFs};

/// What the exporter tests start from: the loopback up and a fresh mount,
/// on Debian's kernels; `None` (the test is skipped) on the tiny test
/// kernels, which have no TCP/IP.
pub(crate) fn exporter_mount() -> Option<TestFs> {
    if kernel() != Kernel::Stock {
        eprintln!(
            "SKIPPED on {:?}: the tiny test kernels have no TCP/IP",
            kernel()
        );
        return None;
    }
    loopback_up();
    Some(TestFs::mount(&[]))
}

/// `fuselock export` listening on 127.0.0.1:`port`: the caller adds
/// arguments and the context it runs in before [`serving`] starts it.
pub(crate) fn exporter_command(port: u16) -> Command {
    let mut cmd = Command::new(fuselock());
    cmd.args(["export", "--listen", &format!("127.0.0.1:{port}")]);
    cmd
}

/// Starts `cmd` (from [`exporter_command`]) and returns once its first
/// scrape on `port` answers; the exporter is stopped when the guard drops.
pub(crate) fn serving(mut cmd: Command, port: u16) -> Guard {
    let exporter = Guard(cmd.spawn().expect("start export"));
    wait_for("the exporter", 60, || exported_writes(port).is_some());
    exporter
}

/// `/metrics` of the exporter on `port`, or what went wrong.
pub(crate) fn scrape(port: u16) -> Result<String, String> {
    let out = Command::new("wget")
        .args(["-qO-", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "wget {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// Writes on passthrough, as `/metrics` says; `None` while nothing answers.
pub(crate) fn exported_writes(port: u16) -> Option<u64> {
    let text = scrape(port).ok()?;
    text.lines()
        .filter(|l| l.starts_with("fuselock_writes_total{") && l.contains("path=\"passthrough\""))
        .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<Option<f64>>()
        .map(|v| v as u64)
}

/// The `probe_mode` label of `/metrics` on `port`.
pub(crate) fn exported_probe_mode(port: u16) -> String {
    let metrics = scrape(port).expect("metrics");
    metrics
        .lines()
        .find(|l| l.starts_with("fuselock_build_info{"))
        .and_then(|l| l.split("probe_mode=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no probe mode in {metrics}"))
        .to_owned()
}

/// `writes` single-threaded writes to `file` on `fs`.
pub(crate) fn load_writes(fs: &TestFs, file: &str, writes: u32) {
    let status = Command::new(fuselock())
        .args(["load", &fs.path(file), "--writes", &writes.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("load");
    assert!(status.success());
}

/// The probe mode a root `stat` picks here (`auto`).
pub(crate) fn root_probe_mode() -> String {
    let out = Command::new(fuselock())
        .args(["stat", "--json", "--", "true"])
        .output()
        .expect("run fuselock stat");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().expect("a snapshot");
    let snap: serde_json::Value = serde_json::from_str(last).expect("JSON");
    snap["source"]["probe_mode"]
        .as_str()
        .expect("probe_mode")
        .to_owned()
}
