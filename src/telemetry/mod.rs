//! Logs (`tracing`, text or JSON), Prometheus metrics, and OpenTelemetry traces
//! ([`trace`]).
//!
//! Metrics:
//! - `sandgate_executions_total{outcome}`: executions by outcome (`ok` or an error kind);
//! - `sandgate_execution_duration_seconds`: histogram of wall time per execution;
//! - `sandgate_executions_in_flight`: executions admitted and not yet finished;
//! - `sandgate_executions_rejected_total{reason}`: requests turned away before running.

pub mod trace;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::sandbox::Outcome;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Sets up `tracing` once for the process; `RUST_LOG` overrides the default filter.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    ));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Whether logs carry ANSI colours: only on a terminal, and never when `NO_COLOR` is
/// set to anything but the empty string (<https://no-color.org>). Logs written to a
/// file, a pipe, or an MCP client that launched `sandgate mcp` stay plain text.
fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("sandgate_execution_duration_seconds".into()),
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Counts an execution as in flight while alive.
#[derive(Debug)]
pub struct InFlight;

impl InFlight {
    pub(crate) fn enter() -> Self {
        metrics::gauge!("sandgate_executions_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("sandgate_executions_in_flight").decrement(1.0);
    }
}

pub(crate) fn record_execution(outcome: &Outcome, elapsed: std::time::Duration) {
    let label = match &outcome.error {
        None => "ok",
        Some(error) => error.kind.as_str(),
    };
    metrics::counter!("sandgate_executions_total", "outcome" => label).increment(1);
    metrics::histogram!("sandgate_execution_duration_seconds").record(elapsed.as_secs_f64());
}

pub(crate) fn record_rejection(reason: &'static str) {
    metrics::counter!("sandgate_executions_rejected_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(super::colours(true, None));
        assert!(super::colours(true, Some(OsStr::new(""))));
        assert!(!super::colours(true, Some(OsStr::new("1"))));
        assert!(!super::colours(false, None));
    }
}
