//! sandgate runs agent-written JavaScript in a WebAssembly sandbox with hard limits.
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
//! - [`cli`]: the commands (`serve`, `exec`).
//! - [`config`]: `sandgate.toml` → raw structs (unknown keys rejected) → validated [`config::Config`].
//! - [`auth`]: who is calling ([`auth::Principal`]).
//! - [`sandbox`]: engine and compiled-guest cache ([`sandbox::engine`]), the WASI shim
//!   ([`sandbox::wasi`]), the guest ABI and per-execution state (`sandbox/host.rs`),
//!   limits ([`sandbox::limits`]), error kinds ([`sandbox::error`]) and host
//!   capabilities ([`sandbox::capability`]).
//! - [`http`]: the axum router, one file per surface.
//! - [`telemetry`]: `tracing` setup and Prometheus metrics.
//! - `guest/`: the guest crate (QuickJS + JS prelude, built to `wasm32-wasip1`); its
//!   crate docs define the host ABI.

pub mod auth;
pub mod cli;
pub mod config;
pub mod http;
pub mod sandbox;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use config::Config;
use sandbox::{Registry, Sandbox, TestCapability};

/// Builds the sandbox `config` describes, with its capabilities registered.
pub fn build_sandbox(config: &Config) -> anyhow::Result<Sandbox> {
    let mut registry = Registry::default();
    if config.test_capability {
        registry.register("tools.test", Arc::new(TestCapability));
    }
    Sandbox::new(config.sandbox.clone(), registry)
}

/// A ready server: the sandbox is built and the guest compiled.
#[derive(Debug)]
pub struct Server {
    state: http::AppState,
}

impl Server {
    /// Builds everything the server needs; slow only when the guest must be compiled.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        telemetry::prometheus();
        let sandbox = build_sandbox(&config)?;
        Ok(Self {
            state: http::AppState {
                sandbox: Arc::new(sandbox),
                config: Arc::new(config),
            },
        })
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.state.sandbox
    }

    /// Serves on `listener` until `shutdown` resolves, then finishes in-flight
    /// requests before returning.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = http::router(self.state);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
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
