//! The JSON of a writer's cgroup: its id, its path, and what the path
//! names (pod, container, unit), written for consumers. A reader takes only
//! the id, the path and the pod's name: the workload is classified from the
//! path again, so the classifier stays the one source of it.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_with::{DeserializeAs, SerializeAs};

use crate::model::{
    snapshot::{CgroupOrigin, WriterCgroup},
    workload::{self, Container, Pod, PodName, Workload},
};

/// [`WriterCgroup`] as `{"id", "path", "pod"?, "container"?, "unit"?}`;
/// `path` is `null` when the id did not resolve. Writers without a cgroup
/// id carry no `cgroup` key at all.
pub struct WriterCgroupJson;

#[derive(Serialize, Deserialize)]
struct CgroupWire {
    id: u64,
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<PodWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container: Option<ContainerWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct PodWire {
    namespace: Option<String>,
    name: Option<String>,
    uid: String,
    qos: String,
}

#[derive(Serialize, Deserialize)]
struct ContainerWire {
    runtime: String,
    id: String,
}

fn container_wire(c: &Container) -> ContainerWire {
    ContainerWire {
        runtime: c.runtime.name().to_owned(),
        id: c.id.clone(),
    }
}

impl SerializeAs<WriterCgroup> for WriterCgroupJson {
    fn serialize_as<S: Serializer>(
        cgroup: &WriterCgroup,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let wire = match cgroup {
            // Skipped by the writer's form; written as an unknown id if
            // ever asked.
            WriterCgroup::None => CgroupWire {
                id: 0,
                path: None,
                pod: None,
                container: None,
                unit: None,
            },
            WriterCgroup::Unresolved { id } => CgroupWire {
                id: *id,
                path: None,
                pod: None,
                container: None,
                unit: None,
            },
            WriterCgroup::Resolved(origin) => {
                let (pod, container, unit) = match &origin.workload {
                    Workload::Pod(Pod {
                        uid,
                        qos,
                        container,
                        name,
                    }) => (
                        Some(PodWire {
                            namespace: name.as_ref().map(|n| n.namespace.clone()),
                            name: name.as_ref().map(|n| n.name.clone()),
                            uid: uid.clone(),
                            qos: qos.name().to_owned(),
                        }),
                        container.as_ref().map(container_wire),
                        None,
                    ),
                    Workload::Container(c) => (None, Some(container_wire(c)), None),
                    Workload::Unit(u) => (None, None, Some(u.clone())),
                    Workload::Root | Workload::Other => (None, None, None),
                };
                CgroupWire {
                    id: origin.id,
                    path: Some(origin.path.clone()),
                    pod,
                    container,
                    unit,
                }
            }
        };
        wire.serialize(serializer)
    }
}

impl<'de> DeserializeAs<'de, WriterCgroup> for WriterCgroupJson {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<WriterCgroup, D::Error> {
        let wire = CgroupWire::deserialize(deserializer)?;
        Ok(match (wire.id, wire.path) {
            (0, _) => WriterCgroup::None,
            (id, None) => WriterCgroup::Unresolved { id },
            (id, Some(path)) => {
                let mut workload = workload::classify(&path);
                if let (
                    Workload::Pod(pod),
                    Some(PodWire {
                        namespace: Some(namespace),
                        name: Some(name),
                        ..
                    }),
                ) = (&mut workload, wire.pod)
                {
                    pod.name = Some(PodName { namespace, name });
                }
                WriterCgroup::Resolved(Arc::new(CgroupOrigin { id, path, workload }))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_with::serde_as;

    use super::*;

    #[serde_as]
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Holder(#[serde_as(as = "WriterCgroupJson")] WriterCgroup);

    const UID: &str = "3d1f2c4b-8a9e-4f6d-b2c1-0a1b2c3d4e5f";
    const ID: &str = "4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";

    fn round_trip(c: WriterCgroup) -> String {
        let json = serde_json::to_string(&Holder(c.clone())).expect("writes");
        let back: Holder = serde_json::from_str(&json).expect("reads");
        assert_eq!(back.0, c, "{json}");
        json
    }

    #[test]
    fn a_pods_container_writes_every_part_and_reads_back() {
        let path = format!("/kubepods/burstable/pod{UID}/{ID}");
        let mut workload = workload::classify(&path);
        if let Workload::Pod(p) = &mut workload {
            p.name = Some(PodName {
                namespace: "prod".into(),
                name: "db-0".into(),
            });
        }
        let json = round_trip(WriterCgroup::Resolved(Arc::new(CgroupOrigin {
            id: 4242,
            path: path.clone(),
            workload,
        })));
        assert_eq!(
            json,
            format!(
                r#"{{"id":4242,"path":"{path}","pod":{{"namespace":"prod","name":"db-0","uid":"{UID}","qos":"Burstable"}},"container":{{"runtime":"unknown","id":"{ID}"}}}}"#
            )
        );
    }

    #[test]
    fn units_unresolved_ids_and_the_root() {
        let unit = round_trip(WriterCgroup::Resolved(Arc::new(CgroupOrigin {
            id: 7,
            path: "/system.slice/nginx.service".into(),
            workload: Workload::Unit("nginx.service".into()),
        })));
        assert_eq!(
            unit,
            r#"{"id":7,"path":"/system.slice/nginx.service","unit":"nginx.service"}"#
        );
        assert_eq!(
            round_trip(WriterCgroup::Unresolved { id: 9 }),
            r#"{"id":9,"path":null}"#
        );
        assert_eq!(
            round_trip(WriterCgroup::Resolved(Arc::new(CgroupOrigin {
                id: 1,
                path: "/".into(),
                workload: Workload::Root,
            }))),
            r#"{"id":1,"path":"/"}"#
        );
    }
}
