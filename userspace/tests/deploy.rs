//! The deployment files, checked by the tools that own their formats, and
//! every metric they use checked against what `fuselock export` serves.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

#[path = "common/tls.rs"]
mod tls;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().expect("run checker");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `fuselock_*` names used in a text (PromQL inside YAML or JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("fuselock_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Series names the exporter serves (from its documented metric list in
/// docs/monitoring.md, which a unit test of the exporter checks against real
/// output).
fn exported() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring.md"),
    )
    .expect("docs/monitoring.md");
    let section = doc
        .split("\n## Metrics\n")
        .nth(1)
        .expect("docs/monitoring.md has a Metrics section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let base = metric_names(section);
    let mut all = BTreeSet::new();
    for name in base {
        // Histograms are queried through their series.
        for suffix in ["", "_bucket", "_sum", "_count"] {
            all.insert(format!("{name}{suffix}"));
        }
    }
    all
}

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    if !tool("promtool") {
        eprintln!("SKIPPED: promtool missing (cargo xtask setup installs it)");
        return;
    }
    ok(Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(deploy("prometheus/prometheus.yml")));
    ok(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(deploy("prometheus/alerts.yml")));
}

#[test]
fn systemd_unit_verifies() {
    if !tool("systemd-analyze") {
        eprintln!("SKIPPED: systemd-analyze missing");
        return;
    }
    // Point ExecStart at the binary just built: verify checks it exists.
    let unit = std::fs::read_to_string(deploy("systemd/fuselock-exporter.service")).expect("unit");
    let unit = unit.replace("/usr/local/bin/fuselock", env!("CARGO_BIN_EXE_fuselock"));
    let dir = std::env::temp_dir().join(format!("fuselock-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("fuselock-exporter.service");
    std::fs::write(&path, unit).expect("write unit");
    ok(Command::new("systemd-analyze").arg("verify").arg(&path));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_metric_in_rules_and_dashboard_is_exported() {
    let exported = exported();
    for file in ["prometheus/alerts.yml", "grafana/fuselock.json"] {
        let text = std::fs::read_to_string(deploy(file)).expect("read");
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses no fuselock metric");
        for name in used {
            assert!(
                exported.contains(&name),
                "{file} uses {name}, which fuselock export does not serve"
            );
        }
    }
}

#[test]
fn dashboard_is_valid_json_with_queries() {
    let text = std::fs::read_to_string(deploy("grafana/fuselock.json")).expect("read");
    let v: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON parses");
    let panels = v["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    for p in panels {
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel without queries: {p}"
        );
    }
}

#[test]
fn daemonset_is_valid_yaml_with_least_privilege() {
    let path = deploy("kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains("add: [\"BPF\", \"PERFMON\", \"SYS_RESOURCE\", \"SYS_ADMIN\"]"));
    assert!(text.contains("privileged: false"));
    assert!(text.contains("drop: [\"ALL\"]"));
    // The host's cgroup tree and pod logs name writers' pods: both mounted,
    // and read-only like every other mount.
    for host in ["/sys/fs/cgroup", "/var/log/pods"] {
        assert!(text.contains(&format!("path: {host}")), "{host}");
        assert!(
            text.contains(&format!("mountPath: {host}\n              readOnly: true")),
            "{host}"
        );
    }
    let parses = Command::new("python3")
        .args(["-c", "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); assert d['kind'] == 'DaemonSet'"])
        .arg(&path)
        .output();
    match parses {
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'yaml'") => {
            eprintln!("SKIPPED: YAML parse check needs python3-yaml")
        }
        Ok(o) => assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => eprintln!("SKIPPED: no python3 for the YAML parse check"),
    }
}

/// The shipped web config is one Prometheus' own checker accepts (with a
/// certificate and key made here under the names it gives), and the unit,
/// the DaemonSet and the scrape config all use the protected setup.
#[test]
fn web_config_passes_promtool_and_every_deploy_file_uses_it() {
    let unit = std::fs::read_to_string(deploy("systemd/fuselock-exporter.service")).expect("unit");
    assert!(unit.contains("--web.config.file %d/web.yml"), "{unit}");
    let daemonset = std::fs::read_to_string(deploy("kubernetes/daemonset.yaml")).expect("ds");
    assert!(daemonset.contains("\"--web.config.file\", \"/etc/fuselock/web.yml\""));
    assert!(daemonset.contains("prometheus.io/scheme: \"https\""));
    let prometheus = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).expect("prom");
    assert!(prometheus.contains("scheme: https") && prometheus.contains("password_file:"));

    if !tool("promtool") {
        eprintln!("SKIPPED: promtool missing (cargo xtask setup installs it)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("fuselock-deploy-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    tls::write_self_signed(&dir, "web.crt", "web.key");
    std::fs::copy(deploy("web.yml"), dir.join("web.yml")).expect("copy");
    ok(Command::new("promtool")
        .args(["check", "web-config"])
        .arg(dir.join("web.yml")));
    let _ = std::fs::remove_dir_all(&dir);
}
