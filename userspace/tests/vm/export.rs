//! `fuselock export` scraped over HTTP: the metrics count exactly.

use std::process::{Command, Stdio};

use serde_json::Value;

use super::{
    common::{fuselock, TestFs},
    harness::*,
};

/// The core tier: what `cargo xtask test` runs on every kernel of its matrix
/// (it selects tests by this module's name).
mod core_tier {
    use super::*;

    /// A real Prometheus server scrapes `fuselock export`, and its query API
    /// reports exactly the writes issued.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn prometheus_counts_exactly_the_writes_issued() {
        if kernel() != Kernel::Stock {
            eprintln!(
                "SKIPPED on {:?}: the tiny test kernels have no TCP/IP (CONFIG_INET); runs on stock",
                kernel()
            );
            return;
        }
        loopback_up();
        let fs = TestFs::mount(&[]);
        let exporter = Guard(
            Command::new(fuselock())
                .args(["export", "--listen", "127.0.0.1:9948"])
                .spawn()
                .expect("start exporter"),
        );
        wait_for("the exporter", 60, || {
            http_get("http://127.0.0.1:9948/healthz").is_some_and(|b| b == "ok\n")
        });
        std::fs::write(
            "/tmp/prometheus.yml",
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fuselock\n    static_configs:\n      - targets: ['127.0.0.1:9948']\n",
        )
        .expect("config");
        let _prometheus = Guard(
            Command::new("prometheus")
                .args([
                    "--config.file=/tmp/prometheus.yml",
                    "--storage.tsdb.path=/tmp/prometheus-data",
                    "--web.listen-address=127.0.0.1:9090",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start prometheus (cargo xtask test puts it in the VM)"),
        );
        let status = Command::new(fuselock())
            .args([
                "load",
                &fs.path("scraped"),
                "--kind",
                "overwrite",
                "--writes",
                "333",
                "--threads",
                "3",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("load");
        assert!(status.success());
        let query = "http://127.0.0.1:9090/api/v1/query?query=sum(fuselock_writes_total%7Bpath%3D%22passthrough%22%7D)";
        let mut last = String::new();
        wait_for("Prometheus to scrape 333 writes", 120, || {
            last = http_get(query).unwrap_or_default();
            let v: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
            v["data"]["result"][0]["value"][1] == "333"
        });
        println!("prometheus: {last}");
        // The exporter itself, in both formats.
        let text = http_get("http://127.0.0.1:9948/metrics").expect("metrics");
        assert!(
            text.contains("# TYPE fuselock_writes_total counter"),
            "{text}"
        );
        drop(exporter);
    }
}
