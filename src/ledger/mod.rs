//! The usage ledger: one record per execution, per tool call and per model call.
//!
//! Writes go through one writer thread that commits records in batches (group
//! commit): an execution hands its records over and awaits the commit, so the
//! execution itself never touches the database, many executions share one
//! transaction, and no execution acknowledged to a client is missing after a crash.
//! Model calls are recorded just after their response is sent (see `crate::model`).
//!
//! Storage is behind the [`Store`] trait; SQLite ([`sqlite::SqliteStore`], WAL mode,
//! versioned migrations) is the embedded default. A Postgres store for several
//! replicas implements the same trait.

pub mod sqlite;
mod usage;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::oneshot;

pub use usage::{parse_time as usage_time, total, GroupBy, UsageQuery, UsageRow};

/// One execution.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExecutionRecord {
    pub id: String,
    pub user: String,
    pub team: String,
    pub key: String,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
    /// `ok` or the error kind.
    pub outcome: String,
    pub fuel: u64,
    pub wall_ms: u64,
    pub memory_bytes: u64,
    pub host_calls: u32,
}

/// One host call (tool or other capability) made by an execution.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallRecord {
    pub execution_id: String,
    pub user: String,
    pub team: String,
    /// The call name, e.g. `tools.github.create_issue`.
    pub name: String,
    pub started_at_ms: i64,
    pub latency_ms: u64,
    /// `ok`, an error kind, or `cancelled` when the execution ended first.
    pub outcome: String,
}

/// One model call, from the proxy or from sandboxed code.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelCallRecord {
    pub execution_id: Option<String>,
    pub user: String,
    pub team: String,
    pub key: String,
    pub model: String,
    pub tier: String,
    pub provider: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: f64,
    pub started_at_ms: i64,
    pub latency_ms: u64,
    pub status: String,
    /// Models tried before the one that answered, in order.
    pub fallback_chain: Vec<String>,
    /// Client-supplied labels (`user`, `metadata`): kept, never used for attribution.
    pub tags: serde_json::Value,
}

/// Whose spend to total: one user's, or one team's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpendScope {
    User(String),
    Team(String),
}

impl std::fmt::Display for SpendScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(user) => write!(f, "user `{user}`"),
            Self::Team(team) => write!(f, "team `{team}`"),
        }
    }
}

/// Anything the ledger stores.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Execution(ExecutionRecord),
    Call(CallRecord),
    Model(ModelCallRecord),
}

/// A ledger error: the storage failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("ledger: {0}")]
pub struct LedgerError(pub String);

/// Where records live.
pub trait Store: Send + 'static {
    /// Appends `records` atomically: all or none.
    fn append(&mut self, records: &[Record]) -> Result<(), LedgerError>;
    /// Totals per group for `query`.
    fn usage(&mut self, query: &UsageQuery) -> Result<Vec<UsageRow>, LedgerError>;
    /// Model-call cost (nano-dollars) and tokens (input + output) of `scope` since
    /// `since_ms`.
    fn spend(&mut self, scope: &SpendScope, since_ms: i64) -> Result<(i64, u64), LedgerError>;
}

struct Batch {
    records: Vec<Record>,
    done: oneshot::Sender<Result<(), LedgerError>>,
}

/// A handle to the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    writer: mpsc::Sender<Batch>,
    reader: Arc<Mutex<Box<dyn Store>>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

/// Largest number of records committed in one transaction.
const MAX_BATCH: usize = 4096;

impl Ledger {
    /// Starts the writer thread over `writer`; `reader` serves usage queries (a
    /// second connection, so reads never wait behind a commit).
    pub fn start(mut writer: Box<dyn Store>, reader: Box<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel::<Batch>();
        std::thread::Builder::new()
            .name("sandgate-ledger".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batches = vec![first];
                    let mut count = batches[0].records.len();
                    while count < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(next) => {
                                count += next.records.len();
                                batches.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    let records: Vec<Record> = batches.iter().flat_map(|b| b.records.iter().cloned()).collect();
                    let result = writer.append(&records);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, records = records.len(), "ledger write failed");
                    }
                    metrics::counter!("sandgate_ledger_records_total").increment(records.len() as u64);
                    for batch in batches {
                        let _ = batch.done.send(result.clone());
                    }
                }
            })
            .expect("spawning the ledger writer thread");
        Self { writer: tx, reader: Arc::new(Mutex::new(reader)) }
    }

    /// Opens (creating and migrating if needed) the SQLite ledger at `path`.
    pub fn open_sqlite(path: &std::path::Path, synchronous: sqlite::Synchronous) -> Result<Self, LedgerError> {
        let writer = sqlite::SqliteStore::open(path, synchronous)?;
        let reader = sqlite::SqliteStore::open(path, synchronous)?;
        Ok(Self::start(Box::new(writer), Box::new(reader)))
    }

    /// Appends `records` and resolves once they are committed.
    pub async fn record(&self, records: Vec<Record>) -> Result<(), LedgerError> {
        if records.is_empty() {
            return Ok(());
        }
        let (done, committed) = oneshot::channel();
        self.writer.send(Batch { records, done }).map_err(|_| LedgerError("the ledger writer has stopped".into()))?;
        committed.await.map_err(|_| LedgerError("the ledger writer has stopped".into()))?
    }

    /// Hands `records` to the writer without waiting for the commit; a write error is
    /// logged. [`Ledger::flush`] waits for everything handed over so far.
    pub fn record_detached(&self, records: Vec<Record>) {
        let (done, _) = oneshot::channel();
        if self.writer.send(Batch { records, done }).is_err() {
            tracing::error!("the ledger writer has stopped; records dropped");
        }
    }

    /// Resolves once every record handed over before the call is committed.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let (done, committed) = oneshot::channel();
        self.writer
            .send(Batch { records: Vec::new(), done })
            .map_err(|_| LedgerError("the ledger writer has stopped".into()))?;
        committed.await.map_err(|_| LedgerError("the ledger writer has stopped".into()))?
    }

    /// Usage totals for `query`, read on a blocking thread.
    pub async fn usage(&self, query: UsageQuery) -> Result<Vec<UsageRow>, LedgerError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = reader.lock().unwrap_or_else(|e| e.into_inner());
            store.usage(&query)
        })
        .await
        .map_err(|e| LedgerError(e.to_string()))?
    }

    /// Model-call spend of `scope` since `since_ms` (see [`Store::spend`]).
    pub async fn spend(&self, scope: SpendScope, since_ms: i64) -> Result<(i64, u64), LedgerError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = reader.lock().unwrap_or_else(|e| e.into_inner());
            store.spend(&scope, since_ms)
        })
        .await
        .map_err(|e| LedgerError(e.to_string()))?
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
