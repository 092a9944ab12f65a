//! A policy file as written: unknown keys rejected, and every value whose position an
//! error or a decision must name wrapped in [`Spanned`].

use serde::Deserialize;
use toml::Spanned;

use super::BudgetScope;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub policy: Vec<Spanned<RawPolicy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub name: Spanned<String>,
    pub principals: Spanned<Vec<Spanned<String>>>,
    /// Selectors the policy does not apply to, even when `principals` matches.
    #[serde(default)]
    pub except: Vec<Spanned<String>>,
    pub description: Option<String>,
    pub limits: Option<Spanned<RawLimits>>,
    pub tools: Option<RawTools>,
    pub models: Option<RawModels>,
    pub budget: Option<RawBudget>,
    pub rate: Option<RawRate>,
    pub sessions: Option<Spanned<RawSessions>>,
    pub files: Option<Spanned<RawFiles>>,
    pub keys: Option<Spanned<RawKeys>>,
    /// `[[policy.rules]]`: decisions on calls, under conditions.
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
}

/// One `[[policy.rules]]` entry: for calls to `tools` (or `models`), when `when`
/// holds, `decision`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub tools: Vec<Spanned<String>>,
    #[serde(default)]
    pub models: Vec<Spanned<String>>,
    pub when: Option<Spanned<String>>,
    pub decision: Spanned<String>,
    /// Why, in words, shown to the code on a denial and to approvers.
    pub reason: Option<String>,
    #[serde(default)]
    pub approvers: Vec<Spanned<String>>,
    pub expires_after_s: Option<Spanned<u64>>,
    pub self_approval: Option<bool>,
}

/// Any subset of the fields of [`crate::limits::Limits`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub fuel: Option<Spanned<u64>>,
    pub memory_bytes: Option<Spanned<u64>>,
    pub wall_ms: Option<Spanned<u64>>,
    pub background_wall_ms: Option<Spanned<u64>>,
    pub output_bytes: Option<Spanned<u64>>,
    pub result_bytes: Option<Spanned<u64>>,
    pub host_calls: Option<Spanned<u32>>,
    pub tool_calls: Option<Spanned<u32>>,
    pub model_calls: Option<Spanned<u32>>,
    pub code_bytes: Option<Spanned<u64>>,
    pub concurrent: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTools {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModels {
    #[serde(default)]
    pub tiers: Vec<Spanned<String>>,
    #[serde(default)]
    pub models: Vec<Spanned<String>>,
    /// Client headers not passed on to providers (`user-agent`, `x-app`, …).
    #[serde(default)]
    pub strip_headers: Vec<Spanned<String>>,
}

/// `scope` is required: whether a budget is per user or pooled per team changes what
/// the numbers mean by a factor of the team's size, so it is never guessed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub scope: BudgetScope,
    pub usd_per_day: Option<Spanned<f64>>,
    pub usd_per_month: Option<Spanned<f64>>,
    pub tokens_per_day: Option<Spanned<u64>>,
    pub tokens_per_month: Option<Spanned<u64>>,
}

/// Any subset of [`super::SessionGrant`]'s fields; the table itself is the grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    pub max: Option<Spanned<u32>>,
    pub max_bytes: Option<Spanned<u64>>,
    pub idle_ttl_s: Option<Spanned<u64>>,
}

/// Any subset of [`super::KeyGrant`]'s fields; the table itself is the grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeys {
    pub max: Option<Spanned<u32>>,
    pub max_lifetime_days: Option<Spanned<u32>>,
}

/// `[policy.files]`: workspace quotas and host directories granted to the code.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFiles {
    pub max_bytes: Option<Spanned<u64>>,
    pub max_files: Option<Spanned<u64>>,
    #[serde(default)]
    pub mounts: Vec<Spanned<RawMount>>,
}

/// `{ path = "/srv/datasets", as = "datasets", mode = "ro" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMount {
    pub path: Spanned<String>,
    #[serde(rename = "as")]
    pub name: Spanned<String>,
    pub mode: Option<Spanned<String>>,
    pub max_bytes_per_day: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRate {
    pub executions_per_minute: Option<Spanned<u32>>,
    pub model_calls_per_minute: Option<Spanned<u32>>,
}
