//! The embedded ledger: SQLite in WAL mode with versioned migrations.
//!
//! Costs are stored as integer nano-dollars so that totals are exact sums of the
//! records, whatever order they are added in.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::usage::{GroupBy, UsageQuery, UsageRow};
use super::{LedgerError, Record, SpendScope, Store};

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// WAL + `synchronous=NORMAL`: a committed record survives a crash or `kill -9`
    /// of the process; the last commits may be lost if the machine loses power.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on disk before it is acknowledged.
    Full,
}

/// Schema versions, applied in order inside one transaction each.
const MIGRATIONS: &[&str] = &[
    // 1: executions, host calls, model calls.
    "CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        fuel INTEGER NOT NULL,
        wall_ms INTEGER NOT NULL,
        memory_bytes INTEGER NOT NULL,
        host_calls INTEGER NOT NULL
    );
    CREATE INDEX executions_started ON executions (started_at_ms);
    CREATE INDEX executions_user ON executions (user, started_at_ms);
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL,
        user TEXT NOT NULL,
        team TEXT NOT NULL,
        name TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE INDEX calls_execution ON calls (execution_id);
    CREATE TABLE model_calls (
        id INTEGER PRIMARY KEY,
        execution_id TEXT,
        user TEXT NOT NULL,
        team TEXT NOT NULL,
        key TEXT NOT NULL,
        model TEXT NOT NULL,
        tier TEXT NOT NULL,
        provider TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_nanousd INTEGER NOT NULL,
        started_at_ms INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        status TEXT NOT NULL,
        fallback_chain TEXT NOT NULL
    );
    CREATE INDEX model_calls_started ON model_calls (started_at_ms);
    CREATE INDEX model_calls_user ON model_calls (user, started_at_ms);",
    // 2: client-supplied tags on model calls; team spend lookups.
    "ALTER TABLE model_calls ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
    CREATE INDEX model_calls_team ON model_calls (team, started_at_ms);",
];

fn err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError(e.to_string())
}

/// A connection to a SQLite ledger file.
pub struct SqliteStore {
    connection: Connection,
}

