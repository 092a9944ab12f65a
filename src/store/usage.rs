//! Usage queries: totals per user, team, model, tier, day or agent session.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What to group totals by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    #[default]
    User,
    Team,
    Model,
    Tier,
    Day,
    /// The coding agent's own session (`x-claude-code-session-id`, Codex's
    /// `session-id`, …); calls and executions without one are the group `""`.
    #[serde(rename = "agent_session")]
    #[value(name = "agent_session")]
    AgentSession,
}

/// A usage query. Times are Unix milliseconds, `since` inclusive, `until` exclusive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageQuery {
    pub group_by: GroupBy,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only this user's records (what a non-admin may see).
    pub user: Option<String>,
}

/// Totals for one group. Executions, fuel, wall time and host calls come from
/// execution records (zero when grouping by model or tier); tokens and cost from
/// model-call records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub group: String,
    pub executions: u64,
    pub fuel: u64,
    pub wall_ms: u64,
    pub host_calls: u64,
    pub model_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: f64,
    /// Sessions opened, and bytes of session state saved (grouping by user, team or
    /// day; zero by model or tier).
    #[serde(default)]
    pub sessions_opened: u64,
    #[serde(default)]
    pub session_state_bytes: u64,
    /// Bytes of files written: by executions to their workspaces and to writable
    /// mounts, and by uploads to workspaces.
    #[serde(default)]
    pub file_bytes_written: u64,
}

/// How a store's SQL spells what differs between dialects.
pub(super) struct Dialect {
    /// The `YYYY-MM-DD` (UTC) of a column of Unix milliseconds.
    pub day: fn(&str) -> String,
    /// Placeholder `n` (from 1).
    pub param: fn(usize) -> String,
}

/// One grouped query of a usage report: its SQL (placeholders 1 to 3 are `since`,
/// `until` and the user or NULL; column 0 is the group, the rest integers) and where
/// its numbers go in a row.
pub(super) struct Part {
    pub sql: String,
    pub apply: fn(&mut UsageRow, &[i64]),
}

/// The queries a report for `group_by` is made of, the same on every store: one over
/// executions, one over session events (neither has a model or tier) and one over
/// model calls. Totals are exact sums of the records.
pub(super) fn report(group_by: GroupBy, dialect: &Dialect) -> Vec<Part> {
    let (p1, p2, p3) = ((dialect.param)(1), (dialect.param)(2), (dialect.param)(3));
    let key = |time: &str| match group_by {
        GroupBy::User => "\"user\"".to_string(),
        GroupBy::Team => "team".into(),
        GroupBy::Model => "model".into(),
        GroupBy::Tier => "tier".into(),
        GroupBy::Day => (dialect.day)(time),
        GroupBy::AgentSession => "COALESCE(agent_session, '')".into(),
    };
    let query = |table: &str, time: &str, sums: &str| {
        let group = key(time);
        format!(
            "SELECT {group}, {sums} FROM {table}
             WHERE {time} >= {p1} AND {time} < {p2} AND (CAST({p3} AS TEXT) IS NULL OR \"user\" = {p3}) GROUP BY 1"
        )
    };
    // Executions have no model or tier; session events no model, tier or agent session.
    let executions = !matches!(group_by, GroupBy::Model | GroupBy::Tier);
    let session_events = executions && group_by != GroupBy::AgentSession;
    let mut parts = Vec::new();
    if executions {
        parts.push(Part {
            sql: query(
                "executions",
                "started_at_ms",
                "COUNT(*), CAST(SUM(fuel) AS BIGINT), CAST(SUM(wall_ms) AS BIGINT), CAST(SUM(host_calls) AS BIGINT)",
            ),
            apply: |row, n| {
                row.executions = n[0] as u64;
                row.fuel = n[1] as u64;
                row.wall_ms = n[2] as u64;
                row.host_calls = n[3] as u64;
            },
        });
    }
    if session_events {
        parts.push(Part {
            sql: query(
                "session_events",
                "at_ms",
                "CAST(SUM(CASE WHEN event = 'opened' THEN 1 ELSE 0 END) AS BIGINT), \
                 CAST(SUM(CASE WHEN event = 'saved' THEN state_bytes ELSE 0 END) AS BIGINT), \
                 CAST(SUM(CASE WHEN event = 'files_written' THEN state_bytes ELSE 0 END) AS BIGINT)",
            ),
            apply: |row, n| {
                row.sessions_opened = n[0] as u64;
                row.session_state_bytes = n[1] as u64;
                row.file_bytes_written = n[2] as u64;
            },
        });
    }
    parts.push(Part {
        sql: query(
            "model_calls",
            "started_at_ms",
            "COUNT(*), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
             CAST(SUM(cached_tokens) AS BIGINT), CAST(SUM(cost_nanousd) AS BIGINT)",
        ),
        apply: |row, n| {
            row.model_calls = n[0] as u64;
            row.input_tokens = n[1] as u64;
            row.output_tokens = n[2] as u64;
            row.cached_tokens = n[3] as u64;
            row.cost_usd = n[4] as f64 / 1e9;
        },
    });
    parts
}

/// Adds one result row of `part` (its group, then its numbers) to `totals`.
pub(super) fn fold(totals: &mut BTreeMap<String, UsageRow>, part: &Part, group: String, numbers: &[i64]) {
    let row = totals.entry(group.clone()).or_insert_with(|| UsageRow { group, ..UsageRow::default() });
    (part.apply)(row, numbers);
}

/// The sum of `rows`, with the group `total`.
pub fn total(rows: &[UsageRow]) -> UsageRow {
    let mut sum = UsageRow { group: "total".into(), ..UsageRow::default() };
    let mut nanos: i64 = 0;
    for row in rows {
        sum.executions += row.executions;
        sum.fuel += row.fuel;
        sum.wall_ms += row.wall_ms;
        sum.host_calls += row.host_calls;
        sum.model_calls += row.model_calls;
        sum.input_tokens += row.input_tokens;
        sum.output_tokens += row.output_tokens;
        sum.cached_tokens += row.cached_tokens;
        sum.sessions_opened += row.sessions_opened;
        sum.session_state_bytes += row.session_state_bytes;
        sum.file_bytes_written += row.file_bytes_written;
        nanos += (row.cost_usd * 1e9).round() as i64;
    }
    sum.cost_usd = nanos as f64 / 1e9;
    sum
}

/// Parses a time bound: RFC 3339 (`2026-11-25T10:00:00Z`) or a date (`2026-11-25`,
/// midnight UTC), into Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_string() };
    let time = humantime::parse_rfc3339_weak(full.trim_end_matches('Z'))
        .map_err(|e| format!("`{text}` is not a date (2026-11-25) or RFC 3339 time: {e}"))?;
    let since_epoch = time.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("`{text}` is before 1970"))?;
    Ok(since_epoch.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_dates_or_rfc3339() {
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert!(parse_time("yesterday").is_err());
    }
}
