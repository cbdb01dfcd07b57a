//! `fuselock export`: Prometheus/OpenMetrics over HTTP.

mod access;
mod metrics;
mod reload;
mod server;
mod text;
mod web_config;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus_client::{
    collector::Collector as MetricsCollector,
    encoding::{text::encode, DescriptorEncoder, EncodeMetric as _},
    metrics::{gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use self::web_config::{KeptFiles, WebConfig};
pub use self::{metrics::SnapshotMetrics, text::openmetrics_to_prometheus};
use fuselock_base::UsageError;

use crate::{
    cli::ExportArgs,
    collect::{Collector, Detail},
    commands::{session, signals::Endings},
    kernel::probes,
    model::snapshot::{Counters, DeviceTotals, Snapshot},
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

struct AppState {
    collector: Mutex<Collector>,
    bodies: Mutex<BodyCache>,
    mounts: Mutex<MountCap>,
    per_inode_top: usize,
}

/// The label value the mounts past `--max-mounts` are summed under. No
/// mount point is called that: they are absolute paths, and a mount without
/// one is `dev:MAJ:MIN`.
const OTHER_MOUNTS: &str = "other";

/// At most `max` mounts are exported under their own name: the first seen,
/// for the exporter's whole life, so that a mount's series never moves to
/// `other` and back. The rest are summed into `mount="other"`.
pub(crate) struct MountCap {
    max: usize,
    named: HashSet<Result<String, probes_common::Dev>>,
}

impl MountCap {
    pub(crate) fn new(max: usize) -> MountCap {
        MountCap {
            max,
            named: HashSet::new(),
        }
    }

    /// `snapshot` with the mounts past the cap summed into one row per
    /// path, and how many distinct mounts were summed so.
    pub(crate) fn apply(&mut self, mut snapshot: Snapshot) -> (Snapshot, usize) {
        let mut folded = HashSet::new();
        let mut other: Vec<DeviceTotals> = Vec::new();
        snapshot.devices.retain(|d| {
            // A mount's label is its path, or its device where it has none.
            let key = d.mount.clone().ok_or(d.dev);
            if self.named.contains(&key) {
                return true;
            }
            if self.named.len() < self.max {
                self.named.insert(key);
                return true;
            }
            match other.iter_mut().find(|o| o.path == d.path) {
                Some(o) => add_counters(&mut o.counters, &d.counters),
                None => other.push(DeviceTotals {
                    dev: probes_common::Dev(0),
                    mount: Some(OTHER_MOUNTS.to_owned()),
                    path: d.path,
                    counters: d.counters.clone(),
                }),
            }
            folded.insert(key);
            false
        });
        snapshot.devices.extend(other);
        (snapshot, folded.len())
    }
}

/// `into += c`: counts and totals add up, maxima take the larger.
fn add_counters(into: &mut Counters, c: &Counters) {
    use probes_common::{LockMode, Reason};
    into.writes += c.writes;
    into.bytes += c.bytes;
    into.errors += c.errors;
    into.shared += c.shared;
    into.exclusive += c.exclusive;
    into.unlocked += c.unlocked;
    for mode in LockMode::ALL {
        for reason in Reason::ALL {
            into.acquisitions[mode][reason] += c.acquisitions[mode][reason];
        }
        into.contended[mode] += c.contended[mode];
        into.wait_ns_total[mode] += c.wait_ns_total[mode];
        into.wait_ns_max[mode] = into.wait_ns_max[mode].max(c.wait_ns_max[mode]);
        into.hold_ns_total[mode] += c.hold_ns_total[mode];
        into.hold_ns_max[mode] = into.hold_ns_max[mode].max(c.hold_ns_max[mode]);
    }
    into.latency_ns_total += c.latency_ns_total;
    into.shared_extended += c.shared_extended;
    into.overwrites_exclusive += c.overwrites_exclusive;
    into.overwrites_exclusive_latency_ns += c.overwrites_exclusive_latency_ns;
    into.overwrites_exclusive_wait_ns += c.overwrites_exclusive_wait_ns;
}

/// `fuselock_export_folded_mounts`, served only once a mount was folded:
/// a host within the cap scrapes exactly as before.
#[derive(Debug)]
struct FoldedMounts(usize);

impl MetricsCollector for FoldedMounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.0 == 0 {
            return Ok(());
        }
        let gauge = ConstGauge::new(i64::try_from(self.0).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "fuselock_export_folded_mounts",
            "Mounts past --max-mounts, whose series are summed into mount=\"other\"",
            None,
            MetricType::Gauge,
        )?)
    }
}

