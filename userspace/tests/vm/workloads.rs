//! Writers by pod, container and unit: cgroup v2 trees laid out as kubelet
//! lays them out under each of its cgroup drivers, a node's
//! `/var/log/pods`, and writers moved into each group before they write.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::{
    common::{tmux::Tmux, TestFs},
    fuselock, stat_of_script,
};

/// The cgroup v2 root, mounted if the VM's init did not mount it; `None` on
/// a kernel without cgroups (the tiny series kernels).
fn cgroup_root() -> Option<&'static str> {
    const ROOT: &str = "/sys/fs/cgroup";
    if !Path::new("/proc/self/cgroup").exists() {
        return None;
    }
    if !Path::new(ROOT).join("cgroup.procs").exists() {
        std::fs::create_dir_all(ROOT).expect("mkdir cgroup root");
        let status = Command::new("mount")
            .args(["-t", "cgroup2", "none", ROOT])
            .status()
            .expect("mount cgroup2");
        assert!(status.success(), "mounting cgroup2 at {ROOT}");
    }
    Some(ROOT)
}

/// A writer in a cgroup: its path under the root, and what fuselock must
/// name it.
struct Group {
    path: String,
    writes: u64,
}

const BURSTABLE_UID: &str = "3d1f2c4b-8a9e-4f6d-b2c1-0a1b2c3d4e5f";
const BESTEFFORT_UID: &str = "9e8d7c6b-5a49-4838-a726-150413f2e1d0";
const CONTAINERD_ID: &str = "4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";
const BARE_ID: &str = "0011223344556677889900aabbccddeeff0011223344556677889900aabbccdd";

fn groups() -> [Group; 4] {
    let under = BURSTABLE_UID.replace('-', "_");
    [
        // kubelet's systemd driver, containerd.
        Group {
            path: format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice/cri-containerd-{CONTAINERD_ID}.scope"
            ),
            writes: 37,
        },
        // kubelet's cgroupfs driver.
        Group {
            path: format!("/kubepods/besteffort/pod{BESTEFFORT_UID}/{BARE_ID}"),
            writes: 23,
        },
        // A systemd service.
        Group {
            path: "/system.slice/ingest.service".into(),
            writes: 29,
        },
        // The root cgroup.
        Group {
            path: "/".into(),
            writes: 31,
        },
    ]
}

/// The groups' cgroups under `root`, and the node's log directories that
/// name both pods, as kubelet leaves them.
fn node_with_groups(root: &str) -> [Group; 4] {
    let groups = groups();
    for g in &groups {
        std::fs::create_dir_all(format!("{root}{}", g.path)).expect("mkdir cgroup");
    }
    for dir in [
        format!("prod_db-0_{BURSTABLE_UID}"),
        format!("batch_etl-7_{BESTEFFORT_UID}"),
    ] {
        std::fs::create_dir_all(format!("/var/log/pods/{dir}")).expect("mkdir pod logs");
    }
    groups
}

/// Each writer moves its own shell into its group, then becomes the load:
/// one process, one cgroup, for all its writes; one after the other.
fn writers_script(root: &str, groups: &[Group], file: &str) -> String {
    let script: Vec<String> = groups
        .iter()
        .map(|g| {
            format!(
                "sh -c 'echo $$ > {root}{}/cgroup.procs && exec {} load {file} --kind overwrite --writes {}'",
                g.path.trim_end_matches('/'),
                fuselock(),
                g.writes
            )
        })
        .collect();
    format!("set -e; {}", script.join("; "))
}

/// Writers in two pods (one per kubelet driver), a unit and the root cgroup,
/// all on one file: each writer's count is exact and each names its pod
/// (namespace and name from `/var/log/pods`), container, unit or the root.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn writers_are_named_by_pod_container_and_unit() {
    let Some(root) = cgroup_root() else {
        println!("SKIPPED: this kernel has no cgroups");
        return;
    };
    let groups = node_with_groups(root);
    let fs = TestFs::mount(&["--parallel"]);
    let file = fs.path("shared");
    let script = writers_script(root, &groups, &file);
    let snap = stat_of_script(&script, &[]);
    let entry = snap["entries"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["name"] == "shared"))
        .unwrap_or_else(|| panic!("no entry for the shared file: {snap}"));
    let writers = entry["writers"].as_array().expect("writers");
    let by_path = |path: &str| -> &Value {
        writers
            .iter()
            .find(|w| w["cgroup"]["path"] == path)
            .unwrap_or_else(|| panic!("no writer in {path}: {entry}"))
    };
    let total: u64 = groups.iter().map(|g| g.writes).sum();
    assert_eq!(entry["writes"], total, "{entry}");

    let pod = by_path(&groups[0].path);
    assert_eq!(pod["writes"], groups[0].writes, "{pod}");
    let c = &pod["cgroup"];
    assert_eq!(c["pod"]["namespace"], "prod", "{c}");
    assert_eq!(c["pod"]["name"], "db-0", "{c}");
    assert_eq!(c["pod"]["uid"], BURSTABLE_UID, "{c}");
    assert_eq!(c["pod"]["qos"], "Burstable", "{c}");
    assert_eq!(c["container"]["runtime"], "containerd", "{c}");
    assert_eq!(c["container"]["id"], CONTAINERD_ID, "{c}");

    let pod = by_path(&groups[1].path);
    assert_eq!(pod["writes"], groups[1].writes, "{pod}");
    let c = &pod["cgroup"];
    assert_eq!(c["pod"]["namespace"], "batch", "{c}");
    assert_eq!(c["pod"]["name"], "etl-7", "{c}");
    assert_eq!(c["pod"]["qos"], "BestEffort", "{c}");
    assert_eq!(c["container"]["id"], BARE_ID, "{c}");

    let unit = by_path(&groups[2].path);
    assert_eq!(unit["writes"], groups[2].writes, "{unit}");
    assert_eq!(unit["cgroup"]["unit"], "ingest.service", "{unit}");

    let root_writer = by_path("/");
    assert_eq!(root_writer["writes"], groups[3].writes, "{root_writer}");
    assert!(root_writer["cgroup"].get("pod").is_none(), "{root_writer}");
    assert_eq!(
        snap["health"]["cgroups_unresolved"], 0,
        "{}",
        snap["health"]
    );
}

