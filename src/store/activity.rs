//! Activity queries: the latest executions, and one execution with its host calls
//! and model calls. The SQL is the same on every store (placeholders differ).

use serde::Serialize;

use super::usage::Dialect;

/// Which executions to list. Times are Unix milliseconds, `since` inclusive,
/// `until` exclusive; newest first, at most `limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecutionQuery {
    pub user: Option<String>,
    pub outcome: Option<String>,
    /// Only the executions of this coding agent's session.
    pub agent_session: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: u32,
}

impl ExecutionQuery {
    /// `[since, until)` as the SQL binds it: open ends as the widest bounds.
    pub fn window(&self) -> (i64, i64) {
        (self.since_ms.unwrap_or(i64::MIN), self.until_ms.unwrap_or(i64::MAX))
    }
}

/// One host call of an execution (a tool call, a file call, a refused call).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallRow {
    pub name: String,
    pub started_at_ms: i64,
    pub latency_ms: i64,
    pub outcome: String,
}

/// One model call of an execution.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelCallRow {
    pub model: String,
    pub tier: String,
    pub provider: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub started_at_ms: i64,
    pub latency_ms: i64,
    pub status: String,
    /// Models tried and failed before this one, with why.
    pub fallbacks: Vec<String>,
}

/// One console line of an execution, as kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LogRow {
    pub level: String,
    pub message: String,
}

/// An execution with everything it called, in the order the calls started, and its
/// console lines.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ExecutionDetail {
    /// Its record, as the ledger keeps it (its console lines apart, in `logs`).
    pub execution: super::ExecutionRecord,
    pub calls: Vec<CallRow>,
    pub model_calls: Vec<ModelCallRow>,
    pub logs: Vec<LogRow>,
}

impl ExecutionDetail {
    /// What the execution's model calls cost.
    pub fn cost_usd(&self) -> f64 {
        self.model_calls.iter().fold(0.0, |sum, c| sum + c.cost_usd)
    }
}

/// Host calls of one name over a window: how many, how many failed, their latency.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallStats {
    pub name: String,
    pub calls: i64,
    /// Calls whose outcome was anything but `ok` (denied, failed, cancelled).
    pub errors: i64,
    pub latency_ms_total: i64,
    pub latency_ms_max: i64,
}

/// Executions over a window, counted in the store: per minute and outcome, and the
/// wall time of the latest of them at two percentiles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PulseRows {
    /// (start of the minute in Unix milliseconds, outcome, executions).
    pub buckets: Vec<(i64, String, i64)>,
    /// The median and 99th percentile wall time of the window's latest
    /// [`ExecutionQuery::limit`] executions.
    pub p50_ms: i64,
    pub p99_ms: i64,
    /// How many executions those percentiles are of.
    pub sample: i64,
}

