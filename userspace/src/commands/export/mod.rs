//! `fuselock export`: Prometheus/OpenMetrics over HTTP.

mod mounts;
mod pods;

use std::{
    collections::HashMap,
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
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use self::{mounts::MountCap, pods::PodCounters};
use fuselock_base::UsageError;

use crate::{
    cli::ExportArgs,
    collect::{Collector, Detail},
    commands::{session, signals::Endings},
    http::{
        access, reload, server,
        web_config::{KeptFiles, WebConfig},
    },
    kernel::probes,
    model::snapshot::Snapshot,
    wire::metrics::{
        caps::{FoldedMounts, PodSeries},
        Exposition, SnapshotMetrics,
    },
};

struct AppState {
    collector: Mutex<Collector>,
    bodies: Mutex<BodyCache>,
    mounts: Mutex<MountCap>,
    /// `--per-pod-top`: `None` when 0.
    pods: Option<Mutex<PodCounters>>,
    per_inode_top: usize,
}

/// The bodies last served, and the counts they show. No series carries a
/// time, so equal counts give an equal body: a scrape of a host where
/// nothing moved sends the last one again instead of encoding it anew.
#[derive(Default)]
pub(crate) struct BodyCache {
    /// The snapshot rendered, with its clocks zeroed, the mounts folded
    /// out of it, and the pods' series.
    counts: Option<(Snapshot, usize, PodSeries)>,
    bodies: HashMap<Exposition, Bytes>,
}

impl BodyCache {
    #[cfg(test)]
    pub(crate) fn body(
        &mut self,
        snapshot: Snapshot,
        exposition: Exposition,
        per_inode_top: usize,
    ) -> Result<Bytes> {
        self.body_folded(snapshot, 0, PodSeries::default(), exposition, per_inode_top)
    }

    /// [`BodyCache::body`] of a snapshot from which [`MountCap`] folded
    /// `folded` mounts.
    pub(crate) fn body_folded(
        &mut self,
        snapshot: Snapshot,
        folded: usize,
        pods: PodSeries,
        exposition: Exposition,
        per_inode_top: usize,
    ) -> Result<Bytes> {
        let counts = Snapshot {
            timestamp: 0.0,
            elapsed_secs: 0.0,
            // Served through `pods`, which is part of the key.
            workloads: None,
            ..snapshot
        };
        let key = (counts, folded, pods);
        if self.counts.as_ref() != Some(&key) {
            *self = BodyCache {
                counts: Some(key.clone()),
                ..BodyCache::default()
            };
        }
        let counts = key.0;
        if let Some(body) = self.bodies.get(&exposition) {
            return Ok(body.clone());
        }
        let metrics = SnapshotMetrics {
            snapshot: counts,
            per_inode_top,
        };
        let body = Bytes::from(render_with(metrics, folded, key.2, exposition)?);
        self.bodies.insert(exposition, body.clone());
        Ok(body)
    }
}

/// A scrape's body: the snapshot's series, how many mounts were summed
/// into `other`, and the pods' series.
fn render_with(
    metrics: SnapshotMetrics,
    folded: usize,
    pods: PodSeries,
    exposition: Exposition,
) -> Result<String> {
    exposition.render(vec![
        Box::new(metrics),
        Box::new(FoldedMounts(folded)),
        Box::new(pods),
    ])
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let exposition =
        Exposition::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let snapshot = {
        let Ok(mut collector) = state.collector.lock() else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "collector poisoned\n").into_response();
        };
        let detail = if state.per_inode_top > 0 || state.pods.is_some() {
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
    let pods = match &state.pods {
        None => PodSeries::default(),
        Some(pods) => match pods.lock() {
            Ok(mut pods) => pods.apply(&snapshot),
            Err(_) => {
                return (StatusCode::INTERNAL_SERVER_ERROR, "pod counters poisoned\n")
                    .into_response()
            }
        },
    };
    let body = match state.bodies.lock() {
        Ok(mut bodies) => {
            bodies.body_folded(snapshot, folded, pods, exposition, state.per_inode_top)
        }
        Err(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "body cache poisoned\n").into_response()
        }
    };
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, exposition.content_type())], body).into_response(),
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
    let mut collector = Collector::new(&mut attached)?;
    if args.per_pod_top > 0 {
        collector.follow_workloads();
    }
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
        pods: (args.per_pod_top > 0)
            .then(|| Mutex::new(PodCounters::new(usize::from(args.per_pod_top)))),
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
mod tests;
