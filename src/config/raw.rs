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
    pub ledger: Option<RawLedger>,
    pub keys: Option<Vec<RawKey>>,
}

/// A cost tier; the model router (not yet configured here) fills it with models.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTier {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLedger {
    pub path: Option<PathBuf>,
    pub synchronous: Option<crate::ledger::sqlite::Synchronous>,
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
    pub test_capability: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub max_body_bytes: Option<usize>,
}
