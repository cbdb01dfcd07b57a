//! The model as Prometheus metrics: the series a snapshot gives
//! ([`SnapshotMetrics`]), the exporter's own caps ([`caps`]), and the two
//! expositions a scraper may ask for.

pub mod caps;
mod series;
mod text;

use anyhow::{Context as _, Result};
use prometheus_client::{collector::Collector, encoding::text::encode, registry::Registry};

pub(crate) use self::series::label;
pub use self::{series::SnapshotMetrics, text::openmetrics_to_prometheus};

/// The text formats a scrape can be served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exposition {
    /// OpenMetrics 1.0, for a scraper whose `Accept` names it.
    OpenMetrics,
    /// Prometheus' text format 0.0.4, for every other scraper.
    Prometheus,
}

impl Exposition {
    pub const ALL: [Exposition; 2] = [Exposition::OpenMetrics, Exposition::Prometheus];

    /// What a scraper's `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Exposition {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Exposition::OpenMetrics
        } else {
            Exposition::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The collectors' series, in this exposition.
    pub fn render(self, collectors: Vec<Box<dyn Collector>>) -> Result<String> {
        let mut registry = Registry::default();
        for c in collectors {
            registry.register_collector(c);
        }
        let mut body = String::new();
        encode(&mut body, &registry).context("encoding metrics")?;
        Ok(match self {
            Exposition::OpenMetrics => body,
            Exposition::Prometheus => openmetrics_to_prometheus(&body),
        })
    }
}
