//! Wire formats: the model as others read it. The JSON-lines stream
//! (`stat --json`, `record`): its lines (`stream`), their JSON (`json`) and
//! its reader (`replay`); and the text table of `fuselock stat`.

pub mod json;
pub mod replay;
pub mod stream;
pub mod table;