/// Placeholders 1 to 3: since, until, user or NULL. Executions per minute and outcome.
pub(super) fn pulse_sql(dialect: &Dialect) -> String {
    let p = |n| (dialect.param)(n);
    format!(
        "SELECT (started_at_ms / 60000) * 60000, outcome, COUNT(*) FROM executions
         WHERE started_at_ms >= {} AND started_at_ms < {} AND (CAST({} AS TEXT) IS NULL OR \"user\" = {})
         GROUP BY 1, 2",
        p(1),
        p(2),
        p(3),
        p(3)
    )
}

/// Placeholders 1 to 5: since, until, user or NULL, how many of the latest, the
/// offset. The wall time at that offset among the window's latest executions.
pub(super) fn wall_at_sql(dialect: &Dialect) -> String {
    let p = |n| (dialect.param)(n);
    format!(
        "SELECT wall_ms FROM (SELECT wall_ms FROM executions
             WHERE started_at_ms >= {} AND started_at_ms < {} AND (CAST({} AS TEXT) IS NULL OR \"user\" = {})
             ORDER BY started_at_ms DESC LIMIT {}) AS latest
         ORDER BY wall_ms LIMIT 1 OFFSET {}",
        p(1),
        p(2),
        p(3),
        p(3),
        p(4),
        p(5)
    )
}

/// The offsets of the median and the 99th percentile among `n` sorted values.
pub(super) fn percentile_offsets(n: i64) -> (i64, i64) {
    let at = |p: f64| ((n as f64 * p) as i64).min(n - 1).max(0);
    (at(0.5), at(0.99))
}

/// Placeholders 1 to 3: since, until, user or NULL.
pub(super) fn call_stats_sql(dialect: &Dialect) -> String {
    let p = |n| (dialect.param)(n);
    format!(
        "SELECT name, COUNT(*), CAST(SUM(CASE WHEN outcome = 'ok' THEN 0 ELSE 1 END) AS BIGINT), \
         CAST(SUM(latency_ms) AS BIGINT), CAST(MAX(latency_ms) AS BIGINT) FROM calls
         WHERE started_at_ms >= {} AND started_at_ms < {} AND (CAST({} AS TEXT) IS NULL OR \"user\" = {})
         GROUP BY name ORDER BY name",
        p(1),
        p(2),
        p(3),
        p(3)
    )
}

/// Placeholders 1 to 5: since, until, user or NULL, limit, agent session or NULL.
/// Newest first.
pub(super) fn recent_model_calls_sql(dialect: &Dialect) -> String {
    let p = |n| (dialect.param)(n);
    format!(
        "SELECT model, tier, provider, input_tokens, output_tokens, cost_nanousd, started_at_ms, latency_ms, status, \
         fallback_chain FROM model_calls
         WHERE started_at_ms >= {} AND started_at_ms < {} AND (CAST({} AS TEXT) IS NULL OR \"user\" = {})
           AND (CAST({} AS TEXT) IS NULL OR agent_session = {})
         ORDER BY started_at_ms DESC, id DESC LIMIT {}",
        p(1),
        p(2),
        p(3),
        p(3),
        p(5),
        p(5),
        p(4)
    )
}

const EXECUTION_COLUMNS: &str =
    "id, \"user\", team, key, started_at_ms, ended_at_ms, outcome, fuel, wall_ms, memory_bytes, host_calls, agent_session";

/// Placeholders 1 to 6: since, until, user or NULL, outcome or NULL, limit, agent
/// session or NULL.
pub(super) fn executions_sql(dialect: &Dialect) -> String {
    let p = |n| (dialect.param)(n);
    format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions
         WHERE started_at_ms >= {} AND started_at_ms < {}
           AND (CAST({} AS TEXT) IS NULL OR \"user\" = {})
           AND (CAST({} AS TEXT) IS NULL OR outcome = {})
           AND (CAST({} AS TEXT) IS NULL OR agent_session = {})
         ORDER BY started_at_ms DESC, id DESC LIMIT {}",
        p(1),
        p(2),
        p(3),
        p(3),
        p(4),
        p(4),
        p(6),
        p(6),
        p(5)
    )
}

/// Placeholder 1: the execution id.
pub(super) fn execution_sql(dialect: &Dialect) -> String {
    format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = {}", (dialect.param)(1))
}

/// Placeholder 1: the execution id.
pub(super) fn logs_sql(dialect: &Dialect) -> String {
    format!("SELECT logs FROM execution_logs WHERE execution_id = {}", (dialect.param)(1))
}

/// The kept lines, from the JSON the ledger holds (none when it holds none).
pub(super) fn parse_logs(text: Option<String>) -> Vec<LogRow> {
    text.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default()
}

/// Placeholder 1: the execution id.
pub(super) fn calls_sql(dialect: &Dialect) -> String {
    format!(
        "SELECT name, started_at_ms, latency_ms, outcome FROM calls WHERE execution_id = {} ORDER BY started_at_ms, id",
        (dialect.param)(1)
    )
}

/// Placeholder 1: the execution id.
pub(super) fn model_calls_sql(dialect: &Dialect) -> String {
    format!(
        "SELECT model, tier, provider, input_tokens, output_tokens, cost_nanousd, started_at_ms, latency_ms, status, \
         fallback_chain FROM model_calls WHERE execution_id = {} ORDER BY started_at_ms, id",
        (dialect.param)(1)
    )
}

/// A model call row from its columns (as [`model_calls_sql`] selects them).
#[allow(clippy::too_many_arguments)]
pub(super) fn model_call(
    model: String,
    tier: String,
    provider: String,
    input_tokens: i64,
    output_tokens: i64,
    cost_nanousd: i64,
    started_at_ms: i64,
    latency_ms: i64,
    status: String,
    fallback_chain: String,
) -> ModelCallRow {
    ModelCallRow {
        model,
        tier,
        provider,
        input_tokens,
        output_tokens,
        cost_usd: cost_nanousd as f64 / 1e9,
        started_at_ms,
        latency_ms,
        status,
        fallbacks: serde_json::from_str(&fallback_chain).unwrap_or_default(),
    }
}
