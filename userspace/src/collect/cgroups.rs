//! A writer's cgroup id (`bpf_get_current_cgroup_id()`: the inode number of
//! its cgroup v2 directory) to its path and workload, and a pod's UID to
//! its namespace and name from the node's `/var/log/pods`.
//!
//! Both are read from the file system, lazily: the tree is walked again
//! only when an id is not known, at most once a second, so a stable host
//! costs nothing per refresh. An id still unknown after a walk (its cgroup
//! is gone, or fuselock sees another cgroup root) is counted and shown as
//! unresolved, never guessed.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use probes_common::config::CgroupFilter;

use crate::model::{
    snapshot::{CgroupOrigin, WriterCgroup},
    workload::{self, PodName, Workload},
};

/// Where kubelet keeps each pod's logs, named `<namespace>_<name>_<uid>`.
pub const POD_LOGS: &str = "/var/log/pods";
/// Directories walked at most per scan: a bound on a host with a runaway
/// number of cgroups, not a limit real hosts reach.
const MAX_DIRS: usize = 200_000;
/// The shortest time between two walks of either tree.
const RESCAN_AFTER: Duration = Duration::from_secs(1);

pub struct CgroupResolver {
    /// The cgroup v2 root, if the host has one mounted.
    root: Option<PathBuf>,
    pod_logs: PathBuf,
    paths: HashMap<u64, Arc<CgroupOrigin>>,
    last_walk: Option<Instant>,
    pod_names: HashMap<String, PodName>,
    last_pod_read: Option<Instant>,
    /// Ids looked up and not found, since start.
    unresolved: HashSet<u64>,
}

impl CgroupResolver {
    /// The host's resolver: the cgroup2 mount from `/proc/self/mountinfo`.
    pub fn for_host() -> CgroupResolver {
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_root(&m));
        CgroupResolver::new(root, PathBuf::from(POD_LOGS))
    }

    pub fn new(root: Option<PathBuf>, pod_logs: PathBuf) -> CgroupResolver {
        CgroupResolver {
            root,
            pod_logs,
            paths: HashMap::new(),
            last_walk: None,
            pod_names: HashMap::new(),
            last_pod_read: None,
            unresolved: HashSet::new(),
        }
    }

    /// Distinct ids that found no cgroup directory, since start.
    pub fn unresolved(&self) -> u64 {
        self.unresolved.len() as u64
    }

    /// What `id` is: `WriterCgroup::None` for 0 (no cgroup read).
    pub fn resolve(&mut self, id: u64) -> WriterCgroup {
        if id == 0 {
            return WriterCgroup::None;
        }
        if let Some(origin) = self.known(id) {
            return WriterCgroup::Resolved(origin);
        }
        if self.due(self.last_walk) {
            self.walk();
        }
        match self.known(id) {
            Some(origin) => WriterCgroup::Resolved(origin),
            None => {
                self.unresolved.insert(id);
                WriterCgroup::Unresolved { id }
            }
        }
    }

    fn due(&self, last: Option<Instant>) -> bool {
        last.is_none_or(|t| t.elapsed() >= RESCAN_AFTER)
    }

    /// The origin of a known id, with its pod's name filled in if the
    /// node's log directory names it by now.
    fn known(&mut self, id: u64) -> Option<Arc<CgroupOrigin>> {
        let origin = self.paths.get(&id)?.clone();
        let Workload::Pod(pod) = &origin.workload else {
            return Some(origin);
        };
        if pod.name.is_some() {
            return Some(origin);
        }
        if !self.pod_names.contains_key(&pod.uid) && self.due(self.last_pod_read) {
            self.read_pod_names();
        }
        let Some(name) = self.pod_names.get(&pod.uid) else {
            return Some(origin);
        };
        let mut named = (*origin).clone();
        if let Workload::Pod(p) = &mut named.workload {
            p.name = Some(name.clone());
        }
        let named = Arc::new(named);
        self.paths.insert(id, named.clone());
        Some(named)
    }

    fn read_pod_names(&mut self) {
        self.last_pod_read = Some(Instant::now());
        let Ok(dir) = std::fs::read_dir(&self.pod_logs) else {
            return;
        };
        for entry in dir.filter_map(Result::ok).take(MAX_DIRS) {
            if let Some((uid, name)) = entry.file_name().to_str().and_then(workload::pod_log_dir) {
                self.pod_names.insert(uid, name);
            }
        }
    }

    /// Walks the cgroup tree: every directory's inode number is a cgroup id.
    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut stack = vec![root.clone()];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            seen += 1;
            if seen > MAX_DIRS {
                log::warn!(
                    "cgroups: more than {MAX_DIRS} directories under {}; the rest are not \
                     resolved",
                    root.display()
                );
                break;
            }
            let Ok(meta) = std::fs::symlink_metadata(&dir) else {
                continue;
            };
            let relative = relative_path(&root, &dir);
            self.paths.entry(meta.ino()).or_insert_with(|| {
                Arc::new(CgroupOrigin {
                    id: meta.ino(),
                    workload: workload::classify(&relative),
                    path: relative,
                })
            });
            let Ok(children) = std::fs::read_dir(&dir) else {
                continue;
            };
            // Only directories are cgroups; `file_type` does not follow
            // symlinks, and cgroupfs has none.
            stack.extend(
                children
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
}

