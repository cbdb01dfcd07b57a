//! What fuselock's monitor (the `fuselock` library) and its test kit
//! (`fuselock-testkit`) both need, so that neither depends on the other for
//! it: the error that means "bad usage", text made safe for a terminal, and
//! the few facts read from `/proc`.

pub mod escape;
pub mod procfs;

/// A mistake in what the user asked for (exit status 3), as opposed to a
/// failure to do it (4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
