//! Wire formats: the model as others read it. The JSON-lines stream
//! (`stat --json`, `record`): its lines (`stream`), their JSON (`json`) and
//! its reader (`replay`); the Prometheus metrics of `fuselock export`
//! (`metrics`); and the text table of `fuselock stat`.

pub mod format;
pub mod json;
pub mod metrics;
pub mod replay;
pub mod stream;
pub mod table;
pub mod verdict;
