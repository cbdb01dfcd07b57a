//! Who a writer is beyond its pid: the workload its cgroup v2 path names —
//! a Kubernetes pod and its container, a container outside Kubernetes, a
//! systemd unit — read from the layouts kubelet, the container runtimes and
//! systemd give their cgroups. A path of no known shape is kept as a path
//! and never guessed at.

use std::fmt;

/// A Kubernetes pod's QoS class, from its cgroup's parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn name(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// The container runtime a container's cgroup names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// A pod's container under kubelet's cgroupfs driver: the directory is
    /// the bare container ID, whichever runtime made it.
    Unnamed,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Unnamed => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Container {
    pub runtime: Runtime,
    /// The full ID as the runtime names it (64 hex digits).
    pub id: String,
}

impl Container {
    /// The 12 first digits, as `docker ps` and `crictl ps` show them.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// A pod's name, read from the node's `/var/log/pods/<namespace>_<name>_<uid>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pod {
    /// The pod's UID, with dashes (the systemd driver's underscores undone).
    pub uid: String,
    pub qos: Qos,
    /// `None` for the pod's own cgroup (a process outside any container of
    /// it, rare).
    pub container: Option<Container>,
    /// `None` when the node has no log directory for the UID (not mounted,
    /// or the pod is gone): the UID is still exact.
    pub name: Option<PodName>,
}

/// The workload behind a cgroup v2 path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    Pod(Pod),
    /// A container outside Kubernetes (Docker, or a runtime's own scope).
    Container(Container),
    /// A systemd unit: `nginx.service`, `session-3.scope`.
    Unit(String),
    /// The root cgroup: kernel threads, or a host without a cgroup manager.
    Root,
    /// A path of no shape this module knows: shown as the path.
    Other,
}

impl fmt::Display for Workload {
    /// The short form `top` and the table show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Pod(pod) => match &pod.name {
                Some(n) => write!(f, "{}/{}", n.namespace, n.name),
                None => write!(f, "pod {}", pod.uid),
            },
            Workload::Container(c) => write!(f, "{} {}", c.runtime.name(), c.short_id()),
            Workload::Unit(unit) => f.write_str(unit),
            Workload::Root => f.write_str("/"),
            Workload::Other => f.write_str("-"),
        }
    }
}

impl Workload {
    /// The workload writes are summed under: a pod whatever its container
    /// (its name kept), a container, a unit; `None` for the root cgroup and
    /// unknown shapes.
    pub fn grouped(&self) -> Option<Workload> {
        match self {
            Workload::Pod(p) => Some(Workload::Pod(Pod {
                container: None,
                ..p.clone()
            })),
            Workload::Container(_) | Workload::Unit(_) => Some(self.clone()),
            Workload::Root | Workload::Other => None,
        }
    }
}

/// A container scope or directory: `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`, or (kubelet's cgroupfs driver
/// and Docker's) a bare 64-digit ID.
fn container_of(component: &str, bare_ids: Runtime) -> Option<Container> {
    let scoped = |prefix: &str, runtime| {
        component
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(".scope"))
            .filter(|id| is_container_id(id))
            .map(|id| Container {
                runtime,
                id: id.to_owned(),
            })
    };
    scoped("cri-containerd-", Runtime::Containerd)
        .or_else(|| scoped("crio-", Runtime::CriO))
        .or_else(|| scoped("docker-", Runtime::Docker))
        .or_else(|| {
            is_container_id(component).then(|| Container {
                runtime: bare_ids,
                id: component.to_owned(),
            })
        })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID: 36 characters, hex digits and four dashes (8-4-4-4-12).
fn is_pod_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The pod a cgroup path's components name, under either kubelet driver:
/// - systemd: `kubepods.slice/kubepods-burstable.slice/
///   kubepods-burstable-pod<uid, _ for ->.slice/<container>.scope`
///   (Guaranteed pods sit directly under `kubepods.slice` as
///   `kubepods-pod<uid>.slice`);
/// - cgroupfs: `kubepods/burstable/pod<uid>/<container id>` (Guaranteed:
///   `kubepods/pod<uid>/…`).
fn pod_of(components: &[&str]) -> Option<Pod> {
    let at = components
        .iter()
        .position(|c| *c == "kubepods.slice" || *c == "kubepods")?;
    let rest = &components[at + 1..];
    let systemd = components[at] == "kubepods.slice";
    let qos_of = |c: &str| match c {
        "kubepods-burstable.slice" | "burstable" => Some(Qos::Burstable),
        "kubepods-besteffort.slice" | "besteffort" => Some(Qos::BestEffort),
        _ => None,
    };
    let (qos, rest) = match rest.first().and_then(|c| qos_of(c)) {
        Some(qos) => (qos, &rest[1..]),
        None => (Qos::Guaranteed, rest),
    };
    let pod_dir = rest.first()?;
    let uid = if systemd {
        let prefix = match qos {
            Qos::Guaranteed => "kubepods-pod",
            Qos::Burstable => "kubepods-burstable-pod",
            Qos::BestEffort => "kubepods-besteffort-pod",
        };
        pod_dir
            .strip_prefix(prefix)?
            .strip_suffix(".slice")?
            .replace('_', "-")
    } else {
        pod_dir.strip_prefix("pod")?.to_owned()
    };
    if !is_pod_uid(&uid) {
        return None;
    }
    let container = match rest.get(1) {
        None => None,
        Some(c) => Some(container_of(c, Runtime::Unnamed)?),
    };
    Some(Pod {
        uid,
        qos,
        container,
        name: None,
    })
}