/// Which tasks `--cgroup` or `--pod` watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchOnly {
    /// A cgroup v2 path, from the hierarchy's root (`/kubepods.slice/…`) or
    /// under its mount point (`/sys/fs/cgroup/kubepods.slice/…`).
    Cgroup(String),
    /// A pod on this node, by namespace and name.
    Pod { namespace: String, name: String },
}

impl std::str::FromStr for WatchOnly {
    type Err = String;

    /// A pod as `NAMESPACE/NAME` (the form `kubectl` takes).
    fn from_str(pod: &str) -> Result<WatchOnly, String> {
        match pod.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(WatchOnly::Pod {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("`{pod}` is not NAMESPACE/NAME")),
        }
    }
}

/// The cgroup `only` names, for the programs' filter, and its path.
pub fn filter_for(only: &WatchOnly) -> anyhow::Result<(CgroupFilter, String)> {
    use anyhow::{bail, Context as _};
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let Some(root) = cgroup2_root(&mountinfo) else {
        bail!("no cgroup v2 hierarchy is mounted here, whole: --cgroup and --pod need one (mount -t cgroup2 none /sys/fs/cgroup)");
    };
    filter_under(&root, Path::new(POD_LOGS), only)
}

fn filter_under(
    root: &Path,
    pod_logs: &Path,
    only: &WatchOnly,
) -> anyhow::Result<(CgroupFilter, String)> {
    use anyhow::{bail, Context as _};
    let relative = match only {
        WatchOnly::Cgroup(path) => {
            let p = Path::new(path);
            let rel = p.strip_prefix(root).unwrap_or(p);
            let rel = rel.strip_prefix("/").unwrap_or(rel);
            if rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                bail!("--cgroup {path}: a cgroup path has no `.` or `..`");
            }
            format!("/{}", rel.to_string_lossy())
        }
        WatchOnly::Pod { namespace, name } => {
            let prefix = format!("{namespace}_{name}_");
            let uid = std::fs::read_dir(pod_logs)
                .with_context(|| {
                    format!("--pod {namespace}/{name}: reading {}", pod_logs.display())
                })?
                .filter_map(Result::ok)
                .take(MAX_DIRS)
                .find_map(|e| {
                    let dir = e.file_name().into_string().ok()?;
                    let (uid, _) = workload::pod_log_dir(&dir)?;
                    dir.starts_with(&prefix).then_some(uid)
                })
                .with_context(|| {
                    format!(
                        "--pod {namespace}/{name}: no {}/{prefix}<uid> directory: is the pod on \
                         this node, and {} mounted?",
                        pod_logs.display(),
                        pod_logs.display()
                    )
                })?;
            let mut resolver = CgroupResolver::new(Some(root.to_owned()), pod_logs.to_owned());
            resolver.walk();
            resolver
                .paths
                .values()
                .find(|o| {
                    matches!(&o.workload, Workload::Pod(p) if p.uid == uid && p.container.is_none())
                })
                .map(|o| o.path.clone())
                .with_context(|| {
                    format!(
                        "--pod {namespace}/{name}: pod {uid} has no cgroup under {}",
                        root.display()
                    )
                })?
        }
    };
    let dir = root.join(relative.trim_start_matches('/'));
    let meta = std::fs::metadata(&dir).with_context(|| format!("cgroup {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a cgroup directory", dir.display());
    }
    let level = relative.split('/').filter(|c| !c.is_empty()).count();
    Ok((
        CgroupFilter {
            id: meta.ino(),
            level: u32::try_from(level).context("cgroup too deep")?,
            _reserved: 0,
        },
        relative,
    ))
}

