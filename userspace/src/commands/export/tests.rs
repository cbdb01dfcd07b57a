//! The exporter end to end: rendering, the body cache, the mount cap and
//! a real Prometheus scraping it.

use super::*;

/// The snapshot's series alone.
fn render(metrics: SnapshotMetrics, exposition: Exposition) -> Result<String> {
    render_folded(metrics, 0, exposition)
}

/// The snapshot's series, with `folded` mounts summed into `other`.
fn render_folded(
    metrics: SnapshotMetrics,
    folded: usize,
    exposition: Exposition,
) -> Result<String> {
    render_with(metrics, folded, PodSeries::default(), exposition)
}
use crate::{
    collect::Collector,
    model::snapshot::{Counters, DeviceTotals, Snapshot},
};
use probes_common::{LockMode, Reason, Reasons, WriteStats};

/// A snapshot like a run on stock 6.12 with the flag requested.
pub(crate) fn sample() -> Snapshot {
    let mut s = WriteStats {
        bytes: 120 * 4096,
        ..Default::default()
    };
    // 120 exclusive writes without the flag, 23 of them appends.
    let no_flag = Reasons::NONE.with(Reason::NoParallelFlag);
    s.add_acquisitions(LockMode::Exclusive, no_flag, 97);
    s.add_acquisitions(LockMode::Exclusive, no_flag.with(Reason::Append), 23);
    s.contended[LockMode::Exclusive as usize] = 7;
    let mut snap = Snapshot::default();
    snap.source.kernel = "6.12.117".into();
    snap.source.probe_mode = "fentry".into();
    snap.devices = vec![DeviceTotals {
        dev: probes_common::Dev(45),
        mount: Some("/mnt/fuse".into()),
        path: probes_common::WritePath::Passthrough,
        counters: Counters::from(&s),
    }];
    snap.totals.passthrough.counters = Counters::from(&s);
    snap
}

/// [`sample`] as the exporter serves it (text format, five inodes).
fn sample_text() -> String {
    render(
        SnapshotMetrics {
            snapshot: sample(),
            per_inode_top: 5,
        },
        Exposition::Prometheus,
    )
    .expect("render")
}