/// The workload a cgroup v2 path (`/kubepods.slice/…`, relative to the
/// cgroup root) names. The pod's name is left to the caller, who knows the
/// node's log directories.
pub fn classify(path: &str) -> Workload {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let Some(last) = components.last() else {
        return Workload::Root;
    };
    if let Some(pod) = pod_of(&components) {
        return Workload::Pod(pod);
    }
    // Docker under its cgroupfs driver: `/docker/<id>`.
    if let Some(c) = container_of(
        last,
        if components.first() == Some(&"docker") {
            Runtime::Docker
        } else {
            Runtime::Unnamed
        },
    ) {
        if c.runtime != Runtime::Unnamed {
            return Workload::Container(c);
        }
    }
    // The innermost unit: a service's or scope's own cgroup, or a
    // sub-cgroup it made (`app.service/worker`).
    components
        .iter()
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map_or(Workload::Other, |unit| Workload::Unit((*unit).to_owned()))
}

/// A directory of the node's `/var/log/pods`: `<namespace>_<name>_<uid>`.
/// Namespaces and pod names are DNS labels and subdomains (no `_`), so the
/// split is unambiguous.
pub fn pod_log_dir(dir: &str) -> Option<(String, PodName)> {
    let mut parts = dir.splitn(3, '_');
    let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    (!namespace.is_empty() && !name.is_empty() && is_pod_uid(uid)).then(|| {
        (
            uid.to_owned(),
            PodName {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3d1f2c4b-8a9e-4f6d-b2c1-0a1b2c3d4e5f";
    const ID: &str = "4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";

    fn pod(qos: Qos, runtime: Runtime) -> Workload {
        Workload::Pod(Pod {
            uid: UID.into(),
            qos,
            container: Some(Container {
                runtime,
                id: ID.into(),
            }),
            name: None,
        })
    }

    #[test]
    fn kubelet_systemd_driver_paths_name_the_pod_and_container() {
        let under = UID.replace('-', "_");
        assert_eq!(
            classify(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice/cri-containerd-{ID}.scope"
            )),
            pod(Qos::Burstable, Runtime::Containerd)
        );
        assert_eq!(
            classify(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{under}.slice/crio-{ID}.scope"
            )),
            pod(Qos::BestEffort, Runtime::CriO)
        );
        assert_eq!(
            classify(&format!(
                "/kubepods.slice/kubepods-pod{under}.slice/docker-{ID}.scope"
            )),
            pod(Qos::Guaranteed, Runtime::Docker)
        );
    }

    #[test]
    fn kubelet_cgroupfs_driver_paths_name_the_pod_and_container() {
        assert_eq!(
            classify(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            pod(Qos::Burstable, Runtime::Unnamed)
        );
        assert_eq!(
            classify(&format!("/kubepods/pod{UID}/{ID}")),
            pod(Qos::Guaranteed, Runtime::Unnamed)
        );
        // The pod's own cgroup, no container.
        let Workload::Pod(p) = classify(&format!("/kubepods/besteffort/pod{UID}")) else {
            panic!("a pod");
        };
        assert_eq!((p.qos, p.container), (Qos::BestEffort, None));
    }

    #[test]
    fn containers_units_and_the_root_outside_kubernetes() {
        assert_eq!(
            classify(&format!("/system.slice/docker-{ID}.scope")),
            Workload::Container(Container {
                runtime: Runtime::Docker,
                id: ID.into()
            })
        );
        assert_eq!(
            classify(&format!("/docker/{ID}")),
            Workload::Container(Container {
                runtime: Runtime::Docker,
                id: ID.into()
            })
        );
        assert_eq!(
            classify("/system.slice/nginx.service"),
            Workload::Unit("nginx.service".into())
        );
        assert_eq!(
            classify("/user.slice/user-1000.slice/session-3.scope"),
            Workload::Unit("session-3.scope".into())
        );
        assert_eq!(
            classify("/system.slice/app.service/worker"),
            Workload::Unit("app.service".into())
        );
        assert_eq!(classify("/"), Workload::Root);
        assert_eq!(classify(""), Workload::Root);
        assert_eq!(classify("/my/own/group"), Workload::Other);
    }

    #[test]
    fn near_misses_are_not_guessed() {
        // A UID one digit short, a container ID that is not hex, a pod
        // directory without its prefix.
        let short = &UID[..35];
        assert_eq!(
            classify(&format!("/kubepods/burstable/pod{short}/{ID}")),
            Workload::Other
        );
        let not_hex = ID.replace('a', "z");
        assert_eq!(
            classify(&format!("/kubepods/burstable/pod{UID}/{not_hex}")),
            Workload::Other
        );
        assert_eq!(
            classify(&format!("/kubepods/burstable/{UID}")),
            Workload::Other
        );
    }

    #[test]
    fn pod_log_directories_give_namespace_and_name() {
        assert_eq!(
            pod_log_dir(&format!("kube-system_coredns-5d78c9869d-x2x7k_{UID}")),
            Some((
                UID.to_owned(),
                PodName {
                    namespace: "kube-system".into(),
                    name: "coredns-5d78c9869d-x2x7k".into()
                }
            ))
        );
        assert_eq!(pod_log_dir("kube-system_coredns"), None);
        assert_eq!(pod_log_dir(&format!("_name_{UID}")), None);
        assert_eq!(pod_log_dir("a_b_not-a-uid"), None);
    }

    #[test]
    fn the_short_form_is_what_top_shows() {
        let mut p = pod(Qos::Burstable, Runtime::Containerd);
        assert_eq!(p.to_string(), format!("pod {UID}"));
        if let Workload::Pod(pod) = &mut p {
            pod.name = Some(PodName {
                namespace: "prod".into(),
                name: "db-0".into(),
            });
        }
        assert_eq!(p.to_string(), "prod/db-0");
        assert_eq!(
            classify(&format!("/docker/{ID}")).to_string(),
            "docker 4a5b6c7d8e9f"
        );
    }
}