/// The bodies last served, and the counts they show. No series carries a
/// time, so equal counts give an equal body: a scrape of a host where
/// nothing moved sends the last one again instead of encoding it anew.
#[derive(Default)]
pub(crate) struct BodyCache {
    /// The snapshot rendered, with its clocks zeroed, and the mounts folded
    /// out of it.
    counts: Option<(Snapshot, usize)>,
    openmetrics: Option<Bytes>,
    prometheus: Option<Bytes>,
}

impl BodyCache {
    #[cfg(test)]
    pub(crate) fn body(
        &mut self,
        snapshot: Snapshot,
        openmetrics: bool,
        per_inode_top: usize,
    ) -> Result<Bytes> {
        self.body_folded(snapshot, 0, openmetrics, per_inode_top)
    }

    /// [`BodyCache::body`] of a snapshot from which [`MountCap`] folded
    /// `folded` mounts.
    pub(crate) fn body_folded(
        &mut self,
        snapshot: Snapshot,
        folded: usize,
        openmetrics: bool,
        per_inode_top: usize,
    ) -> Result<Bytes> {
        let counts = Snapshot {
            timestamp: 0.0,
            elapsed_secs: 0.0,
            ..snapshot
        };
        let key = (counts, folded);
        if self.counts.as_ref() != Some(&key) {
            *self = BodyCache {
                counts: Some(key.clone()),
                ..BodyCache::default()
            };
        }
        let counts = key.0;
        let slot = if openmetrics {
            &mut self.openmetrics
        } else {
            &mut self.prometheus
        };
        if let Some(body) = slot {
            return Ok(body.clone());
        }
        let metrics = SnapshotMetrics {
            snapshot: counts,
            per_inode_top,
        };
        let body = Bytes::from(render_folded(metrics, folded, openmetrics)?);
        *slot = Some(body.clone());
        Ok(body)
    }
}

/// Renders a scrape: OpenMetrics when the client asks for it, else the
/// Prometheus text format.
pub fn render(metrics: SnapshotMetrics, openmetrics: bool) -> Result<String> {
    render_folded(metrics, 0, openmetrics)
}

