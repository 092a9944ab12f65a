//! The file as written: every key optional, unknown keys rejected.

use std::path::PathBuf;

use serde::Deserialize;

use crate::telemetry::LogFormat;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<String>,
    pub log_format: Option<LogFormat>,
    pub sandbox: Option<RawSandbox>,
    pub http: Option<RawHttp>,
    pub policies: Option<PathBuf>,
    pub tiers: Option<std::collections::BTreeMap<String, RawTier>>,
    pub ledger: Option<RawStore>,
    pub store: Option<RawStore>,
    pub keys: Option<Vec<RawKey>>,
    pub providers: Option<std::collections::BTreeMap<String, RawProvider>>,
    pub models: Option<std::collections::BTreeMap<String, RawModel>>,
    pub router: Option<RawRouter>,
    pub mcp: Option<RawMcp>,
    pub telemetry: Option<RawTelemetry>,
    pub auth: Option<RawAuth>,
}

/// `[auth]`: sandgate's public URL and its identity providers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub public_url: Option<String>,
    #[serde(default)]
    pub oidc: Vec<RawOidc>,
}

/// One `[[auth.oidc]]` issuer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    pub name: Option<String>,
    pub issuer: String,
    pub audiences: Option<Vec<String>>,
    pub header: Option<String>,
    pub user_claim: Option<String>,
    pub teams_claim: Option<String>,
    #[serde(default)]
    pub teams: std::collections::BTreeMap<String, String>,
    pub default_team: Option<String>,
    #[serde(default)]
    pub admin_groups: Vec<String>,
    pub leeway_s: Option<u64>,
    pub jwks_refresh_s: Option<u64>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub cli_client_id: Option<String>,
    pub scopes: Option<Vec<String>>,
}

/// `[telemetry]`: OpenTelemetry traces.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}

/// A cost tier: its models in fallback order.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTier {
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub kind: crate::model::ProviderKind,
    pub base_url: String,
    pub api_key_env: Option<String>,
    pub timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub max_concurrency: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub provider: String,
    pub upstream: Option<String>,
    pub tier: String,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cached_input_per_mtok: Option<f64>,
    pub context: Option<u64>,
    #[serde(default)]
    pub capabilities: Vec<crate::model::ModelCapability>,
    pub reserve_output_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouter {
    pub retries: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub breaker_failures: Option<u32>,
    pub breaker_cooldown_ms: Option<u64>,
    pub downgrade_below_usd: Option<f64>,
    pub default_max_tokens: Option<u64>,
    pub reserve_output_tokens: Option<u64>,
    pub drop_hosted_tools: Option<Vec<String>>,
}

/// `[store]`, or `[ledger]`, its other name: a PostgreSQL `url` (and `pool`), or the
/// SQLite file's `path` (and `synchronous`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub url: Option<String>,
    pub pool: Option<usize>,
    pub path: Option<PathBuf>,
    pub synchronous: Option<crate::store::sqlite::Synchronous>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub name: String,
    pub user: String,
    pub team: String,
    #[serde(default)]
    pub role: crate::auth::Role,
    pub hash: String,
    /// When the key was created (informational).
    #[allow(dead_code)]
    pub created: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSandbox {
    pub max_concurrent: Option<u32>,
    pub cpu_slots: Option<u32>,
    pub queue_timeout_ms: Option<u64>,
    pub max_memory_bytes: Option<u64>,
    pub cache_dir: Option<PathBuf>,
    pub compiler: Option<crate::sandbox::Compiler>,
    pub scratch_dir: Option<PathBuf>,
    pub test_capability: Option<bool>,
    pub result_ttl_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub max_body_bytes: Option<usize>,
    pub header_timeout_ms: Option<u64>,
    pub body_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub shutdown_grace_ms: Option<u64>,
    pub allowed_hosts: Option<Vec<String>>,
    pub cors_origins: Option<Vec<String>>,
}

/// `[mcp]`: upstream MCP servers and the Code Mode server's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcp {
    pub call_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub max_argument_bytes: Option<usize>,
    pub max_result_bytes: Option<usize>,
    /// Moved to `[http] allowed_hosts`; kept only to say so.
    pub allowed_hosts: Option<toml::Value>,
    pub max_sessions: Option<usize>,
    pub max_sessions_per_principal: Option<usize>,
    pub servers: Option<std::collections::BTreeMap<String, RawMcpServer>>,
    pub search: Option<RawMcpSearch>,
}

/// `[mcp.search]`: the optional reranker of `search`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcpSearch {
    pub rerank: Option<String>,
    pub rerank_candidates: Option<usize>,
    pub rerank_timeout_ms: Option<u64>,
}

/// `[mcp.servers.NAME]`: a stdio server (`command`) or a streamable HTTP one (`url`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcpServer {
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub url: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    pub call_timeout_ms: Option<u64>,
    pub description: Option<String>,
}
