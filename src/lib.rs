//! sandgate runs agent-written JavaScript (or TypeScript) in a WebAssembly sandbox with hard limits.
//! The only doors out of the sandbox are host functions sandgate controls.
//!
//! A request becomes a [`sandbox::Job`] (code, input, limits, principal); the
//! [`sandbox::Sandbox`] runs it in a fresh wasmtime store instantiated from a
//! pre-initialised QuickJS guest and returns a [`sandbox::Outcome`]. HTTP and the CLI
//! are thin adapters over that one call.
//!
//! # Layout
//!
//! - `main.rs`: parses the command line and calls [`cli::run`]; nothing else.
//! - [`cli`]: the commands (`serve`, `exec`, `mcp`, `key create`, `policy check|explain`, `usage`).
//! - [`config`]: `sandgate.toml` → raw structs (unknown keys rejected) → validated [`config::Config`].
//! - [`auth`]: who is calling: API keys (stored as hashes) → [`auth::Principal`].
//! - [`policy`]: policies/*.toml -> compiled [`policy::PolicySet`]; what a principal may do, and why.
//! - [`sandbox`]: engine and compiled-guest cache ([`sandbox::engine`]), the WASI shim
//!   ([`sandbox::wasi`]), the guest ABI and per-execution state (`sandbox/host.rs`),
//!   limits ([`sandbox::limits`]), error kinds ([`sandbox::error`]) and host
//!   capabilities ([`sandbox::capability`]).
//! - [`service`]: the one path every surface takes: authenticate, authorise, rate-limit,
//!   run, record; policy hot reload.
//! - [`ledger`]: usage records (executions, host calls, model calls), batched writer,
//!   SQLite store, usage reports.
//! - [`model`]: the model proxy: catalog, router (tiers, `auto`, fallback, circuit
//!   breakers), budgets reserved and settled, stream metering, `model.chat`.
//! - [`mcp`]: Code Mode: the upstream MCP client pool, the tool catalog with its
//!   TypeScript declarations and search index, `tools.<server>.<tool>` in the
//!   sandbox, and the two-tool MCP server (`search`, `execute`).
//! - [`typescript`]: type stripping that keeps every position, so errors point at the
//!   TypeScript as submitted.
//! - [`http`]: the axum router, one file per surface, and `/mcp`.
//! - [`telemetry`]: `tracing` setup and Prometheus metrics.
//! - `guest/`: the guest crate (QuickJS + JS prelude, built to `wasm32-wasip1`); its
//!   crate docs define the host ABI.

pub mod auth;
pub mod cli;
pub mod config;
pub mod http;
pub mod ledger;
pub mod mcp;
pub mod model;
pub mod policy;
pub mod sandbox;
pub mod service;
pub mod telemetry;
pub mod typescript;

use std::future::Future;
use std::sync::Arc;

use config::Config;

/// A ready server: policies loaded, ledger open, guest compiled.
#[derive(Debug)]
pub struct Server {
    state: http::AppState,
}

impl Server {
    /// Builds everything the server needs; slow only when the guest must be compiled.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        telemetry::prometheus();
        let service = service::Service::new(&config)?;
        Ok(Self { state: http::AppState { service: Arc::new(service), config: Arc::new(config) } })
    }

    pub fn service(&self) -> &Arc<service::Service> {
        &self.state.service
    }

    /// Serves on `listener` until `shutdown` resolves, then finishes in-flight
    /// requests before returning. Policies reload when their files change and, with
    /// keys, on SIGHUP.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let service = self.state.service.clone();
        service.policies().clone().watch();
        reload_on_hangup(service.clone(), self.state.config.clone());
        let app = http::router(self.state);
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
        // Model calls are recorded after their responses; commit the last of them.
        service.ledger().flush().await?;
        Ok(())
    }
}

/// On SIGHUP: reload the policies, and the keys from the configuration file.
fn reload_on_hangup(service: Arc<service::Service>, config: Arc<Config>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading policies and keys");
            let _ = service.reload_policies();
            if let Some(path) = &config.path {
                match Config::load(path) {
                    Ok(fresh) => service.set_keys(auth::KeyRing::new(&fresh.keys)),
                    Err(error) => tracing::error!(%error, "configuration reload failed; keeping the keys in force"),
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (service, config);
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