/// `/a/b` for `<root>/a/b`, `/` for the root itself.
fn relative_path(root: &Path, dir: &Path) -> String {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    format!("/{}", rel.to_string_lossy())
}

/// The mount point of the first cgroup2 mount in `mountinfo`, if its root
/// is the hierarchy's root (a mount of a subtree, as a cgroup namespace
/// shows, would give paths relative to that subtree).
fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, rest) = line.split_once(" - ")?;
        let fstype = rest.split(' ').next()?;
        let fields: Vec<&str> = mount.split(' ').collect();
        (fstype == "cgroup2" && fields.get(3) == Some(&"/"))
            .then(|| fields.get(4).map(PathBuf::from))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::workload::{Qos, Runtime};

    const UID: &str = "3d1f2c4b-8a9e-4f6d-b2c1-0a1b2c3d4e5f";
    const ID: &str = "4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).expect("stat").ino()
    }

    /// A directory tree laid out as kubelet's systemd driver lays out the
    /// cgroup tree stands in for it: cgroup ids are directory inode numbers
    /// there too.
    #[test]
    fn ids_resolve_to_paths_workloads_and_pod_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("cgroup");
        let under = UID.replace('-', "_");
        let container = root.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice/cri-containerd-{ID}.scope"
        ));
        let unit = root.join("system.slice/nginx.service");
        std::fs::create_dir_all(&container).expect("mkdir");
        std::fs::create_dir_all(&unit).expect("mkdir");
        let logs = tmp.path().join("pods");
        std::fs::create_dir_all(&logs).expect("mkdir");

        let mut r = CgroupResolver::new(Some(root.clone()), logs.clone());
        let WriterCgroup::Resolved(origin) = r.resolve(ino(&container)) else {
            panic!("the container's cgroup resolves");
        };
        let Workload::Pod(pod) = &origin.workload else {
            panic!("a pod: {origin:?}");
        };
        assert_eq!((pod.uid.as_str(), pod.qos), (UID, Qos::Burstable));
        assert_eq!(
            pod.container.as_ref().map(|c| c.runtime),
            Some(Runtime::Containerd)
        );
        assert_eq!(pod.name, None, "no log directory yet");
        assert!(
            origin.path.starts_with("/kubepods.slice/"),
            "{}",
            origin.path
        );

        let WriterCgroup::Resolved(origin) = r.resolve(ino(&unit)) else {
            panic!("the unit resolves");
        };
        assert_eq!(origin.workload, Workload::Unit("nginx.service".into()));
        assert!(
            matches!(r.resolve(ino(&root)), WriterCgroup::Resolved(o) if o.workload == Workload::Root)
        );
        assert_eq!(r.resolve(0), WriterCgroup::None);

        // An id of no directory: counted, not guessed.
        let WriterCgroup::Unresolved { id } = r.resolve(ino(tmp.path())) else {
            panic!("a directory outside the root does not resolve");
        };
        assert_eq!((id, r.unresolved()), (ino(tmp.path()), 1));
        r.resolve(id);
        assert_eq!(r.unresolved(), 1, "an id counts once");

        // The pod's log directory appears; its name follows, after the
        // rescan interval.
        std::fs::create_dir_all(logs.join(format!("prod_db-0_{UID}"))).expect("mkdir");
        r.last_pod_read = None;
        let WriterCgroup::Resolved(origin) = r.resolve(ino(&container)) else {
            panic!("still resolves");
        };
        assert_eq!(origin.workload.to_string(), "prod/db-0");
    }

    #[test]
    fn a_new_cgroup_is_found_by_a_later_walk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let mut r = CgroupResolver::new(Some(root.clone()), tmp.path().join("none"));
        assert!(matches!(r.resolve(ino(&root)), WriterCgroup::Resolved(_)));
        let late = root.join("late.scope");
        std::fs::create_dir(&late).expect("mkdir");
        // Within the interval no walk is made again.
        assert!(matches!(
            r.resolve(ino(&late)),
            WriterCgroup::Unresolved { .. }
        ));
        r.last_walk = None;
        assert!(
            matches!(r.resolve(ino(&late)), WriterCgroup::Resolved(o) if o.workload == Workload::Unit("late.scope".into()))
        );
    }

    #[test]
    fn filters_name_a_cgroup_by_path_or_pod() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("cgroup");
        let pod_dir = root.join(format!("kubepods/burstable/pod{UID}"));
        std::fs::create_dir_all(pod_dir.join(ID)).expect("mkdir");
        let logs = tmp.path().join("pods");
        std::fs::create_dir_all(logs.join(format!("prod_db-0_{UID}"))).expect("mkdir");

        let by_pod = WatchOnly::Pod {
            namespace: "prod".into(),
            name: "db-0".into(),
        };
        let (f, path) = filter_under(&root, &logs, &by_pod).expect("the pod resolves");
        assert_eq!(path, format!("/kubepods/burstable/pod{UID}"));
        assert_eq!((f.id, f.level), (ino(&pod_dir), 3));

        for spelled in [
            format!("/kubepods/burstable/pod{UID}"),
            format!("kubepods/burstable/pod{UID}"),
            pod_dir.to_string_lossy().into_owned(),
        ] {
            let (g, _) = filter_under(&root, &logs, &WatchOnly::Cgroup(spelled.clone()))
                .unwrap_or_else(|e| panic!("{spelled}: {e:#}"));
            assert_eq!(g, f, "{spelled}");
        }
        let (r, path) = filter_under(&root, &logs, &WatchOnly::Cgroup("/".into())).expect("root");
        assert_eq!((r.level, path.as_str()), (0, "/"));

        let gone = WatchOnly::Pod {
            namespace: "prod".into(),
            name: "db-1".into(),
        };
        let err = format!(
            "{:#}",
            filter_under(&root, &logs, &gone).expect_err("no such pod")
        );
        assert!(err.contains("is the pod on this node"), "{err}");
        let err = format!(
            "{:#}",
            filter_under(&root, &logs, &WatchOnly::Cgroup("/kubepods/../etc".into()))
                .expect_err("no ..")
        );
        assert!(err.contains("no `.` or `..`"), "{err}");
        assert!(filter_under(&root, &logs, &WatchOnly::Cgroup("/nope".into())).is_err());
        assert_eq!("prod/db-0".parse::<WatchOnly>(), Ok(by_pod));
        assert!("db-0".parse::<WatchOnly>().is_err());
        assert!("a/b/c".parse::<WatchOnly>().is_err());
    }

    #[test]
    fn the_cgroup2_root_comes_from_mountinfo() {
        let mountinfo = "\
24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate
31 24 0:27 /kubepods.slice /mnt/sub rw - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_root(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_root("24 1 0:22 / /sys rw - sysfs sysfs rw"), None);
        // Only a subtree mounted: paths would be relative to it.
        assert_eq!(
            cgroup2_root("31 24 0:27 /kubepods.slice /mnt/sub rw - cgroup2 cgroup2 rw"),
            None
        );
    }
}