/// [`render`], saying that `folded` mounts were summed into `other`.
fn render_folded(metrics: SnapshotMetrics, folded: usize, openmetrics: bool) -> Result<String> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(metrics));
    registry.register_collector(Box::new(FoldedMounts(folded)));
    let mut body = String::new();
    encode(&mut body, &registry).context("encoding metrics")?;
    Ok(if openmetrics {
        body
    } else {
        openmetrics_to_prometheus(&body)
    })
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let snapshot = {
        let Ok(mut collector) = state.collector.lock() else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "collector poisoned\n").into_response();
        };
        let detail = if state.per_inode_top > 0 {
            Detail::Full
        } else {
            Detail::Totals
        };
        collector.snapshot_with(false, detail)
    };
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading maps: {e:#}\n"),
            )
                .into_response()
        }
    };
    let (snapshot, folded) = match state.mounts.lock() {
        Ok(mut mounts) => mounts.apply(snapshot),
        Err(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "mount cap poisoned\n").into_response()
        }
    };
    let body = match state.bodies.lock() {
        Ok(mut bodies) => {
            bodies.body_folded(snapshot, folded, wants_openmetrics, state.per_inode_top)
        }
        Err(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "body cache poisoned\n").into_response()
        }
    };
    match body {
        Ok(body) => {
            let ct = if wants_openmetrics {
                OPENMETRICS
            } else {
                PROMETHEUS_TEXT
            };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Says which of the web config's files the process can no longer open
/// now that its privileges are dropped: those are read again through the
/// descriptors kept from the start, which see a file changed in place but
/// not one replaced by another.
fn warn_of_files_closed_to_us(files: &[std::path::PathBuf]) {
    for file in files {
        if let Err(e) = std::fs::File::open(file) {
            log::warn!(
                "--web.config.file: {} cannot be opened after dropping privileges ({e}): it is \
                 read again through the descriptor kept from the start, which sees changes made \
                 in place; if it is replaced by another file (renamed over it, as editors and \
                 certificate tools do), the exporter answers 503 until restarted. Make it \
                 readable to the user fuselock runs as to avoid that",
                file.display()
            );
        }
    }
}

/// The exporter's routes over `state`. Only GET: axum answers 405 to other
/// methods and 404 to other paths.
fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

pub async fn run(args: ExportArgs) -> Result<i32> {
    let listen: SocketAddr = args.listen;
    // A web config that cannot be used is a usage error found before
    // anything is attached, like a taken port. Its files stay open, for
    // reading again once privileges are dropped.
    let kept = Arc::new(KeptFiles::default());
    let web = match &args.web_config_file {
        Some(path) => WebConfig::load_kept(path, &kept).map_err(|e| UsageError(e.to_string()))?,
        None => WebConfig::plain(),
    };
    // Bind before attaching: a taken port is a usage error that should cost nothing.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| UsageError(format!("--listen {listen}: {e}")))?;
    if let Some(warning) = access::exposure_warning(listen, &web) {
        log::warn!("{warning}");
    }
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    let (web_tx, web_rx) = watch::channel(Arc::new(web));
    // SIGHUP loads the web config again; caught from now on, so that one
    // arriving while the probes attach does not end the exporter.
    let reload = match &args.web_config_file {
        Some(path) => {
            let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
            let (kick, kicked) = mpsc::channel(1);
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let _ = kick.try_send(());
                }
            });
            Some((path.clone(), kicked))
        }
        None => None,
    };
    let opts = session::attach_options(&args.probes)?;
    let mut attached = probes::attach(&opts)?;
    let _logs = session::forward_probe_logs(&mut attached);
    let collector = Collector::new(&mut attached)?;
    crate::kernel::privileges::drop_to_bpf_only()?;
    if let Some((path, kicked)) = reload {
        warn_of_files_closed_to_us(&web_rx.borrow().files);
        tokio::spawn(reload::reload(
            path,
            kept,
            listen,
            web_tx,
            kicked,
            Duration::from_secs(1),
        ));
    }
    let state = Arc::new(AppState {
        collector: Mutex::new(collector),
        bodies: Mutex::new(BodyCache::default()),
        mounts: Mutex::new(MountCap::new(usize::from(args.max_mounts))),
        per_inode_top: usize::from(args.per_inode_top),
    });
    let app = access::protect(app(state), web_rx.clone());
    eprintln!(
        "fuselock: serving {scheme}://{listen}/metrics (kernel {}, {} probes)",
        attached.kernel, attached.mode
    );
    let mut endings = Endings::install()?;
    server::serve(
        listener,
        app,
        server::Limits {
            max_connections_per_peer: usize::from(args.max_connections_per_peer),
            ..server::Limits::default()
        },
        web_rx,
        async move {
            endings.recv().await;
        },
    )
    .await;
    drop(attached);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
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
            false,
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
            false,
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
        let first = cache.body(at(1.0), false, 0).expect("render");
        let again = cache.body(at(2.0), false, 0).expect("render");
        assert_eq!(first.as_ptr(), again.as_ptr(), "encoded again");
        let om = cache.body(at(3.0), true, 0).expect("render");
        assert!(om.ends_with(b"# EOF\n"), "each format has its body");
        let mut moved = at(4.0);
        moved.devices[0].counters.writes += 1;
        let fresh = cache.body(moved, false, 0).expect("render");
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
            let body = cache.body_folded(snap, folded, false, 0).expect("render");
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
        for openmetrics in [false, true] {
            let plain = render(
                SnapshotMetrics {
                    snapshot: snap.clone(),
                    per_inode_top: 0,
                },
                openmetrics,
            )
            .expect("render");
            let mut cache = BodyCache::default();
            let body = cache
                .body_folded(capped.clone(), folded, openmetrics, 0)
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
            true,
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
            false,
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
            false,
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
            false,
        )
        .expect("render");
        assert!(
            with_only.contains("fuselock_only_cgroup_info{cgroup=\"/kubepods/burstable/pod1\"} 1"),
            "{with_only}"
        );
        let served: std::collections::BTreeSet<&str> = text
            .lines()
            .chain(with_inodes.lines())
            .chain(with_folded.lines())
            .chain(with_only.lines())
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
    /// BPF maps, filled the way the probes fill them (see `native`) — over
    /// TLS with basic auth from a web config, and its query API reports the
    /// exact number of writes. A second job with a wrong password is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_real_prometheus_scrapes_over_tls_with_basic_auth_and_counts_exactly() {
        use crate::commands::export::web_config::tests::{checked, hash, Pki, GOOD, PASSWORD};
        if std::process::Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: prometheus not installed (cargo xtask setup installs it)");
            return;
        }
        let (mut attached, mut kernel) = match crate::native::rig(4096) {
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
                .write(crate::native::key(1 + i % 3), "scraped", 100, "load", 4096)
                .expect("write");
        }
        let state = Arc::new(AppState {
            collector: Mutex::new(collector),
            bodies: Mutex::new(BodyCache::default()),
            mounts: Mutex::new(MountCap::new(64)),
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
                .write(crate::native::key(2), "scraped", 100, "load", 4096)
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
}
