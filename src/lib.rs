//! sandgate runs agent-written JavaScript, TypeScript or Python in a WebAssembly sandbox with hard
//! limits. The only doors out of the sandbox are host functions sandgate controls: the MCP tools
//! a policy allows, language models through sandgate's proxy, files, and the console.
//!
//! Every surface (HTTP, `/mcp`, the model routes, the console, the command line) is a thin
//! adapter over one [`service::Service`]. It authenticates, authorises, rate-limits and admits
//! a request, builds the execution's doors bound to the caller's grants, hands the
//! [`sandbox::Sandbox`] a [`sandbox::Job`], and records the [`sandbox::Outcome`] in the store.
//! The sandbox runs each job in a fresh wasmtime instance of a pre-initialised guest (QuickJS
//! for JavaScript and TypeScript, Monty for Python) and knows nothing of what lies behind a
//! door. Everything that can go wrong has one [`error::Kind`], and each surface answers it from
//! one table of its own.
//!
//! # Layout
//!
//! Leaves (plain data, used by every layer):
//!
//! - [`error`]: the one vocabulary of error kinds.
//! - [`limits`]: an execution's limits and the partial limits a request or policy gives.
//! - [`request`]: the execute request every surface receives, and the languages.
//! - [`time`]: now, and RFC 3339 text that never fails.
//!
//! The core:
//!
//! - [`config`]: `sandgate.toml` and the environment → validated [`config::Config`];
//!   errors name `FILE:LINE:COLUMN`.
//! - [`auth`]: who is calling: API keys (stored as hashes) and tokens from the
//!   organisation's identity provider (OIDC, [`auth::oidc`]) → [`auth::Principal`].
//! - [`policy`]: policies/*.toml → compiled [`policy::PolicySet`]; what a principal may do, and why.
//! - [`sandbox`]: the engines (Winch's code while Cranelift's compiles) and the
//!   compiled-guest cache, the WASI shim, the host ABI and
//!   per-execution state, and the [`sandbox::door`] trait every capability implements
//!   (the console door is the sandbox's own). It records nothing and imports no
//!   telemetry: it returns outcomes.
//! - [`service`]: the one path every surface takes: authenticate (mode fixed at start),
//!   authorise, rate-limit, per-principal shares, build the doors, run, record, metrics;
//!   policy hot reload; sessions (owned handles whose executions share state, leased one
//!   execution at a time); background executions; console sign-ins; the admin questions
//!   (usage, keys, explain) that the CLI, console and API all ask.
//! - [`sessions`]: what lasts beyond one execution: a session's workspace of files and
//!   the host directories policies mount, each a cap-std directory capability, behind
//!   the `fs` door.
//! - [`store`]: everything replicas share, behind one trait: ledger records (executions,
//!   host calls, model calls) with their batched writer and usage reports, budget
//!   reservations and spend, rate-limit buckets, API keys, sessions with their memory
//!   images and workspace files, console sign-ins. SQLite (embedded default) and
//!   PostgreSQL; nothing else opens a database.
//! - [`model`]: the model proxy: catalog, router (tiers, `auto`, fallback, circuit
//!   breakers), budgets reserved and settled, stream metering, the four wire formats
//!   (chat completions, Responses, Anthropic messages, Gemini) and translation between
//!   them, compaction, and the `model` door.
//! - [`mcp`]: Code Mode: the upstream MCP client pool, the tool catalog with its
//!   TypeScript declarations and search index, the `tools` door, and the two-tool MCP
//!   server (`search`, `execute`).
//! - [`telemetry`]: `tracing` setup, Prometheus metrics, OpenTelemetry traces.
//!
//! The adapters (each imports the service, never the sandbox):
//!
//! - [`app`]: the state every adapter shares (the service and its configuration).
//! - [`http`]: the axum router, one file per surface, shared extractors (`Caller`, a
//!   JSON body with sandgate's error), `/mcp`; the Host, Origin and Content-Type guard
//!   on every route ([`http::guard`]); connections with their timeouts, cap and
//!   graceful shutdown ([`http::serve`]).
//! - [`console`]: the operator console at `/ui` (pages, charts, the live pulse, sign-in).
//! - [`cli`]: the commands (`serve`, `exec`, `session`, `mcp`, `key`, `policy check|explain`, `usage`).
//! - `main.rs`: parses the command line and calls [`cli::run`]; nothing else.
//!
//! The guests:
//!
//! - `guest/`: the guest crate (QuickJS + JS prelude, built to `wasm32-wasip1`); its
//!   crate docs define the host ABI.
//! - `guest/typescript/`: type stripping that keeps every position (oxc), compiled into the
//!   guest so that its work is bounded by the sandbox's limits.
//! - `guest/python/`: the Python guest (Monty), behind the same host ABI (`guest/abi/`).

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod error;
pub mod http;
pub mod limits;
pub mod mcp;
pub mod model;
pub mod policy;
pub mod request;
pub mod sandbox;
pub mod service;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod time;

use std::future::Future;
use std::sync::Arc;

use config::Config;

/// Installs the process's crypto providers, once: rustls's (ring), which every HTTP
/// client (model providers, upstream MCP servers) needs, and the token verifier's
/// ([`auth::jose`]). [`service::Service::new`] calls it, and so must anything that
/// builds a `reqwest` client or decodes a token before that.
pub fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Err means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
        auth::jose::install();
    });
}

/// A ready server: policies loaded, store open, guest compiled.
#[derive(Debug)]
pub struct Server {
    state: app::AppState,
}

impl Server {
    /// Builds everything the server needs; slow only when the guest must be compiled.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        telemetry::prometheus();
        let service = service::Service::new(&config).await?;
        Ok(Self { state: app::AppState { service: Arc::new(service), config: Arc::new(config) } })
    }

    pub fn service(&self) -> &Arc<service::Service> {
        &self.state.service
    }

    /// Serves on `listener` until `shutdown` resolves, then shuts down gracefully
    /// (see [`http::serve`]): in-flight requests get `http.shutdown_grace` to finish,
    /// executions still running after it are cancelled, and every record is committed
    /// before this returns. Policies reload when their files change and on SIGHUP.
    ///
    /// In local mode (no keys) the listener must be on a loopback address: the local
    /// principal is never served anywhere else.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let service = self.state.service.clone();
        let addr = listener.local_addr()?;
        if service.mode() == service::Mode::Local && !addr.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {addr}: no API keys are configured, so sandgate serves loopback addresses \
                 only (create one with `sandgate key create`)"
            );
        }
        service.policies().clone().watch();
        reload_on_hangup(service.clone(), self.state.config.clone());
        service.watch_keys();
        service.watch_approvals();
        let stopping = tokio_util::sync::CancellationToken::new();
        let app = http::router(self.state.clone(), stopping.clone(), console::router(self.state.clone()));
        let http = self.state.config.http.clone();
        let grace_over = service.cancel_on_shutdown().clone();
        let reserved = service.fd_plan().reserved;
        let grace_ends = http::serve::serve(listener, app, http, shutdown, stopping, grace_over, reserved).await;
        service.finish(grace_ends.saturating_duration_since(std::time::Instant::now())).await?;
        // Optimised code still compiling (after a start on an empty compile cache) is
        // finished and cached, so the next start begins on it.
        let sandbox = service.sandbox().clone();
        tokio::task::spawn_blocking(move || sandbox.settle()).await?;
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
                    Ok(fresh) => service.set_file_keys(fresh.keys),
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