impl SqliteStore {
    /// Opens `path`, creating it and its directory if needed, and applies pending
    /// migrations.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| LedgerError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let connection =
            Connection::open(path).map_err(|e| LedgerError(format!("cannot open {}: {e}", path.display())))?;
        connection.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
        connection.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        let sync = match synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        connection.pragma_update(None, "synchronous", sync).map_err(err)?;
        let mut store = Self { connection };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), LedgerError> {
        let tx = self.connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(err)?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)")
            .map_err(err)?;
        let current: i64 = tx
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |row| row.get::<_, Option<i64>>(0))
            .optional()
            .map_err(err)?
            .flatten()
            .unwrap_or(0);
        if current > MIGRATIONS.len() as i64 {
            return Err(LedgerError(format!(
                "the ledger is at schema version {current}, newer than this sandgate knows ({})",
                MIGRATIONS.len()
            )));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql).map_err(|e| LedgerError(format!("migration {}: {e}", index + 1)))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?1, ?2)",
                params![index as i64 + 1, super::now_ms()],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    fn add(totals: &mut BTreeMap<String, UsageRow>, group: String) -> &mut UsageRow {
        totals.entry(group.clone()).or_insert_with(|| UsageRow { group, ..UsageRow::default() })
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn append(&mut self, records: &[Record]) -> Result<(), LedgerError> {
        let tx = self.connection.transaction().map_err(err)?;
        {
            let mut execution = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO executions (id, user, team, key, started_at_ms, ended_at_ms, outcome, fuel, wall_ms, memory_bytes, host_calls)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(err)?;
            let mut call = tx
                .prepare_cached(
                    "INSERT INTO calls (execution_id, user, team, name, started_at_ms, latency_ms, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            let mut model = tx
                .prepare_cached(
                    "INSERT INTO model_calls (execution_id, user, team, key, model, tier, provider, input_tokens, output_tokens, cached_tokens, cost_nanousd, started_at_ms, latency_ms, status, fallback_chain, tags)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .map_err(err)?;
            for record in records {
                match record {
                    Record::Execution(r) => execution
                        .execute(params![
                            r.id,
                            r.user,
                            r.team,
                            r.key,
                            r.started_at_ms,
                            r.ended_at_ms,
                            r.outcome,
                            to_i64(r.fuel),
                            to_i64(r.wall_ms),
                            to_i64(r.memory_bytes),
                            r.host_calls
                        ])
                        .map(drop),
                    Record::Call(r) => call
                        .execute(params![
                            r.execution_id,
                            r.user,
                            r.team,
                            r.name,
                            r.started_at_ms,
                            to_i64(r.latency_ms),
                            r.outcome
                        ])
                        .map(drop),
                    Record::Model(r) => model
                        .execute(params![
                            r.execution_id,
                            r.user,
                            r.team,
                            r.key,
                            r.model,
                            r.tier,
                            r.provider,
                            to_i64(r.input_tokens),
                            to_i64(r.output_tokens),
                            to_i64(r.cached_tokens),
                            (r.cost_usd * 1e9).round() as i64,
                            r.started_at_ms,
                            to_i64(r.latency_ms),
                            r.status,
                            serde_json::to_string(&r.fallback_chain).unwrap_or_default(),
                            r.tags.to_string()
                        ])
                        .map(drop),
                }
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn spend(&mut self, scope: &SpendScope, since_ms: i64) -> Result<(i64, u64), LedgerError> {
        let (column, name) = match scope {
            SpendScope::User(user) => ("user", user),
            SpendScope::Team(team) => ("team", team),
        };
        let sql = format!(
            "SELECT COALESCE(SUM(cost_nanousd), 0), COALESCE(SUM(input_tokens + output_tokens), 0) FROM model_calls
             WHERE {column} = ?1 AND started_at_ms >= ?2"
        );
        self.connection
            .query_row(&sql, params![name, since_ms], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)? as u64)))
            .map_err(err)
    }

    fn usage(&mut self, query: &UsageQuery) -> Result<Vec<UsageRow>, LedgerError> {
        let since = query.since_ms.unwrap_or(i64::MIN);
        let until = query.until_ms.unwrap_or(i64::MAX);
        let user = query.user.as_deref();
        let mut totals = BTreeMap::new();
        let execution_group = match query.group_by {
            GroupBy::User => Some("user"),
            GroupBy::Team => Some("team"),
            GroupBy::Day => Some("strftime('%Y-%m-%d', started_at_ms / 1000, 'unixepoch')"),
            GroupBy::Model | GroupBy::Tier => None,
        };
        if let Some(group) = execution_group {
            let sql = format!(
                "SELECT {group}, COUNT(*), SUM(fuel), SUM(wall_ms), SUM(host_calls) FROM executions
                 WHERE started_at_ms >= ?1 AND started_at_ms < ?2 AND (?3 IS NULL OR user = ?3) GROUP BY 1"
            );
            let mut statement = self.connection.prepare(&sql).map_err(err)?;
            let rows = statement
                .query_map(params![since, until, user], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, i64>(4)?,
                    ))
                })
                .map_err(err)?;
            for row in rows {
                let (group, executions, fuel, wall_ms, host_calls) = row.map_err(err)?;
                let total = Self::add(&mut totals, group);
                total.executions = executions as u64;
                total.fuel = fuel as u64;
                total.wall_ms = wall_ms as u64;
                total.host_calls = host_calls as u64;
            }
        }
        let model_group = match query.group_by {
            GroupBy::User => "user",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Tier => "tier",
            GroupBy::Day => "strftime('%Y-%m-%d', started_at_ms / 1000, 'unixepoch')",
        };
        let sql = format!(
            "SELECT {model_group}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(cost_nanousd) FROM model_calls
             WHERE started_at_ms >= ?1 AND started_at_ms < ?2 AND (?3 IS NULL OR user = ?3) GROUP BY 1"
        );
        let mut statement = self.connection.prepare(&sql).map_err(err)?;
        let rows = statement
            .query_map(params![since, until, user], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })
            .map_err(err)?;
        for row in rows {
            let (group, calls, input, output, cached, nanos) = row.map_err(err)?;
            let total = Self::add(&mut totals, group);
            total.model_calls = calls as u64;
            total.input_tokens = input as u64;
            total.output_tokens = output as u64;
            total.cached_tokens = cached as u64;
            total.cost_usd = nanos as f64 / 1e9;
        }
        Ok(totals.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{ExecutionRecord, ModelCallRecord};

    fn execution(id: &str, user: &str, at: i64, fuel: u64) -> Record {
        Record::Execution(ExecutionRecord {
            id: id.into(),
            user: user.into(),
            team: "t".into(),
            key: "k".into(),
            started_at_ms: at,
            ended_at_ms: at + 5,
            outcome: "ok".into(),
            fuel,
            wall_ms: 5,
            memory_bytes: 1,
            host_calls: 2,
        })
    }

    #[test]
    fn migrates_once_and_totals_match_the_records() {
        let dir = std::env::temp_dir().join(format!("sandgate-ledger-test-{}", uuid::Uuid::now_v7()));
        let path = dir.join("ledger.db");
        let mut store = SqliteStore::open(&path, Synchronous::Normal).unwrap();
        store
            .append(&[
                execution("a", "alice", 1_000, 10),
                execution("b", "alice", 2_000, 20),
                execution("c", "bob", 86_400_000, 5),
                Record::Model(ModelCallRecord {
                    execution_id: Some("a".into()),
                    user: "alice".into(),
                    team: "t".into(),
                    key: "k".into(),
                    model: "m".into(),
                    tier: "economy".into(),
                    provider: "p".into(),
                    input_tokens: 100,
                    output_tokens: 7,
                    cached_tokens: 0,
                    cost_usd: 0.000123,
                    started_at_ms: 1_500,
                    latency_ms: 3,
                    status: "ok".into(),
                    fallback_chain: vec![],
                    tags: serde_json::json!({}),
                }),
            ])
            .unwrap();
        drop(store);
        let mut store = SqliteStore::open(&path, Synchronous::Normal).unwrap();
        let rows = store.usage(&UsageQuery::default()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].group.as_str(), rows[0].executions, rows[0].fuel), ("alice", 2, 30));
        assert_eq!((rows[0].model_calls, rows[0].input_tokens, rows[0].cost_usd), (1, 100, 0.000123));
        let days = store.usage(&UsageQuery { group_by: GroupBy::Day, ..Default::default() }).unwrap();
        assert_eq!(days.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(), ["1970-01-01", "1970-01-02"]);
        let bob = store.usage(&UsageQuery { user: Some("bob".into()), ..Default::default() }).unwrap();
        assert_eq!(bob.len(), 1);
        let window =
            store.usage(&UsageQuery { since_ms: Some(1_500), until_ms: Some(3_000), ..Default::default() }).unwrap();
        assert_eq!(window[0].executions, 1);
        assert_eq!(store.spend(&SpendScope::User("alice".into()), 0).unwrap(), (123_000, 107));
        assert_eq!(store.spend(&SpendScope::User("alice".into()), 2_000).unwrap(), (0, 0));
        assert_eq!(store.spend(&SpendScope::Team("t".into()), 0).unwrap(), (123_000, 107));
        let tiers = store.usage(&UsageQuery { group_by: GroupBy::Tier, ..Default::default() }).unwrap();
        assert_eq!((tiers[0].group.as_str(), tiers[0].output_tokens), ("economy", 7));
        let _ = std::fs::remove_dir_all(dir);
    }
}
