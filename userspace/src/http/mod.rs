//! The exporter's HTTP stack, apart from what it serves: the server with its
//! connection limits and timeouts, the web config (TLS, basic auth, headers)
//! in the format of Prometheus' exporter-toolkit, the access check in front
//! of every route, and the config's reload on change or SIGHUP. It knows
//! nothing of fuselock's model: `commands::export` gives it a router.

pub mod access;
pub mod reload;
pub mod server;
pub mod stamp;
pub mod web_config;