/// `--pod NAMESPACE/NAME` counts that pod's writes alone, in the kernel,
/// and says so; `top` names the pod in its writer column and its detail.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn a_pod_is_watched_alone_and_named_in_top() {
    let Some(root) = cgroup_root() else {
        println!("SKIPPED: this kernel has no cgroups");
        return;
    };
    let groups = node_with_groups(root);
    let fs = TestFs::mount(&["--parallel"]);
    let file = fs.path("shared");
    let snap = stat_of_script(
        &writers_script(root, &groups, &file),
        &["--pod", "prod/db-0"],
    );
    let pod_dir = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        BURSTABLE_UID.replace('-', "_")
    );
    assert_eq!(
        snap["source"]["only_cgroup"],
        pod_dir.as_str(),
        "{}",
        snap["source"]
    );
    // Only the pod's 37 writes: the other pod, the unit and the root
    // cgroup wrote 83 more, uncounted.
    assert_eq!(snap["totals"]["passthrough"]["writes"], groups[0].writes);
    let entry = &snap["entries"][0];
    assert_eq!(
        entry["writers"].as_array().map(Vec::len),
        Some(1),
        "{entry}"
    );

    // A pod that is not on the node is refused with the reason.
    let out = Command::new(fuselock())
        .args(["stat", "--pod", "prod/nope", "--", "true"])
        .output()
        .expect("fuselock stat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is the pod on this node"), "{stderr}");

    // top, while the pod's container writes. top attaches before the
    // writer starts and detaches after it stopped: patching the text of a
    // function other CPUs run, under TCG, can leave a stale breakpoint
    // behind (docs/development.md).
    if !Path::new("/dev/pts/ptmx").exists() {
        println!("SKIPPED (top): this kernel has no ptys for tmux");
        return;
    }
    let t = Tmux::start(&format!("{} top --interval 0.5", fuselock()), 160, 40)
        .expect("tmux is in the VM image")
        .with_patience(Duration::from_secs(60));
    t.wait_for("probes");
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {root}{}/cgroup.procs && exec {} load {} --kind overwrite --writes 1000000000",
            groups[0].path,
            fuselock(),
            fs.path("busy")
        ))
        .stdout(Stdio::null())
        .spawn()
        .expect("writer");
    let screen = t.wait_for("prod/db-0 load-0[");
    let row = screen
        .lines()
        .find(|l| l.contains("busy"))
        .unwrap_or_else(|| panic!("no row for the busy file:\n{screen}"));
    assert!(row.contains("prod/db-0"), "{screen}");
    println!("top, a pod's container writing:\n{screen}");
    // The detail view: the pod, its QoS class, its container, its path.
    t.keys(&["Enter"]);
    let detail = t.wait_for("pod prod/db-0 (Burstable");
    println!("top's detail view:\n{detail}");
    assert!(
        detail.contains("container containerd 4a5b6c7d8e9f"),
        "{detail}"
    );
    let _ = writer.kill();
    let _ = writer.wait();
    t.keys(&["q"]);
}

/// `export --per-pod-top` serves each pod's writes as a counter, exactly:
/// both pods' writers, not the unit's nor the root cgroup's.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn pods_are_exported_as_counters() {
    let Some(root) = cgroup_root() else {
        println!("SKIPPED: this kernel has no cgroups");
        return;
    };
    if super::kernel() != super::Kernel::Stock {
        println!("SKIPPED: the tiny test kernels have no TCP/IP");
        return;
    }
    super::loopback_up();
    let groups = node_with_groups(root);
    let fs = TestFs::mount(&["--parallel"]);
    let port = 9961;
    let _exporter = super::Guard(
        Command::new(fuselock())
            .args([
                "export",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--per-pod-top",
                "8",
            ])
            .spawn()
            .expect("start export"),
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    super::wait_for("the exporter", 60, || super::http_get(&url).is_some());
    let status = Command::new("sh")
        .args(["-c", &writers_script(root, &groups, &fs.path("shared"))])
        .status()
        .expect("writers");
    assert!(status.success());
    let pod_writes = |text: &str, pod: &str| -> Option<u64> {
        text.lines()
            .find(|l| {
                l.starts_with("fuselock_pod_writes_total{") && l.contains(&format!("pod=\"{pod}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    let mut last = String::new();
    super::wait_for("both pods' writes exported", 30, || {
        last = super::http_get(&url).unwrap_or_default();
        pod_writes(&last, "db-0") == Some(groups[0].writes)
            && pod_writes(&last, "etl-7") == Some(groups[1].writes)
    });
    let series: Vec<&str> = last
        .lines()
        .filter(|l| l.starts_with("fuselock_pod_writes_total{"))
        .collect();
    println!("{}", series.join("\n"));
    assert_eq!(
        series.len(),
        2,
        "one series per pod, none for the unit or the root: {last}"
    );
    assert!(
        series
            .iter()
            .any(|l| l.contains("namespace=\"prod\"")
                && l.contains(&format!("uid=\"{BURSTABLE_UID}\""))),
        "{last}"
    );
}
