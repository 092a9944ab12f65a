//! The file as written: every key optional, unknown keys rejected.

use std::path::PathBuf;

use serde::Deserialize;

use crate::sandbox::Limits;
use crate::telemetry::LogFormat;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<String>,
    pub log_format: Option<LogFormat>,
    pub limits: Option<Limits>,
    pub sandbox: Option<RawSandbox>,
    pub http: Option<RawHttp>,
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