#[test]
fn prometheus_text_has_the_documented_series() {
    let text = render(
        SnapshotMetrics {
            snapshot: sample(),
            per_inode_top: 0,
        },
        Exposition::Prometheus,
    )
    .expect("render");
    for line in [
        "# TYPE fuselock_writes_total counter",
        "fuselock_writes_total{mount=\"/mnt/fuse\",path=\"passthrough\"} 120",
        "fuselock_written_bytes_total{mount=\"/mnt/fuse\",path=\"passthrough\"} 491520",
        "fuselock_lock_acquisitions_total{mount=\"/mnt/fuse\",path=\"passthrough\",mode=\"exclusive\",reason=\"append\"} 23",
        "fuselock_lock_contended_total{mount=\"/mnt/fuse\",path=\"passthrough\",mode=\"exclusive\"} 7",
        "# TYPE fuselock_lock_wait_seconds histogram",
        "fuselock_patch_verdict{verdict=\"inconclusive\"} 1",
        "# TYPE fuselock_build_info gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
    assert!(!text.contains("# EOF"));
}

#[test]
fn equal_counts_are_served_from_the_last_body() {
    let mut cache = BodyCache::default();
    let at = |t: f64| Snapshot {
        timestamp: t,
        elapsed_secs: t,
        ..sample()
    };
    let first = cache
        .body(at(1.0), Exposition::Prometheus, 0)
        .expect("render");
    let again = cache
        .body(at(2.0), Exposition::Prometheus, 0)
        .expect("render");
    assert_eq!(first.as_ptr(), again.as_ptr(), "encoded again");
    let om = cache
        .body(at(3.0), Exposition::OpenMetrics, 0)
        .expect("render");
    assert!(om.ends_with(b"# EOF\n"), "each format has its body");
    let mut moved = at(4.0);
    moved.devices[0].counters.writes += 1;
    let fresh = cache
        .body(moved, Exposition::Prometheus, 0)
        .expect("render");
    let text = std::str::from_utf8(&fresh).expect("utf-8");
    assert!(
        text.lines()
            .any(|l| l == "fuselock_writes_total{mount=\"/mnt/fuse\",path=\"passthrough\"} 121"),
        "a moved count was served from the old body"
    );
}

/// `sample()` with its device repeated on `mounts`, one write each more
/// than the one before.
fn on_mounts(mounts: &[&str]) -> Snapshot {
    let mut snap = sample();
    let one = snap.devices[0].clone();
    snap.devices = mounts
        .iter()
        .enumerate()
        .map(|(i, m)| DeviceTotals {
            dev: probes_common::Dev(100 + i as u32),
            mount: Some((*m).to_owned()),
            counters: Counters {
                writes: 1 + i as u64,
                ..one.counters.clone()
            },
            ..one.clone()
        })
        .collect();
    snap
}

fn writes_of(text: &str, mount: &str) -> Option<u64> {
    let prefix = format!("fuselock_writes_total{{mount=\"{mount}\",path=\"passthrough\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

/// Past --max-mounts, mounts are summed into `other`, counted, and the
/// mounts first seen keep their own series whatever comes later.
#[test]
fn mounts_past_the_cap_are_summed_into_other_and_counted() {
    let mut cap = MountCap::new(3);
    let mut cache = BodyCache::default();
    let scrape = |cap: &mut MountCap, cache: &mut BodyCache, snap| {
        let (snap, folded) = cap.apply(snap);
        let body = cache
            .body_folded(
                snap,
                folded,
                PodSeries::default(),
                Exposition::Prometheus,
                0,
            )
            .expect("render");
        String::from_utf8(body.to_vec()).expect("utf-8")
    };
    let text = scrape(
        &mut cap,
        &mut cache,
        on_mounts(&["/a", "/b", "/c", "/d", "/e"]),
    );
    for (mount, writes) in [("/a", 1), ("/b", 2), ("/c", 3), ("other", 4 + 5)] {
        assert_eq!(writes_of(&text, mount), Some(writes), "{mount}:\n{text}");
    }
    assert_eq!(writes_of(&text, "/d"), None);
    assert!(
        text.lines().any(|l| l == "fuselock_export_folded_mounts 2"),
        "{text}"
    );
    // Every series of a folded mount went to `other`, summed.
    assert!(text.lines().any(|l| l
        == "fuselock_lock_acquisitions_total{mount=\"other\",path=\"passthrough\",mode=\"exclusive\",reason=\"append\"} 46"));
    // Later, in another order and with a new mount: the first three stay.
    let text = scrape(
        &mut cap,
        &mut cache,
        on_mounts(&["/f", "/e", "/c", "/b", "/a"]),
    );
    for (mount, writes) in [("/a", 5), ("/b", 4), ("/c", 3), ("other", 1 + 2)] {
        assert_eq!(writes_of(&text, mount), Some(writes), "{mount}:\n{text}");
    }
    assert!(text.lines().any(|l| l == "fuselock_export_folded_mounts 2"));
}

/// Within the cap the scrape is byte for byte what it was without one.
#[test]
fn within_the_cap_nothing_changes() {
    let snap = on_mounts(&["/a", "/b"]);
    let (capped, folded) = MountCap::new(2).apply(snap.clone());
    assert_eq!(folded, 0);
    for exposition in Exposition::ALL {
        let plain = render(
            SnapshotMetrics {
                snapshot: snap.clone(),
                per_inode_top: 0,
            },
            exposition,
        )
        .expect("render");
        let mut cache = BodyCache::default();
        let body = cache
            .body_folded(capped.clone(), folded, PodSeries::default(), exposition, 0)
            .expect("render");
        assert_eq!(body, plain.as_bytes());
        assert!(!plain.contains("folded"));
    }
}

#[test]
fn openmetrics_ends_with_eof() {
    let om = render(
        SnapshotMetrics {
            snapshot: sample(),
            per_inode_top: 0,
        },
        Exposition::OpenMetrics,
    )
    .expect("render");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE fuselock_writes counter"));
}

/// The documented metric table (docs/monitoring.md) is the contract the
/// deployment files are checked against (tests/deploy.rs): it must list
/// exactly what we serve.
#[test]
fn docs_list_exactly_the_exported_metrics() {
    let text = sample_text();
    let mut snap = sample();
    let mut entries = snap.entries.to_vec();
    entries.push(std::sync::Arc::new(crate::model::snapshot::Entry {
        dev: probes_common::Dev(45),
        ino: 2,
        name: Some("f".into()),
        mount: None,
        path: probes_common::WritePath::Passthrough,
        counters: Counters::from(&WriteStats {
            unlocked: 1,
            ..Default::default()
        }),
        histograms: Default::default(),
        writers: vec![],
        open: None,
    }));
    snap.entries = entries.into();
    let with_inodes = render(
        SnapshotMetrics {
            snapshot: snap,
            per_inode_top: 5,
        },
        Exposition::Prometheus,
    )
    .expect("render");
    // More mounts than --max-mounts: the count of those folded appears.
    let (folded_snap, folded) = MountCap::new(0).apply(sample());
    let with_folded = render_folded(
        SnapshotMetrics {
            snapshot: folded_snap,
            per_inode_top: 0,
        },
        folded,
        Exposition::Prometheus,
    )
    .expect("render");
    // With --cgroup or --pod: the cgroup counted is named.
    let mut only = sample();
    only.source.only_cgroup = Some("/kubepods/burstable/pod1".into());
    let with_only = render(
        SnapshotMetrics {
            snapshot: only,
            per_inode_top: 0,
        },
        Exposition::Prometheus,
    )
    .expect("render");
    assert!(
        with_only.contains("fuselock_only_cgroup_info{cgroup=\"/kubepods/burstable/pod1\"} 1"),
        "{with_only}"
    );
    // With --per-pod-top, past its cap.
    let mut pods = PodCounters::new(1);
    let with_pods = render_with(
        SnapshotMetrics {
            snapshot: sample(),
            per_inode_top: 0,
        },
        0,
        pods.apply(&pods::tests::two_pods()),
        Exposition::Prometheus,
    )
    .expect("render");
    let served: std::collections::BTreeSet<&str> = text
        .lines()
        .chain(with_inodes.lines())
        .chain(with_folded.lines())
        .chain(with_only.lines())
        .chain(with_pods.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let doc = include_str!("../../../../docs/monitoring.md");
    let table = doc.split("\n## Metrics\n").nth(1).expect("Metrics section");
    let table = table.trim_start().split("\n\n").next().expect("table");
    let listed: std::collections::BTreeSet<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert_eq!(served, listed);
}

/// Kills and reaps a child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` from 127.0.0.1:`port` over plain HTTP/1.0: the body.
async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// The first value of an instant query, from Prometheus' HTTP API.
async fn query(port: u16, promql: &str) -> Option<String> {
    let mut encoded = String::new();
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let body = http_get(port, &format!("/api/v1/query?query={encoded}")).await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_owned)
}

async fn wait_for(what: &str, secs: u64, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !ok().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A real Prometheus scrapes the exporter — the real collector on real
/// BPF maps, filled the way the probes fill them (see `test_rig`) — over
/// TLS with basic auth from a web config, and its query API reports the
/// exact number of writes. A second job with a wrong password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_over_tls_with_basic_auth_and_counts_exactly() {
    use crate::http::web_config::tests::{checked, hash, Pki, GOOD, PASSWORD};
    if std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: prometheus not installed (cargo xtask setup installs it)");
        return;
    }
    let (mut attached, mut kernel) = match crate::test_rig::rig(4096) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("SKIPPED: {e:#}");
            return;
        }
    };
    let pki = Pki::new("prometheus");
    let web_path = checked(
        &pki,
        "web.yml",
        &format!("{GOOD}basic_auth_users:\n  prometheus: {}\n", hash()),
    );
    let web = WebConfig::load(&web_path).expect("web config");
    let (_web_tx, web_rx) = watch::channel(Arc::new(web));

    let collector = Collector::new(&mut attached).expect("collector");
    for i in 0..333u64 {
        kernel
            .write(
                crate::test_rig::key(1 + i % 3),
                "scraped",
                100,
                "load",
                4096,
            )
            .expect("write");
    }
    let state = Arc::new(AppState {
        collector: Mutex::new(collector),
        bodies: Mutex::new(BodyCache::default()),
        mounts: Mutex::new(MountCap::new(64)),
        pods: None,
        per_inode_top: 0,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = access::protect(app(state), web_rx.clone());
    let server = tokio::spawn(server::serve(
        listener,
        app,
        server::Limits::default(),
        web_rx,
        async {
            let _ = stopped.await;
        },
    ));

    let prom_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    std::fs::write(pki.path("password"), PASSWORD).expect("password file");
    std::fs::write(pki.path("wrong"), "not the password").expect("password file");
    let job = |name: &str, password_file: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      server_name: localhost\n    basic_auth:\n      username: prometheus\n      password_file: {pw}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            ca = pki.path("ca.crt").display(),
            pw = pki.path(password_file).display(),
        )
    };
    let config = pki.config(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}",
            job("fuselock", "password"),
            job("wrong", "wrong")
        ),
    );
    let _prometheus = Child(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                pki.path("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let total = "sum(fuselock_writes_total{job=\"fuselock\",path=\"passthrough\"})";
    wait_for("Prometheus to count 333 writes", 90, async || {
        query(prom_port, total).await.as_deref() == Some("333")
    })
    .await;
    // The counter follows new writes.
    for _ in 0..111 {
        kernel
            .write(crate::test_rig::key(2), "scraped", 100, "load", 4096)
            .expect("write");
    }
    wait_for("Prometheus to count 444 writes", 30, async || {
        query(prom_port, total).await.as_deref() == Some("444")
    })
    .await;
    println!("prometheus over TLS + basic auth: {total} = 444");
    let up = |job: &str| format!("up{{job=\"{job}\"}}");
    assert_eq!(
        query(prom_port, &up("fuselock")).await.as_deref(),
        Some("1")
    );
    wait_for("the wrong password's scrapes to fail", 30, async || {
        query(prom_port, &up("wrong")).await.as_deref() == Some("0")
    })
    .await;
    let wrong = http_get(prom_port, "/api/v1/targets")
        .await
        .unwrap_or_default();
    assert!(wrong.contains("401"), "{wrong}");
    let _ = stop.send(());
    server.await.expect("server");
}

/// promtool, Prometheus' own linter, accepts both formats when present.
#[test]
fn promtool_accepts_the_output() {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        eprintln!("SKIPPED: promtool not installed (cargo xtask setup installs it)");
        return;
    };
    assert!(out.status.success());
    let text = sample_text();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
